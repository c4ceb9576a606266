//! The broker side of the scenarios: publishing a stream (as fast as possible, or at a steady
//! rate) and the broker's own consume-only rate.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sessionview_simulator::SimMessage;

/// Creates `topic` with `partitions` partitions.
pub(crate) async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for r in results {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

pub(crate) fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()?)
}

/// Publishes `messages` as fast as the broker takes them; returns the seconds it took.
pub(crate) async fn publish_all(
    brokers: &str,
    topic: &str,
    messages: impl Iterator<Item = SimMessage>,
) -> anyhow::Result<(u64, Duration)> {
    let producer = producer(brokers, 20)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut inflight = Vec::with_capacity(10_000);
    for m in messages {
        inflight.push(deliver(
            producer.send_result(FutureRecord::to(topic).key(&m.key).payload(&m.bytes)),
        )?);
        n += 1;
        if inflight.len() >= 10_000 {
            for f in inflight.drain(..) {
                f.await.context("delivery cancelled")?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in inflight {
        f.await.context("delivery cancelled")?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok((n, started.elapsed()))
}

type Delivery = rdkafka::producer::DeliveryFuture;

fn deliver<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    f: Result<Delivery, (KafkaError, FutureRecord<'_, K, P>)>,
) -> anyhow::Result<Delivery> {
    f.map_err(|(e, _)| anyhow::anyhow!("enqueueing a message: {e}"))
}

/// Reads every partition of `topic` from the beginning to its end with a plain consumer (no
/// decoding, no database): the broker's and librdkafka's own ceiling on this machine.
pub(crate) fn consume_only(brokers: &str, topic: &str) -> anyhow::Result<(u64, Duration)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-consume-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < partitions.len() {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                n += 1;
                std::hint::black_box(m.payload());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("consume-only read stalled");
                }
            }
        }
    }
    Ok((n, started.elapsed()))
}
