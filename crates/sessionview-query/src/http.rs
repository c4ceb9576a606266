//! The HTTP surface (axum): Backend.AI's endpoints, request signing, problem+json errors, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Request, ServerError, Variables};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use serde::Deserialize;
use serde_json::{Value, json};
use sessionview_store::{KeyPair, ReadModel};
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::{self, API_VERSION, AuthError, SigningInput};
use crate::precheck::{self, DocumentLimits};
use crate::schema::{Caller, Db, Limits, QuerySchema, UNAVAILABLE, build_schema, prepare};

pub const REQUESTS: &str = "sessionview_query_requests_total";
pub const REQUEST_SECONDS: &str = "sessionview_query_request_seconds";
pub const DB_CONNECTIONS: &str = "sessionview_query_db_connections";
pub const DB_CONNECTIONS_MAX: &str = "sessionview_query_db_connections_max";
pub const DB_WAITING: &str = "sessionview_query_db_waiting";
/// Histogram buckets for [`REQUEST_SECONDS`].
pub const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const PROBLEM_BASE: &str = "https://api.backend.ai/probs/";

/// Registers metric descriptions (call once after installing a recorder).
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS,
        "GraphQL requests by endpoint, operation (an allow-listed operation name, `other` or \
         `anonymous`) and outcome (ok, graphql_error, auth_failed, bad_request, too_large, \
         timeout, unavailable)."
    );
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a GraphQL request, by endpoint."
    );
    describe_gauge!(
        DB_CONNECTIONS,
        "Database connections of the reads, by state (in_use, idle), when the metrics were read."
    );
    describe_gauge!(
        DB_CONNECTIONS_MAX,
        "The most database connections the reads may open (--db-max-connections)."
    );
    describe_gauge!(
        DB_WAITING,
        "Reads waiting for a database connection when the metrics were read."
    );
}

/// Sets the read-connection gauges from `store` (call before rendering the metrics). Stores
/// without a separate read pool (SQLite) report nothing.
pub fn record_read_connections(store: &dyn ReadModel) {
    if let Some(c) = store.read_connections() {
        gauge!(DB_CONNECTIONS, "state" => "in_use").set(c.in_use as f64);
        gauge!(DB_CONNECTIONS, "state" => "idle").set(c.idle as f64);
        gauge!(DB_CONNECTIONS_MAX).set(c.max as f64);
        gauge!(DB_WAITING).set(c.waiting as f64);
    }
}

/// Options of the HTTP service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// What a GraphQL document may hold (checked before async-graphql parses or validates it).
    pub document: DocumentLimits,
    /// Largest request body in bytes, enforced while it is read.
    pub body_limit: usize,
    /// Longest time to receive a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Longest time from a request's arrival to its answer (queueing, validation, reads).
    pub request_timeout: Duration,
    /// How many requests of one keypair run at once; more wait for their turn (within the
    /// request deadline), behind their own keypair's requests only.
    pub per_key_concurrency: usize,
    /// How long a keypair read from the database is reused for signature checks (zero: read it
    /// for every request). A deactivation takes effect within this time.
    pub keypair_cache: Duration,
    /// Operation names that get their own metrics label; every other name is `other`.
    pub metric_operations: Arc<[String]>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            document: DocumentLimits::default(),
            body_limit: 1 << 20,
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            per_key_concurrency: 8,
            keypair_cache: Duration::ZERO,
            metric_operations: Arc::from([]),
        }
    }
}

struct AppState {
    schema: QuerySchema,
    store: Db,
    keys: KeyCache,
    documents: DocumentCache,
    turns: KeyTurns,
    cfg: ServerConfig,
}

/// Per keypair, how many of its requests may run at once: a caller that floods the service
/// waits behind its own requests, not in front of other callers'. (A global limit would let one
/// caller's queue fill every slot; the database pool behind it is shared, and its wait is
/// first come, first served.) Semaphores of keys with nothing in flight are dropped when the map
/// grows, so a flood of keys cannot grow it without bound.
#[derive(Debug)]
struct KeyTurns {
    per_key: usize,
    keys: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl KeyTurns {
    const PRUNE_AT: usize = 10_000;

    fn new(per_key: usize) -> Self {
        Self {
            per_key: per_key.max(1),
            keys: std::sync::Mutex::default(),
        }
    }

    fn semaphore(&self, access_key: &str) -> Arc<tokio::sync::Semaphore> {
        // The map holds no invariant a panic could break.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= Self::PRUNE_AT && !keys.contains_key(access_key) {
            keys.retain(|_, s| s.available_permits() < self.per_key || Arc::strong_count(s) > 1);
        }
        Arc::clone(
            keys.entry(access_key.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_key))),
        )
    }
}

