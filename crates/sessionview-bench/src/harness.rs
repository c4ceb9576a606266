//! What every scenario needs: the machine's description, fresh databases, the event file, the
//! broker, the `sessionview` binary, child processes measured from /proc, and the report table.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use sessionview_simulator::{SimConfig, SimMessage, Simulator};
use sqlx::Connection;
use tokio::process::Command;

/// Where the bench finds PostgreSQL and the broker.
#[derive(Debug, Clone, Args)]
pub(crate) struct EnvArgs {
    /// An administrative PostgreSQL URL; the bench creates and drops `sv_bench_*` databases.
    #[arg(
        long,
        global = true,
        env = "SESSIONVIEW_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// A Kafka broker (HOST:PORT, plaintext). Without it the bench starts its own Apache Kafka
    /// (single KRaft node, `scripts/kafka/broker`, installed from Maven Central once into
    /// .sessionview/tools) with its log in the bench directory.
    #[arg(long, global = true, env = "SESSIONVIEW_BENCH_KAFKA")]
    kafka: Option<String>,
    /// Where event files, tools and logs go.
    #[arg(
        long,
        global = true,
        env = "SESSIONVIEW_BENCH_DIR",
        default_value = "target/bench"
    )]
    dir: PathBuf,
}

/// The broker the scenarios publish to: given with --kafka, or started here.
struct Broker {
    addr: String,
    /// The state directory and process id of the Apache Kafka this bench started (None: given
    /// with --kafka).
    started: Option<(PathBuf, u32)>,
}

pub(crate) struct Bench {
    env: EnvArgs,
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    broker: Option<Broker>,
    pub(crate) machine: String,
}

