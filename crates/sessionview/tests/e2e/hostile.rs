//! Hostile input, end to end through the real binary: what a buggy producer or an attacker sends
//! must become a dead letter (projection goes on) or a clear refusal, on both backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;
use rand::Rng;
use serde_json::{Value, json};
use sessionview_projection::SessionState;
use sessionview_store::{
    DeadLetterFilter, PgStore, SqliteStore, Store, StoreCounts, StoredDeadLetter,
};
use sessionview_testkit::TestDatabase as Db;
use sessionview_testkit::admin_exec;
use tokio::process::Command;
use uuid::Uuid;

/// Sessions, dead letters and table counts of `db`, as the store reads them back.
async fn contents(db: &Db) -> (Vec<SessionState>, Vec<StoredDeadLetter>, StoreCounts) {
    async fn read<S: Store>(s: S) -> (Vec<SessionState>, Vec<StoredDeadLetter>, StoreCounts) {
        let filter = DeadLetterFilter {
            limit: 10_000,
            ..DeadLetterFilter::default()
        };
        (
            s.all_sessions().await.unwrap(),
            s.dead_letters(&filter).await.unwrap(),
            s.counts().await.unwrap(),
        )
    }
    match db {
        Db::Postgres(db) => read(PgStore::connect(&db.url, 2).await.unwrap()).await,
        Db::Sqlite(db) => read(SqliteStore::connect(&db.url, 2).await.unwrap()).await,
    }
}

/// `sessionview project --exit-at-end` of the archive at `path`.
async fn project(db: &Db, path: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "project",
            "--exit-at-end",
            "--database-url",
            db.url(),
            "--source",
        ])
        .arg(format!("file://{}", path.display()))
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

/// Writes `lines` (raw bytes each) as an NDJSON archive.
fn archive(lines: &[Vec<u8>]) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("events.ndjson");
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

