//! `GET /events/session`: Backend.AI's session event stream (Server-Sent Events), pushed from the
//! projector's commits.
//!
//! One follower task per server ([`Hub`]) reads the session event log after the last event it
//! has seen whenever a commit wakes it (PostgreSQL `LISTEN`, or in-process; a poll every second
//! besides), renders each event's frame once and broadcasts it to the open streams through a
//! bounded channel. A stream filters by the caller's scope and its parameters, and writes every
//! frame that is ready in one chunk. A stream that falls more than the channel's
//! capacity behind is closed (the projector is never slowed); a client that reconnects with
//! `Last-Event-ID` resumes from the log, which keeps the newest
//! [`sessionview_store::live::SESSION_EVENT_WINDOW`] events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use metrics::{counter, gauge};
use serde_json::{Value, json};
use sessionview_store::Role;
use sessionview_store::live::SessionEvent;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::cache::ResponseCache;
use super::positions::{Positions, Tracker};
use super::problem::problem;
use super::telemetry::{EVENT_STREAMS, EVENT_STREAMS_CUT, RESPONSE_CACHE_BYTES};
use crate::schema::{Caller, Db};

/// Events buffered for the slowest stream before it is cut off.
pub(super) const STREAM_BUFFER: usize = 4096;
/// Events read from the log per statement.
const PAGE: i64 = 1000;
/// The follower reads the log this often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// A stream that sent nothing for this long sends a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream's chunks are about this large at most (events ready together go in one write).
const CHUNK: usize = 64 * 1024;

/// The server's follower of the commits: the session event log, and the committed positions.
pub(super) struct Hub {
    events: broadcast::Sender<Arc<Told>>,
    /// The committed positions, re-read after every wake-up.
    pub(super) positions: Tracker,
    /// The response cache, which learns each commit's changes from this follower.
    cache: Option<Arc<ResponseCache>>,
    /// The newest event broadcast (streams read anything after their own position up to it
    /// from the log).
    head: AtomicI64,
}

