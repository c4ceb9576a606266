//! End-to-end HTTP tests: the real router on a real socket, requests signed as Backend.AI clients
//! sign them, against a real PostgreSQL read model.

use crate::common::{Fixture, SEED_USER_AK, Server, signed_post, start};
use chrono::{SecondsFormat, TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionview_query::auth::{API_VERSION, SigningInput, sign};
use sessionview_query::{ServerConfig, router};
use sessionview_store::KeyPair;

/// Signs and sends a GraphQL request the way backend.ai-client does.
async fn post(
    srv: &Server,
    path: &str,
    kp: &KeyPair,
    date: Option<String>,
    body: &Value,
) -> reqwest::Response {
    // `Some("")`: sign with the current date but send no date header.
    let date_text = date.clone().filter(|d| !d.is_empty()).unwrap_or_else(now);
    let mut req = signed_post(srv, path, kp, &date_text).body(body.to_string());
    if date.as_deref() != Some("") {
        req = req.header("Date", date_text);
    }
    req.send().await.unwrap()
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false)
}

const SEED_QUERY: &str = r#"query(
  $limit: Int!,
  $offset: Int!,
  $ak: String,
  $status: String,
) {
  compute_session_list(
    limit: $limit,
    offset: $offset,
    access_key: $ak,
    status: $status,
  ) {
    total_count
    items {
      id
      name
      type
      user_email
      status
      status_info
      status_updated
      containers {
        id
        role
        agent
      }
    }
  }
}"#;

