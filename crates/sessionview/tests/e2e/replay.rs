//! End-to-end tests of `sessionview replay`: a zero-downtime rebuild under live load, verification,
//! and interruption.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use sessionview_projection::{Fold, Position, SessionState};
use sessionview_simulator::SimConfig;
use sessionview_store::prelude::*;
use tokio::process::Command;

/// The fold of several streams published one after the other (sessions are independent, so the
/// interleaving in the topic does not matter).
fn model_of(cfgs: &[SimConfig]) -> Vec<SessionState> {
    let mut fold = Fold::new();
    let mut n = 0;
    for cfg in cfgs {
        for m in messages(cfg) {
            fold.apply_bytes(
                "model",
                Position {
                    partition: 0,
                    offset: n,
                },
                &m.bytes,
            );
            n += 1;
        }
    }
    let mut v: Vec<_> = fold.sessions().values().cloned().collect();
    v.sort_by_key(|s| s.session.id);
    v
}

async fn query(host: &str, ak: &str, sk: &str) -> Result<usize, String> {
    let body = json!({"query": "{ compute_session_list(limit: 5, offset: 0) { total_count items { id status containers { id } } } }"});
    let resp = signed_graphql(host, ak, sk, &body).await;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {v}"));
    }
    let items = v["compute_session_list"]["items"]
        .as_array()
        .map_or(0, Vec::len);
    if items != 5 {
        return Err(format!("a page of {items} items: {v}"));
    }
    Ok(v["compute_session_list"]["total_count"].as_u64().unwrap() as usize)
}

/// Acceptance 1: replay while `serve` answers a query loop, the live projector projects and the
/// simulator publishes; no query fails or sees a partial table, and the result is exact.
#[tokio::test(flavor = "multi_thread")]
async fn zero_downtime_rebuild_under_live_load() {
    let first = SimConfig {
        duplicate_ratio: 0.05,
        early_ratio: 0.1,
        poison_ratio: 0.02,
        ..sim_config(1500, 201)
    };
    let second = sim_config(600, 202);
    let topic = unique_topic("replay");
    publish(&topic, &first).await;
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut live = spawn_project(&db, &topic, "live", &["--batch-size", "500"]);
    let n_first = messages(&first).len() as i64;
    wait_for("the live projector to catch up", 120, async || {
        progress(&store, &topic).await >= n_first
    })
    .await;

    let (ak, sk) = create_superadmin(&db.url).await;
    let (mut server, host) = serve_ready(&db.url).await;

    // Queries in a loop: every one must succeed and never see fewer sessions than before.
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (host, ak, sk, stop) = (host.clone(), ak.clone(), sk.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut ok, mut max_seen) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let total = query(&host, &ak, &sk)
                    .await
                    .unwrap_or_else(|e| panic!("query {ok} failed during replay: {e}"));
                assert!(
                    total >= max_seen,
                    "a partial table: {total} sessions after {max_seen}"
                );
                max_seen = total;
                ok += 1;
            }
            (ok, max_seen)
        })
    };
    // More events arrive while the rebuild runs.
    let mut publisher = Command::new(BIN)
        .arg("simulate")
        .args([
            "--sessions",
            "600",
            "--seed",
            "202",
            "--rate",
            "1500",
            "--partitions",
            "4",
            "--to",
        ])
        .arg(format!("kafka://{}/{topic}", brokers()))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let out = Command::new(BIN)
        .args(["replay", "--database-url", &db.url, "--from"])
        .arg(format!("kafka://{}/{topic}", brokers()))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("swapped in the rebuilt tables"), "{text}");
    let noted = store.changes_after(0, 1_000_000).await.unwrap();
    assert!(
        noted.changes.iter().any(|c| c.everything),
        "the swap tells response caches that everything changed"
    );

    assert!(publisher.wait().await.unwrap().success());
    let total = n_first + messages(&second).len() as i64;
    wait_for(
        "the live projector to project everything",
        120,
        async || progress(&store, &topic).await >= total,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (queries, seen) = looper.await.unwrap();
    assert!(queries > 20, "only {queries} queries ran");
    eprintln!("{queries} queries, up to {seen} sessions, all answered");

    assert_tables_equal(&store, &model_of(&[first, second])).await;
    assert_eq!(progress(&store, &topic).await, total);
    live.start_kill().unwrap();
    server.start_kill().unwrap();
    let _ = live.wait().await;
    let _ = server.wait().await;
    db.drop().await;
}

