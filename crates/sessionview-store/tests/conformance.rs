//! The store conformance suite: the same cases against every backend (PostgreSQL and SQLite),
//! each on a fresh database.
//!
//! PostgreSQL: `SESSIONVIEW_TEST_DATABASE_URL` is an administrative URL (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates and drops its own database.
//! SQLite: a fresh file in the temporary directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

use std::collections::HashSet;

use sessionview_events::{DEFAULT_MAX_EVENT_BYTES, Event, Status};
use sessionview_projection::{Batch, EventKey, Fold, Position, SessionState};
use sessionview_simulator::{SimConfig, Simulator};
use sessionview_store::changes::Owner;
use sessionview_store::live::CommittedPosition;
use sessionview_store::prelude::*;
use sessionview_store::{
    Advance, Commit, CommitOutcome, ContainerListQuery, DeadLetterFilter, KernelFields, KeyPair,
    KeyPairAdmin, Order, PgStore, ReadModel, Role, Scope, SessionListQuery, SqliteStore, Store,
    StoreCounts,
};
use sessionview_testkit::events::Story;
use sessionview_testkit::{PgDatabase, SqliteDatabase};
use sqlx::Connection;
use uuid::Uuid;

/// What every backend must offer.
trait Backend: Store + ReadModel + KeyPairAdmin {}
impl<T: Store + ReadModel + KeyPairAdmin> Backend for T {}

struct PgDb {
    db: PgDatabase,
    store: PgStore,
}

impl PgDb {
    async fn new() -> Self {
        let db = PgDatabase::new().await;
        let store = PgStore::connect(&db.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        Self { db, store }
    }

    fn url(&self) -> String {
        self.db.url.clone()
    }

    async fn drop(self) {
        self.store.close().await;
        self.db.drop().await;
    }
}

struct SqliteDb {
    db: SqliteDatabase,
    store: SqliteStore,
}

impl SqliteDb {
    async fn new() -> Self {
        let db = SqliteDatabase::new();
        let store = SqliteStore::connect(&db.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        Self { db, store }
    }

    async fn drop(self) {
        self.store.pool().close().await;
        self.db.drop().await;
    }
}

/// Generates one `#[tokio::test]` per case and backend: `postgres::case` and `sqlite::case`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let db = super::PgDb::new().await;
                super::$case(&db.store).await;
                db.drop().await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let db = super::SqliteDb::new().await;
                super::$case(&db.store).await;
                db.drop().await;
            })*
        }
    };
}

conformance!(
    migrate_is_idempotent,
    rows_equal_the_pure_fold_in_large_batches,
    rows_equal_the_pure_fold_in_small_batches,
    a_stream_delivered_again_changes_nothing,
    a_long_sessions_record_spans_chunks,
    positions_advance_only_by_compare_and_set,
    the_session_event_log_holds_what_commits_applied,
    commits_note_the_sessions_they_change,
    racing_instances_apply_a_batch_once,
    an_event_recorded_meanwhile_voids_the_batch,
    parked_events_survive_between_batches,
    dead_letters_keep_bytes_reason_and_position,
    session_lists_filter_scope_order_and_count,
    children_and_single_items_respect_scope,
    keypairs_round_trip,
);

const SOURCE: &str = "test.events";

