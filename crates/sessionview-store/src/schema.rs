//! Schema status and upgrade compatibility: which migrations a database has against those this
//! build knows (one pure comparison for every backend), the compatibility level that lets an older
//! binary keep using a database migrated by a newer one, and the order of `migrate`'s work.
//!
//! The rule (docs/operations.md, "Upgrades and compatibility"): migrations are additive — new
//! tables, new nullable or defaulted columns, new indexes — so a binary keeps working against a
//! database that a newer binary migrated, and ignores the migrations it does not know. A migration
//! that older binaries cannot live with (a dropped or renamed column, a changed meaning, a new
//! table the projector must keep in step with the sessions) raises the level in
//! `schema_compatibility` and [`SCHEMA_COMPATIBILITY`] together; a binary refuses a database whose
//! level is above its own and names the version to run.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migrator};

use crate::StoreError;

/// The compatibility level this build supports (and writes). Raised together with the level in
/// `schema_compatibility` by a migration that older binaries cannot work with.
///
/// 2: event ids are recorded per session (`session_seen`); `seen_events` is gone.
/// 3: every commit that changes a session notes it in `session_changes` (response caches follow
/// it).
pub const SCHEMA_COMPATIBILITY: i32 = 3;

/// This build's version: what `migrate` records as `written_by` when it applies something.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The migration history, the same statement on every backend.
pub(crate) const MIGRATIONS_SQL: &str = "SELECT version, description, installed_on, success, \
    checksum FROM _sqlx_migrations ORDER BY version";

/// The compatibility row, the same statement on every backend.
pub(crate) const COMPATIBILITY_SQL: &str =
    "SELECT level, written_by FROM schema_compatibility ORDER BY level DESC LIMIT 1";

/// One row of [`MIGRATIONS_SQL`].
pub(crate) type MigrationRow = (i64, String, Option<DateTime<Utc>>, bool, Vec<u8>);

/// A migration, by version and description (`20261130000002 (session counts)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationId {
    pub version: i64,
    /// sqlx's description: the file name after the version, underscores as spaces.
    pub description: String,
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.description)
    }
}

/// `a (x), b (y)`, for messages.
pub(crate) fn list(ids: &[MigrationId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The detail of [`StoreError::DivergedMigrations`].
pub(crate) fn diverged(failed: &[MigrationId], modified: &[MigrationId]) -> String {
    let mut parts = Vec::new();
    if !failed.is_empty() {
        parts.push(format!(
            "recorded as failed: {} (repair the schema by hand and delete the row from \
             _sqlx_migrations)",
            list(failed)
        ));
    }
    if !modified.is_empty() {
        parts.push(format!(
            "applied with other content than this build's: {} (run the build of sessionview \
             that applied them)",
            list(modified)
        ));
    }
    parts.join("; ")
}

/// The database's compatibility row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    /// The lowest [`SCHEMA_COMPATIBILITY`] a binary must support to use the database.
    pub level: i32,
    /// The version of the sessionview that last applied migrations.
    pub written_by: String,
}

/// Where one migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, with this build's content.
    Applied,
    /// Known to this build, not applied.
    Pending,
    /// Applied by a newer sessionview: this build does not know it (an additive change it can
    /// ignore, unless the compatibility level says otherwise).
    Newer,
    /// Recorded as failed (`success = false`), whether this build knows it or not.
    Failed,
    /// Applied with other content (checksum) than this build's migration of the same version.
    Modified,
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Newer => "applied by a newer sessionview",
            MigrationState::Failed => "failed",
            MigrationState::Modified => "applied, differs from this build's",
        })
    }
}

/// One migration of [`SchemaStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
    /// Whether this build has the migration.
    pub known: bool,
    /// When it was applied (`None` when pending).
    pub applied_at: Option<DateTime<Utc>>,
}

impl MigrationStatus {
    pub fn id(&self) -> MigrationId {
        MigrationId {
            version: self.version,
            description: self.description.clone(),
        }
    }
}

