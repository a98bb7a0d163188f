#![doc = include_str!("../README.md")]

mod backend;
mod catalogue;
mod checks;
mod commands;
mod context;
mod fixtures;
mod harness;
mod memory;
mod outcome;
#[cfg(feature = "s3-server")]
mod s3_server;
mod store;

pub use backend::{BackendGate, async_trial};
pub use catalogue::{Area, Capability, Check, checks};
pub use context::ConnectionBreaker;
pub use fixtures::connections::{
    is_running, kill_agent_connections, shut_own_connections, socket_breaker, state_socket,
    wait_gone,
};
pub use fixtures::http::http_fetch;
pub use fixtures::skewed::{SKEWED_AGENT_ENV, skewed_agent_destination};
pub use harness::{CheckReport, CheckStatus, Conformance, ConformanceSummary};
/// The libtest-mimic crate the harness and [`async_trial`] build on.
pub use libtest_mimic;
pub use memory::{MEMORY_PROVIDER_ID, MEMORY_WORKSPACE_ROOT, MemoryProvider};
#[cfg(feature = "s3-server")]
pub use s3_server::{
    S3_TEST_ACCESS_KEY_ID, S3_TEST_BUCKET, S3_TEST_SECRET_ACCESS_KEY, S3_TEST_SECRET_ID,
    S3_TEST_WRONG_SECRET_ID, S3TestServer,
};
pub use store::ObjectStoreTarget;
