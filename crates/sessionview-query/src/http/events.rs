//! `GET /events/session`: Backend.AI's session event stream (Server-Sent Events), pushed from the
//! projector's commits.
//!
//! One follower task per server ([`Hub`]) reads the session event log after the last event it
//! has seen whenever a commit wakes it (PostgreSQL `LISTEN`, or in-process; a poll every second
//! besides) and broadcasts each event to the open streams through a bounded channel. A stream
//! filters by the caller's scope and its parameters. A stream that falls more than the channel's
//! capacity behind is closed (the projector is never slowed); a client that reconnects with
//! `Last-Event-ID` resumes from the log, which keeps the newest
//! [`sessionview_store::live::SESSION_EVENT_WINDOW`] events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use metrics::{counter, gauge};
use serde_json::{Value, json};
use sessionview_store::Role;
use sessionview_store::live::SessionEvent;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::positions::{Positions, Tracker};
use super::problem::problem;
use super::telemetry::{EVENT_STREAMS, EVENT_STREAMS_CUT};
use crate::schema::{Caller, Db};

/// Events buffered for the slowest stream before it is cut off.
pub(super) const STREAM_BUFFER: usize = 4096;
/// Events read from the log per statement.
const PAGE: i64 = 1000;
/// The follower reads the log this often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// The server's follower of the commits: the session event log, and the committed positions.
pub(super) struct Hub {
    events: broadcast::Sender<Arc<SessionEvent>>,
    /// The committed positions, re-read after every wake-up.
    pub(super) positions: Tracker,
    /// The newest event broadcast (streams read anything after their own position up to it
    /// from the log).
    head: AtomicI64,
}

impl Hub {
    /// Starts following `store`'s log from its newest event.
    pub(super) fn start(store: Db) -> Arc<Self> {
        let (events, _) = broadcast::channel(STREAM_BUFFER);
        let hub = Arc::new(Self {
            events,
            positions: Tracker::new(),
            head: AtomicI64::new(-1),
        });
        tokio::spawn(follow(store, Arc::downgrade(&hub)));
        hub
    }
}

async fn follow(store: Db, hub: Weak<Hub>) {
    let mut wakeups = store.commit_wakeups();
    let mut last = loop {
        match store.session_event_log().await {
            Ok(extent) => break extent.newest,
            Err(e) => tracing::warn!(error = %e, "cannot read the session event log; retrying"),
        }
        if hub.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(POLL).await;
    };
    loop {
        let Some(h) = hub.upgrade() else { return };
        h.head.store(last, Ordering::Release);
        loop {
            match store.session_events(last, PAGE).await {
                Ok(page) => {
                    let full = page.len() as i64 == PAGE;
                    for e in page {
                        last = e.seq;
                        // No stream open: nothing to send to.
                        let _ = h.events.send(Arc::new(e));
                    }
                    h.head.store(last, Ordering::Release);
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the session event log");
                    break;
                }
            }
        }
        match store.committed_positions().await {
            Ok(committed) => h.positions.update(Positions::from_committed(committed)),
            Err(e) => tracing::warn!(error = %e, "cannot read the committed positions"),
        }
        drop(h);
        let _ = tokio::time::timeout(POLL, wakeups.next()).await;
    }
}

/// What one stream asked for, inside the caller's scope.
#[derive(Debug, Clone)]
struct Filter {
    domain: Option<String>,
    access_key: Option<String>,
    /// `(name, owner)` of one session, or one session id.
    session: Option<(String, String)>,
    session_id: Option<Uuid>,
    group: Option<String>,
    /// `session` or `kernel` events only.
    scope: Option<&'static str>,
}

impl Filter {
    fn admits(&self, e: &SessionEvent) -> bool {
        self.domain.as_ref().is_none_or(|d| *d == e.domain_name)
            && self.access_key.as_ref().is_none_or(|a| *a == e.access_key)
            && self.group.as_ref().is_none_or(|g| *g == e.group_name)
            && self.session_id.is_none_or(|id| id == e.session_id)
            && self
                .session
                .as_ref()
                .is_none_or(|(n, o)| *n == e.session_name && *o == e.access_key)
            && self.scope.is_none_or(|s| e.name.starts_with(s))
    }
}

