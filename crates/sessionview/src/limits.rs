//! The flags that bound what one input may cost: the projector's per-event limits (`project`,
//! `run`, `replay`) and the query service's per-request and per-connection limits (`serve`,
//! `run`, `demo`), each written once.

use std::time::Duration;

use clap::Args;
use sessionview_projector::BatchConfig;
use sessionview_query::precheck::DocumentLimits;
use sessionview_query::{Limits, ServerConfig};

use crate::listener::ConnLimits;

/// What the projector accepts of one event, and how long an orphan may wait.
#[derive(Debug, Clone, Args)]
pub(crate) struct EventArgs {
    /// Larger events become dead letters labelled `oversized`, which keep the first 64 KiB, the
    /// full length and the SHA-256 of the whole.
    #[arg(
        long,
        env = "SESSIONVIEW_MAX_EVENT_BYTES",
        default_value_t = 1 << 20,
        value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)),
    )]
    max_event_bytes: u64,
    /// Events parked for a session that never comes become dead letters labelled
    /// `parked_expired` after this long (e.g. 7d, 12h, 90s).
    #[arg(
        long,
        env = "SESSIONVIEW_PARK_RETENTION",
        default_value = "7d",
        value_parser = humantime::parse_duration,
    )]
    park_retention: Duration,
}

impl EventArgs {
    /// `batch` with these limits.
    pub(crate) fn apply(&self, batch: BatchConfig) -> BatchConfig {
        BatchConfig {
            max_event_bytes: usize::try_from(self.max_event_bytes).unwrap_or(usize::MAX),
            park_retention: self.park_retention,
            ..batch
        }
    }
}

/// What one request and one connection may cost the query service (`serve`, `run`, `demo`).
#[derive(Debug, Clone, Args)]
pub(crate) struct ApiArgs {
    /// Largest `limit` a list query accepts.
    #[arg(long, env = "SESSIONVIEW_MAX_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..))]
    max_limit: i32,
    /// Largest `offset` a list query accepts (the rows before it are read and skipped).
    #[arg(long, env = "SESSIONVIEW_MAX_OFFSET", default_value_t = 100_000, value_parser = clap::value_parser!(i32).range(0..))]
    max_offset: i32,
    /// Deepest query accepted (selection sets).
    #[arg(long, env = "SESSIONVIEW_MAX_DEPTH", default_value_t = 12)]
    max_depth: usize,
    /// Most complex query accepted (each field counts 1; lists multiply by their limit, nested
    /// containers and dependencies by 8).
    #[arg(long, env = "SESSIONVIEW_MAX_COMPLEXITY", default_value_t = 100_000)]
    max_complexity: usize,
    /// Longest query text in bytes (refused before it is parsed; the body may be larger, up to
    /// --body-limit-bytes, for its variables).
    #[arg(long, env = "SESSIONVIEW_MAX_QUERY_BYTES", default_value_t = 64 * 1024)]
    max_query_bytes: usize,
    /// Deepest nesting of brackets, braces and parentheses in a query's text, and of its
    /// variables (checked before the query is parsed).
    #[arg(long, env = "SESSIONVIEW_MAX_NESTING", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=256))]
    max_nesting: u64,
    /// Most root fields (aliases included) of one operation, fragments expanded.
    #[arg(long, env = "SESSIONVIEW_MAX_ROOT_FIELDS", default_value_t = 64)]
    max_root_fields: u64,
    /// Most aliased fields of one operation, fragments expanded.
    #[arg(long, env = "SESSIONVIEW_MAX_ALIASES", default_value_t = 64)]
    max_aliases: u64,
    /// Most fields of one operation once its fragments are expanded (each fragment is measured
    /// once, so a chain of fragments costs what it is long, not 2^n).
    #[arg(long, env = "SESSIONVIEW_MAX_FIELDS", default_value_t = 10_000)]
    max_fields: u64,
    /// Largest request body in bytes (enforced while it is read, after authentication).
    #[arg(long, env = "SESSIONVIEW_BODY_LIMIT_BYTES", default_value_t = 1 << 20)]
    body_limit_bytes: usize,
    /// Longest time for a request's body to arrive once its headers are in.
    #[arg(long, env = "SESSIONVIEW_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Longest time for a request's headers to arrive (HTTP/1; also the most a keep-alive
    /// connection waits for its next request).
    #[arg(long, env = "SESSIONVIEW_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// A connection that sends and receives nothing for this long is closed (any protocol, TLS
    /// handshakes included). Keep it above --request-timeout.
    #[arg(long, env = "SESSIONVIEW_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Most connections open at once; more are closed as they arrive.
    #[arg(long, env = "SESSIONVIEW_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Longest time from a request's arrival to its answer; a request still running is refused
    /// with an error naming this limit.
    #[arg(long, env = "SESSIONVIEW_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// How many requests of one keypair run at once; more wait behind their own keypair's
    /// requests (within --request-timeout), never in front of other callers'.
    #[arg(long, env = "SESSIONVIEW_PER_KEY_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    per_key_concurrency: u64,
    /// Statements of the API's reads running longer than this are cancelled by the database
    /// (PostgreSQL).
    #[arg(long, env = "SESSIONVIEW_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    statement_timeout_ms: u64,
    /// How long a keypair read from the database is reused to check signatures (0: read it for
    /// every request). `keypair deactivate` takes effect within this time.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_CACHE_MS", default_value_t = 1000)]
    keypair_cache_ms: u64,
    /// An operation name that gets its own label in the request metrics (repeatable, or
    /// comma-separated in the variable); other names are counted as `other`, so clients cannot
    /// grow the metrics.
    #[arg(
        long = "metrics-operation",
        env = "SESSIONVIEW_METRICS_OPERATIONS",
        value_delimiter = ','
    )]
    metrics_operations: Vec<String>,
    /// Serve /metrics, /healthz and /readyz on this address instead of the API's (so that they
    /// need not face the API's clients).
    #[arg(long, env = "SESSIONVIEW_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// An origin whose web pages may call the API, e.g. `https://webui.example.com` (CORS;
    /// repeatable, or comma-separated in the variable; `*` allows any origin). Preflight requests
    /// are answered and the Backend.AI clients' headers allowed.
    #[arg(
        long = "cors-origin",
        env = "SESSIONVIEW_CORS_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    cors_origins: Vec<axum::http::HeaderValue>,
    /// Most bytes of answers the response cache keeps (0: no cache). Repeated identical
    /// requests of one keypair are answered from it until a commit changes what the answer read
    /// (every replica follows every commit's note of what it changed); an answer is never older
    /// than the positions the response reports. Least recently used answers go first.
    #[arg(long, env = "SESSIONVIEW_RESPONSE_CACHE_BYTES", default_value_t = 64 << 20)]
    response_cache_bytes: usize,
}

