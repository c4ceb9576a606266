//! `sessionview serve`, `sessionview schema` and `sessionview keypair`: the query service and its
//! credentials.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rand::Rng;
use sessionview_store::{KeyPair, KeyPairAdmin, PgSettings, PlanCache, ReadModel, Role, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::limits::ApiArgs;
use crate::listener::ConnLimits;
use crate::{Backend, DbArgs, telemetry, with_store};

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

/// `sessionview keypair ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeypairCommand {
    /// Create a keypair and print its access key and secret key.
    Create(CreateArgs),
    /// List keypairs (without secrets).
    List(DbArgs),
    /// Deactivate a keypair: its requests are refused from now on.
    Deactivate(DeactivateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The owner's email.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_EMAIL")]
    email: String,
    /// superadmin, admin (of its domain) or user.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_ROLE")]
    role: String,
    /// The owner's domain.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_DOMAIN", default_value = "default")]
    domain: String,
    /// The owner's user id (a new random one when absent).
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_USER_ID")]
    user_id: Option<Uuid>,
}

#[derive(Debug, Args)]
pub(crate) struct DeactivateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The access key to deactivate.
    access_key: String,
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new keypair: `AKIA` + 16 characters, and a 40-character secret, from the thread-local CSPRNG
/// (ChaCha, seeded by the operating system).
pub(crate) fn generate(email: &str, role: Role, domain: &str, user_id: Uuid) -> KeyPair {
    let mut rng = rand::rng();
    let mut pick = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect()
    };
    KeyPair {
        access_key: format!("AKIA{}", pick(UPPER_DIGITS, 16)),
        secret_key: pick(ALNUM, 40),
        user_id,
        user_email: email.to_owned(),
        domain_name: domain.to_owned(),
        role,
        is_active: true,
        created_at: chrono::Utc::now(),
    }
}

async fn insert<S: Store + KeyPairAdmin>(store: &S, kp: &KeyPair) -> anyhow::Result<()> {
    store.migrate().await.context("migrating the schema")?;
    store
        .insert_keypair(kp)
        .await
        .context("storing the keypair")
}

pub(crate) async fn keypair(cmd: KeypairCommand) -> anyhow::Result<()> {
    match cmd {
        KeypairCommand::Create(args) => {
            let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
            if args.email.trim().is_empty() || !args.email.contains('@') {
                bail!("--email {:?} is not an email address", args.email);
            }
            let kp = generate(
                &args.email,
                role,
                &args.domain,
                args.user_id.unwrap_or_else(Uuid::new_v4),
            );
            with_store!(args.db, |store| insert(&store, &kp).await)?;
            println!("access_key: {}", kp.access_key);
            println!("secret_key: {}", kp.secret_key);
            println!(
                "role: {}  domain: {}  email: {}  user_id: {}",
                kp.role.as_str(),
                kp.domain_name,
                kp.user_email,
                kp.user_id
            );
            Ok(())
        }
        KeypairCommand::List(db) => {
            let all = with_store!(db, |store| store
                .list_keypairs()
                .await
                .context("reading keypairs"))?;
            println!(
                "{:<22} {:<10} {:<7} {:<16} EMAIL",
                "ACCESS KEY", "ROLE", "ACTIVE", "DOMAIN"
            );
            for kp in all {
                println!(
                    "{:<22} {:<10} {:<7} {:<16} {}",
                    kp.access_key,
                    kp.role.as_str(),
                    if kp.is_active { "yes" } else { "no" },
                    kp.domain_name,
                    kp.user_email
                );
            }
            Ok(())
        }
        KeypairCommand::Deactivate(args) => {
            let found = with_store!(args.db, |store| store
                .deactivate_keypair(&args.access_key)
                .await
                .context("deactivating the keypair"))?;
            if !found {
                bail!("no keypair with access key {:?}", args.access_key);
            }
            println!("deactivated {}", args.access_key);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_backend_ai_shapes_and_differ() {
        let a = generate("a@b.c", Role::User, "default", Uuid::nil());
        let b = generate("a@b.c", Role::User, "default", Uuid::nil());
        assert_eq!(a.access_key.len(), 20);
        assert!(a.access_key.starts_with("AKIA"));
        assert_eq!(a.secret_key.len(), 40);
        assert!(a.secret_key.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.access_key, b.access_key);
        assert_ne!(a.secret_key, b.secret_key);
    }
}
