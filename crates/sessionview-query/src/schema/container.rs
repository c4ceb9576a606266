//! `ComputeContainer`: a container (kernel) of a session.

use std::sync::Arc;

use async_graphql::{Error, Object, Result};
use sessionview_projection::KernelRow;
use sessionview_store::KernelFields;
use uuid::Uuid;

use crate::scalars::{DateTime, JsonString};

/// A container (kernel) of a session.
#[derive(Debug)]
pub struct ComputeContainer {
    pub(crate) row: Arc<KernelRow>,
    pub(crate) show_agent: bool,
    /// Which columns `row` was decoded with.
    pub(crate) fields: KernelFields,
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

#[Object(rename_fields = "snake_case", rename_args = "snake_case", serial)]
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
