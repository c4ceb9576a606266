//! The workspace's test harness, written once: fresh databases of both backends for one test
//! each, the administrative connection tests inject faults through, and hand-written contract
//! events ([`events`]). Dev-only (every crate
//! takes it as a dev-dependency); depends on none of ours, so that any crate's tests can use it.
//!
//! PostgreSQL comes from `SESSIONVIEW_TEST_DATABASE_URL` (an administrative URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test` starts it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a harness: a failed set-up is a failed test"
)]

pub mod events;

use std::path::PathBuf;

use sqlx::Connection;

/// The administrative PostgreSQL URL of the tests.
pub fn admin_url() -> String {
    std::env::var("SESSIONVIEW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs one statement as the administrative user (fault injection, `ALTER DATABASE ...`).
pub async fn admin_exec(sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

/// A PostgreSQL database created for one test; [`PgDatabase::drop`] removes it.
#[derive(Debug)]
pub struct PgDatabase {
    /// Its name (`sv_test_<uuid>`).
    pub name: String,
    /// Its URL, on the administrative URL's server.
    pub url: String,
}

impl PgDatabase {
    /// Creates an empty database.
    pub async fn new() -> Self {
        let admin = admin_url();
        let name = format!("sv_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = on_server(&admin, &name);
        Self { name, url }
    }

    /// Its URL on the hot standby of the test server (`SESSIONVIEW_TEST_STANDBY_URL`, which
    /// `scripts/test` sets up when run as root), where it appears once replicated.
    pub fn standby_url(&self) -> String {
        let standby = std::env::var("SESSIONVIEW_TEST_STANDBY_URL").unwrap_or_else(|_| {
            panic!(
                "SESSIONVIEW_TEST_STANDBY_URL: a hot standby of the test PostgreSQL is needed for \
                 this test (scripts/test sets one up when run as root)"
            )
        });
        on_server(&standby, &self.name)
    }

    /// Drops the database, ending the sessions still connected to it.
    pub async fn drop(self) {
        admin_exec(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

/// Database `name` on the server of the URL `server` (whose own database is replaced).
fn on_server(server: &str, name: &str) -> String {
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    format!("{base}/{name}")
}

/// An SQLite database file in a directory of its own; [`SqliteDatabase::drop`] removes both.
#[derive(Debug)]
pub struct SqliteDatabase {
    pub dir: PathBuf,
    /// `sqlite://DIR/sessionview.db`.
    pub url: String,
}

impl SqliteDatabase {
    /// A path for a database that does not exist yet (the store creates it).
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sv-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("sessionview.db").display());
        Self { dir, url }
    }

    pub async fn drop(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for SqliteDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh database of either backend, for tests that must hold on both.
#[derive(Debug)]
pub enum TestDatabase {
    Postgres(PgDatabase),
    Sqlite(SqliteDatabase),
}

impl TestDatabase {
    /// One fresh database of each backend.
    pub async fn both() -> [TestDatabase; 2] {
        [
            TestDatabase::Postgres(PgDatabase::new().await),
            TestDatabase::Sqlite(SqliteDatabase::new()),
        ]
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Postgres(db) => &db.url,
            TestDatabase::Sqlite(db) => &db.url,
        }
    }

    /// `postgres` or `sqlite`, for assertion messages.
    pub fn backend(&self) -> &'static str {
        match self {
            TestDatabase::Postgres(_) => "postgres",
            TestDatabase::Sqlite(_) => "sqlite",
        }
    }

    /// Runs one statement on the database itself (a test's sabotage of the schema).
    pub async fn exec(&self, sql: &str) {
        match self {
            TestDatabase::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
            TestDatabase::Sqlite(db) => {
                let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    pub async fn drop(self) {
        match self {
            TestDatabase::Postgres(db) => db.drop().await,
            TestDatabase::Sqlite(db) => db.drop().await,
        }
    }
}
