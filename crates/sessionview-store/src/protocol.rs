//! The projector's protocol with a store, written once for every backend: what a load reads, and
//! the order in which a commit checks and writes — positions by compare-and-set, then the rows
//! with the batch's seen event ids, appended to their sessions' records by compare-and-set on
//! each record's length (a conflict on either writes nothing), then the rare rows —
//! all in one transaction. Each backend supplies the statements ([`Load`], [`Write`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use sessionview_projection::{EventKey, LoadRequest, Loaded, ParkedEvent, SeenIds, SessionState};
use sqlx::{Database, Pool};
use uuid::Uuid;

use crate::{Advance, Commit, CommitOutcome, StoreError};

/// The reads of a load, each given a non-empty list of ids, on one connection.
pub(crate) trait Load: Database {
    /// Sessions with their kernels and dependencies: those in `ids`, or every one.
    fn sessions<'c>(
        conn: &'c mut Self::Connection,
        ids: Option<&'c [Uuid]>,
    ) -> impl Future<Output = Result<HashMap<Uuid, SessionState>, StoreError>> + Send + 'c;

    /// The chunks of the event-id records (`session_seen`: 16 bytes an id) of these sessions.
    fn seen<'c>(
        conn: &'c mut Self::Connection,
        sessions: &'c [Uuid],
    ) -> impl Future<Output = Result<Vec<(Uuid, Vec<u8>)>, StoreError>> + Send + 'c;

    /// The parked events of these sessions, in position order.
    fn parked<'c>(
        conn: &'c mut Self::Connection,
        sessions: &'c [Uuid],
    ) -> impl Future<Output = Result<Vec<ParkedEvent>, StoreError>> + Send + 'c;

    /// The session owning each of these kernel ids that exists.
    fn kernel_owners<'c>(
        conn: &'c mut Self::Connection,
        ids: &'c [Uuid],
    ) -> impl Future<Output = Result<HashMap<Uuid, Uuid>, StoreError>> + Send + 'c;
}

/// What a batch needs before it is folded, read on one connection.
pub(crate) async fn load<D: Load>(pool: &Pool<D>, req: &LoadRequest) -> Result<Loaded, StoreError> {
    // One acquire (and release) per load instead of one per statement.
    let mut conn = pool.acquire().await?;
    let sessions = if req.session_ids.is_empty() {
        HashMap::new()
    } else {
        D::sessions(&mut conn, Some(&req.session_ids)).await?
    };
    let (seen, seen_counts) = if req.events.is_empty() {
        (HashSet::new(), HashMap::new())
    } else {
        let mut sessions: Vec<Uuid> = req.events.iter().map(|e| e.session_id).collect();
        sessions.sort_unstable();
        sessions.dedup();
        seen_in(&req.events, D::seen(&mut conn, &sessions).await?)?
    };
    let parked = if req.parked_for.is_empty() {
        Vec::new()
    } else {
        D::parked(&mut conn, &req.parked_for).await?
    };
    let kernel_owners = if req.kernel_ids.is_empty() {
        HashMap::new()
    } else {
        D::kernel_owners(&mut conn, &req.kernel_ids).await?
    };
    Ok(Loaded {
        sessions,
        seen,
        seen_counts,
        parked,
        kernel_owners,
    })
}

/// Which of `events` the sessions' records hold, and how many ids each record holds.
fn seen_in(
    events: &[EventKey],
    records: Vec<(Uuid, Vec<u8>)>,
) -> Result<(HashSet<EventKey>, HashMap<Uuid, u32>), StoreError> {
    let mut asked: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for e in events {
        asked.entry(e.session_id).or_default().insert(e.event_id);
    }
    let mut seen = HashSet::new();
    let mut counts = HashMap::with_capacity(records.len());
    for (session_id, ids) in records {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "session_seen",
            detail,
        };
        let chunks = ids.chunks_exact(16);
        if !chunks.remainder().is_empty() {
            return Err(corrupt(format!(
                "the record of session {session_id} is {} bytes, not a multiple of 16",
                ids.len()
            )));
        }
        let n = u32::try_from(ids.len() / 16)
            .map_err(|_| corrupt(format!("session {session_id} has over 2^32 event ids")))?;
        let count = counts.entry(session_id).or_insert(0u32);
        *count = count
            .checked_add(n)
            .ok_or_else(|| corrupt(format!("session {session_id} has over 2^32 event ids")))?;
        if let Some(wanted) = asked.get(&session_id) {
            seen.extend(
                chunks
                    .filter_map(|c| Uuid::from_slice(c).ok())
                    .filter(|id| wanted.contains(id))
                    .map(|event_id| EventKey {
                        session_id,
                        event_id,
                    }),
            );
        }
    }
    Ok((seen, counts))
}

