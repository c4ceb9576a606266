//! PostgreSQL connections: settings, the write pool and the read pool, migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::read_pool::ReadPool;
use crate::StoreError;
use crate::schema;

/// This build's migrations (`migrations/postgres`), set up to tolerate a newer binary's.
pub(super) fn migrator() -> sqlx::migrate::Migrator {
    schema::configured(sqlx::migrate!("../../migrations/postgres"))
}

schema::schema_connection!(
    PgConnection,
    // Which of the schema's bookkeeping tables exist.
    "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, \
     to_regclass('schema_compatibility') IS NOT NULL",
    "UPDATE schema_compatibility SET written_by = $1, level = GREATEST(level, $2)"
);

/// Refuses a URL that is not PostgreSQL's.
pub(super) fn check_url(url: &str) -> Result<(), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// The write pool's options: at most `max_connections`, opened as they are needed.
pub(super) fn write_pool(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // No ping before every acquire: it doubles the round trips of short statements; a
        // broken connection fails its statement (a transient error) and is discarded.
        .test_before_acquire(false)
}

/// Server-side settings for every connection of a [`PgStore`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PgSettings {
    /// Statements running longer are cancelled by the server.
    pub statement_timeout: Option<Duration>,
    /// Like `statement_timeout`, for the read pool's connections only (the query service's
    /// reads, in a process that also projects: its commits are not cut short).
    pub read_statement_timeout: Option<Duration>,
    /// A session idle inside a transaction for longer is terminated by the server, releasing its
    /// locks: a paused process (a GC pause, a frozen VM, SIGSTOP) cannot block the others for
    /// longer than this.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// How the server plans cached (prepared) statements.
    pub plan_cache: PlanCache,
}

/// PostgreSQL's `plan_cache_mode` for every connection of a [`PgStore`]. It applies to the
/// statements the store runs unnamed (`persistent(false)`) too: under `force_generic_plan` they
/// are planned without their values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlanCache {
    /// The server's setting (by default: five custom plans, then the generic one if it does not
    /// look costlier).
    #[default]
    Server,
    /// Every execution planned for its values (`force_custom_plan`).
    Custom,
    /// One generic plan per statement (`force_generic_plan`), unnamed ones included: only for
    /// connections whose every statement has a best plan that does not depend on its values.
    Generic,
}

/// A PostgreSQL-backed store (cheap to clone). Writes, migrations and administration go through
/// one pool (sqlx's); the query service's reads through another ([`ReadPool`]), each of at most
/// the given number of connections and opening them as they are needed.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    pub(super) reads: ReadPool,
    /// Statements executed by the read side (see [`crate::ReadModel::statements_executed`]).
    pub(super) statements: Arc<AtomicU64>,
}

impl PgStore {
    /// Connects to `url` (`postgres://...`) with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, max_connections, None).await
    }

    /// Like [`PgStore::connect`], and every statement of every connection is cancelled by the
    /// server after `statement_timeout` (the query service's guard against runaway queries).
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        statement_timeout: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let settings = PgSettings {
            statement_timeout,
            ..PgSettings::default()
        };
        Self::connect_with_settings(url, max_connections, &settings).await
    }

    /// Like [`PgStore::connect`], with server-side session settings for every connection.
    pub async fn connect_with_settings(
        url: &str,
        max_connections: u32,
        settings: &PgSettings,
    ) -> Result<Self, StoreError> {
        check_url(url)?;
        let mut options = PgConnectOptions::from_str(url)?.application_name("sessionview");
        let mut session = Vec::new();
        if let Some(t) = settings.statement_timeout {
            session.push(("statement_timeout", t.as_millis().to_string()));
        }
        if let Some(t) = settings.idle_in_transaction_timeout {
            session.push((
                "idle_in_transaction_session_timeout",
                t.as_millis().to_string(),
            ));
        }
        match settings.plan_cache {
            PlanCache::Server => {}
            PlanCache::Custom => session.push(("plan_cache_mode", "force_custom_plan".to_owned())),
            PlanCache::Generic => {
                session.push(("plan_cache_mode", "force_generic_plan".to_owned()));
            }
        }
        let mut read_options = options.clone();
        let mut read_session = session.clone();
        if let Some(t) = settings.read_statement_timeout {
            read_session.push(("statement_timeout", t.as_millis().to_string()));
        }
        if !read_session.is_empty() {
            read_options = read_options.options(read_session);
        }
        if !session.is_empty() {
            options = options.options(session);
        }
        let pool = write_pool(max_connections).connect_with(options).await?;
        let reads = ReadPool::new(Arc::new(read_options), max_connections as usize);
        Ok(Self {
            pool,
            reads,
            statements: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Wraps an existing pool; reads get a pool of as many connections with the same options.
    pub fn from_pool(pool: PgPool) -> Self {
        let reads = ReadPool::new(
            pool.connect_options(),
            pool.options().get_max_connections() as usize,
        );
        Self {
            pool,
            reads,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The pool of writes and administration.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes both pools, waiting for the write pool's connections to be closed; read connections
    /// in use are closed when they come back.
    pub async fn close(&self) {
        self.reads.close();
        self.pool.close().await;
    }
}
