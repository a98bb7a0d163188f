//! The providers the server is built with.

use std::sync::Arc;

use runner_api::RunnerResult;
use runner_stack::RunnerRegistry;

/// The registry of every provider this server is built with; destinations in
/// the config may name any of them.
///
/// Built in: unix-local, docker and ssh. This is the one place providers are
/// added: another provider crate becomes available with one dependency in
/// `runner-mcp/Cargo.toml` and one
/// `registry.register(Arc::new(<Provider>::new()))?;` line here.
///
/// Errors: `AlreadyExists` if two providers share an id.
pub fn default_registry() -> RunnerResult<RunnerRegistry> {
    let mut registry = RunnerRegistry::new();
    registry.register(Arc::new(runner_local::LocalProvider::new()))?;
    registry.register(Arc::new(runner_docker::DockerProvider::new()))?;
    registry.register(Arc::new(runner_ssh::SshProvider::new()))?;
    Ok(registry)
}
