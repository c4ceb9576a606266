//! The applier task: gathers bounded batches from a source, folds them and commits them exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use sessionview_projection::{Changes, Fold, Outcome, Position, plan};
use sessionview_store::{Advance, Commit, CommitOutcome, Store, StoreError};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::health::Health;
use crate::metrics;
use crate::{BatchConfig, ProjectorError, Summary, Until};

/// One message from a source, tagged with the assignment epoch it was read under.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub partition: i32,
    pub offset: i64,
    /// The assignment epoch of the partition when the message was read; stale epochs are dropped.
    pub epoch: u64,
    /// The message value; `None` when there is nothing to apply (a blank archive line).
    pub payload: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch at which the source recorded the message, if known.
    pub timestamp_ms: Option<i64>,
}

/// What a source sends the applier.
#[derive(Debug)]
pub(crate) enum Item {
    Message(SourceMessage),
    /// Every partition has reached the end it had at start (`--exit-at-end`), or the file ended.
    End,
}

/// What the applier knows about one owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionState {
    pub epoch: u64,
    /// The stored next offset (`None`: nothing stored yet).
    pub next: Option<i64>,
}

/// State shared between a source and the applier.
///
/// The source (re)assigns partitions under the lock; the applier holds the lock while it filters,
/// folds and commits a batch, so a revocation waits for an in-flight commit and a batch is never
/// applied for a partition the instance no longer owns.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) owned: Mutex<HashMap<i32, PartitionState>>,
    epochs: AtomicU64,
    /// Partitions whose commit conflicted: the source must re-read the stored position and re-seek.
    reseek: std::sync::Mutex<Vec<i32>>,
    /// Stored positions, high watermarks and the time of the last commit (lag and readiness).
    pub(crate) health: Health,
}

impl Shared {
    pub(crate) fn new(health: Health) -> Self {
        Self {
            owned: Mutex::default(),
            epochs: AtomicU64::default(),
            reseek: std::sync::Mutex::default(),
            health,
        }
    }

    /// A fresh epoch number for an assignment or a re-seek.
    pub(crate) fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Partitions waiting for a re-seek, emptied.
    pub(crate) fn take_reseeks(&self) -> Vec<i32> {
        match self.reseek.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    pub(crate) fn request_reseek(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut v = match self.reseek.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        v.extend(partitions);
    }
}

/// Folds and commits batches for one source.
#[derive(Debug)]
pub(crate) struct Applier<S> {
    store: S,
    source: String,
    shared: Arc<Shared>,
    cfg: BatchConfig,
    until: Until,
    progress: Option<Arc<AtomicU64>>,
    summary: Summary,
}

impl<S: Store> Applier<S> {
    pub(crate) fn new(
        store: S,
        source: String,
        shared: Arc<Shared>,
        cfg: BatchConfig,
        until: Until,
        progress: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            store,
            source,
            shared,
            cfg,
            until,
            progress,
            summary: Summary::default(),
        }
    }

    /// With [`Until::Positions`]: whether every target partition has reached its target.
    async fn reached_targets(&self) -> bool {
        let Until::Positions(targets) = &self.until else {
            return false;
        };
        let owned = self.shared.owned.lock().await;
        targets.iter().all(|(p, target)| {
            owned
                .get(p)
                .and_then(|s| s.next)
                .is_some_and(|next| next >= *target)
                || *target <= 0
        })
    }

