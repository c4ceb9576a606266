//! `sessionview-bench`: the benchmark programs of sessionview. Each scenario prints the machine it
//! ran on, its exact parameters and a table of figures (Markdown, ready for
//! `docs/benchmarks.md`); none asserts anything. The figures come from the real `sessionview`
//! binary (release build) run as a child process against real PostgreSQL and a real broker.
//!
//! `cargo run --release -p sessionview-bench -- <scenario>`; `--help` lists them.

use clap::{Args, Parser, Subcommand};

mod harness;
mod hostile;
mod kafka;
mod load;
mod peer_write;
mod scenarios;

/// Benchmarks of sessionview: the hardware ceiling, projection, freshness, queries, a peer, rebuild.
#[derive(Debug, Parser)]
#[command(name = "sessionview-bench", version, about)]
struct Cli {
    #[command(flatten)]
    env: harness::EnvArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

/// How many events and which stream.
#[derive(Debug, Clone, Copy, Args)]
struct Size {
    /// Events in the stream (the first N of the simulator's output).
    #[arg(long, env = "SESSIONVIEW_BENCH_EVENTS", default_value_t = 1_000_000)]
    events: u64,
    /// Simulator seed.
    #[arg(long, env = "SESSIONVIEW_BENCH_SEED", default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, Args)]
struct ProjectFileArgs {
    #[command(flatten)]
    size: Size,
    /// Only PostgreSQL: skip the SQLite run.
    #[arg(long, env = "SESSIONVIEW_BENCH_POSTGRES_ONLY")]
    postgres_only: bool,
}

#[derive(Debug, Clone, Args)]
struct ScaleOutArgs {
    #[command(flatten)]
    size: Size,
    /// Partitions of the topic.
    #[arg(long, env = "SESSIONVIEW_BENCH_PARTITIONS", default_value_t = 8)]
    partitions: i32,
    /// How many projector instances to run, one count after the other.
    #[arg(
        long,
        env = "SESSIONVIEW_BENCH_INSTANCES",
        value_delimiter = ',',
        default_value = "1,2,4"
    )]
    instances: Vec<usize>,
}

#[derive(Debug, Clone, Args)]
struct FreshnessArgs {
    /// Events published per second.
    #[arg(long, env = "SESSIONVIEW_BENCH_RATE", default_value_t = 5000)]
    rate: u32,
    /// How long to publish and probe.
    #[arg(long, env = "SESSIONVIEW_BENCH_SECONDS", default_value_t = 30)]
    seconds: u64,
    /// Seconds of publishing at the same rate before the clock starts, unmeasured: a freshly
    /// started JVM broker answers its first produce requests slowly (class loading, JIT; ~0.5 s
    /// at p99 in the first 5 s here), which is a cost of starting the broker, not of the stream.
    #[arg(long, env = "SESSIONVIEW_BENCH_WARMUP_SECONDS", default_value_t = 10)]
    warmup_seconds: u64,
    /// Simulator seed.
    #[arg(long, env = "SESSIONVIEW_BENCH_SEED", default_value_t = 42)]
    seed: u64,
    /// The publishing producer's `linger.ms` (librdkafka's default is 5): how long a probe may
    /// wait in the producer for others to share its request.
    #[arg(
        long,
        env = "SESSIONVIEW_BENCH_PRODUCER_LINGER_MS",
        default_value_t = 1
    )]
    producer_linger_ms: u32,
    /// Event-stream listeners (`GET /events/session`) open during the run: each probe's
    /// `session_enqueued` is timed from its publish to its arrival at every one of them.
    #[arg(long, env = "SESSIONVIEW_BENCH_LISTENERS", default_value_t = 100)]
    listeners: usize,
}

#[derive(Debug, Clone, Copy, Args)]
struct PeerWriteArgs {
    #[command(flatten)]
    size: Size,
    /// The sink's tasks (`tasks.max`; the topic has 4 partitions).
    #[arg(long, env = "SESSIONVIEW_BENCH_CONNECT_TASKS", default_value_t = 4)]
    tasks: u32,
}

#[derive(Debug, Clone, Args)]
struct QueryArgs {
    /// Sessions in the read model under load.
    #[arg(long, env = "SESSIONVIEW_BENCH_SESSIONS", default_value_t = 100_000)]
    sessions: u64,
    /// Seconds of load per query and concurrency.
    #[arg(long, env = "SESSIONVIEW_BENCH_SECONDS", default_value_t = 15)]
    seconds: u64,
    /// Closed-loop concurrency levels.
    #[arg(
        long,
        env = "SESSIONVIEW_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,16,64"
    )]
    concurrency: Vec<u32>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// PostgreSQL's write ceiling for the read model's rows: batched multi-row upserts and COPY.
    Ceiling(Size),
    /// Events/s from an NDJSON file into PostgreSQL and SQLite; ratio to the ceiling; peak RSS;
    /// PostgreSQL's WAL volume and the read model's bytes by table, per session and per event.
    ProjectFile(ProjectFileArgs),
    /// Events/s through the broker (published first), beside the broker's consume-only rate.
    ProjectKafka(Size),
    /// Publish-to-visible latency through Kafka, the projector and GraphQL at a steady rate.
    Freshness(FreshnessArgs),
    /// compute_session_list and compute_session under closed-loop load (oha).
    Query(QueryArgs),
    /// The query scenario against sessionview and PostGraphile v4 on the same tables.
    Peer(QueryArgs),
    /// `sessionview project` beside Kafka Connect (standalone) with the Debezium JDBC sink
    /// writing the same topic into the same PostgreSQL: events/s, CPU, memory, bytes.
    PeerWrite(PeerWriteArgs),
    /// `sessionview replay` of the stream from a file and from Kafka.
    Rebuild(Size),
    /// `sessionview project` as 1, 2 and 4 instances of one consumer group on an 8-partition
    /// topic: events/s, and the CPU of the instances, PostgreSQL and the machine.
    ScaleOut(ScaleOutArgs),
    /// A stream with 1 % hostile events (file and Kafka) beside the clean one; then the server
    /// under a hostile request mix beside a normal signed query load.
    Hostile(hostile::HostileArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut bench = harness::Bench::new(cli.env).await?;
        let result = match cli.scenario {
            Scenario::Ceiling(s) => scenarios::ceiling(&mut bench, s).await.map(drop),
            Scenario::ProjectFile(a) => scenarios::project_file(&mut bench, a).await,
            Scenario::ProjectKafka(s) => scenarios::project_kafka(&mut bench, s).await,
            Scenario::Freshness(a) => scenarios::freshness(&mut bench, a).await,
            Scenario::Query(a) => load::query(&mut bench, &a, false).await,
            Scenario::Peer(a) => load::query(&mut bench, &a, true).await,
            Scenario::PeerWrite(a) => peer_write::peer_write(&mut bench, a.size, a.tasks).await,
            Scenario::Rebuild(s) => scenarios::rebuild(&mut bench, s).await,
            Scenario::ScaleOut(a) => scenarios::scale_out(&mut bench, a).await,
            Scenario::Hostile(a) => hostile::hostile_scenario(&mut bench, a).await,
        };
        bench.shutdown().await;
        result
    })
}
