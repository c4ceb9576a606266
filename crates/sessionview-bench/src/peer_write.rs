//! The write-side peer: what an operator would deploy instead of `sessionview project` to land
//! the topic in PostgreSQL — Kafka Connect in standalone mode with the Debezium JDBC sink
//! connector (from Maven Central, `scripts/kafka/connect/pom.xml`), writing every event as a row
//! (upserts keyed by topic, partition and offset, so a redelivery overwrites instead of
//! duplicating). The same topic and the same PostgreSQL as sessionview's run; events/s, CPU,
//! memory and bytes of each, and what each produces.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::process::Command;

use crate::Size;
use crate::harness::{self, Bench, ProcStat, cpu_secs, measure, table, thousands};
use crate::scenarios::{
    PUBLISH_PARTITIONS, joined_after, migrate, project_kafka_command, publish, published_stream,
};

/// The table the sink writes.
const RAW_TABLE: &str = "session_events_raw";

/// Gives up when the sink's row count has not moved for this long.
const STALL: Duration = Duration::from_secs(120);

/// Kafka Connect's and the connector's jars, copied from Maven Central once.
async fn connect_libs() -> anyhow::Result<PathBuf> {
    let pom = harness::repo().join("scripts/kafka/connect/pom.xml");
    let text = std::fs::read_to_string(&pom).with_context(|| format!("{}", pom.display()))?;
    let version = |tag: &str| {
        text.split(&format!("<{tag}>"))
            .nth(1)
            .and_then(|t| t.split('<').next())
            .map(str::to_owned)
            .with_context(|| format!("no <{tag}> in {}", pom.display()))
    };
    let home = harness::repo().join(format!(
        ".sessionview/tools/kafka-connect-{}-debezium-{}",
        version("kafka.version")?,
        version("debezium.version")?
    ));
    let libs = home.join("libs");
    if libs.join("installed").exists() {
        return Ok(libs);
    }
    eprintln!(
        "installing Kafka Connect and the Debezium JDBC sink from Maven Central into {}...",
        home.display()
    );
    let tmp = home.join("libs.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&home)?;
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", tmp.display()))
        .output()
        .await
        .context("running mvn (Maven fetches Kafka Connect and the connector)")?;
    if !out.status.success() {
        bail!(
            "mvn could not copy the jars of {}:\n{}",
            pom.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = std::fs::remove_dir_all(&libs);
    std::fs::rename(&tmp, &libs)?;
    std::fs::write(libs.join("installed"), "")?;
    Ok(libs)
}

/// The worker's and the connector's configuration, written into `dir`.
fn configure(
    dir: &Path,
    brokers: &str,
    topic: &str,
    db: &str,
    tasks: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let rest = harness::free_port()?;
    let worker = dir.join("worker.properties");
    std::fs::write(
        &worker,
        format!(
            "bootstrap.servers={brokers}\n\
             listeners=http://127.0.0.1:{rest}\n\
             key.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.storage.StringConverter\n\
             offset.storage.file.filename={}\n\
             offset.flush.interval.ms=1000\n\
             consumer.max.poll.records=5000\n\
             consumer.auto.offset.reset=earliest\n",
            dir.join("offsets").display()
        ),
    )?;
    let connector = dir.join("sink.properties");
    // The events are schemaless JSON: the value is taken as a string and wrapped in a one-field
    // struct (the sink writes structs), so each row holds the event's text as it was published.
    std::fs::write(
        &connector,
        format!(
            "name=peer-write\n\
             connector.class=io.debezium.connector.jdbc.JdbcSinkConnector\n\
             tasks.max={tasks}\n\
             topics={topic}\n\
             connection.url=jdbc:postgresql://127.0.0.1:5432/{db}\n\
             connection.username=postgres\n\
             connection.password=postgres\n\
             insert.mode=upsert\n\
             primary.key.mode=kafka\n\
             schema.evolution=basic\n\
             table.name.format={RAW_TABLE}\n\
             batch.size=5000\n\
             transforms=hoist\n\
             transforms.hoist.type=org.apache.kafka.connect.transforms.HoistField$Value\n\
             transforms.hoist.field=event\n"
        ),
    )?;
    Ok((worker, connector))
}

/// The `public` schema's tables and their indexes, in bytes.
async fn bytes_of_tables(url: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::int8 FROM pg_class \
         WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&mut conn)
    .await?)
}

/// Rows the sink has written: its offsets are dense from 0 on each partition, so each
/// partition's highest offset (one index probe) says how many it holds, without a count over
/// the growing table while it is measured.
async fn raw_rows(url: &str, topic: &str, partitions: i32) -> i64 {
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return 0;
    };
    let mut rows = 0;
    for p in 0..partitions {
        let max: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT max(__connect_offset) FROM {RAW_TABLE} \
             WHERE __connect_topic = $1 AND __connect_partition = $2"
        ))
        .bind(topic)
        .bind(p)
        .fetch_one(&mut conn)
        .await
        .unwrap_or(None);
        rows += max.map_or(0, |m| m + 1);
    }
    rows
}