/// `*`, or an origin: `scheme://host[:port]` with nothing after it.
fn parse_origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let s = s.trim();
    let valid = s == "*"
        || s.parse::<axum::http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.path_and_query()
                    .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                && !s.ends_with('/')
        });
    if !valid {
        return Err(format!(
            "{s:?} is not an origin: give scheme://host[:port] (e.g. https://webui.example.com, no path) or *"
        ));
    }
    axum::http::HeaderValue::from_str(s).map_err(|e| format!("{s:?}: {e}"))
}

impl ApiArgs {
    /// The query service's configuration.
    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            limits: Limits {
                max_limit: self.max_limit,
                max_offset: self.max_offset,
                max_depth: self.max_depth,
                max_complexity: self.max_complexity,
            },
            document: DocumentLimits {
                max_query_bytes: self.max_query_bytes,
                max_nesting: usize::try_from(self.max_nesting).unwrap_or(64),
                max_root_fields: self.max_root_fields,
                max_aliases: self.max_aliases,
                max_fields: self.max_fields,
                ..DocumentLimits::default()
            },
            body_limit: self.body_limit_bytes,
            body_timeout: self.body_timeout,
            request_timeout: self.request_timeout,
            per_key_concurrency: usize::try_from(self.per_key_concurrency).unwrap_or(8),
            keypair_cache: Duration::from_millis(self.keypair_cache_ms),
            metric_operations: self.metrics_operations.clone().into(),
            cors_origins: self.cors_origins.clone(),
            response_cache_bytes: self.response_cache_bytes,
        }
    }

    /// The API's connection limits.
    pub(crate) fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            idle_timeout: self.idle_timeout,
            header_timeout: self.header_timeout,
        }
    }

    /// The statement timeout of the API's reads.
    pub(crate) fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_origin;

    #[test]
    fn origins_are_scheme_host_and_port_or_a_star() {
        for ok in ["*", "https://webui.example.com", "http://localhost:8090"] {
            assert!(parse_origin(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "webui.example.com",
            "https://webui.example.com/",
            "https://webui.example.com/app",
            "ftp://example.com",
            "https://exa mple.com",
        ] {
            let err = parse_origin(bad).expect_err(bad);
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }
}
