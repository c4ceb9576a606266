//! The envelope and the event catalogue as typed Rust, with decoding that names the bad field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, SecondsFormat, Timelike, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::screen;
use crate::slots::ResourceSlots;

/// The only envelope `schema_version` this build understands.
pub const SCHEMA_VERSION: i64 = 1;

/// A JSON object, as carried by `resource_opts`, `stat` and `last_stat`.
pub type JsonObject = Map<String, Value>;

macro_rules! event_types {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// The `event_type` of the catalogue.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $($variant),+ }

        impl EventType {
            /// Every event type of the catalogue.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The wire name, such as `"kernel_started"`.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name),+ }
            }
        }

        impl FromStr for EventType {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($name => Ok(EventType::$variant),)+ _ => Err(()) }
            }
        }
    };
}

event_types! {
    SessionEnqueued => "session_enqueued",
    SessionScheduled => "session_scheduled",
    SessionSuccess => "session_success",
    SessionFailure => "session_failure",
    ExecutionStarted => "execution_started",
    KernelPreparing => "kernel_preparing",
    KernelPulling => "kernel_pulling",
    KernelCreating => "kernel_creating",
    KernelStarted => "kernel_started",
    KernelRestarting => "kernel_restarting",
    KernelTerminating => "kernel_terminating",
    KernelTerminated => "kernel_terminated",
    KernelCancelled => "kernel_cancelled",
    KernelError => "kernel_error",
    KernelStatSync => "kernel_stat_sync",
}

impl EventType {
    /// Kernel events must name their kernel in the envelope's `kernel_id`.
    pub fn is_kernel_event(self) -> bool {
        self.as_str().starts_with("kernel_")
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `"interactive"` or `"batch"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    Interactive,
    Batch,
}

impl SessionType {
    /// The lower-case wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionType::Interactive => "interactive",
            SessionType::Batch => "batch",
        }
    }
}

/// One element of `session_enqueued.kernels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSpec {
    pub kernel_id: Uuid,
    pub role: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Defaults to the session's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Defaults to the session's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_opts: Option<JsonObject>,
    pub occupied_slots: ResourceSlots,
}

/// The role reserved for a session's main container.
pub const MASTER_ROLE: &str = "master";

/// Payload of `session_enqueued`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnqueued {
    pub name: String,
    #[serde(rename = "type")]
    pub session_type: SessionType,
    #[serde(default)]
    pub tag: Option<String>,
    pub image: String,
    pub registry: String,
    #[serde(default)]
    pub cluster_template: Option<String>,
    pub domain_name: String,
    pub group_name: String,
    pub user_email: String,
    pub access_key: String,
    pub group_id: Uuid,
    pub user_id: Uuid,
    #[serde(default)]
    pub created_user_email: Option<String>,
    #[serde(default)]
    pub created_user_id: Option<Uuid>,
    #[serde(default)]
    pub startup_command: Option<String>,
    #[serde(default)]
    pub resource_opts: Option<JsonObject>,
    #[serde(default)]
    pub scaling_group: Option<String>,
    #[serde(default)]
    pub mounts: Option<Vec<String>>,
    #[serde(default)]
    pub dependencies: Option<Vec<Uuid>>,
    pub kernels: Vec<KernelSpec>,
}

/// Payload of `session_scheduled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionScheduled {
    pub scaling_group: String,
    pub agents: BTreeMap<Uuid, String>,
}

/// Payload of `session_success` and `session_failure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOutcome {
    pub exit_code: i64,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Payload of `kernel_pulling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelPulling {
    pub image: String,
}

/// Payload of `kernel_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelStarted {
    pub container_id: String,
    #[serde(default)]
    pub service_ports: Option<Vec<Value>>,
    /// The actual allocation, replacing the requested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupied_slots: Option<ResourceSlots>,
}

/// Payload of `kernel_terminating`, `kernel_cancelled` and `kernel_error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
}

/// Payload of `kernel_terminated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelTerminated {
    pub reason: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub last_stat: Option<JsonObject>,
}

