//! What the projector reads from PostgreSQL before it folds a batch: sessions with their kernels
//! and dependencies, their sessions' event-id records, parked events, kernel owners; and stored
//! positions.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use sessionview_projection::{ParkedEvent, SessionState};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::PgCells;
use crate::StoreError;
use crate::columns::{KERNELS, PARKED_EVENTS, SESSIONS, kernel_from, parked_from, session_from};
use crate::protocol::Load;

/// Sessions (`{filter}` restricts them) joined to their kernels, each session's rows together and
/// its kernels in order. The dependencies come with a session's first row only (its master,
/// ordinal 0): repeated on every kernel's row, a session of 10,000 kernels and 10,000
/// dependencies was 10^8 ids.
fn sessions_sql(filter: &str) -> String {
    format!(
        "WITH s AS (SELECT {}, \
            (SELECT coalesce(array_agg(d.depends_on ORDER BY d.ordinal), '{{}}') \
             FROM session_dependencies d WHERE d.session_id = sessions.id) AS dependencies \
            FROM sessions {filter}) \
         SELECT {}, {}, CASE WHEN k.ordinal IS NULL OR k.ordinal = 0 THEN s.dependencies END \
         FROM s LEFT JOIN kernels k ON k.session_id = s.id ORDER BY s.id, k.ordinal",
        SESSIONS.list(),
        SESSIONS.prefixed("s"),
        KERNELS.prefixed("k"),
    )
}

static SESSIONS_BY_ID: LazyLock<String> = LazyLock::new(|| sessions_sql("WHERE id = ANY($1)"));
static EVERY_SESSION: LazyLock<String> = LazyLock::new(|| sessions_sql(""));

static PARKED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM parked_events WHERE session_id = ANY($1) ORDER BY partition, \"offset\"",
        PARKED_EVENTS.list()
    )
});

impl Load for Postgres {
    async fn sessions(
        conn: &mut PgConnection,
        ids: Option<&[Uuid]>,
    ) -> Result<HashMap<Uuid, SessionState>, StoreError> {
        let rows = match ids {
            Some(ids) => {
                sqlx::query(&SESSIONS_BY_ID)
                    .bind(ids)
                    .fetch_all(conn)
                    .await?
            }
            None => sqlx::query(&EVERY_SESSION).fetch_all(conn).await?,
        };
        let kernel = SESSIONS.columns.len();
        let dependencies = kernel + KERNELS.columns.len();
        let mut out: HashMap<Uuid, SessionState> = HashMap::with_capacity(rows.len());
        let mut current: Option<SessionState> = None;
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            if current.as_ref().is_none_or(|s| s.session.id != id) {
                if let Some(done) = current.take() {
                    out.insert(done.session.id, done);
                }
                let mut session = session_from(&mut PgCells::at(r, 0, SESSIONS.name))?;
                session.dependencies = r
                    .try_get::<Option<Vec<Uuid>>, _>(dependencies)?
                    .unwrap_or_default();
                current = Some(SessionState {
                    session,
                    kernels: Vec::new(),
                });
            }
            if r.try_get::<Option<Uuid>, _>(kernel)?.is_some()
                && let Some(s) = current.as_mut()
            {
                s.kernels.push(kernel_from(
                    &mut PgCells::at(r, kernel, KERNELS.name),
                    false,
                )?);
            }
        }
        if let Some(done) = current {
            out.insert(done.session.id, done);
        }
        Ok(out)
    }

    async fn seen(
        conn: &mut PgConnection,
        sessions: &[Uuid],
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT session_id, ids FROM session_seen WHERE session_id = ANY($1)")
                .bind(sessions)
                .fetch_all(conn)
                .await?,
        )
    }

    async fn parked(
        conn: &mut PgConnection,
        sessions: &[Uuid],
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let rows = sqlx::query(&PARKED_SQL)
            .bind(sessions)
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|r| parked_from(&mut PgCells::at(r, 0, PARKED_EVENTS.name)))
            .collect()
    }

    async fn kernel_owners(
        conn: &mut PgConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Uuid>, StoreError> {
        let owners: Vec<(Uuid, Uuid)> =
            sqlx::query_as("SELECT id, session_id FROM kernels WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(conn)
                .await?;
        Ok(owners.into_iter().collect())
    }
}

/// Stored next offsets of a source, by partition.
pub(super) async fn positions(
    pool: &PgPool,
    source: &str,
) -> Result<BTreeMap<i32, i64>, StoreError> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM source_positions WHERE source = $1")
            .bind(source)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}
