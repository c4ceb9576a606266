//! The response cache over real HTTP against a real PostgreSQL read model: a repeated request is
//! answered from the cache with the same bytes; a commit that changes what an answer read makes
//! the next request read again (and see the change), a commit that does not leaves the answer
//! cached; one caller's answer is never another's; a request that waited for positions gets an
//! answer at least that new.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessionview_query::ServerConfig;
use sessionview_store::KeyPair;
use uuid::Uuid;

use crate::common::{Fixture, Server, apply, item_names, lifecycle, post_graphql, start};

struct Answer {
    cache: Option<String>,
    body: Value,
}

async fn post(srv: &Server, kp: &KeyPair, query: &str, headers: &[(&str, &str)]) -> Answer {
    let body = json!({ "query": query });
    let resp = post_graphql(srv, "/admin/gql", kp, &body, headers).await;
    assert_eq!(resp.status(), 200);
    let cache = resp
        .headers()
        .get("x-sessionview-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    Answer { cache, body }
}

/// Asks until the answer comes from the cache (the server's follower applies commits a moment
/// after they happen), at most 10 s; returns that answer.
async fn until_hit(srv: &Server, kp: &KeyPair, query: &str, headers: &[(&str, &str)]) -> Value {
    let started = Instant::now();
    loop {
        let a = post(srv, kp, query, headers).await;
        if a.cache.as_deref() == Some("hit") {
            return a.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered from the cache: {:?}",
            a.cache
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn session_query(id: Uuid) -> String {
    format!("{{ compute_session(id: \"{id}\") {{ name status containers {{ status }} }} }}")
}

const LIST: &str =
    "{ compute_session_list(limit: 100, offset: 0) { total_count items { id name status } } }";

fn names(v: &Value) -> Vec<String> {
    item_names(&v["data"]["compute_session_list"])
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_cached_until_a_commit_changes_what_they_read() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let user = fx.user.clone();
    let theirs = fx
        .sessions
        .iter()
        .find(|s| s.session.access_key == user.access_key)
        .unwrap()
        .session
        .id;

    // A repeated request: the same bytes, from the cache.
    let first = post(&srv, &user, LIST, &[]).await;
    let cached = until_hit(&srv, &user, LIST, &[]).await;
    assert_eq!(cached, first.body);
    let single = until_hit(&srv, &user, &session_query(theirs), &[]).await;
    assert!(single["data"]["compute_session"]["name"].is_string());

    // The same request of another caller is that caller's own answer: a domain admin sees the
    // domain's sessions, never the user's cached page.
    let admin = post(&srv, &fx.admin, LIST, &[]).await;
    assert_eq!(admin.cache.as_deref(), Some("miss"));
    assert_ne!(admin.body, cached);
    assert!(
        admin.body["data"]["compute_session_list"]["total_count"].as_i64()
            > cached["data"]["compute_session_list"]["total_count"].as_i64()
    );

    // A new session of the user: the user's list read it, the single session did not.
    apply(
        &fx,
        940,
        &lifecycle(40, "brand-new", &user.access_key, &user.domain_name),
    )
    .await;
    let waited = [("X-SessionView-Min-Positions", "events-test/940=3")];
    let after = post(&srv, &user, LIST, &waited).await;
    assert!(
        names(&after.body).contains(&"brand-new".to_owned()),
        "{}",
        after.body
    );
    assert_eq!(after.cache.as_deref(), Some("miss"));
    assert_eq!(
        until_hit(&srv, &user, &session_query(theirs), &waited).await,
        single
    );

    // A session asked for before it exists: the answer (none) is cached until it is created.
    let later = Uuid::from_u128(0xfeed_0000 + 43);
    let none = until_hit(&srv, &user, &session_query(later), &[]).await;
    assert_eq!(none["data"]["compute_session"], Value::Null);
    apply(
        &fx,
        941,
        &lifecycle(43, "later", &user.access_key, &user.domain_name),
    )
    .await;
    let waited = [("X-SessionView-Min-Positions", "events-test/941=3")];
    let created = post(&srv, &user, &session_query(later), &waited).await;
    assert_eq!(created.cache.as_deref(), Some("miss"));
    assert_eq!(created.body["data"]["compute_session"]["name"], "later");
    assert_eq!(
        until_hit(&srv, &user, &session_query(later), &[]).await,
        created.body
    );

    // Another domain's session changes nothing the user's list read.
    let listed = until_hit(&srv, &user, LIST, &[]).await;
    apply(
        &fx,
        942,
        &lifecycle(41, "elsewhere", "AKIAOTHER", "other-domain"),
    )
    .await;
    let waited = [("X-SessionView-Min-Positions", "events-test/942=3")];
    assert_eq!(until_hit(&srv, &user, LIST, &waited).await, listed);

    srv.stop.cancel();
    fx.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_budget_nothing_is_cached() {
    let fx = Fixture::new().await;
    let cfg = ServerConfig {
        response_cache_bytes: 0,
        ..ServerConfig::default()
    };
    let srv = start(&fx, cfg).await;
    for _ in 0..3 {
        let a = post(&srv, &fx.user, LIST, &[]).await;
        assert_eq!(a.cache, None);
    }
    srv.stop.cancel();
    fx.drop().await;
}
