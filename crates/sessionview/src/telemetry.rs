//! Logging (tracing), the Prometheus recorder, and the small HTTP server for `/metrics`, `/healthz`
//! and `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessionview_projector::{Health, Progress};
use sessionview_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `SESSIONVIEW_LOG` (then
/// `RUST_LOG`), default `info`.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = std::env::var("SESSIONVIEW_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the Prometheus recorder with the histogram buckets of every metric we define.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    use sessionview_projector::metrics as pm;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(pm::BATCH_SIZE.into()), pm::BATCH_SIZE_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(pm::COMMIT_SECONDS.into()),
            pm::COMMIT_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(pm::FOLD_SECONDS.into()),
            pm::COMMIT_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(sessionview_query::http::REQUEST_SECONDS.into()),
            sessionview_query::http::REQUEST_SECONDS_BUCKETS,
        )?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    pm::describe();
    sessionview_query::http::describe_metrics();
    Ok(handle)
}

/// Readiness of a process that needs only its database: `ping` (a store's `Store::ping`, or
/// `ReadModel::ping` for the connections reads use) answered.
pub(crate) async fn db_ready(
    ping: impl Future<Output = Result<(), StoreError>>,
) -> Result<(), String> {
    ping.await.map_err(|e| format!("database unreachable: {e}"))
}

/// Readiness of a projector: the database answers and the projector is not stalled (events wait
/// and nothing was committed for `stall_after`). High lag alone is not a failure.
pub(crate) async fn projector_ready<S: Store>(
    store: &S,
    health: &Health,
    stall_after: Duration,
) -> Result<(), String> {
    db_ready(store.ping()).await?;
    match health.progress(stall_after) {
        Progress::Stalled { behind, idle } => Err(format!(
            "stalled: {behind} events wait and no batch was committed for {}s",
            idle.as_secs()
        )),
        Progress::CaughtUp | Progress::Working { .. } => Ok(()),
    }
}

/// The operational routes: `/metrics` (`sample` runs first, to set gauges read at scrape time),
/// `/healthz` (the process answers) and `/readyz` (`ready` resolves `Ok`; otherwise 503 with the
/// reason). Also keeps the recorder's histograms trimmed until `shutdown`.
pub(crate) fn ops_router<F, Fut, G>(
    handle: PrometheusHandle,
    ready: F,
    sample: G,
    shutdown: CancellationToken,
) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
    G: Fn() + Clone + Send + Sync + 'static,
{
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                sample();
                handle.render()
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}

/// Serves `app` on `addr` until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    app: Router,
    what: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving {what}");
    // Small responses go out at once instead of waiting for the peer's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub(crate) fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: finishing the batch in flight, then stopping"),
            () = term => tracing::info!("SIGTERM: finishing the batch in flight, then stopping"),
        }
        token.cancel();
    });
}
