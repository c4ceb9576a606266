//! The write-side scenarios: ceiling, project-file, project-kafka, freshness, rebuild.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use rdkafka::producer::FutureRecord;
use sessionview_projection::{Changes, Fold, Position};
use sessionview_store::prelude::*;
use sessionview_store::{Commit, PgStore};
use sqlx::Connection;
use tokio::sync::Mutex;

use crate::harness::{self, Bench, Measured, measure, table, thousands};
use crate::kafka;
use crate::load::Signer;
use crate::{FreshnessArgs, ProjectFileArgs, ScaleOutArgs, Size};

/// Tables of the read model whose rows a projection produces.
const ROW_TABLES: &[&str] = &["sessions", "kernels", "session_dependencies"];

/// The ceiling's result: the best rows/s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ceiling {
    pub rows_per_sec: f64,
}

/// Final read-model states of the stream, folded in memory.
fn final_states(size: Size) -> Vec<sessionview_projection::SessionState> {
    let mut fold = Fold::new();
    for (i, m) in harness::stream(size.events, size.seed).enumerate() {
        let position = Position {
            partition: 0,
            offset: i as i64,
        };
        fold.apply_bytes("bench", position, &m.bytes);
    }
    fold.sessions().values().cloned().collect()
}

pub(crate) async fn migrate(bench: &Bench, url: &str) -> anyhow::Result<()> {
    let out = bench
        .sessionview()
        .args(["migrate", "--database-url", url])
        .output()
        .await?;
    if !out.status.success() {
        bail!("migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn row_count(url: &str) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut total = 0i64;
    for t in ROW_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
            .fetch_one(&mut conn)
            .await?;
        total += n;
    }
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Columns of `table` that can be written (not generated).
async fn writable_columns(conn: &mut sqlx::PgConnection, table: &str) -> anyhow::Result<String> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1 AND is_generated = 'NEVER' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(cols.join(", "))
}

/// PostgreSQL's write ceiling for the stream's final read model, from one client: the store's own
/// multi-row upserts (1,000 sessions per transaction) and COPY of the same rows.
pub(crate) async fn ceiling(bench: &mut Bench, size: Size) -> anyhow::Result<Ceiling> {
    let states = final_states(size);
    let url = bench.fresh_db("ceiling").await?;
    migrate(bench, &url).await?;
    let store = PgStore::connect(&url, 2).await?;
    let started = Instant::now();
    for chunk in states.chunks(1000) {
        let changes = Changes {
            sessions: chunk.to_vec(),
            created: chunk.iter().map(|s| s.session.id).collect(),
            ..Changes::default()
        };
        store
            .commit(Commit {
                source: "bench",
                advances: &[],
                changes: &changes,
                retire: &[],
            })
            .await?;
    }
    let upsert = started.elapsed();
    let rows = row_count(&url).await?;

    // The same rows, exported and written again with COPY.
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let mut dumps = Vec::new();
    for t in ROW_TABLES {
        let cols = writable_columns(&mut conn, t).await?;
        let mut out = conn
            .copy_out_raw(&format!("COPY {t} ({cols}) TO STDOUT"))
            .await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = out.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        drop(out);
        dumps.push((t, cols, bytes));
    }
    sqlx::query(&format!("TRUNCATE {}", ROW_TABLES.join(", ")))
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for (t, cols, bytes) in &dumps {
        let mut sink = tx
            .copy_in_raw(&format!("COPY {t} ({cols}) FROM STDIN"))
            .await?;
        for chunk in bytes.chunks(1 << 20) {
            sink.send(chunk).await?;
        }
        sink.finish().await?;
    }
    tx.commit().await?;
    let copy = started.elapsed();

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let best = rate(upsert).max(rate(copy));
    bench.header(
        "ceiling",
        &[
            (
                "stream",
                format!("first {} simulator events, seed {}", size.events, size.seed),
            ),
            (
                "rows",
                format!(
                    "{} (sessions, kernels, dependencies of the final read model)",
                    thousands(rows as f64)
                ),
            ),
            ("client", "one connection".into()),
        ],
    );
    table(
        &["method", "rows", "seconds", "rows/s"],
        &[
            vec![
                "multi-row UNNEST upsert, 1,000 sessions/tx (the store's commit)".into(),
                thousands(rows as f64),
                format!("{:.2}", upsert.as_secs_f64()),
                thousands(rate(upsert)),
            ],
            vec![
                "COPY FROM STDIN, one transaction".into(),
                thousands(rows as f64),
                format!("{:.2}", copy.as_secs_f64()),
                thousands(rate(copy)),
            ],
            vec![
                "**ceiling (best)**".into(),
                String::new(),
                String::new(),
                format!("**{}**", thousands(best)),
            ],
        ],
    );
    Ok(Ceiling { rows_per_sec: best })
}

fn project_row(what: &str, events: u64, m: &Measured, ceiling: &Ceiling) -> Vec<String> {
    let secs = m.wall.as_secs_f64();
    let rate = events as f64 / secs;
    vec![
        what.into(),
        thousands(events as f64),
        format!("{secs:.1}"),
        thousands(rate),
        format!("{:.0} %", 100.0 * rate / ceiling.rows_per_sec),
        format!("{:.0}", m.peak_rss_mib),
        format!("{:.1}", m.cpu_secs),
    ]
}

const PROJECT_HEADER: &[&str] = &[
    "run",
    "events",
    "seconds",
    "events/s",
    "of ceiling",
    "peak RSS MiB",
    "projector CPU s",
];

/// Projects the file with the real binary into `url`; returns its measurement.
pub(crate) async fn project(
    bench: &Bench,
    url: &str,
    source: &str,
    extra: &[&str],
) -> anyhow::Result<Measured> {
    let mut cmd = bench.sessionview();
    cmd.args([
        "project",
        "--database-url",
        url,
        "--source",
        source,
        "--exit-at-end",
    ])
    .args(extra);
    let (m, _, _) = measure(cmd, "sessionview project").await?;
    Ok(m)
}

/// How long after its start a projector logging JSON (`--log-format json`) got its first
/// partitions: the consumer group's join, which the broker holds back for its initial rebalance
/// delay (Apache Kafka's `group.initial.rebalance.delay.ms`: 3 s by default, 0 on the bench's
/// own broker).
pub(crate) fn joined_after(m: &Measured, stderr: &str) -> anyhow::Result<Duration> {
    let at = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|msg| msg.starts_with("partition assigned"))
        })
        .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
        .context("the projector's log has no \"partition assigned\" line")?;
    let at = chrono::DateTime::parse_from_rfc3339(&at)
        .with_context(|| format!("timestamp {at:?}"))?
        .with_timezone(&chrono::Utc);
    Ok((at - m.started_at).to_std().unwrap_or_default())
}

