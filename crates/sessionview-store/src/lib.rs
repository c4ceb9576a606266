//! The store: all SQL of sessionview, behind traits that both backends (`postgres/`, `sqlite/`,
//! mirrored file for file) implement; the row shapes (`columns`), the projector's protocol
//! (`protocol`) and the shared statements (`sql`) are written once.
//!
//! Architecture invariant: no other crate holds SQL. A batch's rows, its bookkeeping (seen event
//! ids, parked events, dead letters) and its source positions are written in one transaction, and
//! positions advance only by compare-and-set, so a batch applies at most once even when two
//! projector instances both believe they own a partition.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use sessionview_projection::{Changes, LoadRequest, Loaded, SessionState};
use uuid::Uuid;

pub mod changes;
mod columns;
mod error;
pub mod live;
mod postgres;
mod protocol;
mod read;
mod schema;
mod sql;
mod sqlite;

pub use error::StoreError;
pub use postgres::{Freeze, LIVE_SCHEMA, PgSettings, PgStore, PlanCache, SESSION_COUNTS_TABLE};
pub use protocol::SEEN_CHUNK_IDS;
pub use read::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KernelFields, KeyPair, KeyPairAdmin, Order, Page,
    PageWithContainers, ReadConnections, ReadFuture, ReadModel, Role, SESSION_ORDER_KEYS, Scope,
    SessionListQuery, SessionWithContainers,
};
pub use schema::{
    BUILD_VERSION, Compatibility, MigrationId, MigrationState, MigrationStatus,
    SCHEMA_COMPATIBILITY, SchemaStatus,
};
pub use sqlite::SqliteStore;

/// The store's traits, for callers of their methods on a concrete store:
/// `use sessionview_store::prelude::*;`.
pub mod prelude {
    pub use crate::{KeyPairAdmin, OperationsStore, ProjectorStore, ReadModel, SchemaStore, Store};
}

/// The read model's tables: what a rebuild replaces. (`keypairs` and the migration history are
/// not part of it and stay where they are.)
pub const READ_MODEL_TABLES: &[&str] = &[
    "sessions",
    SESSION_COUNTS_TABLE,
    "kernels",
    "session_dependencies",
    "session_seen",
    "parked_events",
    "dead_letters",
    "source_positions",
];

/// One partition's position move within a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub partition: i32,
    /// The stored next offset the batch started from; `None` when the partition has no stored
    /// position yet.
    pub expected: Option<i64>,
    /// The next offset after the batch.
    pub next: i64,
}

/// Everything one batch writes, atomically.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The source the batch came from: a Kafka topic, or `file:PATH`.
    pub source: &'a str,
    pub advances: &'a [Advance],
    pub changes: &'a Changes,
    /// Stored dead letters (by id) to delete in the same transaction: those a retry re-applied.
    /// Deleted before `changes.dead_letters` are written, so an event that fails again is stored
    /// again with its new reason.
    pub retire: &'a [i64],
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Rows and positions are written.
    Committed,
    /// Nothing was written: another instance committed under the batch. Either the stored
    /// position of these partitions is no longer the one the batch started from (it applied
    /// events there), or it recorded an event id the batch applies (the same event, published
    /// twice, applied from another partition; then every partition of the batch is listed).
    /// Re-read the positions and re-seek; the batch folded again sees what the other wrote.
    Conflict { partitions: Vec<i32> },
}

/// A stored dead letter, as `sessionview dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub source: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub session_id: Option<Uuid>,
    pub label: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub recorded_at: DateTime<Utc>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only ids greater than this (for paging).
    pub after_id: Option<i64>,
    pub source: Option<String>,
    pub label: Option<String>,
    /// Only these ids (all when empty).
    pub ids: Vec<i64>,
    pub limit: i64,
}

/// Counts of the bookkeeping tables, for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub sessions: i64,
    pub kernels: i64,
    /// Event ids recorded for idempotence (applied, parked or dead-lettered after decoding).
    pub seen_events: i64,
    pub parked_events: i64,
    pub dead_letters: i64,
}

/// The label of a parked event whose session never came within `--park-retention`.
pub const PARKED_EXPIRED: &str = "parked_expired";

