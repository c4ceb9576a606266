//! Read-your-writes over real HTTP against a real PostgreSQL read model: every response reports
//! the committed positions, a request waits (bounded) for the positions it names and then sees
//! what they hold, and one that waits in vain gets 503 naming what is behind.

use std::time::Duration;

use serde_json::{Value, json};
use sessionview_query::ServerConfig;
use sessionview_store::KeyPair;

use crate::common::{Fixture, Server, apply, item_names, lifecycle, post_graphql, start};

/// `compute_session_list` of the user's sessions, with `headers` added.
async fn list(srv: &Server, kp: &KeyPair, headers: &[(&str, &str)]) -> reqwest::Response {
    let body = json!({"query": "{ compute_session_list(limit: 100, offset: 0) { total_count items { name } } }"});
    post_graphql(srv, "/admin/graphql", kp, &body, headers).await
}

fn positions(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-sessionview-positions")
        .unwrap_or_else(|| panic!("no X-SessionView-Positions on {}", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn names(v: &Value) -> Vec<String> {
    item_names(&v["compute_session_list"])
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_report_positions_and_requests_wait_for_theirs() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let user = fx.user.clone();

    // Every response carries the header, unauthenticated ones included.
    let version = reqwest::get(format!("{}/", srv.base)).await.unwrap();
    let before = positions(&version);
    assert!(
        !before.contains("events-test/"),
        "nothing of that source yet: {before}"
    );

    // Waiting for an offset that is committed while the request waits: answered once it is,
    // with what it holds, reporting the positions it waited for.
    let waiting = {
        let (srv, user) = (srv.clone(), user.clone());
        tokio::spawn(async move {
            list(
                &srv,
                &user,
                &[
                    ("X-SessionView-Min-Positions", "events-test/910=3"),
                    ("X-SessionView-Wait-Ms", "10000"),
                ],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "it waits for the commit");
    apply(
        &fx,
        910,
        &lifecycle(10, "written", &user.access_key, &user.domain_name),
    )
    .await;
    let resp = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once the commit is in")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reported = positions(&resp);
    assert!(
        reported.split(',').any(|p| p == "events-test/910=3"),
        "{reported}"
    );
    let v: Value = resp.json().await.unwrap();
    assert!(names(&v).contains(&"written".to_owned()), "{v}");

    // Already reached: answered at once; the header is a plain list of every position.
    let resp = list(
        &srv,
        &user,
        &[("X-SessionView-Min-Positions", "events-test/910=2")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(positions(&resp).contains("events-test/910=3"));

    // Not reached in time: 503 naming the partitions behind, with the positions the server has.
    let started = std::time::Instant::now();
    let resp = list(
        &srv,
        &user,
        &[
            (
                "X-SessionView-Min-Positions",
                "events-test/910=50,events-test/911=1",
            ),
            ("X-SessionView-Wait-Ms", "300"),
        ],
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(positions(&resp).contains("events-test/910=3"));
    let problem: Value = resp.json().await.unwrap();
    let msg = problem["msg"].as_str().unwrap();
    assert!(
        msg.contains("events-test/910 is at 3 (50 asked)")
            && msg.contains("events-test/911 has nothing committed (1 asked)")
            && msg.contains("300 ms"),
        "{msg}"
    );

    // A malformed header is the caller's error, named.
    for (bad, names) in [
        ("events-test=3", "x-sessionview-min-positions"),
        ("events-test/910=-1", "x-sessionview-min-positions"),
    ] {
        let resp = list(&srv, &user, &[("X-SessionView-Min-Positions", bad)]).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(names), "{bad}: {text}");
    }
    let resp = list(
        &srv,
        &user,
        &[
            ("X-SessionView-Min-Positions", "events-test/910=1"),
            ("X-SessionView-Wait-Ms", "soon"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("x-sessionview-wait-ms"));

    // Without credentials the wait is never reached: authentication comes first.
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/graphql", srv.base))
        .header("X-SessionView-Min-Positions", "events-test/999=1")
        .header("X-SessionView-Wait-Ms", "30000")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    srv.stop.cancel();
    fx.drop().await;
}
