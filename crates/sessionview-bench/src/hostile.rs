//! The `hostile` scenario: a simulated stream with hostile events mixed in, projected from a file
//! and through Kafka beside the clean stream; then the server under a hostile request mix beside
//! a normal signed query load.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use sessionview_simulator::{SimConfig, SimMessage, Simulator};
use sqlx::Connection;
use tokio::io::AsyncWriteExt;

use crate::harness::{self, Bench, ProcStat, table, thousands};
use crate::load::Signer;
use crate::{kafka, scenarios};

#[derive(Debug, Clone, Args)]
pub(crate) struct HostileArgs {
    /// Sessions in the stream.
    #[arg(long, env = "SESSIONVIEW_BENCH_SESSIONS", default_value_t = 100_000)]
    sessions: u64,
    /// Share of hostile messages mixed into the stream.
    #[arg(long, env = "SESSIONVIEW_BENCH_HOSTILE_RATIO", default_value_t = 0.01)]
    ratio: f64,
    /// Simulator seed.
    #[arg(long, env = "SESSIONVIEW_BENCH_SEED", default_value_t = 42)]
    seed: u64,
    /// Seconds of query load, quiet and then beside the hostile requests.
    #[arg(long, env = "SESSIONVIEW_BENCH_SECONDS", default_value_t = 20)]
    seconds: u64,
    /// Concurrent well-behaved callers (closed loop).
    #[arg(long, env = "SESSIONVIEW_BENCH_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
}

/// `--max-event-bytes` of the hostile runs (the oversized class is just above it).
const MAX_EVENT_BYTES: usize = 16 * 1024;

/// The classes of hostile message, one after another.
const CLASSES: &[&str] = &[
    "nul",
    "lone_surrogate",
    "deep",
    "not_utf8",
    "oversized",
    "inexact_slots",
    "kernel_reuse",
    "garbage",
];

/// A hostile message modelled on `m` (same key: the same partition as its session): it never
/// decodes as a valid event, or is one the contract refuses, so the valid stream's tables stay
/// exactly what they would be without it.
fn hostile(class: &str, m: &SimMessage, taken_kernel: Option<&str>, n: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&m.bytes).unwrap_or(Value::Null);
    v["event_id"] = json!(uuid::Uuid::new_v4());
    let with_type = |ty: &str| {
        let mut raw = m.bytes.clone();
        if let Some(i) = raw.windows(ty.len()).position(|w| w == ty.as_bytes()) {
            raw.splice(i..i + ty.len(), b"\xff\xfe".iter().copied());
        }
        raw
    };
    match class {
        "nul" => {
            v["payload"]["hostile"] = json!("a\u{0}b");
            v.to_string().into_bytes()
        }
        "lone_surrogate" => v
            .to_string()
            .replacen("\"payload\":{", "\"payload\":{\"x\":\"\\ud800\",", 1)
            .into_bytes(),
        "deep" => {
            let mut p = v["payload"].take();
            for _ in 0..70 {
                p = json!([p]);
            }
            v["payload"] = p;
            v.to_string().into_bytes()
        }
        "not_utf8" => with_type("schema_version"),
        "oversized" => {
            v["payload"]["blob"] = json!("z".repeat(MAX_EVENT_BYTES + 1000));
            v.to_string().into_bytes()
        }
        "inexact_slots" | "kernel_reuse" => {
            let session = uuid::Uuid::new_v4();
            let worker = match taken_kernel {
                Some(k) if class == "kernel_reuse" => k.to_owned(),
                _ => uuid::Uuid::new_v4().to_string(),
            };
            let (master_cpu, worker_cpu) = if class == "inexact_slots" {
                ("9".repeat(28), "0.4".to_owned())
            } else {
                ("1".to_owned(), "1".to_owned())
            };
            json!({
                "event_id": uuid::Uuid::new_v4(), "event_type": "session_enqueued",
                "schema_version": 1, "occurred_at": "2026-01-05T08:00:00+00:00",
                "session_id": session,
                "payload": {
                    "name": format!("hostile-{n}"), "type": "batch", "image": "x", "registry": "r",
                    "domain_name": "default", "group_name": "g", "user_email": "h@example.com",
                    "access_key": "AKIAHOSTILE", "group_id": session, "user_id": session,
                    "kernels": [
                        {"kernel_id": session, "role": "master", "occupied_slots": {"cpu": master_cpu}},
                        {"kernel_id": worker, "role": "worker", "occupied_slots": {"cpu": worker_cpu}},
                    ],
                },
            })
            .to_string()
            .into_bytes()
        }
        _ => (0..n % 200 + 1)
            .map(|i| (i as u8).wrapping_mul(37) ^ 0xA5)
            .map(|b| if b == b'\n' { b'?' } else { b })
            .collect(),
    }
}

