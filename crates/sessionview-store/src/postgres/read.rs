//! The PostgreSQL read side: every query the GraphQL service makes (few statements, each on the
//! read pool), and keypairs.

use std::sync::atomic::Ordering;

use sessionview_projection::{KernelRow, SessionRow};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PgCells, PgStore};
use crate::StoreError;
use crate::changes::{self, ChangesAfter};
use crate::columns::{
    KERNEL_SCALARS, KERNELS, KEYPAIRS, SESSIONS, kernel_from, keypair_from, keypair_values,
    session_from,
};
use crate::live::{self, CommittedPosition, LogExtent, SessionEvent};
use crate::read::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KernelFields, KeyPair, KeyPairAdmin, Page,
    PageWithContainers, ReadConnections, ReadFuture, ReadModel, SESSION_ORDER_KEYS, Scope,
    SessionListQuery, SessionWithContainers,
};
use crate::sql::{insert, push_container_filters, push_order, push_scope, push_session_filters};

/// The kernel columns a read with containers selects (prefixed `k.`).
fn kernel_columns(fields: KernelFields) -> String {
    match fields {
        KernelFields::All => KERNELS.prefixed("k"),
        KernelFields::WithoutJson => KERNELS.prefixed_first("k", KERNEL_SCALARS),
    }
}

/// Sessions from rows holding [`SESSIONS`] columns from column `first`, and with `kernels` their
/// containers from the columns after them (sessions joined to their kernels, each session's rows
/// together). A session without containers comes with NULLs for them; a row of NULLs for the
/// session too (an empty page beside its total) holds neither.
fn sessions_and_containers(
    rows: &[sqlx::postgres::PgRow],
    first: usize,
    kernels: Option<KernelFields>,
) -> Result<(Vec<SessionRow>, Vec<KernelRow>), StoreError> {
    let kernel = first + SESSIONS.columns.len();
    let mut sessions: Vec<SessionRow> = Vec::new();
    let mut containers = Vec::new();
    for r in rows {
        let Some(id) = r.try_get::<Option<Uuid>, _>(first)? else {
            continue;
        };
        if sessions.last().is_none_or(|s| s.id != id) {
            sessions.push(session_from(&mut PgCells::at(r, first, SESSIONS.name))?);
        }
        let Some(fields) = kernels else { continue };
        if r.try_get::<Option<Uuid>, _>(kernel)?.is_some() {
            let scalars_only = fields == KernelFields::WithoutJson;
            let mut cells = PgCells::at(r, kernel, KERNELS.name);
            containers.push(kernel_from(&mut cells, scalars_only)?);
        }
    }
    Ok((sessions, containers))
}

/// `LIMIT` and `OFFSET` as numbers in the text, not parameters. With `LIMIT $n` PostgreSQL costs
/// a generic plan for a tenth of the matching rows and every custom plan for the actual ten, so it
/// never settles on the generic plan and plans a cached statement again on every execution. The
/// values are integers (never text from a request), and a few page sizes make a few statements.
fn push_page(qb: &mut QueryBuilder<'_, Postgres>, limit: i64, offset: i64) {
    qb.push(format!(" LIMIT {limit} OFFSET {offset}"));
}

/// Whether one cached generic plan serves a session list equally well for every value of its
/// filters. With an access key and at most one status the `(access_key[, status], last_touched)`
/// indexes yield the page in order whatever the values, and one key's sessions are few. Domains,
/// groups and statuses alone are skewed: a plan made for their average (walk the domain's
/// sessions in order until ten match a rare status, or sort a big group) can be far off for one
/// value, so those lists are planned for their values.
fn generic_plan_fits(q: &SessionListQuery) -> bool {
    (q.access_key.is_some() || q.scope.access_key.is_some())
        && q.statuses.len() <= 1
        && q.group_id.is_none()
}

