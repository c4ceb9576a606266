//! The GraphQL schema of the seed (root type `Queries`), with role scoping and DataLoaders.
//!
//! Resolvers stay thin: they validate arguments, apply the caller's scope, and read through the
//! store's [`ReadModel`]. The root resolvers read their sessions' containers in the same statement
//! when `containers` is selected; the other list → children edges (`dependencies`, and the
//! containers of nested sessions) go through DataLoaders, so a page costs a constant number of
//! statements.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Error, Object, Request, Result, Schema, SimpleObject,
};
use sessionview_events::Status;
use sessionview_projection::{KernelRow, SessionRow};
use sessionview_store::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KernelFields, KeyPair, Order, ReadModel, Role,
    SESSION_ORDER_KEYS, Scope, SessionListQuery, StoreError,
};
use uuid::Uuid;

use crate::scalars::{BigInt, DateTime, JsonString};

/// The schema type served by this crate.
pub type QuerySchema = Schema<Queries, EmptyMutation, EmptySubscription>;

/// The store's read side, whatever the backend.
pub(crate) type Db = Arc<dyn ReadModel>;

/// The authenticated caller of a request (from its keypair).
#[derive(Debug, Clone)]
pub struct Caller {
    pub keypair: KeyPair,
}

impl Caller {
    pub fn role(&self) -> Role {
        self.keypair.role
    }

    /// What the caller may see, by the contract's role table.
    pub fn scope(&self) -> Scope {
        match self.role() {
            Role::SuperAdmin => Scope::default(),
            Role::Admin => Scope {
                domain_name: Some(self.keypair.domain_name.clone()),
                access_key: None,
            },
            Role::User => Scope {
                domain_name: Some(self.keypair.domain_name.clone()),
                access_key: Some(self.keypair.access_key.clone()),
            },
        }
    }
}

/// Refusal limits of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `limit` a list accepts.
    pub max_limit: i32,
    /// Largest `offset` a list accepts (the rows before it are read and skipped).
    pub max_offset: i32,
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_limit: 1000,
            max_offset: 100_000,
            max_depth: 12,
            max_complexity: 100_000,
        }
    }
}

/// Builds the schema with its limits.
pub fn build_schema(limits: Limits) -> QuerySchema {
    Schema::build(Queries, EmptyMutation, EmptySubscription)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .data(limits)
        .finish()
}

/// Attaches what resolvers need to a request: the store, the caller and per-request loaders.
pub fn prepare(request: Request, db: Arc<dyn ReadModel>, caller: Caller) -> Request {
    let scope = caller.scope();
    request
        .data(DataLoader::new(
            ContainerLoader {
                db: Arc::clone(&db),
            },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            DependencyLoader {
                db: Arc::clone(&db),
                scope,
            },
            tokio::spawn,
        ))
        .data(db)
        .data(caller)
}

/// The `code` extension of an error that means "the database cannot answer now" (the HTTP
/// layer answers 503 with `Retry-After`).
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// Turns a store error into a GraphQL error that says what happened without leaking internals.
fn store_error(e: &StoreError) -> Error {
    use async_graphql::ErrorExtensions;
    if e.is_statement_timeout() {
        return Error::new("query cancelled: it exceeded the statement timeout");
    }
    if e.is_transient() {
        tracing::warn!(error = %e, "read failed: the database cannot answer now");
        return Error::new("the read model's database cannot answer now")
            .extend_with(|_, ext| ext.set("code", UNAVAILABLE));
    }
    tracing::error!(error = %e, "read failed");
    Error::new("internal error: the read model is unavailable")
}

struct ContainerLoader {
    db: Db,
}

impl Loader<Uuid> for ContainerLoader {
    type Value = Vec<Arc<KernelRow>>;
    type Error = Arc<StoreError>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        containers_by_session(&self.db, keys)
            .await
            .map_err(Arc::new)
    }
}

