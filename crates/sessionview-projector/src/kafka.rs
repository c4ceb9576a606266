//! The Kafka source: a consumer-group member on its own thread, seeking to stored positions.
//!
//! librdkafka's rebalance callback runs on the thread that polls. That thread is a plain OS thread
//! (not a runtime worker), so the callback can block on the database to read the stored positions
//! and hand them to librdkafka as the assignment's offsets: Kafka's committed offsets are never
//! used. Revocation takes the applier's lock, so it waits for an in-flight commit to finish.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Timestamp};
use sessionview_store::Store;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::client::{ClientErrors, metadata_or_cause};
use crate::source::{Item, Shared, SourceMessage};
use crate::{GroupProtocol, KafkaSourceConfig, ProjectorError, metrics};

/// Reads stored positions from the store, blocking the consumer thread (with retries).
struct Positions<S> {
    store: S,
    source: String,
    handle: Handle,
    shutdown: CancellationToken,
}

impl<S: Store> Positions<S> {
    fn read(&self) -> Option<BTreeMap<i32, i64>> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.handle.block_on(self.store.positions(&self.source)) {
                Ok(p) => return Some(p),
                Err(e) if !self.shutdown.is_cancelled() => {
                    warn!(error = %e, retry_in = ?wait, "cannot read stored positions; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    error!(error = %e, "cannot read stored positions during shutdown");
                    return None;
                }
            }
        }
    }
}

struct Context<S> {
    topic: String,
    positions: Positions<S>,
    shared: Arc<Shared>,
    /// The consumer thread's own copy of each owned partition's epoch (read per message).
    epochs: std::sync::Mutex<HashMap<i32, u64>>,
    /// Partitions assigned since the last EOF bookkeeping reset.
    fresh: std::sync::Mutex<Vec<i32>>,
    /// What librdkafka reported, for errors that say why the broker cannot be used.
    errors: ClientErrors,
    brokers: String,
}

impl<S: Store> ClientContext for Context<S> {
    /// librdkafka's periodic statistics carry each partition's high watermark: lag without extra
    /// requests to the broker.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (p, part) in &topic.partitions {
            if *p >= 0 && part.hi_offset >= 0 {
                self.shared.health.high_watermark(*p, part.hi_offset);
                if let Some(behind) = self.shared.health.behind(*p) {
                    metrics::lag(*p, Some(behind), None);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // With enable.partition.eof, librdkafka also reports each end of partition as a "global
        // error"; it is expected, and the poll loop handles it.
        if matches!(error, KafkaError::PartitionEOF(_))
            || reason.contains("reached end of partition")
        {
            debug!(reason, "end of partition");
        } else {
            self.errors.record(&error, reason);
            error!(error = %error, reason, "kafka client error");
        }
    }
}

impl<S: Store> Context<S> {
    fn epoch_of(&self, partition: i32) -> Option<u64> {
        self.epochs.lock().ok()?.get(&partition).copied()
    }

    /// Assigns `tpl` at the stored positions (`stored`, or read now from the store).
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        stored: Option<BTreeMap<i32, i64>>,
    ) {
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        let stored = stored.unwrap_or_else(|| self.positions.read().unwrap_or_default());
        let mut owning = self.shared.owning_blocking();
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        for p in &partitions {
            let next = stored.get(p).copied();
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&self.topic, *p, offset) {
                warn!(partition = p, error = %e, "cannot set the start offset");
            }
            epochs.insert(*p, owning.assign(*p, next));
            info!(topic = %self.topic, partition = p, next_offset = ?next, "partition assigned; seeking to the stored position");
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            error!(error = %e, "assign failed");
        }
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.extend(partitions);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        {
            // Waits for a batch that is being committed; later batches will not see these
            // partitions as owned.
            let mut owning = self.shared.owning_blocking();
            let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            for p in &partitions {
                owning.revoke(*p);
                epochs.remove(p);
            }
        }
        info!(topic = %self.topic, ?partitions, "partitions revoked");
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            error!(error = %e, "unassign failed");
        }
    }
}