/// A client's generic plan for a lookup, cached while `sessions` was empty, scans the table
/// whole however large it grows until its statistics change; `refresh_statistics` changes them
/// once the table has grown, and leaves tables that have not grown alone.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_statistics_follow_a_growing_table() {
    let db = PgDb::new().await;
    let store = &db.store;
    assert_eq!(
        store.refresh_statistics().await.unwrap(),
        Vec::<String>::new(),
        "empty tables need no statistics"
    );
    let mut client = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    // Autovacuum would analyze the grown tables on its own schedule, and a test that races it
    // sometimes finds the plan already replanned: here only refresh_statistics may analyze.
    for table in ["sessions", "kernels", "session_seen"] {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .execute(&mut client)
        .await
        .unwrap();
    }
    sqlx::query("PREPARE lookup(uuid[]) AS SELECT id, name FROM sessions WHERE id = ANY($1)")
        .execute(&mut client)
        .await
        .unwrap();
    let explain = "EXPLAIN EXECUTE lookup(ARRAY[gen_random_uuid(), gen_random_uuid()])";
    // Five custom plans, then PostgreSQL settles on the generic one.
    for _ in 0..8 {
        sqlx::query(explain).execute(&mut client).await.unwrap();
    }
    project(store, &stream(3000, 11, false), 0, 5000).await;
    async fn plan(client: &mut sqlx::PgConnection, explain: &str) -> String {
        sqlx::query_scalar::<_, String>(explain)
            .fetch_all(client)
            .await
            .unwrap()
            .join("\n")
    }
    let stale = plan(&mut client, explain).await;
    assert!(
        stale.contains("Seq Scan on sessions"),
        "the cached plan should still scan the grown table:\n{stale}"
    );

    let refreshed = store.refresh_statistics().await.unwrap();
    for table in ["sessions", "kernels", "session_seen"] {
        assert!(
            refreshed.iter().any(|t| t == table),
            "{table} in {refreshed:?}"
        );
    }
    let fresh = plan(&mut client, explain).await;
    assert!(
        fresh.contains("Index") && !fresh.contains("Seq Scan"),
        "after ANALYZE the lookup should use the primary key:\n{fresh}"
    );
    assert_eq!(
        store.refresh_statistics().await.unwrap(),
        Vec::<String>::new(),
        "nothing has grown since"
    );
    drop(client);
    db.drop().await;
}

/// Folds `messages` on top of what the store holds now, as read from `partition` from offset
/// `first` on (loaded the way the projector loads a batch).
async fn fold_at<S: Store>(
    store: &S,
    messages: &[Vec<u8>],
    partition: i32,
    first: i64,
) -> sessionview_projection::Changes {
    let events = messages
        .iter()
        .zip(first..)
        .map(|(b, offset)| (Position { partition, offset }, b.as_slice()))
        .collect();
    let planned = Batch::plan(SOURCE, events, DEFAULT_MAX_EVENT_BYTES);
    let loaded = store.load(planned.request()).await.unwrap();
    planned.fold(loaded).changes
}

/// Folds and commits `messages` (partition 0, from `first_offset`) in batches of `size`.
async fn project<S: Store>(store: &S, messages: &[Vec<u8>], first_offset: i64, size: usize) {
    let mut expected = store.positions(SOURCE).await.unwrap().get(&0).copied();
    for (b, chunk) in messages.chunks(size).enumerate() {
        let base = first_offset + (b * size) as i64;
        let changes = fold_at(store, chunk, 0, base).await;
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
                retire: &[],
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

async fn migrate_is_idempotent<S: Backend>(store: &S) {
    store.migrate().await.unwrap();
    assert_eq!(store.counts().await.unwrap().sessions, 0);
    OperationsStore::ping(store).await.unwrap();
    ReadModel::ping(store).await.unwrap();
}

async fn rows_equal_the_pure_fold<S: Backend>(store: &S, size: usize) {
    let msgs = stream(250, 21, true);
    let (expected, dead) = model(&msgs);
    project(store, &msgs, 0, size).await;
    let got = store.all_sessions().await.unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "batch size {size}: session {}", e.session.id);
    }
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.dead_letters as usize, dead);
    assert_eq!(counts.parked_events, 0);
    assert_eq!(
        counts.seen_events as usize,
        recorded(&msgs).len(),
        "every decoded event's id recorded once"
    );
    assert_eq!(
        store.positions(SOURCE).await.unwrap().get(&0).copied(),
        Some(msgs.len() as i64)
    );
}

/// The events of `messages` that decode, as idempotence knows them.
fn recorded(messages: &[Vec<u8>]) -> HashSet<EventKey> {
    messages
        .iter()
        .filter_map(|m| Event::decode(m).ok())
        .map(|e| EventKey::of(&e))
        .collect()
}