mod tempdir {
    /// A directory removed when dropped.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Dir {
        pub(crate) fn new() -> Self {
            let p = std::env::temp_dir().join(format!("sv-hostile-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x5e55_0000_0000_4000_8000_0000_0000_0000 | n)
}

/// An envelope as JSON (callers may break it before serializing).
fn envelope(event_type: &str, session: Uuid, kernel: Option<Uuid>, payload: Value) -> Value {
    let mut v = json!({
        "event_id": Uuid::new_v4(), "event_type": event_type, "schema_version": 1,
        "occurred_at": "2026-01-05T08:00:00.000000+00:00", "session_id": session,
        "payload": payload,
    });
    if let Some(k) = kernel {
        v["kernel_id"] = json!(k);
    }
    v
}

/// `session_enqueued` of `session` (master `session`, with `slots`) plus `workers`.
fn enqueue(session: Uuid, name: &str, master_slots: &str, workers: &[Uuid]) -> Value {
    let mut kernels = vec![json!({
        "kernel_id": session, "role": "master", "occupied_slots": {"cpu": master_slots}
    })];
    kernels.extend(
        workers
            .iter()
            .map(|w| json!({"kernel_id": w, "role": "worker", "occupied_slots": {"cpu": "1"}})),
    );
    envelope(
        "session_enqueued",
        session,
        None,
        json!({
            "name": name, "type": "batch", "image": "python:3.8", "registry": "cr.backend.ai",
            "domain_name": "default", "group_name": "g", "user_email": "u@example.com",
            "access_key": "AKIAHOSTILE", "group_id": id(0xFFF0), "user_id": id(0xFFF1),
            "kernels": kernels,
        }),
    )
}

fn line(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn labels(letters: &[StoredDeadLetter]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in letters {
        *m.entry(d.label.clone()).or_default() += 1;
    }
    m
}

/// Every class of "Hostile input" in one archive, around valid events that must all apply: on
/// both backends, in one batch and one event per batch (kernel-id reuse within a batch and
/// across batches).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_are_dead_letters_and_projection_goes_on() {
    let (a, worker, b, c, d, n, s) = (id(1), id(2), id(3), id(4), id(5), id(6), id(7));
    let mut lines = vec![line(&enqueue(a, "a", "0.5", &[worker]))];
    // U+0000 in the envelope, in a payload string, in a key deep inside a stat, in a session's name.
    let mut nul_type = envelope("kernel_preparing", a, Some(a), json!({}));
    nul_type["event_type"] = json!("kernel_preparing\u{0}");
    lines.push(line(&nul_type));
    lines.push(line(&envelope(
        "kernel_error",
        a,
        Some(a),
        json!({"reason": "x\u{0}y"}),
    )));
    lines.push(line(&envelope(
        "kernel_stat_sync",
        a,
        Some(a),
        json!({"stat": {"a": {"b": [{"c": {"\u{0}": 1}}]}}}),
    )));
    lines.push(line(&enqueue(n, "evil\u{0}name", "1", &[])));
    // Malformed: a lone surrogate, 65 levels of nesting, bytes that are not UTF-8.
    lines.push(
        br#"{"event_id":"00000000-0000-4000-8000-000000000001","event_type":"kernel_error","schema_version":1,"occurred_at":"2026-01-05T08:00:00+00:00","session_id":"5e550000-0000-4000-8000-000000000001","kernel_id":"5e550000-0000-4000-8000-000000000001","payload":{"reason":"\ud800"}}"#.to_vec(),
    );
    let mut deep = json!(1);
    for _ in 0..65 {
        deep = json!([deep]);
    }
    lines.push(line(&envelope(
        "kernel_stat_sync",
        a,
        Some(a),
        json!({"stat": {"deep": deep}}),
    )));
    lines.push(b"{\"event_type\": \"kernel_error\", \"x\": \"\xff\xfe\"}".to_vec());
    // Larger than --max-event-bytes.
    lines.push(line(&envelope(
        "kernel_stat_sync",
        a,
        Some(a),
        json!({"stat": {"blob": "z".repeat(5000)}}),
    )));
    // A sum of slots that would need rounding: 0.5 + 28 nines.
    lines.push(line(&envelope(
        "kernel_started",
        a,
        Some(worker),
        json!({"container_id": "c1", "occupied_slots": {"cpu": "9".repeat(28)}}),
    )));
    lines.push(line(&enqueue(s, "s", "0.4", &[]).tap(|v| {
        v["payload"]["kernels"][0]["occupied_slots"]["cpu"] = json!("9".repeat(28));
        v["payload"]["kernels"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kernel_id": id(8), "role": "worker", "occupied_slots": {"cpu": "0.4"}}));
    })));
    // Kernel ids of another session: A's worker, and A's master as a worker.
    lines.push(line(&enqueue(b, "b", "1", &[worker])));
    lines.push(line(&enqueue(c, "c", "1", &[a])));
    // Valid events after all of it.
    lines.push(line(&envelope(
        "kernel_started",
        a,
        Some(a),
        json!({"container_id": "c0"}),
    )));
    lines.push(line(&enqueue(d, "d", "2", &[])));
    let (_dir, path) = archive(&lines);

    for batch_size in ["1", "20000"] {
        for db in Db::both().await {
            let what = format!("{} with batches of {batch_size}", db.backend());
            let out = project(
                &db,
                &path,
                &["--max-event-bytes", "4096", "--batch-size", batch_size],
            )
            .await;
            check(&format!("project ({what})"), &out);
            let (sessions, letters, counts) = contents(&db).await;
            let ids: Vec<Uuid> = sessions.iter().map(|s| s.session.id).collect();
            assert_eq!(ids, [a, d], "{what}: only the valid sessions");
            let sa = &sessions[0];
            assert_eq!(sa.session.status.as_str(), "RUNNING", "{what}");
            assert_eq!(sa.kernels.len(), 2, "{what}: B and C took nothing from A");
            assert_eq!(
                sa.session.occupied_slots.to_json(),
                json!({"cpu": "1.5"}),
                "{what}: never rounded, never replaced"
            );
            let expected: BTreeMap<String, usize> = [
                ("nul_character", 4),
                ("malformed", 3),
                ("oversized", 1),
                ("bad_slots", 2),
                ("kernel_conflict", 2),
            ]
            .into_iter()
            .map(|(l, n)| (l.to_owned(), n))
            .collect();
            assert_eq!(labels(&letters), expected, "{what}");
            for l in &letters {
                assert!(
                    !l.reason.contains('\0') && l.reason.len() <= 4096,
                    "{what}: {l:?}"
                );
                assert!(l.event_type.as_deref().is_none_or(|t| !t.contains('\0')));
            }
            let oversized = letters.iter().find(|l| l.label == "oversized").unwrap();
            assert!(
                oversized.reason.contains("more than the limit of 4096")
                    && oversized.reason.contains("SHA-256"),
                "{what}: {}",
                oversized.reason
            );
            assert_eq!(counts.parked_events, 0, "{what}");
            assert_eq!(counts.dead_letters as usize, letters.len());
            db.drop().await;
        }
    }
}

/// A small helper to edit a value in place while building it.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// A refusal the projector has never seen (a constraint this test adds) dead-letters exactly the
/// event that causes it, with the database's message; the rest of its batch is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_refusal_is_isolated_to_its_event() {
    let mut lines = Vec::new();
    for i in 0..300u128 {
        let name = if i == 137 { "forbidden" } else { "fine" };
        lines.push(line(&enqueue(id(1000 + i), name, "1", &[])));
    }
    let (_dir, path) = archive(&lines);
    // One batch; and batches of 50, where the batch folded on top of the refused one while it
    // was committing must be folded again (its messages must not be skipped).
    for batch_size in ["20000", "50"] {
        for db in Db::both().await {
            let what = format!("{} with batches of {batch_size}", db.backend());
            let out = Command::new(BIN)
                .args(["migrate", "--database-url", db.url()])
                .output()
                .await
                .unwrap();
            check("migrate", &out);
            match &db {
                Db::Postgres(_) => {
                    db.exec(
                    "ALTER TABLE sessions ADD CONSTRAINT no_forbidden CHECK (name <> 'forbidden')",
                )
                .await;
                }
                Db::Sqlite(_) => {
                    db.exec(
                        "CREATE TRIGGER no_forbidden BEFORE INSERT ON sessions \
                     WHEN NEW.name = 'forbidden' BEGIN SELECT RAISE(ABORT, 'no_forbidden'); END",
                    )
                    .await;
                }
            }
            let out = project(&db, &path, &["--batch-size", batch_size]).await;
            check(&format!("project ({what})"), &out);
            let (sessions, letters, counts) = contents(&db).await;
            assert_eq!(sessions.len(), 299, "{what}: every other session applied");
            assert_eq!(counts.seen_events, 300, "{what}: every event accounted for");
            assert_eq!(letters.len(), 1, "{what}: {letters:?}");
            let l = &letters[0];
            assert_eq!(
                (l.label.as_str(), l.session_id, l.offset),
                ("refused", Some(id(1137)), 137),
                "{what}"
            );
            assert!(l.reason.contains("no_forbidden"), "{what}: {}", l.reason);
            db.drop().await;
        }
    }
}

/// An event whose session never comes waits `--park-retention`, then is a dead letter.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_parked_events_expire() {
    let orphan = id(0xDEAD);
    let lines = [
        line(&envelope(
            "kernel_preparing",
            orphan,
            Some(orphan),
            json!({}),
        )),
        line(&enqueue(id(9), "ok", "1", &[])),
    ];
    let (_dir, path) = archive(&lines);
    for db in Db::both().await {
        let what = db.backend();
        // Kept for a day: still parked after the run.
        check(
            "project",
            &project(&db, &path, &["--park-retention", "1d"]).await,
        );
        let (_, letters, counts) = contents(&db).await;
        assert_eq!((counts.parked_events, letters.len()), (1, 0), "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Run again (nothing new to read) with a retention the event has outlived.
        check(
            "project",
            &project(&db, &path, &["--park-retention", "10ms"]).await,
        );
        let (sessions, letters, counts) = contents(&db).await;
        assert_eq!(counts.parked_events, 0, "{what}");
        assert_eq!(sessions.len(), 1, "{what}");
        assert_eq!(letters.len(), 1, "{what}");
        assert_eq!(
            (letters[0].label.as_str(), letters[0].session_id),
            ("parked_expired", Some(orphan)),
            "{what}"
        );
        db.drop().await;
    }
}

/// A batch run started while a member that died still holds partitions: it waits for them and
/// exits 0 only with the whole stream applied; told to wait less than the dead member's
/// session, it fails and names the partitions.
#[tokio::test(flavor = "multi_thread")]
async fn exit_at_end_waits_for_partitions_a_dead_member_holds() {
    let cfg = sim_config(400, 2001);
    let topic = unique_topic("deadmember");
    publish(&topic, &cfg).await;
    let (expected, _) = model(&cfg);
    let db = TestDb::new().await;
    let store = db.store().await;
    let group = format!("g-{}", Uuid::new_v4().simple());
    // A member that joins, applies something, and dies without leaving the group.
    let kill_dead_member = async || {
        let mut member = spawn_project(&db, &topic, &group, &["--batch-size", "50"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while progress(&store, &topic).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the member never committed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        member.start_kill().unwrap();
        member.wait().await.unwrap();
    };

    // Told to wait 1 s for partitions another member holds (its session lasts 6 s): refused.
    kill_dead_member().await;
    let out = project_command(
        &db,
        &topic,
        &group,
        &["--exit-at-end", "--exit-at-end-timeout", "1s"],
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no progress") && stderr.contains("held by another member"),
        "{stderr}"
    );

    // With the default wait it outlasts the dead member's session and finishes the stream.
    let started = std::time::Instant::now();
    kill_dead_member().await;
    let out = project_command(&db, &topic, &group, &["--exit-at-end"])
        .output()
        .await
        .unwrap();
    check("project --exit-at-end after a dead member", &out);
    assert_tables_equal(&store, &expected).await;
    assert_eq!(
        progress(&store, &topic).await as usize,
        messages(&cfg).len(),
        "exited 0 only when every partition was at its end (after {:?})",
        started.elapsed()
    );
    db.drop().await;
}

/// `sessionview serve` on a fresh database with a superadmin keypair, until dropped.
struct Served {
    host: String,
    /// Where /readyz and /metrics are (the API's listener unless --metrics-listen).
    ops: String,
    ak: String,
    sk: String,
    _child: tokio::process::Child,
}

async fn serve(db: &TestDb, extra: &[&str]) -> Served {
    let (ak, sk) = create_superadmin(&db.url).await;
    let separate_ops = extra.contains(&"--metrics-listen");
    let serving = Listening::spawn(
        serve_command(&db.url)
            .args(extra)
            .env("SESSIONVIEW_LOG", "error"),
        if separate_ops { 2 } else { 1 },
        "serve",
    )
    .await;
    let host = serving.host("API");
    // /readyz is on the operational listener when there is one.
    let ops = if separate_ops {
        serving.host("metrics")
    } else {
        host.clone()
    };
    wait_ready(&reqwest::Client::new(), &format!("http://{ops}/readyz")).await;
    let child = serving.child;
    Served {
        host,
        ops,
        ak,
        sk,
        _child: child,
    }
}

impl Served {
    async fn query(&self, body: &Value) -> (u16, Value) {
        let resp = signed_graphql(&self.host, &self.ak, &self.sk, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A small query must still be answered.
    async fn assert_alive(&self) {
        let (status, v) = self
            .query(
                &json!({"query": "{ compute_session_list(limit: 1, offset: 0) { total_count } }"}),
            )
            .await;
        assert_eq!(
            (status, &v["compute_session_list"]["total_count"]),
            (200, &json!(0)),
            "{v}"
        );
    }
}

/// The message of a 400 graphql-error problem.
fn refusal(status: u16, v: &Value) -> String {
    assert_eq!(status, 400, "{v}");
    v["data"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Documents whose cost would explode are refused before any of it is spent, each refusal
/// naming its limit, and the server keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn costly_documents_are_refused_by_name() {
    let db = TestDb::new().await;
    let srv = serve(&db, &[]).await;
    // 5,000 nested brackets: once a stack overflow that killed the process.
    let deep = format!(
        "{{ compute_session(id: {}\"x\"{}) {{ id }} }}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let (s, v) = srv.query(&json!({ "query": deep })).await;
    assert!(refusal(s, &v).contains("max nesting 64"), "{v}");
    // Deep variables (object values of a variable the query never uses still are parsed).
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({ "a": nested });
    }
    let (s, v) = srv
        .query(&json!({"query": "query Q($v: JSONString) { compute_session_list(limit: 1, offset: 0) { total_count } }", "variables": {"v": nested}}))
        .await;
    assert!(refusal(s, &v).contains("max nesting 64"), "{v}");
    // 24 fragments, each spreading the previous twice: once 3.7 s of CPU; 40 would be days.
    let mut chain = String::from(
        "query C { ...F0 } fragment F0 on Queries { compute_session_list(limit: 1, offset: 0) { total_count } }",
    );
    for i in 1..=40 {
        chain.push_str(&format!(
            " fragment F{i} on Queries {{ ...F{p} ...F{p} }}",
            p = i - 1
        ));
    }
    chain = chain.replace("query C { ...F0 }", "query C { ...F40 }");
    let (s, v) = srv.query(&json!({ "query": chain })).await;
    assert!(refusal(s, &v).contains("max fields"), "{v}");
    // 5,000 aliased root fields (300 KB): once 4.6 s that delayed everyone; refused unparsed.
    let flood = |n: usize| -> String {
        (0..n)
            .map(|i| format!("a{i}: compute_session_list(limit: 1, offset: 0) {{ total_count }} "))
            .collect()
    };
    let (s, v) = srv
        .query(&json!({ "query": format!("{{ {} }}", flood(5000)) }))
        .await;
    assert!(refusal(s, &v).contains("max query bytes 65536"), "{v}");
    // 65 of them fit the length, not the root-field cap.
    let (s, v) = srv
        .query(&json!({ "query": format!("{{ {} }}", flood(65)) }))
        .await;
    assert!(refusal(s, &v).contains("max root fields 64"), "{v}");
    // A huge offset is a scan.
    let (s, v) = srv
        .query(&json!({"query": "{ compute_session_list(limit: 1, offset: 2000000000) { total_count } }"}))
        .await;
    assert!(refusal(s, &v).contains("--max-offset"), "{v}");
    srv.assert_alive().await;
    db.drop().await;
}

/// Slow and half-open clients are cut off, a connection flood is capped, and neither keeps a
/// signed caller out for longer than the timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_half_open_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let srv = serve(
        &db,
        &[
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-connections",
            "64",
        ],
    )
    .await;
    // 60 connections that send half a request header, and never the rest.
    let mut half_open = Vec::new();
    for _ in 0..60 {
        let mut c = tokio::net::TcpStream::connect(&srv.host).await.unwrap();
        c.write_all(b"POST /admin/graphql HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half_open.push(c);
    }
    // Beyond the cap: closed at once, without an answer.
    let mut extra = Vec::new();
    for _ in 0..10 {
        extra.push(tokio::net::TcpStream::connect(&srv.host).await.unwrap());
    }
    let mut refused = 0;
    for c in &mut extra {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), c.read(&mut buf)).await
        {
            refused += 1;
        }
    }
    // 64 allowed, 60 taken: at least 6 of the 10 beyond are closed (5, should a connection of
    // the readiness check still hold its permit).
    assert!(
        refused >= 5,
        "only {refused} of 10 connections beyond the cap were closed"
    );
    // The half-open ones are closed by the header timeout (hyper answers 408 or just closes).
    for c in &mut half_open {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a half-open connection was kept open");
    }
    // A client that connects and says nothing at all is closed by the idle timeout.
    let mut silent = tokio::net::TcpStream::connect(&srv.host).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        silent.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "a silent connection was kept open");
    srv.assert_alive().await;
    db.drop().await;
}

/// Client-chosen operation names never become metric labels unless allow-listed, and /metrics
/// can live on its own listener.
#[tokio::test(flavor = "multi_thread")]
async fn metric_labels_stay_bounded() {
    let db = TestDb::new().await;
    let srv = serve(
        &db,
        &[
            "--metrics-operation",
            "Dashboard",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let ops = &srv.ops;
    for i in 0..50 {
        let q = format!(
            "query Op{i} {{ compute_session_list(limit: 1, offset: 0) {{ total_count }} }}"
        );
        srv.query(&json!({ "query": q, "operationName": format!("Op{i}") }))
            .await;
    }
    srv.query(&json!({"query": "query Dashboard { compute_session_list(limit: 1, offset: 0) { total_count } }", "operationName": "Dashboard"}))
        .await;
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sessionview_query_requests_total{"))
        .filter_map(|l| l.split("operation=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(labels, ["Dashboard", "other"].into(), "{metrics}");
    // Not on the API's listener.
    let api = reqwest::get(format!("http://{}/metrics", srv.host))
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    db.drop().await;
}

/// When the database cannot answer, a signed request gets 503 with Retry-After, not 401.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_503_not_401() {
    let db = TestDb::new().await;
    let srv = serve(&db, &["--keypair-cache-ms", "0"]).await;
    srv.assert_alive().await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    admin_exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin_exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let body = json!({"query": "{ compute_session_list(limit: 1, offset: 0) { total_count } }"});
    let resp = signed_graphql(&srv.host, &srv.ak, &srv.sk, &body).await;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").is_some();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 503, "{v}");
    assert!(retry_after, "{v}");
    assert_eq!(
        v["type"], "https://api.backend.ai/probs/service-unavailable",
        "{v}"
    );
    admin_exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    drop(srv);
    db.drop().await;
}

/// A session of 10,000 kernels and 10,000 dependencies, every kernel started: projected on both
/// backends, exactly (the cost of each event stays linear in the session; the benchmark
/// `sessionview-bench hostile` measures the time).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_of_ten_thousand_kernels_and_dependencies() {
    const N: u128 = 10_000;
    let big = id(0xB16);
    let workers: Vec<Uuid> = (1..N).map(|i| id(0x10_0000 + i)).collect();
    let mut enq = enqueue(big, "big", "1", &workers);
    enq["payload"]["dependencies"] = json!((0..N).map(|i| id(0x20_0000 + i)).collect::<Vec<_>>());
    let mut lines = vec![line(&enq)];
    for k in std::iter::once(big).chain(workers.iter().copied()) {
        lines.push(line(&envelope(
            "kernel_started",
            big,
            Some(k),
            json!({"container_id": "c", "occupied_slots": {"cpu": "2"}}),
        )));
    }
    let (_dir, path) = archive(&lines);
    for db in Db::both().await {
        let what = db.backend();
        let out = project(&db, &path, &["--max-event-bytes", "4194304"]).await;
        check(&format!("project ({what})"), &out);
        let (sessions, letters, _) = contents(&db).await;
        assert!(letters.is_empty(), "{what}: {letters:?}");
        let s = &sessions[0];
        assert_eq!(s.kernels.len(), N as usize, "{what}");
        assert_eq!(s.session.dependencies.len(), N as usize, "{what}");
        assert_eq!(
            s.session.occupied_slots.to_json(),
            json!({"cpu": "20000"}),
            "{what}"
        );
        assert!(
            s.kernels.iter().all(|k| k.status.as_str() == "RUNNING"),
            "{what}"
        );
        db.drop().await;
    }
}

/// Mutates a valid envelope the ways a buggy producer or an attacker would.
fn mutate(bytes: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.random_range(0..8) {
        // A byte flipped anywhere (often invalid JSON or invalid UTF-8, sometimes valid).
        0 => {
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
        }
        // U+0000 or a lone surrogate inside some string.
        1 | 2 => {
            let quotes: Vec<usize> = b
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'"')
                .map(|(i, _)| i)
                .collect();
            let at = quotes[rng.random_range(0..quotes.len())] + 1;
            let esc: &[u8] = if rng.random_bool(0.5) {
                b"\\u0000"
            } else {
                b"\\udc00"
            };
            b.splice(at..at, esc.iter().copied());
        }
        // Cut short.
        3 => b.truncate(rng.random_range(0..b.len())),
        // Random bytes.
        4 => {
            b = (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        }
        // The payload wrapped in 70 arrays.
        5 => {
            let mut v: Value = serde_json::from_slice(&b).unwrap();
            let mut p = v["payload"].take();
            for _ in 0..70 {
                p = json!([p]);
            }
            v["payload"] = p;
            b = v.to_string().into_bytes();
        }
        // A huge number or string in a stat.
        6 => {
            let mut v: Value = serde_json::from_slice(&b).unwrap();
            v["payload"]["stat"] = json!({"n": 1e308, "s": "x".repeat(100), "i": u64::MAX});
            b = v.to_string().into_bytes();
        }
        // Another session's kernel id in an enqueue, or garbage where an id goes.
        _ => {
            let mut v: Value = serde_json::from_slice(&b).unwrap();
            v["kernel_id"] = json!(if rng.random_bool(0.5) {
                "not-a-uuid"
            } else {
                ""
            });
            b = v.to_string().into_bytes();
        }
    }
    b
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// Generated hostile streams: valid streams with a share of their messages mutated, projected
    /// by the real projector (archive → decode → fold → commit) into both backends. It never
    /// panics or halts, and the tables are exactly the pure fold's of the same stream: every valid
    /// event applied, every other one a dead letter.
    #[test]
    fn generated_hostile_streams_never_halt_the_projector(seed in 0u64..u64::MAX, rate in 0.0f64..0.4) {
        use rand::SeedableRng;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let lines: Vec<Vec<u8>> = messages(&sim_config(40, seed))
                .into_iter()
                .map(|m| if rng.random_bool(rate) { mutate(&m.bytes, &mut rng) } else { m.bytes })
                // A mutation may add a line break; one line stays one message.
                .map(|b| b.into_iter().map(|c| if c == b'\n' { b' ' } else { c }).collect())
                .collect();
            let (_dir, path) = archive(&lines);
            let mut fold = sessionview_projection::Fold::new();
            for (i, l) in lines.iter().enumerate() {
                // As the archive source reads a line: trimmed, blank ones skipped.
                let l = l.trim_ascii();
                if l.is_empty() {
                    continue;
                }
                let position = sessionview_projection::Position { partition: 0, offset: i as i64 };
                fold.apply_bytes("x", position, l);
            }
            let mut expected: Vec<SessionState> = fold.sessions().values().cloned().collect();
            expected.sort_by_key(|s| s.session.id);
            for db in Db::both().await {
                let out = project(&db, &path, &[]).await;
                check(&format!("project ({}, seed {seed})", db.backend()), &out);
                let (sessions, letters, _) = contents(&db).await;
                assert_eq!(sessions, expected, "{} seed {seed}", db.backend());
                assert_eq!(letters.len(), fold.dead_letters().len(), "{} seed {seed}", db.backend());
                db.drop().await;
            }
        });
    }
}

/// A random GraphQL-ish document: tokens of the language in random order and nesting, or a
/// valid query with random damage.
fn random_document(rng: &mut impl Rng) -> String {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "(",
        ")",
        ":",
        "...",
        "fragment",
        "F",
        "on",
        "Queries",
        "query",
        "$v",
        "\"s\"",
        "\"\"\"b\"\"\"",
        "#c\n",
        "1",
        "-1",
        "2147483648",
        "1e999",
        "null",
        "true",
        "compute_session_list",
        "compute_session",
        "limit:",
        "offset:",
        "id",
        "containers",
        "items",
        "total_count",
        "dependencies",
        "@skip(if: true)",
        "a:",
        ",",
        "!",
        "=",
        "__typename",
        "__schema",
        "\\u0000",
        "\u{0}",
    ];
    if rng.random_bool(0.3) {
        let mut q = String::from(
            "query Q { compute_session_list(limit: 3, offset: 0) { total_count items { id containers { id } dependencies { id } } } }",
        );
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..q.len());
            if q.is_char_boundary(at) {
                q.insert_str(at, TOKENS[rng.random_range(0..TOKENS.len())]);
            }
        }
        return q;
    }
    let n = rng.random_range(0..400);
    (0..n)
        .map(|_| TOKENS[rng.random_range(0..TOKENS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Random documents through the real server: every one is answered (200 or 400, within the
/// server's own request deadline), none crashes it.
#[tokio::test(flavor = "multi_thread")]
async fn random_documents_are_answered_and_never_crash_the_server() {
    use rand::SeedableRng;
    let db = TestDb::new().await;
    let srv = serve(&db, &["--request-timeout", "5s"]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_202);
    for i in 0..300 {
        let doc = random_document(&mut rng);
        let variables = if rng.random_bool(0.2) {
            json!({"v": "x"})
        } else {
            Value::Null
        };
        let body = json!({"query": doc, "variables": variables});
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            signed_graphql(&srv.host, &srv.ak, &srv.sk, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("document {i} was not answered: {doc}"));
        let status = resp.status().as_u16();
        assert!(
            matches!(status, 200 | 400),
            "document {i} got {status}: {doc}"
        );
    }
    srv.assert_alive().await;
    db.drop().await;
}
