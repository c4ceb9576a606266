//! The read-side scenarios: closed-loop load on the GraphQL API with `oha`, and the same queries
//! against PostGraphile v4 serving the same tables.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sessionview_query::auth::signed_headers;
use sessionview_simulator::{SimConfig, Simulator};
use sqlx::Connection;
use tokio::process::Command;

use crate::QueryArgs;
use crate::harness::{self, Bench, PostgresCpu, cpu_secs, measure, table, thousands};

/// Signs and sends GraphQL requests as Backend.AI clients do.
#[derive(Debug)]
pub(crate) struct Signer {
    host: String,
    access_key: String,
    secret_key: String,
    client: reqwest::Client,
}

impl Signer {
    pub(crate) fn new(host: String, access_key: String, secret_key: String) -> Self {
        Self {
            host,
            access_key,
            secret_key,
            client: reqwest::Client::new(),
        }
    }

    /// The headers of a signed `POST /admin/graphql` (valid for the server's date window).
    fn headers(&self) -> anyhow::Result<[(&'static str, String); 4]> {
        Ok(signed_headers(
            &self.access_key,
            &self.secret_key,
            "POST",
            "/admin/graphql",
            &self.host,
        )?)
    }

    fn url(&self) -> String {
        format!("http://{}/admin/graphql", self.host)
    }

    /// Opens `GET path` signed (an event stream: the response is returned as it starts).
    pub(crate) async fn open(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let mut req = self.client.get(format!("http://{}{path}", self.host));
        for (k, v) in signed_headers(&self.access_key, &self.secret_key, "GET", path, &self.host)? {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
        Ok(resp)
    }

    pub(crate) async fn post(&self, body: &Value) -> anyhow::Result<Value> {
        let mut req = self.client.post(self.url()).body(body.to_string());
        for (k, v) in self.headers()? {
            req = req.header(k, v);
        }
        Ok(req.send().await?.json().await?)
    }
}

/// One load run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    /// CPU cores used by the server process, and by PostgreSQL.
    server_cores: f64,
    postgres_cores: f64,
}

/// `oha` from PATH or ~/.cargo/bin, installed with `cargo install oha --locked` when missing.
async fn oha() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/oha");
    for candidate in [PathBuf::from("oha"), cargo_bin.clone()] {
        if Command::new(&candidate)
            .arg("--version")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate);
        }
    }
    eprintln!("installing oha (cargo install oha --locked; a few minutes)...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "oha", "--locked"])
        .status()
        .await?;
    if !status.success() {
        bail!("cargo install oha --locked failed");
    }
    Ok(cargo_bin)
}

