//! Shared set-up for the query service's tests: a fresh PostgreSQL database holding a simulated
//! cluster plus the seed's example session, and keypairs for every role.

use sessionview_projection::{Fold, Position, SessionState};
use sessionview_simulator::{SimConfig, Simulator};
use sessionview_store::prelude::*;
use sessionview_store::{Advance, Commit, CommitOutcome, KeyPair, KeyPairAdmin, PgStore, Role};
use sessionview_testkit::PgDatabase;
use uuid::Uuid;

pub(crate) const SEED_SESSION: &str = "12c45b55-ce3c-418d-9c58-223bbba307f1";
pub(crate) const SEED_USER_AK: &str = "AKIASEEDUSER00000001";

pub(crate) struct Fixture {
    db: PgDatabase,
    pub url: String,
    pub store: PgStore,
    /// Every session in the database, by id.
    pub sessions: Vec<SessionState>,
    pub superadmin: KeyPair,
    /// Admin of the "default" domain.
    pub admin: KeyPair,
    /// A user of the "default" domain who owns sessions.
    pub user: KeyPair,
    pub inactive: KeyPair,
}

fn keypair(ak: &str, role: Role, domain: &str, email: &str, active: bool) -> KeyPair {
    KeyPair {
        access_key: ak.into(),
        secret_key: format!("secret-of-{ak}-0123456789abcdefghijklmnop"),
        user_id: Uuid::new_v4(),
        user_email: email.into(),
        domain_name: domain.into(),
        role,
        is_active: active,
        created_at: chrono::Utc::now(),
    }
}

/// The seed's example session: 3 containers on 3 agents, running since the seed's timestamp.
fn seed_session_events() -> Vec<Vec<u8>> {
    let s = SEED_SESSION;
    let k2 = "12c45b55-ce3c-418d-9c58-223bbba307f2";
    let k3 = "12c45b55-ce3c-418d-9c58-223bbba307f3";
    let env = |n: u32, ty: &str, at: &str, kernel: Option<&str>, payload: serde_json::Value| {
        serde_json::json!({
            "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "event_type": ty, "schema_version": 1, "occurred_at": at,
            "session_id": s, "kernel_id": kernel, "payload": payload,
        })
        .to_string()
        .into_bytes()
    };
    let slots = serde_json::json!({"cpu": "1", "mem": "1073741824"});
    vec![
        env(
            1,
            "session_enqueued",
            "2020-02-16T15:40:00.000000+00:00",
            None,
            serde_json::json!({
                "name": "mysession", "type": "interactive", "image": "python:3.6-ubuntu18.04",
                "registry": "index.docker.io", "domain_name": "default", "group_name": "default",
                "user_email": "user@lablup.com", "access_key": SEED_USER_AK,
                "group_id": "2de2b969-1d04-48a6-af16-0bc8adb3c831",
                "user_id": "f38dea23-50fa-42a0-b5ae-338f5f4693f4",
                "kernels": [
                    {"kernel_id": s, "role": "master", "occupied_slots": slots},
                    {"kernel_id": k2, "role": "slave", "occupied_slots": slots},
                    {"kernel_id": k3, "role": "slave", "occupied_slots": slots},
                ],
            }),
        ),
        env(
            2,
            "session_scheduled",
            "2020-02-16T15:41:00.000000+00:00",
            None,
            serde_json::json!({
                "scaling_group": "default",
                "agents": {s: "i-agent01", k2: "i-agent02", k3: "i-agent03"},
            }),
        ),
        env(
            3,
            "kernel_started",
            "2020-02-16T15:47:20.000000+00:00",
            Some(k2),
            serde_json::json!({"container_id": "c2"}),
        ),
        env(
            4,
            "kernel_started",
            "2020-02-16T15:47:21.000000+00:00",
            Some(k3),
            serde_json::json!({"container_id": "c3"}),
        ),
        env(
            5,
            "kernel_started",
            "2020-02-16T15:47:28.997335+00:00",
            Some(s),
            serde_json::json!({"container_id": "c1", "service_ports": []}),
        ),
    ]
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let db = PgDatabase::new().await;
        let url = db.url.clone();
        let store = PgStore::connect(&url, 8).await.unwrap();
        store.migrate().await.unwrap();

        // A simulated cluster (3 domains, several users) plus the seed's example session.
        let sim = Simulator::new(SimConfig {
            sessions: 400,
            seed: 31,
            ..SimConfig::default()
        });
        let events: Vec<Vec<u8>> = sim.map(|m| m.bytes).chain(seed_session_events()).collect();
        fold_and_commit(&store, "fixture", 0, &events).await;
        let sessions = store.all_sessions().await.unwrap();

        // The "default" domain user with the most sessions.
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for s in sessions
            .iter()
            .filter(|s| s.session.domain_name == "default")
        {
            *counts.entry(s.session.access_key.as_str()).or_default() += 1;
        }
        let (user_ak, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
        let user_email = sessions
            .iter()
            .find(|s| s.session.access_key == *user_ak)
            .unwrap()
            .session
            .user_email
            .clone();
        let superadmin = keypair(
            "AKIASUPERADMIN000001",
            Role::SuperAdmin,
            "default",
            "root@example.com",
            true,
        );
        let admin_kp = keypair(
            "AKIADOMAINADMIN00001",
            Role::Admin,
            "default",
            "admin@example.com",
            true,
        );
        let user = keypair(user_ak, Role::User, "default", &user_email, true);
        let inactive = keypair(
            "AKIAINACTIVE00000001",
            Role::SuperAdmin,
            "default",
            "old@example.com",
            false,
        );
        for kp in [&superadmin, &admin_kp, &user, &inactive] {
            store.insert_keypair(kp).await.unwrap();
        }
        Self {
            db,
            url,
            store,
            sessions,
            superadmin,
            admin: admin_kp,
            user,
            inactive,
        }
    }

    pub(crate) async fn drop(self) {
        self.store.close().await;
        self.db.drop().await;
    }
}

