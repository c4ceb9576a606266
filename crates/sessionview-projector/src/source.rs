//! The protocol between a source (the Kafka consumer thread, the file reader task) and the
//! applier: what a source sends ([`Item`]), and the state both share ([`Shared`]) — which
//! partitions this instance owns under which assignment epoch, and which the applier wants
//! re-seeked. A source changes ownership only through [`Owning`], under the lock the applier
//! holds while it folds and commits, so a batch is never committed for a partition the instance
//! no longer owns, and messages read under an earlier epoch are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use sessionview_projection::Position;
use tokio::sync::{Mutex, MutexGuard};

use crate::health::Health;

/// One message from a source, tagged with the assignment epoch it was read under.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub partition: i32,
    pub offset: i64,
    /// The assignment epoch of the partition when the message was read; stale epochs are dropped.
    pub epoch: u64,
    /// The message value; `None` when there is nothing to apply (a blank archive line).
    pub payload: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch at which the source recorded the message, if known.
    pub timestamp_ms: Option<i64>,
}

impl SourceMessage {
    /// Where the message is in its source.
    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// What a source sends the applier.
#[derive(Debug)]
pub(crate) enum Item {
    Message(SourceMessage),
    /// Every partition has reached the end it had at start (`--exit-at-end`), or the file ended;
    /// `Err` names what did not (`--exit-at-end` gave up waiting for partitions another member
    /// holds).
    End(Result<(), String>),
}

/// What the applier knows about one owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionState {
    pub epoch: u64,
    /// The stored next offset (`None`: nothing stored yet).
    pub next: Option<i64>,
}

/// State shared between a source and the applier.
///
/// The source (re)assigns partitions under the lock; the applier holds the lock while it filters,
/// folds and commits a batch, so a revocation waits for an in-flight commit and a batch is never
/// applied for a partition the instance no longer owns.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) owned: Mutex<HashMap<i32, PartitionState>>,
    epochs: AtomicU64,
    /// Partitions whose commit conflicted: the source must re-read the stored position and re-seek.
    reseek: std::sync::Mutex<Vec<i32>>,
    /// Stored positions, high watermarks and the time of the last commit (lag and readiness).
    pub(crate) health: Health,
}

/// The partitions a source owns, locked for a (re)assignment or a revocation: while the guard
/// lives, the applier folds and commits nothing.
pub(crate) struct Owning<'a> {
    owned: MutexGuard<'a, HashMap<i32, PartitionState>>,
    shared: &'a Shared,
}

impl Owning<'_> {
    /// The source (re)starts reading `partition` at its stored position `next`: a fresh epoch, so
    /// that messages read before are dropped. Returns the epoch to tag its messages with.
    pub(crate) fn assign(&mut self, partition: i32, next: Option<i64>) -> u64 {
        let epoch = self.shared.next_epoch();
        self.owned.insert(partition, PartitionState { epoch, next });
        self.shared.health.assigned(partition, next);
        epoch
    }

    /// The source no longer reads `partition`: no batch of it is committed from now on.
    pub(crate) fn revoke(&mut self, partition: i32) {
        self.owned.remove(&partition);
        self.shared.health.revoked(partition);
    }
}

impl Shared {
    /// Locks the owned partitions from a source's thread (the Kafka consumer's).
    pub(crate) fn owning_blocking(&self) -> Owning<'_> {
        Owning {
            owned: self.owned.blocking_lock(),
            shared: self,
        }
    }

    /// Locks the owned partitions from a source's task.
    pub(crate) async fn owning(&self) -> Owning<'_> {
        Owning {
            owned: self.owned.lock().await,
            shared: self,
        }
    }

    pub(crate) fn new(health: Health) -> Self {
        Self {
            owned: Mutex::default(),
            epochs: AtomicU64::default(),
            reseek: std::sync::Mutex::default(),
            health,
        }
    }

    /// A fresh epoch number for an assignment or a re-seek.
    pub(crate) fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Partitions waiting for a re-seek, emptied.
    pub(crate) fn take_reseeks(&self) -> Vec<i32> {
        match self.reseek.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Asks the source to re-read the stored positions of `partitions` and seek there (their
    /// commit conflicted, or the batch folded on top of it was discarded).
    pub(crate) fn request_reseek(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut v = match self.reseek.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        v.extend(partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_assignment_is_a_new_epoch_and_a_revocation_ends_ownership() {
        let shared = Shared::new(Health::default());
        let first = shared.owning().await.assign(3, Some(10));
        let again = shared.owning().await.assign(3, Some(12));
        assert!(
            again > first,
            "a re-assignment drops what was read before it"
        );
        assert_eq!(
            shared.owned.lock().await.get(&3),
            Some(&PartitionState {
                epoch: again,
                next: Some(12)
            })
        );
        shared.owning().await.revoke(3);
        assert!(shared.owned.lock().await.is_empty());
    }

    #[test]
    fn reseek_requests_are_taken_once() {
        let shared = Shared::new(Health::default());
        shared.request_reseek([1, 2]);
        shared.request_reseek([5]);
        assert_eq!(shared.take_reseeks(), vec![1, 2, 5]);
        assert!(shared.take_reseeks().is_empty());
    }

    #[test]
    fn a_message_knows_its_position() {
        let m = SourceMessage {
            partition: 2,
            offset: 7,
            epoch: 1,
            payload: None,
            timestamp_ms: None,
        };
        assert_eq!(
            m.position(),
            Position {
                partition: 2,
                offset: 7
            }
        );
    }
}