    /// Runs until the source ends, the channel closes, or `shutdown` fires; a batch in flight at
    /// shutdown is still committed (drained), then the applier returns.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Item>,
        shutdown: CancellationToken,
    ) -> Result<Summary, ProjectorError> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.reached_targets().await {
                break;
            }
            let mut batch = Vec::new();
            let mut finished = false;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                item = rx.recv() => match item {
                    Some(Item::Message(m)) => batch.push(m),
                    Some(Item::End) | None => finished = true,
                },
                // Re-check the targets now and then: they may be met without a message (at
                // assignment).
                _ = tick.tick() => continue,
            }
            if !finished {
                let deadline = tokio::time::Instant::now() + self.cfg.linger;
                while batch.len() < self.cfg.max_events {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => { finished = true; break }
                        () = tokio::time::sleep_until(deadline) => break,
                        item = rx.recv() => match item {
                            Some(Item::Message(m)) => batch.push(m),
                            Some(Item::End) | None => { finished = true; break }
                        },
                    }
                }
            }
            if !batch.is_empty() {
                self.apply_batch(batch, &shutdown).await?;
            }
            if finished {
                break;
            }
        }
        self.summary.elapsed = started.elapsed();
        info!(
            source = %self.source,
            events = self.summary.messages,
            batches = self.summary.batches,
            seconds = self.summary.elapsed.as_secs_f64(),
            "projector stopped"
        );
        Ok(self.summary)
    }

    async fn apply_batch(
        &mut self,
        mut batch: Vec<SourceMessage>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectorError> {
        let shared = Arc::clone(&self.shared);
        let mut owned = shared.owned.lock().await;
        // Only partitions still owned, under the epoch the messages were read in, and only
        // offsets not yet applied.
        let before = batch.len();
        let targets = match &self.until {
            Until::Positions(t) => Some(t),
            _ => None,
        };
        batch.retain(|m| {
            owned.get(&m.partition).is_some_and(|st| {
                st.epoch == m.epoch && st.next.is_none_or(|next| m.offset >= next)
            }) && targets.is_none_or(|t| t.get(&m.partition).is_some_and(|end| m.offset < *end))
        });
        if batch.len() < before {
            debug!(
                dropped = before - batch.len(),
                "dropped messages of revoked or re-seeked partitions"
            );
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut advances: BTreeMap<i32, Advance> = BTreeMap::new();
        for m in &batch {
            let st = owned.get(&m.partition).copied();
            let a = advances.entry(m.partition).or_insert(Advance {
                partition: m.partition,
                expected: st.and_then(|s| s.next),
                next: m.offset + 1,
            });
            a.next = a.next.max(m.offset + 1);
        }
        let advances: Vec<Advance> = advances.into_values().collect();
        let first = batch.first().map(|m| (m.partition, m.offset));
        let last = batch.last().map(|m| (m.partition, m.offset));
        let span = info_span!("batch", source = %self.source, events = batch.len(), ?first, ?last);

        let attempt = || self.fold_and_commit(&batch, &advances);
        let retried = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(10))
                    .without_max_times(),
            )
            .when(StoreError::is_transient)
            .notify(|e, wait| {
                metrics::store_retry();
                warn!(error = %e, retry_in = ?wait, "transient database error; batch not committed, retrying");
            });
        let result = tokio::select! {
            biased;
            r = retried.instrument(span) => r,
            () = shutdown.cancelled() => {
                info!("shutdown while retrying: batch left uncommitted, positions untouched");
                return Ok(());
            }
        };
        let (outcome, changes, commit_time) = result?;
        match outcome {
            CommitOutcome::Committed => {
                for a in &advances {
                    if let Some(st) = owned.get_mut(&a.partition) {
                        st.next = Some(a.next);
                    }
                }
                drop(owned);
                self.record(&batch, &advances, &changes, commit_time);
            }
            CommitOutcome::Conflict { partitions } => {
                warn!(
                    ?partitions,
                    "stored position moved under this batch (another instance applied it); discarding the batch and re-seeking"
                );
                metrics::commit_conflict();
                self.summary.conflicts += 1;
                // Stop applying these partitions until the source has re-seeked them.
                for a in &advances {
                    owned.remove(&a.partition);
                }
                shared.request_reseek(advances.iter().map(|a| a.partition));
            }
        }
        Ok(())
    }

    async fn fold_and_commit(
        &self,
        batch: &[SourceMessage],
        advances: &[Advance],
    ) -> Result<(CommitOutcome, Changes, Duration), StoreError> {
        let payloads: Vec<&[u8]> = batch.iter().filter_map(|m| m.payload.as_deref()).collect();
        let (decoded, req) = plan(&payloads);
        let loaded = self.store.load(&req).await?;
        let mut fold = Fold::from_loaded(loaded);
        let mut decoded = decoded.into_iter();
        for m in batch {
            let Some(bytes) = m.payload.as_deref() else {
                continue;
            };
            let Some(d) = decoded.next() else { break };
            let position = Position {
                partition: m.partition,
                offset: m.offset,
            };
            fold.apply_decoded(&self.source, position, bytes, d);
        }
        let changes = fold.finish();
        let started = Instant::now();
        let outcome = self
            .store
            .commit(Commit {
                source: &self.source,
                advances,
                changes: &changes,
                retire: &[],
            })
            .await?;
        Ok((outcome, changes, started.elapsed()))
    }

    fn record(
        &mut self,
        batch: &[SourceMessage],
        advances: &[Advance],
        changes: &Changes,
        commit_time: Duration,
    ) {
        self.summary.batches += 1;
        self.summary.messages += batch.len() as u64;
        if let Some(p) = &self.progress {
            p.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for ((ty, outcome), n) in &changes.tally {
            metrics::events(ty, *outcome, *n);
            *self.summary.outcomes.entry(*outcome).or_default() += n;
        }
        metrics::batch(batch.len(), commit_time, changes.dead_letters.len());
        let now_ms = chrono::Utc::now().timestamp_millis();
        let health = &self.shared.health;
        health.committed(advances.iter().map(|a| (a.partition, a.next)));
        for a in advances {
            let newest = batch
                .iter()
                .filter(|m| m.partition == a.partition)
                .filter_map(|m| m.timestamp_ms)
                .max();
            metrics::lag(
                a.partition,
                health.behind(a.partition),
                newest.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
            );
        }
        debug!(
            events = batch.len(),
            applied = changes
                .tally
                .iter()
                .filter(|((_, o), _)| *o == Outcome::Applied)
                .map(|(_, n)| n)
                .sum::<u64>(),
            commit_ms = commit_time.as_millis() as u64,
            "batch committed"
        );
    }
}