/// The database's schema against this build's: every migration either side has, in version order,
/// and the compatibility levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    pub migrations: Vec<MigrationStatus>,
    /// `None`: the database has no compatibility row (nothing migrated yet, or migrated by a
    /// sessionview from before the row), which every build accepts.
    pub database: Option<Compatibility>,
    /// [`SCHEMA_COMPATIBILITY`].
    pub supported: i32,
    /// [`BUILD_VERSION`].
    pub build_version: &'static str,
}

impl SchemaStatus {
    fn with_state(&self, state: MigrationState) -> Vec<MigrationId> {
        self.migrations
            .iter()
            .filter(|m| m.state == state)
            .map(MigrationStatus::id)
            .collect()
    }

    /// Migrations this build knows that the database lacks, in version order.
    pub fn pending(&self) -> Vec<MigrationId> {
        self.with_state(MigrationState::Pending)
    }

    /// Migrations a newer sessionview applied that this build does not know.
    pub fn newer(&self) -> Vec<MigrationId> {
        self.with_state(MigrationState::Newer)
    }

    /// Refuses a database a newer sessionview changed incompatibly (its level is above this
    /// build's).
    pub fn check_compatible(&self) -> Result<(), StoreError> {
        match &self.database {
            Some(c) if c.level > self.supported => Err(StoreError::IncompatibleSchema {
                database_level: c.level,
                supported: self.supported,
                written_by: c.written_by.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Ok when this build can use the database as it is, without migrating: the level is
    /// compatible, every migration it knows is applied with its content, none failed. (Then
    /// `migrate` would apply nothing.)
    pub fn check(&self) -> Result<(), StoreError> {
        self.check_compatible()?;
        let failed = self.with_state(MigrationState::Failed);
        let modified = self.with_state(MigrationState::Modified);
        if !failed.is_empty() || !modified.is_empty() {
            return Err(StoreError::DivergedMigrations { failed, modified });
        }
        let missing = self.pending();
        if !missing.is_empty() {
            return Err(StoreError::MissingMigrations { missing });
        }
        Ok(())
    }
}

/// A migration this build has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownMigration {
    pub(crate) version: i64,
    pub(crate) description: String,
    pub(crate) checksum: Vec<u8>,
}

/// The up-migrations of `migrator`.
pub(crate) fn known(migrator: &Migrator) -> Vec<KnownMigration> {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| KnownMigration {
            version: m.version,
            description: m.description.to_string(),
            checksum: m.checksum.to_vec(),
        })
        .collect()
}

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppliedMigration {
    pub(crate) version: i64,
    pub(crate) description: String,
    pub(crate) applied_at: Option<DateTime<Utc>>,
    pub(crate) success: bool,
    pub(crate) checksum: Vec<u8>,
}

impl From<MigrationRow> for AppliedMigration {
    fn from((version, description, applied_at, success, checksum): MigrationRow) -> Self {
        Self {
            version,
            description,
            applied_at,
            success,
            checksum,
        }
    }
}

/// What a backend reads to know the schema's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct SchemaRows {
    /// Empty when `_sqlx_migrations` does not exist.
    pub(crate) applied: Vec<AppliedMigration>,
    /// `None` when `schema_compatibility` does not exist or is empty.
    pub(crate) compatibility: Option<Compatibility>,
}

impl SchemaRows {
    pub(crate) fn new(applied: Vec<MigrationRow>, compatibility: Option<(i32, String)>) -> Self {
        Self {
            applied: applied.into_iter().map(AppliedMigration::from).collect(),
            compatibility: compatibility
                .map(|(level, written_by)| Compatibility { level, written_by }),
        }
    }
}

/// Compares the migrations this build knows with those the database recorded.
pub(crate) fn compare(known: &[KnownMigration], rows: SchemaRows) -> SchemaStatus {
    let mut by_version: BTreeMap<i64, MigrationStatus> = BTreeMap::new();
    for k in known {
        by_version.insert(
            k.version,
            MigrationStatus {
                version: k.version,
                description: k.description.clone(),
                state: MigrationState::Pending,
                known: true,
                applied_at: None,
            },
        );
    }
    for a in rows.applied {
        let mine = known.iter().find(|k| k.version == a.version);
        let state = match mine {
            _ if !a.success => MigrationState::Failed,
            None => MigrationState::Newer,
            Some(k) if k.checksum != a.checksum => MigrationState::Modified,
            Some(_) => MigrationState::Applied,
        };
        by_version.insert(
            a.version,
            MigrationStatus {
                version: a.version,
                // This build's name for its own migrations; the recorded one for the others.
                description: mine.map_or(a.description, |k| k.description.clone()),
                state,
                known: mine.is_some(),
                applied_at: a.applied_at,
            },
        );
    }
    SchemaStatus {
        migrations: by_version.into_values().collect(),
        database: rows.compatibility,
        supported: SCHEMA_COMPATIBILITY,
        build_version: BUILD_VERSION,
    }
}

/// Returns `migrator` set up for [`migrate`]: migrations recorded in the database that it does not
/// know (a newer binary's) are ignored — [`migrate`] has checked the compatibility level before —
/// and it takes no lock of its own ([`migrate`] holds it).
pub(crate) fn configured(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator.set_locking(false);
    migrator
}

/// The few statements a backend runs for [`status`] and [`migrate`].
pub(crate) trait SchemaConnection: Migrate + Send {
    /// The migration history and the compatibility row, with SELECTs only (a read-only role, a
    /// hot-standby replica): absent tables read as nothing.
    fn read_schema(&mut self) -> impl Future<Output = Result<SchemaRows, StoreError>> + Send;

