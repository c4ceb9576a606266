//! What the live surface reads. The session event log `GET /events/session` is served from: what
//! each commit applied, numbered in commit order and written by that commit
//! (`session_event_pages`: pages of up to [`PAGE_EVENTS`] events, one JSON array each), so that
//! the event becomes deliverable exactly when it is committed, to every query replica. And
//! the committed source positions every response reports (read-your-writes). The shapes and the
//! statements both backends share live here; each backend numbers and writes a commit's events in
//! its `commit` module.

use sessionview_projection::LiveEvent;
use sqlx::QueryBuilder;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::StoreError;
use crate::columns::{Cells, Value};
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

/// One logged event, as the stream sends it. A page stores it as an array of its fields after
/// `seq` (which the page's place gives), in this order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SessionEvent {
    /// Its place in the log: the stream's `id`.
    #[serde(skip)]
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

/// The most events one page of the log holds. A commit writes a row per page, not per event (a
/// row, an index entry and a deletion per event were 40 % of the projector's write-ahead log),
/// and a reader decodes at most two pages more than it returns.
pub const PAGE_EVENTS: usize = 1000;

/// The `seq` below which a commit that just logged up to `head` deletes pages (those wholly below
/// it), when it is time to (once per 1,024 events, not every commit).
pub(crate) fn prune_below(head: i64, logged: i64) -> Option<i64> {
    let crossed = (head / 1024) != ((head - logged) / 1024);
    (crossed && head > SESSION_EVENT_WINDOW).then(|| head - SESSION_EVENT_WINDOW + 1)
}

/// One event as a page stores it: an array, in [`SessionEvent`]'s order (less `seq`).
type PageEvent<'a> = (
    &'a str,
    Uuid,
    Option<Uuid>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);

/// One page of a commit's events: its first and last `seq` and its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub first_seq: i64,
    pub last_seq: i64,
    pub events: String,
}

/// `events`, numbered from `first`, in pages of at most [`PAGE_EVENTS`].
pub(crate) fn pages(events: &[LiveEvent], first: i64) -> Result<Vec<Page>, StoreError> {
    let mut pages = Vec::with_capacity(events.len().div_ceil(PAGE_EVENTS));
    let mut first_seq = first;
    for chunk in events.chunks(PAGE_EVENTS) {
        let page: Vec<PageEvent<'_>> = chunk
            .iter()
            .map(|e| {
                (
                    e.name,
                    e.session_id,
                    e.kernel_id,
                    e.cluster_role.as_deref(),
                    e.reason.as_deref(),
                    e.session_name.as_str(),
                    e.access_key.as_str(),
                    e.domain_name.as_str(),
                    e.group_name.as_str(),
                )
            })
            .collect();
        let events = serde_json::to_string(&page).map_err(|e| StoreError::Corrupt {
            table: PAGES_TABLE,
            detail: format!("an event could not be written as JSON: {e}"),
        })?;
        let last_seq = first_seq + chunk.len() as i64 - 1;
        pages.push(Page {
            first_seq,
            last_seq,
            events,
        });
        first_seq = last_seq + 1;
    }
    Ok(pages)
}

pub(crate) const PAGES_TABLE: &str = "session_event_pages";

/// The pages that may hold events after `after` up to `after + limit`, oldest first, as
/// (`first_seq`, `events`) cells: numbers are dense, so those are the pages whose range meets
/// that one (a page begins at most [`PAGE_EVENTS`] before its last event).
pub(crate) fn pages_query<'a, D: Dialect>(after: i64, limit: i64) -> QueryBuilder<'a, D> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT first_seq, events FROM {PAGES_TABLE} WHERE first_seq > "
    ));
    D::push_value(
        &mut qb,
        Value::Int8(Some(after.saturating_sub(PAGE_EVENTS as i64))),
    );
    qb.push(" AND first_seq <= ");
    D::push_value(&mut qb, Value::Int8(Some(after.saturating_add(limit))));
    qb.push(" AND last_seq > ");
    D::push_value(&mut qb, Value::Int8(Some(after)));
    qb.push(" ORDER BY first_seq");
    qb
}

