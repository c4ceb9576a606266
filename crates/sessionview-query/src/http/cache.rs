//! The response cache: answers to repeated identical requests (the same keypair, endpoint and
//! body), each kept with what it read (session ids; the owner filters of lists) and the point of
//! the store's change log it was computed at. The server's follower applies every commit's note
//! of what it changed (`ReadModel::changes_after`), then records the committed positions it read
//! before those notes. An answer is served only while no change after its point touched what it
//! read, and only when the follower has applied the changes of every commit up to the positions
//! the response reports: a cached answer is never older than the positions it states.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use lru::LruCache;
use sessionview_projection::{KernelRow, SessionRow};
use sessionview_store::changes::{Change, ChangesAfter, Owner};
use sessionview_store::live::{CommittedPosition, LogExtent, SessionEvent};
use sessionview_store::{
    ContainerListQuery, KernelFields, KeyPair, Page, PageWithContainers, ReadConnections,
    ReadFuture, ReadModel, Scope, SessionListQuery, SessionWithContainers,
};
use uuid::Uuid;

use super::positions::Positions;
use crate::schema::Db;

/// Most sessions (and owner patterns) whose last change the cache remembers; past that it
/// forgets them all and every answer it holds (a bound on memory under any write load).
const MAX_TRACKED: usize = 200_000;

/// How many notes the follower reads at a time.
const NOTES_PAGE: i64 = 1000;

/// The sessions a list may hold, as its filter and the caller's scope narrow them: `None` is any
/// value on that axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnerPattern {
    access_key: Option<String>,
    domain_name: Option<String>,
    group_id: Option<Uuid>,
}

impl OwnerPattern {
    /// Every pattern that `owner`'s sessions match: each axis either named or left open.
    fn matching(owner: &Owner) -> impl Iterator<Item = OwnerPattern> + '_ {
        (0u8..8).map(move |mask| OwnerPattern {
            access_key: (mask & 1 != 0).then(|| owner.access_key.clone()),
            domain_name: (mask & 2 != 0).then(|| owner.domain_name.clone()),
            group_id: (mask & 4 != 0).then_some(owner.group_id),
        })
    }

    fn of_scope(scope: &Scope) -> Self {
        Self {
            access_key: scope.access_key.clone(),
            domain_name: scope.domain_name.clone(),
            group_id: None,
        }
    }

    fn of_list(q: &SessionListQuery) -> Self {
        Self {
            access_key: q.access_key.clone().or_else(|| q.scope.access_key.clone()),
            domain_name: q
                .domain_name
                .clone()
                .or_else(|| q.scope.domain_name.clone()),
            group_id: q.group_id,
        }
    }
}

/// What one answer read.
#[derive(Debug, Clone, Default)]
pub(super) struct Reads {
    /// Sessions read by id (their containers are theirs).
    sessions: Vec<Uuid>,
    /// Sets of sessions read by filter (a list, or a read whose answer depends on which
    /// sessions exist in a scope).
    owners: Vec<OwnerPattern>,
    /// Something no note describes was read: never cached.
    uncacheable: bool,
}

/// A [`ReadModel`] that records what it was asked to read: the one a request's resolvers use.
pub(super) struct Recorder {
    inner: Db,
    reads: Mutex<Reads>,
}

impl Recorder {
    pub(super) fn new(inner: Db) -> Arc<Self> {
        Arc::new(Self {
            inner,
            reads: Mutex::new(Reads::default()),
        })
    }

