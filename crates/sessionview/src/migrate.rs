//! `sessionview migrate`: applies the schema's migrations, or (`--status`) lists where each one
//! stands and the compatibility levels of the database and this build, changing nothing.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context;
use clap::Args;
use sessionview_store::{MigrationStatus, SchemaStatus, Store, StoreError};

use crate::{DbArgs, with_store};

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Change nothing: print every migration (version, description, state: applied, pending, or
    /// applied by a newer sessionview) and the compatibility levels of the database and of this
    /// build. Only reads (a SELECT-only role will do). Exit status 0 when nothing is pending, 1
    /// when migrations are pending (or on an error, such as a database a newer sessionview
    /// changed incompatibly).
    #[arg(long, env = "SESSIONVIEW_MIGRATE_STATUS")]
    status: bool,
}

/// `sessionview migrate [--status]`.
pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let db = &args.db;
    let pending = with_store!(db, |store| if args.status {
        status(&store).await
    } else {
        apply(&store).await.map(|()| false)
    })?;
    if pending {
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

/// Applies what is pending and says what it applied.
async fn apply<S: Store>(store: &S) -> anyhow::Result<()> {
    let applied = store
        .apply_migrations()
        .await
        .context("migrating the schema")?;
    if applied.is_empty() {
        println!("schema is up to date");
    }
    for m in &applied {
        println!("applied {m}");
    }
    let newer = store
        .schema_status()
        .await
        .context("reading the schema status")?
        .newer();
    if !newer.is_empty() {
        println!(
            "the database also has migrations of a newer sessionview, which this version ignores \
             (they are compatible): {}",
            newer
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Prints the status; whether migrations are pending. A database this build cannot use is an
/// error (after the table).
async fn status<S: Store>(store: &S) -> anyhow::Result<bool> {
    let status = store
        .schema_status()
        .await
        .context("reading the schema status")?;
    print!("{}", table(&status));
    match status.check() {
        Ok(()) => Ok(false),
        Err(StoreError::MissingMigrations { missing }) => {
            println!(
                "{} pending: run `sessionview migrate` with this version",
                plural(missing.len(), "migration")
            );
            Ok(true)
        }
        Err(e) => Err(e).context("checking the schema"),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The status as a table, a line per migration, and the compatibility levels.
fn table(status: &SchemaStatus) -> String {
    let rows: Vec<[String; 4]> = status.migrations.iter().map(row).collect();
    let header = [
        "VERSION".to_owned(),
        "DESCRIPTION".to_owned(),
        "STATE".to_owned(),
        "APPLIED AT".to_owned(),
    ];
    let mut widths = [0; 4];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let database = match &status.database {
        Some(c) => format!(
            "{} (last migrated by sessionview {})",
            c.level, c.written_by
        ),
        None => "none recorded".to_owned(),
    };
    let _ = writeln!(
        out,
        "compatibility level: database {database}; this build (sessionview {}) supports up to {}",
        status.build_version, status.supported
    );
    out
}

fn row(m: &MigrationStatus) -> [String; 4] {
    [
        m.version.to_string(),
        m.description.clone(),
        m.state.to_string(),
        m.applied_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use sessionview_store::{Compatibility, MigrationState};

    use super::*;

    fn m(version: i64, description: &str, state: MigrationState, known: bool) -> MigrationStatus {
        MigrationStatus {
            version,
            description: description.into(),
            state,
            known,
            applied_at: (state != MigrationState::Pending)
                .then(|| Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap()),
        }
    }

    #[test]
    fn the_table_lists_every_migration_and_both_levels() {
        let status = SchemaStatus {
            migrations: vec![
                m(20261126000001, "read model", MigrationState::Applied, true),
                m(
                    20261201000001,
                    "schema compatibility",
                    MigrationState::Pending,
                    true,
                ),
                m(29991231000001, "later", MigrationState::Newer, false),
            ],
            database: Some(Compatibility {
                level: 1,
                written_by: "0.3.0".into(),
            }),
            supported: 1,
            build_version: "0.1.0",
        };
        assert_eq!(
            table(&status),
            "\
VERSION         DESCRIPTION           STATE                           APPLIED AT
20261126000001  read model            applied                         2026-12-01 09:30:00 UTC
20261201000001  schema compatibility  pending
29991231000001  later                 applied by a newer sessionview  2026-12-01 09:30:00 UTC
compatibility level: database 1 (last migrated by sessionview 0.3.0); this build (sessionview 0.1.0) supports up to 1
"
        );
    }

    #[test]
    fn a_database_without_a_level_says_so() {
        let status = SchemaStatus {
            migrations: vec![],
            database: None,
            supported: 1,
            build_version: "0.1.0",
        };
        assert!(table(&status).ends_with(
            "compatibility level: database none recorded; this build (sessionview 0.1.0) \
             supports up to 1\n"
        ));
    }
}