impl<S: Store> ConsumerContext for Context<S> {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(base_consumer, tpl, None);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer, tpl),
            other => {
                error!(error = ?other, "rebalance error; dropping the assignment");
                self.revoke(base_consumer, tpl);
            }
        }
    }
}

/// Starts the consumer thread. Messages and the end marker go to `tx`.
pub(crate) async fn spawn<S: Store>(
    cfg: &KafkaSourceConfig,
    store: S,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    exit_at_end: Option<Duration>,
    standalone: Option<BTreeMap<i32, i64>>,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, ProjectorError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("group.protocol", cfg.group_protocol.as_str())
        .set("client.id", "sessionview-projector")
        // Prefetch at most 16 MiB (librdkafka's default is 64 MiB): the applier's channel and
        // its two batches in flight are buffer enough, and the default made a catching-up
        // projector's memory several times its working set.
        .set("queued.max.messages.kbytes", "16384")
        // ... and once that prefetch is full, fetch again 10 ms later, not librdkafka's default
        // 1,000 ms: with the default a catching-up projector drained the 16 MiB, then waited a
        // second for the next fetch, again and again (one instance: 66,000 events/s with the
        // machine half idle; with 10 ms: 112,000).
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka's fetch.wait.max.ms stays at its 500 ms: Apache Kafka answers a waiting
        // fetch as soon as data arrives (fetch.min.bytes=1), so the wait adds no latency; the
        // 5 ms that the earlier test broker needed cost 200 empty fetches a second while idle.
        // High watermarks for lag and readiness come with librdkafka's statistics.
        .set("statistics.interval.ms", "1000");
    if cfg.group_protocol == GroupProtocol::Classic {
        // Under the `consumer` protocol the broker owns the session timeout (librdkafka refuses
        // the setting there).
        client.set(
            "session.timeout.ms",
            cfg.session_timeout.as_millis().to_string(),
        );
    }
    cfg.options.apply(&mut client);
    let context = Context {
        topic: cfg.topic.clone(),
        positions: Positions {
            store,
            source: cfg.topic.clone(),
            handle: Handle::current(),
            shutdown: shutdown.clone(),
        },
        shared: Arc::clone(&shared),
        epochs: std::sync::Mutex::new(HashMap::new()),
        fresh: std::sync::Mutex::new(Vec::new()),
        errors: ClientErrors::default(),
        brokers: cfg.brokers.clone(),
    };
    let consumer: BaseConsumer<Context<S>> = client.create_with_context(context)?;
    let topic = cfg.topic.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            // Assignment blocks on the applier's lock, so it happens on this thread.
            let started = topic_partitions(&consumer, &topic).and_then(|partitions| {
                // The ends to reach are the topic's at start, taken before anything is read.
                let watch = exit_at_end
                    .map(|timeout| EndWatch::new(&consumer, &topic, &partitions, timeout))
                    .transpose()?;
                match standalone {
                    Some(stored) => assign_all(&consumer, &topic, &partitions, stored),
                    None => consumer.subscribe(&[&topic])?,
                }
                Ok(watch)
            });
            let (watch, started) = match started {
                Ok(watch) => (Some(watch), Ok(())),
                Err(e) => (None, Err(e)),
            };
            let _ = ready_tx.send(started);
            if let Some(watch) = watch {
                poll_loop(&consumer, &topic, &shared, &tx, watch, &shutdown);
            }
        })
        .map_err(ProjectorError::Thread)?;
    ready_rx.await.map_err(|_| {
        ProjectorError::SourceFailed("consumer thread ended before starting".into())
    })??;
    Ok(thread)
}