    /// Records that this build applied migrations: `written_by` becomes [`BUILD_VERSION`] and the
    /// level at least [`SCHEMA_COMPATIBILITY`].
    fn record_migrated(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Implements [`SchemaConnection`] for a backend's connection type, written once: the backend
/// gives only the statement that says which bookkeeping tables exist (two booleans) and the
/// `UPDATE` that records `written_by` and the level (binding them in that order).
macro_rules! schema_connection {
    ($conn:ty, $tables_sql:expr, $record_sql:expr $(,)?) => {
        impl $crate::schema::SchemaConnection for $conn {
            async fn read_schema(
                &mut self,
            ) -> Result<$crate::schema::SchemaRows, $crate::StoreError> {
                let (history, compatibility): (bool, bool) =
                    sqlx::query_as($tables_sql).fetch_one(&mut *self).await?;
                let applied = if history {
                    sqlx::query_as($crate::schema::MIGRATIONS_SQL)
                        .fetch_all(&mut *self)
                        .await?
                } else {
                    Vec::new()
                };
                let compatibility = if compatibility {
                    sqlx::query_as($crate::schema::COMPATIBILITY_SQL)
                        .fetch_optional(&mut *self)
                        .await?
                } else {
                    None
                };
                Ok($crate::schema::SchemaRows::new(applied, compatibility))
            }

            async fn record_migrated(&mut self) -> Result<(), $crate::StoreError> {
                sqlx::query($record_sql)
                    .bind($crate::schema::BUILD_VERSION)
                    .bind($crate::schema::SCHEMA_COMPATIBILITY)
                    .execute(self)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use schema_connection;

/// The database's schema against `migrator`'s migrations (SELECTs only).
pub(crate) async fn status<C: SchemaConnection>(
    conn: &mut C,
    migrator: &Migrator,
) -> Result<SchemaStatus, StoreError> {
    let rows = conn.read_schema().await?;
    Ok(compare(&known(migrator), rows))
}

/// Applies what `migrator` (set up by [`configured`]) has and the database lacks, and names it.
/// Under the backend's migration lock (PostgreSQL: sqlx's advisory lock, which older binaries
/// take too): refuse an incompatible database first, then apply (tolerating a newer binary's
/// migrations), then record who applied.
///
/// On an error the lock may still be held: the caller must not reuse the connection.
pub(crate) async fn migrate<C: SchemaConnection>(
    conn: &mut C,
    migrator: &Migrator,
) -> Result<Vec<MigrationId>, StoreError> {
    conn.lock().await?;
    let before = status(conn, migrator).await?;
    before.check_compatible()?;
    // `run_direct` is `run` on a connection: sqlx's way around `run`'s `Acquire` bound, which
    // is not general enough for a future that must be `Send`.
    migrator.run_direct(conn).await?;
    let applied = before.pending();
    if !applied.is_empty() {
        conn.record_migrated().await?;
    }
    conn.unlock().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(version: i64, description: &str) -> KnownMigration {
        KnownMigration {
            version,
            description: description.into(),
            checksum: vec![version as u8],
        }
    }

    fn a(version: i64, description: &str, success: bool) -> MigrationRow {
        (
            version,
            description.into(),
            None,
            success,
            vec![version as u8],
        )
    }

    fn compat(level: i32, written_by: &str) -> Option<(i32, String)> {
        Some((level, written_by.into()))
    }

    fn states(s: &SchemaStatus) -> Vec<(i64, MigrationState, bool)> {
        s.migrations
            .iter()
            .map(|m| (m.version, m.state, m.known))
            .collect()
    }

    fn id(version: i64, description: &str) -> MigrationId {
        MigrationId {
            version,
            description: description.into(),
        }
    }

    #[allow(non_snake_case, reason = "a constant list of migrations")]
    fn KNOWN() -> Vec<KnownMigration> {
        vec![k(1, "read model"), k(2, "keypairs"), k(3, "session counts")]
    }

    #[test]
    fn nothing_applied_lists_everything_pending_and_names_it() {
        let s = compare(&KNOWN(), SchemaRows::default());
        assert_eq!(
            states(&s),
            vec![
                (1, MigrationState::Pending, true),
                (2, MigrationState::Pending, true),
                (3, MigrationState::Pending, true)
            ]
        );
        assert_eq!(s.database, None);
        assert_eq!(s.supported, SCHEMA_COMPATIBILITY);
        let e = s.check().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the database lacks migrations 1 (read model), 2 (keypairs), 3 (session counts): \
             run `sessionview migrate` with this version first"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn a_partly_migrated_database_lacks_only_the_rest() {
        let rows = SchemaRows::new(vec![a(1, "read model", true)], None);
        let s = compare(&KNOWN(), rows);
        assert_eq!(
            s.pending(),
            vec![id(2, "keypairs"), id(3, "session counts")]
        );
        assert!(matches!(
            s.check(),
            Err(StoreError::MissingMigrations { missing }) if missing.len() == 2
        ));
    }

    #[test]
    fn everything_applied_is_ok() {
        let rows = SchemaRows::new(
            vec![
                a(1, "read model", true),
                a(2, "keypairs", true),
                a(3, "session counts", true),
            ],
            compat(1, "0.1.0"),
        );
        let s = compare(&KNOWN(), rows);
        assert!(s.pending().is_empty() && s.newer().is_empty());
        assert!(
            s.migrations
                .iter()
                .all(|m| m.state == MigrationState::Applied)
        );
        s.check().unwrap();
    }

    #[test]
    fn a_newer_binarys_migrations_are_listed_in_order_and_tolerated() {
        let rows = SchemaRows::new(
            vec![
                a(1, "read model", true),
                a(2, "keypairs", true),
                a(3, "session counts", true),
                // Out of order on purpose: the status is in version order whatever the rows.
                a(5, "later index", true),
                a(4, "extra table", true),
            ],
            compat(1, "0.3.0"),
        );
        let s = compare(&KNOWN(), rows);
        assert_eq!(
            states(&s),
            vec![
                (1, MigrationState::Applied, true),
                (2, MigrationState::Applied, true),
                (3, MigrationState::Applied, true),
                (4, MigrationState::Newer, false),
                (5, MigrationState::Newer, false)
            ]
        );
        assert_eq!(s.newer(), vec![id(4, "extra table"), id(5, "later index")]);
        s.check().unwrap();
    }

    #[test]
    fn a_newer_migration_between_known_ones_is_still_newer() {
        let rows = SchemaRows::new(vec![a(1, "read model", true), a(2, "hotfix", true)], None);
        let s = compare(&[k(1, "read model"), k(3, "session counts")], rows);
        assert_eq!(
            states(&s),
            vec![
                (1, MigrationState::Applied, true),
                (2, MigrationState::Newer, false),
                (3, MigrationState::Pending, true)
            ]
        );
    }

    #[test]
    fn a_higher_level_refuses_and_names_the_version_to_run() {
        let rows = SchemaRows::new(
            vec![
                a(1, "read model", true),
                a(2, "keypairs", true),
                a(3, "session counts", true),
                a(4, "breaking", true),
            ],
            compat(SCHEMA_COMPATIBILITY + 1, "9.9.9"),
        );
        let s = compare(&KNOWN(), rows);
        let e = s.check().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the database schema was changed incompatibly by sessionview 9.9.9 \
                 (compatibility level {}; this build supports up to {}): run sessionview 9.9.9 \
                 or newer",
                SCHEMA_COMPATIBILITY + 1,
                SCHEMA_COMPATIBILITY
            )
        );
        assert!(matches!(
            s.check_compatible(),
            Err(StoreError::IncompatibleSchema { written_by, .. }) if written_by == "9.9.9"
        ));
    }

    #[test]
    fn incompatibility_is_reported_before_missing_migrations() {
        let s = compare(&KNOWN(), SchemaRows::new(vec![], compat(7, "9.9.9")));
        assert!(matches!(
            s.check(),
            Err(StoreError::IncompatibleSchema {
                database_level: 7,
                ..
            })
        ));
    }

    #[test]
    fn a_lower_or_equal_level_is_compatible() {
        for level in [0, SCHEMA_COMPATIBILITY] {
            let s = compare(&[], SchemaRows::new(vec![], compat(level, "0.0.1")));
            s.check_compatible().unwrap();
            s.check().unwrap();
        }
    }

    #[test]
    fn failed_and_modified_migrations_are_diverged() {
        let mut modified = a(2, "keypairs", true);
        modified.4 = vec![0xff];
        let rows = SchemaRows::new(
            vec![
                a(1, "read model", false),
                modified,
                a(3, "session counts", true),
                a(9, "newer but failed", false),
            ],
            None,
        );
        let s = compare(&KNOWN(), rows);
        assert_eq!(
            states(&s),
            vec![
                (1, MigrationState::Failed, true),
                (2, MigrationState::Modified, true),
                (3, MigrationState::Applied, true),
                (9, MigrationState::Failed, false)
            ]
        );
        let e = s.check().unwrap_err();
        assert!(
            matches!(&e, StoreError::DivergedMigrations { failed, modified }
                if failed == &[id(1, "read model"), id(9, "newer but failed")]
                    && modified == &[id(2, "keypairs")]),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("recorded as failed: 1 (read model), 9 (newer but failed)"),
            "{msg}"
        );
        assert!(
            msg.contains("other content than this build's: 2 (keypairs)"),
            "{msg}"
        );
    }

    #[test]
    fn known_migrations_keep_this_builds_description() {
        let rows = SchemaRows::new(vec![a(1, "old name", true)], None);
        let s = compare(&[k(1, "read model")], rows);
        assert_eq!(s.migrations[0].description, "read model");
    }

    #[test]
    fn the_builds_migrations_are_read_from_the_migrator() {
        let m = configured(sqlx::migrate!("../../migrations/sqlite"));
        assert!(m.ignore_missing && !m.locking);
        let known = known(&m);
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
        assert!(
            known
                .iter()
                .any(|k| k.description == "schema compatibility")
        );
    }
}
