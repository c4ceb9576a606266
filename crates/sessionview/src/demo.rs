//! `sessionview demo`: `run`'s projector and server in one process, fed by a built-in simulated
//! cluster, on SQLite by default.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rand::Rng;
use sessionview_projector::{RunOptions, SourceConfig};
use sessionview_simulator::{SimConfig, Simulator};
use sessionview_store::Role;
use sessionview_store::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uuid::Uuid;

use crate::keypair::generate;
use crate::limits::ApiArgs;
use crate::run::project_and_serve;
use crate::serve::ApiListeners;
use crate::{DbArgs, telemetry, with_store};

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