async fn archive(sessions: u64, seed: u64) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sv-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("file://{}", dir.join("events.ndjson").display());
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            &sessions.to_string(),
            "--seed",
            &seed.to_string(),
            "--poison-ratio",
            "0.05",
            "--early-ratio",
            "0.1",
            "--to",
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    (dir, url)
}

async fn sessionview(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().await.unwrap()
}

/// Acceptance 2: `--verify-only` names a tampered session, and finds nothing on an untouched database.
#[tokio::test(flavor = "multi_thread")]
async fn verify_only_names_tampered_sessions() {
    let (dir, url) = archive(300, 203).await;
    let db = TestDb::new().await;
    assert!(
        sessionview(&["project", "--database-url", &db.url, "--source", &url])
            .await
            .status
            .success()
    );

    let out = verify_only(&db, &url).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("content: identical")
            && text.contains("list totals: consistent")
            && text.contains("verified"),
        "{text}"
    );

    let store = db.store().await;
    let victim = store.all_sessions().await.unwrap()[7].session.id;
    sqlx::query("UPDATE kernels SET status_info = 'tampered' WHERE session_id = $1")
        .bind(victim)
        .execute(store.pool())
        .await
        .unwrap();
    let before = store.session_digests("public").await.unwrap();
    let out = verify_only(&db, &url).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("1 sessions differ") && text.contains(&victim.to_string()),
        "{text}"
    );
    // Verifying changes nothing.
    assert_eq!(store.session_digests("public").await.unwrap(), before);

    // List totals that drifted from the rows (what a projector of an earlier version, writing
    // after the counts migration, would leave) are named too, and a replay repairs them.
    let (key, status): (String, String) =
        sqlx::query_as("SELECT access_key, status FROM session_counts WHERE n > 0 LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    sqlx::query("UPDATE session_counts SET n = n + 5 WHERE access_key = $1 AND status = $2")
        .bind(&key)
        .bind(&status)
        .execute(store.pool())
        .await
        .unwrap();
    let out = verify_only(&db, &url).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("list totals: session_counts disagrees with the sessions for 1 access key")
            && text.contains(&format!("{key} {status}")),
        "{text}"
    );
    let out = sessionview(&["replay", "--database-url", &db.url, "--from", &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_counts_match_rows(&store).await;
    std::fs::remove_dir_all(dir).unwrap();
    db.drop().await;
}

/// `sessionview replay --verify-only` of `url` against `db`.
async fn verify_only(db: &TestDb, url: &str) -> std::process::Output {
    sessionview(&[
        "replay",
        "--database-url",
        &db.url,
        "--from",
        url,
        "--verify-only",
    ])
    .await
}

/// Acceptance 3: a replay killed midway leaves the live tables identical; the next run succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn killed_replay_leaves_live_tables_untouched() {
    let (dir, url) = archive(3000, 204).await;
    let db = TestDb::new().await;
    assert!(
        sessionview(&["project", "--database-url", &db.url, "--source", &url])
            .await
            .status
            .success()
    );
    let store = db.store().await;
    let before = store.session_digests("public").await.unwrap();
    let counts = store.counts().await.unwrap();

    let mut replay = Command::new(BIN)
        .args([
            "replay",
            "--database-url",
            &db.url,
            "--from",
            &url,
            "--batch-size",
            "200",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the shadow has some, but not all, of the rows.
    wait_for("the shadow to fill", 60, async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sessionview_shadow.sessions")
            .fetch_one(store.pool())
            .await
            .is_ok_and(|n| n > 100)
    })
    .await;
    replay.start_kill().unwrap();
    replay.wait().await.unwrap();
    let partial: i64 = sqlx::query_scalar("SELECT count(*) FROM sessionview_shadow.sessions")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        partial < counts.sessions,
        "the kill came too late to be midway"
    );
    assert_eq!(store.session_digests("public").await.unwrap(), before);
    assert_eq!(store.counts().await.unwrap(), counts);

    let out = sessionview(&["replay", "--database-url", &db.url, "--from", &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(store.session_digests("public").await.unwrap(), before);
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sessionview_%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(schemas.is_empty(), "left behind: {schemas:?}");
    std::fs::remove_dir_all(dir).unwrap();
    db.drop().await;
}
