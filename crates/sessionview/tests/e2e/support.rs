//! Helpers for end-to-end tests: fresh databases and topics, running the real `sessionview`
//! binary, and the pure fold of the same stream to compare against.
//!
//! Needs a Kafka-protocol broker (`SESSIONVIEW_TEST_KAFKA`, default `127.0.0.1:9092`) and
//! PostgreSQL (`SESSIONVIEW_TEST_DATABASE_URL`, an administrative URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). `scripts/test` starts both.

use std::process::Output;
use std::time::Duration;

use sessionview_projection::{DeadLetter, Fold, Position, SessionState};
use sessionview_simulator::{SimConfig, SimMessage, Simulator};
use sessionview_store::PgStore;
use sessionview_store::prelude::*;
use tokio::process::{Child, Command};

/// The path of the binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sessionview");

pub(crate) fn brokers() -> String {
    std::env::var("SESSIONVIEW_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub(crate) use sessionview_testkit::PgDatabase as TestDb;

/// The store of a test database.
pub(crate) trait StoreOf {
    async fn store(&self) -> PgStore;
}

impl StoreOf for TestDb {
    async fn store(&self) -> PgStore {
        PgStore::connect(&self.url, 2).await.unwrap()
    }
}

/// A topic name no other test uses.
pub(crate) fn unique_topic(hint: &str) -> String {
    format!("sv-test-{hint}-{}", uuid::Uuid::new_v4().simple())
}

/// The simulator configuration `sessionview simulate` uses for these flags.
pub(crate) fn sim_config(sessions: u64, seed: u64) -> SimConfig {
    SimConfig {
        sessions,
        seed,
        ..SimConfig::default()
    }
}

fn sim_args(cfg: &SimConfig) -> Vec<String> {
    vec![
        "--sessions".into(),
        cfg.sessions.to_string(),
        "--seed".into(),
        cfg.seed.to_string(),
        "--duplicate-ratio".into(),
        cfg.duplicate_ratio.to_string(),
        "--early-ratio".into(),
        cfg.early_ratio.to_string(),
        "--poison-ratio".into(),
        cfg.poison_ratio.to_string(),
    ]
}

/// Asserts that a command succeeded, showing its output when it did not.
pub(crate) fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes the stream of `cfg` to a new 4-partition `topic` with `sessionview simulate`.
pub(crate) async fn publish(topic: &str, cfg: &SimConfig) {
    let out = Command::new(BIN)
        .arg("simulate")
        .args(sim_args(cfg))
        .args(["--partitions", "4", "--to"])
        .arg(format!("kafka://{}/{topic}", brokers()))
        .output()
        .await
        .unwrap();
    check("sessionview simulate", &out);
}

/// The `sessionview project` command for `topic` into `db` (add `--exit-at-end` to stop at the end).
pub(crate) fn project_command(db: &TestDb, topic: &str, group: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("project")
        .args(["--database-url", &db.url])
        .arg("--source")
        .arg(format!("kafka://{}/{topic}", brokers()))
        .args(["--group", group, "--session-timeout-ms", "6000"])
        .args(extra)
        .env("SESSIONVIEW_LOG", "warn,sessionview=info")
        .kill_on_drop(true);
    cmd
}

/// `sessionview project` with its operational listener (`--metrics-listen`) at port 0.
pub(crate) async fn spawn_project_listening(
    db: &TestDb,
    topic: &str,
    group: &str,
    extra: &[&str],
) -> Listening {
    let mut extra = extra.to_vec();
    extra.extend(["--metrics-listen", "127.0.0.1:0"]);
    let mut cmd = project_command(db, topic, group, &extra);
    Listening::spawn(
        cmd.stdout(std::process::Stdio::null()),
        1,
        &format!("project-{group}"),
    )
    .await
}

/// Runs `sessionview project` to the end of the topic.
pub(crate) async fn project_to_end(db: &TestDb, topic: &str, extra: &[&str]) -> Output {
    let mut extra = extra.to_vec();
    extra.push("--exit-at-end");
    let mut cmd = project_command(
        db,
        topic,
        &format!("g-{}", uuid::Uuid::new_v4().simple()),
        &extra,
    );
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("sessionview project did not reach the end within 300 s")
        .unwrap();
    check("sessionview project", &out);
    out
}

/// Runs `sessionview project` on the NDJSON archive at `path` into `db` (to its end).
pub(crate) async fn project_file(db: &TestDb, path: &std::path::Path) -> Output {
    let out = Command::new(BIN)
        .args(["project", "--database-url", &db.url, "--source"])
        .arg(format!("file://{}", path.display()))
        .output()
        .await
        .unwrap();
    check("sessionview project", &out);
    out
}

/// Starts `sessionview project` in the background.
pub(crate) fn spawn_project(db: &TestDb, topic: &str, group: &str, extra: &[&str]) -> Child {
    // Its log goes to $SESSIONVIEW_TEST_LOG_DIR/project-<group>.log when that is set.
    let stderr = match std::env::var_os("SESSIONVIEW_TEST_LOG_DIR") {
        Some(dir) => std::fs::File::create(std::path::Path::new(&dir).join(format!(
            "project-{topic}-{group}-{}.log",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )))
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null()),
        None => std::process::Stdio::null(),
    };
    project_command(db, topic, group, extra)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// The messages `cfg` generates, in publishing order.
pub(crate) fn messages(cfg: &SimConfig) -> Vec<SimMessage> {
    Simulator::new(cfg.clone()).collect()
}

/// What the pure fold makes of the stream of `cfg`: sessions ordered by id, and dead letters.
pub(crate) fn model(cfg: &SimConfig) -> (Vec<SessionState>, Vec<DeadLetter>) {
    let mut fold = Fold::new();
    for (i, m) in messages(cfg).iter().enumerate() {
        fold.apply_bytes(
            "model",
            Position {
                partition: 0,
                offset: i as i64,
            },
            &m.bytes,
        );
    }
    let dead = fold.dead_letters().to_vec();
    let mut sessions: Vec<_> = fold.sessions().values().cloned().collect();
    sessions.sort_by_key(|s| s.session.id);
    (sessions, dead)
}

/// Asserts that the database holds exactly `expected`, row by row.
pub(crate) async fn assert_tables_equal(store: &PgStore, expected: &[SessionState]) {
    let got = store.all_sessions().await.unwrap();
    assert_eq!(got.len(), expected.len(), "number of sessions");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.session, e.session, "session row {}", e.session.id);
        assert_eq!(
            g.kernels.len(),
            e.kernels.len(),
            "containers of {}",
            e.session.id
        );
        for (gk, ek) in g.kernels.iter().zip(&e.kernels) {
            assert_eq!(gk, ek, "container row {}", ek.id);
        }
    }
    assert_counts_match_rows(store).await;
}

