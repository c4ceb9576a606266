//! End-to-end tests of the projector's operational behaviour: SIGTERM drains and exits cleanly,
//! metrics and probes answer, a database outage is retried without losing or doubling anything,
//! two instances share a topic through a consumer group, and `run` serves what it projects.

use std::time::Duration;

use crate::support::*;
use serde_json::json;
use sessionview_store::prelude::*;
use sessionview_testkit::admin_exec;
use sqlx::Connection;
use tokio::process::Command;

fn sigterm(child: &tokio::process::Child) {
    signal(child, "TERM");
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_metrics_and_probes_answer() {
    let cfg = sim_config(2500, 301);
    let topic = unique_topic("term");
    publish(&topic, &cfg).await;
    let db = TestDb::new().await;
    let store = db.store().await;
    let listening = spawn_project_listening(&db, &topic, "term", &["--batch-size", "200"]).await;
    let metrics = listening.host("metrics");
    let mut live = listening.child;
    wait_for("progress", 60, async || progress(&store, &topic).await > 0).await;

    let client = reqwest::Client::new();
    let names = [
        "sessionview_projector_events_total{event_type=\"session_enqueued\",outcome=\"applied\"}",
        "sessionview_projector_batch_size_bucket",
        "sessionview_projector_commit_seconds_bucket",
        "sessionview_projector_fold_seconds_bucket",
        "sessionview_projector_lag_seconds{partition=",
        // From librdkafka's statistics, emitted once a second.
        "sessionview_projector_lag_messages{partition=",
        // Not sessionview_projector_statistics_refreshed_total: on Apache Kafka this stream is
        // projected within the statistics task's first 5 s, and autovacuum may analyze the
        // tables before it does (then it has nothing to refresh). The refresh rule is tested in
        // the store's conformance suite (`postgres_statistics_follow_a_growing_table`).
    ];
    let mut text = String::new();
    let all_there = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            text = client
                .get(format!("http://{metrics}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if names.iter().all(|n| text.contains(n)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    for name in names {
        assert!(
            all_there.is_ok() && text.contains(name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(
        client
            .get(format!("http://{metrics}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(
        client
            .get(format!("http://{metrics}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    sigterm(&live);
    let status = tokio::time::timeout(Duration::from_secs(30), live.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM should end the projector cleanly, got {status}"
    );
    // Whatever was committed is consistent: finishing the topic gives exactly the fold.
    project_to_end(&db, &topic, &[]).await;
    let (expected, _) = model(&cfg);
    assert_tables_equal(&store, &expected).await;
    db.drop().await;
}

/// The database refuses connections for a while mid-projection: batches are retried with backoff,
/// positions are not advanced meanwhile, and the end result is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_retried_without_loss_or_duplication() {
    let cfg = sim_config(2500, 302);
    let topic = unique_topic("outage");
    publish(&topic, &cfg).await;
    let db = TestDb::new().await;
    let store = db.store().await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let mut live = project_command(
        &db,
        &topic,
        "outage",
        &[
            "--batch-size",
            "200",
            "--exit-at-end",
            "--db-max-connections",
            "2",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    wait_for("progress", 60, async || progress(&store, &topic).await > 0).await;

    // Outage: no new connections, and the projector's existing ones are cut.
    admin_exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin_exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND application_name = 'sessionview'"
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        live.try_wait().unwrap().is_none(),
        "the projector must survive the outage"
    );
    admin_exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;

    let status = tokio::time::timeout(Duration::from_secs(120), live.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let (expected, _) = model(&cfg);
    let store = db.store().await;
    assert_tables_equal(&store, &expected).await;
    assert_eq!(
        progress(&store, &topic).await as usize,
        messages(&cfg).len()
    );
    db.drop().await;
}

/// The sum of `sessionview_projector_events_total` over all labels, and the `duplicate` part, from
/// a projector's /metrics.
async fn events_counted(metrics: &str) -> (u64, u64) {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut all, mut duplicate) = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("sessionview_projector_events_total{") {
            let n: u64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            all += n;
            if rest.contains("outcome=\"duplicate\"") {
                duplicate += n;
            }
        }
    }
    (all, duplicate)
}

/// Two instances in one consumer group share the partitions. Midway one is paused past the session
/// timeout (its partitions move to the other while it still believes it owns them, possibly with a
/// batch in flight), then resumed (the stale owner: its commits are fenced by the stored positions'
/// compare-and-set) and killed. Every message is committed by exactly one instance, the tables are
/// exactly the fold. Run with both group protocols.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_then_killed_instance_is_fenced_and_nothing_is_applied_twice_classic() {
    paused_then_killed_instance_is_fenced("classic").await;
}

/// The same under KIP-848's `consumer` group protocol (the broker's session timeout applies).
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_then_killed_instance_is_fenced_and_nothing_is_applied_twice_consumer() {
    paused_then_killed_instance_is_fenced("consumer").await;
}

async fn paused_then_killed_instance_is_fenced(protocol: &str) {
    let cfg = sim_config(3000, 303);
    let topic = unique_topic("group");
    publish(&topic, &cfg).await;
    let db = TestDb::new().await;
    let store = db.store().await;
    let group = format!("shared-{}", uuid::Uuid::new_v4().simple());
    let spawn = async || {
        let listening = spawn_project_listening(
            &db,
            &topic,
            &group,
            &[
                "--group-protocol",
                protocol,
                "--batch-size",
                "50",
                "--db-idle-transaction-timeout-secs",
                "3",
            ],
        )
        .await;
        (listening.host("metrics"), listening.child)
    };
    let (ma, mut a) = spawn().await;
    wait_for("the first instance to start", 60, async || {
        progress(&store, &topic).await > 0
    })
    .await;
    let (mb, b) = spawn().await;
    wait_for("the second instance to apply batches", 90, async || {
        reqwest::get(format!("http://{mb}/metrics")).await.is_ok()
            && events_counted(&mb).await.0 > 0
    })
    .await;
    let total = messages(&cfg).len() as i64;
    let at_pause = progress(&store, &topic).await;
    assert!(
        at_pause < total,
        "the topic must still be in progress when an instance pauses"
    );
    signal(&a, "STOP");
    wait_for(
        "the other instance to take over and finish",
        240,
        async || progress(&store, &topic).await >= total,
    )
    .await;
    signal(&a, "CONT");
    // Let the stale owner wake up, find its batch fenced or its session ended, and rejoin.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (by_a, dup_a) = events_counted(&ma).await;
    a.kill().await.unwrap();
    let mut b = b;
    let (by_b, dup_b) = events_counted(&mb).await;
    sigterm(&b);
    assert!(b.wait().await.unwrap().success());
    assert!(
        by_a > 0 && by_b > 0,
        "both instances worked: {by_a} and {by_b}"
    );
    assert_eq!(
        by_a + by_b,
        total as u64,
        "every message is committed by exactly one instance"
    );
    assert_eq!((dup_a, dup_b), (0, 0), "no event was applied twice");
    assert_eq!(progress(&store, &topic).await, total);
    let (expected, _) = model(&cfg);
    assert_tables_equal(&store, &expected).await;
    db.drop().await;
}

/// `sessionview run`: projector and server in one process, here on SQLite from an archive.
#[tokio::test(flavor = "multi_thread")]
async fn run_projects_and_serves_in_one_process() {
    let dir = std::env::temp_dir().join(format!("sv-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = format!("file://{}", dir.join("events.ndjson").display());
    let db = format!("sqlite://{}", dir.join("sv.db").display());
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            "120",
            "--seed",
            "304",
            "--to",
            &archive,
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let (ak, sk) = create_superadmin(&db).await;
    let serving = Listening::spawn(
        Command::new(BIN)
            .args([
                "run",
                "--database-url",
                &db,
                "--source",
                &archive,
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::null()),
        1,
        "run",
    )
    .await;
    let host = serving.host("API");
    let mut run = serving.child;
    let body = json!({"query": "{ compute_session_list(limit: 1, offset: 0) { total_count } }"});
    wait_for("all 120 sessions to be served", 60, async || {
        if !reqwest::get(format!("http://{host}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return false;
        }
        let v: serde_json::Value = signed_graphql(&host, &ak, &sk, &body)
            .await
            .json()
            .await
            .unwrap();
        v["compute_session_list"]["total_count"] == 120
    })
    .await;
    sigterm(&run);
    assert!(run.wait().await.unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Zero-downtime replay needs PostgreSQL: on SQLite it refuses clearly, and `--in-place` works.
#[tokio::test(flavor = "multi_thread")]
async fn replay_on_sqlite_refuses_shadow_modes_and_rebuilds_in_place() {
    let dir = std::env::temp_dir().join(format!(
        "sv-sqlite-replay-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = format!("file://{}", dir.join("events.ndjson").display());
    let db = format!("sqlite://{}", dir.join("sv.db").display());
    let run = async |args: &[&str]| Command::new(BIN).args(args).output().await.unwrap();
    assert!(
        run(&[
            "simulate",
            "--sessions",
            "80",
            "--seed",
            "305",
            "--to",
            &archive
        ])
        .await
        .status
        .success()
    );
    assert!(
        run(&["project", "--database-url", &db, "--source", &archive])
            .await
            .status
            .success()
    );
    for mode in [&[][..], &["--verify-only"][..]] {
        let mut args = vec!["replay", "--database-url", &db, "--from", &archive];
        args.extend_from_slice(mode);
        let out = run(&args).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("need PostgreSQL") && err.contains("--in-place"),
            "{err}"
        );
    }
    let out = run(&[
        "replay",
        "--database-url",
        &db,
        "--from",
        &archive,
        "--in-place",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the live tables in place"));
    let store = sessionview_store::SqliteStore::connect(&db, 1)
        .await
        .unwrap();
    let (expected, _) = model(&sim_config(80, 305));
    assert_eq!(store.all_sessions().await.unwrap(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A missing topic or an unreachable broker is a clear error, not an endless wait.
#[tokio::test(flavor = "multi_thread")]
async fn missing_topic_and_unreachable_broker_are_clear_errors() {
    let db = TestDb::new().await;
    let missing = format!("kafka://{}/{}", brokers(), unique_topic("missing"));
    let unreachable = format!("kafka://127.0.0.1:{}/anything", closed_port());
    for (source, expect) in [
        (&missing, "does not exist"),
        (&unreachable, "is the broker reachable"),
    ] {
        let started = std::time::Instant::now();
        let out = Command::new(BIN)
            .args([
                "project",
                "--database-url",
                &db.url,
                "--exit-at-end",
                "--source",
                source,
            ])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{source}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{source}: {err}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    db.drop().await;
}

/// `dead-letters retry`: an event an earlier version dead-lettered is re-applied once it is
/// accepted (here: a valid event stored as a dead letter, as a version with a bug would have);
/// real poison stays, with its reason. `--dry-run` writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_retry_reapplies_what_now_applies_and_keeps_the_rest() {
    let cfg = sim_config(300, 311);
    let msgs = messages(&cfg);
    // The stream's last event is the one the "old version" rejected: applying it last keeps the
    // order the model folds in.
    let (rejected, rest) = msgs.split_last().unwrap();
    let dir = std::env::temp_dir().join(format!("sv-retry-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.ndjson");
    let mut lines: Vec<u8> = Vec::new();
    for m in rest {
        lines.extend_from_slice(&m.bytes);
        lines.push(b'\n');
    }
    lines.extend_from_slice(b"{not json\n");
    std::fs::write(&path, &lines).unwrap();

    let db = TestDb::new().await;
    project_file(&db, &path).await;
    let event: serde_json::Value = serde_json::from_slice(&rejected.bytes).unwrap();
    let event_id = uuid::Uuid::parse_str(event["event_id"].as_str().unwrap()).unwrap();
    let session_id = uuid::Uuid::parse_str(event["session_id"].as_str().unwrap()).unwrap();
    let source = format!("file:{}", path.display());
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (source, partition, \"offset\", event_id, event_type, session_id, \
            label, reason, payload) VALUES ($1, 0, $2, $3, $4, $5, 'bad_field', 'rejected by an older version', $6)",
    )
    .bind(&source)
    .bind(rest.len() as i64 + 1)
    .bind(event_id)
    .bind(event["event_type"].as_str().unwrap())
    .bind(session_id)
    .bind(&rejected.bytes)
    .execute(&mut conn)
    .await
    .unwrap();
    // Its id recorded as seen, as the older version did when it dead-lettered it.
    sqlx::query(
        "INSERT INTO session_seen (session_id, chunk, ids) VALUES ($1, 0, uuid_send($2)) \
         ON CONFLICT (session_id, chunk) DO UPDATE SET ids = session_seen.ids || EXCLUDED.ids",
    )
    .bind(session_id)
    .bind(event_id)
    .execute(&mut conn)
    .await
    .unwrap();
    let store = db.store().await;
    let (expected, _) = model(&cfg);
    let before = store.all_sessions().await.unwrap();
    assert_ne!(before, expected, "the rejected event must matter");

    let retry = |extra: &'static [&'static str]| {
        let url = db.url.clone();
        async move {
            let out = Command::new(BIN)
                .args(["dead-letters", "retry", "--database-url", &url])
                .args(extra)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        }
    };
    let dry = retry(&["--dry-run"]).await;
    assert!(
        dry.contains("would retry 2 dead letters: applied=1 dead_lettered=1"),
        "{dry}"
    );
    assert_eq!(store.all_sessions().await.unwrap(), before);
    assert_eq!(store.counts().await.unwrap().dead_letters, 2);

    let done = retry(&[]).await;
    assert!(
        done.contains("retried 2 dead letters: applied=1 dead_lettered=1"),
        "{done}"
    );
    assert!(done.contains("still dead: malformed"), "{done}");
    assert_tables_equal(&store, &expected).await;
    let left = store
        .dead_letters(&sessionview_store::DeadLetterFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].label.as_str(), left[0].payload.as_slice()),
        ("malformed", &b"{not json"[..])
    );

    // Nothing left that applies: a second retry changes nothing.
    let again = retry(&["--label", "bad_field"]).await;
    assert!(again.contains("no dead letters to retry"), "{again}");
    let unknown = Command::new(BIN)
        .args([
            "dead-letters",
            "retry",
            "--database-url",
            &db.url,
            "--id",
            "999999",
        ])
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no dead letter with id 999999"));
    assert_tables_equal(&store, &expected).await;
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

/// `/readyz` fails when events wait and nothing is committed (here: the positions row is locked by
/// another transaction), and recovers when the projector can commit again. (That high lag with
/// progress is no failure is the unit tests' part, in `sessionview-projector`'s `health`.)
#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_on_a_stall_not_on_lag() {
    let first = sim_config(300, 321);
    let topic = unique_topic("stall");
    publish(&topic, &first).await;
    let db = TestDb::new().await;
    let store = db.store().await;
    let listening =
        spawn_project_listening(&db, &topic, "stall", &["--stall-after-secs", "2"]).await;
    let metrics = listening.host("metrics");
    let mut live = listening.child;
    let client = reqwest::Client::new();
    let readyz = async || {
        let r = client
            .get(format!("http://{metrics}/readyz"))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    };
    let first_total = messages(&first).len() as i64;
    wait_for("the first stream", 120, async || {
        progress(&store, &topic).await >= first_total
    })
    .await;
    assert_eq!(readyz().await.map(|r| r.0), Some(200));

    // Hold the positions rows: every commit waits, while the database itself answers.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT * FROM source_positions WHERE source = $1 FOR UPDATE")
        .bind(&topic)
        .fetch_all(&mut blocker)
        .await
        .unwrap();
    let second = sim_config(300, 322);
    publish(&topic, &second).await;
    let mut last = None;
    wait_for("/readyz to report the stall", 60, async || {
        last = readyz().await;
        last.as_ref()
            .is_some_and(|(code, body)| *code == 503 && body.contains("stalled"))
    })
    .await;
    assert_eq!(progress(&store, &topic).await, first_total);

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let total = first_total + messages(&second).len() as i64;
    wait_for("the second stream", 120, async || {
        progress(&store, &topic).await >= total
    })
    .await;
    wait_for("/readyz to recover", 30, async || {
        readyz().await.is_some_and(|r| r.0 == 200)
    })
    .await;
    live.kill().await.unwrap();
    db.drop().await;
}

/// A query replica on a hot standby: `serve --no-migrate` answers from a streaming replica of the
/// primary a projector writes. The standby refuses LISTEN, so the server follows commits by
/// reading the standby; a request naming the primary's committed positions is answered once the
/// standby has replayed them, with what they hold; a repeated request is answered from the
/// response cache, and a later commit makes it read again.
#[tokio::test(flavor = "multi_thread")]
async fn serve_on_a_hot_standby_follows_the_primary() {
    let db = TestDb::new().await;
    let replica = db.standby_url();
    let first = sim_config(40, 301);
    let topic = unique_topic("standby");
    publish(&topic, &first).await;
    project_to_end(&db, &topic, &[]).await;
    let (ak, sk) = create_superadmin(&db.url).await;
    wait_for(
        "the database and the keypair on the standby",
        30,
        async || {
            let Ok(mut conn) = sqlx::PgConnection::connect(&replica).await else {
                return false;
            };
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM keypairs")
                .fetch_one(&mut conn)
                .await
                .is_ok_and(|n| n > 0)
        },
    )
    .await;
    let serving = Listening::spawn(
        serve_command(&replica).arg("--no-migrate"),
        1,
        "serve on the standby",
    )
    .await;
    let host = serving.host("API");
    let mut server = serving.child;
    wait_ready(&reqwest::Client::new(), &format!("http://{host}/readyz")).await;

    let store = db.store().await;
    let positions = async || {
        store
            .committed_positions()
            .await
            .unwrap()
            .iter()
            .map(|p| format!("{}/{}={}", p.source, p.partition, p.next_offset))
            .collect::<Vec<_>>()
            .join(",")
    };
    let body = json!({"query": "{ compute_session_list(limit: 5, offset: 0) { total_count } }"});
    let ask = async |min: Option<&str>| {
        let headers =
            sessionview_query::auth::signed_headers(&ak, &sk, "POST", "/admin/graphql", &host)
                .unwrap();
        let mut request = reqwest::Client::new().post(format!("http://{host}/admin/graphql"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(min) = min {
            request = request
                .header("X-SessionView-Min-Positions", min)
                .header("X-SessionView-Wait-Ms", "10000");
        }
        let resp = request.body(body.to_string()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let cache = resp
            .headers()
            .get("x-sessionview-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let v: serde_json::Value = resp.json().await.unwrap();
        (
            v["compute_session_list"]["total_count"].as_i64().unwrap(),
            cache,
        )
    };

    let (total, _) = ask(Some(&positions().await)).await;
    assert_eq!(total, 40, "what the primary committed, read on the standby");
    wait_for("an answer from the cache", 10, async || {
        ask(None).await == (40, Some("hit".to_owned()))
    })
    .await;

    publish(&topic, &sim_config(25, 302)).await;
    project_to_end(&db, &topic, &[]).await;
    let (total, cache) = ask(Some(&positions().await)).await;
    assert_eq!(
        total, 65,
        "the new sessions, once the standby replayed them"
    );
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "the commit made the cached answer stale"
    );

    server.start_kill().unwrap();
    let _ = server.wait().await;
    store.close().await;
    db.drop().await;
}
