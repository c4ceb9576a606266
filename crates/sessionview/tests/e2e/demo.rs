//! End-to-end test of `sessionview demo`: the whole system in one process on SQLite, queried over
//! HTTP with the keypair it prints.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{BIN, Listening, signed_graphql};

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
    let dir = std::env::temp_dir().join(format!("sv-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("demo.db").display());
    let serving = Listening::spawn(
        Command::new(BIN)
            .args(["demo", "--listen", "127.0.0.1:0", "--speed", "200"])
            // The demo's own variable; an operator's exported SESSIONVIEW_DATABASE_URL (here one that
            // would fail) is never the demo's database.
            .env("SESSIONVIEW_DEMO_DATABASE_URL", &db)
            .env(
                "SESSIONVIEW_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/must_not_be_touched",
            )
            .stdout(std::process::Stdio::piped()),
        1,
        "demo",
    )
    .await;
    let host = serving.host("API");
    let mut demo = serving.child;
    // The printed keypair.
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let (mut ak, mut sk) = (None, None);
    while ak.is_none() || sk.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(v) = line.trim().strip_prefix("access key:") {
            ak = Some(v.trim().to_owned());
        }
        if let Some(v) = line.trim().strip_prefix("secret key:") {
            sk = Some(v.trim().to_owned());
        }
    }
    let (ak, sk) = (ak.unwrap(), sk.unwrap());
    // Wait for the server, then watch the cluster for a while.
    for _ in 0..100 {
        if reqwest::get(format!("http://{host}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
