//! The event contract v1 as typed Rust: envelope, catalogue, statuses and resource slots.
//!
//! Architecture invariant: this crate does no IO. It turns bytes into validated [`Event`]s (or a
//! [`DecodeError`] that names the event type and the field) and back.

mod event;
mod slots;
mod status;

pub use event::{
    DecodeError, DecodeErrorKind, Empty, Event, EventBody, EventType, JsonObject, KernelPulling,
    KernelSpec, KernelStarted, KernelStatSync, KernelTerminated, MASTER_ROLE, Reason,
    SCHEMA_VERSION, SessionEnqueued, SessionOutcome, SessionScheduled, SessionType,
    format_timestamp, truncate_to_micros,
};
pub use slots::{ResourceSlots, SlotError, format_amount, parse_amount};
pub use status::{Status, UnknownStatus};
