//! The projector's protocol with a store, written once for every backend: what a load reads, and
//! the order in which a commit checks and writes — positions by compare-and-set, then the rows
//! with the batch's seen event ids (a conflict on either writes nothing), then the rare rows —
//! all in one transaction. Each backend supplies the statements ([`Load`], [`Write`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use sessionview_projection::{LoadRequest, Loaded, ParkedEvent, SessionState};
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

    /// Which of `ids` are recorded as seen.
    fn seen<'c>(
        conn: &'c mut Self::Connection,
        ids: &'c [Uuid],
    ) -> impl Future<Output = Result<HashSet<Uuid>, StoreError>> + Send + 'c;

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
    let seen = if req.event_ids.is_empty() {
        HashSet::new()
    } else {
        D::seen(&mut conn, &req.event_ids).await?
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
        parked,
        kernel_owners,
    })
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
    /// seen event ids; `false` when one of those ids is recorded already: another instance
    /// applied the same event from another partition after this batch was loaded, and nothing
    /// of the batch may be written.
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
}

/// Writes a folded batch and advances its positions, in one transaction.
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
    tx.commit().await?;
    Ok(CommitOutcome::Committed)
}