/// The containers of `sessions` in one statement, by session (master first).
async fn containers_by_session(
    db: &Db,
    sessions: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Arc<KernelRow>>>, StoreError> {
    Ok(by_session(db.containers_of(sessions).await?))
}

/// Containers grouped by their session, in the order given.
fn by_session(containers: Vec<KernelRow>) -> HashMap<Uuid, Vec<Arc<KernelRow>>> {
    let mut out: HashMap<Uuid, Vec<Arc<KernelRow>>> = HashMap::new();
    for k in containers {
        out.entry(k.session_id).or_default().push(Arc::new(k));
    }
    out
}

struct DependencyLoader {
    db: Db,
    scope: Scope,
}

impl Loader<Uuid> for DependencyLoader {
    type Value = Vec<Arc<SessionRow>>;
    type Error = Arc<StoreError>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let rows = self
            .db
            .dependencies_of(keys, &self.scope)
            .await
            .map_err(Arc::new)?;
        let mut out: HashMap<Uuid, Self::Value> = HashMap::new();
        for (parent, s) in rows {
            out.entry(parent).or_default().push(Arc::new(s));
        }
        Ok(out)
    }
}

fn json(v: &serde_json::Value) -> JsonString {
    JsonString(v.clone())
}

/// A compute session, with its containers when the resolver that made it fetched them already.
#[derive(Debug)]
pub struct ComputeSession(Arc<SessionRow>, Option<Prefetched>);

/// Containers read together with their session, and which of their columns were decoded.
#[derive(Debug, Clone)]
struct Prefetched {
    rows: Vec<Arc<KernelRow>>,
    fields: KernelFields,
}

impl Prefetched {
    fn new(rows: Vec<KernelRow>, fields: KernelFields) -> Self {
        Self {
            rows: rows.into_iter().map(Arc::new).collect(),
            fields,
        }
    }
}

/// The container fields held in JSON columns: a read whose `containers` select none of them
/// leaves those columns out.
const CONTAINER_JSON_FIELDS: [&str; 4] =
    ["resource_opts", "occupied_slots", "live_stat", "last_stat"];