impl PgStore {
    fn count_statements(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    /// A session list in one statement on one connection: the total from the running counts the
    /// projector keeps (a few rows per filter value, not a count of the matching sessions), the
    /// page, and with `kernels` each page session's containers (its columns repeat on each of
    /// its containers' rows). The total's one row is joined to the rest, so that an empty page
    /// still carries it. A cached statement only where one plan fits every value; other shapes
    /// are parsed and planned for their values every time.
    async fn session_page(
        &self,
        q: &SessionListQuery,
        kernels: Option<KernelFields>,
    ) -> Result<PageWithContainers, StoreError> {
        let mut qb = session_page_query(q, kernels)?;
        let rows = self
            .reads
            .fetch_all(qb.build().persistent(generic_plan_fits(q)))
            .await?;
        self.count_statements(1);
        let total_count = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        let (items, containers) = sessions_and_containers(&rows, 1, kernels)?;
        Ok((Page { items, total_count }, containers))
    }

    /// The text of the statements a list with containers (`q`) and a single session with
    /// containers run, `$n` for their parameters: the list binds its filters in the order
    /// domain, access key, group, statuses, once for the page and once more for the total; the
    /// single session binds its id. For the bench's plain-SQL floor (pgbench runs them with the
    /// same values).
    #[doc(hidden)]
    pub fn read_statements(
        q: &SessionListQuery,
        fields: KernelFields,
    ) -> Result<(String, String), StoreError> {
        let list = session_page_query(q, Some(fields))?.sql().to_owned();
        let single = session_query(Uuid::nil(), &q.scope, fields)
            .sql()
            .to_owned();
        Ok((list, single))
    }
}

/// The statement of one page of sessions, its total and (with `kernels`) its containers.
fn session_page_query<'a>(
    q: &'a SessionListQuery,
    kernels: Option<KernelFields>,
) -> Result<QueryBuilder<'a, Postgres>, StoreError> {
    let cols = SESSIONS.prefixed("s");
    let mut qb = QueryBuilder::new(format!(
        "WITH page AS (SELECT {cols}, s.last_touched FROM sessions s"
    ));
    push_session_filters(&mut qb, q);
    push_order(&mut qb, "s", q.order, SESSION_ORDER_KEYS)?;
    push_page(&mut qb, q.limit, q.offset);
    qb.push("), total AS (SELECT coalesce(sum(s.n), 0)::int8 AS n FROM session_counts s");
    push_session_filters(&mut qb, q);
    match kernels {
        Some(fields) => qb.push(format!(
            ") SELECT t.n, {cols}, {} FROM total t \
                 LEFT JOIN (page s LEFT JOIN kernels k ON k.session_id = s.id) ON true",
            kernel_columns(fields)
        )),
        None => qb.push(format!(
            ") SELECT t.n, {cols} FROM total t LEFT JOIN page s ON true"
        )),
    };
    push_order(&mut qb, "s", q.order, SESSION_ORDER_KEYS)?;
    if kernels.is_some() {
        qb.push(", k.ordinal");
    }
    Ok(qb)
}

/// The statement of one session by id inside `scope`, with its containers.
fn session_query(id: Uuid, scope: &Scope, fields: KernelFields) -> QueryBuilder<'_, Postgres> {
    let cols = SESSIONS.prefixed("s");
    let kcols = kernel_columns(fields);
    let mut qb = QueryBuilder::new(format!(
        "SELECT {cols}, {kcols} FROM sessions s \
         LEFT JOIN kernels k ON k.session_id = s.id WHERE s.id = "
    ));
    qb.push_bind(id);
    push_scope(&mut qb, "s", scope);
    qb.push(" ORDER BY k.ordinal");
    qb
}

impl ReadModel for PgStore {
    fn list_sessions<'a>(&'a self, q: &'a SessionListQuery) -> ReadFuture<'a, Page<SessionRow>> {
        Box::pin(async move {
            let (page, _) = self.session_page(q, None).await?;
            Ok(page)
        })
    }

