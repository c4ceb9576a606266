//! SQLite operations: counts, dead letters, and the in-place reset of a rebuild.

use sqlx::{Sqlite, SqlitePool};

use super::SqliteCells;
use crate::columns::{counts_from, counts_sql, dead_letter_from};
use crate::sql::dead_letter_query;
use crate::{DeadLetterFilter, StoreCounts, StoreError, StoredDeadLetter};

/// Row counts of every table.
pub(super) async fn counts(pool: &SqlitePool) -> Result<StoreCounts, StoreError> {
    let r = sqlx::query(&counts_sql("")).fetch_one(pool).await?;
    counts_from(&mut SqliteCells::at(&r, 0, "counts"))
}

/// Dead letters, oldest first.
pub(super) async fn dead_letters(
    pool: &SqlitePool,
    filter: &DeadLetterFilter,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let rows = dead_letter_query::<Sqlite>(filter)
        .build()
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| dead_letter_from(&mut SqliteCells::at(r, 0, "dead_letters")))
        .collect()
}

/// Nothing to refresh: without `sqlite_stat1` rows SQLite assumes an index narrows a lookup to a
/// few rows, which is right for every key lookup here; there is no cached plan to go stale.
pub(super) async fn refresh_statistics(_pool: &SqlitePool) -> Result<Vec<String>, StoreError> {
    Ok(Vec::new())
}

/// Empties the read model's tables in one transaction, and notes that everything changed.
pub(super) async fn reset_read_model(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // PostgreSQL's list of tables less `session_counts`, which SQLite does not keep.
    for table in crate::READ_MODEL_TABLES
        .iter()
        .filter(|t| **t != crate::SESSION_COUNTS_TABLE)
    {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    crate::protocol::note_everything::<sqlx::Sqlite>(&mut tx).await?;
    tx.commit().await?;
    crate::live::COMMITTED.notify_waiters();
    Ok(())
}