/// How many event ids one chunk of a session's record holds: chunk k holds the session's ids
/// k·120 to k·120+119 (1,920 bytes, within a page: only the last chunk is ever rewritten).
pub const SEEN_CHUNK_IDS: u32 = 120;

/// One write of a commit to a chunk of a session's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenPiece {
    pub session_id: Uuid,
    pub chunk: i32,
    /// Ids the chunk holds already: it is appended to where it still holds that many, created
    /// where it is 0 and no chunk exists.
    pub stored: i64,
    /// The ids to add (16 bytes each).
    pub ids: Vec<u8>,
}

/// The writes that append `seen` to the sessions' records: the rest of each session's last
/// chunk, then new chunks.
pub(crate) fn seen_pieces(seen: &[SeenIds]) -> Vec<SeenPiece> {
    let mut pieces = Vec::with_capacity(seen.len());
    for s in seen {
        let mut at = s.stored;
        let mut rest = s.ids.as_slice();
        while !rest.is_empty() {
            let in_chunk = at % SEEN_CHUNK_IDS;
            let room = (SEEN_CHUNK_IDS - in_chunk) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            pieces.push(SeenPiece {
                session_id: s.session_id,
                chunk: i32::try_from(at / SEEN_CHUNK_IDS).unwrap_or(i32::MAX),
                stored: i64::from(in_chunk),
                ids: now.iter().flat_map(|id| *id.as_bytes()).collect(),
            });
            at = at.saturating_add(u32::try_from(now.len()).unwrap_or(u32::MAX));
            rest = later;
        }
    }
    pieces
}

/// Every session with its kernels, ordered by id.
pub(crate) async fn all_sessions<D: Load>(pool: &Pool<D>) -> Result<Vec<SessionState>, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut all: Vec<_> = D::sessions(&mut conn, None).await?.into_values().collect();
    all.sort_by_key(|s| s.session.id);
    Ok(all)
}

/// The writes of a commit, inside its transaction.
pub(crate) trait Write: Database {
    /// Compare-and-set of every advanced partition's stored position; returns the partitions
    /// whose stored position was not the expected one, empty when all moved.
    fn advance<'c>(
        conn: &'c mut Self::Connection,
        source: &'c str,
        advances: &'c [Advance],
    ) -> impl Future<Output = Result<Vec<i32>, StoreError>> + Send + 'c;

    /// The rows every batch may have (sessions, kernels, dependencies, running counts) and its
    /// seen event ids, appended to each session's record; `false` when a record no longer holds
    /// the number of ids the batch loaded: another instance recorded events of that session
    /// after this batch was loaded (the same event published to another partition, say), and
    /// nothing of the batch may be written.
    fn rows<'c>(
        conn: &'c mut Self::Connection,
        commit: Commit<'c>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'c;

    /// What few batches have: released and newly parked events, retired and new dead letters
    /// (retired ones deleted first, so an event that fails again is stored with its new reason).
    fn rare<'c>(
        conn: &'c mut Self::Connection,
        commit: Commit<'c>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;

    /// Appends the batch's live events to the session event log, numbered after the log's head,
    /// notes which sessions it changed (`note`, numbered by the head's `changes`), and tells the
    /// query services when the transaction commits (the last step: the head's row lock orders
    /// the commits of several instances). Called when there are events or a note.
    fn publish<'c>(
        conn: &'c mut Self::Connection,
        events: &'c [sessionview_projection::LiveEvent],
        note: Option<&'c crate::changes::Note>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
}

/// Writes a folded batch and advances its positions, in one transaction.
/// Notes in the change log that everything may have changed (a swap or reset of the read
/// model), in `conn`'s transaction; followers are woken when it commits.
pub(crate) async fn note_everything<D: Write>(conn: &mut D::Connection) -> Result<(), StoreError> {
    D::publish(conn, &[], Some(&crate::changes::everything())).await
}

pub(crate) async fn commit<D: Write>(
    pool: &Pool<D>,
    commit: Commit<'_>,
) -> Result<CommitOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    // Positions first: the row locks taken here make a competing instance wait for us and then
    // fail its own compare-and-set, before either touches a session row.
    let conflicts = D::advance(&mut tx, commit.source, commit.advances).await?;
    if !conflicts.is_empty() {
        tx.rollback().await?;
        return Ok(CommitOutcome::Conflict {
            partitions: conflicts,
        });
    }
    if !D::rows(&mut tx, commit).await? {
        // Re-read, the batch sees the id as seen.
        tx.rollback().await?;
        return Ok(CommitOutcome::Conflict {
            partitions: commit.advances.iter().map(|a| a.partition).collect(),
        });
    }
    D::rare(&mut tx, commit).await?;
    let live = &commit.changes.live;
    let note = crate::changes::note(commit.changes)?;
    let published = !live.is_empty() || note.is_some();
    if published {
        D::publish(&mut tx, live, note.as_ref()).await?;
    }
    tx.commit().await?;
    if published {
        crate::live::COMMITTED.notify_waiters();
    }
    Ok(CommitOutcome::Committed)
}