/// Parsed documents of recently seen query texts: a dashboard sends the same few queries again
/// and again, and parsing one is a good share of answering it. Only what parses is kept, and only
/// texts up to [`DocumentCache::MAX_QUERY_BYTES`], the [`DocumentCache::CAPACITY`] most recently
/// used. Validation (arguments, variables, depth, complexity) still runs for every request.
struct DocumentCache(std::sync::Mutex<lru::LruCache<String, ExecutableDocument>>);

impl std::fmt::Debug for DocumentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentCache").finish_non_exhaustive()
    }
}

impl DocumentCache {
    const CAPACITY: std::num::NonZeroUsize = std::num::NonZeroUsize::new(256).unwrap();
    const MAX_QUERY_BYTES: usize = 16 * 1024;

    fn new() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(Self::CAPACITY)))
    }

    fn documents(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, ExecutableDocument>> {
        // The cache holds no invariant a panic could break.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `request` its parsed document: from the cache, or parsed now (and kept when the
    /// text is short). A text that does not parse is left to the schema, which answers with the
    /// parser's error.
    fn attach(&self, request: &mut Request) {
        let query = request.query.as_str();
        let cacheable = query.len() <= Self::MAX_QUERY_BYTES;
        if cacheable && let Some(doc) = self.documents().get(query).cloned() {
            request.set_parsed_query(doc);
            return;
        }
        if let Ok(doc) = request.parsed_query()
            && cacheable
        {
            let doc = doc.clone();
            self.documents().put(request.query.clone(), doc);
        }
    }
}

/// Keypairs read recently, each reused for at most `ttl` after it was read: a dashboard polling
/// every second no longer costs a keypair lookup per request. Only keys found are kept (a flood of
/// unknown keys cannot grow it), and at most [`KeyCache::CAPACITY`] of them.
#[derive(Debug)]
struct KeyCache {
    ttl: Duration,
    entries: std::sync::Mutex<HashMap<String, (Instant, KeyPair)>>,
}

impl KeyCache {
    const CAPACITY: usize = 10_000;

    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: std::sync::Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, KeyPair)>> {
        // The map holds no invariant a panic could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, access_key: &str, now: Instant) -> Option<KeyPair> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries();
        let (read_at, kp) = entries.get(access_key)?;
        (now.saturating_duration_since(*read_at) < self.ttl).then(|| kp.clone())
    }

    fn put(&self, kp: &KeyPair, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, (read_at, _)| now.saturating_duration_since(*read_at) < self.ttl);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(kp.access_key.clone(), (now, kp.clone()));
    }
}

/// The query service's routes. Operational routes (`/metrics`, `/healthz`, `/readyz`) are merged
/// in by the binary.
pub fn router(store: impl ReadModel, cfg: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        schema: build_schema(cfg.limits),
        store: Arc::new(store),
        keys: KeyCache::new(cfg.keypair_cache),
        documents: DocumentCache::new(),
        turns: KeyTurns::new(cfg.per_key_concurrency),
        cfg,
    });
    Router::new()
        .route("/", get(version))
        .route("/manager/announcement", get(announcement))
        .route("/graphiql", get(graphiql))
        .route("/admin/graphql", post(handle))
        .route("/admin/gql", post(handle))
        .with_state(state)
}

async fn version() -> Json<Value> {
    Json(json!({"version": API_VERSION, "manager": env!("CARGO_PKG_VERSION")}))
}

async fn announcement() -> Json<Value> {
    Json(json!({"enabled": false, "message": ""}))
}

async fn graphiql() -> Html<&'static str> {
    Html(include_str!("graphiql.html"))
}