/// A request to `base` + `path` signed the way backend.ai-client signs it: with `content_type`
/// sent and signed, or (`None`, as for the event stream) none sent and
/// `application/octet-stream` signed. No date header is added.
pub(crate) fn signed(
    method: reqwest::Method,
    base: &str,
    host: &str,
    path: &str,
    kp: &KeyPair,
    date: &str,
    content_type: Option<&str>,
) -> reqwest::RequestBuilder {
    use sessionview_query::auth::{API_VERSION, SigningInput, sign};
    let signature = sign(
        &kp.secret_key,
        &SigningInput {
            method: method.as_str(),
            path_and_query: path,
            date,
            host,
            content_type: content_type.unwrap_or("application/octet-stream"),
            version: API_VERSION,
        },
    )
    .unwrap();
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("X-BackendAI-Version", API_VERSION)
        .header(
            "Authorization",
            format!(
                "BackendAI signMethod=HMAC-SHA256, credential={}:{signature}",
                kp.access_key
            ),
        );
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    req
}

/// A POST to `path` with the headers and signature backend.ai-client sends (no date header).
pub(crate) fn signed_post(
    srv: &Server,
    path: &str,
    kp: &KeyPair,
    date: &str,
) -> reqwest::RequestBuilder {
    signed(
        reqwest::Method::POST,
        &srv.base,
        &srv.host,
        path,
        kp,
        date,
        Some("application/json"),
    )
}

/// `body` POSTed to `path` as backend.ai-client sends it, dated now, with `headers` added.
pub(crate) async fn post_graphql(
    srv: &Server,
    path: &str,
    kp: &KeyPair,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let mut req = signed_post(srv, path, kp, &date)
        .header("Date", &date)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The `name` of each item of a list answer (`{ items { name } }`).
pub(crate) fn item_names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A session of `ak` in `domain` (id `0xfeed_0000 + n`): enqueued, its master started, then
/// terminated, as raw events.
pub(crate) fn lifecycle(n: u128, name: &str, ak: &str, domain: &str) -> Vec<Vec<u8>> {
    let mut story =
        sessionview_testkit::events::Story::new(Uuid::from_u128(0xfeed_0000 + n), name, ak, domain);
    vec![
        story.enqueued(),
        story.kernel("kernel_started", serde_json::json!({"container_id": "c"})),
        story.kernel("kernel_terminated", serde_json::json!({"reason": "done"})),
    ]
}

/// Folds `events` as read from offsets 0.. of `partition` of the test source (a partition the
/// store has no position for) and commits them with the position advanced past them.
pub(crate) async fn apply(fx: &Fixture, partition: i32, events: &[Vec<u8>]) {
    fold_and_commit(&fx.store, "events-test", partition, events).await;
}

/// Folds `events` as read from offsets 0.. of `source`'s `partition` (one `store` has no
/// position for) and commits them with the position advanced past them.
async fn fold_and_commit(store: &PgStore, source: &str, partition: i32, events: &[Vec<u8>]) {
    let mut fold = Fold::new();
    for (i, e) in events.iter().enumerate() {
        let at = Position {
            partition,
            offset: i as i64,
        };
        fold.apply_bytes(source, at, e);
    }
    let changes = fold.finish();
    let advances = [Advance {
        partition,
        expected: None,
        next: events.len() as i64,
    }];
    let outcome = store
        .commit(Commit {
            source,
            advances: &advances,
            changes: &changes,
            retire: &[],
        })
        .await
        .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed);
}

/// The real router of a fixture's store on a real socket (stopped with `stop`).
#[derive(Clone)]
pub(crate) struct Server {
    pub base: String,
    pub host: String,
    pub stop: tokio_util::sync::CancellationToken,
}

pub(crate) async fn start(fx: &Fixture, cfg: sessionview_query::ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = sessionview_query::router(fx.store.clone(), cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        host: addr.to_string(),
        stop,
    }
}
