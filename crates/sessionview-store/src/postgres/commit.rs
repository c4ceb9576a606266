//! The projector's commit on PostgreSQL, in few statements: one for the positions, one for the
//! rows every batch has, one each for the rare ones (parked events, dead letters), so that a
//! small steady-state batch costs the database three round trips and its statements' work.
//! Rows are bound column-wise (`UNNEST` of one array per column of [`crate::columns`]).

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use crate::changes::{Note, prune_through};
use crate::columns::{
    DEAD_LETTERS, KERNELS, Kind, PARKED_EVENTS, SESSIONS, Table, Value, dead_letter_values,
    kernel_values, parked_values, session_values,
};
use crate::live::{SESSION_EVENTS_CHANNEL, pages, prune_below};
use crate::protocol::{Write, seen_pieces};
use crate::{Advance, Commit, StoreError};
use sessionview_projection::LiveEvent;

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

impl Write for Postgres {
    /// Compare-and-set of every advanced partition's stored position; returns the partitions whose
    /// stored position was not the expected one (in `advances` order), empty when all moved.
    async fn advance(
        conn: &mut PgConnection,
        source: &str,
        advances: &[Advance],
    ) -> Result<Vec<i32>, StoreError> {
        let mut moved: HashSet<i32> = HashSet::with_capacity(advances.len());
        let (new, known): (Vec<&Advance>, Vec<&Advance>) =
            advances.iter().partition(|a| a.expected.is_none());
        if !new.is_empty() {
            // First positions of partitions: a row another instance inserted first is a conflict.
            let partitions: Vec<i32> = new.iter().map(|a| a.partition).collect();
            let next: Vec<i64> = new.iter().map(|a| a.next).collect();
            let inserted: Vec<i32> = sqlx::query_scalar(
                "INSERT INTO source_positions (source, partition, next_offset) \
                 SELECT $1, p, n FROM UNNEST($2::int4[], $3::int8[]) AS u(p, n) ORDER BY p \
                 ON CONFLICT DO NOTHING RETURNING partition",
            )
            .bind(source)
            .bind(&partitions)
            .bind(&next)
            .fetch_all(&mut *conn)
            .await?;
            moved.extend(inserted);
        }
        if !known.is_empty() {
            // The rows are locked in partition order first (`locked`), so two instances advancing
            // overlapping partitions wait for each other instead of deadlocking. A row changed by a
            // transaction we waited for is re-checked against its new offset (READ COMMITTED's
            // re-check of an updated row), so it counts as moved only if it still held `expected`.
            let partitions: Vec<i32> = known.iter().map(|a| a.partition).collect();
            let expected: Vec<i64> = known.iter().filter_map(|a| a.expected).collect();
            let next: Vec<i64> = known.iter().map(|a| a.next).collect();
            let updated: Vec<i32> = sqlx::query_scalar(
                "WITH locked AS MATERIALIZED ( \
                    SELECT partition FROM source_positions \
                    WHERE source = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE) \
                 UPDATE source_positions p SET next_offset = u.next, updated_at = now() \
                 FROM UNNEST($2::int4[], $3::int8[], $4::int8[]) AS u(partition, expected, next) \
                 WHERE p.source = $1 AND p.partition = u.partition AND p.next_offset = u.expected \
                    AND p.partition IN (SELECT partition FROM locked) \
                 RETURNING p.partition",
            )
            .bind(source)
            .bind(&partitions)
            .bind(&expected)
            .bind(&next)
            .fetch_all(&mut *conn)
            .await?;
            moved.extend(updated);
        }
        Ok(advances
            .iter()
            .filter(|a| !moved.contains(&a.partition))
            .map(|a| a.partition)
            .collect())
    }

    async fn rows(conn: &mut PgConnection, commit: Commit<'_>) -> Result<bool, StoreError> {
        write_rows(conn, &commit).await
    }

    async fn rare(conn: &mut PgConnection, commit: Commit<'_>) -> Result<(), StoreError> {
        write_rare(conn, &commit).await
    }