/// A long-running session: more event ids than several chunks of its record hold, appended
/// across batches of every size; then all of it delivered again is all duplicates, in one batch
/// and one by one.
async fn a_long_sessions_record_spans_chunks<S: Backend>(store: &S) {
    let chunk = sessionview_store::SEEN_CHUNK_IDS as usize;
    let mut story = Story::new(Uuid::from_u128(0x5e55), "long", "AK", "default");
    let mut msgs = vec![
        story.enqueued(),
        story.kernel("kernel_started", serde_json::json!({"container_id": "c"})),
    ];
    for i in 0..(3 * chunk + 17) {
        msgs.push(story.kernel("kernel_stat_sync", serde_json::json!({"stat": {"n": i}})));
    }
    let mut offset = 0;
    for size in [1, 119, 2, 250, 7, 1000] {
        let end = (offset + size).min(msgs.len());
        project(store, &msgs[offset..end], offset as i64, size).await;
        offset = end;
        if offset == msgs.len() {
            break;
        }
    }
    assert_eq!(offset, msgs.len());
    let (expected, _) = model(&msgs);
    assert_eq!(store.all_sessions().await.unwrap(), expected);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.seen_events as usize, msgs.len());
    let n = msgs.len() as i64;
    project(store, &msgs, n, msgs.len()).await;
    project(store, &msgs[..150], 2 * n, 1).await;
    assert_eq!(store.all_sessions().await.unwrap(), expected);
    assert_eq!(store.counts().await.unwrap(), counts, "all duplicates");
}

/// The whole stream delivered a second time, in other batches, is all duplicates: the rows and
/// the records stay as they were; only the messages that do not decode (no id to know them by)
/// are dead letters again.
async fn a_stream_delivered_again_changes_nothing<S: Backend>(store: &S) {
    let msgs = stream(120, 27, true);
    project(store, &msgs, 0, 64).await;
    let sessions = store.all_sessions().await.unwrap();
    let counts = store.counts().await.unwrap();
    project(store, &msgs, msgs.len() as i64, 5).await;
    assert_eq!(store.all_sessions().await.unwrap(), sessions);
    let undecodable = msgs.len() - msgs.iter().filter(|m| Event::decode(m).is_ok()).count();
    assert_eq!(
        store.counts().await.unwrap(),
        StoreCounts {
            dead_letters: counts.dead_letters + undecodable as i64,
            ..counts
        }
    );
    // Folded a third time, nothing is left to write.
    let again = fold_at(store, &msgs, 0, 2 * msgs.len() as i64).await;
    assert!(again.sessions.is_empty() && again.seen.is_empty());
}

async fn rows_equal_the_pure_fold_in_large_batches<S: Backend>(store: &S) {
    rows_equal_the_pure_fold(store, 1000).await;
}

async fn rows_equal_the_pure_fold_in_small_batches<S: Backend>(store: &S) {
    rows_equal_the_pure_fold(store, 37).await;
}

