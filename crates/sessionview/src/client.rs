//! `sessionview query`: a signed GraphQL request from the command line (what the demo prints).

use anyhow::{Context, bail};
use clap::Args;
use sessionview_query::auth::signed_headers;

/// Options of `sessionview query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "SESSIONVIEW_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Access key of the keypair to sign with.
    #[arg(long, env = "SESSIONVIEW_ACCESS_KEY")]
    access_key: String,
    /// Secret key of the keypair to sign with.
    #[arg(long, env = "SESSIONVIEW_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// Variables as a JSON object.
    #[arg(long, env = "SESSIONVIEW_VARIABLES", default_value = "{}")]
    variables: String,
    /// For an https:// endpoint: trust this CA certificate (PEM) besides the system's.
    #[arg(long, env = "SESSIONVIEW_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// The GraphQL query.
    query: String,
}

pub(crate) async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let variables: serde_json::Value =
        serde_json::from_str(&args.variables).context("--variables is not JSON")?;
    if !variables.is_object() {
        bail!("--variables must be a JSON object");
    }
    let base = url::Url::parse(&args.endpoint)
        .with_context(|| format!("--endpoint {:?} is not a URL", args.endpoint))?;
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => bail!("--endpoint {:?} has no host", args.endpoint),
    };
    let path = "/admin/graphql";
    let headers = signed_headers(&args.access_key, &args.secret_key, "POST", path, &host)?;
    let body = serde_json::json!({"query": args.query, "variables": variables});
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &args.ca_cert {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading --ca-cert {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("--ca-cert {} is not a PEM certificate", ca.display()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build().context("building the HTTP client")?;
    let mut request = client.post(base.join(path)?);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let resp = request
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("sending the query to {}", args.endpoint))?;
    let status = resp.status();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    println!("{pretty}");
    if !status.is_success() {
        bail!("the server answered {status}");
    }
    Ok(())
}

/// Options of `sessionview healthcheck`.
#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// The probe to ask: a projector's --metrics-listen address or a server's --listen address,
    /// path /healthz (the process answers) or /readyz (it can do its work).
    #[arg(
        long,
        env = "SESSIONVIEW_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:9464/healthz"
    )]
    url: String,
    /// Give up after this many milliseconds.
    #[arg(
        long,
        env = "SESSIONVIEW_HEALTHCHECK_TIMEOUT_MS",
        default_value_t = 3000
    )]
    timeout_ms: u64,
}

/// `sessionview healthcheck`: exits 0 when the probe answers 2xx (for container health checks in
/// images without curl).
pub(crate) async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(args.timeout_ms))
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&args.url)
        .send()
        .await
        .with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("GET {}: {status}: {}", args.url, body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}
