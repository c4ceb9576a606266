//! The store's error type, and which errors are worth retrying.

use crate::schema::MigrationId;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names a backend this build does not have.
    #[error("unsupported database URL {0:?}: expected postgres://... or postgresql://...")]
    UnsupportedUrl(String),
    /// Any error from the database driver.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row cannot be read back into the model (a value the projector never writes).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// A newer sessionview changed the schema in a way this build cannot work with: its
    /// compatibility level is above [`crate::SCHEMA_COMPATIBILITY`].
    #[error(
        "the database schema was changed incompatibly by sessionview {written_by} (compatibility \
         level {database_level}; this build supports up to {supported}): run sessionview \
         {written_by} or newer"
    )]
    IncompatibleSchema {
        database_level: i32,
        supported: i32,
        /// The version of the sessionview that last applied migrations.
        written_by: String,
    },
    /// Migrations this build needs are not applied (`check_schema`; `migrate` applies them).
    #[error(
        "the database lacks migrations {}: run `sessionview migrate` with this version first",
        crate::schema::list(.missing)
    )]
    MissingMigrations { missing: Vec<MigrationId> },
    /// The recorded migrations disagree with this build's: some are recorded as failed, or were
    /// applied with other content than this build's (`migrate` refuses such a history too).
    #[error(
        "the database's migration history does not match this build: {}",
        crate::schema::diverged(.failed, .modified)
    )]
    DivergedMigrations {
        failed: Vec<MigrationId>,
        modified: Vec<MigrationId>,
    },
}

impl StoreError {
    /// Whether the server cancelled the statement for exceeding `statement_timeout`.
    pub fn is_statement_timeout(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("57014"))
    }

    /// Whether retrying the same work later may succeed: lost connections, pool exhaustion,
    /// serialization failures, deadlocks, a server shutting down or starting up.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient_sqlx(e),
            StoreError::UnsupportedUrl(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. }
            | StoreError::IncompatibleSchema { .. }
            | StoreError::MissingMigrations { .. }
            | StoreError::DivergedMigrations { .. } => false,
        }
    }

    /// Whether the database refused the statement for the data it carries (a value out of range,
    /// a constraint, a row too large): the same data will be refused again, but other data would
    /// not be. Connection, conflict and schema errors are not.
    pub fn is_data(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // Extended result codes: the primary code is the low byte. 18 TOOBIG, 19 CONSTRAINT,
            // 20 MISMATCH, 25 RANGE.
            return db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25));
        }
        // PostgreSQL: 21 cardinality violation (an upsert touching a row twice), 22 data
        // exception, 23 integrity constraint violation, 54 program limit exceeded (an index row
        // or a value too large, nesting too deep).
        db.code().is_some_and(|c| {
            let c = c.as_ref();
            ["21", "22", "23", "54"]
                .iter()
                .any(|class| c.starts_with(class))
        })
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let code = code.as_ref();
            // 08: connection exception; 25P03: the session sat idle in a transaction too long
            // (idle_in_transaction_session_timeout: a paused process woke up; reconnect and
            // retry); 40001: serialization failure; 40P01: deadlock;
            // 53: insufficient resources; 57P01..03: admin/crash shutdown, cannot connect now;
            // 55000: the database is not accepting connections (ALLOW_CONNECTIONS false);
            // SQLite's 5 and 6: the database file is busy or locked.
            code.starts_with("08")
                || code == "25P03"
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || matches!(code, "57P01" | "57P02" | "57P03" | "55000" | "5" | "6")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_timeouts_are_transient_but_bad_urls_are_not() {
        let io = StoreError::Database(sqlx::Error::Io(std::io::Error::other("reset")));
        assert!(io.is_transient());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::UnsupportedUrl("mysql://x".into()).is_transient());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_transient());
    }
}
