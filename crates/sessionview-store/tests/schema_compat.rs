//! Schema status and upgrade compatibility against real databases: `schema_status`,
//! `check_schema` and `apply_migrations` on a fresh database, next to a newer binary's additive
//! migrations, after an incompatible change, and (PostgreSQL) as a role that may only SELECT.
//!
//! Each case runs on a fresh, unmigrated database: PostgreSQL from the administrative URL
//! `SESSIONVIEW_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`; each
//! test creates and drops its own database), SQLite in a fresh file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use futures_util::FutureExt;
use sessionview_projection::{EventKey, LoadRequest};

use sessionview_store::prelude::*;
use sessionview_store::{
    BUILD_VERSION, Compatibility, MigrationId, MigrationState, PgStore, SCHEMA_COMPATIBILITY,
    SEEN_CHUNK_IDS, SqliteStore, Store, StoreError,
};
use sessionview_testkit::{PgDatabase, SqliteDatabase, admin_exec};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// A migration of a newer sessionview, as it would record it.
const NEWER_VERSION: i64 = 29_991_231_000_001;
const NEWER_DESCRIPTION: &str = "newer binary table";

/// A backend under test with a way to run plain SQL next to the store.
trait Db: Sized {
    type S: Store + ReadModel;
    /// A one-byte blob, as an SQL literal.
    const BLOB_LITERAL: &'static str;
    /// `seen_events` and `session_events` as the migrations before level 2 made them.
    const LEVEL_1_TABLES: &'static str;
    async fn fresh() -> Self;
    fn store(&self) -> &Self::S;
    fn migrations() -> Migrator;
    async fn execute(&self, sql: &str);
    /// What a newer binary's additive migration leaves behind: a table and its history row.
    async fn apply_newer_migration(&self);
    async fn drop(self);
}

struct PgDb {
    db: PgDatabase,
    store: PgStore,
}

impl PgDb {
    fn url(&self) -> String {
        self.db.url.clone()
    }
}

impl Db for PgDb {
    type S = PgStore;
    const BLOB_LITERAL: &'static str = "'\\x00'::bytea";
    const LEVEL_1_TABLES: &'static str = "CREATE TABLE seen_events (event_id uuid PRIMARY KEY, session_id uuid NOT NULL); \
         CREATE TABLE session_events (seq bigint PRIMARY KEY, event text NOT NULL, \
            session_id uuid NOT NULL, kernel_id uuid, cluster_role text, reason text, \
            session_name text NOT NULL, access_key text NOT NULL, domain_name text NOT NULL, \
            group_name text NOT NULL)";

    async fn fresh() -> Self {
        let db = PgDatabase::new().await;
        let store = PgStore::connect(&db.url, 4).await.unwrap();
        Self { db, store }
    }

    fn store(&self) -> &PgStore {
        &self.store
    }

    fn migrations() -> Migrator {
        sqlx::migrate!("../../migrations/postgres")
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(self.store.pool()).await.unwrap();
    }

    async fn apply_newer_migration(&self) {
        self.execute("CREATE TABLE newer_things (id bigint PRIMARY KEY, note text)")
            .await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES ($1, $2, TRUE, $3, 1)",
        )
        .bind(NEWER_VERSION)
        .bind(NEWER_DESCRIPTION)
        .bind(vec![7u8; 48])
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    async fn drop(self) {
        self.store.close().await;
        self.db.drop().await;
    }
}

struct SqliteDb {
    db: SqliteDatabase,
    store: SqliteStore,
}

impl Db for SqliteDb {
    type S = SqliteStore;
    const BLOB_LITERAL: &'static str = "X'00'";
    const LEVEL_1_TABLES: &'static str = "CREATE TABLE seen_events (event_id TEXT PRIMARY KEY, \
        session_id TEXT NOT NULL) WITHOUT ROWID; \
        CREATE TABLE session_events (seq INTEGER PRIMARY KEY, event TEXT NOT NULL, \
            session_id TEXT NOT NULL, kernel_id TEXT, cluster_role TEXT, reason TEXT, \
            session_name TEXT NOT NULL, access_key TEXT NOT NULL, domain_name TEXT NOT NULL, \
            group_name TEXT NOT NULL)";