/// A page's (`first_seq`, `events`) from the cells of [`pages_query`].
pub(crate) fn page_from(c: &mut impl Cells) -> Result<(i64, String), StoreError> {
    Ok((c.int8()?, c.text()?))
}

/// Up to `limit` events after `after`, oldest first, from the pages [`pages_query`] selected.
pub(crate) fn events_after(
    rows: impl IntoIterator<Item = Result<(i64, String), StoreError>>,
    after: i64,
    limit: i64,
) -> Result<Vec<SessionEvent>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let (first_seq, text) = row?;
        let page: Vec<SessionEvent> =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                table: PAGES_TABLE,
                detail: format!("the page from seq {first_seq} is not a list of events: {e}"),
            })?;
        for (seq, mut e) in (first_seq..).zip(page) {
            if seq <= after {
                continue;
            }
            if out.len() as i64 >= limit {
                return Ok(out);
            }
            e.seq = seq;
            out.push(e);
        }
    }
    Ok(out)
}

/// The log's extent, as two int8 cells (oldest, newest).
pub(crate) const EXTENT_SQL: &str = "SELECT (SELECT coalesce(min(first_seq), 0) FROM session_event_pages), \
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

    fn live(n: usize) -> LiveEvent {
        LiveEvent {
            name: "kernel_started",
            session_id: Uuid::from_u128(n as u128),
            kernel_id: (n % 2 == 0).then(|| Uuid::from_u128(1000 + n as u128)),
            cluster_role: (n % 2 == 0).then(|| "main".to_owned()),
            reason: (n % 3 == 0).then(|| format!("why \"{n}\"\n\u{2028}")),
            session_name: format!("s{n}"),
            access_key: "AK".into(),
            domain_name: "default".into(),
            group_name: "g".into(),
        }
    }

    #[test]
    fn pages_number_events_densely_and_read_back_from_any_seq() {
        let events: Vec<LiveEvent> = (0..2_345).map(live).collect();
        let pages = pages(&events, 11).unwrap();
        let ranges: Vec<(i64, i64)> = pages.iter().map(|p| (p.first_seq, p.last_seq)).collect();
        assert_eq!(ranges, vec![(11, 1010), (1011, 2010), (2011, 2355)]);
        let rows = |after: i64, limit: i64| {
            // What pages_query selects.
            pages
                .iter()
                .filter(move |p| {
                    p.first_seq > after - PAGE_EVENTS as i64
                        && p.first_seq <= after + limit
                        && p.last_seq > after
                })
                .map(|p| Ok((p.first_seq, p.events.clone())))
                .collect::<Vec<_>>()
        };
        for (after, limit) in [
            (0, 5),
            (10, 1000),
            (1009, 3),
            (1500, 1000),
            (2354, 10),
            (2355, 10),
        ] {
            let got = events_after(rows(after, limit), after, limit).unwrap();
            let first = (after + 1).max(11);
            let want: Vec<i64> = (first..=(after + limit).min(2355)).collect();
            assert_eq!(
                got.iter().map(|e| e.seq).collect::<Vec<_>>(),
                want,
                "after {after}"
            );
            for e in got {
                let source = &events[(e.seq - 11) as usize];
                assert_eq!(
                    (
                        e.name.as_str(),
                        e.session_id,
                        e.kernel_id,
                        &e.cluster_role,
                        &e.reason
                    ),
                    (
                        source.name,
                        source.session_id,
                        source.kernel_id,
                        &source.cluster_role,
                        &source.reason
                    )
                );
                assert_eq!(
                    (e.session_name, e.access_key, e.domain_name, e.group_name),
                    (
                        source.session_name.clone(),
                        source.access_key.clone(),
                        source.domain_name.clone(),
                        source.group_name.clone()
                    )
                );
            }
        }
    }

    #[test]
    fn a_page_that_is_not_a_list_of_events_is_named() {
        let err = events_after([Ok((7, "{}".to_owned()))], 0, 10).unwrap_err();
        assert!(err.to_string().contains("the page from seq 7"), "{err}");
    }

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
