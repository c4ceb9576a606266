//! The `sessionview` command: one binary, a module per subcommand.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sessionview_store::{PgSettings, PgStore, SqliteStore, Store};

mod client;
mod dead_letters;
mod demo;
mod kafka;
mod keypair;
mod limits;
mod listener;
mod migrate;
mod project;
mod reference;
mod replay;
mod run;
mod serve;
mod simulate;
mod telemetry;

/// mimalloc instead of the system allocator: decoding and folding allocate many small, short-lived
/// values (JSON maps, strings), and glibc's malloc/free were a fifth of the projector's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sessionview: a read model of compute sessions, projected from lifecycle events.
#[derive(Debug, Parser)]
#[command(name = "sessionview", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "SESSIONVIEW_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: telemetry::LogFormat,
    /// Parse the command line and the SESSIONVIEW_* environment, say whether they are accepted,
    /// and exit without doing anything (deployment files are checked with it).
    #[arg(long, global = true, hide = true, env = "SESSIONVIEW_CHECK_ARGS")]
    check_args: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database schema (--status: only list what is applied and pending).
    Migrate(migrate::MigrateArgs),
    /// Project events from Kafka (or an NDJSON archive) into the database.
    Project(project::ProjectArgs),
    /// Write a simulated, contract-valid event stream to Kafka or a file.
    Simulate(simulate::SimulateArgs),
    /// List dead-lettered events with their reason and source position, or re-apply them.
    DeadLetters(dead_letters::DeadLetterArgs),
    /// Rebuild the read model from the event log (by default without taking queries down; that
    /// and --verify-only need PostgreSQL, SQLite supports --in-place).
    Replay(replay::ReplayArgs),
    /// Serve the GraphQL API (Backend.AI API v5.20191215) from the read model.
    Serve(serve::ServeArgs),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Manage API keypairs.
    #[command(subcommand)]
    Keypair(keypair::KeypairCommand),
    /// Send a signed GraphQL query to a running server and print the answer.
    Query(client::QueryArgs),
    /// Ask a /healthz or /readyz probe; exit 0 when it answers 2xx (container health checks).
    Healthcheck(client::HealthcheckArgs),
    /// Print every command's flags and environment variables as Markdown (docs/operations.md).
    #[command(hide = true)]
    Reference,
    /// Projector and GraphQL server in one process (a single-node deployment).
    Run(run::RunArgs),
    /// The whole system on this machine: a simulated cluster, the projector and the GraphQL
    /// server on SQLite.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// Database URL: sqlite://PATH (the embedded default; created if missing) or
    /// postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "SESSIONVIEW_DATABASE_URL",
        default_value = "sqlite://sessionview.db"
    )]
    database_url: String,
    /// Largest number of database connections per pool. PostgreSQL: writes and administration
    /// use one pool, the query service's reads another; each opens connections only as needed
    /// (`serve` holds read connections and one other, `project` write connections).
    #[arg(long, env = "SESSIONVIEW_DB_MAX_CONNECTIONS", default_value_t = 8)]
    db_max_connections: u32,
}

/// Whether a long-running command migrates the schema at start.
#[derive(Debug, Clone, Args)]
pub(crate) struct SchemaArgs {
    /// Do not migrate at start: check that the schema has every migration this version needs and
    /// refuse otherwise (for a role that may only read, or a hot-standby replica; run
    /// `sessionview migrate` first). `SESSIONVIEW_MIGRATE=false` is the same.
    #[arg(
        long = "no-migrate",
        env = "SESSIONVIEW_MIGRATE",
        action = clap::ArgAction::SetFalse,
        value_parser = clap::builder::FalseyValueParser::new(),
    )]
    migrate: bool,
}

impl SchemaArgs {
    /// Migrates, or only checks the schema.
    pub(crate) async fn prepare<S: Store>(&self, store: &S) -> anyhow::Result<()> {
        if self.migrate {
            store.migrate().await.context("migrating the schema")
        } else {
            store
                .check_schema()
                .await
                .context("checking the schema (--no-migrate)")
        }
    }
}

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl DbArgs {
    fn backend(&self) -> anyhow::Result<Backend> {
        let url = &self.database_url;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            bail!(
                "unsupported --database-url {:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DB",
                redact(url)
            )
        }
    }

    async fn pg(&self) -> anyhow::Result<PgStore> {
        self.pg_with(&PgSettings::default()).await
    }

    /// Connects with server-side session settings.
    async fn pg_with(&self, settings: &PgSettings) -> anyhow::Result<PgStore> {
        PgStore::connect_with_settings(&self.database_url, self.db_max_connections, settings)
            .await
            .with_context(|| format!("connecting to {}", redact(&self.database_url)))
    }

    async fn sqlite(&self) -> anyhow::Result<SqliteStore> {
        SqliteStore::connect(&self.database_url, self.db_max_connections)
            .await
            .with_context(|| format!("opening {}", self.database_url))
    }
}

