//! The applier task: gathers bounded batches from a source, folds them and commits them exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use sessionview_events::Event;
use sessionview_projection::{
    Batch, Changes, DeadLetter, LoadRequest, Loaded, Outcome, Pending, Position,
};
use sessionview_store::{Advance, Commit, CommitOutcome, ProjectorStore, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics;
use crate::source::{Item, PartitionState, Shared, SourceMessage};
use crate::{BatchConfig, ProjectorError, Summary, Until};

/// A batch folded and not yet committed.
#[derive(Debug, Clone)]
struct Folded {
    /// The admitted messages.
    batch: Vec<SourceMessage>,
    /// The epoch of each partition of the batch when it was folded.
    epochs: BTreeMap<i32, u64>,
    changes: Changes,
}

/// What became of a folded batch.
#[derive(Debug)]
enum Committed {
    Done(Vec<Advance>, Duration),
    /// The stored positions of these partitions moved (another instance applied them).
    Conflict(Vec<i32>),
    /// A partition was revoked or re-seeked after the batch was folded.
    Stale,
    /// Shutdown while a transient error was being retried.
    Abandoned,
    /// The database refused the batch for the data it carries (not the connection, not a
    /// conflict): some event of it is one the store cannot hold.
    Refused(StoreError),
}

/// The dead-letter label of an event the database refused for its content.
pub const REFUSED: &str = "refused";

/// Runs `op`, retrying transient database errors with exponential backoff (100 ms to 10 s) for as
/// long as it takes. After `shutdown`, a statement in progress still finishes (the drain), but no
/// new retry starts and a retry wait is cut short: `Ok(None)`, nothing committed.
async fn with_retries<T, F, Fut>(
    op: F,
    shutdown: &CancellationToken,
) -> Result<Option<T>, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    // Signalled before each retry wait (a permit is kept when nobody waits yet).
    let retrying = tokio::sync::Notify::new();
    let retried = op
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        )
        .when(|e: &StoreError| e.is_transient() && !shutdown.is_cancelled())
        .notify(|e: &StoreError, wait: Duration| {
            retrying.notify_one();
            metrics::store_retry();
            warn!(error = %e, retry_in = ?wait, "transient database error; batch not committed, retrying");
        });
    let given_up = async {
        shutdown.cancelled().await;
        retrying.notified().await;
    };
    tokio::select! {
        biased;
        r = retried => match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_transient() && shutdown.is_cancelled() => Ok(None),
            Err(e) => Err(e),
        },
        () = given_up => Ok(None),
    }
}

/// Loads what `req` asks for as it will be once `pending` has committed: `pending`'s rows, seen
/// ids and parked events come from memory (its transaction may still be running), the rest from
/// the store.
async fn load_over<S: ProjectorStore>(
    store: &S,
    req: &LoadRequest,
    pending: Option<&Folded>,
) -> Result<Loaded, StoreError> {
    let Some(p) = pending else {
        return store.load(req).await;
    };
    let pending = Pending::new(&p.changes);
    let loaded = store.load(&pending.rest(req)).await?;
    Ok(pending.complete(req, loaded))
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
    /// Per partition, the epoch and the last offset admitted into a batch: within one epoch
    /// offsets only grow, so a message at or below it is a redelivery, dropped (a rewind comes
    /// only with a re-seek, which starts a new epoch).
    admitted: HashMap<i32, (u64, i64)>,
    /// When parked events were last checked against `--park-retention`.
    last_sweep: Instant,
    /// How the source ended, if it did.
    ending: Result<(), String>,
}

/// Records committed positions as the partitions' next offsets.
fn advance(owned: &mut HashMap<i32, PartitionState>, advances: &[Advance]) {
    for a in advances {
        if let Some(st) = owned.get_mut(&a.partition) {
            st.next = Some(a.next);
        }
    }
}

