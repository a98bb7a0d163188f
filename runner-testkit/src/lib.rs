#![doc = include_str!("../README.md")]

mod catalogue;
mod checks;
mod commands;
mod context;
mod fixtures;
mod harness;
mod memory;
mod outcome;

pub use catalogue::{Area, Capability, Check, checks};
pub use harness::{Conformance, ConformanceSummary};
pub use memory::{MEMORY_PROVIDER_ID, MEMORY_WORKSPACE_ROOT, MemoryProvider};
