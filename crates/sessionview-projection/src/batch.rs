//! One batch through the projection, written once for every caller (the projector's applier, the
//! dead-letter retry, the tests): decode the events and plan what the store must load
//! ([`Batch::plan`]), then fold them over what it loaded ([`Batch::fold`]). Loading and committing
//! are the caller's, the only IO of a batch.

use sessionview_events::{DecodeError, Event};

use crate::{Changes, Fold, LoadRequest, Loaded, Outcome, Position, plan_limited};

/// A batch's events of one source, decoded, with what their fold needs loaded.
#[derive(Debug)]
pub struct Batch<'a> {
    source: &'a str,
    events: Vec<(Position, &'a [u8])>,
    decoded: Vec<Result<Event, DecodeError>>,
    request: LoadRequest,
}

/// A folded batch: what to commit, and what became of each event (in batch order).
#[derive(Debug)]
pub struct FoldedBatch {
    pub changes: Changes,
    pub outcomes: Vec<Outcome>,
}

impl<'a> Batch<'a> {
    /// Decodes `events` (those longer than `max_event_bytes` are refused) and plans their load.
    pub fn plan(
        source: &'a str,
        events: Vec<(Position, &'a [u8])>,
        max_event_bytes: usize,
    ) -> Self {
        let payloads: Vec<&[u8]> = events.iter().map(|(_, b)| *b).collect();
        let (decoded, request) = plan_limited(&payloads, max_event_bytes);
        Self {
            source,
            events,
            decoded,
            request,
        }
    }

    /// What the store must load before the batch is folded.
    pub fn request(&self) -> &LoadRequest {
        &self.request
    }

    /// Folds the events over `loaded`, in order.
    pub fn fold(self, loaded: Loaded) -> FoldedBatch {
        let mut fold = Fold::from_loaded(loaded);
        let outcomes = self
            .events
            .iter()
            .zip(self.decoded)
            .map(|((position, bytes), d)| fold.apply_decoded(self.source, *position, bytes, d))
            .collect();
        FoldedBatch {
            changes: fold.finish(),
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_an_outcome_in_order_and_bad_bytes_are_dead_letters() {
        let events = vec![
            (
                Position {
                    partition: 0,
                    offset: 4,
                },
                &b"not json"[..],
            ),
            (
                Position {
                    partition: 0,
                    offset: 5,
                },
                &b"{}"[..],
            ),
        ];
        let batch = Batch::plan("t", events, 1 << 20);
        assert!(batch.request().session_ids.is_empty());
        let folded = batch.fold(Loaded::default());
        assert_eq!(folded.outcomes, vec![Outcome::DeadLettered; 2]);
        let offsets: Vec<i64> = folded
            .changes
            .dead_letters
            .iter()
            .map(|d| d.position.offset)
            .collect();
        assert_eq!(offsets, vec![4, 5]);
    }
}
