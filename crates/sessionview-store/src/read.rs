//! The query side's interface: scoped, filtered, ordered, paginated reads and keypairs.

use crate::changes::ChangesAfter;
use crate::live::{CommittedPosition, LogExtent, SessionEvent};
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use sessionview_events::{JsonObject, ResourceSlots, Status};
use sessionview_projection::{KernelRow, SessionRow};
use uuid::Uuid;

use crate::StoreError;

/// What a caller may see: `None` means unrestricted on that axis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only sessions of this domain.
    pub domain_name: Option<String>,
    /// Only sessions of this access key.
    pub access_key: Option<String>,
}

impl Scope {
    /// Whether a session row lies inside this scope.
    pub fn allows(&self, domain_name: &str, access_key: &str) -> bool {
        self.domain_name.as_deref().is_none_or(|d| d == domain_name)
            && self.access_key.as_deref().is_none_or(|a| a == access_key)
    }
}

/// The orderable fields of `ComputeSession`, by GraphQL field name (= column name).
pub const SESSION_ORDER_KEYS: &[&str] = &[
    "id",
    "name",
    "type",
    "tag",
    "image",
    "registry",
    "cluster_template",
    "domain_name",
    "group_name",
    "group_id",
    "user_email",
    "user_id",
    "access_key",
    "created_user_email",
    "status",
    "status_changed",
    "status_info",
    "created_at",
    "terminated_at",
    "startup_command",
    "result",
    "scaling_group",
    "num_queries",
];

/// The orderable fields of `ComputeContainer` (not `agent`: only super-admins may see it).
pub const CONTAINER_ORDER_KEYS: &[&str] = &[
    "id",
    "role",
    "hostname",
    "image",
    "registry",
    "status",
    "status_changed",
    "status_info",
    "created_at",
    "terminated_at",
    "container_id",
];

/// An explicit order: a column from the allow-list and a direction. The default order (most
/// recently touched first, `id` descending as tie-breaker) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub column: &'static str,
    pub ascending: bool,
}

/// `compute_session_list`.
#[derive(Debug, Clone, Default)]
pub struct SessionListQuery {
    pub scope: Scope,
    pub domain_name: Option<String>,
    pub group_id: Option<Uuid>,
    pub access_key: Option<String>,
    /// Empty: every status.
    pub statuses: Vec<Status>,
    pub order: Option<Order>,
    pub limit: i64,
    pub offset: i64,
}

/// `compute_container_list`.
#[derive(Debug, Clone)]
pub struct ContainerListQuery {
    pub scope: Scope,
    pub session_id: Uuid,
    pub role: Option<String>,
    pub order: Option<Order>,
    pub limit: i64,
    pub offset: i64,
}

/// One page and the size of the whole filtered, scoped set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_count: i64,
}

/// `superadmin`, `admin` (domain admin) or `user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    SuperAdmin,
    Admin,
    User,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "superadmin",
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "superadmin" => Ok(Role::SuperAdmin),
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(format!(
                "unknown role {other:?}; valid roles are superadmin, admin, user"
            )),
        }
    }
}

/// An API keypair and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub access_key: String,
    pub secret_key: String,
    pub user_id: Uuid,
    pub user_email: String,
    pub domain_name: String,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

/// Which columns of the containers a read with containers decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFields {
    /// Every column.
    All,
    /// All but the JSON columns (`resource_opts`, `occupied_slots`, `service_ports`,
    /// `last_stat`), which are left empty: for callers that show none of them (parsing them is
    /// most of a container's decoding).
    WithoutJson,
}

impl KernelFields {
    /// `row` as a read with these fields returns it.
    pub fn keep(self, mut row: KernelRow) -> KernelRow {
        if self == KernelFields::WithoutJson {
            row.resource_opts = JsonObject::new();
            row.occupied_slots = ResourceSlots::default();
            row.service_ports = None;
            row.last_stat = None;
        }
        row
    }
}

/// A page of sessions and the containers of its sessions.
pub type PageWithContainers = (Page<SessionRow>, Vec<KernelRow>);

/// A session and its containers, master first.
pub type SessionWithContainers = (SessionRow, Vec<KernelRow>);

