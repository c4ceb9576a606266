//! SQLite connections: one pool on one database file in WAL mode, and migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};

use crate::StoreError;
use crate::schema;

/// This build's migrations (`migrations/sqlite`), set up to tolerate a newer binary's.
pub(super) fn migrator() -> sqlx::migrate::Migrator {
    schema::configured(sqlx::migrate!("../../migrations/sqlite"))
}

schema::schema_connection!(
    SqliteConnection,
    // Which of the schema's bookkeeping tables exist.
    "SELECT \
    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'), \
    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_compatibility')",
    "UPDATE schema_compatibility SET written_by = ?1, level = max(level, ?2)"
);

/// A SQLite-backed store (a connection pool on one database file; cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    pub(super) statements: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or `sqlite::memory:`),
    /// in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection (a pool has several: the projector loads on
            // one while it commits on another). 64 MiB each made a catching-up projector's
            // memory 543 MiB for 5–15 % more speed.
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