/// The running session counts (list totals) equal the sessions counted row by row.
pub(crate) async fn assert_counts_match_rows(store: &PgStore) {
    let drift = store.session_count_drift("public").await.unwrap();
    assert!(
        drift.is_empty(),
        "session counts drifted (key, status, rows, kept): {drift:?}"
    );
}

/// Sum of stored next offsets of a source (progress indicator).
pub(crate) async fn progress(store: &PgStore, source: &str) -> i64 {
    store
        .positions(source)
        .await
        .map(|p| p.values().sum())
        .unwrap_or(0)
}

/// A local port nothing listens on (bound, then released): for a connection that must be
/// refused. Servers under test bind port 0 instead ([`Listening`]).
pub(crate) fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A child process that listens: started with its listen flags at port 0, it bound what the
/// kernel gave it and said so on stderr (`listening on ORIGIN: WHAT`, one line per listener).
/// Nothing is picked and released before the child binds, so no other process can take the port.
pub(crate) struct Listening {
    pub(crate) child: Child,
    /// `(what, host:port)` of each listener, in the order the child bound them.
    pub(crate) listeners: Vec<(String, String)>,
}

impl Listening {
    /// Spawns `cmd` and waits (60 s at most) for it to name `count` listeners. Its stderr goes on,
    /// line by line, for as long as it runs: to `$SESSIONVIEW_TEST_LOG_DIR/<label>-*.log` when
    /// that is set, else to the test's stderr.
    pub(crate) async fn spawn(cmd: &mut Command, count: usize, label: &str) -> Self {
        use std::io::Write;
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut log = std::env::var_os("SESSIONVIEW_TEST_LOG_DIR").and_then(|dir| {
            let name = format!(
                "{label}-{}.log",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            std::fs::File::create(std::path::Path::new(&dir).join(name)).ok()
        });
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match &mut log {
                    Some(f) => {
                        let _ = writeln!(f, "{line}");
                    }
                    None => eprintln!("{line}"),
                }
                if let Some((origin, what)) = line
                    .strip_prefix("listening on ")
                    .and_then(|rest| rest.split_once(": "))
                {
                    let host = origin.split_once("://").map_or(origin, |(_, h)| h);
                    let _ = tx.send((what.to_owned(), host.to_owned()));
                }
            }
        });
        let mut listeners = Vec::with_capacity(count);
        while listeners.len() < count {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(l)) => listeners.push(l),
                Ok(None) => panic!(
                    "the child exited before naming {count} listeners (it named {listeners:?})"
                ),
                Err(_) => panic!("the child named {listeners:?} of {count} listeners in 60 s"),
            }
        }
        Self { child, listeners }
    }

    /// The `host:port` of the listener whose description contains `what`.
    pub(crate) fn host(&self, what: &str) -> String {
        self.listeners
            .iter()
            .find(|(w, _)| w.contains(what))
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("no listener for {what:?} in {:?}", self.listeners))
    }
}