/// Payload of `kernel_stat_sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelStatSync {
    pub stat: JsonObject,
}

/// Payloads with no fields (`{}`); unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// An event's type together with its decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    SessionEnqueued(Box<SessionEnqueued>),
    SessionScheduled(SessionScheduled),
    SessionSuccess(SessionOutcome),
    SessionFailure(SessionOutcome),
    ExecutionStarted,
    KernelPreparing,
    KernelPulling(KernelPulling),
    KernelCreating,
    KernelStarted(KernelStarted),
    KernelRestarting,
    KernelTerminating(Reason),
    KernelTerminated(KernelTerminated),
    KernelCancelled(Reason),
    KernelError(Reason),
    KernelStatSync(KernelStatSync),
}

impl EventBody {
    /// The payload's `reason`, on the events that carry one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            EventBody::SessionSuccess(p) | EventBody::SessionFailure(p) => p.reason.as_deref(),
            EventBody::KernelTerminating(p)
            | EventBody::KernelCancelled(p)
            | EventBody::KernelError(p) => Some(&p.reason),
            EventBody::KernelTerminated(p) => Some(&p.reason),
            _ => None,
        }
    }

    /// The catalogue entry this body belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::SessionEnqueued(_) => EventType::SessionEnqueued,
            EventBody::SessionScheduled(_) => EventType::SessionScheduled,
            EventBody::SessionSuccess(_) => EventType::SessionSuccess,
            EventBody::SessionFailure(_) => EventType::SessionFailure,
            EventBody::ExecutionStarted => EventType::ExecutionStarted,
            EventBody::KernelPreparing => EventType::KernelPreparing,
            EventBody::KernelPulling(_) => EventType::KernelPulling,
            EventBody::KernelCreating => EventType::KernelCreating,
            EventBody::KernelStarted(_) => EventType::KernelStarted,
            EventBody::KernelRestarting => EventType::KernelRestarting,
            EventBody::KernelTerminating(_) => EventType::KernelTerminating,
            EventBody::KernelTerminated(_) => EventType::KernelTerminated,
            EventBody::KernelCancelled(_) => EventType::KernelCancelled,
            EventBody::KernelError(_) => EventType::KernelError,
            EventBody::KernelStatSync(_) => EventType::KernelStatSync,
        }
    }

    fn payload_json(&self) -> Result<Value, serde_json::Error> {
        match self {
            EventBody::SessionEnqueued(p) => serde_json::to_value(p),
            EventBody::SessionScheduled(p) => serde_json::to_value(p),
            EventBody::SessionSuccess(p) | EventBody::SessionFailure(p) => serde_json::to_value(p),
            EventBody::KernelPulling(p) => serde_json::to_value(p),
            EventBody::KernelStarted(p) => serde_json::to_value(p),
            EventBody::KernelTerminating(p)
            | EventBody::KernelCancelled(p)
            | EventBody::KernelError(p) => serde_json::to_value(p),
            EventBody::KernelTerminated(p) => serde_json::to_value(p),
            EventBody::KernelStatSync(p) => serde_json::to_value(p),
            EventBody::ExecutionStarted
            | EventBody::KernelPreparing
            | EventBody::KernelCreating
            | EventBody::KernelRestarting => Ok(Value::Object(Map::new())),
        }
    }
}

/// A decoded, validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    /// Truncated to microseconds, the precision of the read model's timestamps.
    pub occurred_at: DateTime<Utc>,
    pub session_id: Uuid,
    /// Present (and required) for kernel events; `None` for session events.
    pub kernel_id: Option<Uuid>,
    pub body: EventBody,
}

