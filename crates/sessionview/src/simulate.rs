//! `sessionview simulate`: writes a simulated event stream to Kafka or to an NDJSON file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, client::DefaultClientContext};
use sessionview_projector::KafkaOptions;
use sessionview_simulator::{SimConfig, Simulator};
use tracing::info;

/// Options of `sessionview simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Number of sessions to simulate.
    #[arg(long, env = "SESSIONVIEW_SESSIONS", default_value_t = 1000)]
    pub(crate) sessions: u64,
    /// Seed: the same seed always gives the same stream.
    #[arg(long, env = "SESSIONVIEW_SEED", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Where to write: kafka://HOST:PORT/TOPIC or file://PATH.
    #[arg(long, env = "SESSIONVIEW_TO")]
    pub(crate) to: String,
    /// Partitions of the topic when simulate has to create it.
    #[arg(long, env = "SESSIONVIEW_PARTITIONS", default_value_t = 4)]
    pub(crate) partitions: i32,
    /// Events per second (0 = as fast as possible).
    #[arg(long, env = "SESSIONVIEW_RATE", default_value_t = 0)]
    pub(crate) rate: u64,
    /// Fraction of events re-published later with the same event_id.
    #[arg(long, env = "SESSIONVIEW_DUPLICATE_RATIO", default_value_t = 0.0)]
    pub(crate) duplicate_ratio: f64,
    /// Fraction of sessions whose first events are published before their session_enqueued.
    #[arg(long, env = "SESSIONVIEW_EARLY_RATIO", default_value_t = 0.0)]
    pub(crate) early_ratio: f64,
    /// Fraction of sessions followed by a poison message (must be dead-lettered).
    #[arg(long, env = "SESSIONVIEW_POISON_RATIO", default_value_t = 0.0)]
    pub(crate) poison_ratio: f64,
    /// Append to the file instead of replacing it.
    #[arg(long, env = "SESSIONVIEW_APPEND")]
    pub(crate) append: bool,
    #[command(flatten)]
    pub(crate) kafka: crate::kafka::KafkaArgs,
}

enum Target {
    Kafka { brokers: String, topic: String },
    File(PathBuf),
}

fn parse_target(url: &str) -> anyhow::Result<Target> {
    if let Some(rest) = url.strip_prefix("kafka://") {
        match rest.split_once('/') {
            Some((b, t)) if !b.is_empty() && !t.is_empty() && !t.contains('/') => {
                Ok(Target::Kafka {
                    brokers: b.into(),
                    topic: t.into(),
                })
            }
            _ => bail!("invalid --to {url:?}: expected kafka://HOST:PORT/TOPIC"),
        }
    } else if let Some(path) = url.strip_prefix("file://").filter(|p| !p.is_empty()) {
        Ok(Target::File(path.into()))
    } else {
        bail!("invalid --to {url:?}: expected kafka://HOST:PORT/TOPIC or file://PATH")
    }
}

fn check_ratio(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{name} must be between 0 and 1, got {v}");
    }
    Ok(())
}

pub(crate) async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    check_ratio("--duplicate-ratio", args.duplicate_ratio)?;
    check_ratio("--early-ratio", args.early_ratio)?;
    check_ratio("--poison-ratio", args.poison_ratio)?;
    let target = parse_target(&args.to)?;
    let cfg = SimConfig {
        sessions: args.sessions,
        seed: args.seed,
        duplicate_ratio: args.duplicate_ratio,
        early_ratio: args.early_ratio,
        poison_ratio: args.poison_ratio,
        ..SimConfig::default()
    };
    let options = args.kafka.options()?;
    if let Target::Kafka { brokers, topic } = &target {
        info!(target = %crate::kafka::describe(brokers, topic, &options), "simulating");
        let (b, o) = (brokers.clone(), options.clone());
        tokio::task::spawn_blocking(move || crate::kafka::check_broker(&b, &o)).await??;
        ensure_topic(brokers, topic, args.partitions, &options).await?;
    }
    let rate = args.rate;
    let append = args.append;
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let sim = Simulator::new(cfg);
        match target {
            Target::File(path) => write_file(&path, sim, rate, append),
            Target::Kafka { brokers, topic } => produce(&brokers, &topic, &options, sim, rate),
        }
    })
    .await??;
    let secs = started.elapsed().as_secs_f64();
    info!(messages = written, seconds = secs, "simulation written");
    println!(
        "wrote {written} messages for {} sessions in {secs:.2}s ({:.0} msg/s)",
        args.sessions,
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Sleeps as needed so that `n` messages take at least `n / rate` seconds.
fn pace(rate: u64, n: u64, started: Instant) {
    if rate > 0 {
        let due = Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn write_file(path: &PathBuf, sim: Simulator, rate: u64, append: bool) -> anyhow::Result<u64> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let started = Instant::now();
    let mut n = 0;
    for m in sim {
        out.write_all(&m.bytes)?;
        out.write_all(b"\n")?;
        n += 1;
        if rate > 0 {
            // Paced output is for followers: make each line visible as it is written.
            out.flush()?;
            pace(rate, n, started);
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    options: &KafkaOptions,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = crate::kafka::client_config(brokers, options)
        .create()
        .context("creating the Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .with_context(|| format!("creating topic {topic} on {brokers}"))?;
    for r in results {
        match r {
            Ok(_) => info!(topic, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

/// Counts failed deliveries.
struct Delivery {
    failed: Arc<AtomicU64>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(error = %e, "message delivery failed");
            }
        }
    }
}

fn produce(
    brokers: &str,
    topic: &str,
    options: &KafkaOptions,
    sim: Simulator,
    rate: u64,
) -> anyhow::Result<u64> {
    let failed = Arc::new(AtomicU64::new(0));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if rate > 0 { "0" } else { "20" })
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("acks", "all")
        .set("enable.idempotence", "false");
    options.apply(&mut config);
    let producer: BaseProducer<Delivery> = config
        .create_with_context(Delivery {
            failed: Arc::clone(&failed),
        })
        .context("creating the Kafka producer")?;
    let started = Instant::now();
    let mut n = 0;
    for m in sim {
        let headers = m.event_type.map(|t| {
            OwnedHeaders::new().insert(Header {
                key: "event_type",
                value: Some(t),
            })
        });
        let mut record = BaseRecord::to(topic).key(&m.key).payload(&m.bytes);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e).context("producing a message"),
            }
        }
        producer.poll(Duration::ZERO);
        n += 1;
        pace(rate, n, started);
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {n} messages were not delivered to {topic}");
    }
    Ok(n)
}