fn param<'q>(query: &'q [(String, String)], names: &[&str]) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

fn bad_request(msg: String) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-api-params",
        "Missing or invalid API parameters.",
        Some(("msg", Value::String(msg))),
    )
}

/// The contract's parameters and role table, as a filter (or the refusal).
fn filter(caller: &Caller, query: &[(String, String)]) -> Result<Filter, Box<Response>> {
    let own = &caller.keypair;
    let role = caller.role();
    let owner = param(query, &["ownerAccessKey", "owner_access_key"]);
    if role == Role::User
        && let Some(o) = owner
        && o != own.access_key
    {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden.",
            Some((
                "msg",
                Value::String(format!(
                    "ownerAccessKey {o:?} is not yours: a user may follow only its own sessions"
                )),
            )),
        )));
    }
    let session_id = match param(query, &["sessionId"]) {
        Some(id) => Some(
            Uuid::parse_str(id)
                .map_err(|_| bad_request(format!("sessionId {id:?} is not a UUID")))?,
        ),
        None => None,
    };
    let name = param(query, &["name", "sessionName"]).filter(|n| *n != "*");
    let session = match (session_id, name) {
        (None, Some(n)) => Some((n.to_owned(), owner.unwrap_or(&own.access_key).to_owned())),
        _ => None,
    };
    let scope = match param(query, &["scope"]).unwrap_or("*") {
        "*" => None,
        "session" => Some("session_"),
        "kernel" => Some("kernel_"),
        other => {
            return Err(Box::new(bad_request(format!(
                "scope {other:?} is not one of *, session, kernel"
            ))));
        }
    };
    Ok(Filter {
        domain: (role != Role::SuperAdmin).then(|| own.domain_name.clone()),
        access_key: (role == Role::User).then(|| own.access_key.clone()),
        session,
        session_id,
        group: param(query, &["group", "groupName"])
            .filter(|g| *g != "*")
            .map(str::to_owned),
        scope,
    })
}

/// The SSE event of a logged event.
fn sse_event(e: &SessionEvent) -> Event {
    let mut data = json!({
        "reason": e.reason,
        "sessionName": e.session_name,
        "ownerAccessKey": e.access_key,
        "sessionId": e.session_id,
    });
    if let (Some(k), Value::Object(m)) = (e.kernel_id, &mut data) {
        m.insert("kernelId".into(), json!(k));
        m.insert("clusterRole".into(), json!(e.cluster_role));
    }
    Event::default()
        .event(&e.name)
        .id(e.seq.to_string())
        .data(data.to_string())
}

/// Counts a stream in [`EVENT_STREAMS`] for as long as it lives.
struct Open;

impl Open {
    fn new() -> Self {
        gauge!(EVENT_STREAMS).increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(EVENT_STREAMS).decrement(1.0);
    }
}

