//! The GraphQL schema of the seed (root type `Queries`), with role scoping and DataLoaders.
//!
//! Resolvers stay thin: they validate arguments, apply the caller's scope, and read through the
//! store's [`ReadModel`]. The root resolvers read their sessions' containers in the same statement
//! when `containers` is selected; the other list → children edges (`dependencies`, and the
//! containers of nested sessions) go through DataLoaders, so a page costs a constant number of
//! statements.

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{EmptyMutation, EmptySubscription, Error, Request, Response, Schema};
use sessionview_store::{KeyPair, ReadModel, Role, Scope, StoreError};

mod arguments;
mod container;
mod legacy;
mod loaders;
mod order;
mod root;
mod session;
mod variables;

pub use arguments::parse_statuses;
pub use container::ComputeContainer;
pub use legacy::{LegacyComputeSession, LegacyComputeSessionList};
use loaders::{ContainerLoader, DependencyLoader};
pub use root::{ComputeContainerList, ComputeSessionList, KeyPairObject, Queries};
pub use session::ComputeSession;

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

/// Executes `request` as the contract requires beyond async-graphql: variables used where their
/// declared type does not fit are refused (see `variables`), and the answer's root keys follow
/// the document (see `order`).
pub async fn execute(schema: &QuerySchema, mut request: Request) -> Response {
    let operation = request.operation_name.clone();
    let order = match request.parsed_query() {
        Ok(doc) => {
            let refused = variables::SIGNATURES.check(doc, operation.as_deref());
            if !refused.is_empty() {
                return Response::from_errors(refused);
            }
            order::root_keys(doc, operation.as_deref())
        }
        // The schema reports the syntax error itself.
        Err(_) => Vec::new(),
    };
    let mut response = schema.execute(request).await;
    order::reorder(&mut response.data, &order);
    response
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
pub(crate) fn store_error(e: &StoreError) -> Error {
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
