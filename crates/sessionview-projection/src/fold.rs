//! Folding a batch of raw messages into row changes: dedup by `event_id`, parking, dead letters.
//!
//! The same [`Fold`] serves the projector (one batch at a time, over rows loaded from the store) and
//! tests (a whole stream over an empty start), so there is exactly one implementation of the rules.

use std::collections::{BTreeMap, HashMap, HashSet};

use sessionview_events::{
    DEAD_LETTER_KEEP_BYTES, DEFAULT_MAX_EVENT_BYTES, DecodeError, DecodeErrorKind, Event,
    EventBody, Status,
};
use uuid::Uuid;

use crate::apply::{Effect, Reject, apply};
use crate::rows::{KernelRow, SessionRow, SessionState};

/// Where a message sits in its source: a Kafka partition and offset, or line `offset` of a file
/// (partition 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// What a listener of `GET /events/session` is told about one applied event: the contract's event
/// names (the event types, and the derived `session_started`, `session_terminated`,
/// `session_cancelled`), with the session's filter columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    pub name: &'static str,
    pub session_id: Uuid,
    /// Kernel events only.
    pub kernel_id: Option<Uuid>,
    /// Kernel events only: the kernel's role.
    pub cluster_role: Option<String>,
    pub reason: Option<String>,
    pub session_name: String,
    pub access_key: String,
    pub domain_name: String,
    pub group_name: String,
}

/// The names of the derived live events.
pub const SESSION_STARTED: &str = "session_started";
pub const SESSION_TERMINATED: &str = "session_terminated";
pub const SESSION_CANCELLED: &str = "session_cancelled";

/// An event waiting for its session's `session_enqueued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The source the event came from (a topic, or `file:PATH`).
    pub source: String,
    pub position: Position,
    pub session_id: Uuid,
    pub event_id: Uuid,
    pub bytes: Vec<u8>,
}

/// An event that cannot be applied, kept with its bytes, position and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source: String,
    pub position: Position,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub session_id: Option<Uuid>,
    /// A short, stable label such as `malformed` or `unknown_kernel`.
    pub label: &'static str,
    /// The full human-readable reason, naming the event type and field.
    pub reason: String,
    pub bytes: Vec<u8>,
}

