//! The read side's PostgreSQL connections: a pool whose connections go back without a round trip
//! once their statement has completed.
//!
//! sqlx's own pool pings every connection it takes back (a `Sync`, answered by `ReadyForQuery`),
//! to find connections a dropped future left mid-statement. For a key lookup that is two of the
//! six messages a GraphQL request costs between client, service and PostgreSQL, and a task per
//! request. Here a connection is checked only when its last use did not end cleanly: its
//! statement failed, or the request was dropped mid-statement (a client that went away). Such a
//! connection is pinged before its next use and discarded if the ping fails; sqlx then drains
//! whatever the interrupted statement left unread before the next one.

use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult};
use sqlx::Connection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use tracing::warn;

/// A statement with its arguments bound.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Connections older than this are closed instead of reused (as sqlx's pool does by default):
/// server-side caches do not grow for ever, and a replaced server behind a proxy gets its share.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long a read waits for a free connection, and for a new one to be opened.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection and whether its last use ended cleanly.
#[derive(Debug)]
pub(crate) struct ReadConnection {
    conn: PgConnection,
    settled: bool,
}

/// Opens and checks [`ReadConnection`]s.
#[derive(Debug)]
pub(crate) struct Manager {
    options: Arc<PgConnectOptions>,
}

impl managed::Manager for Manager {
    type Type = ReadConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<ReadConnection, sqlx::Error> {
        Ok(ReadConnection {
            conn: PgConnection::connect_with(&self.options).await?,
            settled: true,
        })
    }

    async fn recycle(&self, c: &mut ReadConnection, m: &Metrics) -> RecycleResult<sqlx::Error> {
        if m.age() >= MAX_LIFETIME {
            return Err(RecycleError::message("older than the connection lifetime"));
        }
        if !c.settled {
            if let Err(e) = c.conn.ping().await {
                warn!(error = %e, "a read connection left mid-statement failed its check; replaced");
                return Err(RecycleError::Backend(e));
            }
            c.settled = true;
        }
        Ok(())
    }
}

/// The pool (cheap to clone). It opens connections when reads need them, up to its size.
#[derive(Debug, Clone)]
pub(crate) struct ReadPool(managed::Pool<Manager>);

impl ReadPool {
    /// A pool of at most `max_size` connections made with `options`; none is opened yet.
    pub(crate) fn new(options: Arc<PgConnectOptions>, max_size: usize) -> Self {
        let pool = managed::Pool::builder(Manager { options })
            .max_size(max_size.max(1))
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(WAIT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build();
        match pool {
            Ok(p) => Self(p),
            // `build` fails only for timeouts without a runtime, and one is given above.
            Err(e) => unreachable!("deadpool rejected a pool with a runtime: {e}"),
        }
    }

    /// A connection for one read. Call [`Reader::done`] after its statements have completed;
    /// a reader dropped without it is checked before the connection's next use.
    pub(crate) async fn get(&self) -> Result<Reader, sqlx::Error> {
        let mut object = self.0.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            PoolError::Closed => sqlx::Error::PoolClosed,
            PoolError::Backend(e) => e,
            other => sqlx::Error::Configuration(other.to_string().into()),
        })?;
        object.settled = false;
        Ok(Reader(object))
    }

    /// The rows of one statement, on a connection of the pool.
    pub(crate) async fn fetch_all(&self, q: PgQuery<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut reader = self.get().await?;
        let rows = q.fetch_all(reader.conn()).await?;
        reader.done();
        Ok(rows)
    }

    /// The row of one statement that returns at most one, on a connection of the pool.
    pub(crate) async fn fetch_optional(
        &self,
        q: PgQuery<'_>,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        let mut reader = self.get().await?;
        let row = q.fetch_optional(reader.conn()).await?;
        reader.done();
        Ok(row)
    }

    /// Closes the pool: idle connections are closed now, those in use when they come back.
    pub(crate) fn close(&self) {
        self.0.close();
    }

    /// The pool's connections now.
    pub(crate) fn status(&self) -> crate::ReadConnections {
        let s = self.0.status();
        crate::ReadConnections {
            max: s.max_size,
            in_use: s.size.saturating_sub(s.available),
            idle: s.available,
            waiting: s.waiting,
        }
    }

    /// Connections open (idle or in use).
    #[cfg(test)]
    fn size(&self) -> usize {
        self.0.status().size
    }
}

/// A connection taken from a [`ReadPool`] for one read.
#[derive(Debug)]
pub(crate) struct Reader(managed::Object<Manager>);

impl Reader {
    /// The connection, as a sqlx executor (`&mut PgConnection`).
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.0.conn
    }

    /// The read's statements completed: the connection goes back ready for the next read.
    pub(crate) fn done(mut self) {
        self.0.settled = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn options() -> Option<Arc<PgConnectOptions>> {
        let url = std::env::var("SESSIONVIEW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        PgConnectOptions::from_str(&url).ok().map(Arc::new)
    }

    async fn backend_pid(r: &mut Reader) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(r.conn())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_settled_connection_is_reused_and_a_broken_one_replaced() {
        let pool = ReadPool::new(options().unwrap(), 1);
        assert_eq!(pool.size(), 0, "no connection is opened before a read");
        let mut r = pool.get().await.unwrap();
        let first = backend_pid(&mut r).await;
        let s = pool.status();
        assert_eq!((s.max, s.in_use, s.idle, s.waiting), (1, 1, 0, 0));
        r.done();
        let s = pool.status();
        assert_eq!((s.in_use, s.idle), (0, 1));

        let mut r = pool.get().await.unwrap();
        assert_eq!(
            backend_pid(&mut r).await,
            first,
            "the same connection again"
        );
        // The connection dies while its reader is out, and the reader is dropped without
        // `done` (as a failed statement leaves it): the next read gets a new connection.
        let mut killer = PgConnection::connect_with(&options().unwrap())
            .await
            .unwrap();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&mut killer)
            .await
            .unwrap();
        assert!(killed);
        let failed = sqlx::query("SELECT 1").execute(r.conn()).await;
        assert!(
            failed.is_err(),
            "the statement on the dead connection fails"
        );
        drop(r);

        let mut r = pool.get().await.unwrap();
        let second = backend_pid(&mut r).await;
        assert_ne!(second, first);
        r.done();
        assert_eq!(pool.size(), 1);
    }

    #[tokio::test]
    async fn a_read_dropped_mid_statement_leaves_a_usable_connection() {
        let pool = ReadPool::new(options().unwrap(), 1);
        let mut r = pool.get().await.unwrap();
        let pid = backend_pid(&mut r).await;
        // A request that goes away while its statement runs.
        let slow = sqlx::query("SELECT pg_sleep(0.3), 1");
        let timed_out =
            tokio::time::timeout(Duration::from_millis(50), slow.fetch_all(r.conn())).await;
        assert!(timed_out.is_err(), "the statement was still running");
        drop(r);

        let mut r = pool.get().await.unwrap();
        let n: i32 = sqlx::query_scalar("SELECT 7")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(
            n, 7,
            "the next read sees its own answer, not the interrupted one's"
        );
        assert_eq!(
            backend_pid(&mut r).await,
            pid,
            "the checked connection was kept"
        );
        r.done();
    }
}