impl Hub {
    /// Starts following `store`'s log from its newest event.
    pub(super) fn start(store: Db, cache: Option<Arc<ResponseCache>>) -> Arc<Self> {
        let (events, _) = broadcast::channel(STREAM_BUFFER);
        let hub = Arc::new(Self {
            events,
            positions: Tracker::new(),
            cache,
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
                        if let Some(told) = Told::new(e) {
                            // No stream open: nothing to send to.
                            let _ = h.events.send(told);
                        }
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
        // Positions first, then the changes: every commit up to those positions is among the
        // changes read after them, so the cache serves answers up to them.
        match store.committed_positions().await {
            Ok(committed) => {
                let read = Positions::from_committed(committed);
                if let Some(cache) = &h.cache {
                    if let Err(e) = cache.follow(&store, read.clone()).await {
                        tracing::warn!(error = %e, "the response cache cannot follow the commits");
                    }
                    gauge!(RESPONSE_CACHE_BYTES).set(cache.bytes() as f64);
                }
                h.positions.update(read);
            }
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

/// A logged event and its Server-Sent Events frame, rendered once by the follower and sent as
/// the same bytes to every stream that admits it.
pub(super) struct Told {
    event: SessionEvent,
    frame: Bytes,
}

impl Told {
    /// `None` for an event whose name could break the framing (only a corrupt log has one).
    fn new(event: SessionEvent) -> Option<Arc<Self>> {
        if event.name.contains(['\n', '\r']) {
            tracing::warn!(
                seq = event.seq,
                "a logged event's name holds a line break; not sent"
            );
            return None;
        }
        let mut data = json!({
            "reason": event.reason,
            "sessionName": event.session_name,
            "ownerAccessKey": event.access_key,
            "sessionId": event.session_id,
        });
        if let (Some(k), Value::Object(m)) = (event.kernel_id, &mut data) {
            m.insert("kernelId".into(), json!(k));
            m.insert("clusterRole".into(), json!(event.cluster_role));
        }
        // JSON text has no raw line breaks: one `data:` line.
        let frame = format!("event: {}\nid: {}\ndata: {data}\n\n", event.name, event.seq);
        Some(Arc::new(Self {
            event,
            frame: Bytes::from(frame),
        }))
    }
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
    rx: broadcast::Receiver<Arc<Told>>,
    filter: Filter,
    /// The last event sent (or skipped).
    last: i64,
    backlog: VecDeque<Arc<Told>>,
    /// Read the log up to the hub's head before following the channel.
    catching_up: bool,
    /// Frames taken but not yet sent. Kept here, not in a local, so that a chunk cancelled by the
    /// keep-alive timer loses nothing.
    pending: Vec<u8>,
    /// Fell behind: send what is pending, then end.
    cut: bool,
}

impl Stream {
    fn take(&mut self, t: &Told) {
        self.last = t.event.seq;
        if self.filter.admits(&t.event) {
            self.pending.extend_from_slice(&t.frame);
        }
    }

    fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.pending)))
    }

    /// The next chunk: every admitted event that is available (waiting for the first), up to
    /// about [`CHUNK`] bytes. `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.pending.len() >= CHUNK {
                return self.flush();
            }
            if let Some(t) = self.backlog.pop_front() {
                self.take(&t);
                continue;
            }
            if self.cut {
                return self.flush();
            }
            if self.catching_up {
                let head = self.hub.head.load(Ordering::Acquire);
                if self.last >= head {
                    self.catching_up = false;
                    continue;
                }
                match self.store.session_events(self.last, PAGE).await {
                    Ok(page) if !page.is_empty() => {
                        self.backlog.extend(page.into_iter().filter_map(Told::new));
                    }
                    Ok(_) => self.catching_up = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the session event log; closing a stream");
                        self.cut = true;
                    }
                }
                continue;
            }
            // With frames pending, only what is ready now joins them.
            let next = if self.pending.is_empty() {
                self.rx.recv().await
            } else {
                match self.rx.try_recv() {
                    Ok(t) => Ok(t),
                    Err(broadcast::error::TryRecvError::Empty) => return self.flush(),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                }
            };
            match next {
                Ok(t) if t.event.seq <= self.last => {}
                Ok(t) if t.event.seq > self.last + 1 => {
                    // The channel's events start after ours: read the gap from the log.
                    self.catching_up = true;
                    self.backlog.clear();
                }
                Ok(t) => self.take(&t),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counter!(EVENT_STREAMS_CUT).increment(1);
                    tracing::info!(
                        behind = n,
                        "closing a session event stream that fell behind"
                    );
                    self.cut = true;
                }
                Err(broadcast::error::RecvError::Closed) => self.cut = true,
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
        pending: Vec::new(),
        cut: false,
    };
    // A comment line when nothing was sent for KEEP_ALIVE keeps proxies from closing the
    // connection.
    let chunks = futures_util::stream::unfold(stream, |mut s| async move {
        match tokio::time::timeout(KEEP_ALIVE, s.next_chunk()).await {
            Ok(Some(chunk)) => Some((Ok::<_, std::convert::Infallible>(chunk), s)),
            Ok(None) => None,
            Err(_) => Some((Ok(Bytes::from_static(b":ping\n\n")), s)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx: pass each chunk on at once.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
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
    fn an_event_is_framed_once_on_one_data_line() {
        let mut e = event("kernel_terminated", "AK", "d", "s");
        e.seq = 7;
        e.kernel_id = Some(Uuid::nil());
        e.cluster_role = Some("master".into());
        e.reason = Some("line\nbreak".into());
        let told = Told::new(e.clone()).unwrap();
        let text = std::str::from_utf8(&told.frame).unwrap();
        assert_eq!(
            text,
            "event: kernel_terminated\nid: 7\ndata: {\"clusterRole\":\"master\",\
             \"kernelId\":\"00000000-0000-0000-0000-000000000000\",\"ownerAccessKey\":\"AK\",\
             \"reason\":\"line\\nbreak\",\"sessionId\":\"00000000-0000-0000-0000-000000000000\",\
             \"sessionName\":\"s\"}\n\n"
        );
        // A name that would break the framing (a corrupt log) is not sent.
        e.name = "x\ndata: forged".into();
        assert!(Told::new(e).is_none());
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