/// The most a dead letter's reason holds, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// Text that any store can hold as a reason: U+0000 written as `\u0000`, at most
/// [`MAX_REASON_BYTES`] (cut at a character boundary, marked with `…`).
pub fn storable_reason(reason: &str) -> String {
    let mut out = if reason.contains('\0') {
        reason.replace('\0', "\\u0000")
    } else {
        reason.to_owned()
    };
    if out.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - '…'.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

impl DeadLetter {
    /// The dead letter of a message that did not decode. An oversized message keeps only its
    /// first [`DEAD_LETTER_KEEP_BYTES`] (its reason has the full length and SHA-256).
    pub fn undecodable(
        source: &str,
        position: Position,
        bytes: &[u8],
        err: &DecodeError,
        ids: Option<(Uuid, Uuid)>,
    ) -> Self {
        let kept = match err.kind {
            DecodeErrorKind::TooLarge { .. } => &bytes[..bytes.len().min(DEAD_LETTER_KEEP_BYTES)],
            _ => bytes,
        };
        Self {
            source: source.to_owned(),
            position,
            event_id: ids.map(|(event, _)| event),
            event_type: err.event_type.as_deref().map(storable_reason),
            session_id: ids.map(|(_, session)| session),
            label: err.label(),
            reason: storable_reason(&err.to_string()),
            bytes: kept.to_vec(),
        }
    }

    /// The dead letter of a decoded event that cannot be applied.
    pub fn rejected(
        source: &str,
        position: Position,
        bytes: &[u8],
        event: &Event,
        label: &'static str,
        reason: &str,
    ) -> Self {
        Self {
            source: source.to_owned(),
            position,
            event_id: Some(event.event_id),
            event_type: Some(event.event_type().as_str().to_owned()),
            session_id: Some(event.session_id),
            label,
            reason: storable_reason(&format!("{}: {reason}", event.event_type())),
            bytes: bytes.to_vec(),
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Applied,
    /// Valid, but targets a terminal kernel (counted, not applied).
    Ignored,
    /// Same `event_id` as an event already applied, parked or dead-lettered.
    Duplicate,
    Parked,
    DeadLettered,
}

impl Outcome {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
            Outcome::Parked => "parked",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// One event as idempotence knows it: a duplicate is the same `event_id` in the same session
/// (every delivery of an event carries its session id, which is also its message key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    pub session_id: Uuid,
    pub event_id: Uuid,
}

impl EventKey {
    pub fn of(event: &Event) -> Self {
        Self {
            session_id: event.session_id,
            event_id: event.event_id,
        }
    }
}

/// The event ids one batch records for one session, after the `stored` ids the store held for
/// it when the batch was loaded. A store appends `ids` to the session's record only if it still
/// holds `stored` ids (otherwise another instance recorded some meanwhile, and the batch must be
/// folded again): the record of a session is written by one commit at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenIds {
    pub session_id: Uuid,
    pub stored: u32,
    /// In the order the events were folded.
    pub ids: Vec<Uuid>,
}

/// What a batch needs from the store before it can be folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadRequest {
    /// Sessions the batch's events belong to.
    pub session_ids: Vec<Uuid>,
    /// The batch's events, to find those already seen (a store reads the record of each of their
    /// sessions, whether or not the session exists).
    pub events: Vec<EventKey>,
    /// Sessions enqueued in this batch, whose parked events may be released.
    pub parked_for: Vec<Uuid>,
    /// The kernels those `session_enqueued` events list, to find ids another session holds.
    pub kernel_ids: Vec<Uuid>,
}

/// The rows a batch starts from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub sessions: HashMap<Uuid, SessionState>,
    /// Those of the requested events that were already seen.
    pub seen: HashSet<EventKey>,
    /// How many event ids the store holds for each requested session that has any.
    pub seen_counts: HashMap<Uuid, u32>,
    /// Parked events of the requested sessions, in source order.
    pub parked: Vec<ParkedEvent>,
    /// The session of each requested kernel id that is already stored.
    pub kernel_owners: HashMap<Uuid, Uuid>,
}

/// Decodes a batch and says what the store must load for it.
pub fn plan(messages: &[&[u8]]) -> (Vec<Result<Event, DecodeError>>, LoadRequest) {
    plan_limited(messages, DEFAULT_MAX_EVENT_BYTES)
}

/// [`plan`] with the projector's `--max-event-bytes`.
pub fn plan_limited(
    messages: &[&[u8]],
    max_event_bytes: usize,
) -> (Vec<Result<Event, DecodeError>>, LoadRequest) {
    let decoded: Vec<_> = messages
        .iter()
        .map(|b| Event::decode_limited(b, max_event_bytes))
        .collect();
    let mut sessions = HashSet::new();
    let mut req = LoadRequest::default();
    for e in decoded.iter().flatten() {
        if sessions.insert(e.session_id) {
            req.session_ids.push(e.session_id);
        }
        req.events.push(EventKey::of(e));
        if let EventBody::SessionEnqueued(p) = &e.body {
            req.parked_for.push(e.session_id);
            req.kernel_ids.extend(p.kernels.iter().map(|k| k.kernel_id));
        }
    }
    (decoded, req)
}

/// Which rows of a changed session differ from what the batch started from.
///
/// Half of a typical stream is `kernel_stat_sync`, which changes one kernel's `last_stat` and
/// nothing else: writing only these rows, and of those kernels only that column, is most of the
/// store's saving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyRows {
    /// The session row itself.
    pub session: bool,
    /// Every kernel row (the session was created, or an event touched all its kernels).
    pub all_kernels: bool,
    /// Kernel rows changed one at a time, by kernel id (a set: a session of thousands of kernels
    /// costs the same per event as one of two).
    pub kernels: HashSet<Uuid>,
    /// Kernels of which only `last_stat` changed (by `kernel_stat_sync` alone), by kernel id:
    /// none in `kernels`, empty with `all_kernels`. Their rows were stored before this batch (a
    /// kernel's first event is never a stat sync that applies), so a store may update that one
    /// column.
    pub stats: HashSet<Uuid>,
}

