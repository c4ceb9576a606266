//! Fold tests: duplicates, parking, dead letters, and batch-size invariance on simulated streams.

use super::*;
use proptest::prelude::*;
use sessionview_simulator::{SimConfig, Simulator};

fn pos(offset: i64) -> Position {
    Position {
        partition: 0,
        offset,
    }
}

fn fold_all(messages: &[Vec<u8>]) -> Fold {
    let mut fold = Fold::new();
    for (i, m) in messages.iter().enumerate() {
        fold.apply_bytes("t", pos(i as i64), m);
    }
    fold
}

fn sim(cfg: SimConfig) -> Vec<Vec<u8>> {
    Simulator::new(cfg).map(|m| m.bytes).collect()
}

fn tables(fold: &Fold) -> Vec<SessionState> {
    let mut v: Vec<_> = fold.sessions().values().cloned().collect();
    v.sort_by_key(|s| s.session.id);
    v
}

/// Folds `messages` in batches of `size`, persisting between batches the way the store does:
/// only what `Changes` says, and loading only what `LoadRequest` asks for.
/// Also returns what listeners were told, batch after batch.
fn fold_in_batches(
    messages: &[Vec<u8>],
    size: usize,
) -> (Vec<SessionState>, usize, usize, Vec<LiveEvent>) {
    let mut sessions: HashMap<Uuid, SessionState> = HashMap::new();
    let mut seen: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut parked: Vec<ParkedEvent> = Vec::new();
    let mut dead = 0;
    let mut live = Vec::new();
    // Running session counts as the store keeps them (sums of the batches' deltas).
    let mut counts: BTreeMap<(String, Status, String, Uuid), i64> = BTreeMap::new();
    for (b, chunk) in messages.chunks(size).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let (decoded, req) = plan(&refs);
        let loaded = Loaded {
            sessions: req
                .session_ids
                .iter()
                .filter_map(|id| sessions.get(id).map(|s| (*id, s.clone())))
                .collect(),
            seen: req
                .events
                .iter()
                .filter(|e| {
                    seen.get(&e.session_id)
                        .is_some_and(|ids| ids.contains(&e.event_id))
                })
                .copied()
                .collect(),
            seen_counts: seen
                .iter()
                .filter(|(s, _)| req.events.iter().any(|e| e.session_id == **s))
                .map(|(s, ids)| (*s, ids.len() as u32))
                .collect(),
            parked: parked
                .iter()
                .filter(|p| req.parked_for.contains(&p.session_id))
                .cloned()
                .collect(),
            kernel_owners: sessions
                .values()
                .flat_map(|s| s.kernels.iter().map(|k| (k.id, s.session.id)))
                .filter(|(k, _)| req.kernel_ids.contains(k))
                .collect(),
        };
        let mut fold = Fold::from_loaded(loaded);
        for (i, (bytes, d)) in refs.iter().zip(decoded).enumerate() {
            fold.apply_decoded("t", pos((b * size + i) as i64), bytes, d);
        }
        let changes = fold.finish();
        // Only the rows the changes say are dirty reach the "store"; the others keep what an
        // earlier batch wrote, so a row changed but not marked dirty shows up as a difference.
        let rows: Vec<SessionRow> = changes.session_rows().cloned().collect();
        let kernels: Vec<KernelRow> = changes.whole_kernel_rows().cloned().collect();
        // Of these only `last_stat` is written, as the PostgreSQL store does.
        let stats: Vec<KernelRow> = changes.stat_kernel_rows().cloned().collect();
        assert!(
            stats.iter().all(|s| kernels.iter().all(|k| k.id != s.id)),
            "a kernel is written whole or by its statistics, never both"
        );
        assert_eq!(
            changes.kernel_rows().count(),
            kernels.len() + stats.len(),
            "every kernel row to write is written whole or by its statistics"
        );
        for s in &changes.sessions {
            sessions.entry(s.session.id).or_insert_with(|| s.clone());
        }
        for r in rows {
            if let Some(s) = sessions.get_mut(&r.id) {
                s.session = r;
            }
        }
        for k in kernels {
            if let Some(s) = sessions.get_mut(&k.session_id)
                && let Some(slot) = s.kernels.iter_mut().find(|x| x.id == k.id)
            {
                *slot = k;
            }
        }
        for k in stats {
            let slot = sessions
                .get_mut(&k.session_id)
                .and_then(|s| s.kernels.iter_mut().find(|x| x.id == k.id));
            // The store updates a row it already has: the kernel must be stored.
            let Some(slot) = slot else {
                panic!("statistics of kernel {} that is not stored", k.id)
            };
            slot.last_stat = k.last_stat;
        }
        for s in &changes.seen {
            let record = seen.entry(s.session_id).or_default();
            assert_eq!(
                record.len() as u32,
                s.stored,
                "appended after what was loaded"
            );
            assert!(
                s.ids.iter().all(|id| !record.contains(id)),
                "an id recorded twice"
            );
            record.extend(&s.ids);
        }
        parked.retain(|p| !changes.released.contains(&(p.source.clone(), p.position)));
        parked.extend(changes.parked);
        dead += changes.dead_letters.len();
        live.extend(changes.live);
        for c in changes.counts {
            assert_ne!(c.delta, 0, "a zero delta was emitted");
            *counts
                .entry((c.access_key, c.status, c.domain_name, c.group_id))
                .or_default() += c.delta;
        }
    }
    counts.retain(|_, n| *n != 0);
    let mut expected: BTreeMap<(String, Status, String, Uuid), i64> = BTreeMap::new();
    for s in sessions.values() {
        let r = &s.session;
        *expected
            .entry((
                r.access_key.clone(),
                r.status,
                r.domain_name.clone(),
                r.group_id,
            ))
            .or_default() += 1;
    }
    assert_eq!(
        counts, expected,
        "running counts drifted from the rows (batch size {size})"
    );
    let mut v: Vec<_> = sessions.into_values().collect();
    v.sort_by_key(|s| s.session.id);
    (v, parked.len(), dead, live)
}

