//! End-to-end tests of the spine: `sessionview simulate` → Kafka-protocol broker →
//! `sessionview project` → PostgreSQL, compared row by row with the pure fold of the same stream.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use rand::Rng;
use sessionview_simulator::SimConfig;
use sessionview_store::DeadLetterFilter;
use sessionview_store::prelude::*;

/// Acceptance 1: 2,000 sessions with the full event mix through a 4-partition topic.
#[tokio::test(flavor = "multi_thread")]
async fn projection_through_kafka_equals_the_pure_fold() {
    let cfg = sim_config(2000, 101);
    let topic = unique_topic("fold");
    publish(&topic, &cfg).await;
    let db = TestDb::new().await;
    let out = project_to_end(&db, &topic, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("projected"), "{stdout}");

    let (expected, dead) = model(&cfg);
    assert!(dead.is_empty());
    let store = db.store().await;
    assert_tables_equal(&store, &expected).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.seen_events as usize, messages(&cfg).len());
    assert_eq!((counts.parked_events, counts.dead_letters), (0, 0));
    // Every partition's position is stored, and they add up to the whole stream.
    let positions = store.positions(&topic).await.unwrap();
    assert_eq!(positions.len(), 4, "{positions:?}");
    assert_eq!(
        progress(&store, &topic).await as usize,
        messages(&cfg).len()
    );
    // The full mix really is in there.
    let statuses: HashSet<&str> = expected.iter().map(|s| s.session.status.as_str()).collect();
    let results: HashSet<&str> = expected.iter().map(|s| s.session.result.as_str()).collect();
    assert_eq!(
        statuses,
        HashSet::from(["RUNNING", "TERMINATED", "CANCELLED"])
    );
    assert_eq!(results, HashSet::from(["UNDEFINED", "SUCCESS", "FAILURE"]));
    assert!(expected.iter().any(|s| s.kernels.len() == 4));
    assert!(expected.iter().any(|s| !s.session.dependencies.is_empty()));
    db.drop().await;
}

/// Acceptance 2: SIGKILL at ≥ 5 points mid-projection, restarting each time, ends in exactly the
/// tables of an uninterrupted run.
#[tokio::test(flavor = "multi_thread")]
async fn killed_and_restarted_projector_neither_loses_nor_doubles() {
    let cfg = SimConfig {
        duplicate_ratio: 0.05,
        early_ratio: 0.1,
        poison_ratio: 0.05,
        ..sim_config(3000, 102)
    };
    let topic = unique_topic("crash");
    publish(&topic, &cfg).await;
    let total = messages(&cfg).len() as i64;
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut kills = 0;
    let mut rng = rand::rng();
    for round in 0..12 {
        if kills >= 5 {
            break;
        }
        // Each restart joins with a new group id: positions live in the database, so the group
        // is irrelevant to correctness, and a new group does not wait for the killed member's
        // session to time out.
        let mut child = spawn_project(
            &db,
            &topic,
            &format!("crash-{round}"),
            &["--batch-size", "300", "--exit-at-end"],
        );
        let start = progress(&store, &topic).await;
        // Wait until this instance has committed something, then kill it at a random moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if progress(&store, &topic).await > start || tokio::time::Instant::now() > deadline {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        if child.try_wait().unwrap().is_none() {
            child.start_kill().unwrap(); // SIGKILL
            child.wait().await.unwrap();
            let at = progress(&store, &topic).await;
            if at < total {
                kills += 1;
                eprintln!("killed at {at}/{total} events");
            }
        }
        if progress(&store, &topic).await >= total {
            break;
        }
    }
    assert!(kills >= 5, "only {kills} kills landed mid-projection");
    project_to_end(&db, &topic, &[]).await;

    let (expected, dead) = model(&cfg);
    assert_tables_equal(&store, &expected).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.dead_letters as usize,
        dead.len(),
        "each poison message once"
    );
    assert_eq!(counts.parked_events, 0);
    assert_eq!(progress(&store, &topic).await, total);
    db.drop().await;
}