    fn list_sessions_with_containers<'a>(
        &'a self,
        q: &'a SessionListQuery,
        fields: KernelFields,
    ) -> ReadFuture<'a, PageWithContainers> {
        Box::pin(async move { self.session_page(q, Some(fields)).await })
    }

    fn session_with_containers<'a>(
        &'a self,
        id: Uuid,
        scope: &'a Scope,
        fields: KernelFields,
    ) -> ReadFuture<'a, Option<SessionWithContainers>> {
        Box::pin(async move {
            let mut qb = session_query(id, scope, fields);
            let rows = self.reads.fetch_all(qb.build()).await?;
            self.count_statements(1);
            let (mut sessions, containers) = sessions_and_containers(&rows, 0, Some(fields))?;
            Ok(sessions.pop().map(|s| (s, containers)))
        })
    }

    fn sessions_by_ids<'a>(
        &'a self,
        ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<SessionRow>> {
        Box::pin(async move {
            let cols = SESSIONS.prefixed("s");
            let mut qb =
                QueryBuilder::new(format!("SELECT {cols} FROM sessions s WHERE s.id = ANY("));
            qb.push_bind(ids.to_vec()).push(")");
            push_scope(&mut qb, "s", scope);
            let rows = self.reads.fetch_all(qb.build()).await?;
            self.count_statements(1);
            rows.iter()
                .map(|r| session_from(&mut PgCells::at(r, 0, SESSIONS.name)))
                .collect()
        })
    }

    fn containers_of<'a>(&'a self, session_ids: &'a [Uuid]) -> ReadFuture<'a, Vec<KernelRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {} FROM kernels WHERE session_id = ANY($1) ORDER BY session_id, ordinal",
                KERNELS.list()
            );
            let rows = self
                .reads
                .fetch_all(sqlx::query(&sql).bind(session_ids))
                .await?;
            self.count_statements(1);
            rows.iter()
                .map(|r| kernel_from(&mut PgCells::at(r, 0, KERNELS.name), false))
                .collect()
        })
    }

    fn dependencies_of<'a>(
        &'a self,
        session_ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<(Uuid, SessionRow)>> {
        Box::pin(async move {
            let cols = SESSIONS.prefixed("s");
            let mut qb = QueryBuilder::new(format!(
                "SELECT d.session_id AS parent_id, {cols} FROM session_dependencies d \
                 JOIN sessions s ON s.id = d.depends_on WHERE d.session_id = ANY("
            ));
            qb.push_bind(session_ids.to_vec()).push(")");
            push_scope(&mut qb, "s", scope);
            qb.push(" ORDER BY d.session_id, d.ordinal");
            let rows = self.reads.fetch_all(qb.build()).await?;
            self.count_statements(1);
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        session_from(&mut PgCells::at(r, 1, SESSIONS.name))?,
                    ))
                })
                .collect()
        })
    }

    fn list_containers<'a>(&'a self, q: &'a ContainerListQuery) -> ReadFuture<'a, Page<KernelRow>> {
        Box::pin(async move {
            let cols = KERNELS.prefixed("k");
            let mut qb = QueryBuilder::new(format!("SELECT {cols} FROM kernels k"));
            push_container_filters(&mut qb, q);
            push_order(&mut qb, "k", q.order, CONTAINER_ORDER_KEYS)?;
            push_page(&mut qb, q.limit, q.offset);
            let mut reader = self.reads.get().await?;
            let rows = qb.build().fetch_all(reader.conn()).await?;
            let items = rows
                .iter()
                .map(|r| kernel_from(&mut PgCells::at(r, 0, KERNELS.name), false))
                .collect::<Result<Vec<_>, _>>()?;
            let mut count = QueryBuilder::new("SELECT count(*) FROM kernels k");
            push_container_filters(&mut count, q);
            let total_count: i64 = count.build_query_scalar().fetch_one(reader.conn()).await?;
            reader.done();
            self.count_statements(2);
            Ok(Page { items, total_count })
        })
    }

    fn container<'a>(&'a self, id: Uuid, scope: &'a Scope) -> ReadFuture<'a, Option<KernelRow>> {
        Box::pin(async move {
            let cols = KERNELS.prefixed("k");
            let mut qb = QueryBuilder::new(format!(
                "SELECT {cols} FROM kernels k JOIN sessions s ON s.id = k.session_id WHERE k.id = "
            ));
            qb.push_bind(id);
            push_scope(&mut qb, "s", scope);
            let row = self.reads.fetch_optional(qb.build()).await?;
            self.count_statements(1);
            row.as_ref()
                .map(|r| kernel_from(&mut PgCells::at(r, 0, KERNELS.name), false))
                .transpose()
        })
    }

    fn keypair<'a>(&'a self, access_key: &'a str) -> ReadFuture<'a, Option<KeyPair>> {
        Box::pin(async move {
            let row = self
                .reads
                .fetch_optional(
                    sqlx::query(&format!(
                        "SELECT {} FROM keypairs WHERE access_key = $1",
                        KEYPAIRS.list()
                    ))
                    .bind(access_key),
                )
                .await?;
            self.count_statements(1);
            row.as_ref()
                .map(|r| keypair_from(&mut PgCells::at(r, 0, KEYPAIRS.name)))
                .transpose()
        })
    }

    fn ping<'a>(&'a self) -> ReadFuture<'a, ()> {
        Box::pin(async move {
            self.reads.fetch_all(sqlx::query("SELECT 1")).await?;
            Ok(())
        })
    }

    fn session_events(&self, after: i64, limit: i64) -> ReadFuture<'_, Vec<SessionEvent>> {
        Box::pin(async move {
            let mut qb = live::pages_query::<Postgres>(after, limit);
            let rows = self.reads.fetch_all(qb.build()).await?;
            let pages = rows
                .iter()
                .map(|r| live::page_from(&mut PgCells::at(r, 0, live::PAGES_TABLE)));
            live::events_after(pages, after, limit)
        })
    }

    fn changes_after(&self, after: i64, limit: i64) -> ReadFuture<'_, ChangesAfter> {
        Box::pin(async move {
            let mut qb = changes::changes_query::<Postgres>(after, limit);
            let rows = self.reads.fetch_all(qb.build()).await?;
            changes::changes_after(
                rows.iter()
                    .map(|r| changes::change_from(&mut PgCells::at(r, 0, changes::CHANGES_TABLE))),
            )
        })
    }

    fn session_event_log(&self) -> ReadFuture<'_, LogExtent> {
        Box::pin(async move {
            let rows = self.reads.fetch_all(sqlx::query(live::EXTENT_SQL)).await?;
            match rows.first() {
                Some(r) => live::extent_from(&mut PgCells::at(r, 0, "session_events_head")),
                None => Ok(LogExtent::default()),
            }
        })
    }

    fn committed_positions(&self) -> ReadFuture<'_, Vec<CommittedPosition>> {
        Box::pin(async move {
            let rows = self
                .reads
                .fetch_all(sqlx::query(live::POSITIONS_SQL))
                .await?;
            rows.iter()
                .map(|r| live::position_from(&mut PgCells::at(r, 0, "source_positions")))
                .collect()
        })
    }

    fn commit_wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        use futures_util::StreamExt;
        let pool = self.pool().clone();
        // LISTEN on a connection of its own (re-established after a failure, a second later);
        // every wake-up of the in-process signal too. A hot standby refuses LISTEN: that is said
        // once, the stream then wakes its follower every `STANDBY_POLL` instead (what the standby
        // has replayed is read that often), and LISTEN is tried again every minute (the standby
        // may be promoted).
        let listened = futures_util::stream::unfold(
            (None, false, None::<std::time::Instant>),
            move |(listener, told, retry_at)| {
                let pool = pool.clone();
                async move {
                    let mut told = told;
                    let mut listener: sqlx::postgres::PgListener = match listener {
                        Some(l) => l,
                        None => {
                            if let Some(at) = retry_at
                                && std::time::Instant::now() < at
                            {
                                tokio::time::sleep(STANDBY_POLL).await;
                                return Some(((), (None, told, retry_at)));
                            }
                            loop {
                                match sqlx::postgres::PgListener::connect_with(&pool).await {
                                    Ok(mut l) => match l.listen(live::SESSION_EVENTS_CHANNEL).await
                                    {
                                        Ok(()) => break l,
                                        Err(e) if in_recovery(&e) => {
                                            if !told {
                                                tracing::info!(
                                                    "the database is a hot standby, which refuses \
                                                     LISTEN: commits are followed by reading it \
                                                     every 100 ms"
                                                );
                                                told = true;
                                            }
                                            let at = std::time::Instant::now()
                                                + std::time::Duration::from_secs(60);
                                            return Some(((), (None, told, Some(at))));
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "LISTEN failed; retrying")
                                        }
                                    },
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cannot connect to LISTEN; retrying")
                                    }
                                }
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            }
                        }
                    };
                    match listener.recv().await {
                        Ok(_) => Some(((), (Some(listener), told, None))),
                        Err(e) => {
                            tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                            // Wake the follower: it reads what it may have missed.
                            Some(((), (None, told, None)))
                        }
                    }
                }
            },
        );
        futures_util::stream::select(listened, crate::read::in_process_wakeups()).boxed()
    }

    fn statements_executed(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn read_connections(&self) -> Option<ReadConnections> {
        Some(self.reads.status())
    }
}