#[test]
fn duplicates_have_no_effect_wherever_they_land() {
    let clean = sim(SimConfig {
        sessions: 150,
        seed: 11,
        ..SimConfig::default()
    });
    let dup = sim(SimConfig {
        sessions: 150,
        seed: 11,
        duplicate_ratio: 0.1,
        ..SimConfig::default()
    });
    assert!(dup.len() > clean.len());
    let a = fold_all(&clean);
    let b = fold_all(&dup);
    assert_eq!(tables(&a), tables(&b));
    let dups = b
        .finish()
        .tally
        .iter()
        .filter(|((_, o), _)| *o == Outcome::Duplicate)
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(dups as usize, dup.len() - clean.len());
}

#[test]
fn early_events_are_applied_in_order_after_their_enqueue() {
    let clean = sim(SimConfig {
        sessions: 150,
        seed: 12,
        ..SimConfig::default()
    });
    let early = sim(SimConfig {
        sessions: 150,
        seed: 12,
        early_ratio: 0.3,
        ..SimConfig::default()
    });
    let a = fold_all(&clean);
    let b = fold_all(&early);
    assert_eq!(tables(&a), tables(&b));
    assert_eq!(b.parked().count(), 0, "everything parked was released");
    let parked = b
        .finish()
        .tally
        .iter()
        .filter(|((_, o), _)| *o == Outcome::Parked)
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert!(parked > 0, "the early stream must actually park something");
}

#[test]
fn poison_is_dead_lettered_and_the_rest_is_projected() {
    let clean = sim(SimConfig {
        sessions: 200,
        seed: 13,
        ..SimConfig::default()
    });
    let poisoned = sim(SimConfig {
        sessions: 200,
        seed: 13,
        poison_ratio: 0.2,
        ..SimConfig::default()
    });
    let a = fold_all(&clean);
    let b = fold_all(&poisoned);
    assert_eq!(tables(&a), tables(&b));
    let dead = b.dead_letters();
    assert_eq!(dead.len(), poisoned.len() - clean.len());
    let labels: HashSet<_> = dead.iter().map(|d| d.label).collect();
    for l in [
        "malformed",
        "unknown_type",
        "bad_field",
        "unknown_kernel",
        "unknown_version",
    ] {
        assert!(labels.contains(l), "no {l} dead letter among {labels:?}");
    }
    for d in dead {
        assert!(!d.reason.is_empty() && !d.bytes.is_empty());
    }
}

