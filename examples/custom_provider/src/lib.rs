#![doc = include_str!("../README.md")]

mod config;
mod daemon;
mod session;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use runner_agent::AgentSession;
use runner_agent::delivery::{AgentBinaries, Platform};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerResult, RunnerSessionState, validate_manifest,
};
use runner_kit::KnownDestinations;

pub use config::AgentConfig;

use crate::daemon::Daemon;
use crate::session::ChildSession;

/// The provider id destinations name: `"agent"`.
pub const PROVIDER_ID: &str = "agent";

/// What sessions of this provider can do: exactly what the agent's session
/// does, since every operation is the agent's (it serves unix-local's
/// implementation). `detachable` stays false: a daemon tied to this process
/// by its stdin cannot outlive it (a provider whose sandbox outlives the
/// caller starts `serve --detach` and implements `rejoin_session`).
pub fn capabilities() -> RunnerCapabilities {
    runner_local::capabilities()
}

/// Runs each session in its own `runner-agent serve --socket` daemon, a
/// child process of this one, and drives it with the shared agent client
/// over `runner-agent connect` children (see the crate docs).
///
/// Settings come from `RunnerDestination.config` (see [`AgentConfig`]).
#[derive(Clone, Default)]
pub struct AgentProvider {
    /// The destinations `resume_session` may take settings from.
    destinations: KnownDestinations,
}

impl std::fmt::Debug for AgentProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProvider").finish_non_exhaustive()
    }
}

impl AgentProvider {
    /// A provider that knows no destination yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and checks a destination: the provider id, the config and the
    /// manifest (entries and `provider_native` mounts are applied by the agent).
    fn check(&self, operation: &str, destination: &RunnerDestination) -> RunnerResult<AgentConfig> {
        if destination.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: destination {:?} is for provider {:?}, not {PROVIDER_ID}",
                destination.id, destination.provider_id
            )));
        }
        let config = AgentConfig::from_destination(destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        Ok(config)
    }

    /// The agent binary for this machine: delivery's rules (the config's
    /// `agent_binaries`, then `RUNNER_AGENT_BINARY`), checked by its ELF
    /// header.
    fn binary(operation: &str, config: &AgentConfig) -> RunnerResult<PathBuf> {
        let binaries = AgentBinaries::new(config.agent_binaries.clone());
        Ok(binaries.resolve(operation, &Platform::host())?.path)
    }

    /// Lifecycle + transport: start the daemon, connect the shared client
    /// through it, wrap the result where this provider adds lifecycle.
    async fn open(
        &self,
        operation: &str,
        destination: &RunnerDestination,
        resume: Option<&RunnerSessionState>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let config = self.check(operation, destination)?;
        let binary = Self::binary(operation, &config)?;
        let mut daemon = Daemon::start(operation, &binary, &config, destination, resume).await?;
        match AgentSession::connect(daemon.connector()).await {
            Ok(agent) => Ok(Arc::new(ChildSession::new(Arc::new(agent), daemon))),
            Err(e) => {
                daemon.stop().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl RemoteRunnerProvider for AgentProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        PROVIDER_ID.to_string()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        capabilities()
    }

    /// The build command when no agent binary is found for this machine.
    fn setup_hint(&self) -> Option<String> {
        Self::binary("agent provider", &AgentConfig::default())
            .err()
            .map(|e| e.message().to_string())
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.check("validate_destination", destination).map(|_| ())
    }

    /// Starts an agent daemon for the destination and connects to it.
    ///
    /// Errors: `InvalidRequest` (config, the agent's session config),
    /// `Unsupported` (no agent binary for this machine, or a manifest mount
    /// kind), `NotFound` (a configured binary or manifest source missing),
    /// `Timeout` / `Unavailable` (the agent did not start).
    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.destinations.remember(&destination);
        self.open("create_session", &destination, None).await
    }

    /// A new daemon resuming `state` (with a snapshot: a fork restored from
    /// it), with the settings of the destination it names as this provider
    /// was given it.
    ///
    /// Errors: `InvalidRequest` (a state of another provider), `NotFound` (an
    /// unknown destination or snapshot), and those of `create_session`.
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        if state.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: state of provider {:?}, not {PROVIDER_ID}",
                state.provider_id
            )));
        }
        let destination = self
            .destinations
            .of_state(OP, &state, "trust_destination")?;
        let state = session::agents(state);
        self.open(OP, &destination, Some(&state)).await
    }

    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
    }
}
