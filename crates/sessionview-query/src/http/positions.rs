//! Read-your-writes: the committed source positions every response reports
//! (`X-SessionView-Positions`), and a request's bounded wait for positions a producer reported
//! (`X-SessionView-Min-Positions`, `X-SessionView-Wait-Ms`).
//!
//! The server's follower (`events::Hub`) re-reads the positions after every commit wake-up (and
//! once a second) into a `watch`. A response reports the value it saw before the answer was read:
//! positions only grow, so the answer reflects at least those. A waiting request checks the
//! `watch`, then the database itself, then waits on the `watch` until its deadline, and asks the
//! database once more before it answers 503 naming the partitions that are behind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use sessionview_store::live::CommittedPosition;
use tokio::sync::watch;

use super::problem::{bad_params, problem, unavailable};
use crate::schema::Db;

/// Every response: the committed positions the answer was read at.
pub const POSITIONS: HeaderName = HeaderName::from_static("x-sessionview-positions");
/// A request: the positions to wait for.
pub const MIN_POSITIONS: HeaderName = HeaderName::from_static("x-sessionview-min-positions");
/// A request: how long to wait for them, in milliseconds.
pub const WAIT_MS: HeaderName = HeaderName::from_static("x-sessionview-wait-ms");
/// How long a request waits when it does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(2000);
/// The longest a request may wait (a larger `X-SessionView-Wait-Ms` is lowered to it).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most partitions one `X-SessionView-Min-Positions` may name.
const MAX_NAMED: usize = 1024;

/// Next offsets by (source, partition): a Kafka topic's name is its source's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Positions(BTreeMap<(String, i32), i64>);

/// One partition that has not reached what a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Behind {
    source: String,
    partition: i32,
    asked: i64,
    /// `None`: nothing of it is committed yet.
    at: Option<i64>,
}

impl Positions {
    pub(crate) fn from_committed(committed: Vec<CommittedPosition>) -> Self {
        Self(
            committed
                .into_iter()
                .map(|p| ((p.source, p.partition), p.next_offset))
                .collect(),
        )
    }

    /// `<source>/<partition>=<next offset>,...`, by source and partition. A source whose name
    /// cannot appear in a header (a file path with a control character) is left out.
    pub(crate) fn header(&self) -> HeaderValue {
        let mut text = String::new();
        for ((source, partition), next) in &self.0 {
            if source.contains(',') || source.bytes().any(|b| b.is_ascii_control()) {
                continue;
            }
            if !text.is_empty() {
                text.push(',');
            }
            let _ = write!(text, "{source}/{partition}={next}");
        }
        HeaderValue::from_bytes(text.as_bytes()).unwrap_or(HeaderValue::from_static(""))
    }

    /// The partitions of `wanted` this has not reached.
    fn behind(&self, wanted: &Positions) -> Vec<Behind> {
        wanted
            .0
            .iter()
            .filter_map(|((source, partition), asked)| {
                let at = self.0.get(&(source.clone(), *partition)).copied();
                (at.unwrap_or(0) < *asked).then(|| Behind {
                    source: source.clone(),
                    partition: *partition,
                    asked: *asked,
                    at,
                })
            })
            .collect()
    }

    pub(super) fn reaches(&self, wanted: &Positions) -> bool {
        wanted
            .0
            .iter()
            .all(|(k, asked)| self.0.get(k).is_some_and(|at| at >= asked))
    }
}

/// Parses `X-SessionView-Min-Positions` (`<topic>/<partition>=<offset>,...`; a partition named
/// twice must reach the larger offset). The error names what is wrong.
pub(crate) fn parse(text: &str) -> Result<Positions, String> {
    let mut wanted = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if wanted.len() == MAX_NAMED {
            return Err(format!(
                "{MIN_POSITIONS} names more than {MAX_NAMED} partitions"
            ));
        }
        let shape = || format!("{MIN_POSITIONS}: {entry:?} is not <topic>/<partition>=<offset>");
        let (key, offset) = entry.rsplit_once('=').ok_or_else(shape)?;
        let (source, partition) = key.trim().rsplit_once('/').ok_or_else(shape)?;
        let partition: i32 = partition
            .trim()
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(shape)?;
        let offset: i64 = offset
            .trim()
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(shape)?;
        if source.trim().is_empty() {
            return Err(shape());
        }
        let asked = wanted
            .entry((source.trim().to_owned(), partition))
            .or_insert(0);
        *asked = offset.max(*asked);
    }
    Ok(Positions(wanted))
}