pub(crate) async fn project_file(bench: &mut Bench, args: ProjectFileArgs) -> anyhow::Result<()> {
    let size = args.size;
    let file = bench.events_file(size.events, size.seed)?;
    let ceiling = ceiling(bench, size).await?;
    let source = format!("file://{}", file.display());

    let url = bench.fresh_db("project_file").await?;
    migrate(bench, &url).await?;
    checkpoint(&url).await?;
    let wal_before = wal_lsn(&url).await?;
    let pg = project(bench, &url, &source, &[]).await?;
    let wal = wal_bytes_since(&url, &wal_before).await?;
    let mut footprint = footprint(&url).await?;
    footprint.compact(&url).await?;

    let lite = if args.postgres_only {
        None
    } else {
        let sqlite = bench.dir.join("project-file.db");
        harness::remove_with_journals(&sqlite);
        let sqlite_url = format!("sqlite://{}", sqlite.display());
        migrate(bench, &sqlite_url).await?;
        let lite = project(bench, &sqlite_url, &source, &[]).await?;
        harness::remove_with_journals(&sqlite);
        Some(lite)
    };

    bench.header(
        "project-file",
        &[
            ("stream", format!("{} events (seed {}), {}", thousands(size.events as f64), size.seed, file.display())),
            ("command", "sessionview project --source file://... --exit-at-end (default batch 20,000)".into()),
            ("of ceiling", format!("events/s ÷ the ceiling's {} rows/s: every event rewrites at least one row (its session's or kernel's) and records its id", thousands(ceiling.rows_per_sec))),
            ("WAL", format!("{:.0} MiB written by PostgreSQL during the run ({:.0} B an event)", wal as f64 / MIB, wal as f64 / size.events as f64)),
        ],
    );
    let mut rows = vec![project_row("file → PostgreSQL", size.events, &pg, &ceiling)];
    rows.extend(lite.map(|lite| project_row("file → SQLite", size.events, &lite, &ceiling)));
    table(PROJECT_HEADER, &rows);
    println!();
    footprint.print(size.events);
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Writes every dirty buffer out now, so that a measured run does not pay for the writes of what
/// ran before it (the ceiling's tables, a previous run).
async fn checkpoint(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    Ok(())
}

/// PostgreSQL's current write-ahead log position.
async fn wal_lsn(url: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await?)
}

/// Bytes of write-ahead log since `lsn` (the whole server's: the bench is its only writer).
async fn wal_bytes_since(url: &str, lsn: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::int8")
            .bind(lsn)
            .fetch_one(&mut conn)
            .await?,
    )
}

