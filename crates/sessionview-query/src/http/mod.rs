//! The HTTP surface (axum): Backend.AI's endpoints, the request pipeline (authenticate → the
//! key's turn → body → precheck → execute) and its answer in the endpoint's shape. Errors are
//! `problem`, callers `keys`, parsed documents `documents`, metrics `telemetry`, the event stream
//! `events`, read-your-writes `positions`, repeated answers `cache`, the browser pages `web`.

mod cache;
mod documents;
mod events;
mod keys;
mod positions;
mod problem;
mod telemetry;
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::{Request, ServerError, Variables};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::{counter, histogram};
use serde::Deserialize;
use serde_json::{Value, json};
use sessionview_store::ReadModel;
use tower_http::cors::CorsLayer;
use tracing::{Instrument, debug, info_span};

use crate::auth::API_VERSION;
use crate::precheck::{self, DocumentLimits};
use crate::schema::{Db, Limits, QuerySchema, UNAVAILABLE, build_schema, execute, prepare};

pub use positions::{DEFAULT_WAIT, MAX_WAIT, MIN_POSITIONS, POSITIONS, WAIT_MS};
pub use telemetry::{
    DB_CONNECTIONS, DB_CONNECTIONS_MAX, DB_WAITING, REQUEST_SECONDS, REQUEST_SECONDS_BUCKETS,
    REQUESTS, RESPONSE_CACHE, RESPONSE_CACHE_BYTES, describe_metrics, record_read_connections,
};
pub use web::{CONTENT_SECURITY_POLICY, has_graphiql_assets};

/// Whether an answer came from the response cache (`hit`) or was computed (`miss`).
pub const CACHE: HeaderName = HeaderName::from_static("x-sessionview-cache");

use cache::{Recorder, ResponseCache};
use documents::DocumentCache;
use keys::{KeyCache, KeyTurns, authenticate};
use problem::{auth_problem, bad_params, graphql_problem, problem, unavailable};

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
    /// Origins whose web pages may call the API (CORS); `*` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<HeaderValue>,
    /// Most bytes of answers the response cache holds (0: no cache). See `cache`.
    pub response_cache_bytes: usize,
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
            cors_origins: Vec::new(),
            response_cache_bytes: 64 << 20,
        }
    }
}

struct AppState {
    schema: QuerySchema,
    store: Db,
    keys: KeyCache,
    documents: DocumentCache,
    turns: KeyTurns,
    hub: Arc<events::Hub>,
    cache: Option<Arc<ResponseCache>>,
    cfg: ServerConfig,
}

/// The query service's routes. Operational routes (`/metrics`, `/healthz`, `/readyz`) are merged
/// in by the binary.
pub fn router(store: impl ReadModel, cfg: ServerConfig) -> Router {
    let cors = cors(&cfg.cors_origins);
    let store: Db = Arc::new(store);
    let cache = ResponseCache::new(cfg.response_cache_bytes);
    let state = Arc::new(AppState {
        schema: build_schema(cfg.limits),
        hub: events::Hub::start(Arc::clone(&store), cache.clone()),
        cache,
        store,
        keys: KeyCache::new(cfg.keypair_cache),
        documents: DocumentCache::new(),
        turns: KeyTurns::new(cfg.per_key_concurrency),
        cfg,
    });
    let routes = Router::new()
        .route("/", get(version))
        .route("/manager/announcement", get(announcement))
        .route("/admin/graphql", post(handle))
        .route("/admin/gql", post(handle))
        .route("/events/session", get(session_events))
        .merge(web::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.hub),
            stamp_positions,
        ))
        .with_state(state);
    match cors {
        Some(layer) => routes.layer(layer),
        None => routes,
    }
}

/// Every response reports the committed positions read before it was answered, unless its
/// handler reports the ones it waited for (see `positions`).
async fn stamp_positions(
    State(hub): State<Arc<events::Hub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let before = hub.positions.current();
    let mut resp = next.run(request).await;
    if !resp.headers().contains_key(POSITIONS) {
        resp.headers_mut().insert(POSITIONS, before.header());
    }
    resp
}

