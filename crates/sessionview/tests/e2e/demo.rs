//! End-to-end test of `sessionview demo`: the whole system in one process on SQLite, queried over
//! HTTP with the keypair it prints.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{Demo, signed_graphql};
use serde_json::{Value, json};

async fn sessions(host: &str, ak: &str, sk: &str) -> (u64, HashMap<String, String>) {
    let body = json!({"query": "{ compute_session_list(limit: 1000, offset: 0) { total_count items { id status } } }"});
    let v: Value = signed_graphql(host, ak, sk, &body)
        .await
        .json()
        .await
        .unwrap();
    let list = &v["compute_session_list"];
    let statuses = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (list["total_count"].as_u64().unwrap(), statuses)
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_shows_sessions_appearing_and_changing_status() {
    let Demo {
        child: mut demo,
        host,
        access_key: ak,
        secret_key: sk,
        dir,
    } = Demo::start(200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (n1, first) = sessions(&host, &ak, &sk).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (n2, second) = sessions(&host, &ak, &sk).await;
    assert!(n1 > 0, "no sessions after 2 s");
    assert!(n2 > n1, "no new sessions: {n1} then {n2}");
    let changed = first
        .iter()
        .filter(|(id, st)| second.get(*id).is_some_and(|s2| s2 != *st))
        .count();
    assert!(
        changed > 0,
        "no session changed status between the two looks"
    );
    demo.start_kill().unwrap();
    demo.wait().await.unwrap();
    // The data survives a restart: the database and the event archive are still there.
    assert!(dir.join("demo.db").exists() && dir.join("demo.db.events.ndjson").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