/// Which container columns a selection of `containers` needs (fragments included; a field left
/// out by `@skip`/`@include` is removed before execution, so it is neither read nor resolved).
fn container_fields(containers: &async_graphql::Lookahead<'_>) -> KernelFields {
    if CONTAINER_JSON_FIELDS
        .iter()
        .any(|f| containers.field(f).exists())
    {
        KernelFields::All
    } else {
        KernelFields::WithoutJson
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ComputeSession {
    async fn id(&self) -> Option<Uuid> {
        Some(self.0.id)
    }
    async fn name(&self) -> Option<&str> {
        Some(&self.0.name)
    }
    #[graphql(name = "type")]
    async fn session_type(&self) -> Option<&str> {
        Some(&self.0.session_type)
    }
    async fn tag(&self) -> Option<&str> {
        self.0.tag.as_deref()
    }
    async fn image(&self) -> Option<&str> {
        Some(&self.0.image)
    }
    async fn registry(&self) -> Option<&str> {
        Some(&self.0.registry)
    }
    async fn cluster_template(&self) -> Option<&str> {
        self.0.cluster_template.as_deref()
    }
    async fn domain_name(&self) -> Option<&str> {
        Some(&self.0.domain_name)
    }
    async fn group_name(&self) -> Option<&str> {
        Some(&self.0.group_name)
    }
    async fn group_id(&self) -> Option<Uuid> {
        Some(self.0.group_id)
    }
    async fn user_email(&self) -> Option<&str> {
        Some(&self.0.user_email)
    }
    async fn user_id(&self) -> Option<Uuid> {
        Some(self.0.user_id)
    }
    async fn access_key(&self) -> Option<&str> {
        Some(&self.0.access_key)
    }
    async fn created_user_email(&self) -> Option<&str> {
        self.0.created_user_email.as_deref()
    }
    /// The seed's name for the creator's id.
    async fn created_user_uuid(&self) -> Option<Uuid> {
        self.0.created_user_id
    }
    /// The same value under Backend.AI 20.03's name.
    async fn created_user_id(&self) -> Option<Uuid> {
        self.0.created_user_id
    }
    async fn status(&self) -> Option<&str> {
        Some(self.0.status.as_str())
    }
    async fn status_changed(&self) -> Option<DateTime> {
        Some(DateTime(self.0.status_changed))
    }
    #[graphql(deprecation = "use status_changed")]
    async fn status_updated(&self) -> Option<DateTime> {
        Some(DateTime(self.0.status_changed))
    }
    async fn status_info(&self) -> Option<&str> {
        self.0.status_info.as_deref()
    }
    async fn created_at(&self) -> Option<DateTime> {
        Some(DateTime(self.0.created_at))
    }
    async fn terminated_at(&self) -> Option<DateTime> {
        self.0.terminated_at.map(DateTime)
    }
    async fn startup_command(&self) -> Option<&str> {
        self.0.startup_command.as_deref()
    }
    /// `UNDEFINED`, `SUCCESS` or `FAILURE`.
    async fn result(&self) -> Option<&str> {
        Some(&self.0.result)
    }
    async fn resource_opts(&self) -> Option<JsonString> {
        Some(JsonString(serde_json::Value::Object(
            self.0.resource_opts.clone(),
        )))
    }
    async fn scaling_group(&self) -> Option<&str> {
        self.0.scaling_group.as_deref()
    }
    /// The master container's service ports; null until it has started.
    async fn service_ports(&self) -> Option<JsonString> {
        self.0.service_ports.as_ref().map(json)
    }
    async fn mounts(&self) -> Option<Vec<Option<String>>> {
        Some(self.0.mounts.iter().cloned().map(Some).collect())
    }
    /// Sum over its containers.
    async fn occupied_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.0.occupied_slots.to_json()))
    }
    async fn num_queries(&self) -> Option<BigInt> {
        Some(BigInt(self.0.num_queries))
    }
    /// All its containers, master first.
    #[graphql(complexity = "8 * child_complexity")]
    async fn containers(&self, ctx: &Context<'_>) -> Result<Option<Vec<Option<ComputeContainer>>>> {
        let show_agent = ctx.data::<Caller>()?.role() == Role::SuperAdmin;
        let (rows, fields) = match &self.1 {
            Some(p) => (p.rows.clone(), p.fields),
            // Nested sessions (dependencies): batched across the parent list by the loader.
            None => (
                ctx.data::<DataLoader<ContainerLoader>>()?
                    .load_one(self.0.id)
                    .await
                    .map_err(|e| store_error(&e))?
                    .unwrap_or_default(),
                KernelFields::All,
            ),
        };
        Ok(Some(
            rows.into_iter()
                .map(|row| {
                    Some(ComputeContainer {
                        row,
                        show_agent,
                        fields,
                    })
                })
                .collect(),
        ))
    }
    /// Sessions it depends on that exist and the caller may see.
    #[graphql(complexity = "8 * child_complexity")]
    async fn dependencies(&self, ctx: &Context<'_>) -> Result<Option<Vec<Option<ComputeSession>>>> {
        let loader = ctx.data::<DataLoader<DependencyLoader>>()?;
        let rows = loader
            .load_one(self.0.id)
            .await
            .map_err(|e| store_error(&e))?
            .unwrap_or_default();
        Ok(Some(
            rows.into_iter()
                .map(|s| Some(ComputeSession(s, None)))
                .collect(),
        ))
    }
}

/// A container (kernel) of a session.
#[derive(Debug)]
pub struct ComputeContainer {
    row: Arc<KernelRow>,
    show_agent: bool,
    /// Which columns `row` was decoded with.
    fields: KernelFields,
}

