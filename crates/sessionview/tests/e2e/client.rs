//! The real Backend.AI client of the API v5.20191215 era, the unmodified `backend.ai-client`
//! 20.3.10 CLI from PyPI (installed by `scripts/tools/backendai-client`, which `scripts/test`
//! runs), against `sessionview project` (Kafka → PostgreSQL) and `sessionview serve`: it follows
//! a session's events while the projector applies them, lists sessions and shows one.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use sessionview_testkit::events::Story;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The client's `backend.ai` command: `$SESSIONVIEW_TEST_BACKENDAI`, else where
/// `scripts/tools/backendai-client` installs it.
fn backendai() -> PathBuf {
    let path = std::env::var_os("SESSIONVIEW_TEST_BACKENDAI")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.sessionview/tools/backend.ai-client-20.3.10/bin/backend.ai")
        });
    assert!(
        path.exists(),
        "the Backend.AI client is not installed at {}: run scripts/tools/backendai-client \
         (scripts/test does), or set SESSIONVIEW_TEST_BACKENDAI",
        path.display()
    );
    path
}

/// The client configured, through its own environment variables, for `host` as `ak`.
fn client(host: &str, home: &std::path::Path, ak: &str, sk: &str) -> Command {
    let mut cmd = Command::new(backendai());
    cmd.env("HOME", home)
        .env("BACKEND_ENDPOINT", format!("http://{host}"))
        .env("BACKEND_ENDPOINT_TYPE", "api")
        .env("BACKEND_ACCESS_KEY", ak)
        .env("BACKEND_SECRET_KEY", sk)
        // Each printed event reaches the pipe when it is printed.
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    cmd
}

/// One event as `backend.ai events` prints it: `ESC[36mESC[1m<name>ESC[0m <dict>`.
#[derive(Debug)]
struct Printed {
    name: String,
    data: String,
}

fn parse_printed(line: &str) -> Option<Printed> {
    let rest = line.strip_prefix("\x1b[36m\x1b[1m")?;
    let (name, data) = rest.split_once("\x1b[0m ")?;
    Some(Printed {
        name: name.to_owned(),
        data: data.to_owned(),
    })
}

/// `backend.ai events ARGS` running, its printed events arriving on a channel.
struct Listener {
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<Printed>,
}

