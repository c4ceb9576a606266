//! The query service: Backend.AI API v5.20191215's compute-session GraphQL API, served from the
//! read model with async-graphql and axum.
//!
//! Architecture invariant: this crate never writes the read model; it reads through the store's
//! [`sessionview_store::ReadModel`] and holds no SQL. It knows nothing of Kafka or the projector.

pub mod auth;
pub mod http;
pub mod precheck;
mod scalars;
pub mod schema;

pub use http::{
    CONTENT_SECURITY_POLICY, DEFAULT_WAIT, MAX_WAIT, MIN_POSITIONS, POSITIONS, ServerConfig,
    WAIT_MS, has_graphiql_assets, router,
};
pub use schema::{Caller, Limits, QuerySchema, build_schema, execute, prepare};

/// The schema's SDL, as `sessionview schema` prints it.
pub fn sdl() -> String {
    build_schema(Limits::default()).sdl()
}
