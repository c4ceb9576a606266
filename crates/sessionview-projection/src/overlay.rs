//! The store as it will be once a batch still committing has committed: what a batch folded on
//! top of it must load from the store ([`Pending::rest`]), and how the pending batch's changes
//! complete that load ([`Pending::complete`]). This is what lets the projector fold one batch
//! while the previous one commits, with the same result as folding it after.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::{Changes, LoadRequest, Loaded, Position, SessionState};

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
        let pending_seen: HashSet<Uuid> = changes.seen.iter().map(|(e, _)| *e).collect();
        loaded.seen.extend(
            req.event_ids
                .iter()
                .filter(|e| pending_seen.contains(e))
                .copied(),
        );
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
    use crate::ParkedEvent;

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

    #[test]
    fn the_pending_batch_answers_for_what_it_wrote() {
        let mut changes = Changes::default();
        changes.seen.push((Uuid::from_u128(7), Uuid::from_u128(1)));
        changes.parked.push(parked(2, 5));
        changes.released.push(("t".into(), parked(3, 1).position));
        let pending = Pending::new(&changes);
        let req = LoadRequest {
            session_ids: vec![Uuid::from_u128(1)],
            event_ids: vec![Uuid::from_u128(7), Uuid::from_u128(8)],
            parked_for: vec![Uuid::from_u128(2), Uuid::from_u128(3)],
            kernel_ids: Vec::new(),
        };
        assert_eq!(
            pending.rest(&req),
            req,
            "no pending session: the store is asked for all"
        );
        let from_store = Loaded {
            parked: vec![parked(3, 1)],
            ..Loaded::default()
        };
        let loaded = pending.complete(&req, from_store);
        assert!(loaded.seen.contains(&Uuid::from_u128(7)));
        assert!(!loaded.seen.contains(&Uuid::from_u128(8)));
        assert_eq!(
            loaded.parked,
            vec![parked(2, 5)],
            "released gone, parked added"
        );
    }
}