/// The clean stream and the same stream with hostile messages mixed in; hostile counts by class.
fn streams(
    args: &HostileArgs,
) -> (
    Vec<SimMessage>,
    Vec<SimMessage>,
    BTreeMap<&'static str, u64>,
) {
    use rand::{Rng, SeedableRng};
    let clean: Vec<SimMessage> = Simulator::new(SimConfig {
        sessions: args.sessions,
        seed: args.seed,
        ..SimConfig::default()
    })
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5EED);
    let mut mixed = Vec::with_capacity(clean.len() + clean.len() / 50);
    let mut counts = BTreeMap::new();
    let mut taken: Option<String> = None;
    let mut n = 0u64;
    for m in &clean {
        if taken.is_none()
            && let Ok(v) = serde_json::from_slice::<Value>(&m.bytes)
            && let Some(k) = v["payload"]["kernels"][0]["kernel_id"].as_str()
        {
            taken = Some(k.to_owned());
        }
        if rng.random_bool(args.ratio) {
            let class = CLASSES[(n as usize) % CLASSES.len()];
            let bytes = hostile(class, m, taken.as_deref(), n);
            *counts.entry(class).or_default() += 1;
            n += 1;
            mixed.push(SimMessage {
                bytes,
                event_type: None,
                ..m.clone()
            });
        }
        mixed.push(m.clone());
    }
    (clean, mixed, counts)
}

fn write_ndjson(path: &Path, messages: &[SimMessage]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for m in messages {
        out.write_all(&m.bytes)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A digest of the read model's caller-visible content, to compare two databases.
async fn digest(url: &str) -> anyhow::Result<(i64, String)> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&mut c)
        .await?;
    let md5: Option<String> = sqlx::query_scalar(
        "SELECT md5(coalesce((SELECT string_agg(concat_ws('|', id, status, status_changed, \
         occupied_slots::text, num_queries, result), ',' ORDER BY id) FROM sessions), '') || \
         coalesce((SELECT string_agg(concat_ws('|', id, status, status_changed, \
         occupied_slots::text, last_stat::text), ',' ORDER BY id) FROM kernels), ''))",
    )
    .fetch_one(&mut c)
    .await?;
    Ok((sessions, md5.unwrap_or_default()))
}