/// Runs `$body` with `$store` bound to the backend the URL of `$db` names; with a duration, the
/// reads of the query service (PostgreSQL's read pool) are cancelled after it.
macro_rules! with_store {
    ($db:expr, |$store:ident| $body:expr) => {
        match $db.backend()? {
            $crate::Backend::Postgres => {
                let $store = $db.pg().await?;
                $body
            }
            $crate::Backend::Sqlite => {
                let $store = $db.sqlite().await?;
                $body
            }
        }
    };
    ($db:expr, $read_timeout:expr, |$store:ident| $body:expr) => {
        match $db.backend()? {
            $crate::Backend::Postgres => {
                let settings = sessionview_store::PgSettings {
                    read_statement_timeout: Some($read_timeout),
                    ..sessionview_store::PgSettings::default()
                };
                let $store = $db.pg_with(&settings).await?;
                $body
            }
            $crate::Backend::Sqlite => {
                let $store = $db.sqlite().await?;
                $body
            }
        }
    };
}
pub(crate) use with_store;

/// Hides a password in a URL for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

/// Variables earlier versions read that now have other names: set, they are an error (ignoring
/// one silently would change what a deployment does). `SESSIONVIEW_KAFKA_OPTIONS` is refused
/// where Kafka settings are read (`KafkaOptions`), by every command that reads them.
const RENAMED_VARIABLES: &[(&str, &str)] = &[(
    "SESSIONVIEW_BATCH_SIZE",
    "SESSIONVIEW_PROJECT_BATCH_SIZE (project), SESSIONVIEW_REPLAY_BATCH_SIZE (replay) or \
         SESSIONVIEW_RETRY_BATCH_SIZE (dead-letters retry)",
)];

/// The first renamed variable set in `vars`, with the message naming its replacement.
fn renamed_variable(vars: impl IntoIterator<Item = std::ffi::OsString>) -> Option<String> {
    let set: Vec<std::ffi::OsString> = vars.into_iter().collect();
    RENAMED_VARIABLES.iter().find_map(|(old, new)| {
        set.iter()
            .any(|v| v == old)
            .then(|| format!("{old} is no longer read: use {new}"))
    })
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = renamed_variable(std::env::vars_os().map(|(k, _)| k)) {
        eprintln!("error: {why}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    if cli.check_args {
        println!("arguments accepted");
        return Ok(());
    }
    telemetry::init_logging(cli.log_format);
    // Every TLS user here (sqlx, reqwest, the HTTPS listener) runs on rustls with ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(dispatch(cli.command));
    if let Err(e) = &result {
        if let Some(d) = e.downcast_ref::<replay::Differs>() {
            eprintln!("{d}");
            std::process::exit(3);
        }
        tracing::error!(error = format!("{e:#}"), "sessionview failed");
    }
    result
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => migrate::run(args).await,
        Command::Project(args) => project::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::DeadLetters(args) => dead_letters::run(args).await,
        Command::Replay(args) => replay::replay(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Schema => {
            print!("{}", sessionview_query::sdl());
            Ok(())
        }
        Command::Keypair(cmd) => keypair::run(cmd).await,
        Command::Query(args) => client::query(args).await,
        Command::Healthcheck(args) => client::healthcheck(args).await,
        Command::Reference => {
            print!(
                "{}",
                reference::markdown(&<Cli as clap::CommandFactory>::command())
            );
            Ok(())
        }
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::demo(args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Schema {
        #[command(flatten)]
        schema: SchemaArgs,
    }

    /// The flag (the variable, `SESSIONVIEW_MIGRATE=false`, is exercised through the binary in
    /// crates/sessionview/tests/e2e/security.rs).
    #[test]
    fn no_migrate_flag() {
        let parse = |argv: &[&str]| Schema::try_parse_from(argv).unwrap().schema.migrate;
        assert!(parse(&["t"]));
        assert!(!parse(&["t", "--no-migrate"]));
    }

    #[test]
    fn renamed_variables_are_named_with_their_replacement() {
        let why = renamed_variable(["PATH".into(), "SESSIONVIEW_BATCH_SIZE".into()]).unwrap();
        assert!(why.contains("SESSIONVIEW_PROJECT_BATCH_SIZE"), "{why}");
        assert_eq!(
            renamed_variable(["SESSIONVIEW_PROJECT_BATCH_SIZE".into()]),
            None
        );
    }
}
