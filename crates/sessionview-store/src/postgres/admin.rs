//! PostgreSQL operations: counts, dead letters, planner statistics, and for `replay` shadow
//! schemas, content digests and the atomic swap.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use sqlx::PgPool;

use super::{PgCells, PgStore};
use crate::columns::{counts_from, counts_sql, dead_letter_from};
use crate::sql::dead_letter_query;
use crate::{DeadLetterFilter, StoreCounts, StoreError, StoredDeadLetter};

/// Running session counts behind list totals (PostgreSQL only).
pub const SESSION_COUNTS_TABLE: &str = "session_counts";

/// The schema the live tables are in.
pub const LIVE_SCHEMA: &str = "public";

/// A schema name safe to interpolate into SQL.
fn checked(schema: &str) -> Result<&str, StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(schema)
    } else {
        Err(StoreError::Corrupt {
            table: "schema",
            detail: format!("{schema:?} is not a plain lower-case schema name"),
        })
    }
}

impl PgStore {
    /// Connects with every table name resolved in `schema` first (its own migrations too).
    pub async fn connect_in_schema(
        url: &str,
        max_connections: u32,
        schema: &str,
    ) -> Result<Self, StoreError> {
        let schema = checked(schema)?;
        super::connect::check_url(url)?;
        let options = PgConnectOptions::from_str(url)?
            .application_name("sessionview-replay")
            .options([("search_path", schema)]);
        let pool = super::connect::write_pool(max_connections)
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// Drops `schema` with everything in it, and creates it empty.
    pub async fn reset_schema(&self, schema: &str) -> Result<(), StoreError> {
        let schema = checked(schema)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops `schema` if it exists.
    pub async fn drop_schema(&self, schema: &str) -> Result<(), StoreError> {
        let schema = checked(schema)?;
        let mut tx = self.pool().begin().await?;
        // After a swap the retired schema holds the tables that were live: readers running a
        // plan cached before the swap still lock them, by id, one by one. Their locks are taken
        // all at once first (as the swap takes the live ones), so the drop cannot deadlock them.
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
                .bind(schema)
                .fetch_all(&mut *tx)
                .await?;
        if !tables.is_empty() {
            let list = tables
                .iter()
                .map(|t| format!("{schema}.\"{}\"", t.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ");
            lock_all(&mut tx, &list).await?;
        }
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the replay lock (a session-level advisory lock) on a dedicated connection; `None` if
    /// another replay holds it. The lock lives as long as the returned connection.
    pub async fn try_replay_lock(
        &self,
    ) -> Result<Option<sqlx::pool::PoolConnection<Postgres>>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7346218, 1)")
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(conn))
    }

    /// A digest of every session's content (its row, its containers' rows, its dependencies) in
    /// `schema`, by session id.
    pub async fn session_digests(
        &self,
        schema: &str,
    ) -> Result<BTreeMap<Uuid, String>, StoreError> {
        let x = checked(schema)?;
        let rows = sqlx::query(&format!(
            "SELECT s.id, md5(row(s.*)::text \
               || coalesce((SELECT string_agg(row(k.*)::text, '|' ORDER BY k.ordinal) \
                            FROM {x}.kernels k WHERE k.session_id = s.id), '') \
               || coalesce((SELECT string_agg(d.depends_on::text, ',' ORDER BY d.ordinal) \
                            FROM {x}.session_dependencies d WHERE d.session_id = s.id), '')) AS digest \
             FROM {x}.sessions s"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("digest")?)))
            .collect()
    }

    /// Where the running session counts (`session_counts`, behind list totals) in `schema`
    /// disagree with the sessions counted row by row: `(access_key, status, rows, kept)` per
    /// filter combination, empty when they agree. A projector of a version before the counts
    /// table, writing after its migration, is the way they drift; a replay rebuilds them.
    pub async fn session_count_drift(
        &self,
        schema: &str,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let x = checked(schema)?;
        let rows = sqlx::query(&format!(
            "WITH rows AS (SELECT access_key, status, domain_name, group_id, count(*)::int8 AS n \
                           FROM {x}.sessions GROUP BY 1, 2, 3, 4), \
                  kept AS (SELECT access_key, status, domain_name, group_id, sum(n)::int8 AS n \
                           FROM {x}.{SESSION_COUNTS_TABLE} GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0) \
             SELECT coalesce(r.access_key, k.access_key) AS access_key, \
                    coalesce(r.status, k.status) AS status, \
                    coalesce(r.n, 0) AS counted, coalesce(k.n, 0) AS kept \
             FROM rows r FULL JOIN kept k USING (access_key, status, domain_name, group_id) \
             WHERE r.n IS DISTINCT FROM k.n ORDER BY 1, 2"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("access_key")?,
                    r.try_get("status")?,
                    r.try_get("counted")?,
                    r.try_get("kept")?,
                ))
            })
            .collect()
    }

    /// Row counts of the read model's tables in `schema`.
    pub async fn counts_in(&self, schema: &str) -> Result<StoreCounts, StoreError> {
        let x = checked(schema)?;
        let r = sqlx::query(&counts_sql(&format!("{x}.")))
            .fetch_one(self.pool())
            .await?;
        counts_from(&mut PgCells::at(&r, 0, "counts"))
    }

    /// Opens the swap transaction: blocks the live projector's commits (an EXCLUSIVE lock on the
    /// live positions; readers are not blocked) so that live and shadow can be compared and
    /// swapped at the same source positions.
    pub async fn freeze_live(&self, lock_timeout: Duration) -> Result<Freeze, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = {}",
            lock_timeout.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "LOCK TABLE {LIVE_SCHEMA}.source_positions IN EXCLUSIVE MODE"
        ))
        .execute(&mut *tx)
        .await?;
        Ok(Freeze { tx })
    }
}

