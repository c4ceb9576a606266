//! The projector: moves events from a source (Kafka or an NDJSON archive) through the fold into the
//! store, exactly once.
//!
//! Architecture invariant: this is the only crate that links rdkafka. It holds no SQL (the store
//! does) and decides no projection rule (the fold does); it moves bytes and positions.
//!
//! Runtime shape: a source (a consumer thread for Kafka, a task for a file) sends
//! [`applier::Item`]s over a bounded channel to the applier task, which gathers batches bounded by
//! size and linger time, folds them, and commits rows and positions in one transaction. Beside
//! them a task refreshes the planner statistics of tables that have grown ([`statistics`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sessionview_projection::Outcome;
use sessionview_store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod applier;
pub mod client;
mod file;
mod health;
mod kafka;
pub mod metrics;
pub mod replay;
mod source;
mod statistics;

pub use applier::REFUSED;
pub use client::{BadKafkaOption, KafkaOptions};
pub use file::source_name as file_source_name;
pub use health::{Health, Progress};
pub use source::SourceMessage;

/// Batch bounds.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most messages in one batch (one transaction).
    pub max_events: usize,
    /// Longest wait for more messages once a batch has its first.
    pub linger: Duration,
    /// Messages buffered between the source and the applier.
    pub channel_capacity: usize,
    /// Larger messages are dead letters (`--max-event-bytes`).
    pub max_event_bytes: usize,
    /// Parked events older than this become dead letters (`--park-retention`).
    pub park_retention: Duration,
    /// Append the applied events to the session event log (`GET /events/session`): off for
    /// rebuilds, whose events listeners were told of when the live projector applied them.
    pub publish: bool,
}

/// The default of `--park-retention`: 7 days.
pub const DEFAULT_PARK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 20_000,
            linger: Duration::from_millis(5),
            channel_capacity: 20_000,
            max_event_bytes: sessionview_events::DEFAULT_MAX_EVENT_BYTES,
            park_retention: DEFAULT_PARK_RETENTION,
            publish: true,
        }
    }
}

/// Where the Kafka source reads.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub topic: String,
    /// Consumer group: instances in one group share the partitions.
    pub group: String,
    /// The classic protocol's session timeout (the `consumer` protocol's is the broker's
    /// `group.consumer.session.timeout.ms`).
    pub session_timeout: Duration,
    pub group_protocol: GroupProtocol,
    /// The operator's librdkafka settings, applied last.
    pub options: KafkaOptions,
}

/// The consumer group protocol (librdkafka's `group.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol (every Kafka since 0.9): the client sets the session timeout, and a
    /// rebalance pauses the whole group briefly.
    #[default]
    Classic,
    /// KIP-848's protocol (Apache Kafka 4.0 and later): the broker assigns partitions
    /// incrementally and owns the session timeout.
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl std::str::FromStr for GroupProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "classic" => Ok(GroupProtocol::Classic),
            "consumer" => Ok(GroupProtocol::Consumer),
            _ => Err(format!(
                "unknown group protocol {s:?}: expected classic or consumer"
            )),
        }
    }
}

/// A source of events.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Kafka(KafkaSourceConfig),
    /// An NDJSON archive; with `follow`, keep reading as it grows.
    File {
        path: PathBuf,
        follow: bool,
    },
}

/// A source URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid source {url:?}: {why} (expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC or file://PATH)"
)]
pub struct BadSource {
    pub url: String,
    pub why: &'static str,
}

impl SourceConfig {
    /// Parses `kafka://HOST:PORT/TOPIC` or `file://PATH`; `group` and `session_timeout` apply to
    /// Kafka only.
    pub fn parse(url: &str, group: &str, session_timeout: Duration) -> Result<Self, BadSource> {
        let bad = |why| BadSource {
            url: url.to_owned(),
            why,
        };
        if let Some(rest) = url.strip_prefix("kafka://") {
            let (brokers, topic) = rest.split_once('/').ok_or_else(|| bad("no topic"))?;
            if brokers.is_empty() {
                return Err(bad("no broker address"));
            }
            if topic.is_empty() || topic.contains('/') {
                return Err(bad("the topic must be one non-empty path segment"));
            }
            Ok(SourceConfig::Kafka(KafkaSourceConfig {
                brokers: brokers.to_owned(),
                topic: topic.to_owned(),
                group: group.to_owned(),
                session_timeout,
                group_protocol: GroupProtocol::default(),
                options: KafkaOptions::default(),
            }))
        } else if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(bad("no path"));
            }
            Ok(SourceConfig::File {
                path: PathBuf::from(path),
                follow: false,
            })
        } else {
            Err(bad("unknown scheme"))
        }
    }

    /// The name positions and dead letters are stored under.
    pub fn source_name(&self) -> String {
        match self {
            SourceConfig::Kafka(k) => k.topic.clone(),
            SourceConfig::File { path, .. } => file::source_name(path),
        }
    }
}