/// `GET /events/session`: the session event stream (see `events`).
async fn session_events(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let caller = match authenticate(&*state.store, &state.keys, &method, &uri, &headers).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "event stream refused");
            return auth_problem(&e);
        }
    };
    let reached = match state
        .hub
        .positions
        .wait(&state.store, &headers, MAX_WAIT)
        .await
    {
        Ok(reached) => reached,
        Err(refused) => {
            counter!(REQUESTS, "endpoint" => "/events/session", "operation" => "anonymous", "outcome" => refused.outcome)
                .increment(1);
            return refused.response;
        }
    };
    counter!(REQUESTS, "endpoint" => "/events/session", "operation" => "anonymous", "outcome" => "ok")
        .increment(1);
    let mut resp = events::respond(
        Arc::clone(&state.store),
        Arc::clone(&state.hub),
        &caller,
        &query,
        &headers,
    )
    .await;
    if let Some(p) = reached {
        resp.headers_mut().insert(POSITIONS, p.header());
    }
    resp
}

/// The headers Backend.AI clients send, which a preflight request must allow.
pub const CORS_ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "date",
    "x-backendai-date",
    "x-backendai-version",
    "content-type",
    "x-sessionview-min-positions",
    "x-sessionview-wait-ms",
];

/// The CORS layer for `origins` (`*` among them allows any origin), none when empty.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(CORS_ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers([POSITIONS, CACHE])
            .max_age(Duration::from_secs(600)),
    )
}

async fn version() -> Json<Value> {
    Json(json!({"version": API_VERSION, "manager": env!("CARGO_PKG_VERSION")}))
}

async fn announcement() -> Json<Value> {
    Json(json!({"enabled": false, "message": ""}))
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
        // Waiting for positions holds no turn of the key, and counts toward the deadline.
        let reached = match state
            .hub
            .positions
            .wait(&state.store, &headers, deadline)
            .await
        {
            Ok(reached) => reached,
            Err(refused) => return (refused.response, "anonymous".to_owned(), refused.outcome),
        };
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
        // The same request of the same caller, answered since with nothing it read changed.
        let cached = state.cache.as_ref().map(|cache| {
            let key = cache::Key {
                endpoint,
                access_key: caller.keypair.access_key.clone(),
                body: body.clone(),
            };
            (Arc::clone(cache), key)
        });
        if let Some((cache, key)) = &cached {
            let reported = reached
                .clone()
                .unwrap_or_else(|| state.hub.positions.current());
            match cache.lookup(key, &caller.keypair, &reported) {
                Ok(answer) => {
                    counter!(RESPONSE_CACHE, "outcome" => "hit").increment(1);
                    let mut resp = json_response(answer.body.clone(), "hit");
                    if let Some(p) = reached {
                        resp.headers_mut().insert(POSITIONS, p.header());
                    }
                    return (resp, answer.operation.clone(), "ok");
                }
                Err(miss) => counter!(RESPONSE_CACHE, "outcome" => miss.label()).increment(1),
            }
        }
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
        // With a cache: where the answer stands in the change log, taken before anything is
        // read, and what it reads, recorded on the way.
        let keeping = cached.map(|(cache, key)| {
            let ticket = cache.ticket();
            (cache, key, ticket, Recorder::new(state.store.clone()))
        });
        let db: Db = match &keeping {
            Some((.., recorder)) => recorder.clone(),
            None => state.store.clone(),
        };
        let keypair = caller.keypair.clone();
        let run = execute(&state.schema, prepare(request, db, caller));
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
        let kept = match keeping {
            Some((cache, key, ticket, recorder)) if result.errors.is_empty() => {
                success_body(&flavor, &result).map(|body| {
                    let reads = recorder.reads();
                    cache.insert(
                        key,
                        &keypair,
                        ticket,
                        reads,
                        operation.clone(),
                        body.clone(),
                    );
                    json_response(body, "miss")
                })
            }
            _ => None,
        };
        let mut resp = kept.unwrap_or_else(|| respond(&flavor, result));
        if let Some(p) = reached {
            resp.headers_mut().insert(POSITIONS, p.header());
        }
        (resp, operation, outcome)
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

/// A successful result's body in the endpoint's shape (what [`respond`] would send).
fn success_body(flavor: &Flavor, result: &async_graphql::Response) -> Option<Bytes> {
    let body = match flavor {
        Flavor::Standard => serde_json::to_vec(result),
        Flavor::Bare => serde_json::to_vec(&result.data),
    };
    body.ok().map(Bytes::from)
}

/// A JSON body, marked with where it came from (`CACHE`).
fn json_response(body: Bytes, cache: &'static str) -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (CACHE, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

/// A GraphQL result in the endpoint's shape.
fn respond(flavor: &Flavor, result: async_graphql::Response) -> Response {
    match flavor {
        Flavor::Standard => Json(result).into_response(),
        Flavor::Bare if result.errors.is_empty() => Json(result.data).into_response(),
        Flavor::Bare => graphql_problem(&result.errors),
    }
}