async fn positions_advance_only_by_compare_and_set<S: Backend>(store: &S) {
    let msgs = stream(5, 22, false);
    let changes = fold_at(store, &msgs, 0, 0).await;
    let n = msgs.len() as i64;
    let first = [Advance {
        partition: 0,
        expected: None,
        next: n,
    }];
    let c = Commit {
        source: SOURCE,
        advances: &first,
        changes: &changes,
        retire: &[],
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
        retire: &[],
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
}

/// Each commit logs the events it applied, numbered on from the log's head in the order the pure
/// fold tells them (duplicates, parked and dead-lettered events are not told); the log pages after
/// any position; the committed positions are what the commits advanced.
async fn the_session_event_log_holds_what_commits_applied<S: Backend>(store: &S) {
    let msgs = stream(20, 31, true);
    let mut fold = Fold::new();
    for (i, m) in msgs.iter().enumerate() {
        let at = Position {
            partition: 0,
            offset: i as i64,
        };
        fold.apply_bytes(SOURCE, at, m);
    }
    let told: Vec<(String, Uuid, Option<Uuid>)> = fold
        .finish()
        .live
        .into_iter()
        .map(|e| (e.name.to_owned(), e.session_id, e.kernel_id))
        .collect();
    assert!(told.len() > 20, "the stream tells something");
    assert!(store.committed_positions().await.unwrap().is_empty());
    assert_eq!(store.session_event_log().await.unwrap().newest, 0);

    project(store, &msgs, 0, 37).await;
    let log = store.session_events(0, 1_000_000).await.unwrap();
    let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=told.len() as i64).collect::<Vec<_>>());
    let logged: Vec<_> = log
        .iter()
        .map(|e| (e.name.clone(), e.session_id, e.kernel_id))
        .collect();
    assert_eq!(
        logged, told,
        "what was logged is what the fold told, in order"
    );
    let extent = store.session_event_log().await.unwrap();
    assert_eq!((extent.oldest, extent.newest), (1, told.len() as i64));
    assert_eq!(store.session_events(10, 5).await.unwrap(), log[10..15]);
    assert!(
        store
            .session_events(told.len() as i64, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.committed_positions().await.unwrap(),
        [CommittedPosition {
            source: SOURCE.into(),
            partition: 0,
            next_offset: msgs.len() as i64,
        }]
    );
}

/// Every commit that changes a session notes it, with its owner, in commit order and densely
/// numbered (what response caches follow); a commit that changes no session notes nothing; a
/// reset notes that everything changed.
async fn commits_note_the_sessions_they_change<S: Backend>(store: &S) {
    let before = store.changes_after(0, 10).await.unwrap();
    assert_eq!((before.head, before.changes.len()), (0, 0));
    let msgs = stream(20, 31, false);
    project(store, &msgs, 0, 37).await;
    let noted = store.changes_after(0, 1_000_000).await.unwrap();
    let seqs: Vec<i64> = noted.changes.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=noted.head).collect::<Vec<_>>(),
        "dense, in order"
    );
    assert!(noted.head >= 2, "several batches changed sessions");
    let mut all: HashSet<Uuid> = HashSet::new();
    for change in &noted.changes {
        assert!(!change.everything);
        assert!(change.sessions.is_sorted(), "{change:?}");
        let rows = store
            .sessions_by_ids(&change.sessions, &Scope::default())
            .await
            .unwrap();
        assert_eq!(
            rows.len(),
            change.sessions.len(),
            "every noted session exists"
        );
        let mut owners: Vec<Owner> = rows
            .iter()
            .map(|r| Owner {
                access_key: r.access_key.clone(),
                domain_name: r.domain_name.clone(),
                group_id: r.group_id,
            })
            .collect();
        owners.sort();
        owners.dedup();
        assert_eq!(change.owners, owners, "the owners of what it changed");
        all.extend(&change.sessions);
    }
    let sessions = store
        .list_sessions(&SessionListQuery {
            limit: 1000,
            ..SessionListQuery::default()
        })
        .await
        .unwrap();
    let stored: HashSet<Uuid> = sessions.items.iter().map(|s| s.id).collect();
    assert_eq!(all, stored, "every session was noted by some commit");
    let tail = store.changes_after(noted.head - 2, 1).await.unwrap();
    assert_eq!(tail.head, noted.head);
    assert_eq!(tail.changes, noted.changes[noted.changes.len() - 2..][..1]);

    // The same events again, on another partition: all duplicates, nothing changed.
    let again = fold_at(store, &msgs, 1, 0).await;
    let adv = [Advance {
        partition: 1,
        expected: None,
        next: msgs.len() as i64,
    }];
    let outcome = store
        .commit(Commit {
            source: SOURCE,
            advances: &adv,
            changes: &again,
            retire: &[],
        })
        .await
        .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed);
    assert_eq!(store.changes_after(0, 1).await.unwrap().head, noted.head);

    store.reset_read_model().await.unwrap();
    let reset = store.changes_after(noted.head, 10).await.unwrap();
    assert_eq!(reset.head, noted.head + 1);
    assert_eq!(
        reset
            .changes
            .iter()
            .map(|c| (c.seq, c.everything, c.sessions.len(), c.owners.len()))
            .collect::<Vec<_>>(),
        [(noted.head + 1, true, 0, 0)]
    );
}

