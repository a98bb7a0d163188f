//! `LocalConfig`: the destination's `config`, parsed once with a clear error per field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use serde_json::{Map, Value};

/// The keys `config` may contain; anything else is refused by name.
const KNOWN_KEYS: &[&str] = &[
    "root",
    "workspaces_dir",
    "snapshot_dir",
    "kill_grace_ms",
    "env",
    // The artifact store, parsed by runner_api::mounts (see docs/mounts.md).
    "artifacts",
];

/// Default time between TERM and KILL when a process tree is killed.
pub const DEFAULT_KILL_GRACE_MS: u64 = 1000;

/// Settings of a unix-local destination, from `RunnerDestination.config`.
///
/// ```json
/// { "root": "/srv/work", "workspaces_dir": "/tmp/runners-local/workspaces",
///   "snapshot_dir": "/tmp/runners-local/snapshots", "kill_grace_ms": 1000,
///   "env": { "CARGO_TERM_COLOR": "never" } }
/// ```
///
/// Every key is optional; unknown keys are an `InvalidRequest` naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Workspace root chosen by the caller. Created if missing and never deleted
    /// by the session. `None`: each session gets a fresh directory
    /// `<workspaces_dir>/<session id>` that it removes on close.
    pub root: Option<PathBuf>,
    /// Where sessions without `root` create their workspace
    /// (default `<temp dir>/runners-local/workspaces`).
    pub workspaces_dir: PathBuf,
    /// Where `snapshot()` writes its archives
    /// (default `<temp dir>/runners-local/snapshots`).
    pub snapshot_dir: PathBuf,
    /// Time between TERM and KILL when a command's process tree is killed.
    pub kill_grace: Duration,
    /// Environment added to every command (the request's own `env` wins).
    pub env: BTreeMap<String, String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            root: None,
            workspaces_dir: Self::default_workspaces_dir(),
            snapshot_dir: Self::default_snapshot_dir(),
            kill_grace: Duration::from_millis(DEFAULT_KILL_GRACE_MS),
            env: BTreeMap::new(),
        }
    }
}

impl LocalConfig {
    /// `<temp dir>/runners-local/workspaces`.
    pub fn default_workspaces_dir() -> PathBuf {
        std::env::temp_dir()
            .join("runners-local")
            .join("workspaces")
    }

    /// `<temp dir>/runners-local/snapshots`.
    pub fn default_snapshot_dir() -> PathBuf {
        std::env::temp_dir().join("runners-local").join("snapshots")
    }

    /// Parses the destination's `config`.
    ///
    /// Errors: `InvalidRequest` naming the bad or unknown field.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::from_value(&destination.config)
    }

    /// Parses a config object (`null` gives the defaults).
    ///
    /// Errors: `InvalidRequest` naming the bad or unknown field.
    pub fn from_value(value: &Value) -> RunnerResult<Self> {
        let empty = Map::new();
        let object = match value {
            Value::Null => &empty,
            Value::Object(object) => object,
            other => {
                return Err(RunnerError::invalid_request(format!(
                    "unix-local config: expected a JSON object, got {}",
                    json_type(other)
                )));
            }
        };
        if let Some(unknown) = object.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(RunnerError::invalid_request(format!(
                "unix-local config: unknown key {unknown:?} (known keys: {})",
                KNOWN_KEYS.join(", ")
            )));
        }
        let mut config = Self::default();
        if let Some(root) = optional_path(object, "root")? {
            config.root = Some(root);
        }
        if let Some(dir) = optional_path(object, "workspaces_dir")? {
            config.workspaces_dir = dir;
        }
        if let Some(dir) = optional_path(object, "snapshot_dir")? {
            config.snapshot_dir = dir;
        }
        match object.get("kill_grace_ms") {
            None | Some(Value::Null) => {}
            Some(value) => {
                let ms = value.as_u64().ok_or_else(|| {
                    field_error(
                        "kill_grace_ms",
                        "expected a non-negative integer (milliseconds)",
                    )
                })?;
                config.kill_grace = Duration::from_millis(ms);
            }
        }
        match object.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(env)) => {
                for (key, value) in env {
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        return Err(field_error(
                            "env",
                            &format!("variable name {key:?} is invalid"),
                        ));
                    }
                    let Some(value) = value.as_str() else {
                        return Err(field_error(
                            "env",
                            &format!("the value of {key} must be a string"),
                        ));
                    };
                    if value.contains('\0') {
                        return Err(field_error(
                            "env",
                            &format!("the value of {key} contains a NUL byte"),
                        ));
                    }
                    config.env.insert(key.clone(), value.to_string());
                }
            }
            Some(_) => {
                return Err(field_error("env", "expected an object of string values"));
            }
        }
        Ok(config)
    }

    /// The config as JSON that [`from_value`](Self::from_value) reads back.
    pub fn to_value(&self) -> Value {
        let mut object = Map::new();
        if let Some(root) = &self.root {
            object.insert("root".into(), path_value(root));
        }
        object.insert("workspaces_dir".into(), path_value(&self.workspaces_dir));
        object.insert("snapshot_dir".into(), path_value(&self.snapshot_dir));
        object.insert(
            "kill_grace_ms".into(),
            Value::from(self.kill_grace.as_millis() as u64),
        );
        let env: Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        object.insert("env".into(), Value::Object(env));
        Value::Object(object)
    }
}

fn path_value(path: &std::path::Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

fn field_error(field: &str, what: &str) -> RunnerError {
    RunnerError::invalid_request(format!("unix-local config.{field}: {what}"))
}

fn optional_path(object: &Map<String, Value>, field: &str) -> RunnerResult<Option<PathBuf>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            Err(field_error(field, "must not be an empty path"))
        }
        Some(Value::String(s)) if s.contains('\0') => {
            Err(field_error(field, "contains a NUL byte"))
        }
        Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(field_error(
            field,
            &format!("expected a string path, got {}", json_type(other)),
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;
    use serde_json::json;

    fn err(value: Value) -> RunnerError {
        LocalConfig::from_value(&value).expect_err("must be refused")
    }

    #[test]
    fn defaults_and_round_trip() {
        let config = LocalConfig::from_value(&Value::Null).expect("null config");
        assert_eq!(config, LocalConfig::default());
        let config = LocalConfig::from_value(&json!({
            "root": "/w", "kill_grace_ms": 5, "env": { "A": "1" }
        }))
        .expect("config");
        assert_eq!(config.root, Some(PathBuf::from("/w")));
        assert_eq!(config.kill_grace, Duration::from_millis(5));
        assert_eq!(
            LocalConfig::from_value(&config.to_value()).expect("again"),
            config
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (value, field) in [
            (json!({ "rooot": "/w" }), "rooot"),
            (json!({ "root": 3 }), "root"),
            (json!({ "workspaces_dir": "" }), "workspaces_dir"),
            (json!({ "snapshot_dir": [] }), "snapshot_dir"),
            (json!({ "kill_grace_ms": -1 }), "kill_grace_ms"),
            (json!({ "kill_grace_ms": "1s" }), "kill_grace_ms"),
            (json!({ "env": { "A": 1 } }), "env"),
            (json!({ "env": { "A=B": "x" } }), "env"),
            (json!({ "env": "A=1" }), "env"),
        ] {
            let e = err(value);
            assert_eq!(e.kind(), RunnerErrorKind::InvalidRequest);
            assert!(e.message().contains(field), "{e}");
        }
        assert_eq!(err(json!("root")).kind(), RunnerErrorKind::InvalidRequest);
    }
}
