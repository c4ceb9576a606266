//! Headless Chromium (Debian's `chromium` and `chromedriver`, which `scripts/test` installs)
//! against a running `sessionview demo`, with every host but loopback unresolvable: `/graphiql`
//! signs in and runs a query, `/monitor` signs in and shows a session change status live, and
//! neither page breaks its content security policy. With `SESSIONVIEW_SCREENSHOTS=DIR` it saves
//! `graphiql.png` and `monitor.png` there (the ones in `docs/screenshots/` come from it).

use std::collections::HashMap;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::Demo;

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// `chromedriver` on a port of its choosing: the child and its URL.
async fn chromedriver() -> (Child, String) {
    let bin = program("SESSIONVIEW_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let mut child = Command::new(&bin)
        .arg("--port=0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{bin}: {e} (scripts/test installs Debian's chromium-driver; or set SESSIONVIEW_TEST_CHROMEDRIVER)")
        });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("chromedriver starts within 30 s")
            .unwrap()
            .expect("chromedriver exited");
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            break rest.trim_end_matches('.').trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://127.0.0.1:{port}"))
}

async fn browser(driver: &str) -> Client {
    let chromium = program("SESSIONVIEW_TEST_CHROMIUM", "/usr/bin/chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,900", "--no-first-run", "--disable-background-networking",
                // No network: every name but loopback fails to resolve, except a name for
                // loopback that is not localhost (plain HTTP there is no secure context).
                "--host-resolver-rules=MAP sessionview.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session through chromedriver")
}

async fn script(c: &Client, js: &str) -> Value {
    c.execute(js, vec![]).await.unwrap()
}

/// Waits (up to `secs`) until `js` returns true, failing with what `report` returns then.
async fn until(c: &Client, what: &str, secs: u64, js: &str, report: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if script(c, js).await == Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: {}", script(c, report).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The page's content-security-policy violations (`web/sign.js` records them from its start).
const CSP_VIOLATIONS: &str = "return cspViolations;";

async fn screenshot(c: &Client, name: &str) {
    let Some(dir) = std::env::var_os("SESSIONVIEW_SCREENSHOTS") else {
        return;
    };
    let png = c.screenshot().await.unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_in(c: &Client, demo: &Demo) {
    c.find(Locator::Css("#ak"))
        .await
        .unwrap()
        .send_keys(&demo.access_key)
        .await
        .unwrap();
    c.find(Locator::Css("#sk"))
        .await
        .unwrap()
        .send_keys(&demo.secret_key)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_and_the_monitor_work_offline_in_chromium() {
    assert!(
        sessionview_query::has_graphiql_assets(),
        "this build has no GraphiQL assets: run scripts/tools/web-assets before building \
         (scripts/test and .ci/run do)"
    );
    let demo = Demo::start(100).await;
    let (_driver, driver_url) = chromedriver().await;
    let c = browser(&driver_url).await;
    let base = format!("http://{}", demo.host);

    // Over plain HTTP on a name that is not localhost, both pages say why they cannot sign.
    let port = demo.host.rsplit_once(':').unwrap().1;
    for page in ["graphiql", "monitor"] {
        c.goto(&format!("http://sessionview.test:{port}/{page}"))
            .await
            .unwrap();
        until(
            &c,
            "the insecure-context message",
            30,
            "const b = document.getElementById('banner'); \
             return !b.hidden && b.textContent.includes('not localhost') && b.textContent.includes('HTTPS');",
            "return document.getElementById('banner').outerHTML;",
        )
        .await;
    }
    assert_eq!(
        script(&c, "return document.getElementById('signin').disabled").await,
        json!(true)
    );

    // GraphiQL: loads from this server alone, signs with the typed keys, runs the example.
    c.goto(&format!("{base}/graphiql")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".graphiql-execute-button"))
        .await
        .expect("GraphiQL renders");
    sign_in(&c, &demo).await;
    click(&c, ".graphiql-execute-button").await;
    until(
        &c,
        "GraphiQL's answer",
        30,
        "const r = document.querySelector('.result-window'); \
         return !!r && r.innerText.includes('total_count') && r.innerText.includes('items');",
        "const r = document.querySelector('.result-window'); return r ? r.innerText : 'no result pane';",
    )
    .await;
    let answer = script(
        &c,
        "return document.querySelector('.result-window').innerText",
    )
    .await;
    let answer = answer.as_str().unwrap();
    assert!(!answer.contains("\"errors\""), "{answer}");
    assert!(
        answer.contains("RUNNING"),
        "the example lists running sessions: {answer}"
    );
    screenshot(&c, "graphiql.png").await;
    assert_eq!(
        script(&c, CSP_VIOLATIONS).await,
        json!([]),
        "CSP violations on /graphiql"
    );

    // The monitor: signs in, lists, follows the event stream, shows a status change live.
    c.goto(&format!("{base}/monitor")).await.unwrap();
    sign_in(&c, &demo).await;
    click(&c, "#signin").await;
    until(
        &c,
        "the monitor's session table",
        30,
        "return document.body.dataset.signedIn === 'true' && \
         document.querySelectorAll('#sessions tbody tr').length > 0 && \
         document.getElementById('live').textContent === 'live';",
        "return document.getElementById('banner').textContent + ' | ' + document.getElementById('live').textContent;",
    )
    .await;
    let statuses = "const m = {}; for (const tr of document.querySelectorAll('#sessions tbody tr')) \
                    m[tr.dataset.id] = tr.querySelector('.status').textContent; return m;";
    let first: HashMap<String, String> =
        serde_json::from_value(script(&c, statuses).await).unwrap();
    assert!(!first.is_empty());
    until(
        &c,
        "a session's status to change live",
        60,
        "return Number(document.body.dataset.statusChanges || 0) > 0;",
        "return document.getElementById('banner').textContent + ' | ' + document.getElementById('live').textContent;",
    )
    .await;
    // A row that was on the page at sign-in now shows another status (the table was never
    // reloaded: only events change it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now: HashMap<String, String> =
            serde_json::from_value(script(&c, statuses).await).unwrap();
        if first
            .iter()
            .any(|(id, st)| now.get(id).is_some_and(|s| s != st))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no row of the first {} changed status in the table",
            first.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The detail panel of the first row, with its containers (clicked in the page: live updates
    // replace the rows, so a row found first may be gone by the time it is clicked).
    script(
        &c,
        "document.querySelector('#sessions tbody tr').click(); return true;",
    )
    .await;
    until(
        &c,
        "the detail panel",
        30,
        "return !document.getElementById('detail').hidden && \
         document.querySelectorAll('#detail-containers tbody tr').length > 0;",
        "return document.getElementById('banner').textContent;",
    )
    .await;
    screenshot(&c, "monitor.png").await;
    assert_eq!(
        script(&c, CSP_VIOLATIONS).await,
        json!([]),
        "CSP violations on /monitor"
    );
    c.close().await.unwrap();
    let Demo { mut child, dir, .. } = demo;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
