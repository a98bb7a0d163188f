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

pub use backend::{BackendGate, async_trial};
pub use catalogue::{Area, Capability, Check, checks};
pub use harness::{Conformance, ConformanceSummary};
/// The libtest-mimic crate the harness and [`async_trial`] build on.
pub use libtest_mimic;
pub use memory::{MEMORY_PROVIDER_ID, MEMORY_WORKSPACE_ROOT, MemoryProvider};