impl Event {
    /// The catalogue entry of this event.
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// Decodes and validates one envelope (one Kafka message value, one NDJSON line) of at most
    /// [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        Self::decode_limited(bytes, DEFAULT_MAX_EVENT_BYTES)
    }

    /// [`Event::decode`] with another size limit (`--max-event-bytes`).
    pub fn decode_limited(bytes: &[u8], max_bytes: usize) -> Result<Event, DecodeError> {
        if bytes.len() > max_bytes {
            use sha2::Digest;
            return Err(DecodeError {
                event_type: None,
                kind: DecodeErrorKind::TooLarge {
                    len: bytes.len(),
                    limit: max_bytes,
                    sha256: hex::encode(sha2::Sha256::digest(bytes)),
                    kept: bytes.len().min(DEAD_LETTER_KEEP_BYTES),
                },
            });
        }
        decode(bytes)
    }

    /// The envelope as JSON, as a producer following the contract would write it.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        let mut envelope = Map::new();
        envelope.insert("event_id".into(), Value::String(self.event_id.to_string()));
        envelope.insert(
            "event_type".into(),
            Value::String(self.event_type().as_str().into()),
        );
        envelope.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
        envelope.insert(
            "occurred_at".into(),
            Value::String(format_timestamp(self.occurred_at)),
        );
        envelope.insert(
            "session_id".into(),
            Value::String(self.session_id.to_string()),
        );
        if let Some(k) = self.kernel_id {
            envelope.insert("kernel_id".into(), Value::String(k.to_string()));
        }
        envelope.insert("payload".into(), self.body.payload_json()?);
        Ok(Value::Object(envelope))
    }

    /// The envelope as compact JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.to_json()?)
    }
}

/// RFC 3339 with microseconds and a numeric offset: `2020-02-16T15:47:28.997335+00:00`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Truncates a timestamp to whole microseconds.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// Why an envelope was refused. Its `Display` names the event type (when known) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", event_type.as_deref().map(|t| format!("{t}: ")).unwrap_or_default())]
pub struct DecodeError {
    /// The `event_type` of the envelope, when it could be read.
    pub event_type: Option<String>,
    pub kind: DecodeErrorKind,
}

