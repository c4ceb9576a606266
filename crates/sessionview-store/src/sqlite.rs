//! The SQLite backend (the embedded default): the same interface as PostgreSQL, on one file in WAL
//! mode. Multi-row `INSERT ... ON CONFLICT` upserts, one transaction per batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sessionview_events::{JsonObject, ResourceSlots, Status};
use sessionview_projection::{
    KernelRow, LoadRequest, Loaded, ParkedEvent, Position, SessionRow, SessionState,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use crate::read::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KeyPair, KeyPairAdmin, Page, ReadModel, Role,
    SESSION_ORDER_KEYS, Scope, SessionListQuery,
};
use crate::schema::{self, MigrationId, SchemaStatus};
use crate::sql::{push_order, push_scope};
use crate::{
    COUNTS_SQL, Commit, CommitOutcome, DeadLetterFilter, Store, StoreCounts, StoreError,
    StoredDeadLetter, prefixed,
};

/// This build's migrations (`migrations/sqlite`), set up to tolerate a newer binary's.
fn migrator() -> sqlx::migrate::Migrator {
    schema::configured(sqlx::migrate!("../../migrations/sqlite"))
}

schema::schema_connection!(
    SqliteConnection,
    // Which of the schema's bookkeeping tables exist.
    "SELECT \
    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'), \
    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_compatibility')",
    "UPDATE schema_compatibility SET written_by = ?1, level = max(level, ?2)"
);

/// Rows per multi-row statement (SQLite allows 32,766 bound values per statement).
const CHUNK: usize = 500;

/// A SQLite-backed store (a connection pool on one database file; cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    statements: Arc<AtomicU64>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn corrupt(table: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

fn uuid_of(table: &'static str, s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| corrupt(table, format!("{s:?}: {e}")))
}

fn opt_uuid(table: &'static str, s: Option<String>) -> Result<Option<Uuid>, StoreError> {
    s.map(|s| uuid_of(table, &s)).transpose()
}

fn time_of(table: &'static str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| corrupt(table, format!("{s:?}: {e}")))
}

fn opt_time(table: &'static str, s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.map(|s| time_of(table, &s)).transpose()
}

fn json_of(table: &'static str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(table, e))
}

fn object_of(table: &'static str, s: &str) -> Result<JsonObject, StoreError> {
    match json_of(table, s)? {
        Value::Object(o) => Ok(o),
        other => Err(corrupt(
            table,
            format!("expected a JSON object, got {other}"),
        )),
    }
}

const SESSION_COLUMNS: &str = "id, name, type, tag, image, registry, cluster_template, domain_name, \
    group_name, group_id, user_email, user_id, access_key, created_user_email, created_user_id, \
    status, status_changed, status_info, created_at, terminated_at, startup_command, result, \
    resource_opts, scaling_group, service_ports, mounts, occupied_slots, num_queries";

const KERNEL_COLUMNS: &str = "id, session_id, ordinal, role, hostname, image, registry, status, \
    status_changed, status_info, created_at, terminated_at, agent, container_id, resource_opts, \
    occupied_slots, service_ports, last_stat";