/// One side's figures.
struct Side {
    /// From its start to the last event written.
    wall: Duration,
    /// From its first write (sessionview: its partitions' assignment) to the last.
    writing: Duration,
    cpu_secs: f64,
    postgres_cpu_secs: f64,
    peak_rss_mib: f64,
    bytes: i64,
}

pub(crate) async fn peer_write(bench: &mut Bench, size: Size, tasks: u32) -> anyhow::Result<()> {
    let libs = connect_libs().await?;
    let (brokers, topic, n, _) = publish(bench, size).await?;

    // sessionview: the folded read model.
    let sv_url = bench.fresh_db("peer_write_sessionview").await?;
    let url = &sv_url;
    migrate(bench, url).await?;
    harness::quiet_database(url).await?;
    let cmd = project_kafka_command(bench, url, &brokers, &topic);
    eprintln!("sessionview project of {n} events...");
    // The writers' connections end with them: count PostgreSQL's CPU with its exited backends.
    let pg_before = harness::postgres_cpu_secs();
    let (m, _, stderr) = measure(cmd, "sessionview project").await?;
    let sv = Side {
        wall: m.wall,
        writing: m.wall.saturating_sub(joined_after(&m, &stderr)?),
        cpu_secs: m.cpu_secs,
        postgres_cpu_secs: harness::postgres_cpu_secs() - pg_before,
        peak_rss_mib: m.peak_rss_mib,
        bytes: bytes_of_tables(url).await?,
    };

    // Kafka Connect with the Debezium JDBC sink: a row per event.
    let url = bench.fresh_db("peer_write_connect").await?;
    let db = url.rsplit('/').next().unwrap_or_default().to_owned();
    let dir = bench.dir.join("connect");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (worker, connector) = configure(&dir, &brokers, &topic, &db, tasks)?;
    let log = std::fs::File::create(dir.join("connect.log"))?;
    let java = std::env::var("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .unwrap_or_else(|_| PathBuf::from("java"));
    eprintln!("Kafka Connect (standalone, Debezium JDBC sink, {tasks} tasks) of {n} events...");
    let pg_before = harness::postgres_cpu_secs();
    let started = Instant::now();
    let mut child = Command::new(&java)
        .args(["-Xms1g", "-Xmx1g", "-cp"])
        .arg(format!("{}/*", libs.display()))
        .arg("org.apache.kafka.connect.cli.ConnectStandalone")
        .arg(&worker)
        .arg(&connector)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting Kafka Connect (java 17 or newer is needed)")?;
    let pid = child.id().context("no Kafka Connect pid")?;
    let (mut first, mut last_count, mut last_move, mut peak) = (None, 0, Instant::now(), 0.0f64);
    let (done, cpu) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu = cpu_secs(pid).unwrap_or(0.0);
        if let Some(stat) = ProcStat::read(pid) {
            peak = peak.max(stat.rss_mib);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "Kafka Connect exited ({status}) after {last_count} of {n} rows; its log: {}",
                dir.join("connect.log").display()
            );
        }
        let count = raw_rows(&url, &topic, PUBLISH_PARTITIONS).await;
        if count > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if count != last_count {
            last_count = count;
            last_move = Instant::now();
        }
        if count >= i64::try_from(n).unwrap_or(i64::MAX) {
            break (started.elapsed(), cpu);
        }
        if last_move.elapsed() > STALL {
            bail!(
                "Kafka Connect wrote {count} of {n} rows and nothing for {} s; its log: {}",
                STALL.as_secs(),
                dir.join("connect.log").display()
            );
        }
    };
    let connect = Side {
        wall: done,
        writing: done.saturating_sub(first.unwrap_or_default()),
        cpu_secs: cpu,
        postgres_cpu_secs: harness::postgres_cpu_secs() - pg_before,
        peak_rss_mib: peak,
        bytes: bytes_of_tables(&url).await?,
    };
    let _ = child.kill().await;
    let reads = one_session_reads(&sv_url, &url).await?;

    bench.header(
        "peer-write (sessionview project vs Kafka Connect's JDBC sink)",
        &[
            published_stream(n, size),
            ("broker", bench.broker_description()),
            (
                "sessionview",
                "sessionview project --source kafka://... --exit-at-end (defaults): the folded read model (sessions, containers, counts, idempotence records, the event log)".into(),
            ),
            (
                "peer",
                format!("Kafka Connect 4.4.0 standalone (java -Xmx1g), Debezium JDBC sink 3.5.0.Final, {tasks} tasks, batch.size 5000, insert.mode upsert, primary.key.mode kafka (topic, partition, offset), StringConverter + HoistField: one row per event holding its JSON text, nothing folded"),
            ),
            (
                "database",
                "the same PostgreSQL, a fresh database each".into(),
            ),
        ],
    );
    let rate = |d: Duration| thousands(n as f64 / d.as_secs_f64().max(f64::EPSILON));
    let row = |name: &str, s: &Side| {
        vec![
            name.to_owned(),
            format!("{:.1}", s.wall.as_secs_f64()),
            rate(s.wall),
            format!("**{}**", rate(s.writing)),
            format!("{:.1}", s.cpu_secs),
            format!("{:.1}", s.postgres_cpu_secs),
            format!("{:.0}", s.peak_rss_mib),
            format!("{:.0}", s.bytes as f64 / 1_048_576.0),
            format!("{:.0}", s.bytes as f64 / n as f64),
        ]
    };
    table(
        &[
            "writer",
            "seconds from start",
            "events/s from start",
            "events/s from its first write",
            "CPU s (writer)",
            "CPU s (PostgreSQL)",
            "peak RSS MiB",
            "MiB in PostgreSQL",
            "bytes per event",
        ],
        &[
            row("sessionview project (folded read model)", &sv),
            row("Kafka Connect + Debezium JDBC sink (raw rows)", &connect),
        ],
    );
    println!(
        "The sink's rows are the events as published: a query over them must fold each session's \
         events itself (status, containers, summed slots) at every read, while sessionview's rows \
         are the answer. One session's state, asked {READS} times of each (median):\n"
    );
    table(
        &["read", "median ms", "what it answers"],
        &[
            vec![
                "sessionview: the statement `compute_session(id)` with its containers runs".into(),
                format!("{:.3}", reads.sessionview_ms),
                "every field of the session and its containers".into(),
            ],
            vec![
                "the sink's rows, through a view (the session's last `session_*` event), no index"
                    .into(),
                format!("{:.1}", reads.view_scan_ms),
                "the last session-level event's type and time only".into(),
            ],
            vec![
                format!(
                    "the same view with an index on the event's session id (built in {:.1} s)",
                    reads.index_build_s
                ),
                format!("{:.3}", reads.view_indexed_ms),
                "the same".into(),
            ],
        ],
    );
    println!();
    Ok(())
}