    fn note(&self, f: impl FnOnce(&mut Reads)) {
        f(&mut self
            .reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// What was read so far.
    pub(super) fn reads(&self) -> Reads {
        self.reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ReadModel for Recorder {
    fn list_sessions<'a>(&'a self, q: &'a SessionListQuery) -> ReadFuture<'a, Page<SessionRow>> {
        self.note(|r| r.owners.push(OwnerPattern::of_list(q)));
        self.inner.list_sessions(q)
    }

    fn list_sessions_with_containers<'a>(
        &'a self,
        q: &'a SessionListQuery,
        fields: KernelFields,
    ) -> ReadFuture<'a, PageWithContainers> {
        self.note(|r| r.owners.push(OwnerPattern::of_list(q)));
        self.inner.list_sessions_with_containers(q, fields)
    }

    fn session_with_containers<'a>(
        &'a self,
        id: Uuid,
        scope: &'a Scope,
        fields: KernelFields,
    ) -> ReadFuture<'a, Option<SessionWithContainers>> {
        self.note(|r| r.sessions.push(id));
        self.inner.session_with_containers(id, scope, fields)
    }

    fn sessions_by_ids<'a>(
        &'a self,
        ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<SessionRow>> {
        self.note(|r| r.sessions.extend_from_slice(ids));
        self.inner.sessions_by_ids(ids, scope)
    }

    fn containers_of<'a>(&'a self, session_ids: &'a [Uuid]) -> ReadFuture<'a, Vec<KernelRow>> {
        self.note(|r| r.sessions.extend_from_slice(session_ids));
        self.inner.containers_of(session_ids)
    }

    fn dependencies_of<'a>(
        &'a self,
        session_ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<(Uuid, SessionRow)>> {
        // A dependency that does not exist yet is left out, and its creation does not touch the
        // session that names it: the answer depends on which sessions exist in the scope.
        self.note(|r| {
            r.sessions.extend_from_slice(session_ids);
            r.owners.push(OwnerPattern::of_scope(scope));
        });
        self.inner.dependencies_of(session_ids, scope)
    }

    fn list_containers<'a>(&'a self, q: &'a ContainerListQuery) -> ReadFuture<'a, Page<KernelRow>> {
        self.note(|r| r.sessions.push(q.session_id));
        self.inner.list_containers(q)
    }

    fn container<'a>(&'a self, id: Uuid, scope: &'a Scope) -> ReadFuture<'a, Option<KernelRow>> {
        Box::pin(async move {
            let found = self.inner.container(id, scope).await?;
            // A container that does not exist yet may be created in any session of the scope.
            self.note(|r| match &found {
                Some(k) => r.sessions.push(k.session_id),
                None => r.owners.push(OwnerPattern::of_scope(scope)),
            });
            Ok(found)
        })
    }

    fn keypair<'a>(&'a self, access_key: &'a str) -> ReadFuture<'a, Option<KeyPair>> {
        self.note(|r| r.uncacheable = true);
        self.inner.keypair(access_key)
    }

    fn ping(&self) -> ReadFuture<'_, ()> {
        self.inner.ping()
    }

    fn session_events(&self, after: i64, limit: i64) -> ReadFuture<'_, Vec<SessionEvent>> {
        self.note(|r| r.uncacheable = true);
        self.inner.session_events(after, limit)
    }

    fn session_event_log(&self) -> ReadFuture<'_, LogExtent> {
        self.note(|r| r.uncacheable = true);
        self.inner.session_event_log()
    }

    fn committed_positions(&self) -> ReadFuture<'_, Vec<CommittedPosition>> {
        self.note(|r| r.uncacheable = true);
        self.inner.committed_positions()
    }

    fn changes_after(&self, after: i64, limit: i64) -> ReadFuture<'_, ChangesAfter> {
        self.note(|r| r.uncacheable = true);
        self.inner.changes_after(after, limit)
    }

    fn commit_wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        self.inner.commit_wakeups()
    }

    fn statements_executed(&self) -> u64 {
        self.inner.statements_executed()
    }

    fn read_connections(&self) -> Option<ReadConnections> {
        self.inner.read_connections()
    }
}

/// Which request an answer belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub endpoint: &'static str,
    pub access_key: String,
    pub body: Bytes,
}

impl Key {
    fn bytes(&self) -> usize {
        self.access_key.len() + self.body.len()
    }
}