fn session_from_row(r: &SqliteRow) -> Result<SessionRow, StoreError> {
    const T: &str = "sessions";
    let status_text: String = r.try_get("status")?;
    let mounts: String = r.try_get("mounts")?;
    Ok(SessionRow {
        id: uuid_of(T, &r.try_get::<String, _>("id")?)?,
        name: r.try_get("name")?,
        session_type: r.try_get("type")?,
        tag: r.try_get("tag")?,
        image: r.try_get("image")?,
        registry: r.try_get("registry")?,
        cluster_template: r.try_get("cluster_template")?,
        domain_name: r.try_get("domain_name")?,
        group_name: r.try_get("group_name")?,
        group_id: uuid_of(T, &r.try_get::<String, _>("group_id")?)?,
        user_email: r.try_get("user_email")?,
        user_id: uuid_of(T, &r.try_get::<String, _>("user_id")?)?,
        access_key: r.try_get("access_key")?,
        created_user_email: r.try_get("created_user_email")?,
        created_user_id: opt_uuid(T, r.try_get("created_user_id")?)?,
        status: Status::from_str(&status_text).map_err(|e| corrupt(T, e))?,
        status_changed: time_of(T, &r.try_get::<String, _>("status_changed")?)?,
        status_info: r.try_get("status_info")?,
        created_at: time_of(T, &r.try_get::<String, _>("created_at")?)?,
        terminated_at: opt_time(T, r.try_get("terminated_at")?)?,
        startup_command: r.try_get("startup_command")?,
        result: r.try_get("result")?,
        resource_opts: object_of(T, &r.try_get::<String, _>("resource_opts")?)?,
        scaling_group: r.try_get("scaling_group")?,
        service_ports: r
            .try_get::<Option<String>, _>("service_ports")?
            .map(|s| json_of(T, &s))
            .transpose()?,
        mounts: serde_json::from_str(&mounts).map_err(|e| corrupt(T, e))?,
        occupied_slots: ResourceSlots::from_json(&json_of(
            T,
            &r.try_get::<String, _>("occupied_slots")?,
        )?)
        .map_err(|e| corrupt(T, e))?,
        num_queries: r.try_get("num_queries")?,
        dependencies: Vec::new(),
    })
}

fn kernel_from_row(r: &SqliteRow) -> Result<KernelRow, StoreError> {
    const T: &str = "kernels";
    let status_text: String = r.try_get("status")?;
    Ok(KernelRow {
        id: uuid_of(T, &r.try_get::<String, _>("id")?)?,
        session_id: uuid_of(T, &r.try_get::<String, _>("session_id")?)?,
        ordinal: r.try_get("ordinal")?,
        role: r.try_get("role")?,
        hostname: r.try_get("hostname")?,
        image: r.try_get("image")?,
        registry: r.try_get("registry")?,
        status: Status::from_str(&status_text).map_err(|e| corrupt(T, e))?,
        status_changed: time_of(T, &r.try_get::<String, _>("status_changed")?)?,
        status_info: r.try_get("status_info")?,
        created_at: time_of(T, &r.try_get::<String, _>("created_at")?)?,
        terminated_at: opt_time(T, r.try_get("terminated_at")?)?,
        agent: r.try_get("agent")?,
        container_id: r.try_get("container_id")?,
        resource_opts: object_of(T, &r.try_get::<String, _>("resource_opts")?)?,
        occupied_slots: ResourceSlots::from_json(&json_of(
            T,
            &r.try_get::<String, _>("occupied_slots")?,
        )?)
        .map_err(|e| corrupt(T, e))?,
        service_ports: r
            .try_get::<Option<String>, _>("service_ports")?
            .map(|s| json_of(T, &s))
            .transpose()?,
        last_stat: r
            .try_get::<Option<String>, _>("last_stat")?
            .map(|s| object_of(T, &s))
            .transpose()?,
    })
}

fn keypair_from_row(r: &SqliteRow) -> Result<KeyPair, StoreError> {
    const T: &str = "keypairs";
    let role: String = r.try_get("role")?;
    Ok(KeyPair {
        access_key: r.try_get("access_key")?,
        secret_key: r.try_get("secret_key")?,
        user_id: uuid_of(T, &r.try_get::<String, _>("user_id")?)?,
        user_email: r.try_get("user_email")?,
        domain_name: r.try_get("domain_name")?,
        role: role.parse::<Role>().map_err(|d| corrupt(T, d))?,
        is_active: r.try_get("is_active")?,
        created_at: time_of(T, &r.try_get::<String, _>("created_at")?)?,
    })
}

