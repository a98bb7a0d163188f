//! The providers the server is built with.

use std::sync::Arc;

use runner_api::RunnerResult;
use runner_mounts::EnvSecretResolver;
use runner_stack::{RunnerRegistry, Stack};

/// The registry of every provider this server is built with; destinations in
/// the config may name any of them. Each provider is wrapped in the layer
/// stack, whose mounts and artifact stores (`s3`, `gcs`, `azure`, all
/// compiled in here) resolve credentials from `RUNNER_SECRET_<ID>_<KEY>`
/// environment variables ([`EnvSecretResolver`]).
///
/// Built in: unix-local, docker, ssh and kubernetes. This is the one place providers are
/// added: another provider crate becomes available with one dependency in
/// `runner-mcp/Cargo.toml` and one
/// `registry.register(Arc::new(<Provider>::new()))?;` line here.
///
/// Errors: `AlreadyExists` if two providers share an id.
pub fn default_registry() -> RunnerResult<RunnerRegistry> {
    let stack = Stack::new().with_resolver(Arc::new(EnvSecretResolver::new()));
    let mut registry = RunnerRegistry::with_stack(stack);
    registry.register(Arc::new(runner_local::LocalProvider::new()))?;
    registry.register(Arc::new(runner_docker::DockerProvider::new()))?;
    registry.register(Arc::new(runner_ssh::SshProvider::new()))?;
    registry.register(Arc::new(runner_kubernetes::KubernetesProvider::new()))?;
    Ok(registry)
}
