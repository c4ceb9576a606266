//! The Kafka flags every command that talks to a broker shares: librdkafka settings
//! (`--kafka-option`, `SESSIONVIEW_KAFKA_<KEY>`) and, for group members, the group.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sessionview_projector::client::ErrorKeepingContext;
use sessionview_projector::{GroupProtocol, KafkaOptions, SourceConfig};

/// librdkafka settings of any Kafka client.
#[derive(Debug, Clone, Args)]
pub(crate) struct KafkaArgs {
    /// A librdkafka setting KEY=VALUE for the Kafka clients (repeatable; the value may hold `,` and
    /// `=`), applied after sessionview's own, e.g. `security.protocol=SASL_SSL`. Each is also read
    /// from `SESSIONVIEW_KAFKA_<KEY>` (upper case, `.` written `_`, `_` written `__`):
    /// `SESSIONVIEW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512`; a flag overrides a variable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub(crate) kafka_options: Vec<String>,
}

impl KafkaArgs {
    /// The settings of the environment and the flags.
    pub(crate) fn options(&self) -> anyhow::Result<KafkaOptions> {
        Ok(KafkaOptions::from_process(&self.kafka_options)?)
    }
}

/// A consumer group member's flags (`project`, `run`).
#[derive(Debug, Clone, Args)]
pub(crate) struct GroupArgs {
    /// Kafka consumer group; instances in one group share the topic's partitions.
    #[arg(
        long,
        env = "SESSIONVIEW_GROUP",
        default_value = "sessionview-projector"
    )]
    pub(crate) group: String,
    /// Consumer group protocol: `classic` (every Kafka broker; the session timeout below applies)
    /// or `consumer` (KIP-848, Apache Kafka 4.0 and later: incremental rebalances, the session
    /// timeout is the broker's `group.consumer.session.timeout.ms`).
    #[arg(long, env = "SESSIONVIEW_GROUP_PROTOCOL", default_value = "classic", value_parser = ["classic", "consumer"])]
    pub(crate) group_protocol: String,
    /// Kafka session timeout in milliseconds, classic protocol (a dead instance's partitions move
    /// after this).
    #[arg(long, env = "SESSIONVIEW_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) session_timeout_ms: u64,
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
}

impl GroupArgs {
    /// The source `url` names, with this group's settings when it is Kafka.
    pub(crate) fn source(&self, url: &str) -> anyhow::Result<SourceConfig> {
        let mut source = SourceConfig::parse(
            url,
            &self.group,
            Duration::from_millis(self.session_timeout_ms),
        )?;
        if let SourceConfig::Kafka(k) = &mut source {
            k.group_protocol = self
                .group_protocol
                .parse::<GroupProtocol>()
                .map_err(anyhow::Error::msg)?;
            k.options = self.kafka.options()?;
        }
        Ok(source)
    }
}

/// Where a Kafka source or target is, for the start-up log line: brokers, topic, security
/// protocol and the operator's settings (secrets hidden).
pub(crate) fn describe(brokers: &str, topic: &str, options: &KafkaOptions) -> String {
    let settings = options.describe();
    if settings.is_empty() {
        format!(
            "kafka {brokers} topic {topic} ({})",
            options.security_protocol()
        )
    } else {
        format!(
            "kafka {brokers} topic {topic} ({}; {settings})",
            options.security_protocol()
        )
    }
}

/// A Kafka client config for `brokers` with the operator's `options` applied last.
pub(crate) fn client_config(brokers: &str, options: &KafkaOptions) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    options.apply(&mut config);
    config
}

/// Checks, before anything is produced, that the broker answers with these settings (a wrong
/// password or an untrusted certificate is an error naming the cause within seconds, not a
/// producer that retries until its messages time out).
pub(crate) fn check_broker(brokers: &str, options: &KafkaOptions) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let context = ErrorKeepingContext::default();
    let errors = context.errors.clone();
    let probe: BaseConsumer<ErrorKeepingContext> = client_config(brokers, options)
        .create_with_context(context)
        .context("creating the Kafka client")?;
    sessionview_projector::client::metadata_or_cause(
        brokers,
        &errors,
        Duration::from_secs(15),
        |timeout| probe.fetch_metadata(None, timeout),
        || sessionview_projector::client::drain_errors(&probe, &errors),
    )?;
    Ok(())
}

/// A source for the start-up log line.
pub(crate) fn describe_source(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Kafka(k) => describe(&k.brokers, &k.topic, &k.options),
        SourceConfig::File { path, follow } => format!(
            "file {}{}",
            path.display(),
            if *follow { " (followed)" } else { "" }
        ),
    }
}
