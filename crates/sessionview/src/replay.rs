//! `sessionview replay`: rebuild the read model from the event log, without taking queries down.
//!
//! Default (zero downtime): build into the shadow schema with the same fold and store code as
//! `project`, catch up with the live projector's positions, freeze the live positions (the live
//! projector waits; readers do not), verify, and swap the tables in one transaction.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sessionview_projector::replay::{
    Rebuild, Rebuilt, ReplayError, ReplayMode, SHADOW_SCHEMA, Verification, rebuild_in_place,
    rebuild_in_shadow,
};
use sessionview_projector::{BatchConfig, SourceConfig};
use sessionview_store::prelude::*;
use sessionview_store::{PgStore, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{Backend, DbArgs, redact, telemetry};

/// Options of `sessionview replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The event log: kafka://HOST:PORT/TOPIC (from the earliest offset) or file://PATH (an NDJSON
    /// archive of envelopes).
    #[arg(long = "from", env = "SESSIONVIEW_REPLAY_FROM")]
    from: String,
    /// Rebuild the live tables directly (they are emptied first; queries see partial tables while
    /// it runs). For small or offline databases; stop the live projector first.
    #[arg(
        long,
        env = "SESSIONVIEW_REPLAY_IN_PLACE",
        conflicts_with = "verify_only"
    )]
    in_place: bool,
    /// Rebuild into the shadow schema and compare it with the live tables, without swapping.
    /// Exits with status 3 when they differ.
    #[arg(long, env = "SESSIONVIEW_REPLAY_VERIFY_ONLY")]
    verify_only: bool,
    /// Say what would be done, without writing anything.
    #[arg(long, env = "SESSIONVIEW_REPLAY_DRY_RUN")]
    dry_run: bool,
    /// Most events in one batch.
    #[arg(long, env = "SESSIONVIEW_REPLAY_BATCH_SIZE", default_value_t = 20_000)]
    batch_size: usize,
    /// Show one progress line per partition (Kafka) in the final report.
    #[arg(long, env = "SESSIONVIEW_REPLAY_PER_PARTITION")]
    per_partition: bool,
    /// Give up aligning with a live projector that does not advance for this long (seconds).
    #[arg(long, env = "SESSIONVIEW_REPLAY_ALIGN_TIMEOUT_S", default_value_t = 60)]
    align_timeout_s: u64,
    #[command(flatten)]
    kafka: crate::kafka::KafkaArgs,
    /// Give the same values as the live projector's, or the rebuilt tables differ from its.
    #[command(flatten)]
    events: crate::limits::EventArgs,
    /// Serve /metrics (rebuild progress), /healthz and /readyz on this address.
    #[arg(long, env = "SESSIONVIEW_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Prints how the shadow compared with the live tables.
fn print_verification(v: &Verification) {
    println!(
        "live:   {} sessions, {} containers, {} events seen, {} parked, {} dead letters",
        v.live.sessions,
        v.live.kernels,
        v.live.seen_events,
        v.live.parked_events,
        v.live.dead_letters
    );
    println!(
        "shadow: {} sessions, {} containers, {} events seen, {} parked, {} dead letters",
        v.shadow.sessions,
        v.shadow.kernels,
        v.shadow.seen_events,
        v.shadow.parked_events,
        v.shadow.dead_letters
    );
    if v.differing.is_empty() {
        println!("content: identical");
    } else {
        println!("content: {} sessions differ:", v.differing.len());
        for id in v.differing.iter().take(50) {
            println!("  {id}");
        }
        if v.differing.len() > 50 {
            println!("  ... and {} more", v.differing.len() - 50);
        }
    }
    if v.count_drift.is_empty() {
        println!("list totals: consistent with the sessions");
    } else {
        println!(
            "list totals: session_counts disagrees with the sessions for {} access key and status pairs (counted, kept):",
            v.count_drift.len()
        );
        for (key, status, counted, kept) in v.count_drift.iter().take(50) {
            println!("  {key} {status}: {counted}, {kept}");
        }
    }
}

