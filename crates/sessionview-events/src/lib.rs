//! The event contract v1 as typed Rust: envelope, catalogue, statuses and resource slots.
//!
//! Architecture invariant: this crate does no IO. It turns bytes into validated [`Event`]s (or a
//! [`DecodeError`] that names the event type and the field) and back.

mod event;
mod screen;
mod slots;
mod status;

pub use event::{
    DEAD_LETTER_KEEP_BYTES, DEFAULT_MAX_EVENT_BYTES, DecodeError, DecodeErrorKind, Empty, Event,
    EventBody, EventType, JsonObject, KernelPulling, KernelSpec, KernelStarted, KernelStatSync,
    KernelTerminated, MASTER_ROLE, MAX_KEY_FIELD_BYTES, Reason, SCHEMA_VERSION, SessionEnqueued,
    SessionOutcome, SessionScheduled, SessionType, format_timestamp, truncate_to_micros,
};
pub use screen::MAX_DEPTH;
pub use slots::{ResourceSlots, SlotError, format_amount, parse_amount};
pub use status::{Status, UnknownStatus};
