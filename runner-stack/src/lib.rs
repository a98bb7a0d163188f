//! The layer stack: what every session gets on top of its provider, composed once.

mod registry;
mod workspace;

pub use registry::{RunnerProviderInfo, RunnerRegistry};
pub use workspace::{PathAccess, RemoteWorkspace};