/// A future a [`ReadModel`] method returns: boxed, so that the trait is object-safe and the query
/// service holds one `Arc<dyn ReadModel>` whatever the backend.
pub type ReadFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Reads the query service makes. Implementations never write the read model. Object-safe: a
/// read costs a database round trip, beside which its future's one allocation is nothing.
pub trait ReadModel: Send + Sync + 'static {
    /// One page of sessions and the count of the whole set.
    fn list_sessions<'a>(&'a self, q: &'a SessionListQuery) -> ReadFuture<'a, Page<SessionRow>>;

    /// [`ReadModel::list_sessions`] with every container of the page's sessions (by session,
    /// master first), decoded as `fields` says: what a list whose containers are selected needs.
    /// The default reads the page, then its containers; a backend may do it in one statement.
    fn list_sessions_with_containers<'a>(
        &'a self,
        q: &'a SessionListQuery,
        fields: KernelFields,
    ) -> ReadFuture<'a, PageWithContainers> {
        Box::pin(async move {
            let page = self.list_sessions(q).await?;
            let ids: Vec<Uuid> = page.items.iter().map(|s| s.id).collect();
            let containers = if ids.is_empty() {
                Vec::new()
            } else {
                let rows = self.containers_of(&ids).await?;
                rows.into_iter().map(|k| fields.keep(k)).collect()
            };
            Ok((page, containers))
        })
    }

    /// One session by id inside `scope`, with its containers (master first); `None` when it
    /// does not exist or lies outside the scope. Containers decoded as `fields` says.
    fn session_with_containers<'a>(
        &'a self,
        id: Uuid,
        scope: &'a Scope,
        fields: KernelFields,
    ) -> ReadFuture<'a, Option<SessionWithContainers>> {
        Box::pin(async move {
            let Some(session) = self.sessions_by_ids(&[id], scope).await?.pop() else {
                return Ok(None);
            };
            let rows = self.containers_of(&[id]).await?;
            let containers = rows.into_iter().map(|k| fields.keep(k)).collect();
            Ok(Some((session, containers)))
        })
    }

    /// Sessions by id, inside `scope` (missing and out-of-scope ids are left out).
    fn sessions_by_ids<'a>(
        &'a self,
        ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<SessionRow>>;

    /// The containers of many sessions, each session's ordered master first.
    fn containers_of<'a>(&'a self, session_ids: &'a [Uuid]) -> ReadFuture<'a, Vec<KernelRow>>;

    /// `(session, dependency)` pairs for many sessions, dependencies in scope and existing only,
    /// in the order the session listed them.
    fn dependencies_of<'a>(
        &'a self,
        session_ids: &'a [Uuid],
        scope: &'a Scope,
    ) -> ReadFuture<'a, Vec<(Uuid, SessionRow)>>;

    /// One page of one session's containers (empty when the session is out of scope).
    fn list_containers<'a>(&'a self, q: &'a ContainerListQuery) -> ReadFuture<'a, Page<KernelRow>>;

    /// One container, if it exists and its session is in scope.
    fn container<'a>(&'a self, id: Uuid, scope: &'a Scope) -> ReadFuture<'a, Option<KernelRow>>;

    /// A keypair by access key (active or not).
    fn keypair<'a>(&'a self, access_key: &'a str) -> ReadFuture<'a, Option<KeyPair>>;

    /// Whether the database answers (readiness).
    fn ping(&self) -> ReadFuture<'_, ()>;

    /// Up to `limit` events of the session event log after `after`, oldest first.
    fn session_events(&self, after: i64, limit: i64) -> ReadFuture<'_, Vec<SessionEvent>>;

    /// The session event log's extent.
    fn session_event_log(&self) -> ReadFuture<'_, LogExtent>;

    /// Every committed source position (what read-your-writes compares with).
    fn committed_positions(&self) -> ReadFuture<'_, Vec<CommittedPosition>>;

    /// Up to `limit` notes of what commits changed after `after`, oldest first, and the newest
    /// note's number (what response caches follow).
    fn changes_after(&self, after: i64, limit: i64) -> ReadFuture<'_, ChangesAfter>;

    /// Wakes (yields) whenever a commit may have logged events: every commit in this process,
    /// and on PostgreSQL every commit of any process (LISTEN). Wake-ups may be spurious or,
    /// while a connection is being re-established, missed: a follower polls as well.
    fn commit_wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        in_process_wakeups()
    }

    /// Statements executed so far by this store handle (for tests and metrics).
    fn statements_executed(&self) -> u64;

    /// The connections reads use now, where the store pools them separately (PostgreSQL).
    fn read_connections(&self) -> Option<ReadConnections> {
        None
    }
}

/// A snapshot of a store's read connections (metrics: is the pool the bottleneck?).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadConnections {
    /// The most the pool opens.
    pub max: usize,
    /// Open and serving a read.
    pub in_use: usize,
    /// Open and free.
    pub idle: usize,
    /// Reads waiting for a connection.
    pub waiting: usize,
}

/// Keypair administration (the `sessionview keypair` command).
pub trait KeyPairAdmin: Clone + Send + Sync + 'static {
    fn insert_keypair(&self, kp: &KeyPair) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn list_keypairs(&self) -> impl Future<Output = Result<Vec<KeyPair>, StoreError>> + Send;
    /// Returns whether the key existed.
    fn deactivate_keypair(
        &self,
        access_key: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The in-process wake-ups of [`ReadModel::commit_wakeups`].
pub(crate) fn in_process_wakeups() -> futures_util::stream::BoxStream<'static, ()> {
    Box::pin(futures_util::stream::unfold((), |()| async {
        crate::live::COMMITTED.notified().await;
        Some(((), ()))
    }))
}
