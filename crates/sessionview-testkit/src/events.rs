//! Contract events written by hand, for tests that need a particular session's story: the
//! envelope, and a session's lifecycle step by step. (The simulator makes whole streams.)

use serde_json::{Value, json};
use uuid::Uuid;

/// The contract's envelope around `payload`, as the bytes a producer publishes.
pub fn envelope(
    event_id: Uuid,
    event_type: &str,
    session: Uuid,
    kernel: Option<Uuid>,
    payload: Value,
) -> Vec<u8> {
    let mut v = json!({
        "event_id": event_id, "event_type": event_type, "schema_version": 1,
        "occurred_at": "2020-02-16T15:40:00+00:00", "session_id": session, "payload": payload,
    });
    if let Some(k) = kernel {
        v["kernel_id"] = json!(k);
    }
    v.to_string().into_bytes()
}

/// One single-container session whose events are made in order: `enqueued` first, then the
/// master kernel's steps. Event ids are derived from the session id and a counter, so a test's
/// events are the same on every run.
#[derive(Debug, Clone)]
pub struct Story {
    /// The session id, also its master kernel's id.
    pub session: Uuid,
    pub name: String,
    pub access_key: String,
    pub domain: String,
    made: u128,
}

impl Story {
    pub fn new(session: Uuid, name: &str, access_key: &str, domain: &str) -> Self {
        Self {
            session,
            name: name.into(),
            access_key: access_key.into(),
            domain: domain.into(),
            made: 0,
        }
    }

    fn next_id(&mut self) -> Uuid {
        self.made += 1;
        Uuid::from_u128(self.session.as_u128() ^ (self.made << 64) ^ 0xe7e7)
    }

    /// `session_enqueued`: a batch session with one master kernel holding one CPU.
    pub fn enqueued(&mut self) -> Vec<u8> {
        let payload = json!({
            "name": self.name, "type": "batch", "image": "python:3.8", "registry": "cr",
            "domain_name": self.domain, "group_name": "g", "user_email": "u@example.com",
            "access_key": self.access_key, "group_id": Uuid::from_u128(7),
            "user_id": Uuid::from_u128(8),
            "kernels": [{"kernel_id": self.session, "role": "master", "occupied_slots": {"cpu": "1"}}],
        });
        let id = self.next_id();
        envelope(id, "session_enqueued", self.session, None, payload)
    }

    /// A session-level event (`session_scheduled`, `session_success`, ...).
    pub fn session(&mut self, event_type: &str, payload: Value) -> Vec<u8> {
        let id = self.next_id();
        envelope(id, event_type, self.session, None, payload)
    }

    /// An event of the master kernel (`kernel_started`, `kernel_terminated`, ...).
    pub fn kernel(&mut self, event_type: &str, payload: Value) -> Vec<u8> {
        let id = self.next_id();
        envelope(id, event_type, self.session, Some(self.session), payload)
    }
}
