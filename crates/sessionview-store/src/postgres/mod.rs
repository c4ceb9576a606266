//! The PostgreSQL backend: how it stores each column kind ([`Cells`], [`Dialect`]) and its
//! implementation of the store's traits. The files mirror `sqlite/`: `connect`, `load`, `commit`,
//! `read`, `admin`; `read_pool` is the read side's own connection pool.

mod admin;
mod commit;
mod connect;
mod load;
mod read;
mod read_pool;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sessionview_projection::{LoadRequest, Loaded, SessionState};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use tracing::instrument;
use uuid::Uuid;

pub use admin::{Freeze, LIVE_SCHEMA, SESSION_COUNTS_TABLE};
pub use connect::{PgSettings, PgStore, PlanCache};

use crate::columns::{Cells, Value};
use crate::schema::{self, MigrationId, SchemaStatus};
use crate::sql::Dialect;
use crate::{
    Commit, CommitOutcome, DeadLetterFilter, OperationsStore, ProjectorStore, SchemaStore,
    StoreCounts, StoreError, StoredDeadLetter, protocol,
};

/// The cells of a row from column `next` on, in their native types.
pub(crate) struct PgCells<'r> {
    row: &'r PgRow,
    next: usize,
    table: &'static str,
}

impl<'r> PgCells<'r> {
    pub(crate) fn at(row: &'r PgRow, first: usize, table: &'static str) -> Self {
        Self {
            row,
            next: first,
            table,
        }
    }

    fn get<T>(&mut self) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let v = self.row.try_get(self.next)?;
        self.next += 1;
        Ok(v)
    }
}

impl Cells for PgCells<'_> {
    fn table(&self) -> &'static str {
        self.table
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError> {
        self.get()
    }
    fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        self.get()
    }
    fn opt_int4(&mut self) -> Result<Option<i32>, StoreError> {
        self.get()
    }
    fn opt_int8(&mut self) -> Result<Option<i64>, StoreError> {
        self.get()
    }
    fn opt_bool(&mut self) -> Result<Option<bool>, StoreError> {
        self.get()
    }
    fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.get()
    }
    fn opt_json(&mut self) -> Result<Option<Json>, StoreError> {
        self.get()
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get()
    }
}

impl Dialect for Postgres {
    fn push_value<'a>(qb: &mut QueryBuilder<'a, Self>, v: Value<'a>) {
        match v {
            Value::Uuid(v) => qb.push_bind(v),
            Value::Text(v) => qb.push_bind(v),
            Value::Int4(v) => qb.push_bind(v),
            Value::Int8(v) => qb.push_bind(v),
            Value::Bool(v) => qb.push_bind(v),
            Value::Time(v) => qb.push_bind(v),
            Value::Json(v) => qb.push_bind(v).push("::jsonb"),
            Value::Bytes(v) => qb.push_bind(v),
        };
    }

    fn push_in<'a>(qb: &mut QueryBuilder<'a, Self>, mut values: Vec<Value<'a>>) {
        if values.len() == 1
            && let Some(one) = values.pop()
        {
            qb.push(" = ");
            Self::push_value(qb, one);
            return;
        }
        // One array parameter: the statement text is the same for every number of values.
        qb.push(" = ANY(");
        match values.first() {
            Some(Value::Text(_)) => {
                let texts: Vec<Option<&str>> = values
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => *t,
                        _ => None,
                    })
                    .collect();
                qb.push_bind(texts);
            }
            Some(Value::Int8(_)) => {
                let ints: Vec<Option<i64>> = values
                    .iter()
                    .map(|v| match v {
                        Value::Int8(i) => *i,
                        _ => None,
                    })
                    .collect();
                qb.push_bind(ints);
            }
            _ => {
                let ids: Vec<Option<Uuid>> = values
                    .iter()
                    .map(|v| match v {
                        Value::Uuid(u) => *u,
                        _ => None,
                    })
                    .collect();
                qb.push_bind(ids);
            }
        }
        qb.push(")");
    }
}

impl SchemaStore for PgStore {
    async fn apply_migrations(&self) -> Result<Vec<MigrationId>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let applied = schema::migrate(&mut *conn, &connect::migrator()).await;
        if applied.is_err() {
            // It may still hold the migration lock, or be inside a failed migration.
            conn.close_on_drop();
        }
        applied
    }

    async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let mut conn = self.pool.acquire().await?;
        schema::status(&mut *conn, &connect::migrator()).await
    }
}

impl ProjectorStore for PgStore {
    async fn positions(&self, source: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        load::positions(&self.pool, source).await
    }

    #[instrument(skip_all, fields(sessions = req.session_ids.len(), events = req.event_ids.len()))]
    async fn load(&self, req: &LoadRequest) -> Result<Loaded, StoreError> {
        protocol::load(&self.pool, req).await
    }

    #[instrument(skip_all, fields(source = commit.source, sessions = commit.changes.sessions.len()))]
    async fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        protocol::commit(&self.pool, commit).await
    }

    async fn expire_parked(
        &self,
        source: &str,
        partitions: &[i32],
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        commit::expire_parked(&self.pool, source, partitions, cutoff).await
    }

    #[instrument(skip_all)]
    async fn refresh_statistics(&self) -> Result<Vec<String>, StoreError> {
        admin::refresh_statistics(&self.pool).await
    }
}

impl OperationsStore for PgStore {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        admin::dead_letters(&self.pool, filter).await
    }

    async fn all_sessions(&self) -> Result<Vec<SessionState>, StoreError> {
        protocol::all_sessions(&self.pool).await
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        admin::counts(&self.pool).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn reset_read_model(&self) -> Result<(), StoreError> {
        sqlx::query(&format!("TRUNCATE {}", crate::READ_MODEL_TABLES.join(", ")))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
