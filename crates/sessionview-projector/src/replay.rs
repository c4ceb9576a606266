//! Rebuilding the read model from the event log, with the same [`crate::run`] as `project`.
//!
//! [`rebuild_in_shadow`] (PostgreSQL, zero downtime): project the log into the shadow schema up to
//! the live projector's positions; follow the live projector until the gap is small; then freeze
//! the live positions (the live projector waits, readers do not), apply the last events to the
//! shadow, verify it against the live tables, and swap the tables in one transaction (or, in
//! [`ReplayMode::VerifyOnly`], only report). [`rebuild_in_place`] empties the live tables and
//! rebuilds them (any backend; for small or offline databases).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use sessionview_store::prelude::*;
use sessionview_store::{LIVE_SCHEMA, PgStore, StoreCounts, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{BatchConfig, ProjectorError, RunOptions, SourceConfig, Summary, Until};

/// The schema a rebuild is built in.
pub const SHADOW_SCHEMA: &str = "sessionview_shadow";
/// The schema the replaced live tables go to during the swap (then dropped).
pub const RETIRED_SCHEMA: &str = "sessionview_retired";
/// The largest gap (events) the shadow closes while the live projector is frozen.
const FROZEN_CATCH_UP_MAX: i64 = 20_000;
/// How many times the shadow follows a live projector that keeps moving before it freezes it.
const FOLLOW_ROUNDS: usize = 8;

/// What a shadow rebuild ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Verify, then swap the rebuilt tables in.
    Swap,
    /// Verify and report; the live tables stay.
    VerifyOnly,
}

/// A rebuild: where the log is, how to batch it, and who watches its progress.
#[derive(Debug, Clone)]
pub struct Rebuild {
    pub source: SourceConfig,
    pub batch: BatchConfig,
    /// Events applied so far (for progress reports).
    pub progress: Arc<AtomicU64>,
}

impl Rebuild {
    /// Projects the log into `store` until `until`.
    async fn run_to(
        &self,
        store: impl Store,
        until: Until,
        shutdown: &CancellationToken,
    ) -> Result<Summary, ProjectorError> {
        let opts = RunOptions {
            batch: self.batch,
            until,
            progress: Some(Arc::clone(&self.progress)),
            standalone: true,
            ..RunOptions::default()
        };
        crate::run(self.source.clone(), store, opts, shutdown.clone()).await
    }
}

/// How the shadow compares with the live tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub live: StoreCounts,
    pub shadow: StoreCounts,
    /// Sessions whose content differs, or that exist on one side only.
    pub differing: Vec<Uuid>,
    /// Live list totals that disagree with the live sessions: `(access_key, status, counted,
    /// kept)` (a rebuild recomputes them).
    pub count_drift: Vec<(String, String, i64, i64)>,
}

impl Verification {
    /// Whether the live tables equal the rebuild.
    pub fn is_clean(&self) -> bool {
        self.differing.is_empty() && self.live == self.shadow && self.count_drift.is_empty()
    }
}

/// What a shadow rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// The rebuilt tables are live, at these positions.
    Swapped {
        verification: Verification,
        positions: BTreeMap<i32, i64>,
    },
    /// [`ReplayMode::VerifyOnly`]: the live tables equal the rebuild.
    Verified(Verification),
}

/// Why a rebuild stopped. The live tables are untouched by a shadow rebuild that stops.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("interrupted: the live tables are untouched; run replay again to start over")]
    Interrupted,
    #[error(
        "the live projector is behind the rebuilt tables and has not advanced for {} s; start it, or use --in-place",
        .0.as_secs()
    )]
    LiveStalled(Duration),
    /// [`ReplayMode::VerifyOnly`] found differences.
    #[error(
        "the live tables differ from a fresh rebuild: {} sessions, {} list totals (access key and status pairs)",
        .0.differing.len(),
        .0.count_drift.len()
    )]
    Differs(Box<Verification>),
}

/// Compares the shadow schema with the live tables.
async fn verify(live: &PgStore) -> Result<Verification, StoreError> {
    let (a, b) = tokio::try_join!(
        live.session_digests(LIVE_SCHEMA),
        live.session_digests(SHADOW_SCHEMA)
    )?;
    let mut differing: Vec<Uuid> = a
        .iter()
        .filter(|(id, d)| b.get(*id) != Some(*d))
        .map(|(id, _)| *id)
        .chain(b.keys().filter(|id| !a.contains_key(*id)).copied())
        .collect();
    differing.sort();
    Ok(Verification {
        live: live.counts_in(LIVE_SCHEMA).await?,
        shadow: live.counts_in(SHADOW_SCHEMA).await?,
        differing,
        count_drift: live.session_count_drift(LIVE_SCHEMA).await?,
    })
}

