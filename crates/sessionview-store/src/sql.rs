//! SQL written once for every backend: how each binds a column [`Value`], multi-row `VALUES`,
//! scope conditions, session filters, list ordering and the dead-letter listing.

use sqlx::{Database, QueryBuilder};

use crate::columns::{DEAD_LETTERS, Table, Value};
use crate::read::{ContainerListQuery, Order, Scope, SessionListQuery};
use crate::{DeadLetterFilter, StoreError};

/// What differs between backends in the statements they share: how a value of each kind is bound.
pub(crate) trait Dialect: Database {
    /// Binds one value as this backend stores its kind (with the cast its column needs).
    fn push_value<'a>(qb: &mut QueryBuilder<'a, Self>, v: Value<'a>);

    /// ` = value` for one value; for several, a membership test of the backend's best form
    /// (`= ANY($n)` of one array on PostgreSQL, `IN (?, ...)` on SQLite). Never empty.
    fn push_in<'a>(qb: &mut QueryBuilder<'a, Self>, values: Vec<Value<'a>>);
}

/// ` AND column = value` (or its membership test) for `values`; ` AND false` when there are none.
pub(crate) fn push_any<'a, D: Dialect>(
    qb: &mut QueryBuilder<'a, D>,
    column: &str,
    values: Vec<Value<'a>>,
) {
    if values.is_empty() {
        qb.push(" AND false");
    } else {
        qb.push(format!(" AND {column}"));
        D::push_in(qb, values);
    }
}

/// `INSERT INTO table (columns) VALUES (...), (...)` of `rows`, each in the table's column order.
pub(crate) fn insert<'a, D: Dialect, const N: usize>(
    table: &Table,
    rows: impl IntoIterator<Item = [Value<'a>; N]>,
) -> QueryBuilder<'a, D> {
    let mut qb = QueryBuilder::new(format!(
        "INSERT INTO {} ({}) VALUES ",
        table.name,
        table.list()
    ));
    for (i, row) in rows.into_iter().enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        for (j, v) in row.into_iter().enumerate() {
            if j > 0 {
                qb.push(", ");
            }
            D::push_value(&mut qb, v);
        }
        qb.push(")");
    }
    qb
}

/// ` AND alias.domain_name = ? AND alias.access_key = ?` for the restricted axes of `scope`.
pub(crate) fn push_scope<'a, D: Dialect>(
    qb: &mut QueryBuilder<'a, D>,
    alias: &str,
    scope: &'a Scope,
) {
    if let Some(d) = &scope.domain_name {
        qb.push(format!(" AND {alias}.domain_name = "));
        D::push_value(qb, Value::Text(Some(d)));
    }
    if let Some(a) = &scope.access_key {
        qb.push(format!(" AND {alias}.access_key = "));
        D::push_value(qb, Value::Text(Some(a)));
    }
}

/// ` WHERE ...` of a session list (`sessions s`, or the running counts under the same alias: the
/// columns filtered on are in both).
pub(crate) fn push_session_filters<'a, D: Dialect>(
    qb: &mut QueryBuilder<'a, D>,
    q: &'a SessionListQuery,
) {
    qb.push(" WHERE true");
    push_scope(qb, "s", &q.scope);
    if let Some(d) = &q.domain_name {
        qb.push(" AND s.domain_name = ");
        D::push_value(qb, Value::Text(Some(d)));
    }
    if let Some(a) = &q.access_key {
        qb.push(" AND s.access_key = ");
        D::push_value(qb, Value::Text(Some(a)));
    }
    if let Some(g) = q.group_id {
        qb.push(" AND s.group_id = ");
        D::push_value(qb, Value::Uuid(Some(g)));
    }
    if !q.statuses.is_empty() {
        // One status is an equality: with it the (access_key, status, last_touched) index yields
        // rows in page order, so LIMIT stops early instead of sorting every match.
        let statuses = q.statuses.iter().map(|s| Value::Text(Some(s.as_str())));
        push_any(qb, "s.status", statuses.collect());
    }
}

/// ` JOIN sessions s ... WHERE ...` of a container list (`kernels k`, scoped by its session).
pub(crate) fn push_container_filters<'a, D: Dialect>(
    qb: &mut QueryBuilder<'a, D>,
    q: &'a ContainerListQuery,
) {
    qb.push(" JOIN sessions s ON s.id = k.session_id WHERE k.session_id = ");
    D::push_value(qb, Value::Uuid(Some(q.session_id)));
    push_scope(qb, "s", &q.scope);
    if let Some(role) = &q.role {
        qb.push(" AND k.role = ");
        D::push_value(qb, Value::Text(Some(role)));
    }
}

/// ` ORDER BY ...`: the explicit order with `id` as tie-breaker, or the default (most recently
/// touched first). The column is interpolated into SQL, so it must come from `allowed`.
pub(crate) fn push_order<DB: Database>(
    qb: &mut QueryBuilder<'_, DB>,
    alias: &str,
    order: Option<Order>,
    allowed: &[&str],
) -> Result<(), StoreError> {
    match order {
        None => {
            qb.push(format!(
                " ORDER BY {alias}.last_touched DESC, {alias}.id DESC"
            ));
        }
        Some(o) => {
            if !allowed.contains(&o.column) {
                return Err(StoreError::Corrupt {
                    table: "order",
                    detail: format!("{:?} is not an orderable column", o.column),
                });
            }
            let dir = if o.ascending { "ASC" } else { "DESC" };
            qb.push(format!(
                " ORDER BY {alias}.{col} {dir} NULLS LAST, {alias}.id {dir}",
                col = o.column
            ));
        }
    }
    Ok(())
}

/// The dead letters `filter` selects, oldest first, in the columns
/// [`crate::columns::dead_letter_from`] decodes.
pub(crate) fn dead_letter_query<D: Dialect>(filter: &DeadLetterFilter) -> QueryBuilder<'_, D> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT id, {}, recorded_at FROM dead_letters WHERE id > ",
        DEAD_LETTERS.list()
    ));
    D::push_value(&mut qb, Value::Int8(Some(filter.after_id.unwrap_or(0))));
    if let Some(s) = &filter.source {
        qb.push(" AND source = ");
        D::push_value(&mut qb, Value::Text(Some(s)));
    }
    if let Some(l) = &filter.label {
        qb.push(" AND label = ");
        D::push_value(&mut qb, Value::Text(Some(l)));
    }
    if !filter.ids.is_empty() {
        let ids = filter.ids.iter().map(|id| Value::Int8(Some(*id)));
        push_any(&mut qb, "id", ids.collect());
    }
    qb.push(" ORDER BY id LIMIT ");
    D::push_value(&mut qb, Value::Int8(Some(filter.limit)));
    qb
}