async fn dead_letters(url: &str) -> anyhow::Result<String> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT label, count(*) FROM dead_letters GROUP BY label ORDER BY label")
            .fetch_all(&mut c)
            .await?;
    Ok(rows
        .iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Projects `source` into `url` with the hostile limits; adds a row; returns the digest.
async fn project(
    bench: &Bench,
    rows: &mut Vec<Vec<String>>,
    what: &str,
    url: &str,
    source: &str,
    events: usize,
) -> anyhow::Result<(i64, String)> {
    let max = MAX_EVENT_BYTES.to_string();
    let status = match scenarios::project(bench, url, source, &["--max-event-bytes", &max]).await {
        Ok(m) => {
            rows.push(vec![
                what.to_owned(),
                "0".into(),
                thousands(events as f64),
                format!("{:.1}", m.wall.as_secs_f64()),
                thousands(events as f64 / m.wall.as_secs_f64()),
                format!("{:.0}", m.peak_rss_mib),
            ]);
            "0"
        }
        Err(e) => {
            eprintln!("{what}: {e:#}");
            rows.push(vec![
                what.to_owned(),
                "failed".into(),
                thousands(events as f64),
                "".into(),
                "".into(),
                "".into(),
            ]);
            "failed"
        }
    };
    let (sessions, md5) = digest(url).await?;
    Ok((sessions, format!("{md5} ({status})")))
}

pub(crate) async fn hostile_scenario(bench: &mut Bench, args: HostileArgs) -> anyhow::Result<()> {
    eprintln!(
        "generating {} sessions with {} hostile messages mixed in...",
        args.sessions, args.ratio
    );
    let (clean, mixed, counts) = streams(&args);
    let clean_file = bench.dir.join(format!(
        "hostile-clean-{}-{}.ndjson",
        args.sessions, args.seed
    ));
    let mixed_file = bench.dir.join(format!(
        "hostile-mixed-{}-{}.ndjson",
        args.sessions, args.seed
    ));
    write_ndjson(&clean_file, &clean)?;
    write_ndjson(&mixed_file, &mixed)?;

    let mut rows = Vec::new();
    let clean_url = bench.fresh_db("hostile_clean").await?;
    scenarios::migrate(bench, &clean_url).await?;
    let clean_source = format!("file://{}", clean_file.display());
    let (expected, clean_md5) = project(
        bench,
        &mut rows,
        "clean stream, file → PostgreSQL",
        &clean_url,
        &clean_source,
        clean.len(),
    )
    .await?;
    let file_url = bench.fresh_db("hostile_file").await?;
    scenarios::migrate(bench, &file_url).await?;
    let mixed_source = format!("file://{}", mixed_file.display());
    let (file_sessions, file_md5) = project(
        bench,
        &mut rows,
        "hostile stream, file → PostgreSQL",
        &file_url,
        &mixed_source,
        mixed.len(),
    )
    .await?;
    let brokers = bench.broker().await?;
    let topic = format!("bench-hostile-{}", uuid::Uuid::new_v4().simple());
    kafka::create_topic(&brokers, &topic, 4).await?;
    kafka::publish_all(&brokers, &topic, mixed.iter().cloned()).await?;
    let kafka_url = bench.fresh_db("hostile_kafka").await?;
    scenarios::migrate(bench, &kafka_url).await?;
    let kafka_source = format!("kafka://{brokers}/{topic}");
    let (kafka_sessions, kafka_md5) = project(
        bench,
        &mut rows,
        "hostile stream, Kafka → PostgreSQL",
        &kafka_url,
        &kafka_source,
        mixed.len(),
    )
    .await?;
    let same = |md5: &str| md5.split(' ').next() == clean_md5.split(' ').next();

    bench.header(
        "hostile (projector)",
        &[
            ("stream", format!("{} sessions (seed {}), {} events; the hostile stream adds {} messages ({:.1} %)", thousands(args.sessions as f64), args.seed, thousands(clean.len() as f64), thousands((mixed.len() - clean.len()) as f64), 100.0 * (mixed.len() - clean.len()) as f64 / clean.len() as f64)),
            ("hostile classes", counts.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")),
            ("command", format!("sessionview project --exit-at-end --max-event-bytes {MAX_EVENT_BYTES}; Kafka: a 4-partition topic, published first")),
        ],
    );
    table(
        &[
            "run",
            "exit",
            "events",
            "seconds",
            "events/s",
            "peak RSS MiB",
        ],
        &rows,
    );
    println!(
        "Sessions: expected {} (the clean stream's); file {} ({}); Kafka {} ({}).\n",
        thousands(expected as f64),
        thousands(file_sessions as f64),
        if same(&file_md5) {
            "tables identical to the clean run's"
        } else {
            "TABLES DIFFER"
        },
        thousands(kafka_sessions as f64),
        if same(&kafka_md5) {
            "tables identical to the clean run's"
        } else {
            "TABLES DIFFER"
        },
    );
    println!("Dead letters, file: {}", dead_letters(&file_url).await?);
    println!("Dead letters, Kafka: {}\n", dead_letters(&kafka_url).await?);

    server_half(bench, &args, &file_url).await
}

/// Latency percentiles in milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The well-behaved callers: closed-loop list queries until `stop`; their latencies (ms) and
/// how many failed.
async fn normal_load(signer: Arc<Signer>, concurrency: usize, seconds: u64) -> (Vec<f64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let signer = Arc::clone(&signer);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0u64);
            let mut i = w as u64;
            while Instant::now() < deadline {
                i += 7;
                let body = json!({"query": format!("{{ compute_session_list(limit: 20, offset: {}) {{ total_count items {{ id status containers {{ id }} }} }} }}", i % 500)});
                let t = Instant::now();
                match signer.post(&body).await {
                    Ok(v) if v.get("compute_session_list").is_some() => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failed += f;
        }
    }
    all.sort_by(f64::total_cmp);
    (all, failed)
}

/// The hostile requests, from their own keypair, until `stop`: costly documents, floods of
/// operation names, oversized and malformed bodies, half-open and slow connections.
async fn attack(signer: Arc<Signer>, host: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let deep = format!(
        "{{ compute_session(id: {}\"x\"{}) {{ id }} }}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let mut chain = String::from(
        "query C { ...F40 } fragment F0 on Queries { compute_session_list(limit: 1, offset: 0) { total_count } }",
    );
    for i in 1..=40 {
        chain.push_str(&format!(
            " fragment F{i} on Queries {{ ...F{p} ...F{p} }}",
            p = i - 1
        ));
    }
    let aliases: String = (0..5000)
        .map(|i| format!("a{i}: compute_session_list(limit: 1, offset: 0) {{ total_count }} "))
        .collect();
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({ "a": nested });
    }
    let bodies = Arc::new(vec![
        json!({"query": deep}),
        json!({"query": chain}),
        json!({"query": format!("{{ {aliases} }}")}),
        json!({"query": "{ compute_session_list(limit: 1000, offset: 2000000000) { total_count } }"}),
        json!({"query": "query Q($v: JSONString) { compute_session_list(limit: 1, offset: 0) { total_count } }", "variables": {"v": nested}}),
        json!({"query": format!("{{ keypair {{ access_key }} }} #{}", "x".repeat(900_000))}),
    ]);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (signer, stop, sent, bodies) = (
            Arc::clone(&signer),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&bodies),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut body = bodies[i % bodies.len()].clone();
                if i % 3 == 0 {
                    // A new operation name every time (metric labels must not grow).
                    body = json!({"query": format!("query Op{i} {{ compute_session_list(limit: 1, offset: 0) {{ total_count }} }}"), "operationName": format!("Op{i}")});
                }
                let _ = signer.post(&body).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // 200 connections that send half a request header, reopened when the server closes them;
    // 20 that send a body one byte a second.
    for slow in [false, true] {
        let (host, stop, sent) = (host.clone(), Arc::clone(&stop), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            let n = if slow { 20 } else { 200 };
            while !stop.load(Ordering::Relaxed) {
                let mut conns = Vec::new();
                for _ in 0..n {
                    if let Ok(mut c) = tokio::net::TcpStream::connect(&host).await {
                        let head = if slow {
                            "POST /admin/graphql HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                        } else {
                            "POST /admin/graphql HTTP/1.1\r\nHost: x\r\n"
                        };
                        let _ = c.write_all(head.as_bytes()).await;
                        conns.push(c);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for _ in 0..5 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    for c in &mut conns {
                        if slow {
                            let _ = c.write_all(b"{").await;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn server_half(bench: &mut Bench, args: &HostileArgs, url: &str) -> anyhow::Result<()> {
    let (ak, sk) = harness::superadmin(bench, url).await?;
    let (bad_ak, bad_sk) = harness::superadmin(bench, url).await?;
    let host = format!("127.0.0.1:{}", harness::free_port()?);
    let mut server = bench
        .sessionview()
        .args(["serve", "--database-url", url, "--listen", &host])
        .spawn()
        .context("starting sessionview serve")?;
    let pid = server.id().context("no pid")?;
    harness::wait_http(&format!("http://{host}/readyz"), 30).await?;
    let normal = Arc::new(Signer::new(host.clone(), ak, sk));
    let attacker = Arc::new(Signer::new(host.clone(), bad_ak, bad_sk));
    // Warm-up: connections, caches, plans.
    normal_load(Arc::clone(&normal), args.concurrency, 3).await;

    let rss = || ProcStat::read(pid).map_or(f64::NAN, |p| p.rss_mib);
    let (quiet, quiet_failed) =
        normal_load(Arc::clone(&normal), args.concurrency, args.seconds).await;
    let quiet_rss = rss();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let attacking = tokio::spawn(attack(
        attacker,
        host.clone(),
        Arc::clone(&stop),
        Arc::clone(&sent),
    ));
    let peak = Arc::new(std::sync::Mutex::new(0.0f64));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = ProcStat::read(pid)
                    && let Ok(mut m) = peak.lock()
                {
                    *m = m.max(p.rss_mib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (loud, loud_failed) =
        normal_load(Arc::clone(&normal), args.concurrency, args.seconds).await;
    stop.store(true, Ordering::Relaxed);
    let _ = attacking.await;
    let _ = sampler.await;
    let alive = server.try_wait()?.is_none();
    let peak_rss = peak.lock().map_or(f64::NAN, |m| *m);
    let _ = server.kill().await;

    bench.header(
        "hostile (server)",
        &[
            ("load", format!("{} well-behaved callers, closed loop, compute_session_list(limit: 20) with containers, {} s quiet, then {} s beside the hostile mix", args.concurrency, args.seconds, args.seconds)),
            ("hostile mix", "from another keypair: 5,000 nested brackets, a 40-fragment doubling chain, 5,000 aliases, offset 2,000,000,000, variables nested 100 deep, 900 KB bodies, a new operation name per request (4 callers, closed loop); 200 half-open connections and 20 one-byte-a-second bodies, reopened as the server closes them".into()),
            ("server", "sessionview serve with its default limits".into()),
        ],
    );
    let row = |what: &str, lat: &[f64], failed: u64, rss: f64| {
        vec![
            what.to_owned(),
            thousands(lat.len() as f64),
            failed.to_string(),
            format!("{:.1}", percentile(lat, 0.5)),
            format!("{:.1}", percentile(lat, 0.99)),
            format!("{rss:.0}"),
        ]
    };
    table(
        &[
            "phase",
            "normal requests",
            "normal failures",
            "p50 ms",
            "p99 ms",
            "server RSS MiB",
        ],
        &[
            row("quiet", &quiet, quiet_failed, quiet_rss),
            row(
                "beside the hostile mix (peak RSS)",
                &loud,
                loud_failed,
                peak_rss,
            ),
        ],
    );
    println!(
        "Hostile requests and connections sent: {}. The server {} (p99 beside the mix is {:.2}× the quiet p99).\n",
        thousands(sent.load(Ordering::Relaxed) as f64),
        if alive { "never restarted" } else { "DIED" },
        percentile(&loud, 0.99) / percentile(&quiet, 0.99),
    );
    Ok(())
}
