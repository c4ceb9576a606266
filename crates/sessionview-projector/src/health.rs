//! Whether a running projector makes progress: the facts behind `/readyz`.
//!
//! A projector far behind but catching up is healthy (it is working); one that is caught up and
//! idle is healthy too. It is *stalled* when events wait (some owned partition's high watermark is
//! beyond the stored position) and no batch has been committed for the stall window: the lag can
//! then only grow. Readiness fails on a stall, never merely on high lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared progress facts of one projector run; cheap to clone.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Facts>>);

#[derive(Debug)]
struct Facts {
    /// When the last batch was committed (or the run started, or a partition was assigned).
    last_progress: Instant,
    /// Stored next offset per owned partition (`None`: nothing stored yet).
    next: HashMap<i32, Option<i64>>,
    /// Last known high watermark per partition.
    high: HashMap<i32, i64>,
}

/// The projector's state as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing waits on an owned partition (or the lag is not known).
    CaughtUp,
    /// Events wait and a batch was committed within the stall window.
    Working { behind: i64 },
    /// Events wait and nothing was committed for longer than the stall window.
    Stalled { behind: i64, idle: Duration },
}

impl Progress {
    pub fn is_stalled(&self) -> bool {
        matches!(self, Progress::Stalled { .. })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Facts {
            last_progress: Instant::now(),
            next: HashMap::new(),
            high: HashMap::new(),
        })))
    }

    fn facts(&self) -> MutexGuard<'_, Facts> {
        // The facts stay consistent under a panic elsewhere (every update is one assignment).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A partition was assigned at `next`: it starts with a fresh stall window.
    pub(crate) fn assigned(&self, partition: i32, next: Option<i64>) {
        let mut f = self.facts();
        f.next.insert(partition, next);
        f.last_progress = Instant::now();
    }

    /// A partition was revoked: its lag is somebody else's now.
    pub(crate) fn revoked(&self, partition: i32) {
        self.facts().next.remove(&partition);
    }

    /// A batch moved `partition` to `next`.
    pub(crate) fn committed(&self, advances: impl IntoIterator<Item = (i32, i64)>) {
        let mut f = self.facts();
        for (p, next) in advances {
            f.next.insert(p, Some(next));
        }
        f.last_progress = Instant::now();
    }

    /// The broker reported `partition`'s high watermark.
    pub(crate) fn high_watermark(&self, partition: i32, high: i64) {
        self.facts().high.insert(partition, high);
    }

    /// Messages between the stored position of `partition` and its last known high watermark;
    /// `None` for a partition this instance does not own (its lag is another instance's to report).
    pub(crate) fn behind(&self, partition: i32) -> Option<i64> {
        let f = self.facts();
        let high = *f.high.get(&partition)?;
        let next = (*f.next.get(&partition)?).unwrap_or(0);
        Some((high - next).max(0))
    }

    /// The current state, judged against `stall_after`.
    pub fn progress(&self, stall_after: Duration) -> Progress {
        let f = self.facts();
        let behind: i64 = f
            .next
            .iter()
            .filter_map(|(p, next)| {
                let high = f.high.get(p)?;
                Some((high - next.unwrap_or(0)).max(0))
            })
            .sum();
        judge(behind, f.last_progress.elapsed(), stall_after)
    }
}

/// The rule, without clocks: stalled when events wait and nothing moved for the window.
fn judge(behind: i64, idle: Duration, stall_after: Duration) -> Progress {
    if behind <= 0 {
        Progress::CaughtUp
    } else if idle > stall_after {
        Progress::Stalled { behind, idle }
    } else {
        Progress::Working { behind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn high_lag_with_progress_is_not_a_stall() {
        assert_eq!(
            judge(1_000_000, Duration::from_secs(1), WINDOW),
            Progress::Working { behind: 1_000_000 }
        );
    }

    #[test]
    fn idle_and_caught_up_is_not_a_stall() {
        assert_eq!(
            judge(0, Duration::from_secs(3600), WINDOW),
            Progress::CaughtUp
        );
    }

    #[test]
    fn waiting_events_without_progress_is_a_stall() {
        let p = judge(3, Duration::from_secs(61), WINDOW);
        assert!(p.is_stalled(), "{p:?}");
    }

    #[test]
    fn lag_counts_owned_partitions_only_and_commits_reset_the_window() {
        let h = Health::new();
        h.assigned(0, Some(10));
        h.assigned(1, None);
        h.high_watermark(0, 15);
        h.high_watermark(1, 4);
        h.high_watermark(2, 1000); // not ours
        assert_eq!(h.behind(0), Some(5));
        assert_eq!(h.behind(1), Some(4));
        assert_eq!(h.behind(2), None, "not ours");
        assert_eq!(h.progress(WINDOW), Progress::Working { behind: 9 });
        std::thread::sleep(Duration::from_millis(2));
        assert!(h.progress(Duration::ZERO).is_stalled());
        h.committed([(0, 15), (1, 4)]);
        assert_eq!(h.progress(Duration::ZERO), Progress::CaughtUp);
        h.revoked(0);
        h.high_watermark(0, 100);
        assert_eq!(h.progress(Duration::ZERO), Progress::CaughtUp);
    }
}
