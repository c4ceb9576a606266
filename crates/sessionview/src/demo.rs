//! `sessionview run` (projector + query server in one process) and `sessionview demo` (the same,
//! fed by a built-in simulated cluster, on SQLite by default).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rand::Rng;
use sessionview_projector::{BatchConfig, RunOptions, SourceConfig};
use sessionview_simulator::{SimConfig, Simulator};
use sessionview_store::prelude::*;
use sessionview_store::{KeyPairAdmin, ReadModel, Role, Store};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use uuid::Uuid;

use crate::keypair::generate;
use crate::limits::ApiArgs;
use crate::serve::{ApiListeners, serve_api};
use crate::{DbArgs, telemetry, with_store};

/// Options of `sessionview run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Where events come from: kafka://HOST:PORT/TOPIC, or file://PATH (followed as it grows).
    #[arg(long, env = "SESSIONVIEW_SOURCE")]
    source: String,
    #[command(flatten)]
    kafka: crate::kafka::GroupArgs,
    /// Address of the API, GraphiQL, /metrics, /healthz and /readyz.
    #[arg(long, env = "SESSIONVIEW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: telemetry::TlsArgs,
    #[command(flatten)]
    schema: crate::SchemaArgs,
    #[command(flatten)]
    events: crate::limits::EventArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// Options of `sessionview demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where the demo keeps its data (it survives a restart).
    /// Its own variable: the demo never writes into the database an operator exported as
    /// `SESSIONVIEW_DATABASE_URL`.
    #[arg(
        long,
        env = "SESSIONVIEW_DEMO_DATABASE_URL",
        default_value = "sqlite://sessionview-demo.db"
    )]
    database_url: String,
    /// Address of the API and GraphiQL.
    #[arg(long, env = "SESSIONVIEW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Simulated seconds per real second (sessions live from seconds to hours of simulated time).
    #[arg(long, env = "SESSIONVIEW_DEMO_SPEED", default_value_t = 30.0)]
    speed: f64,
    /// Mean simulated seconds between two new sessions.
    #[arg(long, env = "SESSIONVIEW_DEMO_ARRIVAL_S", default_value_t = 20.0)]
    arrival_s: f64,
    #[command(flatten)]
    api: ApiArgs,
}

/// Projector and server in one process until a signal or a failure of either.
async fn project_and_serve<S: Store + ReadModel>(
    store: S,
    source: SourceConfig,
    opts: RunOptions,
    api: &ApiArgs,
    listeners: ApiListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = serve_api(store.clone(), api, listeners, shutdown.clone());
    let projector = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = sessionview_projector::run(source, store, opts, shutdown.clone()).await;
            if let Err(e) = &result {
                error!(error = %e, "the projector stopped; stopping the server too");
            }
            shutdown.cancel();
            result
        })
    };
    let served = server.await;
    shutdown.cancel();
    let projected = projector.await.context("the projector task failed")?;
    served?;
    projected?;
    Ok(())
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut source = args.kafka.source(&args.source)?;
    if let SourceConfig::File { follow, .. } = &mut source {
        *follow = true;
    }
    let listeners = ApiListeners::bind(args.listen, &args.tls, &args.api).await?;
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    with_store!(args.db, args.api.statement_timeout(), |store| {
        args.schema.prepare(&store).await?;
        let origin = listeners.api.origin();
        info!(
            source = %crate::kafka::describe_source(&source),
            database = %crate::redact(&args.db.database_url),
            listen = %origin,
            "projecting and serving"
        );
        eprintln!(
            "sessionview {} projecting {} and serving {origin}/admin/graphql",
            env!("CARGO_PKG_VERSION"),
            args.source,
        );
        let opts = RunOptions {
            batch: args.events.apply(BatchConfig::default()),
            ..RunOptions::default()
        };
        project_and_serve(store, source, opts, &args.api, listeners, shutdown).await
    })
}

/// The demo's event archive, next to its database.
fn events_path(database_url: &str) -> PathBuf {
    match database_url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() && !path.starts_with(':') => {
            PathBuf::from(format!("{path}.events.ndjson"))
        }
        _ => PathBuf::from("sessionview-demo.events.ndjson"),
    }
}

/// Appends the simulated cluster's events to `path` in (scaled) real time, until `stop`.
fn simulate_forever(
    path: PathBuf,
    speed: f64,
    arrival_s: f64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let start = chrono::Utc::now();
    let cfg = SimConfig {
        sessions: u64::MAX,
        seed: rand::rng().random(),
        start,
        mean_interarrival_secs: arrival_s,
        duplicate_ratio: 0.02,
        early_ratio: 0.02,
        poison_ratio: 0.01,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let real_start = Instant::now();
    for m in Simulator::new(cfg) {
        let sim_elapsed = (m.at - start).to_std().unwrap_or_default();
        let due = sim_elapsed.div_f64(speed);
        while let Some(wait) = due.checked_sub(real_start.elapsed()) {
            if stop.is_cancelled() {
                return Ok(());
            }
            std::thread::sleep(wait.min(Duration::from_millis(200)));
        }
        if stop.is_cancelled() {
            return Ok(());
        }
        file.write_all(&m.bytes)?;
        file.write_all(b"\n")?;
        file.flush()?;
    }
    Ok(())
}

pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }
    if !(args.arrival_s > 0.0 && args.arrival_s.is_finite()) {
        bail!(
            "--arrival-s must be a positive number, got {}",
            args.arrival_s
        );
    }
    let db = DbArgs {
        database_url: args.database_url.clone(),
        db_max_connections: 8,
    };
    let events = events_path(&args.database_url);
    let listeners =
        ApiListeners::bind(args.listen, &telemetry::TlsArgs::default(), &args.api).await?;
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    with_store!(db, args.api.statement_timeout(), |store| {
        store.migrate().await.context("migrating the schema")?;
        let kp = generate(
            "demo@sessionview.local",
            Role::SuperAdmin,
            "default",
            Uuid::new_v4(),
        );
        store
            .insert_keypair(&kp)
            .await
            .context("storing the demo keypair")?;
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "sessionview".into());
        let base = listeners.api.origin();
        println!(
            "sessionview demo: a simulated cluster, projected into {} and served at {base}",
            args.database_url
        );
        println!();
        println!("  GraphiQL:    {base}/graphiql   (paste the keys below into the page)");
        println!("  access key:  {}", kp.access_key);
        println!("  secret key:  {}", kp.secret_key);
        println!(
            "  events:      {} (appended as the cluster runs; kept across restarts)",
            events.display()
        );
        println!();
        println!("  Try:");
        println!(
            "  {exe} query --endpoint {base} --access-key {} --secret-key {} \\\n    '{{ compute_session_list(limit: 5, offset: 0) {{ total_count items {{ name type status status_changed occupied_slots containers {{ role agent status }} }} }} }}'",
            kp.access_key, kp.secret_key
        );
        println!();
        println!("Stop with Ctrl-C.");
        let _ = std::io::stdout().flush();
        // The archive must exist before the projector follows it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events)
            .with_context(|| format!("creating {}", events.display()))?;
        let sim = {
            let (path, stop) = (events.clone(), shutdown.clone());
            let (speed, arrival) = (args.speed, args.arrival_s);
            tokio::task::spawn_blocking(move || simulate_forever(path, speed, arrival, stop))
        };
        let source = SourceConfig::File {
            path: events.clone(),
            follow: true,
        };
        info!(events = %events.display(), "demo running");
        let result = project_and_serve(
            store,
            source,
            RunOptions::default(),
            &args.api,
            listeners,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        sim.await.context("the simulator task failed")??;
        result
    })
}
