//! The end-to-end tests: the real `sessionview` binary against a real PostgreSQL and a real Apache
//! Kafka broker (`scripts/test` starts both), one module per area. `support` holds what they share.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

mod architecture;
mod browser;
mod client;
mod demo;
mod deployment;
mod hostile;
mod operations;
mod query;
mod replay;
mod security;
mod spine;
mod support;