/// What a request asked to wait for: the positions, and for how long.
fn asked(headers: &HeaderMap) -> Result<Option<(Positions, Duration)>, String> {
    let Some(value) = headers.get(MIN_POSITIONS) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| format!("{MIN_POSITIONS} is not printable ASCII"))?;
    let wanted = parse(text)?;
    let wait = match headers.get(WAIT_MS) {
        None => DEFAULT_WAIT,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{WAIT_MS} is not a whole number of milliseconds"))?,
    };
    Ok(Some((wanted, wait.min(MAX_WAIT))))
}

/// Why a request did not get past its wait, with the answer to give it.
pub(crate) struct Refused {
    pub(crate) response: Response,
    /// The metrics outcome: `bad_request`, `behind` or `unavailable`.
    pub(crate) outcome: &'static str,
}

impl Refused {
    fn new(response: Response, outcome: &'static str) -> Self {
        Self { response, outcome }
    }
}

/// The server's view of the committed positions, kept by its follower.
pub(crate) struct Tracker {
    current: watch::Sender<Arc<Positions>>,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self {
            current: watch::Sender::new(Arc::new(Positions::default())),
        }
    }

    /// The newest positions the follower (or a waiting request) read.
    pub(crate) fn current(&self) -> Arc<Positions> {
        Arc::clone(&self.current.borrow())
    }

    /// Records positions just read. The database is the truth: what was read replaces what was
    /// held (a read that raced a newer one only understates, which every reader may take as a
    /// lower bound; an in-place rebuild that starts the positions over is followed).
    pub(crate) fn update(&self, read: Positions) {
        self.current.send_if_modified(|now| {
            if **now == read {
                return false;
            }
            *now = Arc::new(read);
            true
        });
    }

    async fn read(&self, store: &Db) -> Result<Arc<Positions>, Refused> {
        match store.committed_positions().await {
            Ok(committed) => {
                self.update(Positions::from_committed(committed));
                Ok(self.current())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the committed positions");
                Err(Refused::new(
                    unavailable("the read model's database cannot answer now; retry"),
                    "unavailable",
                ))
            }
        }
    }

    /// Waits as the request's headers ask, at most `limit`: `Ok(None)` when they ask nothing,
    /// `Ok(Some(positions))` once the positions are reached (the ones to report), else the
    /// refusal to answer (400 for a malformed header, 503 naming what is behind, 503 when the
    /// database cannot answer).
    pub(crate) async fn wait(
        &self,
        store: &Db,
        headers: &HeaderMap,
        limit: Duration,
    ) -> Result<Option<Arc<Positions>>, Refused> {
        let (wanted, wait) = match asked(headers) {
            Ok(Some(asked)) => asked,
            Ok(None) => return Ok(None),
            Err(msg) => return Err(Refused::new(bad_params(msg), "bad_request")),
        };
        let wait = wait.min(limit);
        let now = self.current();
        if now.reaches(&wanted) {
            return Ok(Some(now));
        }
        let now = self.read(store).await?;
        if now.reaches(&wanted) {
            return Ok(Some(now));
        }
        let mut rx = self.current.subscribe();
        // The watch's guard is not held across an await (it is not `Send`).
        let reached = match tokio::time::timeout(wait, rx.wait_for(|p| p.reaches(&wanted))).await {
            Ok(Ok(p)) => Some(Arc::clone(&p)),
            _ => None,
        };
        if let Some(p) = reached {
            return Ok(Some(p));
        }
        let now = self.read(store).await?;
        let behind = now.behind(&wanted);
        if behind.is_empty() {
            return Ok(Some(now));
        }
        Err(Refused::new(lagging(&behind, wait, &now), "behind"))
    }
}