    async fn publish(
        conn: &mut PgConnection,
        events: &[LiveEvent],
        note: Option<&Note>,
    ) -> Result<(), StoreError> {
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        // Numbers for the events and the note, the note itself and the wake-up of every
        // follower (delivered when, and only if, the transaction commits): one round trip.
        let (head, noted): (i64, i64) = sqlx::query_as(
            "WITH h AS (UPDATE session_events_head SET seq = seq + $1, changes = changes + $2 \
                WHERE id = 1 RETURNING seq, changes), \
             c AS (INSERT INTO session_changes (seq, everything, sessions, owners) \
                SELECT changes, $6, $3, $4 FROM h WHERE $2 = 1) \
             SELECT seq, changes FROM h, pg_notify($5, seq::text)",
        )
        .bind(n)
        .bind(i64::from(note.is_some()))
        .bind(note.map(|n| n.sessions.as_slice()))
        .bind(note.map(|n| n.owners.as_str()))
        .bind(SESSION_EVENTS_CHANNEL)
        .bind(note.is_some_and(|n| n.everything))
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            let pages = pages(events, head - n + 1)?;
            let firsts: Vec<i64> = pages.iter().map(|p| p.first_seq).collect();
            let lasts: Vec<i64> = pages.iter().map(|p| p.last_seq).collect();
            let texts: Vec<&str> = pages.iter().map(|p| p.events.as_str()).collect();
            sqlx::query(
                "INSERT INTO session_event_pages (first_seq, last_seq, events) \
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[])",
            )
            .bind(&firsts)
            .bind(&lasts)
            .bind(&texts)
            .execute(&mut *conn)
            .await?;
        }
        if let Some(below) = prune_below(head, n) {
            sqlx::query("DELETE FROM session_event_pages WHERE last_seq < $1")
                .bind(below)
                .execute(&mut *conn)
                .await?;
        }
        if note.is_some()
            && let Some(through) = prune_through(noted)
        {
            sqlx::query("DELETE FROM session_changes WHERE seq <= $1")
                .bind(through)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// One table's rows as one array per column, for `UNNEST`.
struct Columnar<'a> {
    columns: Vec<ColumnVec<'a>>,
    /// A value whose kind is not its column's (a programming error the column tests rule out;
    /// reported, never bound).
    mismatch: bool,
}

enum ColumnVec<'a> {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<&'a str>>),
    Int4(Vec<Option<i32>>),
    Int8(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Json(Vec<Option<String>>),
    Bytes(Vec<Option<&'a [u8]>>),
}

impl<'a> Columnar<'a> {
    fn new(table: &Table, rows: usize) -> Self {
        let columns = table
            .columns
            .iter()
            .map(|c| match c.kind {
                Kind::Uuid => ColumnVec::Uuid(Vec::with_capacity(rows)),
                Kind::Text => ColumnVec::Text(Vec::with_capacity(rows)),
                Kind::Int4 => ColumnVec::Int4(Vec::with_capacity(rows)),
                Kind::Int8 => ColumnVec::Int8(Vec::with_capacity(rows)),
                Kind::Bool => ColumnVec::Bool(Vec::with_capacity(rows)),
                Kind::Time => ColumnVec::Time(Vec::with_capacity(rows)),
                Kind::Json => ColumnVec::Json(Vec::with_capacity(rows)),
                Kind::Bytes => ColumnVec::Bytes(Vec::with_capacity(rows)),
            })
            .collect();
        Self {
            columns,
            mismatch: false,
        }
    }

    /// Columnar of `rows`, each in the table's column order.
    fn of<const N: usize>(
        table: &Table,
        rows: impl ExactSizeIterator<Item = [Value<'a>; N]>,
    ) -> Self {
        let mut c = Self::new(table, rows.len());
        for row in rows {
            c.push(row);
        }
        c
    }

    fn push<const N: usize>(&mut self, row: [Value<'a>; N]) {
        self.mismatch |= row.len() != self.columns.len();
        for (column, value) in self.columns.iter_mut().zip(row) {
            match (column, value) {
                (ColumnVec::Uuid(c), Value::Uuid(v)) => c.push(v),
                (ColumnVec::Text(c), Value::Text(v)) => c.push(v),
                (ColumnVec::Int4(c), Value::Int4(v)) => c.push(v),
                (ColumnVec::Int8(c), Value::Int8(v)) => c.push(v),
                (ColumnVec::Bool(c), Value::Bool(v)) => c.push(v),
                (ColumnVec::Time(c), Value::Time(v)) => c.push(v),
                (ColumnVec::Json(c), Value::Json(v)) => c.push(v),
                (ColumnVec::Bytes(c), Value::Bytes(v)) => c.push(v),
                _ => self.mismatch = true,
            }
        }
    }

    fn bind(self, table: &Table, mut q: PgQuery<'a>) -> Result<PgQuery<'a>, StoreError> {
        if self.mismatch {
            return Err(StoreError::Corrupt {
                table: table.name,
                detail: "a row's values do not match the table's columns".to_owned(),
            });
        }
        for column in self.columns {
            q = match column {
                ColumnVec::Uuid(v) => q.bind(v),
                ColumnVec::Text(v) => q.bind(v),
                ColumnVec::Int4(v) => q.bind(v),
                ColumnVec::Int8(v) => q.bind(v),
                ColumnVec::Bool(v) => q.bind(v),
                ColumnVec::Time(v) => q.bind(v),
                ColumnVec::Json(v) => q.bind(v),
                ColumnVec::Bytes(v) => q.bind(v),
            };
        }
        Ok(q)
    }
}

/// `$first::uuid[], $next::text[], ...`: one array parameter per column of `table`, cast to its
/// column's type (JSON is bound as text).
fn unnest_parameters(table: &Table, first: usize) -> String {
    table
        .columns
        .iter()
        .zip(first..)
        .map(|(c, n)| match c.kind {
            Kind::Uuid => format!("${n}::uuid[]"),
            Kind::Text => format!("${n}::text[]"),
            Kind::Int4 => format!("${n}::int4[]"),
            Kind::Int8 => format!("${n}::int8[]"),
            Kind::Bool => format!("${n}::bool[]"),
            Kind::Time => format!("${n}::timestamptz[]"),
            Kind::Json => format!("${n}::text[]::jsonb[]"),
            Kind::Bytes => format!("${n}::bytea[]"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO table (columns) SELECT * FROM UNNEST(...)`, parameters from `first`.
fn unnest_insert(table: &Table, first: usize) -> String {
    format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
        table.name,
        table.list(),
        unnest_parameters(table, first)
    )
}

/// The rows every batch may have, in one statement: sessions, kernels (whole, or only their
/// statistics), running counts, dependencies and seen event ids; data-modifying CTEs, each on its
/// own table except the two of `kernels`, whose rows are disjoint (a kernel is written whole or
/// by its statistics), and the two of `session_seen`, whose sessions are disjoint (a record is
/// appended to, or created). An empty array makes its part a no-op, so the statement text (and
/// its prepared plan) is one for every batch. It returns how many records it appended to or
/// created: one per [`crate::protocol::SeenPiece`] of the batch, or the batch must not commit.
static WRITE_ROWS: LazyLock<String> = LazyLock::new(|| {
    let k = 1 + SESSIONS.columns.len();
    let stat = k + KERNELS.columns.len();
    let counts = stat + 2;
    let deps = counts + 6;
    let seen = deps + 3;
    format!(
        "WITH sessions_written AS ({} ON CONFLICT (id) DO UPDATE SET {}), \
         kernels_written AS ({} ON CONFLICT (id) DO UPDATE SET {}), \
         stats_written AS (UPDATE kernels k SET last_stat = u.last_stat \
            FROM UNNEST(${stat}::uuid[], ${}::jsonb[]) AS u(id, last_stat) WHERE k.id = u.id), \
         counts_written AS ( \
            INSERT INTO session_counts AS c (access_key, status, domain_name, group_id, shard, n) \
            SELECT a, s, d, g, ${}, n FROM UNNEST(${counts}::text[], ${}::text[], ${}::text[], \
                ${}::uuid[], ${}::int8[]) AS u(a, s, d, g, n) \
            ON CONFLICT (access_key, status, domain_name, group_id, shard) \
            DO UPDATE SET n = c.n + EXCLUDED.n), \
         dependencies_written AS ( \
            INSERT INTO session_dependencies (session_id, ordinal, depends_on) \
            SELECT * FROM UNNEST(${deps}::uuid[], ${}::int4[], ${}::uuid[]) ON CONFLICT DO NOTHING), \
         seen AS MATERIALIZED (SELECT * FROM UNNEST(${seen}::uuid[], ${}::int4[], ${}::int8[], \
            ${}::bytea[]) AS u(session_id, chunk, stored, ids)), \
         seen_appended AS (UPDATE session_seen r SET ids = r.ids || u.ids FROM seen u \
            WHERE u.stored > 0 AND r.session_id = u.session_id AND r.chunk = u.chunk \
                AND octet_length(r.ids)::int8 = u.stored * 16 \
            RETURNING 1), \
         seen_created AS (INSERT INTO session_seen (session_id, chunk, ids) \
            SELECT session_id, chunk, ids FROM seen WHERE stored = 0 ORDER BY session_id, chunk \
            ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT (SELECT count(*) FROM seen_appended) + (SELECT count(*) FROM seen_created)",
        unnest_insert(&SESSIONS, 1),
        SESSIONS.upsert_assignments(),
        unnest_insert(&KERNELS, k),
        KERNELS.upsert_assignments(),
        stat + 1,
        counts + 4,
        counts + 1,
        counts + 2,
        counts + 3,
        counts + 5,
        deps + 1,
        deps + 2,
        seen + 1,
        seen + 2,
        seen + 3,
    )
});

/// See [`WRITE_ROWS`]; `false` when a record of seen ids had changed since the batch's load.
async fn write_rows(conn: &mut PgConnection, commit: &Commit<'_>) -> Result<bool, StoreError> {
    let changes = commit.changes;
    if changes.sessions.is_empty() && changes.seen.is_empty() && changes.counts.is_empty() {
        return Ok(true);
    }
    let sessions: Vec<_> = changes.session_rows().collect();
    let sessions = Columnar::of(&SESSIONS, sessions.iter().map(|r| session_values(r)));
    let kernels: Vec<_> = changes.whole_kernel_rows().collect();
    let kernels = Columnar::of(&KERNELS, kernels.iter().map(|k| kernel_values(k)));
    // Kernels of which only `last_stat` changed: an UPDATE of that column, not an upsert of
    // the whole row (half of a stream is `kernel_stat_sync`).
    let (stat_id, stat): (Vec<Uuid>, Vec<Option<sqlx::types::Json<_>>>) = changes
        .stat_kernel_rows()
        .map(|kr| (kr.id, kr.last_stat.as_ref().map(sqlx::types::Json)))
        .unzip();

    // Count deltas in key order (the fold sorts them): concurrent writers lock rows in one order.
    let shard = commit
        .advances
        .iter()
        .map(|a| a.partition)
        .min()
        .unwrap_or(0);
    let c = &changes.counts;
    let count_keys: Vec<&str> = c.iter().map(|d| d.access_key.as_str()).collect();
    let count_statuses: Vec<&str> = c.iter().map(|d| d.status.as_str()).collect();
    let count_domains: Vec<&str> = c.iter().map(|d| d.domain_name.as_str()).collect();
    let count_groups: Vec<Uuid> = c.iter().map(|d| d.group_id).collect();
    let count_deltas: Vec<i64> = c.iter().map(|d| d.delta).collect();

    // Dependencies never change after the enqueue: written once, for sessions created here.
    let created: HashSet<Uuid> = changes.created.iter().copied().collect();
    let (mut dep_session, mut dep_ordinal, mut dep_on) = (Vec::new(), Vec::new(), Vec::new());
    for state in changes
        .sessions
        .iter()
        .filter(|s| created.contains(&s.session.id))
    {
        for (d, i) in state.session.dependencies.iter().zip(0i32..) {
            dep_session.push(state.session.id);
            dep_ordinal.push(i);
            dep_on.push(*d);
        }
    }

    // Seen ids, appended to their sessions' records if those still hold what the batch loaded
    // (sessions in id order, as the fold gives them: concurrent writers lock records in one order).
    let pieces = seen_pieces(&changes.seen);
    let seen_sessions: Vec<Uuid> = pieces.iter().map(|p| p.session_id).collect();
    let seen_chunks: Vec<i32> = pieces.iter().map(|p| p.chunk).collect();
    let seen_stored: Vec<i64> = pieces.iter().map(|p| p.stored).collect();
    let seen_ids: Vec<&[u8]> = pieces.iter().map(|p| p.ids.as_slice()).collect();

    let q = sqlx::query(&WRITE_ROWS);
    let q = sessions.bind(&SESSIONS, q)?;
    let q = kernels.bind(&KERNELS, q)?;
    let written = q
        .bind(&stat_id)
        .bind(&stat)
        .bind(&count_keys)
        .bind(&count_statuses)
        .bind(&count_domains)
        .bind(&count_groups)
        .bind(shard)
        .bind(&count_deltas)
        .bind(&dep_session)
        .bind(&dep_ordinal)
        .bind(&dep_on)
        .bind(&seen_sessions)
        .bind(&seen_chunks)
        .bind(&seen_stored)
        .bind(&seen_ids)
        .fetch_one(&mut *conn)
        .await?;
    let written: i64 = written.try_get(0)?;
    Ok(usize::try_from(written).is_ok_and(|n| n == pieces.len()))
}

static INSERT_PARKED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ON CONFLICT DO NOTHING",
        unnest_insert(&PARKED_EVENTS, 1)
    )
});

static INSERT_DEAD_LETTERS: LazyLock<String> =
    LazyLock::new(|| format!("{} ON CONFLICT DO NOTHING", unnest_insert(&DEAD_LETTERS, 1)));

/// What few batches have: released and newly parked events, retired and new dead letters.
async fn write_rare(conn: &mut PgConnection, commit: &Commit<'_>) -> Result<(), StoreError> {
    let changes = commit.changes;
    if !changes.released.is_empty() {
        let sources: Vec<&str> = changes.released.iter().map(|(s, _)| s.as_str()).collect();
        let partitions: Vec<i32> = changes.released.iter().map(|(_, p)| p.partition).collect();
        let offsets: Vec<i64> = changes.released.iter().map(|(_, p)| p.offset).collect();
        sqlx::query(
            "DELETE FROM parked_events p USING UNNEST($1::text[], $2::int4[], $3::int8[]) \
                AS r(source, partition, off) \
             WHERE p.source = r.source AND p.partition = r.partition AND p.\"offset\" = r.off",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&mut *conn)
        .await?;
    }
    if !changes.parked.is_empty() {
        let parked = Columnar::of(&PARKED_EVENTS, changes.parked.iter().map(parked_values));
        parked
            .bind(&PARKED_EVENTS, sqlx::query(&INSERT_PARKED))?
            .execute(&mut *conn)
            .await?;
    }
    if !commit.retire.is_empty() {
        sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
            .bind(commit.retire)
            .execute(&mut *conn)
            .await?;
    }
    if !changes.dead_letters.is_empty() {
        let letters = changes.dead_letters.iter().map(dead_letter_values);
        Columnar::of(&DEAD_LETTERS, letters)
            .bind(&DEAD_LETTERS, sqlx::query(&INSERT_DEAD_LETTERS))?
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// See [`crate::ProjectorStore::expire_parked`].
pub(super) async fn expire_parked(
    pool: &PgPool,
    source: &str,
    partitions: &[i32],
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "WITH gone AS (DELETE FROM parked_events WHERE source = $1 AND partition = ANY($2) \
         AND parked_at < $3 RETURNING source, partition, \"offset\", event_id, session_id, payload) \
         INSERT INTO dead_letters (source, partition, \"offset\", event_id, session_id, label, reason, payload) \
         SELECT source, partition, \"offset\", event_id, session_id, $4, $5, payload FROM gone \
         ON CONFLICT (source, partition, \"offset\") DO NOTHING",
    )
    .bind(source)
    .bind(partitions)
    .bind(cutoff)
    .bind(crate::PARKED_EXPIRED)
    .bind(crate::PARKED_EXPIRED_REASON)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_statement_numbers_its_parameters_without_gaps() {
        let sql = &*WRITE_ROWS;
        let mut numbers: Vec<usize> = sql
            .split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers, (1..=61).collect::<Vec<_>>(), "{sql}");
        assert!(
            sql.contains("$23::text[]::jsonb[]"),
            "resource_opts is JSON: {sql}"
        );
    }
}
