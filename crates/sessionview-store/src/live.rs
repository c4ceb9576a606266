//! What the live surface reads. The session event log `GET /events/session` is served from: what
//! each commit applied, numbered in commit order and written by that commit (`session_events`), so
//! that the event becomes deliverable exactly when it is committed, to every query replica. And
//! the committed source positions every response reports (read-your-writes). The shapes and the
//! statements both backends share live here; each backend numbers and writes a commit's events in
//! its `commit` module.

use sessionview_projection::LiveEvent;
use sqlx::QueryBuilder;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::StoreError;
use crate::columns::{Cells, SESSION_EVENTS, Value};
use crate::sql::Dialect;

/// How many of the newest events the log keeps: a listener that reconnects with a
/// `Last-Event-ID` older than this many events has missed some (the stream says so). At the
/// simulator's event mix that is several minutes of a busy cluster's events.
pub const SESSION_EVENT_WINDOW: i64 = 100_000;

/// The PostgreSQL channel a commit that logged events notifies (in its transaction, so the
/// notification is delivered when, and only if, the commit is).
pub const SESSION_EVENTS_CHANNEL: &str = "sessionview_session_events";

/// Woken after every commit of this process that logged events: query services running in the
/// projector's process (`run`, `demo`) follow its commits without polling.
pub static COMMITTED: Notify = Notify::const_new();

/// One logged event, as the stream sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// Its place in the log: the stream's `id`.
    pub seq: i64,
    pub name: String,
    pub session_id: Uuid,
    pub kernel_id: Option<Uuid>,
    pub cluster_role: Option<String>,
    pub reason: Option<String>,
    pub session_name: String,
    pub access_key: String,
    pub domain_name: String,
    pub group_name: String,
}

/// The log's extent: the oldest event it still holds and the newest (0, 0 when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogExtent {
    pub oldest: i64,
    pub newest: i64,
}

/// The `seq` below which a commit that just logged up to `head` deletes events, when it is time
/// to (once per 1,024 events, not every commit).
pub(crate) fn prune_below(head: i64, logged: i64) -> Option<i64> {
    let crossed = (head / 1024) != ((head - logged) / 1024);
    (crossed && head > SESSION_EVENT_WINDOW).then(|| head - SESSION_EVENT_WINDOW + 1)
}

/// The values of `events`, numbered from `first`.
pub(crate) fn numbered(
    events: &[LiveEvent],
    first: i64,
) -> impl ExactSizeIterator<Item = (i64, &LiveEvent)> {
    events
        .iter()
        .enumerate()
        .map(move |(i, e)| (first + i as i64, e))
}

/// Up to `limit` logged events after `after`, oldest first: decoded by
/// [`crate::columns::session_event_from`] from cell 0.
pub(crate) fn after_query<'a, D: Dialect>(after: i64, limit: i64) -> QueryBuilder<'a, D> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT {} FROM {} WHERE seq > ",
        SESSION_EVENTS.list(),
        SESSION_EVENTS.name
    ));
    D::push_value(&mut qb, Value::Int8(Some(after)));
    qb.push(" ORDER BY seq LIMIT ");
    D::push_value(&mut qb, Value::Int8(Some(limit)));
    qb
}

/// The log's extent, as two int8 cells (oldest, newest).
pub(crate) const EXTENT_SQL: &str = "SELECT (SELECT coalesce(min(seq), 0) FROM session_events), \
     (SELECT seq FROM session_events_head WHERE id = 1)";

/// The log's extent from the cells of [`EXTENT_SQL`].
pub(crate) fn extent_from(c: &mut impl Cells) -> Result<LogExtent, StoreError> {
    Ok(LogExtent {
        oldest: c.int8()?,
        newest: c.int8()?,
    })
}

/// One partition's committed position: every message before `next_offset` has been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedPosition {
    /// The source's name: a Kafka topic, or `file:<path>`.
    pub source: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// Every committed position, by source and partition: decoded by [`position_from`].
pub(crate) const POSITIONS_SQL: &str =
    "SELECT source, partition, next_offset FROM source_positions ORDER BY source, partition";

/// A position from the cells of [`POSITIONS_SQL`].
pub(crate) fn position_from(c: &mut impl Cells) -> Result<CommittedPosition, StoreError> {
    Ok(CommittedPosition {
        source: c.text()?,
        partition: c.int4()?,
        next_offset: c.int8()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_pruned_once_per_kiloevent_beyond_the_window() {
        assert_eq!(prune_below(5_000, 10), None, "within the window");
        let w = SESSION_EVENT_WINDOW;
        // 102,400 is a multiple of 1,024.
        assert_eq!(prune_below(102_400, 1), Some(102_400 - w + 1), "crossed");
        assert_eq!(prune_below(102_401, 1), None, "not crossed");
        assert_eq!(prune_below(w + 5000, 4000), Some(5001));
    }
}