/// How many times each read of [`one_session_reads`] runs.
const READS: usize = 20;

/// One session's state read from each writer's tables: the median milliseconds of each read.
struct Reads {
    sessionview_ms: f64,
    view_scan_ms: f64,
    index_build_s: f64,
    view_indexed_ms: f64,
}

/// What an operator of the sink would write to ask for one session: a view over the raw events
/// (the last session-level event of each session), first as it is, then with an expression index
/// on the session id; beside the statement sessionview runs for `compute_session(id)`.
async fn one_session_reads(sv_url: &str, raw_url: &str) -> anyhow::Result<Reads> {
    let mut sv = sqlx::PgConnection::connect(sv_url).await?;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions ORDER BY id LIMIT 1")
        .fetch_one(&mut sv)
        .await?;
    let (_, single) = sessionview_store::PgStore::read_statements(
        &sessionview_store::SessionListQuery::default(),
        sessionview_store::KernelFields::All,
    )?;
    let mut times = Vec::with_capacity(READS);
    for _ in 0..READS {
        let t = Instant::now();
        sqlx::query(&single).bind(id).fetch_all(&mut sv).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let sessionview_ms = median(&mut times);

    let mut raw = sqlx::PgConnection::connect(raw_url).await?;
    sqlx::query(&format!(
        "CREATE VIEW session_last_event AS \
         SELECT DISTINCT ON (session_id) session_id, e->>'event_type' AS last_event, \
             e->>'occurred_at' AS occurred_at \
         FROM (SELECT (event::jsonb)->>'session_id' AS session_id, event::jsonb AS e \
               FROM {RAW_TABLE}) r \
         WHERE e->>'event_type' LIKE 'session\\_%' \
         ORDER BY session_id, e->>'occurred_at' DESC"
    ))
    .execute(&mut raw)
    .await?;
    let ask = "SELECT * FROM session_last_event WHERE session_id = $1";
    let text = id.to_string();
    let time = async |n: usize, raw: &mut sqlx::PgConnection| -> anyhow::Result<f64> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let rows = sqlx::query(ask).bind(&text).fetch_all(&mut *raw).await?;
            anyhow::ensure!(rows.len() == 1, "the view has no row for session {text}");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(median(&mut times))
    };
    // A scan of every event per read: a few runs are enough.
    let view_scan_ms = time(3, &mut raw).await?;
    let t = Instant::now();
    sqlx::query(&format!(
        "CREATE INDEX session_events_raw_session ON {RAW_TABLE} (((event::jsonb)->>'session_id'))"
    ))
    .execute(&mut raw)
    .await?;
    sqlx::query(&format!("ANALYZE {RAW_TABLE}"))
        .execute(&mut raw)
        .await?;
    let index_build_s = t.elapsed().as_secs_f64();
    let view_indexed_ms = time(READS, &mut raw).await?;
    Ok(Reads {
        sessionview_ms,
        view_scan_ms,
        index_build_s,
        view_indexed_ms,
    })
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}
