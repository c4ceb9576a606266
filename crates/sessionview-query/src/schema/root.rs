//! The root type `Queries` and its page and keypair objects.

use std::sync::Arc;

use async_graphql::{Context, Error, Object, Result, SimpleObject};
use sessionview_store::{
    CONTAINER_ORDER_KEYS, ContainerListQuery, KernelFields, Role, SESSION_ORDER_KEYS,
    SessionListQuery,
};
use uuid::Uuid;

use super::arguments::{check_page, clamp_count, parse_order, parse_statuses};
use super::container::ComputeContainer;
use super::legacy::{LegacyComputeSession, LegacyComputeSessionList};
use super::loaders::by_session;
use super::session::{ComputeSession, Prefetched, container_fields};
use super::{Caller, Db, Limits, store_error};

/// A page of sessions.
#[derive(Debug, SimpleObject)]
#[graphql(rename_fields = "snake_case", serial)]
pub struct ComputeSessionList {
    items: Vec<Option<ComputeSession>>,
    total_count: i32,
}

/// A page of containers.
#[derive(Debug, SimpleObject)]
#[graphql(rename_fields = "snake_case", serial)]
pub struct ComputeContainerList {
    items: Vec<Option<ComputeContainer>>,
    total_count: i32,
}

/// The caller's own keypair.
#[derive(Debug, SimpleObject)]
#[graphql(name = "KeyPair", rename_fields = "snake_case", serial)]
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

/// The arguments of a session list (`compute_session_list`, `legacy_compute_session_list`).
pub(crate) struct SessionListArgs {
    pub(crate) limit: i32,
    pub(crate) offset: i32,
    pub(crate) order_key: Option<String>,
    pub(crate) order_asc: Option<bool>,
    pub(crate) domain_name: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) access_key: Option<String>,
    pub(crate) status: Option<String>,
}

impl SessionListArgs {
    /// The store's query for these arguments inside the caller's scope, or the error the contract's
    /// role table gives.
    pub(crate) fn query(self, ctx: &Context<'_>) -> Result<SessionListQuery> {
        let Self {
            limit,
            offset,
            order_key,
            order_asc,
            domain_name,
            group_id,
            access_key,
            status,
        } = self;
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
        Ok(SessionListQuery {
            scope: caller.scope(),
            domain_name,
            group_id,
            access_key,
            statuses: parse_statuses(status.as_deref())?,
            order: parse_order(order_key.as_deref(), order_asc, SESSION_ORDER_KEYS)?,
            limit: i64::from(limit),
            offset: i64::from(offset),
        })
    }
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
        let q = SessionListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            domain_name,
            group_id,
            access_key,
            status,
        }
        .query(ctx)?;
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

    /// The 2020 web UI's session list: the same arguments, scoping, status lists, order and
    /// limits as `compute_session_list`, one item per session (with its master container's
    /// fields).
    #[allow(clippy::too_many_arguments, reason = "the web UI's argument list")]
    #[graphql(complexity = "(limit.max(0) as usize).saturating_mul(child_complexity)")]
    async fn legacy_compute_session_list(
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
    ) -> Result<Option<LegacyComputeSessionList>> {
        let db = ctx.data::<Db>()?;
        let q = SessionListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            domain_name,
            group_id,
            access_key,
            status,
        }
        .query(ctx)?;
        let (page, rows) = db
            .list_sessions_with_containers(&q, KernelFields::All)
            .await
            .map_err(|e| store_error(&e))?;
        let mut containers = by_session(rows);
        let show_agent = ctx.data::<Caller>()?.role() == Role::SuperAdmin;
        let items = page
            .items
            .into_iter()
            .map(|s| {
                // The master is ordinal 0 (it is placed first when the session is enqueued).
                let master = containers
                    .remove(&s.id)
                    .and_then(|rows| rows.into_iter().min_by_key(|k| k.ordinal));
                Some(LegacyComputeSession {
                    session: Arc::new(s),
                    master,
                    show_agent,
                })
            })
            .collect();
        Ok(Some(LegacyComputeSessionList {
            items,
            total_count: clamp_count(page.total_count),
        }))
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