/// Zero-downtime rebuild of `live` (see the module). `connect_shadow` opens a store whose tables
/// resolve in [`SHADOW_SCHEMA`]. The caller holds the replay lock.
pub async fn rebuild_in_shadow<F, Fut>(
    live: &PgStore,
    connect_shadow: F,
    rebuild: &Rebuild,
    mode: ReplayMode,
    align_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<Rebuilt, ReplayError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<PgStore, StoreError>>,
{
    let source_name = rebuild.source.source_name();
    let live_positions = live.positions(&source_name).await?;
    live.reset_schema(SHADOW_SCHEMA).await?;
    let shadow = connect_shadow().await?;
    shadow.migrate().await?;
    let interrupted = || shutdown.is_cancelled();

    // Phase 1: the bulk, up to the live projector's positions as they are now (or the end).
    let first = if live_positions.is_empty() {
        Until::End
    } else {
        Until::Positions(live_positions)
    };
    rebuild.run_to(shadow.clone(), first, shutdown).await?;
    if interrupted() {
        return Err(ReplayError::Interrupted);
    }

    // Phase 2: follow the live projector without stopping it, until the gap is small.
    for _ in 0..FOLLOW_ROUNDS {
        let l = live.positions(&source_name).await?;
        let s = shadow.positions(&source_name).await?;
        let gap: i64 = l
            .iter()
            .map(|(p, n)| (n - s.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        if gap <= FROZEN_CATCH_UP_MAX {
            break;
        }
        rebuild
            .run_to(shadow.clone(), Until::Positions(l), shutdown)
            .await?;
        if interrupted() {
            return Err(ReplayError::Interrupted);
        }
    }

    // Phase 3: freeze the live positions, apply the last few events to the shadow, verify, swap.
    let mut last_live: Option<BTreeMap<i32, i64>> = None;
    let mut idle_since = Instant::now();
    loop {
        let mut freeze = live.freeze_live(Duration::from_secs(5)).await?;
        let l = freeze.live_positions(&source_name).await?;
        let s = shadow.positions(&source_name).await?;
        if l.iter().any(|(p, n)| s.get(p).is_some_and(|sn| sn > n)) {
            // The shadow is ahead of a lagging live projector: let it catch up.
            freeze.release().await?;
            if last_live.as_ref() != Some(&l) {
                last_live = Some(l);
                idle_since = Instant::now();
            } else if idle_since.elapsed() > align_timeout {
                return Err(ReplayError::LiveStalled(align_timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if l.iter().any(|(p, n)| s.get(p).is_none_or(|sn| sn < n)) {
            let caught_up = rebuild
                .run_to(shadow.clone(), Until::Positions(l.clone()), shutdown)
                .await;
            if caught_up.is_err() || interrupted() {
                freeze.release().await?;
                caught_up?;
                return Err(ReplayError::Interrupted);
            }
        }
        let verification = verify(live).await?;
        if mode == ReplayMode::VerifyOnly {
            freeze.release().await?;
            live.drop_schema(SHADOW_SCHEMA).await?;
            return if verification.is_clean() {
                Ok(Rebuilt::Verified(verification))
            } else {
                Err(ReplayError::Differs(Box::new(verification)))
            };
        }
        freeze
            .swap_and_commit(SHADOW_SCHEMA, RETIRED_SCHEMA)
            .await?;
        // The rebuilt tables are live from here on: what is left behind is cleaned up, and a
        // failure to is not the replay's (the next replay drops both schemas again).
        for schema in [RETIRED_SCHEMA, SHADOW_SCHEMA] {
            if let Err(e) = live.drop_schema(schema).await {
                tracing::warn!(
                    schema,
                    error = %e,
                    "the rebuilt tables are live, but dropping the schema left behind failed; the next replay drops it"
                );
            }
        }
        // The rebuilt tables' positions (the live ones, or the end of the log when nothing was
        // live).
        let positions = live.positions(&source_name).await?;
        return Ok(Rebuilt::Swapped {
            verification,
            positions,
        });
    }
}

/// Empties the read model of `store` and rebuilds it from the whole log (queries see partial
/// tables meanwhile; stop the live projector first).
pub async fn rebuild_in_place(
    store: impl Store,
    rebuild: &Rebuild,
    shutdown: &CancellationToken,
) -> Result<Summary, ProjectorError> {
    store.reset_read_model().await?;
    rebuild.run_to(store, Until::End, shutdown).await
}