/// How often a follower of a hot standby (which refuses LISTEN) is woken to read what the
/// standby has replayed.
const STANDBY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `e` is PostgreSQL refusing a statement because the server is in recovery (a hot
/// standby): SQLSTATE 25006, `read_only_sql_transaction`.
fn in_recovery(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "25006")
}

impl KeyPairAdmin for PgStore {
    async fn insert_keypair(&self, kp: &KeyPair) -> Result<(), StoreError> {
        insert::<Postgres, 8>(&KEYPAIRS, [keypair_values(kp)])
            .build()
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn list_keypairs(&self) -> Result<Vec<KeyPair>, StoreError> {
        let sql = format!(
            "SELECT {} FROM keypairs ORDER BY created_at, access_key",
            KEYPAIRS.list()
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| keypair_from(&mut PgCells::at(r, 0, KEYPAIRS.name)))
            .collect()
    }

    async fn deactivate_keypair(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE keypairs SET is_active = false WHERE access_key = $1")
            .bind(access_key)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(access_key: Option<&str>, statuses: usize, group: bool) -> SessionListQuery {
        SessionListQuery {
            scope: Scope::default(),
            domain_name: None,
            group_id: group.then(Uuid::nil),
            access_key: access_key.map(str::to_owned),
            statuses: [
                sessionview_events::Status::Running,
                sessionview_events::Status::Terminated,
            ][..statuses]
                .to_vec(),
            order: None,
            limit: 10,
            offset: 0,
        }
    }

    #[test]
    fn only_lists_of_one_access_key_and_at_most_one_status_keep_a_generic_plan() {
        assert!(generic_plan_fits(&list(Some("AK"), 0, false)));
        assert!(generic_plan_fits(&list(Some("AK"), 1, false)));
        // A user's own lists: the access key comes from the scope.
        let mut scoped = list(None, 1, false);
        scoped.scope.access_key = Some("AK".into());
        assert!(generic_plan_fits(&scoped));

        assert!(!generic_plan_fits(&list(Some("AK"), 2, false)));
        assert!(!generic_plan_fits(&list(Some("AK"), 1, true)));
        assert!(!generic_plan_fits(&list(None, 1, false)));
        let mut domain = list(None, 0, false);
        domain.domain_name = Some("default".into());
        assert!(!generic_plan_fits(&domain));
    }
}
