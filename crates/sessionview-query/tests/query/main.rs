//! The query service's tests, one binary: `schema` executes the GraphQL schema directly (no HTTP),
//! `http` drives the real router on a real socket; both against a real PostgreSQL read model that
//! `common` builds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

mod cache;
mod common;
mod events;
mod http;
mod order;
mod positions;
mod schema;
