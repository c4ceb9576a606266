//! The SQLite read side: every query the GraphQL service makes, and keypairs.

use std::sync::atomic::Ordering;

use sessionview_projection::{KernelRow, SessionRow};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{CHUNK, SqliteCells, SqliteStore, push_ids};
use crate::changes::{self, ChangesAfter};
use crate::columns::{
    Cells, KERNELS, KEYPAIRS, SESSIONS, Value, kernel_from, keypair_from, keypair_values,
    session_from,
};
use crate::live::{self, CommittedPosition, LogExtent, SessionEvent};
use crate::read::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KeyPair, KeyPairAdmin, Page, ReadFuture, ReadModel,
    SESSION_ORDER_KEYS, Scope, SessionListQuery,
};
use crate::sql::{
    Dialect, insert, push_container_filters, push_order, push_scope, push_session_filters,
};
use crate::{OperationsStore, StoreError};

impl SqliteStore {
    fn count_statements(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    /// A page: the rows of `items` (ordered; its `LIMIT` and `OFFSET` are added here) decoded by
    /// `decode`, and the total that `count` counts.
    async fn page<T>(
        &self,
        mut items: QueryBuilder<'_, Sqlite>,
        mut count: QueryBuilder<'_, Sqlite>,
        (limit, offset): (i64, i64),
        decode: impl Fn(&SqliteRow) -> Result<T, StoreError>,
    ) -> Result<Page<T>, StoreError> {
        items.push(" LIMIT ").push_bind(limit);
        items.push(" OFFSET ").push_bind(offset);
        let rows = items.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        self.count_statements(2);
        Ok(Page { items, total_count })
    }
}

impl ReadModel for SqliteStore {
    fn list_sessions<'a>(&'a self, q: &'a SessionListQuery) -> ReadFuture<'a, Page<SessionRow>> {
        Box::pin(async move {
            let mut qb =
                QueryBuilder::new(format!("SELECT {} FROM sessions s", SESSIONS.prefixed("s")));
            push_session_filters(&mut qb, q);
            push_order(&mut qb, "s", q.order, SESSION_ORDER_KEYS)?;
            let mut count = QueryBuilder::new("SELECT count(*) FROM sessions s");
            push_session_filters(&mut count, q);
            self.page(qb, count, (q.limit, q.offset), |r| {
                session_from(&mut SqliteCells::at(r, 0, SESSIONS.name))
            })
            .await
        })
    }