/// When a projection run stops (besides a shutdown signal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Until {
    /// Keep following the source.
    #[default]
    Forever,
    /// Stop once every assigned partition (or the file) has reached the end it had at start.
    End,
    /// Apply exactly up to these next offsets (partition → next offset) and stop; messages at or
    /// beyond them, and of other partitions, are left alone. Replay uses it to align with the
    /// live projector.
    Positions(BTreeMap<i32, i64>),
}

/// Options of one projection run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub batch: BatchConfig,
    pub until: Until,
    /// Incremented by the number of messages of every committed batch (for progress displays).
    pub progress: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Kafka only: assign every partition of the topic directly instead of joining the consumer
    /// group (replay: no rebalance wait, and no partition taken from the live projector).
    pub standalone: bool,
    /// Progress facts for readiness probes (a fresh one when `None`).
    pub health: Option<Health>,
    /// With [`Until::End`] on Kafka: how long to wait without progress for partitions other
    /// members of the group hold (a member that died keeps its partitions until its session
    /// times out) before failing with [`ProjectorError::Incomplete`].
    pub end_timeout: Duration,
}

/// The default of [`RunOptions::end_timeout`] (`--exit-at-end-timeout`).
pub const DEFAULT_END_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            until: Until::default(),
            progress: None,
            standalone: false,
            health: None,
            end_timeout: DEFAULT_END_TIMEOUT,
        }
    }
}

/// How a projection run went.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Messages in committed batches.
    pub messages: u64,
    pub batches: u64,
    /// Batches discarded by a position conflict.
    pub conflicts: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub elapsed: Duration,
}

/// Why projection stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Unreachable(#[from] client::Unreachable),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the consumer thread: {0}")]
    Thread(std::io::Error),
    #[error("the source stopped unexpectedly: {0}")]
    SourceFailed(String),
    /// `--exit-at-end` gave up: partitions did not reach the ends they had at start.
    #[error("{0}")]
    Incomplete(String),
}

/// Projects `source` into `store` until `opts.until` is met or `shutdown` fires. A batch in
/// flight at shutdown is committed before returning.
pub async fn run<S: Store>(
    source: SourceConfig,
    store: S,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<Summary, ProjectorError> {
    let shared = Arc::new(source::Shared::new(opts.health.unwrap_or_default()));
    let (tx, rx) = mpsc::channel(opts.batch.channel_capacity);
    // The source stops when the applier is done, whatever the reason.
    let source_stop = shutdown.child_token();
    let exit_at_end = (opts.until == Until::End).then_some(opts.end_timeout);
    let statistics = tokio::spawn(statistics::refresh_until(
        store.clone(),
        source_stop.clone(),
    ));
    // Whichever way this returns (an early error included), the source and that task stop.
    let _stop_on_return = source_stop.clone().drop_guard();
    let applier = applier::Applier::new(
        store.clone(),
        source.source_name(),
        Arc::clone(&shared),
        opts.batch,
        opts.until,
        opts.progress,
    );
    let result = match source {
        SourceConfig::Kafka(cfg) => {
            // Standalone assignment happens before the consumer thread starts: read the stored
            // positions here, on the runtime.
            let standalone = if opts.standalone {
                Some(store.positions(&cfg.topic).await?)
            } else {
                None
            };
            let thread = kafka::spawn(
                &cfg,
                store,
                shared,
                tx,
                exit_at_end,
                standalone,
                source_stop.clone(),
            )
            .await?;
            let result = applier.run(rx, shutdown).await;
            source_stop.cancel();
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| ProjectorError::SourceFailed(e.to_string()))?
                .map_err(|_| ProjectorError::SourceFailed("consumer thread panicked".into()))?;
            result
        }
        SourceConfig::File { path, follow } => {
            let reader = tokio::spawn(file::read(
                path,
                store,
                shared,
                tx,
                follow && exit_at_end.is_none(),
                source_stop.clone(),
            ));
            let result = applier.run(rx, shutdown).await;
            source_stop.cancel();
            reader
                .await
                .map_err(|e| ProjectorError::SourceFailed(e.to_string()))??;
            result
        }
    };
    // Stopped with the source; an ANALYZE in progress finishes first.
    source_stop.cancel();
    let _ = statistics.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_urls() {
        let t = Duration::from_secs(6);
        let SourceConfig::Kafka(k) =
            SourceConfig::parse("kafka://a:9092,b:9092/sessionview.events", "g", t).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (k.brokers.as_str(), k.topic.as_str(), k.group.as_str()),
            ("a:9092,b:9092", "sessionview.events", "g")
        );
        let SourceConfig::File { path, .. } =
            SourceConfig::parse("file:///tmp/x.ndjson", "g", t).unwrap()
        else {
            panic!()
        };
        assert_eq!(path, PathBuf::from("/tmp/x.ndjson"));
        for bad in [
            "kafka://host:9092",
            "kafka:///topic",
            "kafka://h/a/b",
            "nats://x",
            "file://",
        ] {
            let err = SourceConfig::parse(bad, "g", t).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