#[test]
fn parked_events_of_a_dead_lettered_enqueue_stay_parked() {
    let sid = "12c45b55-ce3c-418d-9c58-223bbba307f1";
    let bad_enqueue = format!(
        r#"{{"event_id":"00000000-0000-4000-8000-000000000001","event_type":"session_enqueued","schema_version":1,"occurred_at":"2020-01-01T00:00:00Z","session_id":"{sid}","payload":{{"kernels":[]}}}}"#
    );
    let preparing = format!(
        r#"{{"event_id":"00000000-0000-4000-8000-000000000002","event_type":"kernel_preparing","schema_version":1,"occurred_at":"2020-01-01T00:00:01Z","session_id":"{sid}","kernel_id":"{sid}","payload":{{}}}}"#
    );
    let mut fold = Fold::new();
    assert_eq!(
        fold.apply_bytes("t", pos(0), preparing.as_bytes()),
        Outcome::Parked
    );
    assert_eq!(
        fold.apply_bytes("t", pos(1), bad_enqueue.as_bytes()),
        Outcome::DeadLettered
    );
    assert_eq!(fold.parked().count(), 1);
    assert!(fold.sessions().is_empty());
    // A re-delivered parked event is a duplicate, not parked twice.
    assert_eq!(
        fold.apply_bytes("t", pos(2), preparing.as_bytes()),
        Outcome::Duplicate
    );
    assert_eq!(fold.parked().count(), 1);
}

#[test]
fn blank_and_garbage_lines_are_dead_letters_with_their_bytes() {
    let mut fold = Fold::new();
    assert_eq!(
        fold.apply_bytes("t", pos(0), b"not json"),
        Outcome::DeadLettered
    );
    let d = &fold.dead_letters()[0];
    assert_eq!(d.bytes, b"not json");
    assert_eq!(d.label, "malformed");
    assert_eq!(d.position, pos(0));
}