impl DirtyRows {
    /// Every row of the session.
    pub fn all() -> Self {
        Self {
            session: true,
            all_kernels: true,
            kernels: HashSet::new(),
            stats: HashSet::new(),
        }
    }

    fn kernel(&mut self, id: Uuid) {
        self.stats.remove(&id);
        if !self.all_kernels {
            self.kernels.insert(id);
        }
    }

    fn kernel_stat(&mut self, id: Uuid) {
        if !self.all_kernels && !self.kernels.contains(&id) {
            self.stats.insert(id);
        }
    }

    /// Records what an applied event changed. Deliberately coarse where it is cheap to be:
    /// every event but `kernel_stat_sync` may change the session row (the master mirror, slots).
    fn record(&mut self, event: &Event) {
        match (&event.body, event.kernel_id) {
            (EventBody::KernelStatSync(_), Some(k)) => self.kernel_stat(k),
            (_, Some(k)) => {
                self.session = true;
                self.kernel(k);
            }
            (EventBody::SessionEnqueued(_) | EventBody::SessionScheduled(_), None) => {
                *self = Self::all();
            }
            (_, None) => self.session = true,
        }
    }

    /// Whether kernel row `k` must be written whole.
    pub fn has_kernel(&self, k: &KernelRow) -> bool {
        self.all_kernels || self.kernels.contains(&k.id)
    }

    /// Whether only `last_stat` of kernel row `k` must be written.
    pub fn has_stat_only(&self, k: &KernelRow) -> bool {
        self.stats.contains(&k.id)
    }
}

/// A change to the number of sessions with one combination of the list filters' columns.
///
/// List totals are answered from these running counts instead of counting matching rows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CountDelta {
    pub access_key: String,
    pub status: Status,
    pub domain_name: String,
    pub group_id: Uuid,
    pub delta: i64,
}

/// Everything a folded batch must write, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Sessions with at least one changed row (whole states, kernels included).
    pub sessions: Vec<SessionState>,
    /// Which rows of `sessions[i]` changed; a missing entry means all of them.
    pub dirty: Vec<DirtyRows>,
    /// Session counts by filter columns that this batch changes (created sessions, status
    /// changes), net of each other and without zeros.
    pub counts: Vec<CountDelta>,
    /// Sessions created in this batch (their dependencies are written once).
    pub created: Vec<Uuid>,
    /// Event ids to remember as seen, by session (in session id order: concurrent writers
    /// lock the records in one order).
    pub seen: Vec<SeenIds>,
    /// Newly parked events that are still waiting at the end of the batch.
    pub parked: Vec<ParkedEvent>,
    /// Previously stored parked events that were applied and must be removed.
    pub released: Vec<(String, Position)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Outcome counts per event type (`"unknown"` when the type could not be read).
    pub tally: BTreeMap<(&'static str, Outcome), u64>,
    /// What listeners are told, in the order the events were applied.
    pub live: Vec<LiveEvent>,
}

impl Changes {
    /// What changed of `sessions[i]` (all rows when not recorded).
    fn dirty_of(&self, i: usize) -> Option<&DirtyRows> {
        self.dirty.get(i)
    }

    /// The session rows to write.
    pub fn session_rows(&self) -> impl Iterator<Item = &SessionRow> {
        self.sessions
            .iter()
            .enumerate()
            .filter(|(i, _)| self.dirty_of(*i).is_none_or(|d| d.session))
            .map(|(_, s)| &s.session)
    }

    /// The kernel rows to write: [`Self::whole_kernel_rows`] and [`Self::stat_kernel_rows`].
    pub fn kernel_rows(&self) -> impl Iterator<Item = &KernelRow> {
        self.kernels_where(|d, k| d.is_none_or(|d| d.has_kernel(k) || d.has_stat_only(k)))
    }