/// Progress: a bar on a terminal, log lines otherwise, and gauges for /metrics.
fn spawn_progress(
    done: Arc<AtomicU64>,
    total: Option<u64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    metrics::describe_gauge!(
        "sessionview_replay_events_done",
        "Events the running rebuild has applied."
    );
    metrics::describe_gauge!(
        "sessionview_replay_events_total",
        "Events the running rebuild expects to apply (0: unknown)."
    );
    metrics::gauge!("sessionview_replay_events_total").set(total.unwrap_or(0) as f64);
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{spinner} rebuild [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, ETA {eta})"
        } else {
            "{spinner} rebuild [{elapsed_precise}] {pos} events ({per_sec})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    });
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last_log = Instant::now();
        loop {
            let n = done.load(Ordering::Relaxed);
            metrics::gauge!("sessionview_replay_events_done").set(n as f64);
            if let Some(bar) = &bar {
                bar.set_position(n);
            } else if last_log.elapsed() >= Duration::from_secs(5) {
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                match total {
                    Some(t) => info!(
                        done = n,
                        total = t,
                        rate = rate as u64,
                        eta_s = ((t.saturating_sub(n)) as f64 / rate.max(1.0)) as u64,
                        "rebuild progress"
                    ),
                    None => info!(done = n, rate = rate as u64, "rebuild progress"),
                }
                last_log = Instant::now();
            }
            if stop.is_cancelled() {
                if let Some(bar) = &bar {
                    bar.finish();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Events in an archive (lines that are not blank), counted quickly.
fn count_lines(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        if !line?.trim_ascii().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    // Replay assigns partitions directly (no group membership); the group id is only a label.
    let group = format!("sessionview-replay-{}", Uuid::new_v4().simple());
    // The session timeout does not matter: replay is no group member.
    let mut source = SourceConfig::parse(&args.from, &group, Duration::from_secs(10))?;
    if let SourceConfig::Kafka(k) = &mut source {
        k.options = args.kafka.options()?;
    }
    if let SourceConfig::File { path, .. } = &source
        && !path.exists()
    {
        bail!("{}: no such file", path.display());
    }
    let source_name = source.source_name();
    tracing::info!(
        source = %crate::kafka::describe_source(&source),
        database = %redact(&args.db.database_url),
        metrics = ?args.metrics_listen,
        "replaying"
    );
    if args.db.backend()? == Backend::Sqlite {
        if !args.in_place {
            bail!(
                "zero-downtime replay and --verify-only need PostgreSQL (they build into a shadow \
                 schema and swap it in); on SQLite, stop the projector and use --in-place"
            );
        }
        let store = args.db.sqlite().await?;
        store.migrate().await.context("migrating the schema")?;
        if args.dry_run {
            println!(
                "would empty and rebuild {} in place from {}",
                args.db.database_url, args.from
            );
            return Ok(());
        }
        return in_place(store, source, &args).await;
    }
    let live = args.db.pg().await?;
    live.migrate().await.context("migrating the live schema")?;
    let live_positions = live.positions(&source_name).await?;
    let mode = if args.in_place {
        "in place (live tables emptied and rebuilt; queries see partial tables meanwhile)"
    } else if args.verify_only {
        "verify only (rebuild into the shadow schema, compare, do not swap)"
    } else {
        "zero downtime (rebuild into the shadow schema, align with the live projector, verify, swap)"
    };
    if args.dry_run {
        println!(
            "source:          {} (positions stored as {source_name:?})",
            args.from
        );
        println!("database:        {}", redact(&args.db.database_url));
        println!("mode:            {mode}");
        println!("live positions:  {live_positions:?}");
        println!("live tables:     {:?}", live.counts().await?);
        println!("dry run: nothing written");
        return Ok(());
    }
    let _lock = live
        .try_replay_lock()
        .await?
        .context("another replay is running against this database")?;
    let ops_listener = match args.metrics_listen {
        Some(addr) => Some(telemetry::bind(addr, "/metrics", None).await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    let ops_stop = CancellationToken::new();
    if let Some(listener) = ops_listener {
        let handle = telemetry::install_metrics()?;
        let probe = live.clone();
        let app = telemetry::ops_router(
            handle,
            move || {
                let probe = probe.clone();
                async move { telemetry::db_ready(OperationsStore::ping(&probe)).await }
            },
            || {},
            ops_stop.clone(),
        );
        tokio::spawn(telemetry::serve(
            listener,
            app,
            crate::listener::ConnLimits::default(),
            ops_stop.clone(),
        ));
    }
    let total = match &source {
        SourceConfig::File { path, .. } => {
            let p = path.clone();
            Some(tokio::task::spawn_blocking(move || count_lines(&p)).await??)
        }
        SourceConfig::Kafka(_) if !live_positions.is_empty() => {
            Some(live_positions.values().map(|v| *v as u64).sum())
        }
        SourceConfig::Kafka(_) => None,
    };
    let done = Arc::new(AtomicU64::new(0));
    let progress_stop = CancellationToken::new();
    let progress = spawn_progress(Arc::clone(&done), total, progress_stop.clone());
    let batch = args.events.apply(BatchConfig {
        max_events: args.batch_size.max(1),
        publish: false,
        ..BatchConfig::default()
    });
    let rebuild = Rebuild {
        source: source.clone(),
        batch,
        progress: Arc::clone(&done),
    };
    let started = Instant::now();
    let result = if args.in_place {
        rebuild_in_place(live.clone(), &rebuild, &shutdown)
            .await
            .map(|summary| {
                format!(
                    "rebuilt the live tables in place from {} events",
                    summary.messages
                )
            })
            .map_err(anyhow::Error::from)
    } else {
        let mode = if args.verify_only {
            ReplayMode::VerifyOnly
        } else {
            ReplayMode::Swap
        };
        let (url, max) = (args.db.database_url.clone(), args.db.db_max_connections);
        let connect_shadow =
            || async move { PgStore::connect_in_schema(&url, max, SHADOW_SCHEMA).await };
        let align = Duration::from_secs(args.align_timeout_s);
        match rebuild_in_shadow(&live, connect_shadow, &rebuild, mode, align, &shutdown).await {
            Ok(Rebuilt::Verified(v)) => {
                print_verification(&v);
                Ok("verified: the live tables equal a fresh rebuild".to_owned())
            }
            Ok(Rebuilt::Swapped {
                verification,
                positions,
            }) => {
                print_verification(&verification);
                Ok(format!(
                    "swapped in the rebuilt tables at positions {positions:?}"
                ))
            }
            Err(ReplayError::Differs(v)) => {
                print_verification(&v);
                Err(anyhow::Error::new(Differs {
                    sessions: v.differing.len(),
                    totals: v.count_drift.len(),
                }))
            }
            Err(e) => Err(e.into()),
        }
    };
    progress_stop.cancel();
    let _ = progress.await;
    ops_stop.cancel();
    let seconds = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    match result {
        Ok(what) => {
            println!(
                "{what}; {n} events in {seconds:.2}s ({:.0} events/s)",
                n as f64 / seconds.max(1e-9)
            );
            if args.per_partition {
                for (p, next) in live.positions(&source_name).await? {
                    println!("  partition {p}: next offset {next}");
                }
            }
            Ok(())
        }
        Err(e) => {
            if e.downcast_ref::<Differs>().is_none() {
                warn!("replay stopped; the live tables are untouched (except with --in-place)");
            }
            Err(e)
        }
    }
}

/// `--in-place` on a backend without shadow schemas (SQLite): empty the read model, rebuild it.
async fn in_place<S: Store>(
    store: S,
    source: SourceConfig,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    let total = match &source {
        SourceConfig::File { path, .. } => {
            let p = path.clone();
            Some(tokio::task::spawn_blocking(move || count_lines(&p)).await??)
        }
        SourceConfig::Kafka(_) => None,
    };
    let done = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let progress = spawn_progress(Arc::clone(&done), total, stop.clone());
    let started = Instant::now();
    let rebuild = Rebuild {
        source,
        batch: args.events.apply(BatchConfig {
            max_events: args.batch_size.max(1),
            publish: false,
            ..BatchConfig::default()
        }),
        progress: Arc::clone(&done),
    };
    let result = rebuild_in_place(store, &rebuild, &shutdown).await;
    stop.cancel();
    let _ = progress.await;
    let summary = result?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rebuilt the live tables in place from {} events in {seconds:.2}s ({:.0} events/s)",
        summary.messages,
        summary.messages as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// `--verify-only` found differences (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error(
    "the live tables differ from a fresh rebuild: {sessions} sessions, {totals} list totals (access key and status pairs)"
)]
pub(crate) struct Differs {
    pub(crate) sessions: usize,
    pub(crate) totals: usize,
}
