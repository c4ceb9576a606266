//! The PostgreSQL backend: connections and settings, the projector's loads and bookkeeping
//! (its commit is `postgres_commit`, the query service's reads `postgres_read`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sessionview_events::{JsonObject, ResourceSlots, Status};
use sessionview_projection::{
    KernelRow, LoadRequest, Loaded, ParkedEvent, Position, SessionRow, SessionState,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tracing::instrument;
use uuid::Uuid;

use crate::postgres_reads::ReadPool;
use crate::schema::{self, MigrationId, SchemaStatus};
use crate::{
    COUNTS_SQL, Commit, CommitOutcome, DeadLetterFilter, Store, StoreCounts, StoreError,
    StoredDeadLetter, prefixed,
};

/// This build's migrations (`migrations/postgres`), set up to tolerate a newer binary's.
fn migrator() -> sqlx::migrate::Migrator {
    schema::configured(sqlx::migrate!("../../migrations/postgres"))
}

schema::schema_connection!(
    PgConnection,
    // Which of the schema's bookkeeping tables exist.
    "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, \
     to_regclass('schema_compatibility') IS NOT NULL",
    "UPDATE schema_compatibility SET written_by = $1, level = GREATEST(level, $2)"
);

/// Server-side settings for every connection of a [`PgStore`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PgSettings {
    /// Statements running longer are cancelled by the server.
    pub statement_timeout: Option<Duration>,
    /// Like `statement_timeout`, for the read pool's connections only (the query service's
    /// reads, in a process that also projects: its commits are not cut short).
    pub read_statement_timeout: Option<Duration>,
    /// A session idle inside a transaction for longer is terminated by the server, releasing its
    /// locks: a paused process (a GC pause, a frozen VM, SIGSTOP) cannot block the others for
    /// longer than this.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// How the server plans cached (prepared) statements.
    pub plan_cache: PlanCache,
}

/// PostgreSQL's `plan_cache_mode` for every connection of a [`PgStore`]. It applies to the
/// statements the store runs unnamed (`persistent(false)`) too: under `force_generic_plan` they
/// are planned without their values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlanCache {
    /// The server's setting (by default: five custom plans, then the generic one if it does not
    /// look costlier).
    #[default]
    Server,
    /// Every execution planned for its values (`force_custom_plan`).
    Custom,
    /// One generic plan per statement (`force_generic_plan`), unnamed ones included: only for
    /// connections whose every statement has a best plan that does not depend on its values.
    Generic,
}

/// A PostgreSQL-backed store (cheap to clone). Writes, migrations and administration go through
/// one pool (sqlx's); the query service's reads through another ([`ReadPool`]), each of at most
/// the given number of connections and opening them as they are needed.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    pub(crate) reads: ReadPool,
    /// Statements executed by the read side (see [`crate::ReadModel::statements_executed`]).
    pub(crate) statements: Arc<AtomicU64>,
}