/// The read model's size on disk after a projection, by table (heap, indexes and TOAST): as the
/// run left it (with the dead row versions of its updates that autovacuum had not yet made
/// reusable), and rewritten by `VACUUM FULL` (live rows only: what a table settles to once its
/// sessions have ended and their space is reused).
struct Footprint {
    sessions: i64,
    /// Name, rows, bytes after the run, bytes compacted.
    tables: Vec<(String, i64, i64, i64)>,
}

/// Every table of the database's public schema with its rows and total bytes.
async fn footprint(url: &str) -> anyhow::Result<Footprint> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // Counted, not estimated: the statistics may be older than the last batch.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE '\\_sqlx%' \
         ORDER BY pg_total_relation_size(c.oid) DESC",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let (rows, bytes): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM \"{name}\"), pg_total_relation_size('\"{name}\"')"
        ))
        .fetch_one(&mut conn)
        .await?;
        tables.push((name, rows, bytes, 0));
    }
    let sessions = tables
        .iter()
        .find(|(n, _, _, _)| n == "sessions")
        .map_or(0, |(_, rows, _, _)| *rows);
    Ok(Footprint { sessions, tables })
}

impl Footprint {
    /// Rewrites every table (`VACUUM FULL`) and records its compacted size.
    async fn compact(&mut self, url: &str) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        eprintln!("VACUUM FULL of the projected tables...");
        for (name, _, _, compacted) in &mut self.tables {
            sqlx::query(&format!("VACUUM FULL \"{name}\""))
                .execute(&mut conn)
                .await?;
            *compacted =
                sqlx::query_scalar(&format!("SELECT pg_total_relation_size('\"{name}\"')"))
                    .fetch_one(&mut conn)
                    .await?;
        }
        Ok(())
    }

    fn print(&self, events: u64) {
        let total: i64 = self.tables.iter().map(|(_, _, b, _)| b).sum();
        let compacted: i64 = self.tables.iter().map(|(_, _, _, c)| c).sum();
        let per = |bytes: i64, n: i64| {
            if n > 0 {
                thousands(bytes as f64 / n as f64)
            } else {
                "-".into()
            }
        };
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        let mut rows: Vec<Vec<String>> = self
            .tables
            .iter()
            .filter(|(_, _, bytes, _)| *bytes > 8192 * 3)
            .map(|(name, rows, bytes, compacted)| {
                vec![
                    name.clone(),
                    thousands(*rows as f64),
                    format!("{:.1}", *bytes as f64 / MIB),
                    per(*bytes, self.sessions),
                    per(*bytes, events),
                    format!("{:.1}", *compacted as f64 / MIB),
                    per(*compacted, self.sessions),
                    per(*compacted, events),
                ]
            })
            .collect();
        rows.push(vec![
            "**all tables**".into(),
            String::new(),
            format!("{:.1}", total as f64 / MIB),
            per(total, self.sessions),
            per(total, events),
            format!("{:.1}", compacted as f64 / MIB),
            per(compacted, self.sessions),
            per(compacted, events),
        ]);
        table(
            &[
                "table (PostgreSQL)",
                "rows",
                "MiB after the run",
                "B a session",
                "B an event",
                "MiB compacted",
                "B a session",
                "B an event",
            ],
            &rows,
        );
    }
}

/// The partitions of the topic [`publish`] makes.
pub(crate) const PUBLISH_PARTITIONS: i32 = 4;

/// Publishes the stream to a new topic of [`PUBLISH_PARTITIONS`]; returns the topic and the
/// publish figures.
pub(crate) async fn publish(
    bench: &mut Bench,
    size: Size,
) -> anyhow::Result<(String, String, u64, Duration)> {
    publish_to(bench, size, PUBLISH_PARTITIONS).await
}

/// Publishes the stream to a new topic of `partitions`; returns the topic and the publish figures.
async fn publish_to(
    bench: &mut Bench,
    size: Size,
    partitions: i32,
) -> anyhow::Result<(String, String, u64, Duration)> {
    let brokers = bench.broker().await?;
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    kafka::create_topic(&brokers, &topic, partitions).await?;
    eprintln!("publishing {} events to {topic}...", size.events);
    let (n, took) =
        kafka::publish_all(&brokers, &topic, harness::stream(size.events, size.seed)).await?;
    Ok((brokers, topic, n, took))
}

/// The report's line for a stream [`publish`] published.
pub(crate) fn published_stream(n: u64, size: Size) -> (&'static str, String) {
    (
        "stream",
        format!(
            "{} events (seed {}), published first to a {PUBLISH_PARTITIONS}-partition topic",
            thousands(n as f64),
            size.seed
        ),
    )
}

