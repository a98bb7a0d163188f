#![doc = include_str!("../README.md")]

mod config;
mod connection;
mod error;
pub mod protocol;
mod session;

use std::sync::Arc;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerResult, RunnerSessionState, validate_manifest,
};

pub use config::AgentConfig;
pub use session::AgentSession;

use crate::connection::Connection;
use crate::error::{Failure, map_failure};
use crate::protocol::{Answer, Op};

/// The provider id destinations name: `"agent"`.
pub const PROVIDER_ID: &str = "agent";

/// What agent sessions can do, and nothing more: commands (foreground and
/// background, streamed, cancellable, without stdin) and the file API. No
/// ports, snapshots, mounts, archives, pause or detach: those return
/// `Unsupported`.
pub fn capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        cancellation: true,
        background_processes: true,
        streaming: true,
        file_read: true,
        file_write: true,
        file_management: true,
        ..RunnerCapabilities::default()
    }
}

/// Runs each session in its own `example-agent` process, spoken to over
/// line-delimited JSON on the child's stdin and stdout (see [`protocol`]).
///
/// Settings come from `RunnerDestination.config` (see [`AgentConfig`]).
#[derive(Debug, Clone, Default)]
pub struct AgentProvider {
    _private: (),
}

impl AgentProvider {
    /// A provider; it holds no state of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and checks a destination: the provider id, the config, and a
    /// manifest this provider can honour (no entries, no mounts).
    fn check(&self, operation: &str, destination: &RunnerDestination) -> RunnerResult<AgentConfig> {
        if destination.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: destination {:?} is for provider {:?}, not {PROVIDER_ID}",
                destination.id, destination.provider_id
            )));
        }
        let config = AgentConfig::from_destination(destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        if !destination.default_manifest.entries.is_empty() {
            return Err(RunnerError::unsupported(
                &format!("{operation}: manifest entries"),
                PROVIDER_ID,
            ));
        }
        Ok(config)
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

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.check("validate_destination", destination).map(|_| ())
    }

    /// Starts an agent for a fresh workspace `<workspaces_dir>/<session id>`
    /// and asks it for the workspace's canonical path, which proves it runs.
    ///
    /// Errors: `InvalidRequest` (config), `NotFound` (no agent program),
    /// `Unavailable` (the agent did not answer), `Unsupported` (manifest).
    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let config = self.check("create_session", &destination)?;
        let session_id = uuid::Uuid::new_v4().to_string();
        let workspace = config.workspaces_dir.join(&session_id);
        let agent = config.agent.display().to_string();
        let connection = Connection::start(&config.agent, &workspace)
            .map_err(|e| map_failure("create_session", &agent, Failure::Start(e)))?;
        let root = match connection.call(Op::Canonicalize { path: ".".into() }).await {
            Ok(Answer::Path { path }) => path,
            Ok(other) => {
                let failure = Failure::Protocol(format!("{other:?}"));
                return Err(map_failure("create_session", &session_id, failure));
            }
            Err(failure) => return Err(map_failure("create_session", &session_id, failure)),
        };
        let state = RunnerSessionState {
            provider_id: PROVIDER_ID.into(),
            session_id,
            destination_id: destination.id,
            snapshot: None,
            metadata: serde_json::json!({ "workspace": root }),
        };
        Ok(Arc::new(AgentSession::new(state, root, connection)))
    }
}