impl PgStore {
    /// Connects to `url` (`postgres://...`) with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, max_connections, None).await
    }

    /// Like [`PgStore::connect`], and every statement of every connection is cancelled by the
    /// server after `statement_timeout` (the query service's guard against runaway queries).
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        statement_timeout: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let settings = PgSettings {
            statement_timeout,
            ..PgSettings::default()
        };
        Self::connect_with_settings(url, max_connections, &settings).await
    }

    /// Like [`PgStore::connect`], with server-side session settings for every connection.
    pub async fn connect_with_settings(
        url: &str,
        max_connections: u32,
        settings: &PgSettings,
    ) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let mut options = PgConnectOptions::from_str(url)?.application_name("sessionview");
        let mut session = Vec::new();
        if let Some(t) = settings.statement_timeout {
            session.push(("statement_timeout", t.as_millis().to_string()));
        }
        if let Some(t) = settings.idle_in_transaction_timeout {
            session.push((
                "idle_in_transaction_session_timeout",
                t.as_millis().to_string(),
            ));
        }
        match settings.plan_cache {
            PlanCache::Server => {}
            PlanCache::Custom => session.push(("plan_cache_mode", "force_custom_plan".to_owned())),
            PlanCache::Generic => {
                session.push(("plan_cache_mode", "force_generic_plan".to_owned()));
            }
        }
        let mut read_options = options.clone();
        let mut read_session = session.clone();
        if let Some(t) = settings.read_statement_timeout {
            read_session.push(("statement_timeout", t.as_millis().to_string()));
        }
        if !read_session.is_empty() {
            read_options = read_options.options(read_session);
        }
        if !session.is_empty() {
            options = options.options(session);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // No ping before every acquire: it doubles the round trips of short statements; a
            // broken connection fails its statement (a transient error) and is discarded.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let reads = ReadPool::new(Arc::new(read_options), max_connections as usize);
        Ok(Self {
            pool,
            reads,
            statements: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Wraps an existing pool; reads get a pool of as many connections with the same options.
    pub fn from_pool(pool: PgPool) -> Self {
        let reads = ReadPool::new(
            pool.connect_options(),
            pool.options().get_max_connections() as usize,
        );
        Self {
            pool,
            reads,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The pool of writes and administration.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes both pools, waiting for the write pool's connections to be closed; read connections
    /// in use are closed when they come back.
    pub async fn close(&self) {
        self.reads.close();
        self.pool.close().await;
    }
}

fn corrupt(table: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

fn status(table: &'static str, text: &str) -> Result<Status, StoreError> {
    Status::from_str(text).map_err(|e| corrupt(table, e))
}

fn object(table: &'static str, v: Value) -> Result<JsonObject, StoreError> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(corrupt(
            table,
            format!("expected a JSON object, got {other}"),
        )),
    }
}

fn slots(table: &'static str, v: &Value) -> Result<ResourceSlots, StoreError> {
    ResourceSlots::from_json(v).map_err(|e| corrupt(table, e))
}

pub(crate) const SESSION_COLUMNS: &str = "id, name, type, tag, image, registry, cluster_template, domain_name, \
    group_name, group_id, user_email, user_id, access_key, created_user_email, created_user_id, \
    status, status_changed, status_info, created_at, terminated_at, startup_command, result, \
    resource_opts, scaling_group, service_ports, mounts, occupied_slots, num_queries";

pub(crate) const KERNEL_COLUMNS: &str = "id, session_id, ordinal, role, hostname, image, registry, status, \
    status_changed, status_info, created_at, terminated_at, agent, container_id, resource_opts, \
    occupied_slots, service_ports, last_stat";

/// Columns in [`KERNEL_COLUMNS`].
pub(crate) const KERNEL_COLUMN_COUNT: usize = 18;

/// The leading columns of [`KERNEL_COLUMNS`], without its JSON ones.
pub(crate) const KERNEL_SCALAR_COLUMNS: &str = "id, session_id, ordinal, role, hostname, image, \
    registry, status, status_changed, status_info, created_at, terminated_at, agent, container_id";

/// The column at `first + n` (rows are decoded by position, in the order of the column lists
/// above: no name lookups, and a statement may carry several tables' columns side by side).
struct Columns<'r> {
    row: &'r PgRow,
    next: usize,
}

impl<'r> Columns<'r> {
    fn get<T>(&mut self) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let v = self.row.try_get(self.next)?;
        self.next += 1;
        Ok(v)
    }
}

/// A session from [`SESSION_COLUMNS`] starting at column `first`.
pub(crate) fn session_from_row(r: &PgRow, first: usize) -> Result<SessionRow, StoreError> {
    const T: &str = "sessions";
    let mut c = Columns {
        row: r,
        next: first,
    };
    // Fields in the column order of SESSION_COLUMNS.
    Ok(SessionRow {
        id: c.get()?,
        name: c.get()?,
        session_type: c.get()?,
        tag: c.get()?,
        image: c.get()?,
        registry: c.get()?,
        cluster_template: c.get()?,
        domain_name: c.get()?,
        group_name: c.get()?,
        group_id: c.get()?,
        user_email: c.get()?,
        user_id: c.get()?,
        access_key: c.get()?,
        created_user_email: c.get()?,
        created_user_id: c.get()?,
        status: status(T, c.get()?)?,
        status_changed: c.get()?,
        status_info: c.get()?,
        created_at: c.get()?,
        terminated_at: c.get()?,
        startup_command: c.get()?,
        result: c.get()?,
        resource_opts: object(T, c.get()?)?,
        scaling_group: c.get()?,
        service_ports: c.get()?,
        mounts: serde_json::from_value(c.get()?).map_err(|e| corrupt(T, e))?,
        occupied_slots: slots(T, &c.get::<Value>()?)?,
        num_queries: c.get()?,
        dependencies: Vec::new(),
    })
}

/// A kernel from [`KERNEL_COLUMNS`] starting at column `first`.
pub(crate) fn kernel_from_row(r: &PgRow, first: usize) -> Result<KernelRow, StoreError> {
    const T: &str = "kernels";
    let mut c = Columns {
        row: r,
        next: first,
    };
    let mut k = kernel_scalars(&mut c)?;
    // The JSON columns follow the scalar ones.
    k.resource_opts = object(T, c.get()?)?;
    k.occupied_slots = slots(T, &c.get::<Value>()?)?;
    k.service_ports = c.get()?;
    k.last_stat = c
        .get::<Option<Value>>()?
        .map(|v| object(T, v))
        .transpose()?;
    Ok(k)
}