/// Row counts of every table.
pub(super) async fn counts(pool: &PgPool) -> Result<StoreCounts, StoreError> {
    let r = sqlx::query(&counts_sql("")).fetch_one(pool).await?;
    counts_from(&mut PgCells::at(&r, 0, "counts"))
}

/// Empties the read model's tables, and notes that everything changed.
pub(super) async fn reset_read_model(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("TRUNCATE {}", crate::READ_MODEL_TABLES.join(", ")))
        .execute(&mut *tx)
        .await?;
    crate::protocol::note_everything::<Postgres>(&mut tx).await?;
    tx.commit().await?;
    crate::live::COMMITTED.notify_waiters();
    Ok(())
}

/// Dead letters, oldest first.
pub(super) async fn dead_letters(
    pool: &PgPool,
    filter: &DeadLetterFilter,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let rows = dead_letter_query::<sqlx::Postgres>(filter)
        .build()
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| dead_letter_from(&mut PgCells::at(r, 0, "dead_letters")))
        .collect()
}

/// See [`crate::ProjectorStore::refresh_statistics`].
pub(super) async fn refresh_statistics(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    // `relpages` is what the last ANALYZE (or VACUUM) saw, 0 before the first; the 64 KiB
    // floor leaves tables alone while a scan of them costs nothing anyway. Names resolve
    // through the search path, like every statement of the store (a replay's shadow schema).
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         WHERE c.oid = ANY($1::text[]::regclass[]) \
           AND pg_relation_size(c.oid) \
               > 2 * c.relpages::int8 * current_setting('block_size')::int8 + 65536",
    )
    .bind(GROWING_TABLES.iter().map(|(t, _)| *t).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let mut analyzed = Vec::new();
    // Names from the constant list, never from the database, go into the statement.
    for (table, columns) in GROWING_TABLES
        .iter()
        .filter(|(t, _)| grown.iter().any(|g| g == *t))
    {
        sqlx::query(&format!("ANALYZE {table} ({columns})"))
            .execute(pool)
            .await?;
        analyzed.push((*table).to_owned());
    }
    Ok(analyzed)
}

/// The tables read by key that grow with the stream (the projector's loads and the query
/// service's lookups need their statistics current to be planned as index scans), each with the
/// columns those plans filter and order on. Only these are sampled: the JSON columns are most of
/// a full `ANALYZE`'s cost (of the 1,000,000-event bench stream's tables: `kernels` 560–670 ms in
/// full, 100–120 ms with these columns; `sessions` 550 → 130 ms) and no plan of ours reads their
/// statistics. The row count and size, which is what a young table's
/// plans lack, are refreshed by any `ANALYZE`; autovacuum still analyzes every column later.
const GROWING_TABLES: &[(&str, &str)] = &[
    (
        "sessions",
        "id, access_key, status, domain_name, group_id, user_id, last_touched",
    ),
    ("kernels", "id, session_id, ordinal"),
    ("session_dependencies", "session_id, depends_on"),
    ("session_seen", "session_id"),
    ("parked_events", "session_id, source, partition, \"offset\""),
];