    /// The kernel rows to write whole (new, or changed beyond `last_stat`).
    pub fn whole_kernel_rows(&self) -> impl Iterator<Item = &KernelRow> {
        self.kernels_where(|d, k| d.is_none_or(|d| d.has_kernel(k)))
    }

    /// The stored kernel rows of which only `last_stat` changed (none where the dirty rows
    /// were not recorded: those are all written whole).
    pub fn stat_kernel_rows(&self) -> impl Iterator<Item = &KernelRow> {
        self.kernels_where(|d, k| d.is_some_and(|d| d.has_stat_only(k)))
    }

    fn kernels_where(
        &self,
        dirty: impl Fn(Option<&DirtyRows>, &KernelRow) -> bool + Copy,
    ) -> impl Iterator<Item = &KernelRow> {
        self.sessions.iter().enumerate().flat_map(move |(i, s)| {
            let d = self.dirty_of(i);
            s.kernels.iter().filter(move |k| dirty(d, k))
        })
    }
}

#[derive(Debug, Clone)]
struct Parked {
    event: ParkedEvent,
    /// Already in the store (must be deleted when released).
    stored: bool,
}

/// The fold: state plus a record of what changed.
#[derive(Debug, Default)]
pub struct Fold {
    sessions: HashMap<Uuid, SessionState>,
    seen: HashSet<EventKey>,
    /// Event ids the store held per session when the batch was loaded.
    seen_counts: HashMap<Uuid, u32>,
    parked: HashMap<Uuid, Vec<Parked>>,
    dirty: HashMap<Uuid, DirtyRows>,
    /// The status each loaded session had when the batch started.
    initial: HashMap<Uuid, Status>,
    /// The session each known kernel id belongs to: a kernel id is never shared.
    owners: HashMap<Uuid, Uuid>,
    created: Vec<Uuid>,
    new_seen: BTreeMap<Uuid, Vec<Uuid>>,
    released: Vec<(String, Position)>,
    dead_letters: Vec<DeadLetter>,
    tally: BTreeMap<(&'static str, Outcome), u64>,
    live: Vec<LiveEvent>,
}

impl Fold {
    /// A fold over nothing: the start of a full rebuild or of a test stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fold that starts from rows loaded from the store.
    pub fn from_loaded(loaded: Loaded) -> Self {
        let mut parked: HashMap<Uuid, Vec<Parked>> = HashMap::new();
        let mut stored = loaded.parked;
        stored.sort_by_key(|p| p.position);
        for event in stored {
            parked.entry(event.session_id).or_default().push(Parked {
                event,
                stored: true,
            });
        }
        let initial = loaded
            .sessions
            .iter()
            .map(|(id, s)| (*id, s.session.status))
            .collect();
        let mut owners = loaded.kernel_owners;
        for s in loaded.sessions.values() {
            owners.extend(s.kernels.iter().map(|k| (k.id, s.session.id)));
        }
        Self {
            sessions: loaded.sessions,
            initial,
            owners,
            seen: loaded.seen,
            seen_counts: loaded.seen_counts,
            parked,
            ..Self::default()
        }
    }

    /// Decodes and applies one raw message (of at most the default `--max-event-bytes`).
    pub fn apply_bytes(&mut self, source: &str, position: Position, bytes: &[u8]) -> Outcome {
        self.apply_decoded(source, position, bytes, Event::decode(bytes))
    }

    /// Applies one message that [`plan`] already decoded.
    pub fn apply_decoded(
        &mut self,
        source: &str,
        position: Position,
        bytes: &[u8],
        decoded: Result<Event, DecodeError>,
    ) -> Outcome {
        let event = match decoded {
            Ok(e) => e,
            Err(err) => {
                self.dead_letters
                    .push(DeadLetter::undecodable(source, position, bytes, &err, None));
                return self.count("unknown", Outcome::DeadLettered);
            }
        };
        let type_name = event.event_type().as_str();
        // Rule 4: a duplicate is decided by event_id (within its session, which every delivery
        // of the event names).
        if !self.seen.insert(EventKey::of(&event)) {
            return self.count(type_name, Outcome::Duplicate);
        }
        self.new_seen
            .entry(event.session_id)
            .or_default()
            .push(event.event_id);
        let outcome = self.apply_event(source, position, bytes, event);
        self.count(type_name, outcome)
    }