/// Acceptance 3a: the same stream with 10 % of events re-published later gives identical tables.
#[tokio::test(flavor = "multi_thread")]
async fn republished_duplicates_change_nothing() {
    let clean = sim_config(1000, 103);
    let dup = SimConfig {
        duplicate_ratio: 0.1,
        ..clean.clone()
    };
    let extra = messages(&dup).len() - messages(&clean).len();
    assert!(extra > messages(&clean).len() / 20, "{extra} duplicates");
    let topic = unique_topic("dup");
    publish(&topic, &dup).await;
    let db = TestDb::new().await;
    // Small batches: a duplicate often lands in the batch right after its original, which is
    // folded while the original's batch is still committing (the pipeline's in-memory overlay),
    // or further on (the seen_events table).
    let out = project_to_end(&db, &topic, &["--batch-size", "100"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("duplicate={extra}")), "{stdout}");
    let (expected, _) = model(&clean);
    assert_tables_equal(&db.store().await, &expected).await;
    db.drop().await;
}

/// Acceptance 3b: kernel events published before their session_enqueued are applied, in order.
#[tokio::test(flavor = "multi_thread")]
async fn early_events_wait_for_their_session() {
    let clean = sim_config(1000, 104);
    let early = SimConfig {
        early_ratio: 0.3,
        ..clean.clone()
    };
    let topic = unique_topic("early");
    publish(&topic, &early).await;
    let db = TestDb::new().await;
    // Small batches, so that many parked events cross a batch boundary through the table.
    let out = project_to_end(&db, &topic, &["--batch-size", "50"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("parked="), "nothing was parked: {stdout}");
    let (expected, _) = model(&clean);
    let store = db.store().await;
    assert_tables_equal(&store, &expected).await;
    assert_eq!(store.counts().await.unwrap().parked_events, 0);
    db.drop().await;
}

/// Acceptance 3c: poison is dead-lettered with reason and bytes; everything else is projected.
#[tokio::test(flavor = "multi_thread")]
async fn poison_is_dead_lettered_and_the_rest_projected() {
    let clean = sim_config(1000, 105);
    let poisoned = SimConfig {
        poison_ratio: 0.1,
        ..clean.clone()
    };
    let topic = unique_topic("poison");
    publish(&topic, &poisoned).await;
    let db = TestDb::new().await;
    project_to_end(&db, &topic, &[]).await;
    let (expected, _) = model(&clean);
    let store = db.store().await;
    assert_tables_equal(&store, &expected).await;

    let poison = messages(&poisoned).len() - messages(&clean).len();
    let dead = store
        .dead_letters(&DeadLetterFilter {
            limit: 10_000,
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), poison);
    let labels: HashSet<&str> = dead.iter().map(|d| d.label.as_str()).collect();
    for l in [
        "malformed",
        "unknown_type",
        "bad_field",
        "unknown_kernel",
        "unknown_version",
    ] {
        assert!(labels.contains(l), "no {l} among {labels:?}");
    }
    for d in &dead {
        assert_eq!(d.source, topic);
        assert!(!d.payload.is_empty() && !d.reason.is_empty(), "{d:?}");
        assert!((0..4).contains(&d.partition));
    }
    let slot = dead.iter().find(|d| d.label == "bad_field").unwrap();
    assert!(
        slot.reason.contains("occupied_slots") && slot.reason.contains("1e3"),
        "{}",
        slot.reason
    );

    // The CLI lists them with reason and position.
    let out = tokio::process::Command::new(BIN)
        .args([
            "dead-letters",
            "--database-url",
            &db.url,
            "--label",
            "unknown_kernel",
            "--limit",
            "5",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{topic}["))
            && text.contains("unknown_kernel: kernel_error: kernel "),
        "{text}"
    );
    db.drop().await;
}

/// A file archive projects to the same tables as the topic (the projector's broker-free source),
/// and a second run over the same file applies nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn archive_file_projects_like_the_topic() {
    let cfg = SimConfig {
        duplicate_ratio: 0.05,
        early_ratio: 0.1,
        ..sim_config(500, 106)
    };
    let dir = std::env::temp_dir().join(format!("sv-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.ndjson");
    let out = tokio::process::Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            "500",
            "--seed",
            "106",
            "--duplicate-ratio",
            "0.05",
            "--early-ratio",
            "0.1",
            "--to",
        ])
        .arg(format!("file://{}", path.display()))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let db = TestDb::new().await;
    for _ in 0..2 {
        project_file(&db, &path).await;
    }
    let (expected, _) = model(&cfg);
    assert_tables_equal(&db.store().await, &expected).await;
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}