    async fn fresh() -> Self {
        let db = SqliteDatabase::new();
        let store = SqliteStore::connect(&db.url, 4).await.unwrap();
        Self { db, store }
    }

    fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn migrations() -> Migrator {
        sqlx::migrate!("../../migrations/sqlite")
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(self.store.pool()).await.unwrap();
    }

    async fn apply_newer_migration(&self) {
        self.execute("CREATE TABLE newer_things (id INTEGER PRIMARY KEY, note TEXT)")
            .await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (?, ?, TRUE, ?, 1)",
        )
        .bind(NEWER_VERSION)
        .bind(NEWER_DESCRIPTION)
        .bind(vec![7u8; 48])
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    async fn drop(self) {
        self.store.pool().close().await;
        self.db.drop().await;
    }
}

/// Generates one `#[tokio::test]` per case and backend: `postgres::case` and `sqlite::case`.
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let db = <super::PgDb as super::Db>::fresh().await;
                super::$case(&db).await;
                super::Db::drop(db).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let db = <super::SqliteDb as super::Db>::fresh().await;
                super::$case(&db).await;
                super::Db::drop(db).await;
            })*
        }
    };
}

on_every_backend!(
    a_fresh_database_is_pending_until_migrated,
    a_newer_binarys_additive_migration_is_tolerated,
    an_incompatible_level_refuses_before_changing_anything,
    a_known_migration_with_other_content_stays_an_error,
    level_1_bookkeeping_is_carried_over,
);