#[test]
fn batch_boundaries_do_not_change_the_result() {
    let msgs = sim(SimConfig {
        sessions: 120,
        seed: 14,
        duplicate_ratio: 0.1,
        early_ratio: 0.3,
        poison_ratio: 0.1,
        ..SimConfig::default()
    });
    let whole = fold_all(&msgs);
    let expected = tables(&whole);
    let dead = whole.dead_letters().len();
    let told = whole.finish().live;
    assert!(told.iter().any(|e| e.name == SESSION_STARTED));
    for size in [1, 7, 64, 1000] {
        let (got, parked, got_dead, live) = fold_in_batches(&msgs, size);
        assert_eq!(got, expected, "batch size {size}");
        assert_eq!(
            live, told,
            "batch size {size}: listeners are told the same, in order"
        );
        assert_eq!(parked, 0, "batch size {size}");
        assert_eq!(got_dead, dead, "batch size {size}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Rule 4: applying a stream twice gives exactly the tables of applying it once.
    #[test]
    fn applying_a_stream_twice_equals_once(seed in 0u64..10_000, sessions in 1u64..40, batch in 1usize..50) {
        let msgs = sim(SimConfig { sessions, seed, duplicate_ratio: 0.05, early_ratio: 0.2, ..SimConfig::default() });
        let twice: Vec<_> = msgs.iter().chain(msgs.iter()).cloned().collect();
        let (once, _, _, told) = fold_in_batches(&msgs, batch);
        let (again, _, _, told_again) = fold_in_batches(&twice, batch);
        prop_assert_eq!(once, again);
        // A duplicate is never told.
        prop_assert_eq!(told, told_again);
    }
}

#[test]
fn a_kernel_is_dirty_whole_or_by_its_statistics_never_both() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut d = DirtyRows::default();
    d.kernel_stat(a);
    d.kernel_stat(a);
    let set = |ids: &[Uuid]| ids.iter().copied().collect::<HashSet<_>>();
    assert_eq!((d.kernels.clone(), d.stats.clone()), (set(&[]), set(&[a])));
    // Another change of the same kernel: written whole, no longer by its statistics.
    d.kernel(a);
    assert_eq!((d.kernels.clone(), d.stats.clone()), (set(&[a]), set(&[])));
    // A later stat sync of a kernel written whole adds nothing.
    d.kernel_stat(a);
    d.kernel_stat(b);
    assert_eq!((d.kernels.clone(), d.stats.clone()), (set(&[a]), set(&[b])));
    // A created session writes every kernel whole.
    let mut all = DirtyRows::all();
    all.kernel_stat(b);
    assert!(all.stats.is_empty());
}

/// A `session_enqueued` of `session` whose kernels are `master` (= `session`) plus `workers`.
fn enqueue_with(session: Uuid, workers: &[Uuid], event: u128, domain: &str) -> Vec<u8> {
    let mut kernels = vec![serde_json::json!({
        "kernel_id": session, "role": "master", "occupied_slots": {"cpu": "1"}
    })];
    kernels.extend(workers.iter().map(
        |w| serde_json::json!({"kernel_id": w, "role": "worker", "occupied_slots": {"cpu": "1"}}),
    ));
    serde_json::json!({
        "event_id": Uuid::from_u128(event), "event_type": "session_enqueued", "schema_version": 1,
        "occurred_at": "2020-02-16T15:47:28.997335+00:00", "session_id": session,
        "payload": {
            "name": "s", "type": "batch", "image": "python:3.8", "registry": "cr",
            "domain_name": domain, "group_name": "g", "user_email": "u@x", "access_key": "AK",
            "group_id": Uuid::from_u128(77), "user_id": Uuid::from_u128(78), "kernels": kernels,
        },
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_kernel_id_of_another_session_is_a_dead_letter_and_the_owner_is_untouched() {
    let (a, b, c) = (
        Uuid::from_u128(0xA),
        Uuid::from_u128(0xB),
        Uuid::from_u128(0xC),
    );
    let worker = Uuid::from_u128(0xA1);
    let first = enqueue_with(a, &[worker], 1, "d1");
    // B reuses A's worker; C reuses A's master as a worker.
    let reuse_worker = enqueue_with(b, &[worker], 2, "d2");
    let reuse_master = enqueue_with(c, &[a], 3, "d2");
    // Within one fold (one batch) ...
    let fold = fold_all(&[first.clone(), reuse_worker.clone(), reuse_master.clone()]);
    let labels: Vec<_> = fold.dead_letters().iter().map(|d| d.label).collect();
    assert_eq!(labels, ["kernel_conflict", "kernel_conflict"]);
    assert!(fold.dead_letters()[0].reason.contains(&a.to_string()));
    assert_eq!(fold.sessions().len(), 1);
    assert_eq!(fold.sessions()[&a].kernels.len(), 2);
    // ... and across batches: the store says who owns the kernel.
    let (decoded, req) = plan(&[reuse_worker.as_slice()]);
    assert_eq!(req.kernel_ids, [b, worker]);
    let mut later = Fold::from_loaded(Loaded {
        kernel_owners: [(worker, a)].into(),
        ..Loaded::default()
    });
    for d in decoded {
        assert_eq!(
            later.apply_decoded("t", pos(9), &reuse_worker, d),
            Outcome::DeadLettered
        );
    }
    assert_eq!(later.dead_letters()[0].label, "kernel_conflict");
    assert!(later.finish().sessions.is_empty());
}

#[test]
fn dead_letter_reasons_are_storable() {
    assert_eq!(storable_reason("a\0b"), "a\\u0000b");
    let long = "é".repeat(MAX_REASON_BYTES);
    let cut = storable_reason(&long);
    assert!(
        cut.len() <= MAX_REASON_BYTES && cut.ends_with('…'),
        "{}",
        cut.len()
    );
    // An oversized event's dead letter keeps a bounded prefix of its bytes.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let mut fold = Fold::new();
    assert_eq!(fold.apply_bytes("t", pos(0), &huge), Outcome::DeadLettered);
    let d = &fold.dead_letters()[0];
    assert_eq!((d.label, d.bytes.len()), ("oversized", 64 * 1024));
    assert!(d.reason.contains("2097152 bytes"), "{}", d.reason);
}

fn kernel_event(
    n: u128,
    ty: &str,
    session: Uuid,
    kernel: Uuid,
    payload: serde_json::Value,
) -> Vec<u8> {
    serde_json::json!({
        "event_id": Uuid::from_u128(n), "event_type": ty, "schema_version": 1,
        "occurred_at": "2020-02-16T15:48:00+00:00", "session_id": session, "kernel_id": kernel,
        "payload": payload,
    })
    .to_string()
    .into_bytes()
}

#[test]
fn listeners_are_told_applied_events_and_the_derived_session_changes() {
    let (s, w) = (Uuid::from_u128(10), Uuid::from_u128(11));
    let empty = serde_json::json!({});
    let msgs = vec![
        // Early: parked, told only once released, right after the enqueue.
        kernel_event(2, "kernel_preparing", s, s, empty.clone()),
        enqueue_with(s, &[w], 1, "d"),
        kernel_event(
            3,
            "kernel_started",
            s,
            w,
            serde_json::json!({"container_id": "c2"}),
        ),
        kernel_event(
            4,
            "kernel_started",
            s,
            s,
            serde_json::json!({"container_id": "c1"}),
        ),
        kernel_event(
            4,
            "kernel_started",
            s,
            s,
            serde_json::json!({"container_id": "c1"}),
        ),
        kernel_event(5, "kernel_stat_sync", s, s, serde_json::json!({"stat": {}})),
        kernel_event(
            6,
            "kernel_terminated",
            s,
            s,
            serde_json::json!({"reason": "user-requested"}),
        ),
        // After terminal: ignored, not told.
        kernel_event(
            7,
            "kernel_started",
            s,
            s,
            serde_json::json!({"container_id": "c9"}),
        ),
    ];
    let told = fold_all(&msgs).finish().live;
    type Told<'a> = (&'a str, Option<Uuid>, Option<&'a str>, Option<&'a str>);
    let got: Vec<Told> = told
        .iter()
        .map(|e| {
            (
                e.name,
                e.kernel_id,
                e.cluster_role.as_deref(),
                e.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("session_enqueued", None, None, None),
            ("kernel_preparing", Some(s), Some("master"), None),
            ("kernel_started", Some(w), Some("worker"), None),
            ("kernel_started", Some(s), Some("master"), None),
            (SESSION_STARTED, None, None, None),
            (
                "kernel_terminated",
                Some(s),
                Some("master"),
                Some("user-requested")
            ),
            (SESSION_TERMINATED, None, None, Some("user-requested")),
        ]
    );
    assert!(told.iter().all(|e| e.session_id == s
        && e.session_name == "s"
        && e.access_key == "AK"
        && e.domain_name == "d"
        && e.group_name == "g"));
}

#[test]
fn an_event_id_is_a_duplicate_within_its_session_whatever_the_batches() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    // Session b's enqueue reuses the id of a's enqueue (a producer's bug): it is b's own event.
    // Both are then delivered again; a stat sync of b reuses an id of a's as well.
    let stat = |n, s| kernel_event(n, "kernel_stat_sync", s, s, serde_json::json!({"stat": {}}));
    let stream = [
        enqueue_with(a, &[], 10, "d"),
        enqueue_with(b, &[], 10, "d"),
        stat(11, a),
        enqueue_with(a, &[], 10, "d"),
        stat(11, b),
        enqueue_with(b, &[], 10, "d"),
        stat(11, a),
    ];
    let outcomes = |size: usize| {
        let mut all = Vec::new();
        let mut loaded_seen: Vec<EventKey> = Vec::new();
        let mut stored: HashMap<Uuid, SessionState> = HashMap::new();
        for (n, chunk) in stream.chunks(size).enumerate() {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (decoded, req) = plan(&refs);
            let loaded = Loaded {
                sessions: stored.clone(),
                seen: req
                    .events
                    .iter()
                    .filter(|e| loaded_seen.contains(e))
                    .copied()
                    .collect(),
                ..Loaded::default()
            };
            let mut fold = Fold::from_loaded(loaded);
            for (i, (bytes, d)) in refs.iter().zip(decoded).enumerate() {
                all.push(fold.apply_decoded("t", pos((n * size + i) as i64), bytes, d));
            }
            let changes = fold.finish();
            for s in &changes.seen {
                loaded_seen.extend(s.ids.iter().map(|&event_id| EventKey {
                    session_id: s.session_id,
                    event_id,
                }));
            }
            for s in changes.sessions {
                stored.insert(s.session.id, s);
            }
        }
        all
    };
    use Outcome::{Applied, Duplicate};
    let expected = vec![
        Applied, Applied, Applied, Duplicate, Applied, Duplicate, Duplicate,
    ];
    for size in 1..=stream.len() {
        assert_eq!(outcomes(size), expected, "batches of {size}");
    }
}