/// The reason stored with a [`PARKED_EXPIRED`] dead letter.
pub const PARKED_EXPIRED_REASON: &str =
    "waited longer than --park-retention for its session_enqueued, which never came";

/// A store's schema: its migrations and whether this build can use it. Called by `migrate`, and by
/// every command at start-up.
pub trait SchemaStore: Clone + Send + Sync + 'static {
    /// Creates or upgrades the schema, like [`SchemaStore::apply_migrations`]. Idempotent.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { self.apply_migrations().await.map(drop) }
    }

    /// Creates or upgrades the schema and names the migrations it applied (none when the schema
    /// was up to date). Idempotent. Refuses ([`StoreError::IncompatibleSchema`]) a database a
    /// newer sessionview changed incompatibly, before changing anything; tolerates the
    /// migrations of a newer sessionview that are compatible. A migration it knows whose recorded
    /// content differs from its own stays an error.
    fn apply_migrations(&self)
    -> impl Future<Output = Result<Vec<MigrationId>, StoreError>> + Send;

    /// Every migration this build knows or the database recorded, and the compatibility levels
    /// of both. Only reads (a SELECT-only role, a hot-standby replica).
    fn schema_status(&self) -> impl Future<Output = Result<SchemaStatus, StoreError>> + Send;

    /// Ok when this build can use the database without migrating (for `--no-migrate`): every
    /// migration it knows is applied and the compatibility level is one it supports; otherwise
    /// [`StoreError::MissingMigrations`], [`StoreError::IncompatibleSchema`] or
    /// [`StoreError::DivergedMigrations`]. Only reads, like [`SchemaStore::schema_status`].
    fn check_schema(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { self.schema_status().await?.check() }
    }
}

/// What the projector's applier calls: positions, loads and commits. Every method is one round of
/// work against the database; [`ProjectorStore::commit`] is a single transaction.
pub trait ProjectorStore: Clone + Send + Sync + 'static {
    /// Stored next offsets of a source, by partition.
    fn positions(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, StoreError>> + Send;

    /// The rows and bookkeeping a batch needs before it is folded.
    fn load(&self, req: &LoadRequest) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// Writes a folded batch and advances positions by compare-and-set, in one transaction.
    fn commit(
        &self,
        commit: Commit<'_>,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Turns the parked events of `source`'s `partitions` parked before `cutoff` into dead letters
    /// labelled [`PARKED_EXPIRED`] (their session never came), in one transaction; returns how
    /// many. The caller owns the partitions and has no batch of them in flight.
    fn expire_parked(
        &self,
        source: &str,
        partitions: &[i32],
        cutoff: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Refreshes the query planner's statistics of read-model tables that have grown since they
    /// were last gathered, and names them. PostgreSQL: `ANALYZE` of every table now more than
    /// twice its size at its last `ANALYZE` (autovacuum's first pass over a new table comes a
    /// minute or more late, and generic plans cached while a table was small keep scanning it
    /// whole until statistics change). SQLite plans with its indexes without statistics:
    /// nothing to do.
    fn refresh_statistics(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// What operators and their commands call: readiness, counts, dead letters, whole-model reads
/// for verification, and the in-place reset of a rebuild.
pub trait OperationsStore: Clone + Send + Sync + 'static {
    /// Dead letters, oldest first.
    fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// Every session with its kernels, ordered by id (for verification and tests).
    fn all_sessions(&self) -> impl Future<Output = Result<Vec<SessionState>, StoreError>> + Send;

    /// Row counts of every table.
    fn counts(&self) -> impl Future<Output = Result<StoreCounts, StoreError>> + Send;

    /// Whether the database answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Empties the read model (rows, bookkeeping, positions; keypairs stay), for an in-place
    /// rebuild.
    fn reset_read_model(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Everything a backend offers its callers besides the query side ([`ReadModel`]): what a
/// command that both projects and operates (`project`, `run`, `replay`) takes.
pub trait Store: SchemaStore + ProjectorStore + OperationsStore {}

impl<T: SchemaStore + ProjectorStore + OperationsStore> Store for T {}
