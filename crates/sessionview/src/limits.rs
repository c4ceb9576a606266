//! The flags that bound what one input may cost: the projector's per-event limits (shared by
//! `project`, `run` and `replay`).

use std::time::Duration;

use clap::Args;
use sessionview_projector::BatchConfig;

/// What the projector accepts of one event, and how long an orphan may wait.
#[derive(Debug, Clone, Args)]
pub(crate) struct EventArgs {
    /// Larger events become dead letters labelled `oversized`, which keep the first 64 KiB, the
    /// full length and the SHA-256 of the whole.
    #[arg(
        long,
        env = "SESSIONVIEW_MAX_EVENT_BYTES",
        default_value_t = 1 << 20,
        value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)),
    )]
    max_event_bytes: u64,
    /// Events parked for a session that never comes become dead letters labelled
    /// `parked_expired` after this long (e.g. 7d, 12h, 90s).
    #[arg(
        long,
        env = "SESSIONVIEW_PARK_RETENTION",
        default_value = "7d",
        value_parser = humantime::parse_duration,
    )]
    park_retention: Duration,
}

impl EventArgs {
    /// `batch` with these limits.
    pub(crate) fn apply(&self, batch: BatchConfig) -> BatchConfig {
        BatchConfig {
            max_event_bytes: usize::try_from(self.max_event_bytes).unwrap_or(usize::MAX),
            park_retention: self.park_retention,
            ..batch
        }
    }
}