impl ComputeContainer {
    /// The row, for a field held in a JSON column; an error if the read left those out (the
    /// look-ahead that decided it missed a field: a bug, never a silently empty value).
    fn with_json(&self) -> Result<&KernelRow> {
        match self.fields {
            KernelFields::All => Ok(&self.row),
            KernelFields::WithoutJson => {
                tracing::error!(container = %self.row.id, "a JSON field was resolved on a container read without them");
                Err(Error::new(
                    "internal error: the container was read without this field",
                ))
            }
        }
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ComputeContainer {
    async fn id(&self) -> Option<Uuid> {
        Some(self.row.id)
    }
    async fn role(&self) -> Option<&str> {
        Some(&self.row.role)
    }
    async fn hostname(&self) -> Option<&str> {
        self.row.hostname.as_deref()
    }
    async fn session_id(&self) -> Option<Uuid> {
        Some(self.row.session_id)
    }
    async fn image(&self) -> Option<&str> {
        Some(&self.row.image)
    }
    async fn registry(&self) -> Option<&str> {
        Some(&self.row.registry)
    }
    async fn status(&self) -> Option<&str> {
        Some(self.row.status.as_str())
    }
    async fn status_changed(&self) -> Option<DateTime> {
        Some(DateTime(self.row.status_changed))
    }
    async fn status_info(&self) -> Option<&str> {
        self.row.status_info.as_deref()
    }
    async fn created_at(&self) -> Option<DateTime> {
        Some(DateTime(self.row.created_at))
    }
    async fn terminated_at(&self) -> Option<DateTime> {
        self.row.terminated_at.map(DateTime)
    }
    /// Super-admin only: null for everyone else.
    async fn agent(&self) -> Option<&str> {
        if self.show_agent {
            self.row.agent.as_deref()
        } else {
            None
        }
    }
    /// The runtime's id; differs from `id`.
    async fn container_id(&self) -> Option<&str> {
        self.row.container_id.as_deref()
    }
    async fn resource_opts(&self) -> Result<Option<JsonString>> {
        Ok(Some(JsonString(serde_json::Value::Object(
            self.with_json()?.resource_opts.clone(),
        ))))
    }
    async fn occupied_slots(&self) -> Result<Option<JsonString>> {
        Ok(Some(JsonString(self.with_json()?.occupied_slots.to_json())))
    }
    /// While RUNNING the latest stat, otherwise `last_stat`.
    async fn live_stat(&self) -> Result<Option<JsonString>> {
        Ok(self
            .with_json()?
            .last_stat
            .as_ref()
            .map(|s| JsonString(serde_json::Value::Object(s.clone()))))
    }
    async fn last_stat(&self) -> Result<Option<JsonString>> {
        Ok(self
            .with_json()?
            .last_stat
            .as_ref()
            .map(|s| JsonString(serde_json::Value::Object(s.clone()))))
    }
}

/// A page of sessions.
#[derive(Debug, SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ComputeSessionList {
    items: Vec<Option<ComputeSession>>,
    total_count: i32,
}

/// A page of containers.
#[derive(Debug, SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ComputeContainerList {
    items: Vec<Option<ComputeContainer>>,
    total_count: i32,
}

/// The caller's own keypair.
#[derive(Debug, SimpleObject)]
#[graphql(name = "KeyPair", rename_fields = "snake_case")]
pub struct KeyPairObject {
    access_key: Option<String>,
    secret_key: Option<String>,
    is_active: Option<bool>,
    is_admin: Option<bool>,
    user_id: Option<Uuid>,
    user_email: Option<String>,
    domain_name: Option<String>,
    role: Option<String>,
}

fn check_page(limit: i32, offset: i32, limits: &Limits) -> Result<()> {
    if !(1..=limits.max_limit).contains(&limit) {
        return Err(Error::new(format!(
            "limit must be between 1 and {}, got {limit}",
            limits.max_limit
        )));
    }
    if !(0..=limits.max_offset).contains(&offset) {
        return Err(Error::new(format!(
            "offset must be between 0 and {} (limit: --max-offset; a larger offset is a scan), \
             got {offset}",
            limits.max_offset
        )));
    }
    Ok(())
}

/// Parses the comma-separated `status` argument; `None` or only blanks mean every status.
pub fn parse_statuses(arg: Option<&str>) -> Result<Vec<Status>> {
    let Some(arg) = arg else {
        return Ok(Vec::new());
    };
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Status>()
                .map_err(|e| Error::new(format!("status: {e}")))
        })
        .collect()
}