/// `--exit-at-end` in a group: the end every partition of the topic had at start, and the wait
/// for those that other members hold. A partition is done when this instance has read it to
/// its end (the applier commits what it read before stopping) or when its stored position, by
/// whichever member, has reached that end.
struct EndWatch {
    /// High watermark of every partition at start.
    targets: BTreeMap<i32, i64>,
    /// Give up after this long without progress.
    timeout: Duration,
    last_progress: Instant,
    /// Stored positions at the last check, to tell progress.
    last_stored: BTreeMap<i32, i64>,
    last_check: Instant,
}

/// How often a waiting member reads the stored positions.
const END_CHECK_EVERY: Duration = Duration::from_millis(500);

impl EndWatch {
    fn new<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Self, ProjectorError> {
        let mut targets = BTreeMap::new();
        for p in partitions {
            let (_, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
            targets.insert(*p, high);
        }
        Ok(Self {
            targets,
            timeout,
            last_progress: Instant::now(),
            last_stored: BTreeMap::new(),
            last_check: Instant::now() - END_CHECK_EVERY,
        })
    }

    /// The partitions not done yet, with their stored position and target.
    fn pending(
        &self,
        stored: &BTreeMap<i32, i64>,
        read_to_end: impl Fn(i32) -> bool,
    ) -> Vec<(i32, Option<i64>, i64)> {
        self.targets
            .iter()
            .filter(|(p, target)| {
                **target > 0 && !read_to_end(**p) && stored.get(p).is_none_or(|next| next < *target)
            })
            .map(|(p, target)| (*p, stored.get(p).copied(), *target))
            .collect()
    }

    /// `Some(Ok)` when every partition is done, `Some(Err)` when the wait timed out, `None` to
    /// keep going. `progressed`: this instance read messages since the last call.
    fn check<S: Store>(
        &mut self,
        ctx: &Context<S>,
        at_end: &HashSet<i32>,
        progressed: bool,
    ) -> Option<Result<(), String>> {
        if progressed {
            self.last_progress = Instant::now();
        }
        if self.last_check.elapsed() < END_CHECK_EVERY {
            return None;
        }
        self.last_check = Instant::now();
        let owned: HashSet<i32> = ctx
            .epochs
            .lock()
            .map(|e| e.keys().copied().collect())
            .unwrap_or_default();
        // Owned partitions read to their end need no database read.
        let mine_done = |p: i32| owned.contains(&p) && at_end.contains(&p);
        if self.targets.keys().all(|p| mine_done(*p)) {
            return Some(Ok(()));
        }
        let stored = ctx.positions.read()?;
        let pending = self.pending(&stored, mine_done);
        if pending.is_empty() {
            return Some(Ok(()));
        }
        if stored != self.last_stored {
            self.last_progress = Instant::now();
            self.last_stored = stored;
        }
        if self.last_progress.elapsed() < self.timeout {
            return None;
        }
        let list: Vec<String> = pending
            .iter()
            .map(|(p, next, target)| {
                let at = next.map_or_else(|| "nothing".to_owned(), |n| format!("offset {n}"));
                let holder = if owned.contains(p) {
                    "this instance"
                } else {
                    "another member"
                };
                format!("partition {p} at {at} of {target} (held by {holder})")
            })
            .collect();
        Some(Err(format!(
            "--exit-at-end: no progress for {:?} towards the ends the topic had at start: {}. \
             A member that died keeps its partitions until its session times out; if one still \
             runs, let it finish or stop it, then run again (--exit-at-end-timeout sets the wait)",
            self.timeout,
            list.join(", ")
        )))
    }
}

fn poll_loop<S: Store>(
    consumer: &BaseConsumer<Context<S>>,
    topic: &str,
    shared: &Shared,
    tx: &mpsc::Sender<Item>,
    mut watch: Option<EndWatch>,
    shutdown: &CancellationToken,
) {
    let ctx = consumer.context();
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut ended = false;
    let mut progressed = false;
    while !shutdown.is_cancelled() {
        if !ended && let Some(w) = watch.as_mut() {
            if let Some(ending) = w.check(ctx, &at_end, std::mem::take(&mut progressed)) {
                match &ending {
                    Ok(()) => info!(
                        partitions = w.targets.len(),
                        "every partition of the topic reached the end it had at start"
                    ),
                    Err(why) => error!("{why}"),
                }
                ended = tx.blocking_send(Item::End(ending)).is_ok();
                if !ended {
                    break;
                }
            }
        }
        reseek(consumer, topic, shared);
        if let Ok(mut fresh) = ctx.fresh.lock() {
            for p in fresh.drain(..) {
                at_end.remove(&p);
            }
        }
        if ended {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                if m.topic() != topic {
                    continue;
                }
                let partition = m.partition();
                at_end.remove(&partition);
                progressed = true;
                let Some(epoch) = ctx.epoch_of(partition) else {
                    continue;
                };
                let timestamp_ms = match m.timestamp() {
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                    Timestamp::NotAvailable => None,
                };
                let message = SourceMessage {
                    partition,
                    offset: m.offset(),
                    epoch,
                    // A message without a value is not an envelope: it is dead-lettered.
                    payload: Some(m.payload().map(<[u8]>::to_vec).unwrap_or_default()),
                    timestamp_ms,
                };
                if tx.blocking_send(Item::Message(message)).is_err() {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                debug!(partition = p, "reached end of partition");
            }
            Some(Err(e)) => warn!(error = %e, "kafka consumer error"),
        }
    }
    debug!("consumer thread leaving the group");
}

/// The topic's partitions, or a clear error when the broker cannot be reached or the topic does
/// not exist (rather than waiting forever for partitions that never come).
fn topic_partitions<S: Store>(
    consumer: &BaseConsumer<Context<S>>,
    topic: &str,
) -> Result<Vec<i32>, ProjectorError> {
    let metadata = metadata_or_cause(
        &consumer.context().brokers,
        &consumer.context().errors,
        Duration::from_secs(15),
        |timeout| consumer.fetch_metadata(Some(topic), timeout),
        // Nothing is assigned yet: polling only serves the client's events (errors among them).
        || crate::client::drain_errors(consumer, &consumer.context().errors),
    )?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ProjectorError::SourceFailed(format!(
            "topic {topic} does not exist (or has no partitions); create it first, e.g. with `sessionview simulate --partitions N --to kafka://...` or the broker's tools"
        )));
    }
    Ok(partitions)
}