/// This build's migrations, by version and description.
fn known<D: Db>() -> Vec<MigrationId> {
    D::migrations()
        .iter()
        .map(|m| MigrationId {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}

async fn migrated<D: Db>(db: &D) {
    assert_eq!(db.store().apply_migrations().await.unwrap(), known::<D>());
}

async fn a_fresh_database_is_pending_until_migrated<D: Db>(db: &D) {
    let store = db.store();
    let status = store.schema_status().await.unwrap();
    assert_eq!(status.pending(), known::<D>());
    assert!(
        status
            .migrations
            .iter()
            .all(|m| m.state == MigrationState::Pending && m.known && m.applied_at.is_none())
    );
    assert_eq!(status.database, None);
    assert_eq!(status.supported, SCHEMA_COMPATIBILITY);

    let err = store.check_schema().await.unwrap_err();
    let StoreError::MissingMigrations { missing } = &err else {
        panic!("expected MissingMigrations, got {err:?}");
    };
    assert_eq!(missing, &known::<D>());
    let msg = err.to_string();
    assert!(
        msg.starts_with("the database lacks migrations 20261126000001 (read model), "),
        "{msg}"
    );
    let last = known::<D>().last().unwrap().clone();
    assert!(
        msg.ends_with(&format!(
            "{} ({}): run `sessionview migrate` with this version first",
            last.version, last.description
        )),
        "{msg}"
    );
    // Checking changed nothing.
    assert_eq!(store.schema_status().await.unwrap(), status);

    migrated(db).await;
    store.check_schema().await.unwrap();
    let status = store.schema_status().await.unwrap();
    assert!(status.pending().is_empty() && status.newer().is_empty());
    assert_eq!(status.migrations.len(), known::<D>().len());
    for m in &status.migrations {
        assert_eq!(m.state, MigrationState::Applied, "{m:?}");
        assert!(m.applied_at.is_some(), "{m:?}");
    }
    assert_eq!(
        status.database,
        Some(Compatibility {
            level: SCHEMA_COMPATIBILITY,
            written_by: BUILD_VERSION.into()
        })
    );
    assert_eq!(
        store.apply_migrations().await.unwrap(),
        Vec::<MigrationId>::new(),
        "up to date: nothing to apply"
    );
    store.migrate().await.unwrap();
}

async fn a_newer_binarys_additive_migration_is_tolerated<D: Db>(db: &D) {
    let store = db.store();
    migrated(db).await;
    // A newer sessionview (same level: its migration is additive) migrated after this one.
    db.apply_newer_migration().await;
    db.execute("UPDATE schema_compatibility SET written_by = '0.2.0'")
        .await;
    db.execute("INSERT INTO newer_things (id, note) VALUES (1, 'kept')")
        .await;

    assert_eq!(
        store.apply_migrations().await.unwrap(),
        Vec::<MigrationId>::new()
    );
    store.check_schema().await.unwrap();
    let status = store.schema_status().await.unwrap();
    let newer = MigrationId {
        version: NEWER_VERSION,
        description: NEWER_DESCRIPTION.into(),
    };
    assert_eq!(status.newer(), vec![newer]);
    let last = status.migrations.last().unwrap();
    assert_eq!(
        (last.version, last.state, last.known),
        (NEWER_VERSION, MigrationState::Newer, false)
    );
    assert!(status.pending().is_empty());
    assert_eq!(
        status.database.as_ref().map(|c| c.written_by.as_str()),
        Some("0.2.0"),
        "a migrate that applied nothing leaves written_by alone"
    );
    // This build still reads and writes its own tables.
    assert_eq!(store.counts().await.unwrap().sessions, 0);

    // This build's next migrations land below the newer one; a migrate that applies one records
    // this build as the writer.
    undo_level_2(db).await;
    let applied = store.apply_migrations().await.unwrap();
    assert_eq!(applied, level_2::<D>());
    let status = store.schema_status().await.unwrap();
    assert_eq!(
        status.database.as_ref().map(|c| c.written_by.as_str()),
        Some(BUILD_VERSION)
    );
    assert_eq!(status.newer().len(), 1);
}

/// This build's migrations from the first of level 2 on (the rest are additive).
fn level_2<D: Db>() -> Vec<MigrationId> {
    let known = known::<D>();
    let first = known
        .iter()
        .position(|m| m.description == "session seen")
        .unwrap();
    let level_2 = known[first..].to_vec();
    let names: Vec<&str> = level_2.iter().map(|m| m.description.as_str()).collect();
    assert_eq!(names[..2], ["session seen", "session event pages"]);
    level_2
}

/// The database as the build before level 2 left it: the history rows and objects of those
/// migrations and of every later one gone, `seen_events` and `session_events` back, level 1.
async fn undo_level_2<D: Db>(db: &D) {
    for m in level_2::<D>() {
        db.execute(&format!(
            "DELETE FROM _sqlx_migrations WHERE version = {}",
            m.version
        ))
        .await;
    }
    db.execute("DROP TABLE session_seen").await;
    db.execute("DROP TABLE session_event_pages").await;
    db.execute("DROP TABLE session_changes").await;
    db.execute("ALTER TABLE session_events_head DROP COLUMN changes")
        .await;
    db.execute(D::LEVEL_1_TABLES).await;
    db.execute("UPDATE schema_compatibility SET level = 1")
        .await;
}

/// What a database of level 1 recorded stays: each session's event ids in its record, the
/// logged events in pages of the log, with their numbers.
async fn level_1_bookkeeping_is_carried_over<D: Db>(db: &D) {
    let store = db.store();
    migrated(db).await;
    undo_level_2(db).await;
    let id = |n: u128| Uuid::from_u128(n);
    // Session 4's ids fill more than one chunk of its record.
    let long = (1000..1000 + SEEN_CHUNK_IDS as u128 + 10).map(|e| (e, 4));
    for (event, session) in [(11, 1), (12, 2), (13, 1)].into_iter().chain(long) {
        db.execute(&format!(
            "INSERT INTO seen_events (event_id, session_id) VALUES ('{}', '{}')",
            id(event),
            id(session)
        ))
        .await;
    }
    for (seq, kernel, reason) in [
        (41, "NULL", "'a \"quoted\" reason'"),
        (42, "'00000000-0000-0000-0000-000000000001'", "NULL"),
    ] {
        db.execute(&format!(
            "INSERT INTO session_events (seq, event, session_id, kernel_id, cluster_role, reason, \
             session_name, access_key, domain_name, group_name) VALUES ({seq}, 'kernel_started', \
             '{}', {kernel}, NULL, {reason}, 'name', 'AK', 'default', 'g')",
            id(1)
        ))
        .await;
    }
    db.execute("UPDATE session_events_head SET seq = 42").await;
    let applied = store.apply_migrations().await.unwrap();
    assert_eq!(applied, level_2::<D>());
    let logged = store.session_events(40, 10).await.unwrap();
    assert_eq!(
        logged
            .iter()
            .map(|e| (
                e.seq,
                e.kernel_id,
                e.reason.as_deref(),
                e.session_name.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            (41, None, Some("a \"quoted\" reason"), "name"),
            (42, Some(id(1)), None, "name")
        ]
    );
    assert_eq!(store.session_events(41, 10).await.unwrap().len(), 1);
    let status = store.schema_status().await.unwrap();
    assert_eq!(status.database.unwrap().level, SCHEMA_COMPATIBILITY);
    let key = |session, event| EventKey {
        session_id: id(session),
        event_id: id(event),
    };
    let loaded = store
        .load(&LoadRequest {
            events: vec![
                key(1, 11),
                key(1, 14),
                key(2, 12),
                key(2, 13),
                key(3, 11),
                key(4, 1000),
                key(4, 1129),
                key(4, 1130),
            ],
            ..LoadRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        loaded.seen,
        [key(1, 11), key(2, 12), key(4, 1000), key(4, 1129)]
            .into_iter()
            .collect(),
        "each id recorded for its own session only"
    );
    let n = SEEN_CHUNK_IDS + 10;
    assert_eq!(
        loaded.seen_counts,
        [(id(1), 2), (id(2), 1), (id(4), n)].into_iter().collect()
    );
    assert_eq!(store.counts().await.unwrap().seen_events, 3 + i64::from(n));
}

async fn an_incompatible_level_refuses_before_changing_anything<D: Db>(db: &D) {
    let store = db.store();
    migrated(db).await;
    db.apply_newer_migration().await;
    db.execute(&format!(
        "UPDATE schema_compatibility SET level = {}, written_by = '9.9.9'",
        SCHEMA_COMPATIBILITY + 1
    ))
    .await;
    // One of this build's migrations missing, so that a migrate that did not refuse first would
    // apply it (it would fail too: the index exists).
    let list_indexes = known::<D>()
        .into_iter()
        .find(|m| m.description == "list indexes")
        .unwrap();
    db.execute(&format!(
        "DELETE FROM _sqlx_migrations WHERE version = {}",
        list_indexes.version
    ))
    .await;
    let before = store.schema_status().await.unwrap();

    let expected = format!(
        "the database schema was changed incompatibly by sessionview 9.9.9 (compatibility level \
         {}; this build supports up to {SCHEMA_COMPATIBILITY}): run sessionview 9.9.9 or newer",
        SCHEMA_COMPATIBILITY + 1
    );
    for err in [
        store.apply_migrations().await.unwrap_err(),
        store.migrate().await.unwrap_err(),
        store.check_schema().await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, StoreError::IncompatibleSchema { database_level, supported, written_by }
                if *database_level == SCHEMA_COMPATIBILITY + 1
                    && *supported == SCHEMA_COMPATIBILITY
                    && written_by == "9.9.9"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), expected);
    }
    let after = store.schema_status().await.unwrap();
    assert_eq!(after, before, "a refusing migrate changes nothing");
    assert_eq!(after.pending(), vec![list_indexes]);
    // Still usable for the status.
    assert_eq!(after.database.unwrap().level, SCHEMA_COMPATIBILITY + 1);
}

async fn a_known_migration_with_other_content_stays_an_error<D: Db>(db: &D) {
    let store = db.store();
    migrated(db).await;
    let first = known::<D>()[0].version;
    db.execute(&format!(
        "UPDATE _sqlx_migrations SET checksum = {} WHERE version = {first}",
        D::BLOB_LITERAL
    ))
    .await;
    let err = store.apply_migrations().await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(v)) if *v == first
        ),
        "{err:?}"
    );
    let err = store.check_schema().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::DivergedMigrations { failed, modified }
            if failed.is_empty() && modified.len() == 1 && modified[0].version == first),
        "{err:?}"
    );
    let status = store.schema_status().await.unwrap();
    assert_eq!(status.migrations[0].state, MigrationState::Modified);
}

