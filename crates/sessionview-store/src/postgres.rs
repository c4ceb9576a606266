//! The PostgreSQL backend: multi-row `UNNEST` upserts, one transaction per batch.

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
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tracing::instrument;
use uuid::Uuid;

use crate::postgres_reads::ReadPool;
use crate::{
    COUNTS_SQL, Commit, CommitOutcome, DeadLetterFilter, Store, StoreCounts, StoreError,
    StoredDeadLetter,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Server-side settings for every connection of a [`PgStore`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PgSettings {
    /// Statements running longer are cancelled by the server.
    pub statement_timeout: Option<Duration>,
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
        Ok(Self::from_pool(pool))
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

/// Reads sessions (all, or those in `ids`) with their kernels and dependencies.
async fn read_sessions(
    pool: &PgPool,
    ids: Option<&[Uuid]>,
) -> Result<HashMap<Uuid, SessionState>, StoreError> {
    // Without ids, the same queries over every row (the bind of an unused parameter would fail).
    let (filter, kfilter) = match ids {
        Some(_) => ("WHERE id = ANY($1)", "WHERE session_id = ANY($1)"),
        None => ("", ""),
    };
    let fetch = |sql: String| async move {
        let q = sqlx::query(&sql);
        let q = match ids {
            Some(ids) => q.bind(ids),
            None => q,
        };
        q.fetch_all(pool).await
    };
    let rows = fetch(format!("SELECT {SESSION_COLUMNS} FROM sessions {filter}")).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let session = session_from_row(r, 0)?;
        out.insert(
            session.id,
            SessionState {
                session,
                kernels: Vec::new(),
            },
        );
    }
    let kernels = fetch(format!(
        "SELECT {KERNEL_COLUMNS} FROM kernels {kfilter} ORDER BY session_id, ordinal"
    ))
    .await?;
    for r in &kernels {
        let k = kernel_from_row(r, 0)?;
        if let Some(s) = out.get_mut(&k.session_id) {
            s.kernels.push(k);
        }
    }
    let deps = fetch(format!(
        "SELECT session_id, depends_on FROM session_dependencies {kfilter} ORDER BY session_id, ordinal"
    ))
    .await?;
    for r in &deps {
        let sid: Uuid = r.try_get("session_id")?;
        if let Some(s) = out.get_mut(&sid) {
            s.session.dependencies.push(r.try_get("depends_on")?);
        }
    }
    Ok(out)
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
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
        let sessions = if req.session_ids.is_empty() {
            HashMap::new()
        } else {
            read_sessions(&self.pool, Some(&req.session_ids)).await?
        };
        let seen: HashSet<Uuid> = if req.event_ids.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT event_id FROM seen_events WHERE event_id = ANY($1)")
                .bind(&req.event_ids)
                .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
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
        Ok(Loaded {
            sessions,
            seen,
            parked,
        })
    }

    #[instrument(skip_all, fields(source = commit.source, sessions = commit.changes.sessions.len()))]
    async fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Positions first: the row lock taken here makes a competing instance wait for us and
        // then fail its own compare-and-set.
        let mut conflicts = Vec::new();
        for a in commit.advances {
            let affected = match a.expected {
                Some(expected) => sqlx::query(
                    "UPDATE source_positions SET next_offset = $4, updated_at = now() \
                     WHERE source = $1 AND partition = $2 AND next_offset = $3",
                )
                .bind(commit.source)
                .bind(a.partition)
                .bind(expected)
                .bind(a.next)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO source_positions (source, partition, next_offset) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
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
        write_changes(&mut tx, commit).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
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
        let mut all: Vec<_> = read_sessions(&self.pool, None)
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
        .bind(GROWING_TABLES)
        .fetch_all(&self.pool)
        .await?;
        let mut analyzed = Vec::new();
        // Names from the constant list, never from the database, go into the statement.
        for table in GROWING_TABLES
            .iter()
            .filter(|t| grown.iter().any(|g| g == *t))
        {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&self.pool)
                .await?;
            analyzed.push((*table).to_owned());
        }
        Ok(analyzed)
    }
}

/// The tables read by key that grow with the stream: the projector's loads and the query
/// service's lookups need their statistics current to be planned as index scans.
const GROWING_TABLES: &[&str] = &[
    "sessions",
    "kernels",
    "session_dependencies",
    "seen_events",
    "parked_events",
];

/// Column vectors for one multi-row `UNNEST` upsert of sessions.
#[derive(Default)]
struct SessionColumns<'a> {
    id: Vec<Uuid>,
    name: Vec<&'a str>,
    kind: Vec<&'a str>,
    tag: Vec<Option<&'a str>>,
    image: Vec<&'a str>,
    registry: Vec<&'a str>,
    cluster_template: Vec<Option<&'a str>>,
    domain_name: Vec<&'a str>,
    group_name: Vec<&'a str>,
    group_id: Vec<Uuid>,
    user_email: Vec<&'a str>,
    user_id: Vec<Uuid>,
    access_key: Vec<&'a str>,
    created_user_email: Vec<Option<&'a str>>,
    created_user_id: Vec<Option<Uuid>>,
    status: Vec<&'static str>,
    status_changed: Vec<DateTime<Utc>>,
    status_info: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    terminated_at: Vec<Option<DateTime<Utc>>>,
    startup_command: Vec<Option<&'a str>>,
    result: Vec<&'a str>,
    resource_opts: Vec<Json<&'a JsonObject>>,
    scaling_group: Vec<Option<&'a str>>,
    service_ports: Vec<Option<Json<&'a Value>>>,
    mounts: Vec<Json<&'a Vec<String>>>,
    occupied_slots: Vec<Value>,
    num_queries: Vec<i64>,
}