struct Stream {
    _open: Open,
    store: Db,
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<SessionEvent>>,
    filter: Filter,
    /// The last event sent (or skipped).
    last: i64,
    backlog: VecDeque<SessionEvent>,
    /// Read the log up to the hub's head before following the channel.
    catching_up: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.last = e.seq;
                if self.filter.admits(&e) {
                    return Some(sse_event(&e));
                }
                continue;
            }
            if self.catching_up {
                let head = self.hub.head.load(Ordering::Acquire);
                if self.last >= head {
                    self.catching_up = false;
                    continue;
                }
                match self.store.session_events(self.last, PAGE).await {
                    Ok(page) if !page.is_empty() => self.backlog.extend(page),
                    Ok(_) => self.catching_up = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the session event log; closing a stream");
                        return None;
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(e) if e.seq <= self.last => {}
                Ok(e) => {
                    if e.seq > self.last + 1 {
                        // The channel's events start after ours: read the gap from the log.
                        self.catching_up = true;
                        self.backlog.clear();
                        continue;
                    }
                    self.last = e.seq;
                    if self.filter.admits(&e) {
                        return Some(sse_event(&e));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counter!(EVENT_STREAMS_CUT).increment(1);
                    tracing::info!(
                        behind = n,
                        "closing a session event stream that fell behind"
                    );
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The stream's response for an authenticated caller.
pub(super) async fn respond(
    store: Db,
    hub: Arc<Hub>,
    caller: &Caller,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let filter = match filter(caller, query) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    // Subscribed before the position is taken: nothing committed in between is missed.
    let rx = hub.events.subscribe();
    let mut head = hub.head.load(Ordering::Acquire);
    if head < 0 {
        // The follower has not read the log yet (the server just started): the log's own head
        // is where "from now on" starts, so nothing older is sent as if it were new.
        head = match store.session_event_log().await {
            Ok(extent) => extent.newest,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session event log");
                return super::problem::unavailable(
                    "the read model's database cannot answer now; retry",
                );
            }
        };
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0 && *id < head.max(0));
    let stream = Stream {
        _open: Open::new(),
        store,
        hub,
        rx,
        filter,
        last: resume.unwrap_or(head.max(0)),
        backlog: VecDeque::new(),
        catching_up: resume.is_some(),
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        s.next()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), s))
    });
    let mut resp = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("ping"),
        )
        .into_response();
    resp.headers_mut().insert(
        "cache-control",
        axum::http::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionview_store::KeyPair;

    fn caller(role: Role) -> Caller {
        Caller {
            keypair: KeyPair {
                access_key: "AKUSER".into(),
                secret_key: "s".into(),
                user_id: Uuid::nil(),
                user_email: "u@x".into(),
                domain_name: "d".into(),
                role,
                is_active: true,
                created_at: chrono::Utc::now(),
            },
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn event(name: &str, ak: &str, domain: &str, session: &str) -> SessionEvent {
        SessionEvent {
            seq: 1,
            name: name.into(),
            session_id: Uuid::nil(),
            kernel_id: None,
            cluster_role: None,
            reason: None,
            session_name: session.into(),
            access_key: ak.into(),
            domain_name: domain.into(),
            group_name: "g".into(),
        }
    }

    #[test]
    fn the_role_table_and_the_parameters() {
        let user = filter(&caller(Role::User), &q(&[])).unwrap();
        assert!(user.admits(&event("kernel_started", "AKUSER", "d", "a")));
        assert!(!user.admits(&event("kernel_started", "AKOTHER", "d", "a")));
        let admin = filter(&caller(Role::Admin), &q(&[])).unwrap();
        assert!(admin.admits(&event("kernel_started", "AKOTHER", "d", "a")));
        assert!(!admin.admits(&event("kernel_started", "AKOTHER", "e", "a")));
        let root = filter(&caller(Role::SuperAdmin), &q(&[])).unwrap();
        assert!(root.admits(&event("kernel_started", "AKOTHER", "e", "a")));
        // A user naming another owner is refused; naming itself is fine.
        let refused = filter(&caller(Role::User), &q(&[("owner_access_key", "AKOTHER")]));
        assert_eq!(refused.unwrap_err().status(), StatusCode::FORBIDDEN);
        let named = filter(
            &caller(Role::User),
            &q(&[("name", "a"), ("owner_access_key", "AKUSER")]),
        )
        .unwrap();
        assert!(named.admits(&event("kernel_started", "AKUSER", "d", "a")));
        assert!(!named.admits(&event("kernel_started", "AKUSER", "d", "b")));
        // An admin following another owner's session of that name.
        let other = filter(
            &caller(Role::Admin),
            &q(&[("name", "a"), ("ownerAccessKey", "AKOTHER")]),
        )
        .unwrap();
        assert!(other.admits(&event("session_started", "AKOTHER", "d", "a")));
        assert!(!other.admits(&event("session_started", "AKUSER", "d", "a")));
        let kernels = filter(&caller(Role::User), &q(&[("scope", "kernel")])).unwrap();
        assert!(!kernels.admits(&event("session_started", "AKUSER", "d", "a")));
        assert!(kernels.admits(&event("kernel_started", "AKUSER", "d", "a")));
        let bad = filter(&caller(Role::User), &q(&[("scope", "all")]));
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
        let bad = filter(&caller(Role::User), &q(&[("sessionId", "x")]));
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