/// An RFC 7807 problem response in Backend.AI's shape.
fn problem(status: StatusCode, kind: &str, title: &str, extra: Option<(&str, Value)>) -> Response {
    let mut body = json!({"type": format!("{PROBLEM_BASE}{kind}"), "title": title});
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// 503 with `Retry-After`: the database cannot answer now (not the caller's fault).
fn unavailable(msg: &str) -> Response {
    let mut resp = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "Service unavailable.",
        Some(("msg", Value::String(msg.to_owned()))),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

fn auth_problem(e: &AuthError) -> Response {
    if let AuthError::Unavailable(msg) = e {
        return unavailable(msg);
    }
    if e.is_bad_parameter() {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
            "Missing or invalid authorization parameters.",
            Some(("msg", Value::String(e.to_string()))),
        )
    } else {
        problem(
            StatusCode::UNAUTHORIZED,
            "auth-failed",
            "Credential/signature mismatch.",
            Some(("msg", Value::String(e.to_string()))),
        )
    }
}

fn bad_params(msg: String) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-api-params",
        "Missing or invalid API parameters.",
        Some(("msg", Value::String(msg))),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates a signed request against the stored keypairs.
async fn authenticate(
    store: &dyn ReadModel,
    keys: &KeyCache,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Caller, AuthError> {
    let authorization =
        header_str(headers, "authorization").ok_or(AuthError::MissingAuthorization)?;
    let (access_key, signature) = auth::parse_authorization(authorization)?;
    let date = header_str(headers, "x-backendai-date")
        .or_else(|| header_str(headers, "date"))
        .ok_or(AuthError::MissingDate)?;
    let input = SigningInput {
        method: method.as_str(),
        path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        date,
        host: header_str(headers, "host").unwrap_or_default(),
        content_type: header_str(headers, "content-type").unwrap_or_default(),
        version: header_str(headers, "x-backendai-version").unwrap_or_default(),
    };
    // The date is checked before the key is looked up: a skewed clock is the client's parameter.
    let checked_date = auth::check_date(date, chrono::Utc::now())?;
    let now = Instant::now();
    // A cached entry is never refreshed by its own use: it expires `ttl` after it was read.
    let looked_up = match keys.get(&access_key, now) {
        Some(kp) => Ok(Some(kp)),
        None => store.keypair(&access_key).await.inspect(|found| {
            if let Some(kp) = found {
                keys.put(kp, now);
            }
        }),
    };
    let keypair = match looked_up {
        Ok(Some(kp)) => kp,
        Ok(None) => return Err(AuthError::UnknownAccessKey(access_key)),
        Err(e) => {
            warn!(error = %e, "keypair lookup failed");
            return Err(AuthError::Unavailable(
                "the keypair store cannot answer now; retry".into(),
            ));
        }
    };
    if !keypair.is_active {
        return Err(AuthError::InactiveAccessKey(access_key));
    }
    auth::verify_signature(&keypair.secret_key, &input, &checked_date, &signature)?;
    Ok(Caller { keypair })
}

#[derive(Deserialize)]
struct GraphQlBody {
    query: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default, alias = "operationName")]
    operation_name: Option<String>,
}

/// A label for metrics: the client's operation name when it is on the allow-list (labels stay
/// bounded whatever clients send), `other` for any other name.
fn operation_label(name: Option<&str>, allowed: &[String]) -> String {
    match name {
        Some(n) if allowed.iter().any(|a| a == n) => n.to_owned(),
        Some(_) => "other".to_owned(),
        None => "anonymous".to_owned(),
    }
}

/// Reads a body of at most `limit` bytes within `timeout`.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid-api-params",
            "Missing or invalid API parameters.",
            Some((
                "msg",
                Value::String(format!(
                    "the request body is larger than {limit} bytes (limit: --body-limit-bytes)"
                )),
            )),
        )),
        Ok(Err(e)) => Err(bad_params(format!("cannot read the request body: {e}"))),
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout.",
            Some((
                "msg",
                Value::String(format!(
                    "the request body did not arrive within {timeout:?} (limit: --body-timeout)"
                )),
            )),
        )),
    }
}

/// A GraphQL refusal naming its limit, answered in the endpoint's shape.
fn refusal(msg: String) -> async_graphql::Response {
    async_graphql::Response::from_errors(vec![ServerError::new(msg, None)])
}