/// Standalone mode (replay): every partition of the topic, assigned directly at the stored
/// positions, without joining a group (no rebalance wait, and no partition taken from the live
/// projector's group).
fn assign_all<S: Store>(
    consumer: &BaseConsumer<Context<S>>,
    topic: &str,
    partitions: &[i32],
    stored: BTreeMap<i32, i64>,
) {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    consumer.context().assign(consumer, &mut tpl, Some(stored));
}

/// Re-seeks partitions whose commit conflicted: re-read the stored position, new epoch.
fn reseek<S: Store>(consumer: &BaseConsumer<Context<S>>, topic: &str, shared: &Shared) {
    let partitions = shared.take_reseeks();
    if partitions.is_empty() {
        return;
    }
    let ctx = consumer.context();
    let stored = ctx.positions.read().unwrap_or_default();
    let mut owning = shared.owning_blocking();
    let mut epochs = ctx.epochs.lock().unwrap_or_else(|p| p.into_inner());
    for p in partitions {
        if !epochs.contains_key(&p) {
            continue; // revoked meanwhile
        }
        let next = stored.get(&p).copied();
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        match consumer.seek(topic, p, offset, Duration::from_secs(5)) {
            Ok(()) => {
                epochs.insert(p, owning.assign(p, next));
                info!(partition = p, next_offset = ?next, "re-seeked to the stored position");
            }
            Err(e) => {
                warn!(partition = p, error = %e, "re-seek failed; will retry");
                shared.request_reseek([p]);
            }
        }
    }
}
