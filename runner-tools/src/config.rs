//! Which destinations a tool set serves.

use std::collections::HashSet;
use std::path::PathBuf;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use serde::{Deserialize, Serialize};

/// One destination served as tools: a runner destination plus the workspace
/// the tools are confined to.
///
/// JSON (TOML has the same fields):
///
/// ```json
/// { "id": "local", "provider_id": "unix-local",
///   "config": { "root": "/home/me/project" },
///   "workspace": "/home/me/project", "read_roots": ["/usr/share/doc"] }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolDestination {
    /// Destination id, provider id, provider config and default manifest.
    #[serde(flatten)]
    pub destination: RunnerDestination,
    /// Absolute runner path the tools' writes and working directories stay
    /// under. `None`: the session's own workspace root.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    /// Extra absolute runner paths reads may resolve under.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
}

/// The destinations a [`ToolSet`](crate::ToolSet) serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolsConfig {
    /// At least one destination, each with a unique id.
    #[serde(default)]
    pub destinations: Vec<ToolDestination>,
}

impl ToolsConfig {
    /// Parses a JSON config.
    ///
    /// Errors: `InvalidRequest` naming what does not parse.
    pub fn from_json(text: &str) -> RunnerResult<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| {
            RunnerError::invalid_request(format!("tools config: invalid JSON: {e}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that there is at least one destination, that ids are non-empty
    /// and unique, and that `workspace` and `read_roots` are absolute.
    ///
    /// Errors: `InvalidRequest` naming the destination and field.
    pub fn validate(&self) -> RunnerResult<()> {
        if self.destinations.is_empty() {
            return Err(RunnerError::invalid_request(
                "tools config: no destinations: add at least one `destinations` entry",
            ));
        }
        let mut ids = HashSet::new();
        for entry in &self.destinations {
            let id = &entry.destination.id;
            if id.is_empty() {
                return Err(RunnerError::invalid_request(
                    "tools config: a destination has an empty `id`",
                ));
            }
            if !ids.insert(id.as_str()) {
                return Err(RunnerError::invalid_request(format!(
                    "tools config: destination id {id:?} appears more than once"
                )));
            }
            let paths = entry.workspace.iter().map(|p| ("workspace", p));
            let reads = entry.read_roots.iter().map(|p| ("read_roots", p));
            for (field, path) in paths.chain(reads) {
                runner_api::reject_nul_path("tools config", path)?;
                if !path.is_absolute() {
                    return Err(RunnerError::invalid_request(format!(
                        "tools config: destination {id:?}: `{field}` {} must be an absolute path",
                        path.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_destination_fields() {
        let config = ToolsConfig::from_json(
            r#"{ "destinations": [ { "id": "local", "provider_id": "unix-local",
                 "config": { "root": "/tmp/w" }, "read_roots": ["/usr/share"] } ] }"#,
        )
        .expect("config");
        let entry = &config.destinations[0];
        assert_eq!(entry.destination.provider_id, "unix-local");
        assert_eq!(entry.destination.config["root"], "/tmp/w");
        assert_eq!(entry.read_roots, vec![PathBuf::from("/usr/share")]);
        assert!(entry.workspace.is_none());
    }

    #[test]
    fn refuses_duplicates_relative_paths_and_empty_lists() {
        let dup = r#"{ "destinations": [ { "id": "a", "provider_id": "p" },
                                          { "id": "a", "provider_id": "p" } ] }"#;
        let err = ToolsConfig::from_json(dup).expect_err("duplicate");
        assert!(err.message().contains("more than once"), "{err}");
        let rel = r#"{ "destinations": [ { "id": "a", "provider_id": "p", "workspace": "w" } ] }"#;
        let err = ToolsConfig::from_json(rel).expect_err("relative");
        assert!(err.message().contains("absolute"), "{err}");
        let err = ToolsConfig::from_json(r#"{ "destinations": [] }"#).expect_err("empty");
        assert!(err.message().contains("no destinations"), "{err}");
    }
}
