//! End-to-end tests of the query service through the `sessionview` binary: the SDL snapshot, and
//! `keypair create` → `serve` → a signed request over HTTP → metrics → `keypair deactivate`.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use tokio::process::Command;

/// Acceptance 2: `sessionview schema` prints exactly the committed SDL snapshot, which spells the
/// contract's names and types.
#[tokio::test]
async fn schema_sdl_matches_the_snapshot() {
    let out = Command::new(BIN).arg("schema").output().await.unwrap();
    assert!(out.status.success());
    let sdl = String::from_utf8(out.stdout).unwrap();
    let snapshot = include_str!("../snapshots/schema.graphql");
    assert!(
        sdl == snapshot,
        "the GraphQL schema changed. If that is intended, review the contract and run\n  \
         cargo run -q -- schema > crates/sessionview/tests/snapshots/schema.graphql\n--- got ---\n{sdl}"
    );
    // Spot checks against the contract, so the snapshot cannot drift silently with it.
    for line in [
        "compute_session(id: UUID!): ComputeSession",
        "compute_session_list(limit: Int!, offset: Int!, order_key: String, order_asc: Boolean, domain_name: String, group_id: String, access_key: String, status: String): ComputeSessionList",
        "compute_container(id: UUID!): ComputeContainer",
        "compute_container_list(limit: Int!, offset: Int!, session_id: UUID!, role: String, order_key: String, order_asc: Boolean): ComputeContainerList",
        "keypair: KeyPair",
        "status_updated: DateTime @deprecated(reason: \"use status_changed\")",
        "items: [ComputeSession]!",
        "total_count: Int!",
        "mounts: [String]",
        "containers: [ComputeContainer]",
        "dependencies: [ComputeSession]",
        "num_queries: BigInt",
        "created_user_uuid: UUID",
        "created_user_id: UUID",
        "live_stat: JSONString",
        "query: Queries",
    ] {
        assert!(snapshot.contains(line), "missing from the SDL: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keypair_serve_and_query_through_the_binary() {
    let db = TestDb::new().await;
    // A small archive, projected, so there is something to see.
    let dir = std::env::temp_dir().join(format!("sv-query-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = format!("file://{}", dir.join("events.ndjson").display());
    for args in [
        vec!["simulate", "--sessions", "50", "--seed", "9", "--to", &file],
        vec!["project", "--database-url", &db.url, "--source", &file],
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ak, sk) = create_superadmin(&db.url).await;
    assert!(ak.starts_with("AKIA") && sk.len() == 40);
    // Bad input is refused with a message naming it.
    let out = Command::new(BIN)
        .args([
            "keypair",
            "create",
            "--database-url",
            &db.url,
            "--email",
            "x@y.z",
            "--role",
            "root",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role \"root\""));

    let (mut server, host) = serve_ready(&db.url).await;
    let client = reqwest::Client::new();

    let body = json!({"query": "{ compute_session_list(limit: 5, offset: 0) { total_count items { id containers { id agent } } } }"});
    let resp = signed_graphql(&host, &ak, &sk, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["compute_session_list"]["total_count"], 50);
    assert_eq!(
        v["compute_session_list"]["items"].as_array().unwrap().len(),
        5
    );

    let metrics = client
        .get(format!("http://{host}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sessionview_query_requests_total{endpoint=\"/admin/graphql\",operation=\"anonymous\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sessionview_query_request_seconds_bucket"));
    // The read connections, sampled when /metrics is read: the requests above are answered, so
    // the connections they opened are idle, and none waits.
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(
        gauge("sessionview_query_db_connections{state=\"in_use\"}"),
        0.0
    );
    assert!(gauge("sessionview_query_db_connections{state=\"idle\"}") >= 1.0);
    assert_eq!(gauge("sessionview_query_db_connections_max"), 8.0);
    assert_eq!(gauge("sessionview_query_db_waiting"), 0.0);

    let out = Command::new(BIN)
        .args(["keypair", "deactivate", "--database-url", &db.url, &ak])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    // The server reuses a keypair it read for --keypair-cache-ms (1 s by default): the
    // deactivation takes effect within that time, not necessarily at once.
    let deactivated_at = std::time::Instant::now();
    loop {
        let status = signed_graphql(&host, &ak, &sk, &body).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            deactivated_at.elapsed() < Duration::from_secs(3),
            "a deactivated key was still accepted after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(BIN)
        .args(["keypair", "list", "--database-url", &db.url])
        .output()
        .await
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        list.contains(&ak) && list.contains(" no ") && !list.contains(&sk),
        "{list}"
    );

    server.start_kill().unwrap();
    server.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

/// Read-your-writes through the whole path: a producer publishes an event to Kafka and at once
/// asks `serve` for the session it created, naming the offset its send returned (plus one) in
/// `X-SessionView-Min-Positions`. Every answer holds the session, and reports a position at or
/// past the one asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_reads_its_own_writes_through_kafka() {
    use sessionview_testkit::events::Story;
    let db = TestDb::new().await;
    let topic = unique_topic("ryw");
    let (ak, sk) = create_superadmin(&db.url).await;
    let mut first = Story::new(uuid::Uuid::new_v4(), "first", &ak, "default");
    produce(&topic, &[first.enqueued()]).await;
    let _project = spawn_project(&db, &topic, "ryw", &[]);
    let (_serve, host) = serve_ready(&db.url).await;
    for i in 0..5 {
        let mut story = Story::new(uuid::Uuid::new_v4(), &format!("s{i}"), &ak, "default");
        let offset = produce(&topic, &[story.enqueued()]).await[0];
        let min = format!("{topic}/0={}", offset + 1);
        let body = json!({
            "query": "query($id: UUID!) { compute_session(id: $id) { name status } }",
            "variables": {"id": story.session},
        });
        let headers =
            sessionview_query::auth::signed_headers(&ak, &sk, "POST", "/admin/graphql", &host)
                .unwrap();
        let mut request = reqwest::Client::new()
            .post(format!("http://{host}/admin/graphql"))
            .header("X-SessionView-Min-Positions", &min)
            .header("X-SessionView-Wait-Ms", "20000");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let resp = request.body(body.to_string()).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{min}");
        let reported = resp.headers()["x-sessionview-positions"]
            .to_str()
            .unwrap()
            .to_owned();
        let at: i64 = reported
            .split(',')
            .find_map(|p| p.strip_prefix(&format!("{topic}/0=")))
            .unwrap_or_else(|| panic!("{reported}"))
            .parse()
            .unwrap();
        assert!(at > offset, "{reported} for {min}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["compute_session"]["name"], format!("s{i}"), "{v}");
        assert_eq!(v["compute_session"]["status"], "PENDING");
    }
    db.drop().await;
}
