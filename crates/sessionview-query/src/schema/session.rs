//! `ComputeSession`: a session, with its containers when the resolver that made it read them.

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Object, Result};
use sessionview_projection::{KernelRow, SessionRow};
use sessionview_store::{KernelFields, Role};
use uuid::Uuid;

use crate::scalars::{BigInt, DateTime, JsonString};

use super::container::ComputeContainer;
use super::loaders::{ContainerLoader, DependencyLoader};
use super::{Caller, store_error};

pub(crate) fn json(v: &serde_json::Value) -> JsonString {
    JsonString(v.clone())
}

/// A compute session, with its containers when the resolver that made it fetched them already.
#[derive(Debug)]
pub struct ComputeSession(pub(crate) Arc<SessionRow>, pub(crate) Option<Prefetched>);

/// Containers read together with their session, and which of their columns were decoded.
#[derive(Debug, Clone)]
pub(crate) struct Prefetched {
    pub(crate) rows: Vec<Arc<KernelRow>>,
    pub(crate) fields: KernelFields,
}

impl Prefetched {
    pub(crate) fn new(rows: Vec<KernelRow>, fields: KernelFields) -> Self {
        Self {
            rows: rows.into_iter().map(Arc::new).collect(),
            fields,
        }
    }
}

/// The container fields held in JSON columns: a read whose `containers` select none of them
/// leaves those columns out.
pub(crate) const CONTAINER_JSON_FIELDS: [&str; 4] =
    ["resource_opts", "occupied_slots", "live_stat", "last_stat"];

/// Which container columns a selection of `containers` needs (fragments included; a field left
/// out by `@skip`/`@include` is removed before execution, so it is neither read nor resolved).
pub(crate) fn container_fields(containers: &async_graphql::Lookahead<'_>) -> KernelFields {
    if CONTAINER_JSON_FIELDS
        .iter()
        .any(|f| containers.field(f).exists())
    {
        KernelFields::All
    } else {
        KernelFields::WithoutJson
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case", serial)]
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