/// Acceptance 1: the seed's example, verbatim, gives exactly the seed's response.
#[tokio::test]
async fn the_seed_example_returns_the_seed_response() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let body = json!({
        "query": SEED_QUERY,
        "variables": {"limit": 10, "offset": 0, "ak": SEED_USER_AK, "status": "RUNNING"},
    });
    let resp = post(&srv, "/admin/graphql", &fx.superadmin, None, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let expected = json!({
      "compute_session_list": {
        "total_count": 1,
        "items": [{
          "id": "12c45b55-ce3c-418d-9c58-223bbba307f1",
          "name": "mysession",
          "type": "interactive",
          "user_email": "user@lablup.com",
          "status": "RUNNING",
          "status_info": null,
          "status_updated": "2020-02-16T15:47:28.997335+00:00",
          "containers": [
            {"id": "12c45b55-ce3c-418d-9c58-223bbba307f1", "role": "master", "agent": "i-agent01"},
            {"id": "12c45b55-ce3c-418d-9c58-223bbba307f2", "role": "slave", "agent": "i-agent02"},
            {"id": "12c45b55-ce3c-418d-9c58-223bbba307f3", "role": "slave", "agent": "i-agent03"}
          ]
        }]
      }
    });
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
    // Keys come in the query's order.
    let items_at = text.find("\"items\"").unwrap();
    let order = [
        "\"id\"",
        "\"name\"",
        "\"type\"",
        "\"user_email\"",
        "\"status\"",
        "\"status_info\"",
        "\"status_updated\"",
        "\"containers\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| text[items_at..].find(k).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    srv.stop.cancel();
    fx.drop().await;
}

fn problem_type(v: &Value) -> &str {
    v["type"].as_str().unwrap().rsplit('/').next().unwrap()
}

/// Acceptance 4: refused requests get the contract's status and problem type.
#[tokio::test]
async fn bad_credentials_are_refused_with_the_contract_problem() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let body = json!({"query": "{ keypair { access_key } }"});
    let check = async |resp: reqwest::Response, status: StatusCode, kind: &str| {
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(problem_type(&v), kind, "{v}");
    };
    // Valid.
    let ok = post(&srv, "/admin/graphql", &fx.user, None, &body).await;
    assert_eq!(ok.status(), StatusCode::OK);
    // Wrong secret.
    let mut forged = fx.user.clone();
    forged.secret_key = "not-the-secret".into();
    check(
        post(&srv, "/admin/graphql", &forged, None, &body).await,
        StatusCode::UNAUTHORIZED,
        "auth-failed",
    )
    .await;
    // Unknown key.
    let mut unknown = fx.user.clone();
    unknown.access_key = "AKIANOBODY0000000000".into();
    check(
        post(&srv, "/admin/graphql", &unknown, None, &body).await,
        StatusCode::UNAUTHORIZED,
        "auth-failed",
    )
    .await;
    // Inactive key, correctly signed.
    check(
        post(&srv, "/admin/graphql", &fx.inactive, None, &body).await,
        StatusCode::UNAUTHORIZED,
        "auth-failed",
    )
    .await;
    // Date 16 minutes off, correctly signed with that date.
    let skewed =
        (Utc::now() - TimeDelta::minutes(16)).to_rfc3339_opts(SecondsFormat::Micros, false);
    check(
        post(&srv, "/admin/graphql", &fx.user, Some(skewed), &body).await,
        StatusCode::BAD_REQUEST,
        "invalid-auth-params",
    )
    .await;
    let ahead = (Utc::now() + TimeDelta::minutes(16)).to_rfc3339_opts(SecondsFormat::Micros, false);
    check(
        post(&srv, "/admin/graphql", &fx.user, Some(ahead), &body).await,
        StatusCode::BAD_REQUEST,
        "invalid-auth-params",
    )
    .await;
    // 14 minutes is inside the window.
    let near = (Utc::now() - TimeDelta::minutes(14)).to_rfc3339_opts(SecondsFormat::Micros, false);
    assert_eq!(
        post(&srv, "/admin/graphql", &fx.user, Some(near), &body)
            .await
            .status(),
        StatusCode::OK
    );
    // Missing date.
    check(
        post(&srv, "/admin/graphql", &fx.user, Some(String::new()), &body).await,
        StatusCode::BAD_REQUEST,
        "invalid-auth-params",
    )
    .await;
    // No Authorization header at all.
    let bare = reqwest::Client::new()
        .post(format!("{}/admin/graphql", srv.base))
        .header("Date", now())
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    check(bare, StatusCode::UNAUTHORIZED, "auth-failed").await;
    // X-BackendAI-Date (what browsers send) works like Date.
    let date = now();
    let sig = sign(
        &fx.user.secret_key,
        &SigningInput {
            method: "POST",
            path_and_query: "/admin/gql",
            date: &date,
            host: &srv.host,
            content_type: "application/json",
            version: API_VERSION,
        },
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/gql", srv.base))
        .header("Content-Type", "application/json")
        .header("X-BackendAI-Version", API_VERSION)
        .header("X-BackendAI-Date", &date)
        .header(
            "Authorization",
            format!(
                "BackendAI signMethod=HMAC-SHA256, credential={}:{sig}",
                fx.user.access_key
            ),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    srv.stop.cancel();
    fx.drop().await;
}

#[tokio::test]
async fn graphql_errors_are_problems_on_graphql_and_envelopes_on_gql() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let body = json!({"query": "query Q { compute_session_list(limit: 0, offset: 0) { total_count } }", "operationName": "Q"});
    let resp = post(&srv, "/admin/graphql", &fx.superadmin, None, &body).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "https://api.backend.ai/probs/graphql-error");
    assert_eq!(v["title"], "GraphQL-generated error.");
    let err = &v["data"][0];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("between 1 and 1000, got 0"),
        "{v}"
    );
    assert_eq!(err["path"], json!(["compute_session_list"]));
    assert!(err["locations"][0]["line"].is_number());

    let resp = post(&srv, "/admin/gql", &fx.superadmin, None, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    // async-graphql nulls the whole `data` when a root field fails.
    assert!(
        v["data"].is_null() || v["data"] == json!({"compute_session_list": null}),
        "{v}"
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("got 0")
    );

    // A syntax error is a GraphQL error too.
    let resp = post(
        &srv,
        "/admin/graphql",
        &fx.superadmin,
        None,
        &json!({"query": "{ compute_session_list("}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(problem_type(&v), "graphql-error");
    // Not JSON at all, or no query: invalid API parameters.
    let resp = post(
        &srv,
        "/admin/graphql",
        &fx.superadmin,
        None,
        &json!("just a string"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem_type(&resp.json::<Value>().await.unwrap()),
        "invalid-api-params"
    );
    let resp = post(
        &srv,
        "/admin/graphql",
        &fx.superadmin,
        None,
        &json!({"variables": {}}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert!(v["msg"].as_str().unwrap().contains("no \"query\""), "{v}");
    srv.stop.cancel();
    fx.drop().await;
}

#[tokio::test]
async fn unauthenticated_endpoints_and_body_cap() {
    let fx = Fixture::new().await;
    let srv = start(
        &fx,
        ServerConfig {
            body_limit: 4096,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let v: Value = client
        .get(format!("{}/", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], "v5.20191215");
    assert!(v["manager"].is_string());
    let v: Value = client
        .get(format!("{}/manager/announcement", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"enabled": false, "message": ""}));
    // The pages and their assets come from this server, under a content security policy that
    // lets nothing else in.
    for (path, wants) in [
        ("/graphiql", "/assets/graphiql.js"),
        ("/monitor", "/assets/monitor.js"),
        ("/assets/sign.js", "X-BackendAI-Date"),
        ("/assets/monitor.js", "/events/session"),
    ] {
        let resp = client
            .get(format!("{}{path}", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            resp.headers()["content-security-policy"],
            sessionview_query::CONTENT_SECURITY_POLICY,
            "{path}"
        );
        let text = resp.text().await.unwrap();
        assert!(text.contains(wants), "{path} lacks {wants}");
        assert!(!text.contains("unpkg.com"), "{path} loads from a CDN");
    }
    let vendor = client
        .get(format!("{}/assets/vendor/graphiql.min.js", srv.base))
        .send()
        .await
        .unwrap();
    if sessionview_query::has_graphiql_assets() {
        assert_eq!(vendor.status(), StatusCode::OK);
        assert!(
            vendor.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
    } else {
        assert_eq!(vendor.status(), StatusCode::NOT_FOUND);
    }
    // Names are looked up in a table (no file system): nothing else is served.
    for missing in [
        "/assets/nope.js",
        "/assets/vendor/nope.js",
        "/assets/%2e%2e/sign.js",
        "/assets/",
    ] {
        let resp = client
            .get(format!("{}{missing}", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
    }

    let huge = json!({"query": format!("{{ keypair {{ access_key }} }} #{}", "x".repeat(10_000))});
    let resp = post(&srv, "/admin/graphql", &fx.user, None, &huge).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        problem_type(&resp.json::<Value>().await.unwrap()),
        "invalid-api-params"
    );
    srv.stop.cancel();
    fx.drop().await;
}

/// The browser pages sign with Web Crypto (`web/sign.js`): run that file in Node.js (the same Web
/// Crypto API) and compare with the server's algorithm.
#[tokio::test]
async fn the_pages_sign_like_the_server_expects() {
    let code = include_str!("../../web/sign.js");
    let date = "2020-02-16T15:47:28.997335+00:00";
    let script = format!(
        "{code}\nsignRequest('wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', 'POST', '/admin/gql', '{date}', 'localhost:8080', 'application/json').then(s => console.log(s));"
    );
    let out = tokio::process::Command::new("node")
        .arg("-e")
        .arg(&script)
        .output()
        .await
        .expect("node (for the GraphiQL signing test) is not installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = sign(
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        &SigningInput {
            method: "POST",
            path_and_query: "/admin/gql",
            date,
            host: "localhost:8080",
            content_type: "application/json",
            version: API_VERSION,
        },
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
}

/// A statement that runs past the statement timeout is cancelled by the database and reported as
/// a clear GraphQL error, not a hang or a 500.
#[tokio::test]
async fn statement_timeout_is_a_clear_error() {
    let fx = Fixture::new().await;
    let slow = sessionview_store::PgStore::connect_with_timeout(
        &fx.url,
        2,
        Some(std::time::Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(slow, ServerConfig::default()))
            .await
            .unwrap();
    });
    let srv = Server {
        base: format!("http://{addr}"),
        host: addr.to_string(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    // Another session holds a lock the query must wait for.
    let mut tx = fx.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let body = json!({"query": "{ compute_session_list(limit: 5, offset: 0) { total_count } }"});
    let resp = post(&srv, "/admin/graphql", &fx.superadmin, None, &body).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("statement timeout"),
        "{v}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    tx.rollback().await.unwrap();
    fx.drop().await;
}

/// CORS: a web UI on another origin may call the API once its origin is configured; a preflight
/// is answered without credentials and allows the Backend.AI clients' headers.
#[tokio::test]
async fn cors_answers_preflights_for_configured_origins_only() {
    let fx = Fixture::new().await;
    let cfg = ServerConfig {
        cors_origins: vec!["https://webui.example.com".parse().unwrap()],
        ..ServerConfig::default()
    };
    let srv = start(&fx, cfg).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/admin/graphql", srv.base),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, x-backendai-date, x-backendai-version, content-type",
            )
            .send()
    };
    let ok = preflight("https://webui.example.com").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://webui.example.com"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for header in [
        "authorization",
        "date",
        "x-backendai-date",
        "x-backendai-version",
        "content-type",
    ] {
        assert!(allowed.contains(header), "{header} in {allowed}");
    }
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A signed request from the allowed origin gets its answer with the CORS header.
    let body = json!({"query": "{ keypair { access_key } }"});
    let signed = post_from(&srv, &fx.user, &body, "https://webui.example.com").await;
    assert_eq!(signed.status(), StatusCode::OK);
    assert_eq!(
        signed.headers()["access-control-allow-origin"],
        "https://webui.example.com"
    );
    srv.stop.cancel();

    // Without --cors-origin there are no CORS headers at all.
    let plain = start(&fx, ServerConfig::default()).await;
    let signed = post_from(&plain, &fx.user, &body, "https://webui.example.com").await;
    assert_eq!(signed.status(), StatusCode::OK);
    assert!(
        signed
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    plain.stop.cancel();
    fx.drop().await;
}

async fn post_from(srv: &Server, kp: &KeyPair, body: &Value, origin: &str) -> reqwest::Response {
    let date = now();
    signed_post(srv, "/admin/graphql", kp, &date)
        .header("Origin", origin)
        .header("X-BackendAI-Date", &date)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}
