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
    let url = query_db(bench, args.sessions, seed).await?;
    let (q, filter) = queries(&url).await?;
    let (ak, sk) = harness::superadmin(bench, &url).await?;
    let port = harness::free_port()?;
    let host = format!("127.0.0.1:{port}");
    let mut server = bench
        .sessionview()
        .args(["serve", "--database-url", &url, "--listen", &host])
        .stdout(Stdio::null())
        .spawn()
        .context("starting sessionview serve")?;
    harness::wait_http(&format!("http://{host}/healthz"), 30).await?;
    let server_pid = server.id().context("no server pid")?;
    let signer = Signer::new(host.clone(), ak, sk);
    for (body, _) in [&q.list, &q.single] {
        let v = signer.post(body).await?;
        if v.get("errors").is_some() || v.as_object().is_none_or(|o| o.values().any(Value::is_null))
        {
            bail!("sessionview answered {v} to {body}");
        }
    }
    let headers = signer.headers()?;
    let mut sv = Vec::new();
    for (name, (body, _)) in [
        ("compute_session_list", &q.list),
        ("compute_session", &q.single),
    ] {
        for c in &args.concurrency {
            harness::quiet_database(&url).await?;
            eprintln!("sessionview: {name} at concurrency {c}...");
            sv.push((
                name,
                *c,
                load(
                    &oha,
                    &signer.url(),
                    &headers,
                    body,
                    args.seconds,
                    *c,
                    server_pid,
                )
                .await?,
            ));
        }
    }
    let rss = harness::ProcStat::read(server_pid).map_or(0.0, |p| p.rss_mib);
    let _ = server.kill().await;

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
            ("load", format!("oha, closed loop, {} s per row, signed requests (HMAC-SHA256)", args.seconds)),
            ("server", format!("sessionview serve, default settings (8 database connections); RSS after the runs {rss:.0} MiB")),
        ],
    );
    let mut rows = Vec::new();
    for (i, (name, c, r)) in sv.iter().enumerate() {
        let mut row = vec![
            (*name).to_owned(),
            c.to_string(),
            thousands(r.rps),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}", r.server_cores),
            format!("{:.2}", r.postgres_cores),
            r.non_2xx.to_string(),
        ];
        if let Some(p) = peer_runs.get(i) {
            row.extend([
                thousands(p.rps),
                format!("{:.2}", p.p99_ms),
                format!("{:.2}", p.server_cores),
                format!("**{:.1}×**", r.rps / p.rps),
                format!("{:.2}", r.p99_ms / p.p99_ms),
            ]);
        }
        rows.push(row);
    }
    let mut header = vec![
        "query",
        "concurrency",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server cores",
        "PostgreSQL cores",
        "errors",
    ];
    if peer {
        header.extend([
            "PostGraphile req/s",
            "PostGraphile p99 ms",
            "PostGraphile cores",
            "req/s ratio",
            "p99 ratio (lower is better)",
        ]);
    }
    table(&header, &rows);
    Ok(())
}
