//! Keeps the query planner's statistics of the growing read-model tables current while the
//! projector writes (see [`Store::refresh_statistics`]).
//!
//! On a new or freshly rebuilt database autovacuum gathers the first statistics a minute or more
//! after the rows arrive; until then every cached generic plan made while a table was small scans
//! it whole, in the projector's loads and in the query service alike. A check every
//! [`INTERVAL`] costs one catalog query; a table is analyzed each time it has doubled, so a
//! table of N rows is analyzed about log2(N) times over its life, and autovacuum keeps the
//! statistics of a steady table.

use std::time::Duration;

use sessionview_store::Store;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics;

/// Time between two checks.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

/// Checks every [`INTERVAL`] until `stop`; a failed check is logged and tried again at the next.
pub(crate) async fn refresh_until<S: Store>(store: S, stop: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate: the tables are checked once the projector starts.
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let span = tracing::info_span!("refresh_statistics");
        match store.refresh_statistics().instrument(span).await {
            Ok(tables) if tables.is_empty() => {}
            Ok(tables) => {
                tracing::info!(?tables, "refreshed the planner statistics of grown tables");
                metrics::statistics_refreshed(&tables);
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing planner statistics failed; trying again later");
            }
        }
    }
}
