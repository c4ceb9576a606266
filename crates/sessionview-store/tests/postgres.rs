//! Store tests against a real PostgreSQL: a fresh database per test.
//!
//! Set `SESSIONVIEW_TEST_DATABASE_URL` to an administrative URL (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates and drops its own database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

use std::collections::HashSet;

use sessionview_projection::{Fold, Position, SessionState, plan};
use sessionview_simulator::{SimConfig, Simulator};
use sessionview_store::{Advance, Commit, CommitOutcome, DeadLetterFilter, PgStore, Store};
use sqlx::Connection;

struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> Self {
        let admin = std::env::var("SESSIONVIEW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("sv_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect admin");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    async fn store(&self) -> PgStore {
        let store = PgStore::connect(&self.url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    async fn drop(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin)
            .await
            .expect("connect admin");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .expect("drop database");
    }
}

const SOURCE: &str = "test.events";

/// Folds and commits `messages` (all on partition 0, from `first_offset`) in batches of `size`.
async fn project<S: Store>(store: &S, messages: &[Vec<u8>], first_offset: i64, size: usize) {
    let mut expected = store.positions(SOURCE).await.unwrap().get(&0).copied();
    for (b, chunk) in messages.chunks(size).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let (decoded, req) = plan(&refs);
        let mut fold = Fold::from_loaded(store.load(&req).await.unwrap());
        let base = first_offset + (b * size) as i64;
        for (i, (bytes, d)) in refs.iter().zip(decoded).enumerate() {
            let position = Position {
                partition: 0,
                offset: base + i as i64,
            };
            fold.apply_decoded(SOURCE, position, bytes, d);
        }
        let changes = fold.finish();
        let next = base + chunk.len() as i64;
        let advances = [Advance {
            partition: 0,
            expected,
            next,
        }];
        let outcome = store
            .commit(Commit {
                source: SOURCE,
                advances: &advances,
                changes: &changes,
            })
            .await
            .unwrap();
        assert_eq!(outcome, CommitOutcome::Committed);
        expected = Some(next);
    }
}

fn model(messages: &[Vec<u8>]) -> (Vec<SessionState>, usize) {
    let mut fold = Fold::new();
    for (i, m) in messages.iter().enumerate() {
        fold.apply_bytes(
            SOURCE,
            Position {
                partition: 0,
                offset: i as i64,
            },
            m,
        );
    }
    let dead = fold.dead_letters().len();
    let mut v: Vec<_> = fold.sessions().values().cloned().collect();
    v.sort_by_key(|s| s.session.id);
    (v, dead)
}

fn stream(sessions: u64, seed: u64, faults: bool) -> Vec<Vec<u8>> {
    let f = if faults { 0.1 } else { 0.0 };
    let cfg = SimConfig {
        sessions,
        seed,
        duplicate_ratio: f,
        early_ratio: f * 2.0,
        poison_ratio: f,
        ..SimConfig::default()
    };
    Simulator::new(cfg).map(|m| m.bytes).collect()
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    assert_eq!(store.counts().await.unwrap().sessions, 0);
    db.drop().await;
}

#[tokio::test]
async fn stored_rows_equal_the_pure_fold_whatever_the_batch_size() {
    let db = TestDb::new().await;
    let msgs = stream(250, 21, true);
    let (expected, dead) = model(&msgs);
    for size in [1000, 37] {
        let store = db.store().await;
        sqlx::query("TRUNCATE sessions, kernels, session_dependencies, seen_events, parked_events, dead_letters, source_positions")
            .execute(store.pool())
            .await
            .unwrap();
        project(&store, &msgs, 0, size).await;
        let got = store.all_sessions().await.unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e, "batch size {size}: session {}", e.session.id);
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.dead_letters as usize, dead);
        assert_eq!(counts.parked_events, 0);
        assert_eq!(
            store.positions(SOURCE).await.unwrap().get(&0).copied(),
            Some(msgs.len() as i64)
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn positions_advance_only_by_compare_and_set() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let msgs = stream(5, 22, false);
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let (decoded, req) = plan(&refs);
    let mut fold = Fold::from_loaded(store.load(&req).await.unwrap());
    for (i, (b, d)) in refs.iter().zip(decoded).enumerate() {
        fold.apply_decoded(
            SOURCE,
            Position {
                partition: 0,
                offset: i as i64,
            },
            b,
            d,
        );
    }
    let changes = fold.finish();
    let n = msgs.len() as i64;

    // First commit from "no position" wins; the same batch again conflicts and writes nothing.
    let first = [Advance {
        partition: 0,
        expected: None,
        next: n,
    }];
    let c = Commit {
        source: SOURCE,
        advances: &first,
        changes: &changes,
    };
    assert_eq!(store.commit(c).await.unwrap(), CommitOutcome::Committed);
    let seen_after_first = store.counts().await.unwrap().seen_events;
    assert_eq!(
        store.commit(c).await.unwrap(),
        CommitOutcome::Conflict {
            partitions: vec![0]
        }
    );
    // A stale expectation conflicts too, and a conflict on one partition voids the whole batch.
    let stale = [
        Advance {
            partition: 1,
            expected: None,
            next: 3,
        },
        Advance {
            partition: 0,
            expected: Some(0),
            next: n + 1,
        },
    ];
    let c = Commit {
        source: SOURCE,
        advances: &stale,
        changes: &changes,
    };
    assert_eq!(
        store.commit(c).await.unwrap(),
        CommitOutcome::Conflict {
            partitions: vec![0]
        }
    );
    let positions = store.positions(SOURCE).await.unwrap();
    assert_eq!(positions.get(&0), Some(&n));
    assert_eq!(
        positions.get(&1),
        None,
        "the conflicting batch wrote nothing"
    );
    assert_eq!(store.counts().await.unwrap().seen_events, seen_after_first);
    db.drop().await;
}

