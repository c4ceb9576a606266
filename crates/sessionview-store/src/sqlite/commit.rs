//! The projector's commit on SQLite: positions by compare-and-set, then multi-row
//! `INSERT ... ON CONFLICT` upserts of [`CHUNK`] rows each, in the batch's one transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sessionview_projection::{SeenIds, SessionRow};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::CHUNK;
use crate::changes::{Note, prune_through};
use crate::columns::{
    DEAD_LETTERS, KERNELS, PARKED_EVENTS, SESSIONS, Value, dead_letter_values, kernel_values,
    parked_values, session_values,
};
use crate::live::{pages, prune_below};
use crate::protocol::{SeenPiece, Write, seen_pieces};
use crate::sql::{Dialect, insert};
use crate::{Advance, Commit, StoreError};
use sessionview_projection::LiveEvent;

impl Write for Sqlite {
    async fn advance(
        conn: &mut SqliteConnection,
        source: &str,
        advances: &[Advance],
    ) -> Result<Vec<i32>, StoreError> {
        let mut conflicts = Vec::new();
        for a in advances {
            let affected = match a.expected {
                Some(expected) => sqlx::query(
                    "UPDATE source_positions SET next_offset = ?, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                     WHERE source = ? AND partition = ? AND next_offset = ?",
                )
                .bind(a.next)
                .bind(source)
                .bind(a.partition)
                .bind(expected)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO source_positions (source, partition, next_offset) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(source)
                .bind(a.partition)
                .bind(a.next)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
            };
            if affected != 1 {
                conflicts.push(a.partition);
            }
        }
        Ok(conflicts)
    }

    async fn rows(conn: &mut SqliteConnection, commit: Commit<'_>) -> Result<bool, StoreError> {
        if !record_seen(conn, &commit.changes.seen).await? {
            return Ok(false);
        }
        write_rows(conn, commit).await?;
        Ok(true)
    }

    async fn rare(conn: &mut SqliteConnection, commit: Commit<'_>) -> Result<(), StoreError> {
        write_rare(conn, commit).await
    }