async fn racing_instances_apply_a_batch_once<S: Backend>(store: &S) {
    project(store, &stream(3, 23, false), 0, 100).await;
    let before = store.positions(SOURCE).await.unwrap()[&0];
    let more = stream(20, 24, false);
    let changes = std::sync::Arc::new(fold_at(store, &more, 0, before).await);
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
                    retire: &[],
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
}

/// The same events published twice, to two partitions that two instances project: both load
/// before either commits, so both fold every event as new. The second commit must write
/// nothing (not apply the events twice) and say so; folded again, it finds them all seen.
async fn an_event_recorded_meanwhile_voids_the_batch<S: Backend>(store: &S) {
    let msgs = stream(4, 31, false);
    let n = msgs.len() as i64;
    let first = fold_at(store, &msgs, 0, 0).await;
    let second = fold_at(store, &msgs, 1, 0).await;
    let at = |partition| {
        [Advance {
            partition,
            expected: None,
            next: n,
        }]
    };
    let (on0, on1) = (at(0), at(1));
    let commit = |changes, advances| Commit {
        source: SOURCE,
        advances,
        changes,
        retire: &[],
    };
    assert_eq!(
        store.commit(commit(&first, &on0)).await.unwrap(),
        CommitOutcome::Committed
    );
    let after_first = store.counts().await.unwrap();
    assert_eq!(
        store.commit(commit(&second, &on1)).await.unwrap(),
        CommitOutcome::Conflict {
            partitions: vec![1]
        },
        "the second instance applied events the first had recorded"
    );
    assert_eq!(
        store.counts().await.unwrap(),
        after_first,
        "nothing written"
    );
    assert_eq!(store.positions(SOURCE).await.unwrap().get(&1), None);

    let again = fold_at(store, &msgs, 1, 0).await;
    assert!(
        again.sessions.is_empty() && again.seen.is_empty(),
        "all seen"
    );
    assert_eq!(
        store.commit(commit(&again, &on1)).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(store.all_sessions().await.unwrap(), model(&msgs).0);
}

async fn parked_events_survive_between_batches<S: Backend>(store: &S) {
    let cfg = SimConfig {
        sessions: 30,
        seed: 25,
        early_ratio: 1.0,
        ..SimConfig::default()
    };
    let msgs: Vec<Vec<u8>> = Simulator::new(cfg).map(|m| m.bytes).collect();
    let (expected, _) = model(&msgs);
    // Batch size 1 forces every parked event through the table.
    project(store, &msgs, 0, 1).await;
    assert_eq!(store.all_sessions().await.unwrap(), expected);
    assert_eq!(store.counts().await.unwrap().parked_events, 0);
}

async fn dead_letters_keep_bytes_reason_and_position<S: Backend>(store: &S) {
    let msgs = vec![b"garbage".to_vec(), b"{\"event_type\": \"nope\"}".to_vec()];
    project(store, &msgs, 40, 10).await;
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
    let after = store
        .dead_letters(&DeadLetterFilter {
            limit: 10,
            after_id: Some(all[0].id),
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1);

    // By id, and retired (deleted) inside a commit that moves no position.
    let by_id = |ids: Vec<i64>| DeadLetterFilter {
        limit: 10,
        ids,
        ..DeadLetterFilter::default()
    };
    let one = store.dead_letters(&by_id(vec![all[1].id])).await.unwrap();
    assert_eq!(one, vec![all[1].clone()]);
    let changes = Fold::default().finish();
    let outcome = store
        .commit(Commit {
            source: "conformance",
            advances: &[],
            changes: &changes,
            retire: &[all[0].id],
        })
        .await
        .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed);
    let left = store.dead_letters(&by_id(Vec::new())).await.unwrap();
    assert_eq!(left, vec![all[1].clone()]);
}

/// The default order's key: the latest of created_at, status_changed, terminated_at.
fn touched(s: &SessionState) -> chrono::DateTime<chrono::Utc> {
    let r = &s.session;
    r.created_at
        .max(r.status_changed)
        .max(r.terminated_at.unwrap_or(r.created_at))
}

async fn session_lists_filter_scope_order_and_count<S: Backend>(store: &S) {
    project(store, &stream(300, 26, true), 0, 500).await;
    let all = store.all_sessions().await.unwrap();
    let q = |f: &dyn Fn(&mut SessionListQuery)| {
        let mut q = SessionListQuery {
            limit: 1000,
            ..SessionListQuery::default()
        };
        f(&mut q);
        q
    };
    // Default order, paged: most recently touched first, id as tie-breaker.
    let mut expected: Vec<&SessionState> = all.iter().collect();
    expected.sort_by(|a, b| {
        touched(b)
            .cmp(&touched(a))
            .then(b.session.id.cmp(&a.session.id))
    });
    let mut got = Vec::new();
    for page in 0..4 {
        let p = store
            .list_sessions(&q(&|q| {
                q.limit = 100;
                q.offset = page * 100;
            }))
            .await
            .unwrap();
        assert_eq!(p.total_count as usize, all.len());
        got.extend(p.items.into_iter().map(|s| s.id));
    }
    assert_eq!(
        got,
        expected.iter().map(|s| s.session.id).collect::<Vec<_>>()
    );

    // Scope and filters; total_count counts the same set.
    let domain = all[0].session.domain_name.clone();
    let ak = all[0].session.access_key.clone();
    let group = all[0].session.group_id;
    type Keep<'a> = Box<dyn Fn(&SessionState) -> bool + 'a>;
    let cases: Vec<(SessionListQuery, Keep<'_>)> = vec![
        (
            q(&|q| {
                q.scope = Scope {
                    domain_name: Some(domain.clone()),
                    access_key: None,
                }
            }),
            Box::new(|s: &SessionState| s.session.domain_name == domain),
        ),
        (
            q(&|q| {
                q.scope = Scope {
                    domain_name: Some(domain.clone()),
                    access_key: Some(ak.clone()),
                }
            }),
            Box::new(|s: &SessionState| s.session.access_key == ak),
        ),
        (
            q(&|q| {
                q.scope.domain_name = Some("nowhere".into());
                q.access_key = Some(ak.clone());
            }),
            Box::new(|_: &SessionState| false),
        ),
        (
            q(&|q| q.group_id = Some(group)),
            Box::new(|s: &SessionState| s.session.group_id == group),
        ),
        (
            q(&|q| q.statuses = vec![Status::Running, Status::Cancelled]),
            Box::new(|s: &SessionState| {
                matches!(s.session.status, Status::Running | Status::Cancelled)
            }),
        ),
        (
            q(&|q| {
                q.domain_name = Some(domain.clone());
                q.statuses = vec![Status::Terminated];
            }),
            Box::new(|s: &SessionState| {
                s.session.domain_name == domain && s.session.status == Status::Terminated
            }),
        ),
    ];
    for (i, (query, keep)) in cases.iter().enumerate() {
        assert_page_with_containers(store, query, &all).await;
        let page = store.list_sessions(query).await.unwrap();
        let want: HashSet<Uuid> = all
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.session.id)
            .collect();
        assert_eq!(page.total_count as usize, want.len(), "case {i}");
        assert_eq!(
            page.items.iter().map(|s| s.id).collect::<HashSet<_>>(),
            want,
            "case {i}"
        );
    }

    // Explicit order: by name ascending, then descending.
    for asc in [true, false] {
        let query = q(&|q| {
            q.order = Some(Order {
                column: "name",
                ascending: asc,
            })
        });
        assert_page_with_containers(store, &query, &all).await;
        let page = store.list_sessions(&query).await.unwrap();
        let names: Vec<&str> = page.items.iter().map(|s| s.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        if !asc {
            sorted.reverse();
        }
        assert_eq!(names, sorted);
    }
    // Pages of the default order with their containers, the last one past the end.
    for offset in [0, 7, 290, 400] {
        let query = q(&|q| {
            q.limit = 13;
            q.offset = offset;
        });
        assert_page_with_containers(store, &query, &all).await;
    }
    // An order column outside the allow-list is refused, never interpolated.
    let bad_order = |q: &mut SessionListQuery| {
        q.order = Some(Order {
            column: "id; DROP TABLE sessions",
            ascending: true,
        })
    };
    assert!(store.list_sessions(&q(&bad_order)).await.is_err());
    assert!(
        store
            .list_sessions_with_containers(&q(&bad_order), KernelFields::All)
            .await
            .is_err()
    );
}

/// A page read with its containers is the page read alone, and the containers are exactly its
/// sessions' kernels, each session's master first (sessions without containers included).
async fn assert_page_with_containers<S: Backend>(
    store: &S,
    query: &SessionListQuery,
    all: &[SessionState],
) {
    let alone = store.list_sessions(query).await.unwrap();
    let by_id: std::collections::HashMap<Uuid, &SessionState> =
        all.iter().map(|s| (s.session.id, s)).collect();
    for fields in [KernelFields::All, KernelFields::WithoutJson] {
        let (page, containers) = store
            .list_sessions_with_containers(query, fields)
            .await
            .unwrap();
        assert_eq!(page, alone, "{query:?}");
        let mut got: std::collections::HashMap<Uuid, Vec<_>> = std::collections::HashMap::new();
        for k in containers {
            got.entry(k.session_id).or_default().push(k);
        }
        for s in &page.items {
            let mut kernels: Vec<_> = by_id[&s.id]
                .kernels
                .iter()
                .map(|k| fields.keep(k.clone()))
                .collect();
            kernels.sort_by_key(|k| k.ordinal);
            assert_eq!(
                got.remove(&s.id).unwrap_or_default(),
                kernels,
                "{query:?} {fields:?}: session {}",
                s.id
            );
        }
        assert!(
            got.is_empty(),
            "containers of sessions off the page: {got:?}"
        );
    }
}

async fn children_and_single_items_respect_scope<S: Backend>(store: &S) {
    project(store, &stream(300, 27, false), 0, 500).await;
    let all = store.all_sessions().await.unwrap();
    let by_id: std::collections::HashMap<Uuid, &SessionState> =
        all.iter().map(|s| (s.session.id, s)).collect();
    let ids: Vec<Uuid> = all.iter().map(|s| s.session.id).collect();

    // containers_of: every container, master first within a session.
    let containers = store.containers_of(&ids).await.unwrap();
    assert_eq!(
        containers.len(),
        all.iter().map(|s| s.kernels.len()).sum::<usize>()
    );
    for s in &all {
        let mine: Vec<_> = containers
            .iter()
            .filter(|k| k.session_id == s.session.id)
            .cloned()
            .collect();
        assert_eq!(mine, s.kernels);
    }

    // dependencies_of: existing dependencies, in order, scoped.
    let with_deps: Vec<&SessionState> = all
        .iter()
        .filter(|s| !s.session.dependencies.is_empty())
        .collect();
    assert!(!with_deps.is_empty());
    let parents: Vec<Uuid> = with_deps.iter().map(|s| s.session.id).collect();
    let deps = store
        .dependencies_of(&parents, &Scope::default())
        .await
        .unwrap();
    for p in &with_deps {
        let got: Vec<Uuid> = deps
            .iter()
            .filter(|(parent, _)| *parent == p.session.id)
            .map(|(_, d)| d.id)
            .collect();
        let want: Vec<Uuid> = p
            .session
            .dependencies
            .iter()
            .filter(|d| by_id.contains_key(d))
            .copied()
            .collect();
        assert_eq!(got, want);
    }
    let domain = with_deps[0].session.domain_name.clone();
    let scoped = store
        .dependencies_of(
            &parents,
            &Scope {
                domain_name: Some(domain.clone()),
                access_key: None,
            },
        )
        .await
        .unwrap();
    assert!(scoped.iter().all(|(_, d)| d.domain_name == domain));

    // Single items and container lists inside and outside the scope.
    let s = &all[0];
    let inside = Scope {
        domain_name: Some(s.session.domain_name.clone()),
        access_key: Some(s.session.access_key.clone()),
    };
    let outside = Scope {
        domain_name: Some("nowhere".into()),
        access_key: None,
    };
    assert_eq!(
        store
            .sessions_by_ids(&[s.session.id], &inside)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .sessions_by_ids(&[s.session.id], &outside)
            .await
            .unwrap()
            .is_empty()
    );
    // A session with its containers: the session's row and its kernels in order, or nothing.
    for state in all
        .iter()
        .filter(|x| x.kernels.len() > 1)
        .take(3)
        .chain([s])
    {
        let mut kernels = state.kernels.clone();
        kernels.sort_by_key(|k| k.ordinal);
        let scope = Scope {
            domain_name: Some(state.session.domain_name.clone()),
            access_key: None,
        };
        for fields in [KernelFields::All, KernelFields::WithoutJson] {
            let (row, containers) = store
                .session_with_containers(state.session.id, &scope, fields)
                .await
                .unwrap()
                .expect("in scope");
            let alone = store.sessions_by_ids(&[state.session.id], &scope).await;
            assert_eq!(row, alone.unwrap()[0]);
            let want: Vec<_> = kernels.iter().map(|k| fields.keep(k.clone())).collect();
            assert_eq!(containers, want, "{fields:?}");
        }
    }
    // The comparisons above are not vacuous: kernels hold stats and slots.
    assert!(
        all.iter()
            .flat_map(|s| &s.kernels)
            .any(|k| k.last_stat.is_some() && !k.occupied_slots.is_empty()),
        "the stream should give kernels stats and slots"
    );
    assert_eq!(
        store
            .session_with_containers(s.session.id, &outside, KernelFields::All)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .session_with_containers(Uuid::new_v4(), &Scope::default(), KernelFields::All)
            .await
            .unwrap(),
        None
    );
    let k = &s.kernels[0];
    assert_eq!(
        store.container(k.id, &inside).await.unwrap().as_ref(),
        Some(k)
    );
    assert_eq!(store.container(k.id, &outside).await.unwrap(), None);
    let list = |scope: Scope, role: Option<String>| ContainerListQuery {
        scope,
        session_id: s.session.id,
        role,
        order: Some(Order {
            column: "id",
            ascending: true,
        }),
        limit: 10,
        offset: 0,
    };
    let page = store
        .list_containers(&list(inside.clone(), None))
        .await
        .unwrap();
    assert_eq!(page.total_count as usize, s.kernels.len());
    let page = store
        .list_containers(&list(inside, Some("master".into())))
        .await
        .unwrap();
    assert_eq!((page.total_count, page.items[0].id), (1, s.session.id));
    let page = store.list_containers(&list(outside, None)).await.unwrap();
    assert_eq!((page.total_count, page.items.len()), (0, 0));
}

async fn keypairs_round_trip<S: Backend>(store: &S) {
    let kp = KeyPair {
        access_key: "AKIATEST000000000001".into(),
        secret_key: "s".repeat(40),
        user_id: Uuid::new_v4(),
        user_email: "a@example.com".into(),
        domain_name: "default".into(),
        role: Role::Admin,
        is_active: true,
        created_at: sessionview_events::truncate_to_micros(chrono::Utc::now()),
    };
    store.insert_keypair(&kp).await.unwrap();
    assert!(
        store.insert_keypair(&kp).await.is_err(),
        "access keys are unique"
    );
    assert_eq!(
        store.keypair(&kp.access_key).await.unwrap().as_ref(),
        Some(&kp)
    );
    assert_eq!(store.keypair("AKIANOBODY").await.unwrap(), None);
    assert_eq!(store.list_keypairs().await.unwrap(), vec![kp.clone()]);
    assert!(store.deactivate_keypair(&kp.access_key).await.unwrap());
    assert!(!store.deactivate_keypair("AKIANOBODY").await.unwrap());
    assert!(
        !store
            .keypair(&kp.access_key)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
}
