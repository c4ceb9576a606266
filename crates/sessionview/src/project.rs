//! `sessionview project`: the projector as a long-running command (or a batch run with
//! `--exit-at-end`), with its operational listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use sessionview_projector::{BatchConfig, Health, RunOptions, SourceConfig, Until};
use sessionview_store::{PgSettings, Store};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{Backend, DbArgs, SchemaArgs, kafka, limits, telemetry};

#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Where events come from: kafka://HOST:PORT/TOPIC or file://PATH (an NDJSON archive).
    #[arg(long, env = "SESSIONVIEW_SOURCE")]
    source: String,
    #[command(flatten)]
    kafka: kafka::GroupArgs,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    events: limits::EventArgs,
    /// Most events in one batch (one database transaction).
    #[arg(long, env = "SESSIONVIEW_PROJECT_BATCH_SIZE", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// Longest wait, in milliseconds, for more events once a batch has its first.
    #[arg(long, env = "SESSIONVIEW_BATCH_LINGER_MS", default_value_t = 5)]
    batch_linger_ms: u64,
    /// Stop once every partition of the topic (or the file) has reached the end it had at start,
    /// applied by this instance or by another member of the group (as the stored positions
    /// show); exit 0 only then.
    #[arg(long, env = "SESSIONVIEW_EXIT_AT_END")]
    exit_at_end: bool,
    /// With --exit-at-end: fail (exit 1, naming the partitions) after waiting this long without
    /// progress for partitions another member holds (one that died holds them until its session
    /// times out).
    #[arg(
        long,
        env = "SESSIONVIEW_EXIT_AT_END_TIMEOUT",
        default_value = "120s",
        value_parser = humantime::parse_duration,
    )]
    exit_at_end_timeout: Duration,
    /// For file:// sources: keep reading as the file grows.
    #[arg(long, env = "SESSIONVIEW_FOLLOW")]
    follow: bool,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "SESSIONVIEW_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// PostgreSQL ends a session idle inside a transaction for this many seconds, releasing its
    /// locks (a paused projector cannot hold up the others for longer).
    #[arg(long, env = "SESSIONVIEW_DB_IDLE_TRANSACTION_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    db_idle_transaction_timeout_secs: u64,
    /// /readyz fails when events wait and no batch was committed for this many seconds.
    #[arg(long, env = "SESSIONVIEW_STALL_AFTER_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    stall_after_secs: u64,
}

/// `sessionview project`.
pub(crate) async fn run(args: ProjectArgs) -> anyhow::Result<()> {
    let mut source = args.kafka.source(&args.source)?;
    match &mut source {
        SourceConfig::Kafka(_) => {
            if args.follow {
                bail!("--follow applies to file:// sources only");
            }
        }
        SourceConfig::File { path, follow } => {
            if !path.exists() && !args.follow {
                bail!("{}: no such file", path.display());
            }
            *follow = args.follow;
        }
    }
    // Bound first: an address in use fails before the database is even connected.
    let ops_listener = match args.metrics_listen {
        Some(addr) => Some(telemetry::bind(addr, "/metrics, /healthz, /readyz", None).await?),
        None => None,
    };
    match args.db.backend()? {
        Backend::Postgres => {
            let settings = PgSettings {
                idle_in_transaction_timeout: Some(Duration::from_secs(
                    args.db_idle_transaction_timeout_secs,
                )),
                ..PgSettings::default()
            };
            let store = args.db.pg_with(&settings).await?;
            project_with(store, source, &args, ops_listener).await
        }
        Backend::Sqlite => {
            let store = args.db.sqlite().await?;
            project_with(store, source, &args, ops_listener).await
        }
    }
}

async fn project_with<S: Store>(
    store: S,
    source: SourceConfig,
    args: &ProjectArgs,
    ops_listener: Option<telemetry::Bound>,
) -> anyhow::Result<()> {
    args.schema.prepare(&store).await?;
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    let ops_stop = CancellationToken::new();
    let health = Health::new();
    let stall_after = Duration::from_secs(args.stall_after_secs);
    let ops = match ops_listener {
        Some(listener) => {
            let handle = telemetry::install_metrics()?;
            let probe = store.clone();
            let health = health.clone();
            let app = telemetry::ops_router(
                handle,
                move || {
                    let probe = probe.clone();
                    let health = health.clone();
                    async move { telemetry::projector_ready(&probe, &health, stall_after).await }
                },
                || {},
                ops_stop.clone(),
            );
            Some(tokio::spawn(telemetry::serve(
                listener,
                app,
                crate::listener::ConnLimits::default(),
                ops_stop.clone(),
            )))
        }
        None => None,
    };
    let batch = args.events.apply(BatchConfig {
        max_events: args.batch_size as usize,
        linger: Duration::from_millis(args.batch_linger_ms),
        ..BatchConfig::default()
    });
    info!(
        source = %kafka::describe_source(&source),
        database = %crate::redact(&args.db.database_url),
        metrics = ?args.metrics_listen,
        batch_size = batch.max_events,
        "projecting"
    );
    let opts = RunOptions {
        batch,
        until: if args.exit_at_end {
            Until::End
        } else {
            Until::Forever
        },
        health: Some(health),
        end_timeout: args.exit_at_end_timeout,
        ..RunOptions::default()
    };
    let result = sessionview_projector::run(source, store, opts, shutdown).await;
    ops_stop.cancel();
    if let Some(ops) = ops {
        ops.await??;
    }
    let summary = result?;
    let secs = summary.elapsed.as_secs_f64();
    let outcomes: Vec<String> = summary
        .outcomes
        .iter()
        .map(|(o, n)| format!("{}={n}", o.as_str()))
        .collect();
    println!(
        "projected {} events in {} batches in {secs:.2}s ({:.0} events/s); {}",
        summary.messages,
        summary.batches,
        summary.messages as f64 / secs.max(1e-9),
        outcomes.join(" ")
    );
    Ok(())
}
