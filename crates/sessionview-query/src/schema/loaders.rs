//! DataLoaders: the containers and dependencies of many sessions in one statement each.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Result;
use async_graphql::dataloader::Loader;
use sessionview_projection::{KernelRow, SessionRow};
use sessionview_store::{Scope, StoreError};
use uuid::Uuid;

use super::Db;

pub(crate) struct ContainerLoader {
    pub(crate) db: Db,
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
pub(crate) async fn containers_by_session(
    db: &Db,
    sessions: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Arc<KernelRow>>>, StoreError> {
    Ok(by_session(db.containers_of(sessions).await?))
}

/// Containers grouped by their session, in the order given.
pub(crate) fn by_session(containers: Vec<KernelRow>) -> HashMap<Uuid, Vec<Arc<KernelRow>>> {
    let mut out: HashMap<Uuid, Vec<Arc<KernelRow>>> = HashMap::new();
    for k in containers {
        out.entry(k.session_id).or_default().push(Arc::new(k));
    }
    out
}

pub(crate) struct DependencyLoader {
    pub(crate) db: Db,
    pub(crate) scope: Scope,
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