    fn apply_event(
        &mut self,
        source: &str,
        position: Position,
        bytes: &[u8],
        mut event: Event,
    ) -> Outcome {
        let mut slot = self.sessions.remove(&event.session_id);
        let existed = slot.is_some();
        let before = slot.as_ref().map(|s| s.session.status);
        let result = match (&event.body, existed) {
            (EventBody::SessionEnqueued(p), false) => p
                .kernels
                .iter()
                .find_map(|k| {
                    self.owners
                        .get(&k.kernel_id)
                        .map(|owner| Reject::KernelTaken {
                            kernel: k.kernel_id,
                            owner: *owner,
                        })
                })
                .map_or_else(|| apply(&mut slot, &mut event), Err),
            _ => apply(&mut slot, &mut event),
        };
        if let Some(state) = slot {
            self.sessions.insert(event.session_id, state);
        }
        match result {
            Ok(Effect::Applied) => {
                self.dirty
                    .entry(event.session_id)
                    .or_default()
                    .record(&event);
                self.tell(&event, before);
                if !existed {
                    if let Some(state) = self.sessions.get(&event.session_id) {
                        self.owners
                            .extend(state.kernels.iter().map(|k| (k.id, event.session_id)));
                    }
                    self.created.push(event.session_id);
                    self.release_parked(event.session_id);
                }
                Outcome::Applied
            }
            Ok(Effect::IgnoredTerminal) => Outcome::Ignored,
            Ok(Effect::Park) => {
                self.parked
                    .entry(event.session_id)
                    .or_default()
                    .push(Parked {
                        event: ParkedEvent {
                            source: source.to_owned(),
                            position,
                            session_id: event.session_id,
                            event_id: event.event_id,
                            bytes: bytes.to_vec(),
                        },
                        stored: false,
                    });
                Outcome::Parked
            }
            Err(reject) => {
                self.dead_letter(source, position, bytes, &event, &reject);
                Outcome::DeadLettered
            }
        }
    }

    /// Rule 5: right after `session_enqueued`, the events that waited for it, in original order.
    fn release_parked(&mut self, session_id: Uuid) {
        let Some(waiting) = self.parked.remove(&session_id) else {
            return;
        };
        for Parked { event: p, stored } in waiting {
            if stored {
                self.released.push((p.source.clone(), p.position));
            }
            // A parked event passed validation when it arrived; decoding is deterministic.
            let decoded = Event::decode(&p.bytes);
            let type_name = decoded
                .as_ref()
                .map(|e| e.event_type().as_str())
                .unwrap_or("unknown");
            let outcome = match decoded {
                Ok(event) => self.apply_event(&p.source, p.position, &p.bytes, event),
                Err(err) => {
                    self.dead_letters.push(DeadLetter::undecodable(
                        &p.source,
                        p.position,
                        &p.bytes,
                        &err,
                        Some((p.event_id, p.session_id)),
                    ));
                    Outcome::DeadLettered
                }
            };
            // The park was counted when it arrived; count what finally happened as well.
            self.count(type_name, outcome);
        }
    }

    fn dead_letter(
        &mut self,
        source: &str,
        position: Position,
        bytes: &[u8],
        event: &Event,
        reject: &Reject,
    ) {
        self.dead_letters.push(DeadLetter::rejected(
            source,
            position,
            bytes,
            event,
            reject.label(),
            &reject.to_string(),
        ));
    }

    fn count(&mut self, event_type: &'static str, outcome: Outcome) -> Outcome {
        *self.tally.entry((event_type, outcome)).or_default() += 1;
        outcome
    }

    /// The current state of every session the fold knows.
    pub fn sessions(&self) -> &HashMap<Uuid, SessionState> {
        &self.sessions
    }

