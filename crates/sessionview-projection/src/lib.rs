//! The projection core: a pure fold from (read-model rows, events) to new rows.
//!
//! Architecture invariant: no IO, no SQL, no async. The store loads rows and saves [`Changes`];
//! the projector moves bytes and offsets; everything the event contract's rules decide happens here.

mod apply;
mod batch;
mod fold;
mod overlay;
mod rows;

pub use apply::{Effect, Reject, apply};
pub use batch::{Batch, FoldedBatch};
pub use fold::{
    Changes, CountDelta, DeadLetter, DirtyRows, EventKey, Fold, LiveEvent, LoadRequest, Loaded,
    MAX_REASON_BYTES, Outcome, ParkedEvent, Position, SESSION_CANCELLED, SESSION_STARTED,
    SESSION_TERMINATED, SeenIds, plan, plan_limited, storable_reason,
};
pub use overlay::Pending;
pub use rows::{
    KernelRow, RESULT_FAILURE, RESULT_SUCCESS, RESULT_UNDEFINED, SessionRow, SessionState,
};
