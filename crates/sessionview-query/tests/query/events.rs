//! `GET /events/session` over real HTTP against a real PostgreSQL read model: events are pushed
//! when a commit applies them, in order, scoped to the caller, and a reconnect with
//! `Last-Event-ID` resumes with nothing lost or repeated.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use sessionview_query::ServerConfig;
use sessionview_store::KeyPair;

use crate::common::{Fixture, apply, lifecycle, signed, start};

/// Opens the stream as the 20.3.10 client does: no Content-Type, `application/octet-stream`
/// signed, the path with its query signed.
async fn open(
    base: &str,
    host: &str,
    kp: &KeyPair,
    path: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let date = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false);
    let mut req =
        signed(reqwest::Method::GET, base, host, path, kp, &date, None).header("Date", &date);
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

/// Reads `n` events (id, name, data) from an open stream, comments skipped.
async fn read(
    resp: &mut reqwest::Response,
    buf: &mut String,
    n: usize,
) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().into();
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim().into();
                }
            }
            if !name.is_empty() {
                out.push((id, name, serde_json::from_str(&data).unwrap()));
            }
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    out
}

#[tokio::test]
async fn committed_events_are_pushed_in_order_scoped_and_resumable() {
    let fx = Fixture::new().await;
    let srv = start(&fx, ServerConfig::default()).await;
    let (base, host) = (srv.base.clone(), srv.host.clone());
    let user = fx.user.clone();

    // A user naming another owner is refused.
    let refused = open(
        &base,
        &host,
        &user,
        "/events/session?name=x&owner_access_key=AKIAOTHER",
        None,
    )
    .await;
    assert_eq!(refused.status(), 403);

    let mut all = open(&base, &host, &user, "/events/session", None).await;
    assert_eq!(all.status(), 200);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let path = format!(
        "/events/session?name=mine&owner_access_key={}",
        user.access_key
    );
    let mut one = open(&base, &host, &user, &path, None).await;
    assert_eq!(one.status(), 200);
    // Let the streams subscribe before the commits.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another tenant's session first, then two of the user's: the other is never told.
    apply(
        &fx,
        900,
        &lifecycle(1, "theirs", "AKIAOTHERTENANT00001", "elsewhere"),
    )
    .await;
    apply(
        &fx,
        901,
        &lifecycle(2, "mine", &user.access_key, &user.domain_name),
    )
    .await;
    apply(
        &fx,
        902,
        &lifecycle(3, "also-mine", &user.access_key, &user.domain_name),
    )
    .await;

    let want = [
        "session_enqueued",
        "kernel_started",
        "session_started",
        "kernel_terminated",
        "session_terminated",
    ];
    let mut buf = String::new();
    let got = read(&mut all, &mut buf, 10).await;
    let names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, [want, want].concat());
    for (_, _, data) in &got {
        assert_eq!(
            data["ownerAccessKey"],
            user.access_key.as_str(),
            "only the caller's sessions"
        );
    }
    assert_eq!(got[0].2["sessionName"], "mine");
    assert_eq!(got[5].2["sessionName"], "also-mine");
    assert_eq!(got[1].2["clusterRole"], "master");
    assert!(got[1].2["kernelId"].is_string());
    assert!(
        got[0].2.get("kernelId").is_none(),
        "kernel fields only on kernel events"
    );
    assert_eq!(got[3].2["reason"], "done");
    let ids: Vec<i64> = got.iter().map(|(id, _, _)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let mut buf1 = String::new();
    let named = read(&mut one, &mut buf1, 5).await;
    assert!(named.iter().all(|(_, _, d)| d["sessionName"] == "mine"));

    // Reconnecting after the third event resumes with the fourth, nothing repeated or lost.
    let mut again = open(&base, &host, &user, "/events/session", Some(&got[2].0)).await;
    let mut buf2 = String::new();
    let resumed = read(&mut again, &mut buf2, 7).await;
    assert_eq!(
        resumed
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<Vec<_>>(),
        got[3..]
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<Vec<_>>()
    );
    fx.drop().await;
}