/// Waits until `ok` holds, checking every 100 ms; fails the test naming `what` after `secs`.
pub(crate) async fn wait_for(what: &str, secs: u64, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !ok().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (15 s at most) until `url` (a `/readyz`) answers with a success.
pub(crate) async fn wait_ready(client: &reqwest::Client, url: &str) {
    wait_for(url, 15, async || {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// `sessionview serve` of `database_url`, its API at port 0 (see [`Listening`]).
pub(crate) fn serve_command(database_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--database-url",
        database_url,
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd
}

/// `sessionview serve` of `database_url` at port 0, ready: the child and its `host:port`.
pub(crate) async fn serve_ready(database_url: &str) -> (Child, String) {
    let serving = Listening::spawn(&mut serve_command(database_url), 1, "serve").await;
    let host = serving.host("API");
    wait_ready(&reqwest::Client::new(), &format!("http://{host}/readyz")).await;
    (serving.child, host)
}

/// A GraphQL request to `POST /admin/graphql`, signed as Backend.AI clients sign it.
pub(crate) async fn signed_graphql(
    host: &str,
    ak: &str,
    sk: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    let headers =
        sessionview_query::auth::signed_headers(ak, sk, "POST", "/admin/graphql", host).unwrap();
    let mut request = reqwest::Client::new().post(format!("http://{host}/admin/graphql"));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.body(body.to_string()).send().await.unwrap()
}

/// `sessionview keypair create` (superadmin) against `database_url`: the access and secret key.
pub(crate) async fn create_superadmin(database_url: &str) -> (String, String) {
    create_keypair(database_url, "ops@example.com", "superadmin").await
}

/// `sessionview keypair create` of `email` with `role` (domain `default`) against
/// `database_url`: the access and secret key.
pub(crate) async fn create_keypair(
    database_url: &str,
    email: &str,
    role: &str,
) -> (String, String) {
    let out = Command::new(BIN)
        .args(["keypair", "create", "--database-url", database_url])
        .args(["--email", email, "--role", role])
        .output()
        .await
        .unwrap();
    check("sessionview keypair create", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_owned()
    };
    (field("access_key"), field("secret_key"))
}

/// Publishes `events` to partition 0 of `topic` (created with the broker's default of one
/// partition if it does not exist), in order, each delivered before the next is sent: the offset
/// each got.
pub(crate) async fn produce(topic: &str, events: &[Vec<u8>]) -> Vec<i64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let mut offsets = Vec::with_capacity(events.len());
    for e in events {
        let record = FutureRecord::<(), _>::to(topic).partition(0).payload(e);
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(err, _)| err)
            .unwrap();
        offsets.push(delivery.offset);
    }
    offsets
}

/// A running `sessionview demo` on SQLite in a fresh directory, its API at port 0.
pub(crate) struct Demo {
    pub(crate) child: Child,
    /// The API's `host:port`.
    pub(crate) host: String,
    /// The keypair it printed.
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    /// Holds its database and event archive.
    pub(crate) dir: std::path::PathBuf,
}

impl Demo {
    /// Starts the demo at `speed` simulated seconds per second and waits until it is ready.
    pub(crate) async fn start(speed: u32) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let dir = std::env::temp_dir().join(format!("sv-demo-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sqlite://{}", dir.join("demo.db").display());
        let serving = Listening::spawn(
            Command::new(BIN)
                .args([
                    "demo",
                    "--listen",
                    "127.0.0.1:0",
                    "--speed",
                    &speed.to_string(),
                ])
                // The demo's own variable; an operator's exported SESSIONVIEW_DATABASE_URL (here
                // one that would fail) is never the demo's database.
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
        let mut child = serving.child;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut ak, mut sk) = (None, None);
        while ak.is_none() || sk.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the demo prints its keypair within 60 s")
                .unwrap()
                .expect("the demo exited before printing its keypair");
            if let Some(v) = line.trim().strip_prefix("access key:") {
                ak = Some(v.trim().to_owned());
            }
            if let Some(v) = line.trim().strip_prefix("secret key:") {
                sk = Some(v.trim().to_owned());
            }
        }
        // The rest of its output is not read; it must not block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        wait_ready(&reqwest::Client::new(), &format!("http://{host}/readyz")).await;
        Self {
            child,
            host,
            access_key: ak.unwrap(),
            secret_key: sk.unwrap(),
            dir,
        }
    }
}