#[derive(Default)]
struct KernelColumns<'a> {
    id: Vec<Uuid>,
    session_id: Vec<Uuid>,
    ordinal: Vec<i32>,
    role: Vec<&'a str>,
    hostname: Vec<Option<&'a str>>,
    image: Vec<&'a str>,
    registry: Vec<&'a str>,
    status: Vec<&'static str>,
    status_changed: Vec<DateTime<Utc>>,
    status_info: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    terminated_at: Vec<Option<DateTime<Utc>>>,
    agent: Vec<Option<&'a str>>,
    container_id: Vec<Option<&'a str>>,
    resource_opts: Vec<Json<&'a JsonObject>>,
    occupied_slots: Vec<Value>,
    service_ports: Vec<Option<Json<&'a Value>>>,
    last_stat: Vec<Option<Json<&'a JsonObject>>>,
}

async fn write_changes(
    tx: &mut Transaction<'_, Postgres>,
    commit: Commit<'_>,
) -> Result<(), StoreError> {
    let changes = commit.changes;
    // Only the rows the fold marked dirty; JSON is bound by reference (serialized once by sqlx).
    let mut s = SessionColumns::default();
    for r in changes.session_rows() {
        s.id.push(r.id);
        s.name.push(&r.name);
        s.kind.push(&r.session_type);
        s.tag.push(r.tag.as_deref());
        s.image.push(&r.image);
        s.registry.push(&r.registry);
        s.cluster_template.push(r.cluster_template.as_deref());
        s.domain_name.push(&r.domain_name);
        s.group_name.push(&r.group_name);
        s.group_id.push(r.group_id);
        s.user_email.push(&r.user_email);
        s.user_id.push(r.user_id);
        s.access_key.push(&r.access_key);
        s.created_user_email.push(r.created_user_email.as_deref());
        s.created_user_id.push(r.created_user_id);
        s.status.push(r.status.as_str());
        s.status_changed.push(r.status_changed);
        s.status_info.push(r.status_info.as_deref());
        s.created_at.push(r.created_at);
        s.terminated_at.push(r.terminated_at);
        s.startup_command.push(r.startup_command.as_deref());
        s.result.push(&r.result);
        s.resource_opts.push(Json(&r.resource_opts));
        s.scaling_group.push(r.scaling_group.as_deref());
        s.service_ports.push(r.service_ports.as_ref().map(Json));
        s.mounts.push(Json(&r.mounts));
        s.occupied_slots.push(r.occupied_slots.to_json());
        s.num_queries.push(r.num_queries);
    }
    let mut k = KernelColumns::default();
    for kr in changes.kernel_rows() {
        k.id.push(kr.id);
        k.session_id.push(kr.session_id);
        k.ordinal.push(kr.ordinal);
        k.role.push(&kr.role);
        k.hostname.push(kr.hostname.as_deref());
        k.image.push(&kr.image);
        k.registry.push(&kr.registry);
        k.status.push(kr.status.as_str());
        k.status_changed.push(kr.status_changed);
        k.status_info.push(kr.status_info.as_deref());
        k.created_at.push(kr.created_at);
        k.terminated_at.push(kr.terminated_at);
        k.agent.push(kr.agent.as_deref());
        k.container_id.push(kr.container_id.as_deref());
        k.resource_opts.push(Json(&kr.resource_opts));
        k.occupied_slots.push(kr.occupied_slots.to_json());
        k.service_ports.push(kr.service_ports.as_ref().map(Json));
        k.last_stat.push(kr.last_stat.as_ref().map(Json));
    }
    if !s.id.is_empty() {
        sqlx::query(
            "INSERT INTO sessions (id, name, type, tag, image, registry, cluster_template, \
                domain_name, group_name, group_id, user_email, user_id, access_key, \
                created_user_email, created_user_id, status, status_changed, status_info, \
                created_at, terminated_at, startup_command, result, resource_opts, scaling_group, \
                service_ports, mounts, occupied_slots, num_queries) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[], $11::text[], \
                $12::uuid[], $13::text[], $14::text[], $15::uuid[], $16::text[], \
                $17::timestamptz[], $18::text[], $19::timestamptz[], $20::timestamptz[], \
                $21::text[], $22::text[], $23::jsonb[], $24::text[], $25::jsonb[], $26::jsonb[], \
                $27::jsonb[], $28::int8[]) \
             ON CONFLICT (id) DO UPDATE SET \
                status = EXCLUDED.status, status_changed = EXCLUDED.status_changed, \
                status_info = EXCLUDED.status_info, terminated_at = EXCLUDED.terminated_at, \
                result = EXCLUDED.result, scaling_group = EXCLUDED.scaling_group, \
                service_ports = EXCLUDED.service_ports, occupied_slots = EXCLUDED.occupied_slots, \
                num_queries = EXCLUDED.num_queries",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.kind)
        .bind(&s.tag)
        .bind(&s.image)
        .bind(&s.registry)
        .bind(&s.cluster_template)
        .bind(&s.domain_name)
        .bind(&s.group_name)
        .bind(&s.group_id)
        .bind(&s.user_email)
        .bind(&s.user_id)
        .bind(&s.access_key)
        .bind(&s.created_user_email)
        .bind(&s.created_user_id)
        .bind(&s.status)
        .bind(&s.status_changed)
        .bind(&s.status_info)
        .bind(&s.created_at)
        .bind(&s.terminated_at)
        .bind(&s.startup_command)
        .bind(&s.result)
        .bind(&s.resource_opts)
        .bind(&s.scaling_group)
        .bind(&s.service_ports)
        .bind(&s.mounts)
        .bind(&s.occupied_slots)
        .bind(&s.num_queries)
        .execute(&mut **tx)
        .await?;
    }
    if !k.id.is_empty() {
        sqlx::query(
            "INSERT INTO kernels (id, session_id, ordinal, role, hostname, image, registry, status, \
                status_changed, status_info, created_at, terminated_at, agent, container_id, \
                resource_opts, occupied_slots, service_ports, last_stat) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], \
                $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], \
                $11::timestamptz[], $12::timestamptz[], $13::text[], $14::text[], $15::jsonb[], \
                $16::jsonb[], $17::jsonb[], $18::jsonb[]) \
             ON CONFLICT (id) DO UPDATE SET \
                status = EXCLUDED.status, status_changed = EXCLUDED.status_changed, \
                status_info = EXCLUDED.status_info, terminated_at = EXCLUDED.terminated_at, \
                agent = EXCLUDED.agent, container_id = EXCLUDED.container_id, \
                occupied_slots = EXCLUDED.occupied_slots, service_ports = EXCLUDED.service_ports, \
                last_stat = EXCLUDED.last_stat",
        )
        .bind(&k.id)
        .bind(&k.session_id)
        .bind(&k.ordinal)
        .bind(&k.role)
        .bind(&k.hostname)
        .bind(&k.image)
        .bind(&k.registry)
        .bind(&k.status)
        .bind(&k.status_changed)
        .bind(&k.status_info)
        .bind(&k.created_at)
        .bind(&k.terminated_at)
        .bind(&k.agent)
        .bind(&k.container_id)
        .bind(&k.resource_opts)
        .bind(&k.occupied_slots)
        .bind(&k.service_ports)
        .bind(&k.last_stat)
        .execute(&mut **tx)
        .await?;
    }

    if !changes.counts.is_empty() {
        // Deltas in key order (the fold sorts them): concurrent writers lock rows in one order.
        let shard = commit
            .advances
            .iter()
            .map(|a| a.partition)
            .min()
            .unwrap_or(0);
        let c = &changes.counts;
        let keys: Vec<&str> = c.iter().map(|d| d.access_key.as_str()).collect();
        let statuses: Vec<&str> = c.iter().map(|d| d.status.as_str()).collect();
        let domains: Vec<&str> = c.iter().map(|d| d.domain_name.as_str()).collect();
        let groups: Vec<Uuid> = c.iter().map(|d| d.group_id).collect();
        let deltas: Vec<i64> = c.iter().map(|d| d.delta).collect();
        sqlx::query(
            "INSERT INTO session_counts AS c (access_key, status, domain_name, group_id, shard, n) \
             SELECT a, s, d, g, $5, n FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], \
                $6::int8[]) AS u(a, s, d, g, n) \
             ON CONFLICT (access_key, status, domain_name, group_id, shard) \
             DO UPDATE SET n = c.n + EXCLUDED.n",
        )
        .bind(&keys)
        .bind(&statuses)
        .bind(&domains)
        .bind(&groups)
        .bind(shard)
        .bind(&deltas)
        .execute(&mut **tx)
        .await?;
    }

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
    if !dep_session.is_empty() {
        sqlx::query(
            "INSERT INTO session_dependencies (session_id, ordinal, depends_on) \
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&dep_session)
        .bind(&dep_ordinal)
        .bind(&dep_on)
        .execute(&mut **tx)
        .await?;
    }

    if !changes.seen.is_empty() {
        let (ids, sessions): (Vec<Uuid>, Vec<Uuid>) = changes.seen.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO seen_events (event_id, session_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&sessions)
        .execute(&mut **tx)
        .await?;
    }

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
        .execute(&mut **tx)
        .await?;
    }

    if !changes.parked.is_empty() {
        let p = &changes.parked;
        let sources: Vec<&str> = p.iter().map(|e| e.source.as_str()).collect();
        let partitions: Vec<i32> = p.iter().map(|e| e.position.partition).collect();
        let offsets: Vec<i64> = p.iter().map(|e| e.position.offset).collect();
        let sessions: Vec<Uuid> = p.iter().map(|e| e.session_id).collect();
        let events: Vec<Uuid> = p.iter().map(|e| e.event_id).collect();
        let payloads: Vec<&[u8]> = p.iter().map(|e| e.bytes.as_slice()).collect();
        sqlx::query(
            "INSERT INTO parked_events (source, partition, \"offset\", session_id, event_id, payload) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::uuid[], \
                $6::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&sessions)
        .bind(&events)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    }

    if !commit.retire.is_empty() {
        sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
            .bind(commit.retire)
            .execute(&mut **tx)
            .await?;
    }

    if !changes.dead_letters.is_empty() {
        let d = &changes.dead_letters;
        let sources: Vec<&str> = d.iter().map(|e| e.source.as_str()).collect();
        let partitions: Vec<i32> = d.iter().map(|e| e.position.partition).collect();
        let offsets: Vec<i64> = d.iter().map(|e| e.position.offset).collect();
        let event_ids: Vec<Option<Uuid>> = d.iter().map(|e| e.event_id).collect();
        let types: Vec<Option<&str>> = d.iter().map(|e| e.event_type.as_deref()).collect();
        let sessions: Vec<Option<Uuid>> = d.iter().map(|e| e.session_id).collect();
        let labels: Vec<&str> = d.iter().map(|e| e.label).collect();
        let reasons: Vec<&str> = d.iter().map(|e| e.reason.as_str()).collect();
        let payloads: Vec<&[u8]> = d.iter().map(|e| e.bytes.as_slice()).collect();
        sqlx::query(
            "INSERT INTO dead_letters (source, partition, \"offset\", event_id, event_type, \
                session_id, label, reason, payload) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::text[], \
                $6::uuid[], $7::text[], $8::text[], $9::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&event_ids)
        .bind(&types)
        .bind(&sessions)
        .bind(&labels)
        .bind(&reasons)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
