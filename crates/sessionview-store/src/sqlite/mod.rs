//! The SQLite backend (the embedded default): how it stores each column kind (UUIDs, times and
//! JSON as text: [`Cells`], [`Dialect`]) and its implementation of the store's traits. The files
//! mirror `postgres/`: `connect`, `load`, `commit`, `read`, `admin`.

mod admin;
mod commit;
mod connect;
mod load;
mod read;

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sessionview_projection::{LoadRequest, Loaded, SessionState};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

pub use connect::SqliteStore;

use crate::columns::{Cells, Value};
use crate::schema::{self, MigrationId, SchemaStatus};
use crate::sql::Dialect;
use crate::{
    Commit, CommitOutcome, DeadLetterFilter, OperationsStore, ProjectorStore, SchemaStore,
    StoreCounts, StoreError, StoredDeadLetter, protocol,
};

/// Rows per multi-row statement, and ids per `IN` list (SQLite allows 32,766 bound values per
/// statement).
const CHUNK: usize = 500;

/// A time as stored: RFC 3339 with microseconds, so that text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The cells of a row from column `next` on, as SQLite stores them.
pub(crate) struct SqliteCells<'r> {
    row: &'r SqliteRow,
    next: usize,
    table: &'static str,
}

impl<'r> SqliteCells<'r> {
    pub(crate) fn at(row: &'r SqliteRow, first: usize, table: &'static str) -> Self {
        Self {
            row,
            next: first,
            table,
        }
    }

    fn get<T>(&mut self) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        let v = self.row.try_get(self.next)?;
        self.next += 1;
        Ok(v)
    }

    /// The next cell as text, parsed.
    fn parsed<T, E: std::fmt::Display>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, StoreError> {
        match self.get::<Option<String>>()? {
            Some(s) => parse(&s)
                .map(Some)
                .map_err(|e| self.corrupt(format!("{s:?}: {e}"))),
            None => Ok(None),
        }
    }
}

impl Cells for SqliteCells<'_> {
    fn table(&self) -> &'static str {
        self.table
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError> {
        self.parsed(Uuid::from_str)
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
        self.parsed(|s| DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)))
    }
    fn opt_json(&mut self) -> Result<Option<Json>, StoreError> {
        self.parsed(|s| serde_json::from_str(s))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get()
    }
}

impl Dialect for Sqlite {
    fn push_value<'a>(qb: &mut QueryBuilder<'a, Self>, v: Value<'a>) {
        match v {
            Value::Uuid(v) => qb.push_bind(v.map(|u| u.to_string())),
            Value::Text(v) => qb.push_bind(v),
            Value::Int4(v) => qb.push_bind(v),
            Value::Int8(v) => qb.push_bind(v),
            Value::Bool(v) => qb.push_bind(v),
            Value::Time(v) => qb.push_bind(v.map(ts)),
            Value::Json(v) => qb.push_bind(v),
            Value::Bytes(v) => qb.push_bind(v),
        };
    }

    fn push_in<'a>(qb: &mut QueryBuilder<'a, Self>, values: Vec<Value<'a>>) {
        qb.push(" IN (");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            Self::push_value(qb, v);
        }
        qb.push(")");
    }
}

/// `column IN (?, ...)` of ids, for one chunk.
fn push_ids<'a>(qb: &mut QueryBuilder<'a, Sqlite>, column: &str, ids: &[Uuid]) {
    qb.push(column);
    Sqlite::push_in(qb, ids.iter().map(|id| Value::Uuid(Some(*id))).collect());
}

impl SchemaStore for SqliteStore {
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

impl ProjectorStore for SqliteStore {
    async fn positions(&self, source: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        load::positions(&self.pool, source).await
    }

    async fn load(&self, req: &LoadRequest) -> Result<Loaded, StoreError> {
        protocol::load(&self.pool, req).await
    }

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

    async fn refresh_statistics(&self) -> Result<Vec<String>, StoreError> {
        // Without `sqlite_stat1` rows SQLite assumes an index narrows a lookup to a few rows,
        // which is right for every key lookup here; there is no cached plan to go stale.
        Ok(Vec::new())
    }
}

impl OperationsStore for SqliteStore {
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
        admin::reset_read_model(&self.pool).await
    }
}