enum Flavor {
    /// `/admin/graphql`: bare data on success, 400 problem+json on any GraphQL error.
    Bare,
    /// `/admin/gql`: the standard `{data, errors}` envelope.
    Standard,
}

/// `POST /admin/graphql` (bare data, problems on errors) and `POST /admin/gql` (the standard
/// envelope): the same request, answered in the endpoint's shape.
async fn handle(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (flavor, endpoint) = if uri.path() == "/admin/gql" {
        (Flavor::Standard, "/admin/gql")
    } else {
        (Flavor::Bare, "/admin/graphql")
    };
    let started = Instant::now();
    let span = info_span!(
        "graphql",
        endpoint,
        operation = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    let (response, operation, outcome) = async {
        let caller = match authenticate(&*state.store, &state.keys, &method, &uri, &headers).await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "request refused");
                return (auth_problem(&e), "anonymous".to_owned(), "auth_failed");
            }
        };
        let cfg = &state.cfg;
        let deadline = cfg.request_timeout;
        // Everything from here (reading, parsing, checking, executing) waits behind this
        // keypair's own requests only.
        let turns = state.turns.semaphore(&caller.keypair.access_key);
        let Ok(Ok(_turn)) = tokio::time::timeout(deadline, turns.acquire_owned()).await else {
            let msg = format!(
                "the request waited {deadline:?} for its turn (limit: --request-timeout; a \
                 keypair runs at most --per-key-concurrency requests at once)"
            );
            return (
                respond(&flavor, refusal(msg)),
                "anonymous".to_owned(),
                "timeout",
            );
        };
        // Read only once the caller is known, within the cap and the time allowed.
        let body = match read_body(body, cfg.body_limit, cfg.body_timeout).await {
            Ok(b) => b,
            Err(resp) => {
                let outcome = match resp.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::REQUEST_TIMEOUT => "timeout",
                    _ => "bad_request",
                };
                return (resp, "anonymous".to_owned(), outcome);
            }
        };
        let parsed: GraphQlBody = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return (
                    bad_params(format!("the request body is not valid JSON: {e}")),
                    "anonymous".to_owned(),
                    "bad_request",
                );
            }
        };
        let Some(query) = parsed.query else {
            return (
                bad_params("the request body has no \"query\"".into()),
                "anonymous".to_owned(),
                "bad_request",
            );
        };
        let operation = operation_label(parsed.operation_name.as_deref(), &cfg.metric_operations);
        let limits = cfg.document;
        let nested = precheck::text_length(&query, limits.max_query_bytes)
            .and_then(|()| precheck::text_nesting(&query, limits.max_nesting))
            .and_then(|()| {
                parsed
                    .variables
                    .as_ref()
                    .map_or(Ok(()), |v| precheck::json_nesting(v, limits.max_nesting))
            });
        if let Err(msg) = nested {
            return (respond(&flavor, refusal(msg)), operation, "graphql_error");
        }
        let mut request = Request::new(query);
        if let Some(name) = parsed.operation_name {
            request = request.operation_name(name);
        }
        match parsed.variables {
            None | Some(Value::Null) => {}
            Some(v @ Value::Object(_)) => request = request.variables(Variables::from_json(v)),
            Some(_) => {
                return (
                    bad_params("\"variables\" must be a JSON object".into()),
                    operation,
                    "bad_request",
                );
            }
        }
        state.documents.attach(&mut request);
        if let Ok(doc) = request.parsed_query()
            && let Err(msg) = precheck::document(doc, limits)
        {
            return (respond(&flavor, refusal(msg)), operation, "graphql_error");
        }
        // Parsing was one uninterrupted stretch of CPU: let other callers' tasks run first.
        tokio::task::yield_now().await;
        let run = state
            .schema
            .execute(prepare(request, state.store.clone(), caller));
        let Ok(result) =
            tokio::time::timeout(deadline.saturating_sub(started.elapsed()), run).await
        else {
            let msg = format!(
                "the request did not finish within {deadline:?} (limit: --request-timeout); \
                 requests of one keypair beyond --per-key-concurrency wait for their turn"
            );
            return (respond(&flavor, refusal(msg)), operation, "timeout");
        };
        if result.errors.iter().any(|e| {
            e.extensions.as_ref().and_then(|x| x.get("code"))
                == Some(&async_graphql::Value::from(UNAVAILABLE))
        }) {
            return (
                unavailable("the read model's database cannot answer now; retry"),
                operation,
                "unavailable",
            );
        }
        let outcome = if result.errors.is_empty() {
            "ok"
        } else {
            "graphql_error"
        };
        (respond(&flavor, result), operation, outcome)
    }
    .instrument(span.clone())
    .await;
    span.record("operation", operation.as_str());
    span.record("outcome", outcome);
    counter!(REQUESTS, "endpoint" => endpoint, "operation" => operation, "outcome" => outcome)
        .increment(1);
    histogram!(REQUEST_SECONDS, "endpoint" => endpoint).record(started.elapsed().as_secs_f64());
    response
}