/// Runs oha against `url` for `seconds` at `concurrency`, sampling the CPU of `server_pid`.
async fn load(
    oha: &PathBuf,
    url: &str,
    headers: &[(&str, String)],
    body: &Value,
    seconds: u64,
    concurrency: u32,
    server_pid: u32,
) -> anyhow::Result<Run> {
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-z", &format!("{seconds}s"), "-c", &concurrency.to_string()])
        .args(["-d", &body.to_string()]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg(url);
    let server_before = cpu_secs(server_pid).unwrap_or(0.0);
    let pg_before = PostgresCpu::now();
    let (m, out, _) = measure(cmd, "oha").await?;
    let server_cpu = cpu_secs(server_pid).unwrap_or(0.0) - server_before;
    let pg_cpu = PostgresCpu::now().since(&pg_before);
    let v: Value = serde_json::from_str(&out).with_context(|| format!("oha output: {out}"))?;
    let ms = |key: &str| v["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let non_2xx = v["statusCodeDistribution"]
        .as_object()
        .map(|d| {
            d.iter()
                .filter(|(code, _)| !code.starts_with('2'))
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
        + v["errorDistribution"]
            .as_object()
            .map(|d| {
                d.iter()
                    // Requests in flight when the duration ends are cut off, not failed.
                    .filter(|(e, _)| !e.contains("deadline"))
                    .map(|(_, n)| n.as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
    let secs = m.wall.as_secs_f64();
    Ok(Run {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        non_2xx,
        server_cores: server_cpu / secs,
        postgres_cores: pg_cpu / secs,
    })
}

/// The database with `sessions` simulated sessions projected (built once, then reused).
async fn query_db(bench: &Bench, sessions: u64, seed: u64) -> anyhow::Result<String> {
    let name = format!("sv_bench_query_{sessions}_{seed}");
    let url = bench.db_url(&name);
    if bench.db_exists(&name).await? {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let done: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM source_positions")
            .fetch_one(&mut conn)
            .await
            .ok();
        if done.unwrap_or(0) > 0 {
            // A database from an earlier version gets this version's schema (migrations
            // backfill what they add).
            crate::scenarios::migrate(bench, &url).await?;
            return Ok(url);
        }
    }
    let url = bench.fresh_db(&format!("query_{sessions}_{seed}")).await?;
    let file = bench.dir.join(format!("sessions-{sessions}-{seed}.ndjson"));
    if !file.exists() {
        eprintln!(
            "writing the events of {sessions} sessions to {}...",
            file.display()
        );
        let tmp = file.with_extension("partial");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for m in Simulator::new(SimConfig {
            sessions,
            seed,
            ..SimConfig::default()
        }) {
            out.write_all(&m.bytes)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &file)?;
    }
    eprintln!("projecting {sessions} sessions into {name}...");
    let mut cmd = bench.sessionview();
    cmd.args([
        "project",
        "--database-url",
        &url,
        "--exit-at-end",
        "--source",
    ])
    .arg(format!("file://{}", file.display()));
    measure(cmd, "sessionview project").await?;
    // The steady state of a live database: statistics and the visibility map are current
    // (autovacuum's job; done here so that the first run does not depend on its timing).
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    Ok(url)
}

struct Queries {
    list: (Value, Value),
    single: (Value, Value),
}

/// The same two questions for sessionview and for PostGraphile, with filter values that hit many
/// rows.
async fn queries(url: &str) -> anyhow::Result<(Queries, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let (ak, status, n): (String, String, i64) = sqlx::query_as(
        "SELECT access_key, status, count(*) FROM sessions GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await?;
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT s.id FROM sessions s WHERE s.access_key = $1 AND \
         (SELECT count(*) FROM kernels k WHERE k.session_id = s.id) > 1 LIMIT 1",
    )
    .bind(&ak)
    .fetch_one(&mut conn)
    .await?;
    let fields = "id name status status_changed occupied_slots containers { id role agent }";
    let pg_fields = "id name status statusChanged occupiedSlots \
        kernelsBySessionId(orderBy: ORDINAL_ASC) { nodes { id role agent } }";
    let q = Queries {
        list: (
            json!({
                "query": format!("query($ak: String, $st: String) {{ compute_session_list(limit: 10, offset: 0, access_key: $ak, status: $st) {{ total_count items {{ {fields} }} }} }}"),
                "variables": { "ak": ak, "st": status },
            }),
            json!({
                "query": format!("query($ak: String!, $st: String!) {{ allSessions(first: 10, offset: 0, condition: {{ accessKey: $ak, status: $st }}, orderBy: [LAST_TOUCHED_DESC, ID_DESC]) {{ totalCount nodes {{ {pg_fields} }} }} }}"),
                "variables": { "ak": ak, "st": status },
            }),
        ),
        single: (
            json!({
                "query": format!("query($id: UUID!) {{ compute_session(id: $id) {{ {fields} }} }}"),
                "variables": { "id": id },
            }),
            json!({
                "query": format!("query($id: UUID!) {{ sessionById(id: $id) {{ {pg_fields} }} }}"),
                "variables": { "id": id },
            }),
        ),
    };
    Ok((
        q,
        format!(
            "access_key {ak}, status {status} ({} sessions match)",
            thousands(n as f64)
        ),
    ))
}

/// PostGraphile's CLI, installed under the bench directory with npm when missing.
async fn postgraphile(bench: &Bench) -> anyhow::Result<PathBuf> {
    let dir = bench.dir.join("postgraphile");
    let bin = dir.join("node_modules/.bin/postgraphile");
    if !bin.exists() {
        eprintln!("installing PostGraphile v4 (npm install postgraphile@4)...");
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("postgraphile@4")
            .status()
            .await
            .context("running npm (Node.js 20 is needed for the peer scenario)")?;
        if !status.success() || !bin.exists() {
            bail!("npm install postgraphile@4 failed");
        }
    }
    Ok(bin)
}

pub(crate) async fn query(bench: &mut Bench, args: &QueryArgs, peer: bool) -> anyhow::Result<()> {
    let seed = 42;
    let oha = oha().await?;
    // Every client of the database over the loopback without TLS: PostgreSQL here has TLS on,
    // which libpq and sqlx would use by default and PostGraphile's driver would not.
    let url = without_tls(&query_db(bench, args.sessions, seed).await?);
    let (q, filter) = queries(&url).await?;
    let (ak, sk) = harness::superadmin(bench, &url).await?;
    let names = ["compute_session_list", "compute_session"];
    // sessionview with its response cache (the default), then without it: the same requests.
    let mut sv: Vec<(&str, u32, Run, Run)> = Vec::new();
    let mut rss = [0.0; 2];
    for (pass, cache) in [(0, None), (1, Some("0"))] {
        let port = harness::free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut cmd = bench.sessionview();
        cmd.args(["serve", "--database-url", &url, "--listen", &host]);
        if let Some(bytes) = cache {
            cmd.args(["--response-cache-bytes", bytes]);
        }
        let mut server = cmd
            .stdout(Stdio::null())
            .spawn()
            .context("starting sessionview serve")?;
        harness::wait_http(&format!("http://{host}/healthz"), 30).await?;
        let server_pid = server.id().context("no server pid")?;
        let signer = Signer::new(host.clone(), ak.clone(), sk.clone());
        for (body, _) in [&q.list, &q.single] {
            let v = signer.post(body).await?;
            if v.get("errors").is_some()
                || v.as_object().is_none_or(|o| o.values().any(Value::is_null))
            {
                bail!("sessionview answered {v} to {body}");
            }
        }
        let headers = signer.headers()?;
        let mut i = 0;
        for (name, (body, _)) in names.into_iter().zip([&q.list, &q.single]) {
            for c in &args.concurrency {
                harness::quiet_database(&url).await?;
                let what = if cache.is_some() { "without" } else { "with" };
                eprintln!("sessionview {what} the response cache: {name} at concurrency {c}...");
                let run = load(
                    &oha,
                    &signer.url(),
                    &headers,
                    body,
                    args.seconds,
                    *c,
                    server_pid,
                )
                .await?;
                if pass == 0 {
                    sv.push((name, *c, run, Run::default()));
                } else if let Some(row) = sv.get_mut(i) {
                    row.3 = run;
                }
                i += 1;
            }
        }
        rss[pass] = harness::ProcStat::read(server_pid).map_or(0.0, |p| p.rss_mib);
        let _ = server.kill().await;
    }

    // The plain-SQL floor: the very statements sessionview runs, prepared, by pgbench.
    let pgbench = pgbench()?;
    let (list_sql, single_sql) = statements(&q)?;
    let mut floor = Vec::new();
    for (name, (sql, params)) in names.into_iter().zip([&list_sql, &single_sql]) {
        for c in &args.concurrency {
            harness::quiet_database(&url).await?;
            eprintln!("pgbench (prepared): {name} at concurrency {c}...");
            floor.push(sql_floor(bench, &pgbench, &url, sql, params, args.seconds, *c).await?);
        }
    }

    let mut peer_runs = Vec::new();
    if peer {
        let bin = postgraphile(bench).await?;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        // The read model has no foreign key from kernels to sessions; tell PostGraphile the relation.
        sqlx::query(
            "COMMENT ON TABLE kernels IS E'@foreignKey (session_id) references sessions (id)'",
        )
        .execute(&mut conn)
        .await?;
        let pg_port = harness::free_port()?;
        let mut pgl = Command::new("node")
            .arg(&bin)
            .args([
                "--connection",
                &url,
                "--schema",
                "public",
                "--host",
                "127.0.0.1",
            ])
            .args([
                "--port",
                &pg_port.to_string(),
                "--disable-query-log",
                "--disable-graphiql",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting PostGraphile")?;
        let pg_url = format!("http://127.0.0.1:{pg_port}/graphql");
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let check = |v: &Value| {
            v.get("errors").is_none()
                && v["data"]
                    .as_object()
                    .is_some_and(|o| o.values().all(|x| !x.is_null()))
        };
        loop {
            if let Ok(r) = client.post(&pg_url).json(&q.single.1).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                if check(&v) {
                    break;
                }
                bail!("PostGraphile answered {v}");
            }
            if std::time::Instant::now() > deadline {
                bail!("PostGraphile did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let v: Value = client
            .post(&pg_url)
            .json(&q.list.1)
            .send()
            .await?
            .json()
            .await?;
        if !check(&v) {
            bail!("PostGraphile answered {v} to the list query");
        }
        let pid = pgl.id().context("no PostGraphile pid")?;
        let headers = [("Content-Type", "application/json".to_owned())];
        for (name, (_, body)) in [
            ("compute_session_list", &q.list),
            ("compute_session", &q.single),
        ] {
            for c in &args.concurrency {
                harness::quiet_database(&url).await?;
                eprintln!("PostGraphile: {name} at concurrency {c}...");
                peer_runs.push(load(&oha, &pg_url, &headers, body, args.seconds, *c, pid).await?);
            }
        }
        let _ = pgl.kill().await;
    }

    bench.header(
        if peer { "peer (sessionview vs PostGraphile v4)" } else { "query" },
        &[
            ("data", format!("{} simulated sessions with their containers (seed {seed}), PostgreSQL", thousands(args.sessions as f64))),
            ("list query", format!("compute_session_list(limit: 10, offset: 0, access_key, status) {{ total_count items {{ id name status status_changed occupied_slots containers {{ id role agent }} }} }}; filter: {filter}")),
            ("single query", "compute_session(id) { same fields }".into()),
            ("load", format!("oha, closed loop, {} s per row, signed requests (HMAC-SHA256), the same request repeated", args.seconds)),
            ("server", format!("sessionview serve, default settings (8 database connections; every client reaches PostgreSQL over the loopback without TLS): with the response cache (64 MiB; RSS after the runs {:.0} MiB), and with --response-cache-bytes 0 (RSS {:.0} MiB)", rss[0], rss[1])),
            ("SQL floor", "pgbench -M prepared running the statement sessionview runs for the query (PgStore::read_statements) with the same values, as many clients as the concurrency; latencies from its per-transaction log".into()),
        ],
    );
    let mut rows = Vec::new();
    for (i, (name, c, cached, plain)) in sv.iter().enumerate() {
        let f = floor.get(i).copied().unwrap_or_default();
        let mut row = vec![
            (*name).to_owned(),
            c.to_string(),
            thousands(cached.rps),
            format!("{:.2}", cached.p99_ms),
            thousands(plain.rps),
            format!("{:.2}", plain.p50_ms),
            format!("{:.2}", plain.p99_ms),
            format!("{:.2}", plain.server_cores),
            format!("{:.2}", plain.postgres_cores),
            thousands(f.rps),
            format!("{:.2}", f.p99_ms),
            format!("{:.2}", f.postgres_cores),
            format!("{:.1}×", cached.rps / f.rps),
            (cached.non_2xx + plain.non_2xx).to_string(),
        ];
        if let Some(p) = peer_runs.get(i) {
            row.extend([
                thousands(p.rps),
                format!("{:.2}", p.p99_ms),
                format!("{:.2}", p.server_cores),
                format!("**{:.1}×**", plain.rps / p.rps),
                format!("{:.1}×", cached.rps / p.rps),
            ]);
        }
        rows.push(row);
    }
    let mut header = vec![
        "query",
        "concurrency",
        "cached req/s",
        "cached p99 ms",
        "uncached req/s",
        "uncached p50 ms",
        "uncached p99 ms",
        "server cores (uncached)",
        "PostgreSQL cores (uncached)",
        "SQL floor req/s",
        "SQL floor p99 ms",
        "SQL floor PostgreSQL cores",
        "cached / floor",
        "errors",
    ];
    if peer {
        header.extend([
            "PostGraphile req/s",
            "PostGraphile p99 ms",
            "PostGraphile cores",
            "uncached / PostGraphile",
            "cached / PostGraphile",
        ]);
    }
    table(&header, &rows);
    Ok(())
}

/// `url` with `sslmode=disable`.
fn without_tls(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

/// pgbench from PATH or PostgreSQL's own directory (Debian keeps it out of PATH).
fn pgbench() -> anyhow::Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("pgbench")];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = dirs
            .filter_map(Result::ok)
            .map(|d| d.path().join("bin/pgbench"))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context("pgbench not found (it comes with PostgreSQL's server package)")
}

/// A statement and its parameters in order, as text.
type Statement = (String, Vec<String>);

/// The statements sessionview runs for the two queries, with the values they bind.
fn statements(q: &Queries) -> anyhow::Result<(Statement, Statement)> {
    let vars = &q.list.0["variables"];
    let text = |v: &Value| v.as_str().map(str::to_owned).context("a text variable");
    let (ak, status) = (text(&vars["ak"])?, text(&vars["st"])?);
    let id = text(&q.single.0["variables"]["id"])?;
    let list = sessionview_store::SessionListQuery {
        access_key: Some(ak.clone()),
        statuses: vec![status.parse::<sessionview_events::Status>()?],
        limit: 10,
        offset: 0,
        ..Default::default()
    };
    // The containers' fields asked for (id role agent) need none of their JSON columns.
    let (list_sql, single_sql) = sessionview_store::PgStore::read_statements(
        &list,
        sessionview_store::KernelFields::WithoutJson,
    )?;
    // The filters are bound for the page, then again for the total.
    Ok((
        (list_sql, vec![ak.clone(), status.clone(), ak, status]),
        (single_sql, vec![id]),
    ))
}

/// pgbench running `sql` with `params` prepared, `concurrency` clients, for `seconds`.
async fn sql_floor(
    bench: &Bench,
    pgbench: &PathBuf,
    url: &str,
    sql: &str,
    params: &[String],
    seconds: u64,
    concurrency: u32,
) -> anyhow::Result<Run> {
    let dir = bench.dir.join("pgbench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // `$n` becomes `:pn` (highest first, so that `$1` does not match the start of `$10`).
    let mut script = sql.to_owned();
    for n in (1..=params.len()).rev() {
        script = script.replace(&format!("${n}"), &format!(":p{n}"));
    }
    let file = dir.join("statement.sql");
    std::fs::write(&file, format!("{script};\n"))?;
    let mut cmd = Command::new(pgbench);
    cmd.args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", dir.join("log").display()))
        .args(["-c", &concurrency.to_string()])
        .args(["-j", &concurrency.min(4).to_string()])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&file);
    for (n, p) in params.iter().enumerate() {
        cmd.args(["-D", &format!("p{}={p}", n + 1)]);
    }
    cmd.arg(url);
    // pgbench's connections are backends that exit with it: count them with the postmaster's.
    let pg_before = harness::postgres_cpu_secs();
    let (m, out, _) = measure(cmd, "pgbench").await?;
    let pg_cpu = harness::postgres_cpu_secs() - pg_before;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output: {out}"))?;
    // Per-transaction log lines: client, transaction, latency (µs), script, epoch, µs.
    let mut micros = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(us) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    micros.push(us);
                }
            }
        }
    }
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        micros
            .get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| us / 1000.0)
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        rps: tps,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        non_2xx: 0,
        server_cores: 0.0,
        postgres_cores: pg_cpu / m.wall.as_secs_f64(),
    })
}
