//! `sessionview run`: the projector and the query server in one process.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use sessionview_projector::{BatchConfig, RunOptions, SourceConfig};
use sessionview_store::{ReadModel, Store};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

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

/// Projector and server in one process until a signal or a failure of either.
pub(crate) async fn project_and_serve<S: Store + ReadModel>(
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