    /// Events still waiting, by session.
    pub fn parked(&self) -> impl Iterator<Item = &ParkedEvent> {
        self.parked.values().flatten().map(|p| &p.event)
    }

    /// Dead letters recorded so far.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// Ends the batch: the rows and bookkeeping it must write.
    pub fn finish(mut self) -> Changes {
        let mut dirty: Vec<(Uuid, DirtyRows)> = self.dirty.into_iter().collect();
        dirty.sort_by_key(|(id, _)| *id);
        let (sessions, dirty): (Vec<SessionState>, Vec<DirtyRows>) = dirty
            .into_iter()
            .filter_map(|(id, d)| self.sessions.remove(&id).map(|s| (s, d)))
            .unzip();
        let mut counts: BTreeMap<(&str, Status, &str, Uuid), i64> = BTreeMap::new();
        for s in &sessions {
            let r = &s.session;
            let before = self.initial.get(&r.id).copied();
            if before == Some(r.status) {
                continue;
            }
            let key = |status| {
                (
                    r.access_key.as_str(),
                    status,
                    r.domain_name.as_str(),
                    r.group_id,
                )
            };
            *counts.entry(key(r.status)).or_default() += 1;
            if let Some(b) = before {
                *counts.entry(key(b)).or_default() -= 1;
            }
        }
        let counts = counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(
                |((access_key, status, domain_name, group_id), delta)| CountDelta {
                    access_key: access_key.to_owned(),
                    status,
                    domain_name: domain_name.to_owned(),
                    group_id,
                    delta,
                },
            )
            .collect();
        let mut parked: Vec<ParkedEvent> = self
            .parked
            .into_values()
            .flatten()
            .filter(|p| !p.stored)
            .map(|p| p.event)
            .collect();
        parked.sort_by_key(|p| p.position);
        Changes {
            sessions,
            dirty,
            counts,
            created: self.created,
            seen: self
                .new_seen
                .into_iter()
                .map(|(session_id, ids)| SeenIds {
                    session_id,
                    stored: self.seen_counts.get(&session_id).copied().unwrap_or(0),
                    ids,
                })
                .collect(),
            parked,
            released: self.released,
            dead_letters: self.dead_letters,
            tally: self.tally,
            live: self.live,
        }
    }

    /// Records what listeners are told of `event`, which `before` (the session's status before
    /// it, `None` for a new session) has just been applied to.
    fn tell(&mut self, event: &Event, before: Option<Status>) {
        let Some(state) = self.sessions.get(&event.session_id) else {
            return;
        };
        let s = &state.session;
        let live = |name, kernel_id, cluster_role, reason: Option<&str>| LiveEvent {
            name,
            session_id: s.id,
            kernel_id,
            cluster_role,
            reason: reason.map(str::to_owned),
            session_name: s.name.clone(),
            access_key: s.access_key.clone(),
            domain_name: s.domain_name.clone(),
            group_name: s.group_name.clone(),
        };
        let reason = event.body.reason();
        if !matches!(
            event.body,
            EventBody::KernelStatSync(_) | EventBody::ExecutionStarted
        ) {
            let role = event
                .kernel_id
                .and_then(|k| state.kernels.iter().find(|r| r.id == k))
                .map(|k| k.role.clone());
            self.live.push(live(
                event.event_type().as_str(),
                event.kernel_id,
                role,
                reason,
            ));
        }
        let after = s.status;
        if before == Some(after) {
            return;
        }
        let derived = match after {
            // First becomes RUNNING: from a status before it (RESTARTING comes after).
            Status::Running
                if before.is_none_or(|b| {
                    matches!(
                        b,
                        Status::Pending | Status::Preparing | Status::Building | Status::Pulling
                    )
                }) =>
            {
                SESSION_STARTED
            }
            Status::Terminated => SESSION_TERMINATED,
            Status::Cancelled => SESSION_CANCELLED,
            _ => return,
        };
        self.live.push(live(
            derived,
            None,
            None,
            s.status_info.as_deref().or(reason),
        ));
    }
}

#[cfg(test)]
mod tests;