/// A process that may only read (a SELECT-only role, here also read-only by default like a
/// hot-standby replica) can check and describe the schema; it sees a fresh database as lacking
/// every migration rather than failing on a missing table or privilege.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_select_only_role_checks_the_schema() {
    let db = PgDb::fresh().await;
    let role = format!("sv_reader_{}", Uuid::new_v4().simple());
    let grant = format!(
        "GRANT USAGE ON SCHEMA public TO {role}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    );
    admin_exec(&format!("CREATE ROLE {role} LOGIN")).await;
    admin_exec(&format!(
        "ALTER ROLE {role} SET default_transaction_read_only = on"
    ))
    .await;
    db.execute(&grant).await;
    let options = PgConnectOptions::from_str(&db.url())
        .unwrap()
        .username(&role);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let reader = PgStore::from_pool(pool);

    let checks = async {
        let err = reader.check_schema().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::MissingMigrations { missing } if *missing == known::<PgDb>()),
            "{err:?}"
        );
        assert_eq!(
            reader.schema_status().await.unwrap().pending(),
            known::<PgDb>()
        );

        migrated(&db).await;
        db.execute(&grant).await; // the tables the migrations created
        reader.check_schema().await.unwrap();
        let status = reader.schema_status().await.unwrap();
        assert!(status.pending().is_empty());
        assert_eq!(status.database.unwrap().written_by, BUILD_VERSION);
        // It cannot write, so the checks above wrote nothing.
        let write = sqlx::query("UPDATE schema_compatibility SET written_by = 'x'")
            .execute(reader.pool())
            .await;
        assert!(write.is_err(), "the reader must not be able to write");
    };
    let outcome = AssertUnwindSafe(checks).catch_unwind().await;

    reader.close().await;
    db.drop().await;
    admin_exec(&format!("DROP ROLE {role}")).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Two binaries migrating the same fresh database at once: the migration lock makes one apply