fn parse_order(
    key: Option<&str>,
    asc: Option<bool>,
    allowed: &[&'static str],
) -> Result<Option<Order>> {
    let Some(key) = key else { return Ok(None) };
    let column = allowed.iter().find(|k| **k == key).ok_or_else(|| {
        Error::new(format!(
            "unknown order_key {key:?}; valid keys are {}",
            allowed.join(", ")
        ))
    })?;
    Ok(Some(Order {
        column,
        ascending: asc.unwrap_or(false),
    }))
}

fn clamp_count(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The root query type.
#[derive(Debug)]
pub struct Queries;

#[Object(
    name = "Queries",
    rename_fields = "snake_case",
    rename_args = "snake_case"
)]
impl Queries {
    /// One session by id; null when it does not exist or the caller may not see it.
    async fn compute_session(&self, ctx: &Context<'_>, id: Uuid) -> Result<Option<ComputeSession>> {
        let db = ctx.data::<Db>()?;
        let scope = ctx.data::<Caller>()?.scope();
        // With `containers` selected, the session comes with its containers in one read.
        let containers = ctx.look_ahead().field("containers");
        if containers.exists() {
            let fields = container_fields(&containers);
            let found = db
                .session_with_containers(id, &scope, fields)
                .await
                .map_err(|e| store_error(&e))?;
            return Ok(found.map(|(s, containers)| {
                ComputeSession(Arc::new(s), Some(Prefetched::new(containers, fields)))
            }));
        }
        let rows = db
            .sessions_by_ids(&[id], &scope)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(rows
            .into_iter()
            .next()
            .map(|s| ComputeSession(Arc::new(s), None)))
    }