/// `col IN (?, ?, ...)` for one chunk of ids.
fn push_in(qb: &mut QueryBuilder<'_, Sqlite>, column: &str, ids: &[Uuid]) {
    qb.push(format!("{column} IN ("));
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id.to_string());
    }
    qb.push(")");
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or `sqlite::memory:`),
    /// in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection (a pool has several: the projector loads on
            // one while it commits on another). 64 MiB each made a catching-up projector's
            // memory 543 MiB for 5–15 % more speed.
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn count_statements(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    async fn read_sessions(
        &self,
        ids: Option<&[Uuid]>,
    ) -> Result<HashMap<Uuid, SessionState>, StoreError> {
        let mut out = HashMap::new();
        let chunks: Vec<Option<&[Uuid]>> = match ids {
            Some(ids) => ids.chunks(CHUNK).map(Some).collect(),
            None => vec![None],
        };
        for chunk in chunks {
            let mut qb = QueryBuilder::new(format!("SELECT {SESSION_COLUMNS} FROM sessions"));
            if let Some(c) = chunk {
                qb.push(" WHERE ");
                push_in(&mut qb, "id", c);
            }
            for r in qb.build().fetch_all(&self.pool).await? {
                let session = session_from_row(&r)?;
                out.insert(
                    session.id,
                    SessionState {
                        session,
                        kernels: Vec::new(),
                    },
                );
            }
            let mut qb = QueryBuilder::new(format!("SELECT {KERNEL_COLUMNS} FROM kernels"));
            if let Some(c) = chunk {
                qb.push(" WHERE ");
                push_in(&mut qb, "session_id", c);
            }
            qb.push(" ORDER BY session_id, ordinal");
            for r in qb.build().fetch_all(&self.pool).await? {
                let k = kernel_from_row(&r)?;
                if let Some(s) = out.get_mut(&k.session_id) {
                    s.kernels.push(k);
                }
            }
            let mut qb =
                QueryBuilder::new("SELECT session_id, depends_on FROM session_dependencies");
            if let Some(c) = chunk {
                qb.push(" WHERE ");
                push_in(&mut qb, "session_id", c);
            }
            qb.push(" ORDER BY session_id, ordinal");
            for r in qb.build().fetch_all(&self.pool).await? {
                let sid = uuid_of(
                    "session_dependencies",
                    &r.try_get::<String, _>("session_id")?,
                )?;
                let dep = uuid_of(
                    "session_dependencies",
                    &r.try_get::<String, _>("depends_on")?,
                )?;
                if let Some(s) = out.get_mut(&sid) {
                    s.session.dependencies.push(dep);
                }
            }
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    async fn apply_migrations(&self) -> Result<Vec<MigrationId>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let applied = schema::migrate(&mut *conn, &migrator()).await;
        if applied.is_err() {
            // It may still hold the migration lock, or be inside a failed migration.
            conn.close_on_drop();
        }
        applied
    }

    async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let mut conn = self.pool.acquire().await?;
        schema::status(&mut *conn, &migrator()).await
    }

    async fn positions(&self, source: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT partition, next_offset FROM source_positions WHERE source = ?")
                .bind(source)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("partition")?, r.try_get("next_offset")?)))
            .collect()
    }

    async fn load(&self, req: &LoadRequest) -> Result<Loaded, StoreError> {
        let sessions = if req.session_ids.is_empty() {
            HashMap::new()
        } else {
            self.read_sessions(Some(&req.session_ids)).await?
        };
        let mut seen = HashSet::new();
        for chunk in req.event_ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT event_id FROM seen_events WHERE ");
            push_in(&mut qb, "event_id", chunk);
            for r in qb.build().fetch_all(&self.pool).await? {
                seen.insert(uuid_of(
                    "seen_events",
                    &r.try_get::<String, _>("event_id")?,
                )?);
            }
        }
        let mut parked = Vec::new();
        for chunk in req.parked_for.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "SELECT source, partition, \"offset\", session_id, event_id, payload FROM parked_events WHERE ",
            );
            push_in(&mut qb, "session_id", chunk);
            for r in qb.build().fetch_all(&self.pool).await? {
                parked.push(ParkedEvent {
                    source: r.try_get("source")?,
                    position: Position {
                        partition: r.try_get("partition")?,
                        offset: r.try_get("offset")?,
                    },
                    session_id: uuid_of("parked_events", &r.try_get::<String, _>("session_id")?)?,
                    event_id: uuid_of("parked_events", &r.try_get::<String, _>("event_id")?)?,
                    bytes: r.try_get("payload")?,
                });
            }
        }
        parked.sort_by_key(|p| p.position);
        let mut kernel_owners = HashMap::new();
        for chunk in req.kernel_ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT id, session_id FROM kernels WHERE ");
            push_in(&mut qb, "id", chunk);
            for r in qb.build().fetch_all(&self.pool).await? {
                kernel_owners.insert(
                    uuid_of("kernels", &r.try_get::<String, _>("id")?)?,
                    uuid_of("kernels", &r.try_get::<String, _>("session_id")?)?,
                );
            }
        }
        Ok(Loaded {
            sessions,
            seen,
            parked,
            kernel_owners,
        })
    }

    async fn expire_parked(
        &self,
        source: &str,
        partitions: &[i32],
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // The format of parked_at's default, so that text order is time order.
        let cutoff = cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let mut tx = self.pool.begin().await?;
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

    async fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut conflicts = Vec::new();
        for a in commit.advances {
            let affected = match a.expected {
                Some(expected) => sqlx::query(
                    "UPDATE source_positions SET next_offset = ?, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                     WHERE source = ? AND partition = ? AND next_offset = ?",
                )
                .bind(a.next)
                .bind(commit.source)
                .bind(a.partition)
                .bind(expected)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO source_positions (source, partition, next_offset) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(commit.source)
                .bind(a.partition)
                .bind(a.next)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if affected != 1 {
                conflicts.push(a.partition);
            }
        }
        if !conflicts.is_empty() {
            tx.rollback().await?;
            return Ok(CommitOutcome::Conflict {
                partitions: conflicts,
            });
        }
        if !record_seen(&mut tx, &commit.changes.seen).await? {
            // Another writer recorded an id this batch applies (the same event from another
            // partition) after the batch was loaded: write nothing, as PostgreSQL does.
            tx.rollback().await?;
            return Ok(CommitOutcome::Conflict {
                partitions: commit.advances.iter().map(|a| a.partition).collect(),
            });
        }
        write_changes(&mut tx, commit).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT id, source, partition, \"offset\", event_id, event_type, session_id, label, \
             reason, payload, recorded_at FROM dead_letters WHERE id > ",
        );
        qb.push_bind(filter.after_id.unwrap_or(0));
        if let Some(s) = &filter.source {
            qb.push(" AND source = ").push_bind(s.clone());
        }
        if let Some(l) = &filter.label {
            qb.push(" AND label = ").push_bind(l.clone());
        }
        if !filter.ids.is_empty() {
            qb.push(" AND id IN (");
            let mut ids = qb.separated(", ");
            for id in &filter.ids {
                ids.push_bind(*id);
            }
            qb.push(")");
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(filter.limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        const T: &str = "dead_letters";
        rows.iter()
            .map(|r| {
                Ok(StoredDeadLetter {
                    id: r.try_get("id")?,
                    source: r.try_get("source")?,
                    partition: r.try_get("partition")?,
                    offset: r.try_get("offset")?,
                    event_id: opt_uuid(T, r.try_get("event_id")?)?,
                    event_type: r.try_get("event_type")?,
                    session_id: opt_uuid(T, r.try_get("session_id")?)?,
                    label: r.try_get("label")?,
                    reason: r.try_get("reason")?,
                    payload: r.try_get("payload")?,
                    recorded_at: time_of(T, &r.try_get::<String, _>("recorded_at")?)?,
                })
            })
            .collect()
    }

    async fn all_sessions(&self) -> Result<Vec<SessionState>, StoreError> {
        let mut all: Vec<_> = self.read_sessions(None).await?.into_values().collect();
        all.sort_by_key(|s| s.session.id);
        Ok(all)
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        let r = sqlx::query(COUNTS_SQL).fetch_one(&self.pool).await?;
        Ok(StoreCounts {
            sessions: r.try_get("sessions")?,
            kernels: r.try_get("kernels")?,
            seen_events: r.try_get("seen_events")?,
            parked_events: r.try_get("parked_events")?,
            dead_letters: r.try_get("dead_letters")?,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn reset_read_model(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // PostgreSQL's list of tables less `session_counts`, which SQLite does not keep.
        for table in crate::READ_MODEL_TABLES
            .iter()
            .filter(|t| **t != crate::SESSION_COUNTS_TABLE)
        {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn refresh_statistics(&self) -> Result<Vec<String>, StoreError> {
        // Without `sqlite_stat1` rows SQLite assumes an index narrows a lookup to a few rows,
        // which is right for every key lookup here; there is no cached plan to go stale.
        Ok(Vec::new())
    }
}

/// Records the batch's event ids as seen; `false` when one is recorded already (nothing of the
/// batch may then be written: the transaction must be rolled back).
async fn record_seen(
    tx: &mut Transaction<'_, Sqlite>,
    seen: &[(Uuid, Uuid)],
) -> Result<bool, StoreError> {
    for chunk in seen.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO seen_events (event_id, session_id) ");
        qb.push_values(chunk, |mut b, (e, s)| {
            b.push_bind(e.to_string()).push_bind(s.to_string());
        });
        match qb.build().execute(&mut **tx).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

async fn write_changes(
    tx: &mut Transaction<'_, Sqlite>,
    commit: Commit<'_>,
) -> Result<(), StoreError> {
    let changes = commit.changes;
    let sessions: Vec<&SessionRow> = changes.session_rows().collect();
    for chunk in sessions.chunks(CHUNK) {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO sessions ({SESSION_COLUMNS}) "));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.to_string())
                .push_bind(r.name.clone())
                .push_bind(r.session_type.clone())
                .push_bind(r.tag.clone())
                .push_bind(r.image.clone())
                .push_bind(r.registry.clone())
                .push_bind(r.cluster_template.clone())
                .push_bind(r.domain_name.clone())
                .push_bind(r.group_name.clone())
                .push_bind(r.group_id.to_string())
                .push_bind(r.user_email.clone())
                .push_bind(r.user_id.to_string())
                .push_bind(r.access_key.clone())
                .push_bind(r.created_user_email.clone())
                .push_bind(r.created_user_id.map(|u| u.to_string()))
                .push_bind(r.status.as_str())
                .push_bind(ts(r.status_changed))
                .push_bind(r.status_info.clone())
                .push_bind(ts(r.created_at))
                .push_bind(r.terminated_at.map(ts))
                .push_bind(r.startup_command.clone())
                .push_bind(r.result.clone())
                .push_bind(Value::Object(r.resource_opts.clone()).to_string())
                .push_bind(r.scaling_group.clone())
                .push_bind(r.service_ports.as_ref().map(Value::to_string))
                .push_bind(Value::from(r.mounts.clone()).to_string())
                .push_bind(r.occupied_slots.to_json().to_string())
                .push_bind(r.num_queries);
        });
        qb.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             status_changed = excluded.status_changed, status_info = excluded.status_info, \
             terminated_at = excluded.terminated_at, result = excluded.result, \
             scaling_group = excluded.scaling_group, service_ports = excluded.service_ports, \
             occupied_slots = excluded.occupied_slots, num_queries = excluded.num_queries",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let kernels: Vec<&KernelRow> = changes.kernel_rows().collect();
    for chunk in kernels.chunks(CHUNK) {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO kernels ({KERNEL_COLUMNS}) "));
        qb.push_values(chunk, |mut b, k| {
            b.push_bind(k.id.to_string())
                .push_bind(k.session_id.to_string())
                .push_bind(k.ordinal)
                .push_bind(k.role.clone())
                .push_bind(k.hostname.clone())
                .push_bind(k.image.clone())
                .push_bind(k.registry.clone())
                .push_bind(k.status.as_str())
                .push_bind(ts(k.status_changed))
                .push_bind(k.status_info.clone())
                .push_bind(ts(k.created_at))
                .push_bind(k.terminated_at.map(ts))
                .push_bind(k.agent.clone())
                .push_bind(k.container_id.clone())
                .push_bind(Value::Object(k.resource_opts.clone()).to_string())
                .push_bind(k.occupied_slots.to_json().to_string())
                .push_bind(k.service_ports.as_ref().map(Value::to_string))
                .push_bind(k.last_stat.clone().map(|o| Value::Object(o).to_string()));
        });
        qb.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             status_changed = excluded.status_changed, status_info = excluded.status_info, \
             terminated_at = excluded.terminated_at, agent = excluded.agent, \
             container_id = excluded.container_id, occupied_slots = excluded.occupied_slots, \
             service_ports = excluded.service_ports, last_stat = excluded.last_stat",
        );
        qb.build().execute(&mut **tx).await?;
    }
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
            "INSERT INTO session_dependencies (session_id, ordinal, depends_on) ",
        );
        qb.push_values(chunk, |mut b, (s, i, d)| {
            b.push_bind(s.to_string())
                .push_bind(*i)
                .push_bind(d.to_string());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for (source, p) in &changes.released {
        sqlx::query(
            "DELETE FROM parked_events WHERE source = ? AND partition = ? AND \"offset\" = ?",
        )
        .bind(source)
        .bind(p.partition)
        .bind(p.offset)
        .execute(&mut **tx)
        .await?;
    }
    for chunk in changes.parked.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO parked_events (source, partition, \"offset\", session_id, event_id, payload) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(e.source.clone())
                .push_bind(e.position.partition)
                .push_bind(e.position.offset)
                .push_bind(e.session_id.to_string())
                .push_bind(e.event_id.to_string())
                .push_bind(e.bytes.clone());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in commit.retire.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM dead_letters WHERE id IN (");
        let mut ids = qb.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        qb.push(")");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in changes.dead_letters.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO dead_letters (source, partition, \"offset\", event_id, event_type, session_id, label, reason, payload) ",
        );
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(d.source.clone())
                .push_bind(d.position.partition)
                .push_bind(d.position.offset)
                .push_bind(d.event_id.map(|u| u.to_string()))
                .push_bind(d.event_type.clone())
                .push_bind(d.session_id.map(|u| u.to_string()))
                .push_bind(d.label)
                .push_bind(d.reason.clone())
                .push_bind(d.bytes.clone());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn push_session_filters(qb: &mut QueryBuilder<'_, Sqlite>, q: &SessionListQuery) {
    qb.push(" WHERE 1 = 1");
    push_scope(qb, "s", &q.scope);
    if let Some(d) = &q.domain_name {
        qb.push(" AND s.domain_name = ").push_bind(d.clone());
    }
    if let Some(a) = &q.access_key {
        qb.push(" AND s.access_key = ").push_bind(a.clone());
    }
    if let Some(g) = q.group_id {
        qb.push(" AND s.group_id = ").push_bind(g.to_string());
    }
    if !q.statuses.is_empty() {
        qb.push(" AND s.status IN (");
        let mut sep = qb.separated(", ");
        for st in &q.statuses {
            sep.push_bind(st.as_str());
        }
        qb.push(")");
    }
}

impl ReadModel for SqliteStore {
    async fn list_sessions(&self, q: &SessionListQuery) -> Result<Page<SessionRow>, StoreError> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {} FROM sessions s",
            prefixed("s", SESSION_COLUMNS)
        ));
        push_session_filters(&mut qb, q);
        push_order(&mut qb, "s", q.order, SESSION_ORDER_KEYS)?;
        qb.push(" LIMIT ")
            .push_bind(q.limit)
            .push(" OFFSET ")
            .push_bind(q.offset);
        let items = qb
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut count = QueryBuilder::new("SELECT count(*) FROM sessions s");
        push_session_filters(&mut count, q);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        self.count_statements(2);
        Ok(Page { items, total_count })
    }

    async fn sessions_by_ids(
        &self,
        ids: &[Uuid],
        scope: &Scope,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(format!(
                "SELECT {} FROM sessions s WHERE ",
                prefixed("s", SESSION_COLUMNS)
            ));
            push_in(&mut qb, "s.id", chunk);
            push_scope(&mut qb, "s", scope);
            for r in qb.build().fetch_all(&self.pool).await? {
                out.push(session_from_row(&r)?);
            }
            self.count_statements(1);
        }
        Ok(out)
    }

    async fn containers_of(&self, session_ids: &[Uuid]) -> Result<Vec<KernelRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in session_ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(format!("SELECT {KERNEL_COLUMNS} FROM kernels WHERE "));
            push_in(&mut qb, "session_id", chunk);
            qb.push(" ORDER BY session_id, ordinal");
            for r in qb.build().fetch_all(&self.pool).await? {
                out.push(kernel_from_row(&r)?);
            }
            self.count_statements(1);
        }
        Ok(out)
    }

    async fn dependencies_of(
        &self,
        session_ids: &[Uuid],
        scope: &Scope,
    ) -> Result<Vec<(Uuid, SessionRow)>, StoreError> {
        let mut out = Vec::new();
        for chunk in session_ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(format!(
                "SELECT d.session_id AS parent_id, {} FROM session_dependencies d \
                 JOIN sessions s ON s.id = d.depends_on WHERE ",
                prefixed("s", SESSION_COLUMNS)
            ));
            push_in(&mut qb, "d.session_id", chunk);
            push_scope(&mut qb, "s", scope);
            qb.push(" ORDER BY d.session_id, d.ordinal");
            for r in qb.build().fetch_all(&self.pool).await? {
                let parent = uuid_of(
                    "session_dependencies",
                    &r.try_get::<String, _>("parent_id")?,
                )?;
                out.push((parent, session_from_row(&r)?));
            }
            self.count_statements(1);
        }
        Ok(out)
    }

    async fn list_containers(&self, q: &ContainerListQuery) -> Result<Page<KernelRow>, StoreError> {
        let filters = |qb: &mut QueryBuilder<'_, Sqlite>| {
            qb.push(" JOIN sessions s ON s.id = k.session_id WHERE k.session_id = ")
                .push_bind(q.session_id.to_string());
            push_scope(qb, "s", &q.scope);
            if let Some(role) = &q.role {
                qb.push(" AND k.role = ").push_bind(role.clone());
            }
        };
        let mut qb = QueryBuilder::new(format!(
            "SELECT {} FROM kernels k",
            prefixed("k", KERNEL_COLUMNS)
        ));
        filters(&mut qb);
        push_order(&mut qb, "k", q.order, CONTAINER_ORDER_KEYS)?;
        qb.push(" LIMIT ")
            .push_bind(q.limit)
            .push(" OFFSET ")
            .push_bind(q.offset);
        let items = qb
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(kernel_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut count = QueryBuilder::new("SELECT count(*) FROM kernels k");
        filters(&mut count);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        self.count_statements(2);
        Ok(Page { items, total_count })
    }

    async fn container(&self, id: Uuid, scope: &Scope) -> Result<Option<KernelRow>, StoreError> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {} FROM kernels k JOIN sessions s ON s.id = k.session_id WHERE k.id = ",
            prefixed("k", KERNEL_COLUMNS)
        ));
        qb.push_bind(id.to_string());
        push_scope(&mut qb, "s", scope);
        let row = qb.build().fetch_optional(&self.pool).await?;
        self.count_statements(1);
        row.as_ref().map(kernel_from_row).transpose()
    }

    async fn keypair(&self, access_key: &str) -> Result<Option<KeyPair>, StoreError> {
        let row = sqlx::query("SELECT * FROM keypairs WHERE access_key = ?")
            .bind(access_key)
            .fetch_optional(&self.pool)
            .await?;
        self.count_statements(1);
        row.as_ref().map(keypair_from_row).transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Store::ping(self).await
    }

    fn statements_executed(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

impl KeyPairAdmin for SqliteStore {
    async fn insert_keypair(&self, kp: &KeyPair) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keypairs (access_key, secret_key, user_id, user_email, domain_name, role, \
             is_active, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&kp.access_key)
        .bind(&kp.secret_key)
        .bind(kp.user_id.to_string())
        .bind(&kp.user_email)
        .bind(&kp.domain_name)
        .bind(kp.role.as_str())
        .bind(kp.is_active)
        .bind(ts(kp.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_keypairs(&self) -> Result<Vec<KeyPair>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keypairs ORDER BY created_at, access_key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(keypair_from_row).collect()
    }

    async fn deactivate_keypair(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE keypairs SET is_active = 0 WHERE access_key = ?")
            .bind(access_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
