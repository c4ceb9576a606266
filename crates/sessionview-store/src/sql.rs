//! SQL fragments shared by every backend: scope conditions and list ordering.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::StoreError;
use crate::read::{Order, Scope};

/// ` AND alias.domain_name = ? AND alias.access_key = ?` for the restricted axes of `scope`.
pub(crate) fn push_scope<'a, DB>(qb: &mut QueryBuilder<'a, DB>, alias: &str, scope: &Scope)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    if let Some(d) = &scope.domain_name {
        qb.push(format!(" AND {alias}.domain_name = "))
            .push_bind(d.clone());
    }
    if let Some(a) = &scope.access_key {
        qb.push(format!(" AND {alias}.access_key = "))
            .push_bind(a.clone());
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