/// What exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("the envelope is not a JSON object")]
    NotAnObject,
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{path}`: {message}")]
    BadField { path: String, message: String },
    #[error("unknown event_type {0:?}")]
    UnknownEventType(String),
    #[error("unsupported schema_version {0} (this build understands {SCHEMA_VERSION})")]
    UnsupportedSchemaVersion(i64),
    #[error("{0}")]
    Invalid(String),
    /// A string somewhere in the event contains U+0000 (PostgreSQL text and jsonb cannot hold it).
    #[error("{0}")]
    Nul(String),
    /// Larger than the projector's `--max-event-bytes`.
    #[error(
        "the event is {len} bytes, more than the limit of {limit} (--max-event-bytes); SHA-256 of \
         the whole: {sha256}; the dead letter keeps the first {kept} bytes"
    )]
    TooLarge {
        len: usize,
        limit: usize,
        sha256: String,
        /// How many bytes the dead letter keeps ([`DEAD_LETTER_KEEP_BYTES`] at most).
        kept: usize,
    },
}

/// How much of an oversized event a dead letter keeps.
pub const DEAD_LETTER_KEEP_BYTES: usize = 64 * 1024;

/// The default of `--max-event-bytes`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Text fields that the read model indexes (and PostgreSQL's B-tree keys are at most 2,704 bytes):
/// longer values are refused here, so both backends agree.
pub const MAX_KEY_FIELD_BYTES: usize = 1024;

impl DecodeError {
    /// A short, stable label for metrics and filtering.
    pub fn label(&self) -> &'static str {
        match self.kind {
            DecodeErrorKind::MalformedJson(_) | DecodeErrorKind::NotAnObject => "malformed",
            DecodeErrorKind::MissingField(_) | DecodeErrorKind::BadField { .. } => "bad_field",
            DecodeErrorKind::UnknownEventType(_) => "unknown_type",
            DecodeErrorKind::UnsupportedSchemaVersion(_) => "unknown_version",
            DecodeErrorKind::Invalid(_) => "invalid",
            DecodeErrorKind::Nul(_) => "nul_character",
            DecodeErrorKind::TooLarge { .. } => "oversized",
        }
    }
}

/// The envelope with every field kept raw, so each can be decoded with an error naming it.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kernel_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let fail = |event_type: Option<&str>, kind| DecodeError {
        event_type: event_type.map(str::to_owned),
        kind,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(
            None,
            DecodeErrorKind::MalformedJson(format!("not UTF-8: {e}")),
        )
    })?;
    screen::screen(bytes).map_err(|refusal| {
        let kind = match refusal {
            screen::Refusal::Nul { .. } => DecodeErrorKind::Nul(refusal.to_string()),
            _ => DecodeErrorKind::MalformedJson(refusal.to_string()),
        };
        fail(peek_event_type(text).map(EventType::as_str), kind)
    })?;
    if !text.trim_start().starts_with('{') {
        // serde would happily read a struct from a JSON array, positionally: refuse it here.
        let kind = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => DecodeErrorKind::NotAnObject,
            Err(e) => DecodeErrorKind::MalformedJson(e.to_string()),
        };
        return Err(fail(None, kind));
    }
    let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
        let kind = if e.is_data() {
            DecodeErrorKind::BadField {
                path: "<envelope>".into(),
                message: e.to_string(),
            }
        } else {
            DecodeErrorKind::MalformedJson(e.to_string())
        };
        fail(None, kind)
    })?;

    // event_type first, so that every later error can name it.
    let type_name: String = field(None, "event_type", raw.event_type)?;
    let event_type = EventType::from_str(&type_name).map_err(|()| {
        fail(
            Some(&type_name),
            DecodeErrorKind::UnknownEventType(type_name.clone()),
        )
    })?;
    let t = Some(type_name.as_str());
    // The version before anything else: a newer version may be shaped differently.
    let version: i64 = field(t, "schema_version", raw.schema_version)?;
    if version != SCHEMA_VERSION {
        return Err(fail(t, DecodeErrorKind::UnsupportedSchemaVersion(version)));
    }
    let event_id: Uuid = field(t, "event_id", raw.event_id)?;
    let occurred_at: DateTime<FixedOffset> = field(t, "occurred_at", raw.occurred_at)?;
    let session_id: Uuid = field(t, "session_id", raw.session_id)?;
    let kernel_id: Option<Uuid> = match raw.kernel_id {
        Some(v) => parse_field(t, "kernel_id", v)?,
        None => None,
    };
    let payload = raw
        .payload
        .ok_or_else(|| fail(t, DecodeErrorKind::MissingField("payload")))?;

    let body = match event_type {
        EventType::SessionEnqueued => EventBody::SessionEnqueued(Box::new(payload_of(t, payload)?)),
        EventType::SessionScheduled => EventBody::SessionScheduled(payload_of(t, payload)?),
        EventType::SessionSuccess => EventBody::SessionSuccess(payload_of(t, payload)?),
        EventType::SessionFailure => EventBody::SessionFailure(payload_of(t, payload)?),
        EventType::ExecutionStarted => {
            payload_of::<Empty>(t, payload)?;
            EventBody::ExecutionStarted
        }
        EventType::KernelPreparing => {
            payload_of::<Empty>(t, payload)?;
            EventBody::KernelPreparing
        }
        EventType::KernelPulling => EventBody::KernelPulling(payload_of(t, payload)?),
        EventType::KernelCreating => {
            payload_of::<Empty>(t, payload)?;
            EventBody::KernelCreating
        }
        EventType::KernelStarted => EventBody::KernelStarted(payload_of(t, payload)?),
        EventType::KernelRestarting => {
            payload_of::<Empty>(t, payload)?;
            EventBody::KernelRestarting
        }
        EventType::KernelTerminating => EventBody::KernelTerminating(payload_of(t, payload)?),
        EventType::KernelTerminated => EventBody::KernelTerminated(payload_of(t, payload)?),
        EventType::KernelCancelled => EventBody::KernelCancelled(payload_of(t, payload)?),
        EventType::KernelError => EventBody::KernelError(payload_of(t, payload)?),
        EventType::KernelStatSync => EventBody::KernelStatSync(payload_of(t, payload)?),
    };

    let kernel_id = if event_type.is_kernel_event() {
        Some(kernel_id.ok_or_else(|| fail(t, DecodeErrorKind::MissingField("kernel_id")))?)
    } else {
        // Session events are about the whole session; a stray kernel_id carries no meaning.
        None
    };
    let event = Event {
        event_id,
        occurred_at: truncate_to_micros(occurred_at.with_timezone(&Utc)),
        session_id,
        kernel_id,
        body,
    };
    validate(&event).map_err(|message| fail(t, DecodeErrorKind::Invalid(message)))?;
    Ok(event)
}

/// The catalogue type an envelope names, if it names one (to label a refusal that came before
/// parsing); never text from the event itself.
fn peek_event_type(text: &str) -> Option<EventType> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        event_type: &'a str,
    }
    // serde_json's own recursion limit (128) bounds what this skips over.
    serde_json::from_str::<Peek<'_>>(text)
        .ok()
        .and_then(|p| EventType::from_str(p.event_type).ok())
}

fn field<T: DeserializeOwned>(
    event_type: Option<&str>,
    name: &'static str,
    raw: Option<&RawValue>,
) -> Result<T, DecodeError> {
    let raw = raw.ok_or_else(|| DecodeError {
        event_type: event_type.map(str::to_owned),
        kind: DecodeErrorKind::MissingField(name),
    })?;
    parse_field(event_type, name, raw)
}

fn parse_field<T: DeserializeOwned>(
    event_type: Option<&str>,
    name: &str,
    raw: &RawValue,
) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get()).map_err(|e| DecodeError {
        event_type: event_type.map(str::to_owned),
        kind: DecodeErrorKind::BadField {
            path: name.to_owned(),
            message: strip_position(&e.to_string()),
        },
    })
}

fn payload_of<T: DeserializeOwned>(
    event_type: Option<&str>,
    raw: &RawValue,
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "payload".to_owned()
        } else {
            format!("payload.{path}")
        };
        let message = e.inner().to_string();
        DecodeError {
            event_type: event_type.map(str::to_owned),
            kind: DecodeErrorKind::BadField {
                path,
                message: strip_position(&message),
            },
        }
    })
}

/// serde_json appends " at line 1 column 57"; inside a field that position is meaningless.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The contract's invariants that a type alone cannot express.
fn validate(event: &Event) -> Result<(), String> {
    if let EventBody::SessionEnqueued(p) = &event.body {
        if p.kernels.is_empty() {
            return Err("payload.kernels: a session needs at least one kernel".into());
        }
        for (name, value) in [
            ("access_key", &p.access_key),
            ("domain_name", &p.domain_name),
        ] {
            if value.len() > MAX_KEY_FIELD_BYTES {
                return Err(format!(
                    "payload.{name}: {} bytes, longer than the {MAX_KEY_FIELD_BYTES} an indexed \
                     field may have",
                    value.len()
                ));
            }
        }
        let masters: Vec<_> = p.kernels.iter().filter(|k| k.role == MASTER_ROLE).collect();
        match masters.as_slice() {
            [master] if master.kernel_id == event.session_id => {}
            [master] => {
                return Err(format!(
                    "payload.kernels: the master kernel's id {} must equal the session_id {}",
                    master.kernel_id, event.session_id
                ));
            }
            [] => return Err("payload.kernels: no kernel has role \"master\"".into()),
            many => {
                return Err(format!(
                    "payload.kernels: {} kernels have role \"master\"; exactly one must",
                    many.len()
                ));
            }
        }
        let mut ids = HashSet::new();
        for k in &p.kernels {
            if !ids.insert(k.kernel_id) {
                return Err(format!(
                    "payload.kernels: kernel_id {} appears more than once",
                    k.kernel_id
                ));
            }
        }
        if let Some(deps) = &p.dependencies
            && deps.contains(&event.session_id)
        {
            return Err("payload.dependencies: a session cannot depend on itself".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