/// A cached answer.
#[derive(Debug)]
pub(super) struct Answer {
    /// The keypair it was answered for (a keypair re-created with other rights is another caller).
    caller: KeyPair,
    /// The change-log point it was computed at.
    at: i64,
    reads: Reads,
    /// The operation's metrics label.
    pub operation: String,
    /// The response body (JSON).
    pub body: Bytes,
}

impl Answer {
    fn bytes(&self) -> usize {
        // Body, reads and a fixed allowance for the rest.
        self.body.len() + self.reads.sessions.len() * 16 + self.reads.owners.len() * 64 + 256
    }
}

/// Where an answer computed now stands in the change log: taken before the request reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(i64);

/// Why a lookup found nothing to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Miss {
    /// No answer for this request.
    Absent,
    /// An answer, made stale by a change (or for another version of the keypair).
    Stale,
    /// The follower has not applied the changes up to the positions the response will report.
    Behind,
}

impl Miss {
    pub(super) const fn label(self) -> &'static str {
        match self {
            Miss::Absent => "miss",
            Miss::Stale => "stale",
            Miss::Behind => "behind",
        }
    }
}

struct Inner {
    answers: LruCache<Key, Arc<Answer>>,
    /// Bytes of `answers` (keys included).
    bytes: usize,
    /// The newest note applied.
    applied: i64,
    /// Answers computed before this point are stale (what happened before it is forgotten).
    floor: i64,
    /// The last note that changed each session, after `floor`.
    sessions: HashMap<Uuid, i64>,
    /// The last note that changed a session matching each pattern, after `floor`.
    owners: HashMap<OwnerPattern, i64>,
    /// Committed positions read before the notes up to `applied` were read: every commit up to
    /// them has been applied.
    positions: Arc<Positions>,
}

impl Inner {
    fn fresh(&self, at: i64, reads: &Reads) -> bool {
        at >= self.floor
            && reads
                .sessions
                .iter()
                .all(|id| self.sessions.get(id).is_none_or(|changed| *changed <= at))
            && reads
                .owners
                .iter()
                .all(|p| self.owners.get(p).is_none_or(|changed| *changed <= at))
    }

    /// Forgets everything up to `seq`.
    fn forget(&mut self, seq: i64) {
        self.floor = seq;
        self.applied = seq;
        self.sessions.clear();
        self.owners.clear();
        self.answers.clear();
        self.bytes = 0;
    }

    fn apply(&mut self, change: &Change) {
        if change.everything {
            self.forget(change.seq);
            return;
        }
        for id in &change.sessions {
            self.sessions.insert(*id, change.seq);
        }
        for owner in &change.owners {
            for pattern in OwnerPattern::matching(owner) {
                self.owners.insert(pattern, change.seq);
            }
        }
        self.applied = change.seq;
        if self.sessions.len() > MAX_TRACKED || self.owners.len() > MAX_TRACKED {
            self.forget(change.seq);
        }
    }

    fn evict_to(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some((key, answer)) = self.answers.pop_lru() else {
                self.bytes = 0;
                return;
            };
            self.bytes = self.bytes.saturating_sub(key.bytes() + answer.bytes());
        }
    }
}