/// The repository root (the bench runs from anywhere).
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Bench {
    pub(crate) async fn new(env: EnvArgs) -> anyhow::Result<Self> {
        let dir = if env.dir.is_absolute() {
            env.dir.clone()
        } else {
            repo().join(&env.dir)
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("building the sessionview binary (release)...");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "sessionview"])
            .current_dir(repo())
            .status()
            .await
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p sessionview failed");
        }
        let bin = repo().join("target/release/sessionview");
        let machine = machine(&env.database_url).await;
        Ok(Self {
            env,
            bin,
            dir,
            broker: None,
            machine,
        })
    }

    pub(crate) async fn shutdown(&mut self) {
        if let Some(Broker {
            started: Some((state, _)),
            ..
        }) = self.broker.take()
        {
            let _ = broker_script()
                .arg("stop")
                .arg(&state)
                .stdout(Stdio::null())
                .status()
                .await;
            let _ = std::fs::remove_dir_all(&state);
        }
    }

    /// A new, empty database `sv_bench_<name>`; returns its URL once no autovacuum worker runs
    /// (an earlier scenario's bulk load would otherwise share the machine with this one).
    pub(crate) async fn fresh_db(&self, name: &str) -> anyhow::Result<String> {
        let name = format!("sv_bench_{name}");
        let mut conn = sqlx::PgConnection::connect(&self.env.database_url)
            .await
            .with_context(|| format!("connecting to {}", self.env.database_url))?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let url = self.db_url(&name);
        quiet_database(&url).await?;
        Ok(url)
    }

    /// The URL of database `name` on the bench's server.
    pub(crate) fn db_url(&self, name: &str) -> String {
        let admin = &self.env.database_url;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }

    pub(crate) async fn db_exists(&self, name: &str) -> anyhow::Result<bool> {
        let mut conn = sqlx::PgConnection::connect(&self.env.database_url).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// The first `size.events` events of the simulator as an NDJSON file (made once, then reused).
    pub(crate) fn events_file(&self, events: u64, seed: u64) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("events-{events}-{seed}.ndjson"));
        if path.exists() {
            return Ok(path);
        }
        eprintln!("writing {events} simulated events to {}...", path.display());
        let tmp = path.with_extension("partial");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for m in stream(events, seed) {
            out.write_all(&m.bytes)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The broker's `HOST:PORT`, started on first use when none was given.
    pub(crate) async fn broker(&mut self) -> anyhow::Result<String> {
        if let Some(broker) = &self.broker {
            return Ok(broker.addr.clone());
        }
        if let Some(addr) = &self.env.kafka {
            self.broker = Some(Broker {
                addr: addr.clone(),
                started: None,
            });
            return Ok(addr.clone());
        }
        eprintln!("starting Apache Kafka (scripts/kafka/broker)...");
        let install = broker_script()
            .arg("install")
            .status()
            .await
            .context("running scripts/kafka/broker install")?;
        if !install.success() {
            bail!("scripts/kafka/broker install failed");
        }
        let state = self.dir.join("kafka");
        let _ = std::fs::remove_dir_all(&state);
        let started = broker_script()
            .arg("start")
            .arg(&state)
            .stdout(Stdio::null())
            .status()
            .await
            .context("running scripts/kafka/broker start")?;
        if !started.success() {
            bail!("scripts/kafka/broker start failed");
        }
        let env = std::fs::read_to_string(state.join("env"))
            .with_context(|| format!("reading {}", state.join("env").display()))?;
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .with_context(|| format!("{key} missing from {}", state.join("env").display()))
        };
        let addr = value("SESSIONVIEW_TEST_KAFKA")?;
        let pid: u32 = value("KAFKA_PID")?.parse().context("KAFKA_PID")?;
        self.broker = Some(Broker {
            addr: addr.clone(),
            started: Some((state, pid)),
        });
        Ok(addr)
    }

    /// What the report says about the broker.
    pub(crate) fn broker_description(&self) -> String {
        let Some(Broker { addr, started }) = &self.broker else {
            return "none started".to_owned();
        };
        match started {
            None => format!("the broker at {addr} (given with --kafka)"),
            Some(_) => format!(
                "Apache Kafka {} (single KRaft node, scripts/kafka/broker) at {addr}, same machine",
                kafka_version()
            ),
        }
    }

    /// The process id of the broker this bench started (None: an external broker, or none yet).
    pub(crate) fn broker_pid(&self) -> Option<u32> {
        self.broker.as_ref()?.started.as_ref().map(|(_, pid)| *pid)
    }

    /// A `sessionview` command with the log quiet.
    pub(crate) fn sessionview(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("SESSIONVIEW_LOG", "warn").kill_on_drop(true);
        cmd
    }

    /// Prints the report header: the machine, the date, the parameters.
    pub(crate) fn header(&self, scenario: &str, params: &[(&str, String)]) {
        println!("\n## {scenario}\n");
        println!(
            "{} · {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            self.machine
        );
        for (k, v) in params {
            println!("- {k}: {v}");
        }
        println!();
    }
}

/// The first `events` messages of the simulator with `seed`.
pub(crate) fn stream(events: u64, seed: u64) -> impl Iterator<Item = SimMessage> {
    // About 29 events per session: enough sessions for `events`.
    let cfg = SimConfig {
        sessions: events / 20 + 10,
        seed,
        ..SimConfig::default()
    };
    Simulator::new(cfg).take(usize::try_from(events).unwrap_or(usize::MAX))
}

/// Removes an SQLite database file and its write-ahead log and shared-memory files.
pub(crate) fn remove_with_journals(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// `scripts/kafka/broker`, the one script that installs, starts and stops the tests' and the
/// benchmarks' Apache Kafka.
fn broker_script() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/kafka/broker"));
    cmd
}

/// The Apache Kafka version `scripts/kafka/pom.xml` pins.
fn kafka_version() -> String {
    let pom = std::fs::read_to_string(repo().join("scripts/kafka/pom.xml")).unwrap_or_default();
    pom.split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("4.x")
        .to_owned()
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn machine(database_url: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let pg = async {
        let mut conn = sqlx::PgConnection::connect(database_url).await.ok()?;
        sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&mut conn)
            .await
            .ok()
    }
    .await
    .unwrap_or_else(|| "?".into());
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM, PostgreSQL {pg}")
}

/// What a measured child process did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// When the process was started (wall clock, to compare with its log's timestamps).
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub wall: Duration,
    /// Peak resident set size in MiB (VmHWM, sampled until exit).
    pub peak_rss_mib: f64,
    /// User + system CPU seconds of the process.
    pub cpu_secs: f64,
}