/// everything and the other nothing.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_concurrent_migrations_apply_each_once() {
    let db = PgDb::fresh().await;
    let other = PgStore::connect(&db.url(), 2).await.unwrap();
    let (a, b) = tokio::join!(db.store.apply_migrations(), other.apply_migrations());
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    if a.is_empty() {
        std::mem::swap(&mut a, &mut b);
    }
    assert_eq!(a, known::<PgDb>());
    assert_eq!(b, Vec::<MigrationId>::new());
    other.check_schema().await.unwrap();
    other.close().await;
    db.drop().await;
}

/// A replay's shadow schema gets its own migration history and compatibility row, and the status
/// read there is the shadow's.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_shadow_schema_has_its_own_status() {
    let db = PgDb::fresh().await;
    migrated(&db).await;
    db.store.reset_schema("sv_shadow_test").await.unwrap();
    let shadow = PgStore::connect_in_schema(&db.url(), 2, "sv_shadow_test")
        .await
        .unwrap();
    assert_eq!(
        shadow.schema_status().await.unwrap().pending(),
        known::<PgDb>()
    );
    assert_eq!(shadow.apply_migrations().await.unwrap(), known::<PgDb>());
    shadow.check_schema().await.unwrap();
    shadow.close().await;
    db.drop().await;
}
