//! `sessionview serve`: the query service, and the listeners and limits `run` and `demo` serve
//! the API with too.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use sessionview_store::{PgSettings, PlanCache, ReadModel, Store};
use tokio_util::sync::CancellationToken;

use crate::limits::ApiArgs;
use crate::listener::ConnLimits;
use crate::{Backend, DbArgs, telemetry};

/// Options of `sessionview serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Address to serve the API, GraphiQL, /metrics, /healthz and /readyz on.
    #[arg(long, env = "SESSIONVIEW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: telemetry::TlsArgs,
    #[command(flatten)]
    schema: crate::SchemaArgs,
    #[command(flatten)]
    api: ApiArgs,
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Bound first: an address in use fails before the database is even connected.
    let listeners = ApiListeners::bind(args.listen, &args.tls, &args.api).await?;
    match args.db.backend()? {
        Backend::Postgres => {
            let settings = PgSettings {
                statement_timeout: Some(args.api.statement_timeout()),
                // PostgreSQL's own choice: a cached statement settles on its generic plan
                // after five custom ones when that plan is no costlier (key lookups, pages of one
                // access key), and the list statements the store runs unnamed, whose best plan
                // depends on their values, are planned for those values every time.
                // `force_generic_plan` would give those a generic plan too.
                plan_cache: PlanCache::Server,
                ..PgSettings::default()
            };
            serve_with(args.db.pg_with(&settings).await?, &args, listeners).await
        }
        // SQLite has no statement timeout; the other limits apply.
        Backend::Sqlite => serve_with(args.db.sqlite().await?, &args, listeners).await,
    }
}

async fn serve_with<S: Store + ReadModel>(
    store: S,
    args: &ServeArgs,
    listeners: ApiListeners,
) -> anyhow::Result<()> {
    args.schema.prepare(&store).await?;
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signals(shutdown.clone());
    let origin = listeners.api.origin();
    tracing::info!(
        database = %crate::redact(&args.db.database_url),
        listen = %origin,
        "serving the GraphQL API"
    );
    eprintln!(
        "sessionview {} serving {origin}/admin/graphql (GraphiQL: {origin}/graphiql)",
        env!("CARGO_PKG_VERSION"),
    );
    serve_api(store, &args.api, listeners, shutdown).await
}

/// The API's listener, and the operational routes' own when `--metrics-listen` is given; both
/// bound at start.
#[derive(Debug)]
pub(crate) struct ApiListeners {
    pub(crate) api: telemetry::Bound,
    ops: Option<telemetry::Bound>,
}

impl ApiListeners {
    pub(crate) async fn bind(
        listen: SocketAddr,
        tls: &telemetry::TlsArgs,
        api: &ApiArgs,
    ) -> anyhow::Result<Self> {
        let api_listener = telemetry::bind(listen, "the GraphQL API", Some(tls)).await?;
        let ops = match api.metrics_listen {
            Some(addr) => Some(telemetry::bind(addr, "metrics and health", None).await?),
            None => None,
        };
        Ok(Self {
            api: api_listener,
            ops,
        })
    }
}

/// Serves the API with `api`'s limits until `shutdown`, with /metrics, /healthz and /readyz
/// beside it or on their own listener; installs the metrics recorder.
pub(crate) async fn serve_api<S: Store + ReadModel>(
    store: S,
    api: &ApiArgs,
    listeners: ApiListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = telemetry::install_metrics()?;
    let probe = store.clone();
    let ops = telemetry::ops_router(
        handle,
        // Ready when a read answers: through the connections the API's reads use.
        move || {
            let probe = probe.clone();
            async move { telemetry::db_ready(ReadModel::ping(&probe)).await }
        },
        {
            let store = store.clone();
            move || sessionview_query::http::record_read_connections(&store)
        },
        shutdown.clone(),
    );
    let app = sessionview_query::router(store, api.server_config());
    let limits = api.conn_limits();
    match listeners.ops {
        None => telemetry::serve(listeners.api, app.merge(ops), limits, shutdown).await,
        Some(ops_listener) => {
            let ops_task = tokio::spawn(telemetry::serve(
                ops_listener,
                ops,
                ConnLimits::default(),
                shutdown.clone(),
            ));
            let served = telemetry::serve(listeners.api, app, limits, shutdown.clone()).await;
            shutdown.cancel();
            ops_task.await.context("the metrics listener failed")??;
            served
        }
    }
}