/// 503 naming the partitions that are behind, with the positions the server has.
fn lagging(behind: &[Behind], waited: Duration, now: &Positions) -> Response {
    let parts: Vec<String> = behind
        .iter()
        .map(|b| match b.at {
            Some(at) => format!(
                "{}/{} is at {at} ({} asked)",
                b.source, b.partition, b.asked
            ),
            None => format!(
                "{}/{} has nothing committed ({} asked)",
                b.source, b.partition, b.asked
            ),
        })
        .collect();
    let mut resp = problem(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "Service unavailable.",
        Some((
            "msg",
            Value::String(format!(
                "the read model did not reach {MIN_POSITIONS} within {} ms: {}",
                waited.as_millis(),
                parts.join(", ")
            )),
        )),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp.headers_mut().insert(POSITIONS, now.header());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entries: &[(&str, i32, i64)]) -> Positions {
        Positions::from_committed(
            entries
                .iter()
                .map(|(s, p, n)| CommittedPosition {
                    source: (*s).into(),
                    partition: *p,
                    next_offset: *n,
                })
                .collect(),
        )
    }

    #[test]
    fn the_header_lists_sources_and_partitions_in_order() {
        let p = at(&[("t", 1, 7), ("t", 0, 3), ("a.b", 0, 1)]);
        assert_eq!(p.header(), "a.b/0=1,t/0=3,t/1=7");
        assert_eq!(Positions::default().header(), "");
        // A name a header cannot carry (or a reader could not split) is left out.
        let odd = at(&[("file:/x\n", 0, 1), ("file:/a,b", 0, 2), ("file:/ok", 0, 3)]);
        assert_eq!(odd.header(), "file:/ok/0=3");
    }

    #[test]
    fn min_positions_parse_and_refuse_with_the_reason() {
        assert_eq!(
            parse(" t/0=5, t/1=2,file:/var/x/0=9 ,").unwrap(),
            at(&[("t", 0, 5), ("t", 1, 2), ("file:/var/x", 0, 9)])
        );
        assert_eq!(
            parse("t/0=5,t/0=3").unwrap(),
            at(&[("t", 0, 5)]),
            "the larger"
        );
        assert_eq!(parse("").unwrap(), Positions::default());
        for bad in [
            "t", "t/0", "t=5", "/0=5", "t/x=5", "t/-1=5", "t/0=-5", "t/0=", "t/0=5e3",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("is not <topic>/<partition>=<offset>"),
                "{bad}: {err}"
            );
        }
        let many: Vec<String> = (0..=MAX_NAMED).map(|p| format!("t/{p}=1")).collect();
        assert!(
            parse(&many.join(","))
                .unwrap_err()
                .contains("more than 1024")
        );
    }

    #[test]
    fn reaching_means_every_named_partition_at_or_past_its_offset() {
        let now = at(&[("t", 0, 5), ("t", 1, 2)]);
        assert!(now.reaches(&parse("t/0=5").unwrap()));
        assert!(now.reaches(&parse("").unwrap()));
        assert!(!now.reaches(&parse("t/0=6").unwrap()));
        assert_eq!(
            now.behind(&parse("t/0=6,t/1=2,u/0=1").unwrap()),
            [
                Behind {
                    source: "t".into(),
                    partition: 0,
                    asked: 6,
                    at: Some(5)
                },
                Behind {
                    source: "u".into(),
                    partition: 0,
                    asked: 1,
                    at: None
                },
            ]
        );
    }

    #[tokio::test]
    async fn the_tracker_holds_the_last_read_and_wakes_waiters() {
        let t = Tracker::new();
        let mut rx = t.current.subscribe();
        t.update(at(&[("t", 0, 5)]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        t.update(at(&[("t", 0, 5)]));
        assert!(!rx.has_changed().unwrap(), "the same positions wake nobody");
        t.update(at(&[("t", 0, 6), ("u", 0, 1)]));
        assert_eq!(*t.current(), at(&[("t", 0, 6), ("u", 0, 1)]));
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn wait_headers_are_checked_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(asked(&h), Ok(None));
        h.insert(MIN_POSITIONS, HeaderValue::from_static("t/0=1"));
        assert_eq!(asked(&h), Ok(Some((at(&[("t", 0, 1)]), DEFAULT_WAIT))));
        h.insert(WAIT_MS, HeaderValue::from_static("999999999"));
        assert_eq!(asked(&h).unwrap().unwrap().1, MAX_WAIT);
        h.insert(WAIT_MS, HeaderValue::from_static("soon"));
        assert!(asked(&h).unwrap_err().contains("x-sessionview-wait-ms"));
    }
}