    /// A page of sessions, filtered inside the caller's scope.
    #[allow(clippy::too_many_arguments, reason = "the seed's argument list")]
    #[graphql(complexity = "(limit.max(0) as usize).saturating_mul(child_complexity)")]
    async fn compute_session_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        domain_name: Option<String>,
        group_id: Option<String>,
        access_key: Option<String>,
        status: Option<String>,
    ) -> Result<Option<ComputeSessionList>> {
        let db = ctx.data::<Db>()?;
        let caller = ctx.data::<Caller>()?;
        check_page(limit, offset, ctx.data::<Limits>()?)?;
        let own = &caller.keypair;
        if caller.role() != Role::SuperAdmin
            && let Some(d) = &domain_name
            && *d != own.domain_name
        {
            return Err(Error::new(format!(
                "domain_name {d:?} is outside your domain {:?}: a{} {} may query only its own domain",
                own.domain_name,
                if caller.role() == Role::Admin {
                    "n"
                } else {
                    ""
                },
                caller.role().as_str()
            )));
        }
        if caller.role() == Role::User
            && let Some(a) = &access_key
            && *a != own.access_key
        {
            return Err(Error::new(format!(
                "access_key {a:?} is not yours: a user may query only its own sessions"
            )));
        }
        let group_id = group_id
            .map(|g| {
                Uuid::parse_str(&g).map_err(|_| Error::new(format!("group_id {g:?} is not a UUID")))
            })
            .transpose()?;
        let q = SessionListQuery {
            scope: caller.scope(),
            domain_name,
            group_id,
            access_key,
            statuses: parse_statuses(status.as_deref())?,
            order: parse_order(order_key.as_deref(), order_asc, SESSION_ORDER_KEYS)?,
            limit: i64::from(limit),
            offset: i64::from(offset),
        };
        // With `containers` selected, the page comes with its containers in one read.
        let containers = ctx.look_ahead().field("items").field("containers");
        let (page, mut prefetched) = if containers.exists() {
            let fields = container_fields(&containers);
            let (page, rows) = db
                .list_sessions_with_containers(&q, fields)
                .await
                .map_err(|e| store_error(&e))?;
            (page, Some((by_session(rows), fields)))
        } else {
            let page = db.list_sessions(&q).await.map_err(|e| store_error(&e))?;
            (page, None)
        };
        let total_count = clamp_count(page.total_count);
        let items = page
            .items
            .into_iter()
            .map(|s| {
                let containers = prefetched.as_mut().map(|(by_session, fields)| Prefetched {
                    rows: by_session.remove(&s.id).unwrap_or_default(),
                    fields: *fields,
                });
                Some(ComputeSession(Arc::new(s), containers))
            })
            .collect();
        Ok(Some(ComputeSessionList { items, total_count }))
    }

    /// One container by id; null when it does not exist or the caller may not see its session.
    async fn compute_container(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> Result<Option<ComputeContainer>> {
        let db = ctx.data::<Db>()?;
        let caller = ctx.data::<Caller>()?;
        let row = db
            .container(id, &caller.scope())
            .await
            .map_err(|e| store_error(&e))?;
        Ok(row.map(|r| ComputeContainer {
            row: Arc::new(r),
            show_agent: caller.role() == Role::SuperAdmin,
            fields: KernelFields::All,
        }))
    }

    /// A page of one session's containers (empty for a session the caller may not see).
    #[allow(clippy::too_many_arguments, reason = "the seed's argument list")]
    #[graphql(complexity = "(limit.max(0) as usize).saturating_mul(child_complexity)")]
    async fn compute_container_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        session_id: Uuid,
        role: Option<String>,
        order_key: Option<String>,
        order_asc: Option<bool>,
    ) -> Result<Option<ComputeContainerList>> {
        let db = ctx.data::<Db>()?;
        let caller = ctx.data::<Caller>()?;
        check_page(limit, offset, ctx.data::<Limits>()?)?;
        let q = ContainerListQuery {
            scope: caller.scope(),
            session_id,
            role,
            order: parse_order(order_key.as_deref(), order_asc, CONTAINER_ORDER_KEYS)?,
            limit: i64::from(limit),
            offset: i64::from(offset),
        };
        let page = db.list_containers(&q).await.map_err(|e| store_error(&e))?;
        let show_agent = caller.role() == Role::SuperAdmin;
        Ok(Some(ComputeContainerList {
            items: page
                .items
                .into_iter()
                .map(|r| {
                    Some(ComputeContainer {
                        row: Arc::new(r),
                        show_agent,
                        fields: KernelFields::All,
                    })
                })
                .collect(),
            total_count: clamp_count(page.total_count),
        }))
    }

    /// The caller's own keypair (the 20.03 CLI reads it, secret key included).
    async fn keypair(&self, ctx: &Context<'_>) -> Result<Option<KeyPairObject>> {
        let kp = &ctx.data::<Caller>()?.keypair;
        Ok(Some(KeyPairObject {
            access_key: Some(kp.access_key.clone()),
            secret_key: Some(kp.secret_key.clone()),
            is_active: Some(kp.is_active),
            is_admin: Some(kp.role != Role::User),
            user_id: Some(kp.user_id),
            user_email: Some(kp.user_email.clone()),
            domain_name: Some(kp.domain_name.clone()),
            role: Some(kp.role.as_str().to_owned()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_argument_is_a_tolerant_comma_list() {
        assert_eq!(parse_statuses(None).unwrap(), vec![]);
        assert_eq!(
            parse_statuses(Some(" RUNNING , TERMINATED,")).unwrap(),
            vec![Status::Running, Status::Terminated]
        );
        let err = parse_statuses(Some("RUNNING,DONE")).unwrap_err().message;
        assert!(
            err.contains("\"DONE\"") && err.contains("PENDING, PREPARING"),
            "{err}"
        );
    }

    #[test]
    fn order_key_must_be_known() {
        let o = parse_order(Some("created_at"), Some(true), SESSION_ORDER_KEYS)
            .unwrap()
            .unwrap();
        assert_eq!((o.column, o.ascending), ("created_at", true));
        assert!(
            !parse_order(Some("name"), None, SESSION_ORDER_KEYS)
                .unwrap()
                .unwrap()
                .ascending
        );
        let err = parse_order(Some("agent"), None, CONTAINER_ORDER_KEYS)
            .unwrap_err()
            .message;
        assert!(
            err.contains("\"agent\"") && err.contains("container_id"),
            "{err}"
        );
    }

    #[test]
    fn pages_are_checked_not_clamped() {
        let l = Limits::default();
        assert!(check_page(1000, 0, &l).is_ok());
        assert!(
            check_page(1001, 0, &l)
                .unwrap_err()
                .message
                .contains("between 1 and 1000, got 1001")
        );
        assert!(check_page(0, 0, &l).is_err());
        assert!(
            check_page(10, -1, &l)
                .unwrap_err()
                .message
                .contains("got -1")
        );
    }
}