#[tokio::test]
async fn two_instances_racing_for_one_partition_apply_once() {
    let db = TestDb::new().await;
    let store = db.store().await;
    project(&store, &stream(3, 23, false), 0, 100).await;
    let before = store.positions(SOURCE).await.unwrap()[&0];
    let more = stream(20, 24, false);
    let refs: Vec<&[u8]> = more.iter().map(Vec::as_slice).collect();
    let (decoded, req) = plan(&refs);
    let loaded = store.load(&req).await.unwrap();
    let mut fold = Fold::from_loaded(loaded);
    for (i, (b, d)) in refs.iter().zip(decoded).enumerate() {
        fold.apply_decoded(
            SOURCE,
            Position {
                partition: 0,
                offset: before + i as i64,
            },
            b,
            d,
        );
    }
    let changes = std::sync::Arc::new(fold.finish());
    let next = before + more.len() as i64;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, changes) = (store.clone(), changes.clone());
        tasks.push(tokio::spawn(async move {
            let adv = [Advance {
                partition: 0,
                expected: Some(before),
                next,
            }];
            store
                .commit(Commit {
                    source: SOURCE,
                    advances: &adv,
                    changes: &changes,
                })
                .await
                .unwrap()
        }));
    }
    let mut committed = 0;
    for t in tasks {
        if t.await.unwrap() == CommitOutcome::Committed {
            committed += 1;
        }
    }
    assert_eq!(committed, 1, "exactly one racer may apply the batch");
    assert_eq!(store.positions(SOURCE).await.unwrap()[&0], next);
    db.drop().await;
}

#[tokio::test]
async fn parked_events_survive_between_batches_and_are_released_in_order() {
    let db = TestDb::new().await;
    let store = db.store().await;
    // A stream where many sessions publish early; batch size 1 forces every park through the table.
    let cfg = SimConfig {
        sessions: 30,
        seed: 25,
        early_ratio: 1.0,
        ..SimConfig::default()
    };
    let msgs: Vec<Vec<u8>> = Simulator::new(cfg).map(|m| m.bytes).collect();
    let (expected, _) = model(&msgs);
    project(&store, &msgs, 0, 1).await;
    assert_eq!(store.all_sessions().await.unwrap(), expected);
    assert_eq!(store.counts().await.unwrap().parked_events, 0);
    db.drop().await;
}

#[tokio::test]
async fn dead_letters_keep_bytes_reason_and_position() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let msgs = vec![b"garbage".to_vec(), b"{\"event_type\": \"nope\"}".to_vec()];
    project(&store, &msgs, 40, 10).await;
    let all = store
        .dead_letters(&DeadLetterFilter {
            limit: 10,
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].payload, b"garbage");
    assert_eq!((all[0].partition, all[0].offset), (0, 40));
    assert_eq!(all[0].label, "malformed");
    assert_eq!(all[1].offset, 41);
    assert!(all[1].reason.contains("nope"), "{}", all[1].reason);
    let filtered = store
        .dead_letters(&DeadLetterFilter {
            limit: 10,
            label: Some("unknown_type".into()),
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        filtered.iter().map(|d| d.offset).collect::<HashSet<_>>(),
        HashSet::from([41])
    );
    db.drop().await;
}

#[tokio::test]
async fn refuses_urls_of_other_backends() {
    let err = PgStore::connect("mysql://localhost/x", 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mysql://localhost/x"), "{err}");
}
