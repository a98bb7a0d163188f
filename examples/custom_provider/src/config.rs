//! `AgentConfig`: the destination's `config`, parsed once.

use std::path::PathBuf;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use serde::Deserialize;

/// Settings of an agent destination, from `RunnerDestination.config`.
///
/// ```json
/// { "agent": "/usr/local/bin/example-agent", "workspaces_dir": "/tmp/example-agent" }
/// ```
///
/// Both keys are optional; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The agent program (default `example-agent`, looked up in `PATH`).
    pub agent: PathBuf,
    /// Each session's workspace is `<workspaces_dir>/<session id>`, created by
    /// the agent and removed on close (default `<temp dir>/example-agent`).
    pub workspaces_dir: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            agent: PathBuf::from("example-agent"),
            workspaces_dir: std::env::temp_dir().join("example-agent"),
        }
    }
}

impl AgentConfig {
    /// Parses the destination's `config` (`null` means every default).
    ///
    /// Errors: `InvalidRequest` naming the bad or unknown field.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        if destination.config.is_null() {
            return Ok(Self::default());
        }
        let config = Self::deserialize(&destination.config).map_err(|e| {
            RunnerError::invalid_request(format!("destination {:?}: config: {e}", destination.id))
        })?;
        if !config.workspaces_dir.is_absolute() {
            return Err(RunnerError::invalid_request(format!(
                "destination {:?}: config.workspaces_dir must be an absolute path",
                destination.id
            )));
        }
        Ok(config)
    }
}
