//! The store as it will be once a batch still committing has committed: what a batch folded on
//! top of it must load from the store ([`Pending::rest`]), and how the pending batch's changes
//! complete that load ([`Pending::complete`]). This is what lets the projector fold one batch
//! while the previous one commits, with the same result as folding it after.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::{Changes, EventKey, LoadRequest, Loaded, Position, SessionState};

/// A folded batch whose commit has not finished.
#[derive(Debug, Clone)]
pub struct Pending<'a> {
    changes: &'a Changes,
    /// Its sessions by id (built once: both halves of a load look them up).
    sessions: HashMap<Uuid, &'a SessionState>,
}

impl<'a> Pending<'a> {
    pub fn new(changes: &'a Changes) -> Self {
        let sessions = changes.sessions.iter().map(|s| (s.session.id, s)).collect();
        Self { changes, sessions }
    }

    /// What of `req` the store must still be asked for: the pending batch's sessions come from
    /// it whole (the pending batch wrote every row of a session it touched).
    pub fn rest(&self, req: &LoadRequest) -> LoadRequest {
        let mut rest = req.clone();
        rest.session_ids
            .retain(|id| !self.sessions.contains_key(id));
        rest
    }

    /// Completes what the store returned for [`Pending::rest`] into the load of `req` as it will
    /// be after the pending commit: its sessions, the kernels it created (taken, though not
    /// stored yet), its seen ids, its parked events less those it released.
    pub fn complete(&self, req: &LoadRequest, mut loaded: Loaded) -> Loaded {
        let changes = self.changes;
        for id in &req.session_ids {
            if let Some(s) = self.sessions.get(id) {
                loaded.sessions.insert(*id, (*s).clone());
            }
        }
        let wanted_kernels: HashSet<Uuid> = req.kernel_ids.iter().copied().collect();
        let owners: HashMap<Uuid, Uuid> = changes
            .sessions
            .iter()
            .flat_map(|s| s.kernels.iter().map(move |k| (k.id, s.session.id)))
            .filter(|(k, _)| wanted_kernels.contains(k))
            .collect();
        loaded.kernel_owners.extend(owners);
        // Its seen ids, and how many each session's record holds once it has committed (the
        // store's answer may be from before or after that commit: this count is the same
        // either way).
        let pending_seen: HashSet<EventKey> = changes
            .seen
            .iter()
            .flat_map(|s| {
                s.ids.iter().map(|&event_id| EventKey {
                    session_id: s.session_id,
                    event_id,
                })
            })
            .collect();
        loaded.seen.extend(
            req.events
                .iter()
                .filter(|e| pending_seen.contains(e))
                .copied(),
        );
        for s in &changes.seen {
            let after = s
                .stored
                .saturating_add(u32::try_from(s.ids.len()).unwrap_or(u32::MAX));
            loaded.seen_counts.insert(s.session_id, after);
        }
        let released: HashSet<(&str, Position)> = changes
            .released
            .iter()
            .map(|(s, p)| (s.as_str(), *p))
            .collect();
        loaded
            .parked
            .retain(|e| !released.contains(&(e.source.as_str(), e.position)));
        let wanted: HashSet<Uuid> = req.parked_for.iter().copied().collect();
        loaded.parked.extend(
            changes
                .parked
                .iter()
                .filter(|e| wanted.contains(&e.session_id))
                .cloned(),
        );
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParkedEvent, SeenIds};

    fn parked(session: u128, offset: i64) -> ParkedEvent {
        ParkedEvent {
            source: "t".into(),
            position: Position {
                partition: 0,
                offset,
            },
            session_id: Uuid::from_u128(session),
            event_id: Uuid::from_u128(1000 + session),
            bytes: Vec::new(),
        }
    }

    fn key(session: u128, event: u128) -> EventKey {
        EventKey {
            session_id: Uuid::from_u128(session),
            event_id: Uuid::from_u128(event),
        }
    }

    #[test]
    fn the_pending_batch_answers_for_what_it_wrote() {
        let mut changes = Changes::default();
        changes.seen.push(SeenIds {
            session_id: Uuid::from_u128(1),
            stored: 4,
            ids: vec![Uuid::from_u128(7)],
        });
        changes.parked.push(parked(2, 5));
        changes.released.push(("t".into(), parked(3, 1).position));
        let pending = Pending::new(&changes);
        let req = LoadRequest {
            session_ids: vec![Uuid::from_u128(1)],
            // Event 7 of session 1 is the pending one; the same id in session 9 is another
            // event, and event 8 is new.
            events: vec![key(1, 7), key(1, 8), key(9, 7)],
            parked_for: vec![Uuid::from_u128(2), Uuid::from_u128(3)],
            kernel_ids: Vec::new(),
        };
        assert_eq!(
            pending.rest(&req),
            req,
            "no pending session: the store is asked for all"
        );
        // The store answers from before the pending commit (4 ids) or after it (5): the same.
        for stored in [4, 5] {
            let from_store = Loaded {
                parked: vec![parked(3, 1)],
                seen_counts: HashMap::from([(Uuid::from_u128(1), stored)]),
                ..Loaded::default()
            };
            let loaded = pending.complete(&req, from_store);
            assert!(loaded.seen.contains(&key(1, 7)));
            assert!(!loaded.seen.contains(&key(1, 8)));
            assert!(!loaded.seen.contains(&key(9, 7)), "another session's event");
            assert_eq!(loaded.seen_counts[&Uuid::from_u128(1)], 5);
            assert_eq!(
                loaded.parked,
                vec![parked(2, 5)],
                "released gone, parked added"
            );
        }
    }
}