/// A kernel from [`KERNEL_SCALAR_COLUMNS`] starting at column `first`; its JSON fields empty.
pub(crate) fn kernel_scalars_from_row(r: &PgRow, first: usize) -> Result<KernelRow, StoreError> {
    kernel_scalars(&mut Columns {
        row: r,
        next: first,
    })
}

/// The columns of [`KERNEL_SCALAR_COLUMNS`], in order; the JSON fields empty.
fn kernel_scalars(c: &mut Columns<'_>) -> Result<KernelRow, StoreError> {
    const T: &str = "kernels";
    Ok(KernelRow {
        id: c.get()?,
        session_id: c.get()?,
        ordinal: c.get()?,
        role: c.get()?,
        hostname: c.get()?,
        image: c.get()?,
        registry: c.get()?,
        status: status(T, c.get()?)?,
        status_changed: c.get()?,
        status_info: c.get()?,
        created_at: c.get()?,
        terminated_at: c.get()?,
        agent: c.get()?,
        container_id: c.get()?,
        resource_opts: JsonObject::new(),
        occupied_slots: ResourceSlots::default(),
        service_ports: None,
        last_stat: None,
    })
}

/// Columns in [`SESSION_COLUMNS`].
pub(crate) const SESSION_COLUMN_COUNT: usize = 28;

/// Reads sessions (all, or those in `ids`) with their kernels and dependencies in one statement:
/// each session's row joined to its kernels (its rows together, kernels in order), its
/// dependencies as an array beside it.
async fn read_sessions(
    conn: &mut PgConnection,
    ids: Option<&[Uuid]>,
) -> Result<HashMap<Uuid, SessionState>, StoreError> {
    // Without ids, the same statement over every row (the bind of an unused parameter would fail).
    // The dependencies come with a session's first row only (its master, ordinal 0): repeated on
    // every kernel's row, a session of 10,000 kernels and 10,000 dependencies was 10^8 ids.
    let filter = if ids.is_some() {
        "WHERE id = ANY($1)"
    } else {
        ""
    };
    let sql = format!(
        "WITH s AS (SELECT {SESSION_COLUMNS}, \
            (SELECT coalesce(array_agg(d.depends_on ORDER BY d.ordinal), '{{}}') \
             FROM session_dependencies d WHERE d.session_id = sessions.id) AS dependencies \
            FROM sessions {filter}) \
         SELECT {}, {}, CASE WHEN k.ordinal IS NULL OR k.ordinal = 0 THEN s.dependencies END \
         FROM s LEFT JOIN kernels k ON k.session_id = s.id ORDER BY s.id, k.ordinal",
        prefixed("s", SESSION_COLUMNS),
        prefixed("k", KERNEL_COLUMNS),
    );
    let q = sqlx::query(&sql);
    let q = match ids {
        Some(ids) => q.bind(ids),
        None => q,
    };
    let rows = q.fetch_all(conn).await?;
    let kernel = SESSION_COLUMN_COUNT;
    let dependencies = kernel + KERNEL_COLUMN_COUNT;
    let mut out: HashMap<Uuid, SessionState> = HashMap::with_capacity(rows.len());
    let mut current: Option<SessionState> = None;
    for r in &rows {
        let id: Uuid = r.try_get(0)?;
        if current.as_ref().is_none_or(|s| s.session.id != id) {
            if let Some(done) = current.take() {
                out.insert(done.session.id, done);
            }
            let mut session = session_from_row(r, 0)?;
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
            s.kernels.push(kernel_from_row(r, kernel)?);
        }
    }
    if let Some(done) = current {
        out.insert(done.session.id, done);
    }
    Ok(out)
}