    fn sessions_by_ids<'a>(
        &'a self,
        ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<SessionRow>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {} FROM sessions s WHERE ",
                    SESSIONS.prefixed("s")
                ));
                push_ids(&mut qb, "s.id", chunk);
                push_scope(&mut qb, "s", scope);
                for r in qb.build().fetch_all(&self.pool).await? {
                    out.push(session_from(&mut SqliteCells::at(&r, 0, SESSIONS.name))?);
                }
                self.count_statements(1);
            }
            Ok(out)
        })
    }

    fn containers_of<'a>(&'a self, session_ids: &'a [Uuid]) -> ReadFuture<'a, Vec<KernelRow>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for chunk in session_ids.chunks(CHUNK) {
                let mut qb =
                    QueryBuilder::new(format!("SELECT {} FROM kernels WHERE ", KERNELS.list()));
                push_ids(&mut qb, "session_id", chunk);
                qb.push(" ORDER BY session_id, ordinal");
                for r in qb.build().fetch_all(&self.pool).await? {
                    out.push(kernel_from(
                        &mut SqliteCells::at(&r, 0, KERNELS.name),
                        false,
                    )?);
                }
                self.count_statements(1);
            }
            Ok(out)
        })
    }

    fn dependencies_of<'a>(
        &'a self,
        session_ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<(Uuid, SessionRow)>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for chunk in session_ids.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT d.session_id, {} FROM session_dependencies d \
                     JOIN sessions s ON s.id = d.depends_on WHERE ",
                    SESSIONS.prefixed("s")
                ));
                push_ids(&mut qb, "d.session_id", chunk);
                push_scope(&mut qb, "s", scope);
                qb.push(" ORDER BY d.session_id, d.ordinal");
                for r in qb.build().fetch_all(&self.pool).await? {
                    let parent = SqliteCells::at(&r, 0, "session_dependencies").uuid()?;
                    out.push((
                        parent,
                        session_from(&mut SqliteCells::at(&r, 1, SESSIONS.name))?,
                    ));
                }
                self.count_statements(1);
            }
            Ok(out)
        })
    }

    fn list_containers<'a>(&'a self, q: &'a ContainerListQuery) -> ReadFuture<'a, Page<KernelRow>> {
        Box::pin(async move {
            let mut qb =
                QueryBuilder::new(format!("SELECT {} FROM kernels k", KERNELS.prefixed("k")));
            push_container_filters(&mut qb, q);
            push_order(&mut qb, "k", q.order, CONTAINER_ORDER_KEYS)?;
            let mut count = QueryBuilder::new("SELECT count(*) FROM kernels k");
            push_container_filters(&mut count, q);
            self.page(qb, count, (q.limit, q.offset), |r| {
                kernel_from(&mut SqliteCells::at(r, 0, KERNELS.name), false)
            })
            .await
        })
    }

    fn container<'a>(&'a self, id: Uuid, scope: &'a Scope) -> ReadFuture<'a, Option<KernelRow>> {
        Box::pin(async move {
            let mut qb = QueryBuilder::new(format!(
                "SELECT {} FROM kernels k JOIN sessions s ON s.id = k.session_id WHERE k.id = ",
                KERNELS.prefixed("k")
            ));
            Sqlite::push_value(&mut qb, Value::Uuid(Some(id)));
            push_scope(&mut qb, "s", scope);
            let row = qb.build().fetch_optional(&self.pool).await?;
            self.count_statements(1);
            row.as_ref()
                .map(|r| kernel_from(&mut SqliteCells::at(r, 0, KERNELS.name), false))
                .transpose()
        })
    }

    fn keypair<'a>(&'a self, access_key: &'a str) -> ReadFuture<'a, Option<KeyPair>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {} FROM keypairs WHERE access_key = ?",
                KEYPAIRS.list()
            );
            let row = sqlx::query(&sql)
                .bind(access_key)
                .fetch_optional(&self.pool)
                .await?;
            self.count_statements(1);
            row.as_ref()
                .map(|r| keypair_from(&mut SqliteCells::at(r, 0, KEYPAIRS.name)))
                .transpose()
        })
    }

    fn ping<'a>(&'a self) -> ReadFuture<'a, ()> {
        Box::pin(async move { OperationsStore::ping(self).await })
    }

    fn session_events(&self, after: i64, limit: i64) -> ReadFuture<'_, Vec<SessionEvent>> {
        Box::pin(async move {
            let mut qb = live::pages_query::<Sqlite>(after, limit);
            let rows = qb.build().fetch_all(&self.pool).await?;
            let pages = rows
                .iter()
                .map(|r| live::page_from(&mut SqliteCells::at(r, 0, live::PAGES_TABLE)));
            live::events_after(pages, after, limit)
        })
    }

    fn changes_after(&self, after: i64, limit: i64) -> ReadFuture<'_, ChangesAfter> {
        Box::pin(async move {
            let mut qb = changes::changes_query::<Sqlite>(after, limit);
            let rows = qb.build().fetch_all(&self.pool).await?;
            changes::changes_after(
                rows.iter().map(|r| {
                    changes::change_from(&mut SqliteCells::at(r, 0, changes::CHANGES_TABLE))
                }),
            )
        })
    }

    fn session_event_log(&self) -> ReadFuture<'_, LogExtent> {
        Box::pin(async move {
            let row = sqlx::query(live::EXTENT_SQL).fetch_one(&self.pool).await?;
            live::extent_from(&mut SqliteCells::at(&row, 0, "session_events_head"))
        })
    }

    fn committed_positions(&self) -> ReadFuture<'_, Vec<CommittedPosition>> {
        Box::pin(async move {
            let rows = sqlx::query(live::POSITIONS_SQL)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| live::position_from(&mut SqliteCells::at(r, 0, "source_positions")))
                .collect()
        })
    }

    fn statements_executed(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

impl KeyPairAdmin for SqliteStore {
    async fn insert_keypair(&self, kp: &KeyPair) -> Result<(), StoreError> {
        insert::<Sqlite, 8>(&KEYPAIRS, [keypair_values(kp)])
            .build()
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_keypairs(&self) -> Result<Vec<KeyPair>, StoreError> {
        let sql = format!(
            "SELECT {} FROM keypairs ORDER BY created_at, access_key",
            KEYPAIRS.list()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| keypair_from(&mut SqliteCells::at(r, 0, KEYPAIRS.name)))
            .collect()
    }

    async fn deactivate_keypair(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE keypairs SET is_active = 0 WHERE access_key = ?")
            .bind(access_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
