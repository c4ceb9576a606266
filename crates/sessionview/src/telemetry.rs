//! Logging (tracing), the Prometheus recorder, the HTTP(S) listeners (bound at start, served until
//! shutdown) and the operational routes `/metrics`, `/healthz` and `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessionview_projector::{Health, Progress};
use sessionview_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::listener::{ConnLimits, Guard};

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

/// HTTPS for a listener that faces clients (`serve`, `run`), for installations without an
/// ingress that terminates TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. Without it the listener speaks plain HTTP.
    #[arg(long, env = "SESSIONVIEW_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SESSIONVIEW_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

/// A bound listener, not yet serving: binding happens at start, so that an address in use is an
/// error before anything else runs.
#[derive(Debug)]
pub(crate) struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    tls: Option<RustlsConfig>,
    what: String,
}

impl Bound {
    /// `http://ADDR` or `https://ADDR`.
    pub(crate) fn origin(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Binds `addr` for `what` (named in errors and logs), with TLS when `tls` names a certificate.
pub(crate) async fn bind(
    addr: SocketAddr,
    what: &str,
    tls: Option<&TlsArgs>,
) -> anyhow::Result<Bound> {
    let tls = match tls {
        Some(TlsArgs {
            tls_cert: Some(cert),
            tls_key: Some(key),
        }) => Some(
            RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading the TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
        ),
        _ => None,
    };
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {what} on {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("binding {what} on {addr}"))?;
    let addr = listener.local_addr()?;
    let bound = Bound {
        listener,
        addr,
        tls,
        what: what.to_owned(),
    };
    // The address bound, port 0 resolved: what an operator (or a test, or a supervisor that
    // passed port 0) connects to.
    eprintln!("listening on {}: {what}", bound.origin());
    Ok(bound)
}

/// Serves `app` on `bound` until `shutdown`, then lets requests in flight finish (up to 10 s).
/// Connections are capped and cut off when idle or slow to send their headers (`limits`).
pub(crate) async fn serve(
    bound: Bound,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Bound {
        listener,
        addr,
        tls,
        what,
    } = bound;
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %addr, scheme, "serving {what}");
    let mut server = axum_server::from_tcp(listener)
        .with_context(|| format!("serving {what} on {addr}"))?
        .handle(handle);
    // hyper needs a timer for its timeouts; without one they are silently off.
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout);
    let service = app.into_make_service();
    // Small responses go out at once instead of waiting for the peer's delayed ACK.
    let guarded = Guard::new(NoDelayAcceptor, &limits);
    let served = match tls {
        Some(config) => {
            server
                .acceptor(RustlsAcceptor::new(config).acceptor(guarded))
                .serve(service)
                .await
        }
        None => server.acceptor(guarded).serve(service).await,
    };
    served.with_context(|| format!("serving {what} on {addr}"))
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