impl Listener {
    fn spawn(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .arg("events")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            _child: child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads printed events until one named `last` (60 s at most); anything else the client
    /// prints (an error) fails the test.
    async fn until(&mut self, last: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.seen.iter().any(|p| p.name == last) {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {last} within 60 s; printed: {:?}", self.seen))
                .unwrap_or_else(|| panic!("the client exited; printed: {:?}", self.seen));
            let printed = parse_printed(&line)
                .unwrap_or_else(|| panic!("the client printed {line:?} (seen {:?})", self.seen));
            self.seen.push(printed);
        }
    }

    fn names(&self) -> Vec<&str> {
        self.seen.iter().map(|p| p.name.as_str()).collect()
    }
}

/// The open event streams a server reports on `/metrics`.
async fn open_streams(host: &str) -> f64 {
    let text = reqwest::get(format!("http://{host}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sessionview_event_streams "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Acceptance 1 of the live surface: `backend.ai events NAME -o OWNER` of the real 20.3.10 client
/// receives the session's events in order while the projector applies them, one listening to `*`
/// as another user receives only that user's, and `backend.ai ps` and `backend.ai admin session`
/// of the same client read what was projected.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_client_follows_lists_and_shows_sessions() {
    let db = TestDb::new().await;
    let topic = unique_topic("client");
    let (alice_ak, alice_sk) = create_keypair(&db.url, "alice@example.com", "user").await;
    let (bob_ak, bob_sk) = create_keypair(&db.url, "bob@example.com", "user").await;
    let mut mine = Story::new(Uuid::new_v4(), "mysession", &alice_ak, "default");
    let mut other = Story::new(Uuid::new_v4(), "othersession", &alice_ak, "default");
    let mut bobs = Story::new(Uuid::new_v4(), "mysession", &bob_ak, "default");

    // The topic exists (with bob's first event) before the projector subscribes to it.
    produce(&topic, &[bobs.enqueued()]).await;
    let _project = spawn_project(&db, &topic, "client", &[]);
    let (_serve, host) = serve_ready(&db.url).await;
    let home = std::env::temp_dir().join(format!("sv-client-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    // Bob's `mysession` was enqueued before anyone listened: nobody is told of it.
    wait_for("bob's session projected", 60, async || {
        let r = signed_graphql(
            &host,
            &bob_ak,
            &bob_sk,
            &serde_json::json!({"query": "{ compute_session_list(limit: 5, offset: 0) { total_count } }"}),
        )
        .await;
        let v: serde_json::Value = r.json().await.unwrap();
        v["compute_session_list"]["total_count"] == 1
    })
    .await;

    let mut alice = Listener::spawn(
        client(&host, &home, &alice_ak, &alice_sk),
        &["mysession", "-o", &alice_ak],
    );
    let mut bob = Listener::spawn(client(&host, &home, &bob_ak, &bob_sk), &["*"]);
    wait_for("both clients' streams open", 60, async || {
        open_streams(&host).await >= 2.0
    })
    .await;

    produce(
        &topic,
        &[
            mine.enqueued(),
            other.enqueued(),
            mine.session(
                "session_scheduled",
                serde_json::json!({"scaling_group": "default", "agents": {mine.session.to_string(): "i-agent1"}}),
            ),
            mine.kernel("kernel_preparing", serde_json::json!({})),
            mine.kernel("kernel_pulling", serde_json::json!({"image": "python:3.8"})),
            mine.kernel("kernel_creating", serde_json::json!({})),
            other.kernel("kernel_started", serde_json::json!({"container_id": "c2"})),
            mine.kernel("kernel_started", serde_json::json!({"container_id": "c1"})),
            mine.kernel("kernel_terminating", serde_json::json!({"reason": "user-requested"})),
            mine.kernel(
                "kernel_terminated",
                serde_json::json!({"reason": "user-requested", "exit_code": 0}),
            ),
            // Bob's last event follows all of alice's: when he is told of it, every one of
            // hers has been committed (one partition) and would have reached him if leaked.
            bobs.kernel("kernel_cancelled", serde_json::json!({"reason": "no resources"})),
        ],
    )
    .await;

    alice.until("session_terminated").await;
    assert_eq!(
        alice.names(),
        [
            "session_enqueued",
            "session_scheduled",
            "kernel_preparing",
            "kernel_pulling",
            "kernel_creating",
            "kernel_started",
            "session_started",
            "kernel_terminating",
            "kernel_terminated",
            "session_terminated",
        ],
        "alice's events of mysession, in order"
    );
    let session_id = mine.session.to_string();
    for p in &alice.seen {
        assert!(
            p.data.contains(&format!("'sessionId': '{session_id}'"))
                && p.data.contains("'sessionName': 'mysession'")
                && p.data.contains(&format!("'ownerAccessKey': '{alice_ak}'")),
            "{p:?}"
        );
    }
    let terminated = alice.seen.iter().find(|p| p.name == "kernel_terminated");
    assert!(
        terminated.is_some_and(|p| p.data.contains("'reason': 'user-requested'")
            && p.data.contains("'clusterRole': 'master'")),
        "{terminated:?}"
    );

    bob.until("session_cancelled").await;
    assert_eq!(bob.names(), ["kernel_cancelled", "session_cancelled"]);
    for p in &bob.seen {
        assert!(
            p.data.contains(&format!("'ownerAccessKey': '{bob_ak}'"))
                && !p.data.contains(&alice_ak),
            "bob was told of {p:?}"
        );
    }

    // The same client's listing and detail commands read what was projected.
    let ps = client(&host, &home, &alice_ak, &alice_sk)
        .arg("ps")
        .output()
        .await
        .unwrap();
    check("backend.ai ps", &ps);
    let listed = String::from_utf8_lossy(&ps.stdout);
    assert!(listed.contains("othersession"), "{listed}");
    assert!(
        !listed.contains("mysession"),
        "terminated, not running: {listed}"
    );
    let shown = client(&host, &home, &alice_ak, &alice_sk)
        .args(["admin", "session", &session_id])
        .output()
        .await
        .unwrap();
    check("backend.ai admin session", &shown);
    let detail = String::from_utf8_lossy(&shown.stdout);
    for want in [
        "mysession",
        "TERMINATED",
        "user-requested",
        "python:3.8",
        "master",
    ] {
        assert!(detail.contains(want), "no {want:?} in\n{detail}");
    }
    assert!(
        !detail.contains("i-agent1"),
        "a container's agent is shown to superadmins only:\n{detail}"
    );
    // Bob cannot see alice's session, by list or by id.
    let bobs_ps = client(&host, &home, &bob_ak, &bob_sk)
        .args(["admin", "sessions", "--status", "ALL"])
        .output()
        .await
        .unwrap();
    check("backend.ai admin sessions (bob)", &bobs_ps);
    let bobs_list = String::from_utf8_lossy(&bobs_ps.stdout);
    assert!(
        !bobs_list.contains("othersession") && bobs_list.contains("CANCELLED"),
        "{bobs_list}"
    );
    let _ = std::fs::remove_dir_all(&home);
    db.drop().await;
}
