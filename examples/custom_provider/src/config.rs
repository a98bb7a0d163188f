//! `AgentConfig`: the destination's `config`, parsed once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use serde::Deserialize;

/// Settings of an `agent` destination, from `RunnerDestination.config`.
///
/// ```json
/// { "agent_binaries": { "x86_64": "/opt/runner-agent" },
///   "run_dir": "/tmp/runner-example-agent",
///   "session": { "workspaces_dir": "/srv/workspaces", "snapshot_dir": "/srv/snapshots" } }
/// ```
///
/// Every key is optional; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The runner-agent binary for each architecture (Rust's names, such as
    /// `x86_64`), as [`runner_agent::delivery::AgentBinaries`] resolves them;
    /// without an entry for this machine, the `RUNNER_AGENT_BINARY`
    /// environment variable names it.
    pub agent_binaries: BTreeMap<String, PathBuf>,
    /// Each session's agent listens on `<run_dir>/<uuid>/agent.sock` (the
    /// agent makes that directory 0700; it is removed on close). Keep it
    /// short: a unix socket path has at most 107 bytes.
    pub run_dir: PathBuf,
    /// The unix-local config the agent opens its session with (`root`, or
    /// `workspaces_dir` and `snapshot_dir`, and the other unix-local keys),
    /// checked by the agent itself. In a real sandbox, paths as the sandbox
    /// sees them.
    pub session: serde_json::Value,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            agent_binaries: BTreeMap::new(),
            run_dir: std::env::temp_dir().join("runner-example-agent"),
            session: serde_json::json!({}),
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
        let invalid = |what: String| {
            RunnerError::invalid_request(format!("destination {:?}: config{what}", destination.id))
        };
        let config =
            Self::deserialize(&destination.config).map_err(|e| invalid(format!(": {e}")))?;
        if !config.run_dir.is_absolute() {
            return Err(invalid(".run_dir must be an absolute path".into()));
        }
        if !config.session.is_object() {
            return Err(invalid(
                ".session must be an object (a unix-local config)".into(),
            ));
        }
        Ok(config)
    }
}