/// The cache of one server: bounded by bytes, shared by its requests and its follower.
pub(super) struct ResponseCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    /// A cache of at most `budget` bytes of answers; `None` when `budget` is 0 (no cache).
    pub(super) fn new(budget: usize) -> Option<Arc<Self>> {
        (budget > 0).then(|| {
            Arc::new(Self {
                budget,
                inner: Mutex::new(Inner {
                    answers: LruCache::unbounded(),
                    bytes: 0,
                    applied: -1,
                    // Nothing is fresh until the follower has read the log once.
                    floor: i64::MAX,
                    sessions: HashMap::new(),
                    owners: HashMap::new(),
                    positions: Arc::new(Positions::default()),
                }),
            })
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer to serve for `key` to `caller`, if one is fresh and the follower has applied
    /// every commit up to `reported` (the positions the response will state).
    pub(super) fn lookup(
        &self,
        key: &Key,
        caller: &KeyPair,
        reported: &Positions,
    ) -> Result<Arc<Answer>, Miss> {
        let mut inner = self.inner();
        if !inner.positions.reaches(reported) {
            return Err(Miss::Behind);
        }
        let Some(answer) = inner.answers.get(key).cloned() else {
            return Err(Miss::Absent);
        };
        if answer.caller == *caller && inner.fresh(answer.at, &answer.reads) {
            return Ok(answer);
        }
        if let Some(old) = inner.answers.pop(key) {
            inner.bytes = inner.bytes.saturating_sub(key.bytes() + old.bytes());
        }
        Err(Miss::Stale)
    }

    /// The point an answer computed from now on stands at.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.inner().applied)
    }

    /// Keeps an answer computed since `ticket` with what it read, unless a change it read was
    /// applied meanwhile, it read something no note describes, or it is larger than an eighth
    /// of the budget. Returns whether it was kept.
    pub(super) fn insert(
        &self,
        key: Key,
        caller: &KeyPair,
        ticket: Ticket,
        mut reads: Reads,
        operation: String,
        body: Bytes,
    ) -> bool {
        if reads.uncacheable || body.len() > self.budget / 8 {
            return false;
        }
        reads.sessions.sort_unstable();
        reads.sessions.dedup();
        reads.owners.dedup();
        let answer = Answer {
            caller: caller.clone(),
            at: ticket.0,
            reads,
            operation,
            body,
        };
        let mut inner = self.inner();
        if !inner.fresh(answer.at, &answer.reads) {
            return false;
        }
        let key_bytes = key.bytes();
        let size = key_bytes + answer.bytes();
        if let Some(old) = inner.answers.put(key, Arc::new(answer)) {
            inner.bytes = inner.bytes.saturating_sub(key_bytes + old.bytes());
        }
        inner.bytes += size;
        inner.evict_to(self.budget);
        true
    }

    /// Bytes held now.
    pub(super) fn bytes(&self) -> usize {
        self.inner().bytes
    }

    /// Applies the notes after the last one applied, then records `positions` (committed
    /// positions read before those notes). On an error nothing is recorded: answers stay
    /// servable only up to the positions recorded before.
    pub(super) async fn follow(&self, store: &Db, positions: Positions) -> Result<(), String> {
        loop {
            let after = self.inner().applied;
            // The first read only learns where the log stands: nothing cached predates it.
            let (from, limit) = if after < 0 {
                (i64::MAX, 1)
            } else {
                (after, NOTES_PAGE)
            };
            let read = store
                .changes_after(from, limit)
                .await
                .map_err(|e| format!("cannot read the change log: {e}"))?;
            let full = after >= 0 && read.changes.len() as i64 == NOTES_PAGE;
            self.apply(after, &read);
            if !full {
                break;
            }
        }
        self.inner().positions = Arc::new(positions);
        Ok(())
    }

    /// Applies notes read after `after`.
    fn apply(&self, after: i64, read: &ChangesAfter) {
        let mut inner = self.inner();
        if inner.applied != after {
            // Another follower pass applied meanwhile; the next pass reads from there.
            return;
        }
        let first = read.changes.first().map(|c| c.seq);
        let missed = match first {
            // The first read: nothing held depends on what came before.
            _ if after < 0 => Some(read.head),
            Some(first) => (first != after + 1).then_some(first - 1),
            // The log is behind what was applied (restored, or made anew): start over from it.
            None if read.head < after => Some(read.head),
            // Notes were numbered but are gone (pruned before this follower read them).
            None if read.head > after => Some(read.head),
            None => None,
        };
        if let Some(seq) = missed {
            inner.forget(seq);
        }
        for change in &read.changes {
            if change.seq > inner.applied {
                inner.apply(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use sessionview_store::Role;

    fn caller(access_key: &str) -> KeyPair {
        KeyPair {
            access_key: access_key.to_owned(),
            secret_key: "secret".to_owned(),
            user_id: Uuid::nil(),
            user_email: "u@example.com".to_owned(),
            domain_name: "default".to_owned(),
            role: Role::User,
            is_active: true,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    fn key(body: &'static str) -> Key {
        Key {
            endpoint: "/admin/gql",
            access_key: "AK".to_owned(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn owner(access_key: &str, group: u128) -> Owner {
        Owner {
            access_key: access_key.to_owned(),
            domain_name: "default".to_owned(),
            group_id: Uuid::from_u128(group),
        }
    }

    fn change(seq: i64, sessions: &[u128], owners: Vec<Owner>) -> Change {
        Change {
            seq,
            everything: false,
            sessions: sessions.iter().map(|s| Uuid::from_u128(*s)).collect(),
            owners,
        }
    }

    fn read(head: i64, changes: Vec<Change>) -> ChangesAfter {
        ChangesAfter { head, changes }
    }

    fn session_read(id: u128) -> Reads {
        Reads {
            sessions: vec![Uuid::from_u128(id)],
            ..Reads::default()
        }
    }

    fn list_read(access_key: Option<&str>) -> Reads {
        Reads {
            owners: vec![OwnerPattern {
                access_key: access_key.map(str::to_owned),
                domain_name: Some("default".to_owned()),
                group_id: None,
            }],
            ..Reads::default()
        }
    }

    /// A cache that has read a log whose head is 10.
    fn started() -> Arc<ResponseCache> {
        let cache = ResponseCache::new(1 << 20).unwrap();
        cache.apply(-1, &read(10, vec![]));
        cache
    }

    fn put(cache: &ResponseCache, body: &'static str, reads: Reads) -> bool {
        let ticket = cache.ticket();
        cache.insert(
            key(body),
            &caller("AK"),
            ticket,
            reads,
            "op".into(),
            Bytes::from_static(b"{}"),
        )
    }

    fn get(cache: &ResponseCache, body: &'static str) -> Result<(), Miss> {
        cache
            .lookup(&key(body), &caller("AK"), &Positions::default())
            .map(|_| ())
    }

    #[test]
    fn nothing_is_served_before_the_follower_read_the_log() {
        let cache = ResponseCache::new(1 << 20).unwrap();
        assert!(!put(&cache, "a", session_read(1)));
        assert_eq!(get(&cache, "a"), Err(Miss::Absent));
        assert!(ResponseCache::new(0).is_none(), "a budget of 0 is no cache");
    }

    #[test]
    fn a_change_to_a_session_read_makes_the_answer_stale_and_no_other() {
        let cache = started();
        assert!(put(&cache, "one", session_read(1)));
        assert!(put(&cache, "two", session_read(2)));
        assert_eq!(get(&cache, "one"), Ok(()));
        cache.apply(10, &read(11, vec![change(11, &[1], vec![owner("AK", 5)])]));
        assert_eq!(get(&cache, "one"), Err(Miss::Stale));
        assert_eq!(
            get(&cache, "one"),
            Err(Miss::Absent),
            "a stale answer is dropped"
        );
        assert_eq!(get(&cache, "two"), Ok(()));
    }

    #[test]
    fn a_list_is_stale_when_any_session_its_filter_admits_changes() {
        let cache = started();
        assert!(put(&cache, "mine", list_read(Some("AK"))));
        assert!(put(&cache, "domain", list_read(None)));
        // Another user's session: the domain's list changes, this user's does not.
        cache.apply(
            10,
            &read(11, vec![change(11, &[9], vec![owner("OTHER", 5)])]),
        );
        assert_eq!(get(&cache, "mine"), Ok(()));
        assert_eq!(get(&cache, "domain"), Err(Miss::Stale));
        cache.apply(11, &read(12, vec![change(12, &[8], vec![owner("AK", 6)])]));
        assert_eq!(get(&cache, "mine"), Err(Miss::Stale));
    }

    #[test]
    fn an_answer_computed_across_a_change_it_read_is_not_kept() {
        let cache = started();
        let ticket = cache.ticket();
        // The change is applied while the request reads.
        cache.apply(10, &read(11, vec![change(11, &[1], vec![owner("AK", 5)])]));
        let kept = cache.insert(
            key("one"),
            &caller("AK"),
            ticket,
            session_read(1),
            "op".into(),
            Bytes::from_static(b"{}"),
        );
        assert!(!kept);
        assert!(
            put(&cache, "one", session_read(1)),
            "computed after it: kept"
        );
        assert_eq!(get(&cache, "one"), Ok(()));
    }

    #[test]
    fn everything_a_missed_note_or_a_log_made_anew_forgets_all() {
        for (after_head, changes) in [
            (
                12,
                vec![Change {
                    seq: 11,
                    everything: true,
                    sessions: vec![],
                    owners: vec![],
                }],
            ),
            (20, vec![change(15, &[7], vec![owner("X", 1)])]),
            (20, vec![]),
            (3, vec![]),
        ] {
            let cache = started();
            assert!(put(&cache, "one", session_read(1)));
            cache.apply(10, &read(after_head, changes.clone()));
            assert_eq!(get(&cache, "one"), Err(Miss::Absent), "{changes:?}");
            assert!(put(&cache, "one", session_read(1)));
            assert_eq!(get(&cache, "one"), Ok(()));
        }
    }

    #[test]
    fn answers_wait_for_the_positions_the_response_reports() {
        let cache = started();
        assert!(put(&cache, "one", session_read(1)));
        let ahead = Positions::from_committed(vec![CommittedPosition {
            source: "t".into(),
            partition: 0,
            next_offset: 5,
        }]);
        assert_eq!(
            cache.lookup(&key("one"), &caller("AK"), &ahead).map(|_| ()),
            Err(Miss::Behind)
        );
        cache.inner().positions = Arc::new(ahead.clone());
        assert!(cache.lookup(&key("one"), &caller("AK"), &ahead).is_ok());
    }

    #[test]
    fn another_version_of_the_keypair_is_another_caller() {
        let cache = started();
        assert!(put(&cache, "one", session_read(1)));
        let mut admin = caller("AK");
        admin.role = Role::Admin;
        assert_eq!(
            cache
                .lookup(&key("one"), &admin, &Positions::default())
                .map(|_| ()),
            Err(Miss::Stale)
        );
    }

    #[test]
    fn the_budget_bounds_the_bytes_held_and_uncacheable_reads_are_not_kept() {
        let cache = ResponseCache::new(16 * 1024).unwrap();
        cache.apply(-1, &read(0, vec![]));
        for i in 0..100 {
            let body: &'static str = format!("q{i}").leak();
            let ticket = cache.ticket();
            cache.insert(
                key(body),
                &caller("AK"),
                ticket,
                session_read(i),
                "op".into(),
                Bytes::from(vec![b'x'; 1000]),
            );
            assert!(cache.bytes() <= 16 * 1024);
        }
        assert_eq!(get(&cache, "q99"), Ok(()));
        assert_eq!(get(&cache, "q0"), Err(Miss::Absent), "evicted");
        let reads = Reads {
            uncacheable: true,
            ..Reads::default()
        };
        assert!(!put(&cache, "events", reads));
        let ticket = cache.ticket();
        assert!(
            !cache.insert(
                key("huge"),
                &caller("AK"),
                ticket,
                session_read(1),
                "op".into(),
                Bytes::from(vec![b'x'; 4 * 1024]),
            ),
            "larger than an eighth of the budget"
        );
    }

    #[test]
    fn tracking_is_bounded() {
        let cache = started();
        assert!(put(&cache, "one", session_read(1)));
        let many: Vec<u128> = (100..100 + MAX_TRACKED as u128 + 1).collect();
        cache.apply(10, &read(11, vec![change(11, &many, vec![])]));
        assert!(cache.inner().sessions.is_empty());
        assert_eq!(get(&cache, "one"), Err(Miss::Absent));
    }
}