impl<S: ProjectorStore> Applier<S> {
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
            admitted: HashMap::new(),
            last_sweep: Instant::now(),
            ending: Ok(()),
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
    ///
    /// Batches are pipelined one deep: batch N+1 is loaded and folded (on its own connection)
    /// while batch N commits. N+1 starts from N's folded rows, so it never waits for N's
    /// transaction; if N does not commit, N+1 is discarded with it and their partitions re-read
    /// from the stored positions.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Item>,
        shutdown: CancellationToken,
    ) -> Result<Summary, ProjectorError> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut pending: Option<Folded> = None;
        loop {
            if pending.is_none() && self.reached_targets().await {
                break;
            }
            if self.sweep_due() {
                // The sweep needs the pipeline empty: the batch in flight commits first.
                if pending.is_some() {
                    pending = self.step(pending.take(), Vec::new(), &shutdown).await?;
                }
                self.expire_parked(&shutdown).await?;
            }
            let mut batch = Vec::new();
            let mut finished = false;
            if pending.is_some() {
                // A batch is waiting to commit: take what is already here, without waiting, so
                // that the commit is not delayed by a slow source.
                while batch.len() < self.cfg.max_events {
                    match rx.try_recv() {
                        Ok(Item::Message(m)) => batch.push(m),
                        Ok(Item::End(ending)) => {
                            self.ending = ending;
                            finished = true;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            finished = true;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    }
                }
                finished |= shutdown.is_cancelled();
            } else {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    item = rx.recv() => match item {
                        Some(Item::Message(m)) => batch.push(m),
                        Some(Item::End(ending)) => {
                            self.ending = ending;
                            finished = true;
                        }
                        None => finished = true,
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
                                Some(Item::End(ending)) => {
                                    self.ending = ending;
                                    finished = true;
                                    break
                                }
                                None => { finished = true; break }
                            },
                        }
                    }
                }
            }
            pending = self.step(pending.take(), batch, &shutdown).await?;
            if finished {
                break;
            }
        }
        // Drain: the last folded batch still commits.
        if pending.is_some() {
            self.step(pending, Vec::new(), &shutdown).await?;
        }
        self.expire_parked(&shutdown).await?;
        if let Err(why) = std::mem::replace(&mut self.ending, Ok(())) {
            return Err(ProjectorError::Incomplete(why));
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

    /// Commits `pending` while folding `batch` on top of it; returns the newly folded batch
    /// (to commit in the next step).
    async fn step(
        &mut self,
        pending: Option<Folded>,
        batch: Vec<SourceMessage>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Folded>, ProjectorError> {
        if pending.is_none() && batch.is_empty() {
            return Ok(None);
        }
        let shared = Arc::clone(&self.shared);
        let mut owned = shared.owned.lock().await;
        let batch = self.admit(batch, &owned);
        // The pending batch commits on another worker thread while this one folds the next.
        let pending = pending.map(Arc::new);
        let committing = pending
            .as_ref()
            .map(|p| self.spawn_commit(p, &owned, shutdown));
        let folded = if batch.is_empty() {
            Ok(None)
        } else {
            self.fold(batch, &owned, pending.as_deref(), shutdown).await
        };
        let committed = match committing {
            Some(task) => Some(match task.await {
                Ok(committed) => committed,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels it: what it did is what the database says.
                Err(_) => Ok(Committed::Abandoned),
            }),
            None => None,
        };
        // The commit's task is done: the batch is this step's alone again.
        let pending = pending.map(|p| Arc::try_unwrap(p).unwrap_or_else(|p| (*p).clone()));
        let mut keep = true;
        let mut refused = None;
        if let (Some(committed), Some(p)) = (committed, &pending) {
            match committed? {
                Committed::Done(advances, commit_time) => {
                    advance(&mut owned, &advances);
                    self.record(&p.batch, &advances, &p.changes, commit_time);
                }
                Committed::Refused(error) => refused = Some(error),
                Committed::Conflict(partitions) => {
                    warn!(
                        ?partitions,
                        "another instance committed under this batch (a stored position moved, or an event id it applies was recorded); discarding the batch and re-seeking"
                    );
                    metrics::commit_conflict();
                    self.summary.conflicts += 1;
                    keep = false;
                }
                Committed::Stale => {
                    debug!(
                        "partitions were revoked or re-seeked before the batch committed; discarding it"
                    );
                    keep = false;
                }
                Committed::Abandoned => {
                    info!("shutdown while retrying: batch left uncommitted, positions untouched");
                    keep = false;
                }
            }
            if !keep {
                // The next batch was folded on top of this one: it goes too. Every partition of
                // either is read again from its stored position (their messages already taken
                // from the source would otherwise be skipped).
                let mut partitions: BTreeSet<i32> = p.epochs.keys().copied().collect();
                if let Ok(Some(f)) = &folded {
                    partitions.extend(f.epochs.keys().copied());
                }
                for partition in &partitions {
                    owned.remove(partition);
                }
                shared.request_reseek(partitions);
            }
        }
        if let (Some(error), Some(p)) = (refused, pending) {
            warn!(
                %error,
                events = p.batch.len(),
                "the database refused the batch for its data; committing it in parts to isolate the event(s) it refuses"
            );
            // The batch folded on top of the refused one goes too; it is folded again after.
            let next = folded?;
            if !self.isolate(p.batch, &mut owned, shutdown).await? {
                // Its messages were taken from the source: read them again from the stored
                // positions, or they would be skipped.
                if let Some(n) = next {
                    let partitions: BTreeSet<i32> = n.epochs.keys().copied().collect();
                    for partition in &partitions {
                        owned.remove(partition);
                    }
                    shared.request_reseek(partitions);
                }
                return Ok(None);
            }
            return match next {
                Some(n) => self.fold(n.batch, &owned, None, shutdown).await,
                None => Ok(None),
            };
        }
        let folded = folded?;
        Ok(if keep { folded } else { None })
    }

    /// Commits `batch` (which the database refused whole) in halves, and halves of halves, in
    /// source order, until every event it refuses stands alone; each of those becomes a dead
    /// letter labelled [`REFUSED`] with the database's message, everything else is applied.
    /// With k such events among n that is O(k log n) commits. Returns `false` when it had to stop
    /// early (shutdown, or another instance moved a partition: re-seeks are requested).
    async fn isolate(
        &mut self,
        batch: Vec<SourceMessage>,
        owned: &mut HashMap<i32, PartitionState>,
        shutdown: &CancellationToken,
    ) -> Result<bool, ProjectorError> {
        let mut parts = VecDeque::from([batch]);
        while let Some(part) = parts.pop_front() {
            let Some(mut folded) = self.fold(part, owned, None, shutdown).await? else {
                return Ok(false);
            };
            let mut outcome = self.commit(&folded, owned, shutdown).await?;
            if let Committed::Refused(error) = &outcome {
                if folded.batch.len() > 1 {
                    let mut first = std::mem::take(&mut folded.batch);
                    let second = first.split_off(first.len() / 2);
                    parts.push_front(second);
                    parts.push_front(first);
                    continue;
                }
                warn!(%error, first = ?folded.batch.first().map(|m| (m.partition, m.offset)), "dead-lettering the event the database refuses");
                folded.changes = self.refused_changes(&folded.batch, error, &folded.changes);
                metrics::refused();
                outcome = self.commit(&folded, owned, shutdown).await?;
            }
            match outcome {
                Committed::Done(advances, commit_time) => {
                    advance(owned, &advances);
                    self.record(&folded.batch, &advances, &folded.changes, commit_time);
                }
                // Even the dead letter alone is refused: nothing left to isolate.
                Committed::Refused(error) => return Err(error.into()),
                Committed::Conflict(_) | Committed::Stale | Committed::Abandoned => {
                    let partitions: BTreeSet<i32> = folded
                        .batch
                        .iter()
                        .chain(parts.iter().flatten())
                        .map(|m| m.partition)
                        .collect();
                    for partition in &partitions {
                        owned.remove(partition);
                    }
                    self.shared.request_reseek(partitions);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// What a batch of one event the database refused writes instead: its dead letter, its id
    /// as seen (as `refused`, the batch's fold, recorded it), and (by the commit) its position.
    fn refused_changes(
        &self,
        batch: &[SourceMessage],
        error: &StoreError,
        refused: &Changes,
    ) -> Changes {
        let mut changes = Changes::default();
        let Some(m) = batch.first() else {
            return changes;
        };
        let Some(bytes) = m.payload.as_deref() else {
            return changes;
        };
        let position = Position {
            partition: m.partition,
            offset: m.offset,
        };
        let reason = format!("refused by the database: {error}");
        let (letter, event_type) = match Event::decode_limited(bytes, self.cfg.max_event_bytes) {
            Ok(event) => {
                // A duplicate records nothing, and is never refused: the fold recorded its id.
                changes.seen.clone_from(&refused.seen);
                (
                    DeadLetter::rejected(&self.source, position, bytes, &event, REFUSED, &reason),
                    event.event_type().as_str(),
                )
            }
            // Undecodable events are dead letters already: the refusal was of that row.
            Err(err) => {
                let mut letter = DeadLetter::undecodable(&self.source, position, bytes, &err, None);
                letter.label = REFUSED;
                letter.reason = sessionview_projection::storable_reason(&reason);
                (letter, "unknown")
            }
        };
        changes.dead_letters.push(letter);
        changes.tally.insert((event_type, Outcome::DeadLettered), 1);
        changes
    }

    /// Only partitions still owned, under the epoch the messages were read in, and only offsets
    /// not yet applied, not yet admitted in this epoch (a batch in flight has them), nor beyond
    /// `--until` targets.
    fn admit(
        &mut self,
        mut batch: Vec<SourceMessage>,
        owned: &HashMap<i32, PartitionState>,
    ) -> Vec<SourceMessage> {
        let before = batch.len();
        let targets = match &self.until {
            Until::Positions(t) => Some(t),
            _ => None,
        };
        let admitted = &mut self.admitted;
        let mut redelivered = 0u64;
        batch.retain(|m| {
            let keep = owned.get(&m.partition).is_some_and(|st| {
                st.epoch == m.epoch && st.next.is_none_or(|next| m.offset >= next)
            }) && targets
                .is_none_or(|t| t.get(&m.partition).is_some_and(|end| m.offset < *end));
            if !keep {
                return false;
            }
            match admitted.get(&m.partition) {
                Some(&(epoch, last)) if epoch == m.epoch && m.offset <= last => {
                    redelivered += 1;
                    false
                }
                _ => {
                    admitted.insert(m.partition, (m.epoch, m.offset));
                    true
                }
            }
        });
        if redelivered > 0 {
            warn!(
                redelivered,
                "dropped messages delivered again at or below an offset already in a batch"
            );
        }
        if batch.len() < before {
            debug!(
                dropped = before - batch.len(),
                "dropped messages of revoked or re-seeked partitions"
            );
        }
        batch
    }

    /// Loads what `batch` needs (rows of `pending` from memory, the rest from the store) and
    /// folds it. Transient database errors are retried.
    async fn fold(
        &self,
        batch: Vec<SourceMessage>,
        owned: &HashMap<i32, PartitionState>,
        pending: Option<&Folded>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Folded>, ProjectorError> {
        let started = Instant::now();
        let mut epochs = BTreeMap::new();
        for m in &batch {
            if let Some(st) = owned.get(&m.partition) {
                epochs.insert(m.partition, st.epoch);
            }
        }
        let events = batch
            .iter()
            .filter_map(|m| Some((m.position(), m.payload.as_deref()?)))
            .collect();
        let planned = Batch::plan(&self.source, events, self.cfg.max_event_bytes);
        let loaded = with_retries(
            || load_over(&self.store, planned.request(), pending),
            shutdown,
        );
        let Some(loaded) = loaded.await? else {
            return Ok(None);
        };
        let mut changes = planned.fold(loaded).changes;
        if !self.cfg.publish {
            // A rebuild: listeners were told of these events when they were first applied.
            changes.live.clear();
        }
        // The folded batch keeps its payloads until it commits: should the database refuse it,
        // its events are folded again in parts to find the one it refuses.
        metrics::fold(started.elapsed());
        Ok(Some(Folded {
            changes,
            batch,
            epochs,
        }))
    }

    /// Commits a folded batch if its partitions are still owned under the epochs it was folded
    /// in; transient errors are retried until shutdown.
    async fn commit(
        &self,
        folded: &Folded,
        owned: &HashMap<i32, PartitionState>,
        shutdown: &CancellationToken,
    ) -> Result<Committed, ProjectorError> {
        let Some(advances) = advances_of(folded, owned) else {
            return Ok(Committed::Stale);
        };
        commit_folded(&self.store, &self.source, folded, advances, shutdown).await
    }

    /// [`Self::commit`] in a task of its own, so that it runs on another worker thread while this
    /// one folds the next batch (in one task, the fold's CPU work would hold back the commit's
    /// round trips until it yields).
    fn spawn_commit(
        &self,
        folded: &Arc<Folded>,
        owned: &HashMap<i32, PartitionState>,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<Committed, ProjectorError>> {
        let Some(advances) = advances_of(folded, owned) else {
            return tokio::spawn(async { Ok(Committed::Stale) });
        };
        let (store, source) = (self.store.clone(), self.source.clone());
        let (folded, shutdown) = (Arc::clone(folded), shutdown.clone());
        tokio::spawn(
            async move { commit_folded(&store, &source, &folded, advances, &shutdown).await },
        )
    }

    /// Turns this instance's parked events older than `--park-retention` into dead letters. Run
    /// only with no batch in flight, so that none of them is being released at the same time.
    async fn expire_parked(&mut self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        self.last_sweep = Instant::now();
        let owned = self.shared.owned.lock().await;
        let partitions: Vec<i32> = owned.keys().copied().collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let Ok(retention) = chrono::Duration::from_std(self.cfg.park_retention) else {
            return Ok(());
        };
        let cutoff = chrono::Utc::now() - retention;
        let moved = with_retries(
            || self.store.expire_parked(&self.source, &partitions, cutoff),
            shutdown,
        )
        .await?;
        if let Some(n) = moved.filter(|n| *n > 0) {
            warn!(
                events = n,
                retention = ?self.cfg.park_retention,
                "parked events whose session never came became dead letters (parked_expired)"
            );
            metrics::events("unknown", Outcome::DeadLettered, n);
            metrics::batch_dead_letters(n);
        }
        Ok(())
    }

    /// Whether the parked-event sweep is due: a quarter of the retention, between 100 ms and
    /// a minute.
    fn sweep_due(&self) -> bool {
        let every = (self.cfg.park_retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        self.last_sweep.elapsed() >= every
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

/// Where each partition of `folded` moves, from the positions it owns now; `None` when a
/// partition was revoked or re-seeked since the batch was folded (the batch is stale).
fn advances_of(folded: &Folded, owned: &HashMap<i32, PartitionState>) -> Option<Vec<Advance>> {
    let mut advances: BTreeMap<i32, Advance> = BTreeMap::new();
    for m in &folded.batch {
        let st = owned.get(&m.partition)?;
        if folded.epochs.get(&m.partition) != Some(&st.epoch) {
            return None;
        }
        let a = advances.entry(m.partition).or_insert(Advance {
            partition: m.partition,
            expected: st.next,
            next: m.offset + 1,
        });
        a.next = a.next.max(m.offset + 1);
    }
    Some(advances.into_values().collect())
}

/// Commits a folded batch to `advances`, retrying transient errors.
async fn commit_folded<S: ProjectorStore>(
    store: &S,
    source: &str,
    folded: &Folded,
    advances: Vec<Advance>,
    shutdown: &CancellationToken,
) -> Result<Committed, ProjectorError> {
    let first = folded.batch.first().map(|m| (m.partition, m.offset));
    let last = folded.batch.last().map(|m| (m.partition, m.offset));
    let span = info_span!("batch", source = %source, events = folded.batch.len(), ?first, ?last);
    let attempt = || async {
        let started = Instant::now();
        let outcome = store
            .commit(Commit {
                source,
                advances: &advances,
                changes: &folded.changes,
                retire: &[],
            })
            .await?;
        Ok::<_, StoreError>((outcome, started.elapsed()))
    };
    let (outcome, commit_time) = match with_retries(attempt, shutdown).instrument(span).await {
        Ok(Some(done)) => done,
        Ok(None) => return Ok(Committed::Abandoned),
        Err(e) if e.is_data() => return Ok(Committed::Refused(e)),
        Err(e) => return Err(e.into()),
    };
    Ok(match outcome {
        CommitOutcome::Committed => Committed::Done(advances, commit_time),
        CommitOutcome::Conflict { partitions } => Committed::Conflict(partitions),
    })
}

#[cfg(test)]
mod tests {
    //! The pipeline's overlay against a real (SQLite) store: folding batch N+1 on top of a batch N
    //! that has not committed yet must give exactly what folding it after N's commit gives.

    use sessionview_store::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::health::Health;
    use sessionview_simulator::{SimConfig, Simulator};
    use sessionview_store::SqliteStore;

    const SOURCE: &str = "test";

    async fn store(name: &str) -> SqliteStore {
        let dir = std::env::temp_dir().join(format!("sv-applier-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        let store = SqliteStore::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn fold(
        store: &SqliteStore,
        batch: &[(i64, Vec<u8>)],
        pending: Option<&Folded>,
    ) -> Changes {
        let events = batch
            .iter()
            .map(|(offset, bytes)| {
                let position = Position {
                    partition: 0,
                    offset: *offset,
                };
                (position, bytes.as_slice())
            })
            .collect();
        let planned = Batch::plan(SOURCE, events, sessionview_events::DEFAULT_MAX_EVENT_BYTES);
        let loaded = load_over(store, planned.request(), pending).await.unwrap();
        planned.fold(loaded).changes
    }

    async fn commit(store: &SqliteStore, changes: &Changes, expected: Option<i64>, next: i64) {
        let advances = [Advance {
            partition: 0,
            expected,
            next,
        }];
        let outcome = store
            .commit(Commit {
                source: SOURCE,
                advances: &advances,
                changes,
                retire: &[],
            })
            .await
            .unwrap();
        assert!(matches!(outcome, CommitOutcome::Committed));
    }

    fn assert_same(a: &Changes, b: &Changes, what: &str) {
        assert_eq!(a.sessions, b.sessions, "{what}: sessions");
        assert_eq!(a.dirty, b.dirty, "{what}: dirty rows");
        assert_eq!(a.counts, b.counts, "{what}: counts");
        assert_eq!(a.created, b.created, "{what}: created");
        assert_eq!(a.seen, b.seen, "{what}: seen");
        assert_eq!(a.parked, b.parked, "{what}: parked");
        assert_eq!(a.released, b.released, "{what}: released");
        assert_eq!(a.dead_letters, b.dead_letters, "{what}: dead letters");
        assert_eq!(a.tally, b.tally, "{what}: outcomes");
    }

    #[tokio::test]
    async fn a_batch_folded_over_a_pending_one_equals_one_folded_after_its_commit() {
        // Duplicates, early (parked) events and poison cross every boundary of these batches.
        let messages: Vec<(i64, Vec<u8>)> = Simulator::new(SimConfig {
            sessions: 60,
            seed: 7,
            duplicate_ratio: 0.2,
            early_ratio: 0.4,
            poison_ratio: 0.05,
            ..SimConfig::default()
        })
        .map(|m| m.bytes)
        .enumerate()
        .map(|(i, b)| (i as i64, b))
        .collect();
        for size in [7, 40, 150] {
            let serial = store(&format!("serial-{size}")).await;
            let piped = store(&format!("piped-{size}")).await;
            let (mut serial_next, mut piped_next) = (None, None);
            let mut pending: Option<(Folded, i64)> = None;
            for (n, batch) in messages.chunks(size).enumerate() {
                let end = batch.last().map_or(0, |(o, _)| o + 1);
                // Serial: everything before this batch is committed.
                let after_commit = fold(&serial, batch, None).await;
                commit(&serial, &after_commit, serial_next, end).await;
                serial_next = Some(end);
                // Pipelined: the previous batch is folded but not yet committed; it commits
                // after this one is folded.
                let over_pending = fold(&piped, batch, pending.as_ref().map(|(p, _)| p)).await;
                assert_same(
                    &after_commit,
                    &over_pending,
                    &format!("batch {n} of {size}"),
                );
                if let Some((p, p_end)) = pending.take() {
                    commit(&piped, &p.changes, piped_next, p_end).await;
                    piped_next = Some(p_end);
                }
                let folded = Folded {
                    batch: Vec::new(),
                    epochs: BTreeMap::new(),
                    changes: over_pending,
                };
                pending = Some((folded, end));
            }
        }
    }

    fn message(partition: i32, offset: i64, epoch: u64) -> SourceMessage {
        SourceMessage {
            partition,
            offset,
            epoch,
            payload: Some(Vec::new()),
            timestamp_ms: None,
        }
    }

    /// Within one epoch a partition's offsets only grow: a message delivered again (in the same
    /// batch or in a later one, while the first is still in flight) is dropped, so it can neither
    /// be counted twice nor fold twice; a new epoch (a re-seek) starts over.
    #[tokio::test]
    async fn redelivered_offsets_are_admitted_once_per_epoch() {
        let store = store("admit").await;
        let shared = Arc::new(Shared::new(Health::new()));
        let mut applier = Applier::new(
            store,
            SOURCE.into(),
            shared,
            BatchConfig::default(),
            Until::Forever,
            None,
        );
        let owned = HashMap::from([
            (
                0,
                PartitionState {
                    epoch: 1,
                    next: Some(10),
                },
            ),
            (
                1,
                PartitionState {
                    epoch: 1,
                    next: None,
                },
            ),
        ]);
        let offsets = |batch: Vec<SourceMessage>| -> Vec<(i32, i64)> {
            batch.iter().map(|m| (m.partition, m.offset)).collect()
        };
        let first = applier.admit(
            vec![
                message(0, 9, 1), // already applied (stored next is 10)
                message(0, 10, 1),
                message(1, 0, 1),
                message(0, 11, 1),
                message(0, 10, 1), // delivered again in the same batch
                message(0, 12, 2), // of an epoch that is not the partition's
            ],
            &owned,
        );
        assert_eq!(offsets(first), [(0, 10), (1, 0), (0, 11)]);
        // The next batch, while the first is in flight: 11 again is dropped, 12 follows.
        let second = applier.admit(vec![message(0, 11, 1), message(0, 12, 1)], &owned);
        assert_eq!(offsets(second), [(0, 12)]);
        // A re-seek to 10 under epoch 2 admits 10 again.
        let reseeked = HashMap::from([(
            0,
            PartitionState {
                epoch: 2,
                next: Some(10),
            },
        )]);
        let third = applier.admit(vec![message(0, 10, 2), message(0, 11, 2)], &reseeked);
        assert_eq!(offsets(third), [(0, 10), (0, 11)]);
    }
}