/// `sessionview project` of `topic` into `url` to the topic's end, as a new consumer group,
/// logging JSON with its partitions' assignment (which [`joined_after`] reads).
pub(crate) fn project_kafka_command(
    bench: &Bench,
    url: &str,
    brokers: &str,
    topic: &str,
) -> tokio::process::Command {
    let group = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut cmd = bench.sessionview();
    // The assignment is logged at info (the bench's processes log warnings only by default).
    cmd.env("SESSIONVIEW_LOG", "warn,sessionview_projector::kafka=info")
        .args(["project", "--log-format", "json", "--database-url", url])
        .arg("--source")
        .arg(format!("kafka://{brokers}/{topic}"))
        .args(["--exit-at-end", "--group", &group]);
    cmd
}

pub(crate) async fn project_kafka(bench: &mut Bench, size: Size) -> anyhow::Result<()> {
    let (brokers, topic, n, publish_took) = publish(bench, size).await?;
    let (b, t) = (brokers.clone(), topic.clone());
    let (consumed, consume_took) =
        tokio::task::spawn_blocking(move || kafka::consume_only(&b, &t)).await??;
    let url = bench.fresh_db("project_kafka").await?;
    migrate(bench, &url).await?;
    let cmd = project_kafka_command(bench, &url, &brokers, &topic);
    let (m, _, stderr) = measure(cmd, "sessionview project").await?;
    let joined = joined_after(&m, &stderr)?;
    let projecting = m.wall.saturating_sub(joined);
    let rate = |n: u64, d: Duration| thousands(n as f64 / d.as_secs_f64());
    bench.header(
        "project-kafka",
        &[
            published_stream(n, size),
            ("broker", bench.broker_description()),
            (
                "command",
                "sessionview project --source kafka://... --exit-at-end".into(),
            ),
        ],
    );
    table(
        &["stage", "events", "seconds", "events/s", "peak RSS MiB"],
        &[
            vec![
                "publish (rdkafka producer)".into(),
                thousands(n as f64),
                format!("{:.1}", publish_took.as_secs_f64()),
                rate(n, publish_took),
                String::new(),
            ],
            vec![
                "broker consume-only (rdkafka consumer, no decoding)".into(),
                thousands(consumed as f64),
                format!("{:.1}", consume_took.as_secs_f64()),
                rate(consumed, consume_took),
                String::new(),
            ],
            vec![
                "sessionview project, from its start (group join included)".into(),
                thousands(n as f64),
                format!("{:.1}", m.wall.as_secs_f64()),
                rate(n, m.wall),
                format!("{:.0}", m.peak_rss_mib),
            ],
            vec![
                "**sessionview project, from its partitions' assignment**".into(),
                thousands(n as f64),
                format!("{:.1}", projecting.as_secs_f64()),
                format!("**{}**", rate(n, projecting)),
                String::new(),
            ],
        ],
    );
    println!(
        "The group join took {:.1} s (the broker's initial rebalance delay: a fixed cost of a new \
         group, not of the events). Of the projecting time, reading from the broker alone would \
         take {:.0} %.\n",
        joined.as_secs_f64(),
        100.0 * consume_took.as_secs_f64() / projecting.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}

pub(crate) async fn rebuild(bench: &mut Bench, size: Size) -> anyhow::Result<()> {
    let file = bench.events_file(size.events, size.seed)?;
    let url = bench.fresh_db("rebuild").await?;
    migrate(bench, &url).await?;
    let replay = |from: String| {
        let mut cmd = bench.sessionview();
        cmd.args(["replay", "--database-url", &url, "--from", &from]);
        cmd
    };
    let (from_file, _, _) = measure(
        replay(format!("file://{}", file.display())),
        "sessionview replay (file)",
    )
    .await?;
    let (brokers, topic, n, _) = publish(bench, size).await?;
    let url2 = bench.fresh_db("rebuild_kafka").await?;
    migrate(bench, &url2).await?;
    let mut cmd = bench.sessionview();
    cmd.args([
        "replay",
        "--database-url",
        &url2,
        "--from",
        &format!("kafka://{brokers}/{topic}"),
    ]);
    let (from_kafka, _, _) = measure(cmd, "sessionview replay (kafka)").await?;
    bench.header(
        "rebuild",
        &[
            (
                "stream",
                format!(
                    "{} events (seed {})",
                    thousands(size.events as f64),
                    size.seed
                ),
            ),
            (
                "command",
                "sessionview replay --from ... (default mode: shadow schema, verify, swap)".into(),
            ),
            ("broker", bench.broker_description()),
        ],
    );
    let row = |what: &str, m: &Measured| {
        vec![
            what.into(),
            thousands(n as f64),
            format!("{:.1}", m.wall.as_secs_f64()),
            thousands(n as f64 / m.wall.as_secs_f64()),
            format!("{:.0}", m.peak_rss_mib),
        ]
    };
    table(
        &["source", "events", "seconds", "events/s", "peak RSS MiB"],
        &[
            row("file", &from_file),
            row("Kafka (4 partitions)", &from_kafka),
        ],
    );
    Ok(())
}

/// A probe's session id and how long it took to become visible (`None`: not within 10 s).
/// CPU seconds used so far by each process of the freshness run (None: not known).
struct CpuSample {
    projector: Option<f64>,
    broker: Option<f64>,
    postgres: harness::PostgresCpu,
}

/// The most probes one poll asks for (about 20 are published a second at the default rate).
const PROBES_PER_POLL: usize = 64;

/// A probe's key, when it was published, and how long until it was visible (None: not in 10 s).
type ProbeResult = (String, Instant, Option<Duration>);

/// Probes by session id, with when each was handed to the producer.
type Probes = Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

/// `n` streams of `GET /events/session` (every session the caller may see), each recording, for
/// every probe's `session_enqueued` it is told of, the time since the probe was handed to the
/// producer. `opened` counts the streams that have started.
fn spawn_listeners(
    n: usize,
    signer: &Arc<Signer>,
    probes: &Probes,
    arrivals: &Arc<std::sync::Mutex<Vec<Duration>>>,
    opened: &Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (signer, probes, arrivals, opened) = (
                Arc::clone(signer),
                Arc::clone(probes),
                Arc::clone(arrivals),
                Arc::clone(opened),
            );
            tokio::spawn(async move {
                let Ok(mut resp) = signer.open("/events/session").await else {
                    return;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut buf: Vec<u8> = Vec::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let now = Instant::now();
                    buf.extend_from_slice(&chunk);
                    let mut start = 0;
                    while let Some(end) = find(&buf[start..], b"\n\n") {
                        let block = &buf[start..start + end];
                        if block.starts_with(b"event: session_enqueued") {
                            let id = find(block, b"\"sessionId\":\"")
                                .and_then(|at| block.get(at + 13..at + 13 + 36))
                                .and_then(|id| std::str::from_utf8(id).ok());
                            let sent = id.and_then(|id| probes.lock().ok()?.get(id).copied());
                            if let (Some(sent), Ok(mut a)) = (sent, arrivals.lock()) {
                                a.push(now - sent);
                            }
                        }
                        start += end + 2;
                    }
                    buf.drain(..start);
                }
            })
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) async fn freshness(bench: &mut Bench, args: FreshnessArgs) -> anyhow::Result<()> {
    let brokers = bench.broker().await?;
    let topic = format!("bench-fresh-{}", uuid::Uuid::new_v4().simple());
    kafka::create_topic(&brokers, &topic, 4).await?;
    let url = bench.fresh_db("freshness").await?;
    migrate(bench, &url).await?;
    let (ak, sk) = harness::superadmin(bench, &url).await?;
    let port = harness::free_port()?;
    let mut projector = bench
        .sessionview()
        .args([
            "project",
            "--database-url",
            &url,
            "--source",
            &format!("kafka://{brokers}/{topic}"),
        ])
        .args([
            "--group",
            &format!("bench-{}", uuid::Uuid::new_v4().simple()),
        ])
        .spawn()
        .context("starting the projector")?;
    let mut server = bench
        .sessionview()
        .args([
            "serve",
            "--database-url",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .spawn()
        .context("starting the server")?;
    harness::wait_http(&format!("http://127.0.0.1:{port}/healthz"), 30).await?;
    // Let the projector join the group before the clock starts.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let signer = Arc::new(Signer::new(format!("127.0.0.1:{port}"), ak, sk));
    let producer = kafka::producer(&brokers, args.producer_linger_ms)?;
    // The event stream's listeners, open before anything is published.
    let probes: Probes = Arc::default();
    let arrivals: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listeners = spawn_listeners(args.listeners, &signer, &probes, &arrivals, &opened);
    let deadline = Instant::now() + Duration::from_secs(30);
    while opened.load(std::sync::atomic::Ordering::Relaxed) < args.listeners {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} event streams opened in 30 s",
                opened.load(std::sync::atomic::Ordering::Relaxed),
                args.listeners
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Probes waiting to become visible; one poller asks for the oldest of them (at most
    // PROBES_PER_POLL) in one GraphQL request (aliases) every 5 ms, so probing adds ~200 small
    // requests/s however far the projector falls behind. A probe beyond the cap is checked a
    // little later: its time can only come out longer, never shorter.
    let pending: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let all: Arc<Mutex<Vec<ProbeResult>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // When the broker acknowledged each probe (its own share of the latency).
    let acks: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let poller = {
        let (pending, all, stop, signer) = (
            Arc::clone(&pending),
            Arc::clone(&all),
            Arc::clone(&stop),
            Arc::clone(&signer),
        );
        tokio::spawn(async move {
            loop {
                let batch: Vec<_> = pending
                    .lock()
                    .await
                    .iter()
                    .take(PROBES_PER_POLL)
                    .cloned()
                    .collect();
                if batch.is_empty() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let fields: Vec<String> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, (id, _))| format!("p{i}: compute_session(id: \"{id}\") {{ id }}"))
                    .collect();
                let body = serde_json::json!({ "query": format!("{{ {} }}", fields.join(" ")) });
                let answer = signer.post(&body).await.ok();
                let now = Instant::now();
                let mut done = Vec::new();
                for (i, (id, sent)) in batch.iter().enumerate() {
                    let visible = answer
                        .as_ref()
                        .is_some_and(|a| !a[format!("p{i}")].is_null());
                    if visible {
                        done.push((id.clone(), *sent, Some(now - *sent)));
                    } else if now - *sent > Duration::from_secs(10) {
                        done.push((id.clone(), *sent, None));
                    }
                }
                if !done.is_empty() {
                    pending
                        .lock()
                        .await
                        .retain(|(id, _)| !done.iter().any(|(d, _, _)| d == id));
                    all.lock().await.extend(done);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stream = harness::stream(u64::MAX / 2, args.seed);
    let per_tick = (args.rate / 100).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // Warm-up: the same rate, nothing measured; acknowledged before the clock starts.
    let warming = Instant::now();
    let mut warm_up = Vec::new();
    while warming.elapsed() < Duration::from_secs(args.warmup_seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            let Some(m) = stream.next() else { break };
            warm_up.push(
                producer
                    .send_result(FutureRecord::to(&topic).key(&m.key).payload(&m.bytes))
                    .map_err(|(e, _)| anyhow::anyhow!("enqueueing: {e}"))?,
            );
        }
    }
    for delivery in warm_up {
        let _ = delivery.await;
    }
    let started = Instant::now();
    let mut published = 0u64;
    let mut enqueued = 0u64;
    // CPU seconds used so far by the projector, the broker and PostgreSQL, at each window's start
    // and at the end: what each of them spends as the run goes on.
    let window = Duration::from_secs(5);
    let cpu_now = |projector: &tokio::process::Child, broker: Option<u32>| CpuSample {
        projector: projector.id().and_then(harness::cpu_secs),
        broker: broker.and_then(harness::cpu_secs),
        postgres: harness::PostgresCpu::now(),
    };
    let broker_pid = bench.broker_pid();
    let mut cpu = vec![cpu_now(&projector, broker_pid)];
    let server_cpu_at_start = server.id().and_then(harness::cpu_secs);
    let bench_cpu_at_start = harness::cpu_secs(std::process::id());
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tick.tick().await;
        if started.elapsed() >= window * cpu.len() as u32 {
            cpu.push(cpu_now(&projector, broker_pid));
        }
        for _ in 0..per_tick {
            let Some(m) = stream.next() else { break };
            let sent_at = Instant::now();
            let delivery = producer
                .send_result(FutureRecord::to(&topic).key(&m.key).payload(&m.bytes))
                .map_err(|(e, _)| anyhow::anyhow!("enqueueing: {e}"))?;
            published += 1;
            if m.event_type == Some("session_enqueued") {
                enqueued += 1;
                // About 20 probes a second at the default rate.
                if enqueued % 8 == 0 {
                    pending.lock().await.push((m.key.clone(), sent_at));
                    if let Ok(mut p) = probes.lock() {
                        p.insert(m.key.clone(), sent_at);
                    }
                    let acks = Arc::clone(&acks);
                    let key = m.key.clone();
                    tokio::spawn(async move {
                        if let Ok(Ok(_)) = delivery.await {
                            acks.lock().await.push((key, sent_at.elapsed()));
                        }
                    });
                }
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    cpu.push(cpu_now(&projector, broker_pid));
    // Steady state: both processes have followed the stream for the whole run.
    let rss = |child: &tokio::process::Child| {
        child
            .id()
            .and_then(harness::ProcStat::read)
            .map_or("-".to_owned(), |p| {
                format!("{:.0} MiB (peak {:.0} MiB)", p.rss_mib, p.peak_rss_mib)
            })
    };
    let (projector_rss, server_rss) = (rss(&projector), rss(&server));
    // What the server says of its streams: still open, and cut for falling behind.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()
        .map(|r| r.text());
    let metrics = match metrics {
        Some(text) => text.await.unwrap_or_default(),
        None => String::new(),
    };
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or("0")
            .to_owned()
    };
    let (streams_open, streams_cut) = (
        metric("sessionview_event_streams"),
        metric("sessionview_event_streams_cut_total"),
    );
    let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0} % of a core", (b - a) / publish_secs * 100.0),
        _ => "-".to_owned(),
    };
    let server_cpu = share(server_cpu_at_start, server.id().and_then(harness::cpu_secs));
    let bench_cpu = share(bench_cpu_at_start, harness::cpu_secs(std::process::id()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.await;
    // The last probes' events have had the poller's time to arrive.
    for l in &listeners {
        l.abort();
    }
    let mut pushed = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    pushed.sort();
    let probed = probes.lock().map(|p| p.len()).unwrap_or(0);
    let _ = projector.kill().await;
    let _ = server.kill().await;
    let all = all.lock().await.clone();
    let acks = acks.lock().await.clone();
    let mut acked: Vec<Duration> = acks.iter().map(|(_, d)| *d).collect();
    // Per probe, what came after the broker's acknowledgement: the projector and the query
    // service's share (consuming, folding, committing, answering).
    let ack_of: std::collections::HashMap<&str, Duration> =
        acks.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    let mut after_ack: Vec<Duration> = all
        .iter()
        .filter_map(|(k, _, l)| Some(l.as_ref()?.saturating_sub(*ack_of.get(k.as_str())?)))
        .collect();
    after_ack.sort();
    acked.sort();
    let mut seen: Vec<Duration> = all.iter().filter_map(|(_, _, l)| *l).collect();
    let missed = all.len() - seen.len();
    seen.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(
            ((v.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(v.len().saturating_sub(1)),
        )
        .map_or("-".to_owned(), |d| {
            format!("{:.1}", d.as_secs_f64() * 1000.0)
        })
    };
    bench.header(
        "freshness",
        &[
            ("publishing", format!("{} events/s for {} s (achieved {:.0}/s) after {} s of warm-up at that rate, 4 partitions, producer linger {} ms", args.rate, args.seconds, published as f64 / publish_secs, args.warmup_seconds, args.producer_linger_ms)),
            ("probe", "every 8th session_enqueued: time from handing it to the producer until compute_session(id) returns it; one signed GraphQL request every 5 ms asks for all pending probes".into()),
            ("broker", bench.broker_description()),
            ("processes", "sessionview project (defaults: batch 20,000, linger 5 ms; librdkafka's fetch.wait.max.ms 500, which Kafka cuts short when data arrives) and sessionview serve, PostgreSQL".into()),
            ("RSS at the end of the run (steady state)", format!("projector {projector_rss}, server {server_rss}")),
            ("event-stream listeners", format!("{} streams of GET /events/session (every session), open before publishing; while publishing the server used {server_cpu} and this bench (publishing, probing, reading every stream) {bench_cpu}; at the end {streams_open} open, {streams_cut} cut for falling more than 4,096 events behind", args.listeners)),
        ],
    );
    table(
        &[
            "measured",
            "probes",
            "not visible within 10 s",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        &[
            vec![
                "**publish → visible in GraphQL**".into(),
                seen.len().to_string(),
                missed.to_string(),
                pct(&seen, 0.5),
                pct(&seen, 0.99),
                pct(&seen, 1.0),
            ],
            vec![
                format!(
                    "**publish → pushed to each of {} /events/session listeners** (arrivals)",
                    args.listeners
                ),
                pushed.len().to_string(),
                (probed * args.listeners)
                    .saturating_sub(pushed.len())
                    .to_string(),
                pct(&pushed, 0.5),
                pct(&pushed, 0.99),
                pct(&pushed, 1.0),
            ],
            vec![
                "publish → acknowledged by the broker".into(),
                acked.len().to_string(),
                String::new(),
                pct(&acked, 0.5),
                pct(&acked, 0.99),
                pct(&acked, 1.0),
            ],
            vec![
                "acknowledged → visible (per probe: the projector's and the query service's share)"
                    .into(),
                after_ack.len().to_string(),
                String::new(),
                pct(&after_ack, 0.5),
                pct(&after_ack, 0.99),
                pct(&after_ack, 1.0),
            ],
        ],
    );
    // The same probes by when they were published: a tail that grows with the run's length
    // (a component slowing down as the topic or the tables grow) reads differently from spikes.
    let mut rows = Vec::new();
    for w in 0..args.seconds.div_ceil(window.as_secs()) {
        let (from, to) = (window * w as u32, window * (w as u32 + 1));
        // Share of one core over the window, from the samples at its two ends.
        let share = |used: fn(&CpuSample, &CpuSample) -> Option<f64>| {
            let (Some(a), Some(b)) = (cpu.get(w as usize), cpu.get(w as usize + 1)) else {
                return "-".to_owned();
            };
            used(a, b).map_or_else(
                || "-".to_owned(),
                |secs| format!("{:.0} %", secs / window.as_secs_f64() * 100.0),
            )
        };
        let in_window = |sent: &Instant| {
            let at = sent.saturating_duration_since(started);
            at >= from && at < to
        };
        let mut lat: Vec<Duration> = all
            .iter()
            .filter(|(_, sent, _)| in_window(sent))
            .filter_map(|(_, _, l)| *l)
            .collect();
        lat.sort();
        let mut ack: Vec<Duration> = all
            .iter()
            .filter(|(_, sent, _)| in_window(sent))
            .filter_map(|(k, _, _)| ack_of.get(k.as_str()).copied())
            .collect();
        ack.sort();
        rows.push(vec![
            format!("{}–{} s", from.as_secs(), to.as_secs()),
            lat.len().to_string(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            pct(&ack, 0.99),
            share(|a, b| Some(b.projector? - a.projector?)),
            share(|a, b| Some(b.broker? - a.broker?)),
            share(|a, b| Some(b.postgres.since(&a.postgres))),
        ]);
    }
    println!();
    table(
        &[
            "published at",
            "probes",
            "visible p50 ms",
            "visible p99 ms",
            "visible max ms",
            "acknowledged p99 ms",
            "projector CPU (of a core)",
            "broker CPU",
            "PostgreSQL CPU",
        ],
        &rows,
    );
    Ok(())
}

/// `sessionview project` as 1, 2, 4, ... instances of one consumer group on a topic of
/// `--partitions`, each count into a fresh database: events/s of the group, and where the CPU went
/// (the instances, PostgreSQL, the whole machine), which is what limits a scale-out on one machine.
pub(crate) async fn scale_out(bench: &mut Bench, args: ScaleOutArgs) -> anyhow::Result<()> {
    let (brokers, topic, n, _) = publish_to(bench, args.size, args.partitions).await?;
    let mut rows = Vec::new();
    for &instances in &args.instances {
        let url = bench.fresh_db(&format!("scale_out_{instances}")).await?;
        migrate(bench, &url).await?;
        let group = format!("bench-{}", uuid::Uuid::new_v4().simple());
        checkpoint(&url).await?;
        let machine_before = harness::machine_cpu_secs();
        let postgres_before = harness::postgres_cpu_secs();
        eprintln!("{instances} instance(s) of sessionview project...");
        let runs = (0..instances).map(|_| {
            let mut cmd = bench.sessionview();
            cmd.args(["project", "--database-url", &url])
                .arg("--source")
                .arg(format!("kafka://{brokers}/{topic}"))
                .args(["--exit-at-end", "--group", &group]);
            measure(cmd, "sessionview project")
        });
        let measured = futures_util::future::try_join_all(runs).await?;
        let wall = measured
            .iter()
            .map(|(m, _, _)| m.wall)
            .max()
            .unwrap_or_default();
        let machine = harness::machine_cpu_secs() - machine_before;
        let postgres = harness::postgres_cpu_secs() - postgres_before;
        let projectors: f64 = measured.iter().map(|(m, _, _)| m.cpu_secs).sum();
        let peak = measured
            .iter()
            .map(|(m, _, _)| m.peak_rss_mib)
            .fold(0.0, f64::max);
        let secs = wall.as_secs_f64();
        rows.push(vec![
            instances.to_string(),
            format!("{secs:.1}"),
            thousands(n as f64 / secs),
            format!("{projectors:.1}"),
            format!("{postgres:.1}"),
            format!(
                "{:.0} %",
                100.0 * machine / (secs * harness::cores() as f64)
            ),
            format!("{peak:.0}"),
        ]);
    }
    bench.header(
        "scale-out",
        &[
            (
                "stream",
                format!(
                    "{} events (seed {}), published first to a {}-partition topic",
                    thousands(n as f64),
                    args.size.seed,
                    args.partitions
                ),
            ),
            ("broker", bench.broker_description()),
            (
                "command",
                "N × sessionview project --source kafka://... --group G --exit-at-end, started \
                 together, into a fresh database each time; seconds until the last exits (group \
                 join included)"
                    .into(),
            ),
        ],
    );
    table(
        &[
            "instances",
            "seconds",
            "events/s",
            "projectors' CPU s",
            "PostgreSQL CPU s",
            "machine busy",
            "peak RSS MiB (largest instance)",
        ],
        &rows,
    );
    Ok(())
}
