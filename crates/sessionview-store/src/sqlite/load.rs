//! What the projector reads from SQLite before it folds a batch: sessions with their kernels and
//! dependencies, their sessions' event-id records, parked events, kernel owners (ids in chunks of [`CHUNK`]); and
//! stored positions.

use std::collections::{BTreeMap, HashMap};

use sessionview_projection::{ParkedEvent, SessionState};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{CHUNK, SqliteCells, push_ids};
use crate::StoreError;
use crate::columns::{
    Cells, KERNELS, PARKED_EVENTS, SESSIONS, kernel_from, parked_from, session_from,
};
use crate::protocol::Load;

/// `SELECT ... FROM table`, with ` WHERE column IN (chunk)` when there is a chunk.
fn select<'a>(sql: String, column: &str, chunk: Option<&[Uuid]>) -> QueryBuilder<'a, Sqlite> {
    let mut qb = QueryBuilder::new(sql);
    if let Some(c) = chunk {
        qb.push(" WHERE ");
        push_ids(&mut qb, column, c);
    }
    qb
}

impl Load for Sqlite {
    async fn sessions(
        conn: &mut SqliteConnection,
        ids: Option<&[Uuid]>,
    ) -> Result<HashMap<Uuid, SessionState>, StoreError> {
        let mut out = HashMap::new();
        let chunks: Vec<Option<&[Uuid]>> = match ids {
            Some(ids) => ids.chunks(CHUNK).map(Some).collect(),
            None => vec![None],
        };
        for chunk in chunks {
            let sql = format!("SELECT {} FROM sessions", SESSIONS.list());
            for r in select(sql, "id", chunk)
                .build()
                .fetch_all(&mut *conn)
                .await?
            {
                let session = session_from(&mut SqliteCells::at(&r, 0, SESSIONS.name))?;
                let kernels = Vec::new();
                out.insert(session.id, SessionState { session, kernels });
            }
            let sql = format!("SELECT {} FROM kernels", KERNELS.list());
            let mut qb = select(sql, "session_id", chunk);
            qb.push(" ORDER BY session_id, ordinal");
            for r in qb.build().fetch_all(&mut *conn).await? {
                let k = kernel_from(&mut SqliteCells::at(&r, 0, KERNELS.name), false)?;
                if let Some(s) = out.get_mut(&k.session_id) {
                    s.kernels.push(k);
                }
            }
            let sql = "SELECT session_id, depends_on FROM session_dependencies".to_owned();
            let mut qb = select(sql, "session_id", chunk);
            qb.push(" ORDER BY session_id, ordinal");
            for r in qb.build().fetch_all(&mut *conn).await? {
                let mut cells = SqliteCells::at(&r, 0, "session_dependencies");
                let (session, dependency) = (cells.uuid()?, cells.uuid()?);
                if let Some(s) = out.get_mut(&session) {
                    s.session.dependencies.push(dependency);
                }
            }
        }
        Ok(out)
    }

    async fn seen(
        conn: &mut SqliteConnection,
        sessions: &[Uuid],
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut records = Vec::new();
        for chunk in sessions.chunks(CHUNK) {
            let sql = "SELECT session_id, ids FROM session_seen".to_owned();
            for r in select(sql, "session_id", Some(chunk))
                .build()
                .fetch_all(&mut *conn)
                .await?
            {
                let mut cells = SqliteCells::at(&r, 0, "session_seen");
                records.push((cells.uuid()?, cells.bytes()?));
            }
        }
        Ok(records)
    }

    async fn parked(
        conn: &mut SqliteConnection,
        sessions: &[Uuid],
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let mut parked = Vec::new();
        for chunk in sessions.chunks(CHUNK) {
            let sql = format!("SELECT {} FROM parked_events", PARKED_EVENTS.list());
            for r in select(sql, "session_id", Some(chunk))
                .build()
                .fetch_all(&mut *conn)
                .await?
            {
                parked.push(parked_from(&mut SqliteCells::at(
                    &r,
                    0,
                    PARKED_EVENTS.name,
                ))?);
            }
        }
        parked.sort_by_key(|p| p.position);
        Ok(parked)
    }

    async fn kernel_owners(
        conn: &mut SqliteConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Uuid>, StoreError> {
        let mut owners = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = "SELECT id, session_id FROM kernels".to_owned();
            for r in select(sql, "id", Some(chunk))
                .build()
                .fetch_all(&mut *conn)
                .await?
            {
                let mut cells = SqliteCells::at(&r, 0, KERNELS.name);
                owners.insert(cells.uuid()?, cells.uuid()?);
            }
        }
        Ok(owners)
    }
}

/// Stored next offsets of a source, by partition.
pub(super) async fn positions(
    pool: &SqlitePool,
    source: &str,
) -> Result<BTreeMap<i32, i64>, StoreError> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM source_positions WHERE source = ?")
            .bind(source)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}