/// The store traits of a backend, written once for both: each method one call into the shared
/// protocol or into the backend's module of the same role (`connect::migrator`,
/// `load::positions`, `commit::expire_parked`, `admin::{refresh_statistics, dead_letters, counts,
/// reset_read_model}`), on the backend's `pool` field.
macro_rules! store_traits {
    ($store:ty) => {
        impl $crate::SchemaStore for $store {
            async fn apply_migrations(
                &self,
            ) -> Result<Vec<$crate::MigrationId>, $crate::StoreError> {
                let mut conn = self.pool.acquire().await?;
                let applied = $crate::schema::migrate(&mut *conn, &connect::migrator()).await;
                if applied.is_err() {
                    // It may still hold the migration lock, or be inside a failed migration.
                    conn.close_on_drop();
                }
                applied
            }

            async fn schema_status(&self) -> Result<$crate::SchemaStatus, $crate::StoreError> {
                let mut conn = self.pool.acquire().await?;
                $crate::schema::status(&mut *conn, &connect::migrator()).await
            }
        }

        impl $crate::ProjectorStore for $store {
            async fn positions(
                &self,
                source: &str,
            ) -> Result<std::collections::BTreeMap<i32, i64>, $crate::StoreError> {
                load::positions(&self.pool, source).await
            }

            #[tracing::instrument(skip_all, fields(sessions = req.session_ids.len(), events = req.events.len()))]
            async fn load(
                &self,
                req: &sessionview_projection::LoadRequest,
            ) -> Result<sessionview_projection::Loaded, $crate::StoreError> {
                $crate::protocol::load(&self.pool, req).await
            }

            #[tracing::instrument(skip_all, fields(source = commit.source, sessions = commit.changes.sessions.len()))]
            async fn commit(
                &self,
                commit: $crate::Commit<'_>,
            ) -> Result<$crate::CommitOutcome, $crate::StoreError> {
                $crate::protocol::commit(&self.pool, commit).await
            }

            async fn expire_parked(
                &self,
                source: &str,
                partitions: &[i32],
                cutoff: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::StoreError> {
                commit::expire_parked(&self.pool, source, partitions, cutoff).await
            }

            #[tracing::instrument(skip_all)]
            async fn refresh_statistics(&self) -> Result<Vec<String>, $crate::StoreError> {
                admin::refresh_statistics(&self.pool).await
            }
        }

        impl $crate::OperationsStore for $store {
            async fn dead_letters(
                &self,
                filter: &$crate::DeadLetterFilter,
            ) -> Result<Vec<$crate::StoredDeadLetter>, $crate::StoreError> {
                admin::dead_letters(&self.pool, filter).await
            }

            async fn all_sessions(
                &self,
            ) -> Result<Vec<sessionview_projection::SessionState>, $crate::StoreError> {
                $crate::protocol::all_sessions(&self.pool).await
            }

            async fn counts(&self) -> Result<$crate::StoreCounts, $crate::StoreError> {
                admin::counts(&self.pool).await
            }

            async fn ping(&self) -> Result<(), $crate::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn reset_read_model(&self) -> Result<(), $crate::StoreError> {
                admin::reset_read_model(&self.pool).await
            }
        }
    };
}

pub(crate) use store_traits;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_fill_the_last_chunk_then_start_new_ones() {
        let ids = |n: usize| -> Vec<Uuid> { (0..n).map(|i| Uuid::from_u128(i as u128)).collect() };
        let session_id = Uuid::from_u128(7);
        let shape = |stored: u32, n: usize| -> Vec<(i32, i64, usize)> {
            seen_pieces(&[SeenIds {
                session_id,
                stored,
                ids: ids(n),
            }])
            .into_iter()
            .map(|p| (p.chunk, p.stored, p.ids.len() / 16))
            .collect()
        };
        assert_eq!(shape(0, 3), vec![(0, 0, 3)], "a new record");
        assert_eq!(shape(5, 3), vec![(0, 5, 3)]);
        assert_eq!(
            shape(118, 3),
            vec![(0, 118, 2), (1, 0, 1)],
            "across a boundary"
        );
        assert_eq!(shape(120, 1), vec![(1, 0, 1)], "a full chunk is left alone");
        assert_eq!(
            shape(100, 300),
            vec![(0, 100, 20), (1, 0, 120), (2, 0, 120), (3, 0, 40)]
        );
        let bytes: Vec<u8> = seen_pieces(&[SeenIds {
            session_id,
            stored: 0,
            ids: ids(2),
        }])
        .remove(0)
        .ids;
        assert_eq!(bytes[..16], *Uuid::from_u128(0).as_bytes());
        assert_eq!(bytes[16..], *Uuid::from_u128(1).as_bytes());
    }
}
