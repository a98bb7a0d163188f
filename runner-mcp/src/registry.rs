//! The providers the server is built with.

use std::sync::Arc;

use runner_api::{RunnerRegistry, RunnerResult};

/// The registry of every provider this server is built with; destinations in
/// the config may name any of them.
///
/// This is the one place providers are added: a provider crate becomes
/// available with one dependency in `runner-mcp/Cargo.toml` and one
/// `registry.register(Arc::new(<Provider>::new()))?;` line here (for example
/// `runner_docker::DockerProvider` or `runner_ssh::SshProvider`).
///
/// Errors: `AlreadyExists` if two providers share an id.
pub fn default_registry() -> RunnerResult<RunnerRegistry> {
    let mut registry = RunnerRegistry::new();
    registry.register(Arc::new(runner_local::LocalProvider::new()))?;
    Ok(registry)
}