/// Runs `cmd` to completion, sampling its peak RSS and CPU time; fails when it fails. Returns
/// the figures, stdout and stderr.
pub(crate) async fn measure(
    mut cmd: Command,
    what: &str,
) -> anyhow::Result<(Measured, String, String)> {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id().context("no pid")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut s).await;
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let mut peak = 0.0f64;
    let mut cpu = 0.0f64;
    let status = loop {
        if let Some(p) = ProcStat::read(pid) {
            peak = peak.max(p.peak_rss_mib);
            cpu = cpu.max(p.cpu_secs);
        }
        tokio::select! {
            s = child.wait() => break s?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    let wall = started.elapsed();
    let stdout = out.await.unwrap_or_default();
    let stderr = err.await.unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}):\n{stdout}\n{stderr}");
    }
    Ok((
        Measured {
            started_at,
            wall,
            peak_rss_mib: peak,
            cpu_secs: cpu,
        },
        stdout,
        stderr,
    ))
}

/// A process's figures from /proc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
    pub cpu_secs: f64,
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

impl ProcStat {
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Some(Self {
            peak_rss_mib: kb("VmHWM:") / 1024.0,
            rss_mib: kb("VmRSS:") / 1024.0,
            cpu_secs: cpu_secs(pid)?,
        })
    }
}

/// User + system CPU seconds of `pid`.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_ticks(pid, false).map(|t| t / TICKS)
}

/// User + system clock ticks of `pid` from /proc/PID/stat, with those of its waited-for exited
/// children when `children`.
fn cpu_ticks(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'; from
    // there utime, stime, cutime and cstime are the 12th to 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let last = if children { 14 } else { 12 };
    (11..=last).map(|i| f.get(i)?.parse::<f64>().ok()).sum()
}

/// CPU seconds the whole machine has spent busy since boot (every core: user, nice, system, irq,
/// softirq, steal), from /proc/stat.
pub(crate) fn machine_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy / TICKS
}

/// CPU seconds of every PostgreSQL server process on this machine, with those of its exited
/// backends (each connection is a process; its CPU is added to the postmaster's children's).
pub(crate) fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| cpu_ticks(pid, true))
        .sum::<f64>()
        / TICKS
}

/// The machine's cores.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Waits until no autovacuum worker runs (at most five minutes): one left by an earlier
/// scenario's bulk load would take a core from the servers under measurement.
pub(crate) async fn quiet_database(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(&mut conn)
        .await?;
        if workers == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            eprintln!("autovacuum still busy after 5 min; measuring anyway");
            break;
        }
        if !told {
            eprintln!("waiting for {workers} autovacuum worker(s) to finish before measuring...");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if told {
        eprintln!("waited {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// CPU seconds used so far by each `postgres` process, by pid.
#[derive(Debug, Clone, Default)]
pub(crate) struct PostgresCpu(HashMap<u32, f64>);

impl PostgresCpu {
    pub(crate) fn now() -> Self {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Self::default();
        };
        Self(
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "postgres")
                })
                .filter_map(|pid| Some((pid, cpu_secs(pid)?)))
                .collect(),
        )
    }

    /// CPU seconds the processes alive now used since `before` (those started since count from
    /// zero). A process that ended meanwhile (a finished autovacuum worker, a closed connection)
    /// is missing from both ends: its share of the interval is lost rather than subtracted.
    pub(crate) fn since(&self, before: &Self) -> f64 {
        self.0
            .iter()
            .map(|(pid, now)| now - before.0.get(pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// A Markdown table.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Waits until `url` answers 2xx.
pub(crate) async fn wait_http(url: &str, secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a superadmin keypair with the binary; returns (access key, secret key).
pub(crate) async fn superadmin(
    bench: &Bench,
    database_url: &str,
) -> anyhow::Result<(String, String)> {
    let out = bench
        .sessionview()
        .args(["keypair", "create", "--database-url", database_url])
        .args(["--email", "bench@example.com", "--role", "superadmin"])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "keypair create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .map(str::to_owned)
            .with_context(|| format!("no {k} in `keypair create` output: {text}"))
    };
    Ok((field("access_key")?, field("secret_key")?))
}