/// A GraphQL result in the endpoint's shape.
fn respond(flavor: &Flavor, result: async_graphql::Response) -> Response {
    match flavor {
        Flavor::Standard => Json(result).into_response(),
        Flavor::Bare if result.errors.is_empty() => Json(result.data).into_response(),
        Flavor::Bare => graphql_problem(&result.errors),
    }
}

fn graphql_problem(errors: &[ServerError]) -> Response {
    let data = serde_json::to_value(errors).unwrap_or(Value::Null);
    problem(
        StatusCode::BAD_REQUEST,
        "graphql-error",
        "GraphQL-generated error.",
        Some(("data", data)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionview_store::Role;

    #[test]
    fn documents_that_parse_are_kept_and_reused() {
        let cache = DocumentCache::new();
        let query = "{ compute_session_list(limit: 1, offset: 0) { total_count } }";
        let mut first = Request::new(query);
        cache.attach(&mut first);
        assert_eq!(cache.documents().len(), 1);
        let mut second = Request::new(query);
        cache.attach(&mut second);
        assert_eq!(cache.documents().len(), 1);
        // The same document either way: the request's own parse is never needed again.
        assert_eq!(
            format!("{:?}", second.parsed_query().ok()),
            format!("{:?}", first.parsed_query().ok())
        );

        // Not kept: what does not parse (the schema reports the parser's error), what is long.
        cache.attach(&mut Request::new("{ compute_session_list(limit: 1"));
        let long = format!(
            "{{ {} }}",
            "keypair { access_key } ".repeat(DocumentCache::MAX_QUERY_BYTES / 20)
        );
        assert!(long.len() > DocumentCache::MAX_QUERY_BYTES);
        cache.attach(&mut Request::new(long));
        assert_eq!(cache.documents().len(), 1);

        // Bounded: the least recently used text goes first.
        for i in 0..DocumentCache::CAPACITY.get() {
            cache.attach(&mut Request::new(format!(
                "{{ a{i}: keypair {{ access_key }} }}"
            )));
        }
        assert_eq!(cache.documents().len(), DocumentCache::CAPACITY.get());
        assert!(!cache.documents().contains(query));
    }

    fn keypair(access_key: &str) -> KeyPair {
        KeyPair {
            access_key: access_key.into(),
            secret_key: "secret".into(),
            user_id: uuid::Uuid::nil(),
            user_email: "u@example.com".into(),
            domain_name: "default".into(),
            role: Role::User,
            is_active: true,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_cached_keypair_expires_after_the_ttl() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(cache.get("AKIA1", t0).is_none());
        cache.put(&keypair("AKIA1"), t0);
        assert_eq!(
            cache
                .get("AKIA1", t0 + Duration::from_millis(999))
                .map(|k| k.access_key),
            Some("AKIA1".to_owned())
        );
        assert!(cache.get("AKIA1", t0 + Duration::from_secs(1)).is_none());
        assert!(cache.get("AKIA2", t0).is_none());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.put(&keypair("AKIA1"), t0);
        assert!(cache.get("AKIA1", t0).is_none());
    }

    #[test]
    fn the_cache_never_grows_beyond_its_capacity() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..KeyCache::CAPACITY + 5 {
            cache.put(&keypair(&format!("AKIA{i}")), t0);
        }
        assert!(cache.entries().len() <= KeyCache::CAPACITY);
        assert!(
            cache
                .get(&format!("AKIA{}", KeyCache::CAPACITY + 4), t0)
                .is_some()
        );
    }
}