    async fn publish(
        conn: &mut SqliteConnection,
        events: &[LiveEvent],
        note: Option<&Note>,
    ) -> Result<(), StoreError> {
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let (head, noted): (i64, i64) = sqlx::query_as(
            "UPDATE session_events_head SET seq = seq + ?, changes = changes + ? WHERE id = 1 \
             RETURNING seq, changes",
        )
        .bind(n)
        .bind(i64::from(note.is_some()))
        .fetch_one(&mut *conn)
        .await?;
        for page in pages(events, head - n + 1)? {
            sqlx::query(
                "INSERT INTO session_event_pages (first_seq, last_seq, events) VALUES (?, ?, ?)",
            )
            .bind(page.first_seq)
            .bind(page.last_seq)
            .bind(page.events)
            .execute(&mut *conn)
            .await?;
        }
        if let Some(below) = prune_below(head, n) {
            sqlx::query("DELETE FROM session_event_pages WHERE last_seq < ?")
                .bind(below)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(note) = note {
            insert_note(conn, noted, note).await?;
            if let Some(through) = prune_through(noted) {
                sqlx::query("DELETE FROM session_changes WHERE seq <= ?")
                    .bind(through)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn insert_note(conn: &mut SqliteConnection, seq: i64, note: &Note) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO session_changes (seq, everything, sessions, owners) VALUES (?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(note.everything)
    .bind(note.sessions.as_slice())
    .bind(note.owners.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends the batch's event ids to their sessions' records; `false` when a chunk no longer holds
/// the number of ids the batch loaded (or was created meanwhile).
async fn record_seen(conn: &mut SqliteConnection, seen: &[SeenIds]) -> Result<bool, StoreError> {
    let pieces = seen_pieces(seen);
    let (appended, created): (Vec<&SeenPiece>, Vec<&SeenPiece>) =
        pieces.iter().partition(|p| p.stored > 0);
    let mut written = 0;
    for chunk in appended.chunks(CHUNK) {
        // `||` makes text of blobs, byte for byte (UTF-8 databases); CAST makes it a blob again.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE session_seen AS r SET ids = CAST(r.ids || u.column4 AS BLOB) FROM (VALUES ",
        );
        push_pieces(&mut qb, chunk);
        qb.push(
            ") AS u WHERE r.session_id = u.column1 AND r.chunk = u.column2 \
             AND length(r.ids) = u.column3 * 16",
        );
        written += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    for chunk in created.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO session_seen (session_id, chunk, ids) \
             SELECT column1, column2, column4 FROM (VALUES ",
        );
        push_pieces(&mut qb, chunk);
        qb.push(") WHERE true ON CONFLICT DO NOTHING");
        written += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(usize::try_from(written).is_ok_and(|n| n == pieces.len()))
}

/// `(session, chunk, stored, ids), ...` for a `VALUES` list.
fn push_pieces<'a>(qb: &mut QueryBuilder<'a, Sqlite>, pieces: &[&'a SeenPiece]) {
    for (i, p) in pieces.iter().enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        Sqlite::push_value(qb, Value::Uuid(Some(p.session_id)));
        qb.push(", ");
        Sqlite::push_value(qb, Value::Int4(Some(p.chunk)));
        qb.push(", ");
        Sqlite::push_value(qb, Value::Int8(Some(p.stored)));
        qb.push(", ");
        Sqlite::push_value(qb, Value::Bytes(Some(&p.ids)));
        qb.push(")");
    }
}

/// Sessions, kernels (whole or their statistics alike: an upsert) and dependencies.
async fn write_rows(conn: &mut SqliteConnection, commit: Commit<'_>) -> Result<(), StoreError> {
    let changes = commit.changes;
    let sessions: Vec<&SessionRow> = changes.session_rows().collect();
    for chunk in sessions.chunks(CHUNK) {
        let mut qb = insert::<Sqlite, 28>(&SESSIONS, chunk.iter().map(|r| session_values(r)));
        qb.push(format!(
            " ON CONFLICT (id) DO UPDATE SET {}",
            SESSIONS.upsert_assignments()
        ));
        qb.build().execute(&mut *conn).await?;
    }
    let kernels: Vec<_> = changes.kernel_rows().collect();
    for chunk in kernels.chunks(CHUNK) {
        let mut qb = insert::<Sqlite, 18>(&KERNELS, chunk.iter().map(|k| kernel_values(k)));
        qb.push(format!(
            " ON CONFLICT (id) DO UPDATE SET {}",
            KERNELS.upsert_assignments()
        ));
        qb.build().execute(&mut *conn).await?;
    }
    // Dependencies never change after the enqueue: written once, for sessions created here.
    let created: HashSet<Uuid> = changes.created.iter().copied().collect();
    let deps: Vec<(Uuid, i32, Uuid)> = changes
        .sessions
        .iter()
        .filter(|s| created.contains(&s.session.id))
        .flat_map(|s| {
            s.session
                .dependencies
                .iter()
                .zip(0i32..)
                .map(move |(d, i)| (s.session.id, i, *d))
        })
        .collect();
    for chunk in deps.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO session_dependencies (session_id, ordinal, depends_on) VALUES ",
        );
        for (i, (session, ordinal, on)) in chunk.iter().enumerate() {
            qb.push(if i == 0 { "(" } else { ", (" });
            Sqlite::push_value(&mut qb, Value::Uuid(Some(*session)));
            qb.push(", ");
            Sqlite::push_value(&mut qb, Value::Int4(Some(*ordinal)));
            qb.push(", ");
            Sqlite::push_value(&mut qb, Value::Uuid(Some(*on)));
            qb.push(")");
        }
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Released and newly parked events, retired and new dead letters.
async fn write_rare(conn: &mut SqliteConnection, commit: Commit<'_>) -> Result<(), StoreError> {
    let changes = commit.changes;
    for (source, p) in &changes.released {
        sqlx::query(
            "DELETE FROM parked_events WHERE source = ? AND partition = ? AND \"offset\" = ?",
        )
        .bind(source)
        .bind(p.partition)
        .bind(p.offset)
        .execute(&mut *conn)
        .await?;
    }
    for chunk in changes.parked.chunks(CHUNK) {
        let mut qb = insert::<Sqlite, 6>(&PARKED_EVENTS, chunk.iter().map(parked_values));
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in commit.retire.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM dead_letters WHERE id");
        Sqlite::push_in(
            &mut qb,
            chunk.iter().map(|id| Value::Int8(Some(*id))).collect(),
        );
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in changes.dead_letters.chunks(CHUNK) {
        let mut qb = insert::<Sqlite, 9>(&DEAD_LETTERS, chunk.iter().map(dead_letter_values));
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// See [`crate::ProjectorStore::expire_parked`].
pub(super) async fn expire_parked(
    pool: &SqlitePool,
    source: &str,
    partitions: &[i32],
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    // The format of parked_at's default, so that text order is time order.
    let cutoff = cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let mut tx = pool.begin().await?;
    let mut moved = 0;
    for p in partitions {
        moved += sqlx::query(
            "INSERT INTO dead_letters (source, partition, \"offset\", event_id, session_id, label, reason, payload) \
             SELECT source, partition, \"offset\", event_id, session_id, ?, ?, payload FROM parked_events \
             WHERE source = ? AND partition = ? AND parked_at < ? ON CONFLICT DO NOTHING",
        )
        .bind(crate::PARKED_EXPIRED)
        .bind(crate::PARKED_EXPIRED_REASON)
        .bind(source)
        .bind(p)
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM parked_events WHERE source = ? AND partition = ? AND parked_at < ?",
        )
        .bind(source)
        .bind(p)
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(moved)
}
