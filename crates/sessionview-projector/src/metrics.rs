//! The projector's Prometheus metrics, named and described in one place.
//!
//! Recorded through the `metrics` facade; the binary installs the Prometheus recorder and serves
//! `/metrics`. Without a recorder these calls cost next to nothing.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use sessionview_projection::Outcome;

pub const EVENTS: &str = "sessionview_projector_events_total";
pub const BATCH_SIZE: &str = "sessionview_projector_batch_size";
pub const COMMIT_SECONDS: &str = "sessionview_projector_commit_seconds";
pub const FOLD_SECONDS: &str = "sessionview_projector_fold_seconds";
pub const DEAD_LETTERS: &str = "sessionview_projector_dead_letters_total";
pub const CONFLICTS: &str = "sessionview_projector_commit_conflicts_total";
pub const RETRIES: &str = "sessionview_projector_store_retries_total";
pub const LAG_MESSAGES: &str = "sessionview_projector_lag_messages";
pub const LAG_SECONDS: &str = "sessionview_projector_lag_seconds";
pub const REFUSED: &str = "sessionview_projector_refused_events_total";
pub const STATISTICS_REFRESHED: &str = "sessionview_projector_statistics_refreshed_total";

/// Histogram buckets for [`BATCH_SIZE`].
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
];
/// Histogram buckets for [`COMMIT_SECONDS`] and [`FOLD_SECONDS`].
pub const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Registers descriptions (call once after installing a recorder).
pub fn describe() {
    describe_counter!(
        EVENTS,
        "Events by event_type and outcome (applied, ignored, duplicate, parked, dead_lettered)."
    );
    describe_histogram!(BATCH_SIZE, "Messages per committed batch.");
    describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to commit one batch (rows, bookkeeping and positions in one transaction)."
    );
    describe_histogram!(
        FOLD_SECONDS,
        metrics::Unit::Seconds,
        "Time to load and fold one batch (overlaps the previous batch's commit; when it is \
         longer than the commits, the projector's CPU is the bottleneck, not the database)."
    );
    describe_counter!(DEAD_LETTERS, "Events stored as dead letters.");
    describe_counter!(
        CONFLICTS,
        "Batches discarded because another instance committed under them (a stored position moved, or an event id they apply was recorded)."
    );
    describe_counter!(
        RETRIES,
        "Batch attempts retried after a transient database error."
    );
    describe_gauge!(
        LAG_MESSAGES,
        "Messages between the last applied offset and the partition's last known high watermark."
    );
    describe_counter!(
        REFUSED,
        "Events the database refused for their content (not the connection): isolated by \
         committing their batch in parts, stored as dead letters labelled refused; the rest of \
         the batch is applied."
    );
    describe_counter!(
        STATISTICS_REFRESHED,
        "Tables analyzed by the projector because they doubled since their last statistics."
    );
    describe_gauge!(
        LAG_SECONDS,
        metrics::Unit::Seconds,
        "Age of the newest event applied in the last batch of the partition."
    );
}

pub(crate) fn events(event_type: &'static str, outcome: Outcome, n: u64) {
    counter!(EVENTS, "event_type" => event_type, "outcome" => outcome.as_str()).increment(n);
}

pub(crate) fn batch(size: usize, commit: Duration, dead_letters: usize) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(COMMIT_SECONDS).record(commit.as_secs_f64());
    batch_dead_letters(dead_letters as u64);
}

pub(crate) fn batch_dead_letters(n: u64) {
    if n > 0 {
        counter!(DEAD_LETTERS).increment(n);
    }
}

pub(crate) fn refused() {
    counter!(REFUSED).increment(1);
}

pub(crate) fn fold(took: Duration) {
    histogram!(FOLD_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn lag(partition: i32, messages: Option<i64>, seconds: Option<f64>) {
    let p = partition.to_string();
    if let Some(m) = messages {
        gauge!(LAG_MESSAGES, "partition" => p.clone()).set(m as f64);
    }
    if let Some(s) = seconds {
        gauge!(LAG_SECONDS, "partition" => p).set(s);
    }
}

pub(crate) fn commit_conflict() {
    counter!(CONFLICTS).increment(1);
}

pub(crate) fn statistics_refreshed(tables: &[String]) {
    for t in tables {
        counter!(STATISTICS_REFRESHED, "table" => t.clone()).increment(1);
    }
}

pub(crate) fn store_retry() {
    counter!(RETRIES).increment(1);
}