impl Store for PgStore {
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
            sqlx::query("SELECT partition, next_offset FROM source_positions WHERE source = $1")
                .bind(source)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("partition")?, r.try_get("next_offset")?)))
            .collect()
    }

    #[instrument(skip_all, fields(sessions = req.session_ids.len(), events = req.event_ids.len()))]
    async fn load(&self, req: &LoadRequest) -> Result<Loaded, StoreError> {
        // One connection for the two or three statements: one acquire (and one release, which
        // sqlx follows with a ping) per load instead of one per statement.
        let mut conn = self.pool.acquire().await?;
        let sessions = if req.session_ids.is_empty() {
            HashMap::new()
        } else {
            read_sessions(&mut conn, Some(&req.session_ids)).await?
        };
        let seen: HashSet<Uuid> = if req.event_ids.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT event_id FROM seen_events WHERE event_id = ANY($1)")
                .bind(&req.event_ids)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect()
        };
        let mut parked = Vec::new();
        if !req.parked_for.is_empty() {
            let rows = sqlx::query(
                "SELECT source, partition, \"offset\", session_id, event_id, payload \
                 FROM parked_events WHERE session_id = ANY($1) ORDER BY partition, \"offset\"",
            )
            .bind(&req.parked_for)
            .fetch_all(&mut *conn)
            .await?;
            for r in &rows {
                parked.push(ParkedEvent {
                    source: r.try_get("source")?,
                    position: Position {
                        partition: r.try_get("partition")?,
                        offset: r.try_get("offset")?,
                    },
                    session_id: r.try_get("session_id")?,
                    event_id: r.try_get("event_id")?,
                    bytes: r.try_get("payload")?,
                });
            }
        }
        let kernel_owners = if req.kernel_ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "SELECT id, session_id FROM kernels WHERE id = ANY($1)",
            )
            .bind(&req.kernel_ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect()
        };
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all, fields(source = commit.source, sessions = commit.changes.sessions.len()))]
    async fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        crate::postgres_commit::commit(&self.pool, commit).await
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, source, partition, \"offset\", event_id, event_type, session_id, label, \
                    reason, payload, recorded_at \
             FROM dead_letters \
             WHERE id > $1 AND ($2::text IS NULL OR source = $2) AND ($3::text IS NULL OR label = $3) \
                AND (cardinality($5::int8[]) = 0 OR id = ANY($5)) \
             ORDER BY id LIMIT $4",
        )
        .bind(filter.after_id.unwrap_or(0))
        .bind(filter.source.as_deref())
        .bind(filter.label.as_deref())
        .bind(filter.limit)
        .bind(&filter.ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredDeadLetter {
                    id: r.try_get("id")?,
                    source: r.try_get("source")?,
                    partition: r.try_get("partition")?,
                    offset: r.try_get("offset")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    session_id: r.try_get("session_id")?,
                    label: r.try_get("label")?,
                    reason: r.try_get("reason")?,
                    payload: r.try_get("payload")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect()
    }

    async fn all_sessions(&self) -> Result<Vec<SessionState>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut all: Vec<_> = read_sessions(&mut conn, None)
            .await?
            .into_values()
            .collect();
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
        sqlx::query(&format!("TRUNCATE {}", crate::READ_MODEL_TABLES.join(", ")))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn refresh_statistics(&self) -> Result<Vec<String>, StoreError> {
        // `relpages` is what the last ANALYZE (or VACUUM) saw, 0 before the first; the 64 KiB
        // floor leaves tables alone while a scan of them costs nothing anyway. Names resolve
        // through the search path, like every statement of the store (a replay's shadow schema).
        let grown: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.oid = ANY($1::text[]::regclass[]) \
               AND pg_relation_size(c.oid) \
                   > 2 * c.relpages::int8 * current_setting('block_size')::int8 + 65536",
        )
        .bind(GROWING_TABLES.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut analyzed = Vec::new();
        // Names from the constant list, never from the database, go into the statement.
        for (table, columns) in GROWING_TABLES
            .iter()
            .filter(|(t, _)| grown.iter().any(|g| g == *t))
        {
            sqlx::query(&format!("ANALYZE {table} ({columns})"))
                .execute(&self.pool)
                .await?;
            analyzed.push((*table).to_owned());
        }
        Ok(analyzed)
    }
}

/// The tables read by key that grow with the stream (the projector's loads and the query
/// service's lookups need their statistics current to be planned as index scans), each with the
/// columns those plans filter and order on. Only these are sampled: the JSON columns are most of
/// a full `ANALYZE`'s cost (of the 1,000,000-event bench stream's tables: `kernels` 560–670 ms in
/// full, 100–120 ms with these columns; `sessions` 550 → 130 ms) and no plan of ours reads their
/// statistics. The row count and size, which is what a young table's
/// plans lack, are refreshed by any `ANALYZE`; autovacuum still analyzes every column later.
const GROWING_TABLES: &[(&str, &str)] = &[
    (
        "sessions",
        "id, access_key, status, domain_name, group_id, user_id, last_touched",
    ),
    ("kernels", "id, session_id, ordinal"),
    ("session_dependencies", "session_id, depends_on"),
    ("seen_events", "event_id"),
    ("parked_events", "session_id, source, partition, \"offset\""),
];