/// Takes the ACCESS EXCLUSIVE lock of every table in `tables` (a comma-separated list) inside
/// `conn`'s transaction, all in one statement that waits at most [`SWAP_LOCK_WAIT`], released and tried again
/// until [`SWAP_LOCK_BUDGET`] has passed (see [`Freeze::lock_live_tables`]: readers lock a
/// statement's tables one by one, a cached plan by the tables' ids in its own order, so waiting
/// for each table while holding the others could close a cycle with a reader).
async fn lock_all(conn: &mut sqlx::PgConnection, tables: &str) -> Result<(), StoreError> {
    let give_up = std::time::Instant::now() + SWAP_LOCK_BUDGET;
    loop {
        sqlx::query("SAVEPOINT swap_locks")
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = {}",
            SWAP_LOCK_WAIT.as_millis()
        ))
        .execute(&mut *conn)
        .await?;
        let locked = sqlx::query(&format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *conn)
            .await;
        match locked {
            Ok(_) => {
                sqlx::query("RELEASE SAVEPOINT swap_locks")
                    .execute(&mut *conn)
                    .await?;
                // The 50 ms wait would outlive the savepoint (a released savepoint keeps its
                // SET LOCAL) and apply to the moves that follow, whose only other lockers are
                // autovacuum workers on the freshly loaded shadow and retired tables: they
                // yield after `deadlock_timeout` (1 s), so the moves may wait that long.
                sqlx::query(&format!(
                    "SET LOCAL lock_timeout = {}",
                    SWAP_LOCK_BUDGET.as_millis()
                ))
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE)
                    && std::time::Instant::now() < give_up =>
            {
                // Releases what this attempt locked (the freeze's own lock stays).
                sqlx::query("ROLLBACK TO SAVEPOINT swap_locks")
                    .execute(&mut *conn)
                    .await?;
                tokio::time::sleep(SWAP_LOCK_WAIT / 2).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long one attempt of the swap waits for the live tables' locks.
const SWAP_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// How long the swap keeps trying to lock the live tables before it fails.
const SWAP_LOCK_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// SQLSTATE of a lock not obtained within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The open swap transaction (see [`PgStore::freeze_live`]). Dropping it rolls back.
#[derive(Debug)]
pub struct Freeze {
    tx: Transaction<'static, Postgres>,
}

impl Freeze {
    /// The live positions of `source`, stable while the freeze lasts.
    pub async fn live_positions(&mut self, source: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT partition, next_offset FROM {LIVE_SCHEMA}.source_positions WHERE source = $1"
        ))
        .bind(source)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("partition")?, r.try_get("next_offset")?)))
            .collect()
    }

    /// Moves the live read-model tables into `retired` and the tables of `shadow` into the live
    /// schema, then commits: readers see the old tables or the new ones, never a mix.
    pub async fn swap_and_commit(mut self, shadow: &str, retired: &str) -> Result<(), StoreError> {
        let shadow = checked(shadow)?;
        let retired = checked(retired)?;
        self.lock_live_tables().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {retired} CASCADE"))
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {retired}"))
            .execute(&mut *self.tx)
            .await?;
        for table in crate::READ_MODEL_TABLES {
            sqlx::query(&format!(
                "ALTER TABLE {LIVE_SCHEMA}.{table} SET SCHEMA {retired}"
            ))
            .execute(&mut *self.tx)
            .await?;
            sqlx::query(&format!(
                "ALTER TABLE {shadow}.{table} SET SCHEMA {LIVE_SCHEMA}"
            ))
            .execute(&mut *self.tx)
            .await?;
        }
        // The change log stays in the live schema; every cached answer is stale now.
        crate::protocol::note_everything::<Postgres>(&mut self.tx).await?;
        self.tx.commit().await?;
        crate::live::COMMITTED.notify_waiters();
        Ok(())
    }

    /// Takes every live table's ACCESS EXCLUSIVE lock, all in one statement that waits at most
    /// [`SWAP_LOCK_WAIT`], released and tried again until [`SWAP_LOCK_BUDGET`] has passed.
    ///
    /// Readers lock the tables of a statement one by one, a cached plan in its own order, so a
    /// swap that waited for each table while holding the others could close a cycle with a
    /// reader; PostgreSQL would then cancel one of the two after `deadlock_timeout` (1 s), and
    /// it was the reader (a query failing during a rebuild). Giving up after 50 ms, long before
    /// any deadlock check, leaves the readers alone: a swap waits, a read never fails.
    async fn lock_live_tables(&mut self) -> Result<(), StoreError> {
        let tables = crate::READ_MODEL_TABLES
            .iter()
            .map(|t| format!("{LIVE_SCHEMA}.{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        lock_all(&mut self.tx, &tables).await
    }

    /// Ends the freeze without changing anything.
    pub async fn release(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_schema_names_are_interpolated() {
        assert!(checked("sessionview_shadow").is_ok());
        for bad in ["", "Public", "a;drop", "x y", "1abc", "a\"b"] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }
}
