//! `LocalConfig`: the destination's `config`, parsed once with a clear error per field.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES;
use serde_json::{Map, Value};

/// The keys `config` may contain; anything else is refused by name.
const KNOWN_KEYS: &[&str] = &[
    "root",
    "workspaces_dir",
    "snapshot_dir",
    "kill_grace_ms",
    "env",
    "max_upload_bytes",
    // The artifact store, parsed by runner_mounts (see docs/mounts.md).
    "artifacts",
];

/// Default time between TERM and KILL when a process tree is killed.
pub const DEFAULT_KILL_GRACE_MS: u64 = 1000;

/// Settings of a unix-local destination, from `RunnerDestination.config`.
///
/// ```json
/// { "root": "/srv/work", "workspaces_dir": "/home/me/.local/state/runners/unix-local/workspaces",
///   "snapshot_dir": "/home/me/.local/state/runners/unix-local/snapshots", "kill_grace_ms": 1000,
///   "env": { "CARGO_TERM_COLOR": "never" }, "max_upload_bytes": 4294967296 }
/// ```
///
/// Every key is optional; unknown keys are an `InvalidRequest` naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Workspace root chosen by the caller. Created if missing and never deleted
    /// by the session. `None`: each session gets a fresh directory
    /// `<workspaces_dir>/<session id>` that it removes on close.
    pub root: Option<PathBuf>,
    /// Where sessions without `root` create their workspace (default
    /// `<state dir>/unix-local/workspaces`, see
    /// [`default_state_dir`](Self::default_state_dir)). Must be private to
    /// the user: created with mode 0700, refused (`PermissionDenied`) when it
    /// exists with group or other permissions or another owner.
    pub workspaces_dir: PathBuf,
    /// Where `snapshot()` writes its archives (mode 0600; default
    /// `<state dir>/unix-local/snapshots`). Private like `workspaces_dir`.
    pub snapshot_dir: PathBuf,
    /// Time between TERM and KILL when a command's process tree is killed.
    pub kill_grace: Duration,
    /// Environment added to every command on top of the inherited host
    /// variables ([`runner_api::HOST_ENV_ALLOWLIST`]); the request's own
    /// `env` wins.
    pub env: BTreeMap<String, String>,
    /// Most bytes one `upload_archive` unpacks (the sum of its entries'
    /// sizes); above it the upload is `InvalidRequest` and nothing is
    /// written. Default [`DEFAULT_MAX_UNPACKED_BYTES`] (4 GiB).
    pub max_upload_bytes: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            root: None,
            workspaces_dir: Self::default_workspaces_dir(),
            snapshot_dir: Self::default_snapshot_dir(),
            kill_grace: Duration::from_millis(DEFAULT_KILL_GRACE_MS),
            env: BTreeMap::new(),
            max_upload_bytes: DEFAULT_MAX_UNPACKED_BYTES,
        }
    }
}

impl LocalConfig {
    /// The per-user state directory the defaults live in:
    /// `$XDG_STATE_HOME/runners`, else `$HOME/.local/state/runners`, else
    /// `<temp dir>/runners-<uid>` (relative values of the variables are
    /// ignored). Every directory from it down to a default directory is
    /// created with mode 0700 and checked to be private to the user.
    pub fn default_state_dir() -> PathBuf {
        state_dir_from(
            std::env::var_os("XDG_STATE_HOME"),
            std::env::var_os("HOME"),
            &std::env::temp_dir(),
            crate::private::uid(),
        )
    }

    /// `<state dir>/unix-local/workspaces`.
    pub fn default_workspaces_dir() -> PathBuf {
        Self::default_state_dir()
            .join("unix-local")
            .join("workspaces")
    }

    /// `<state dir>/unix-local/snapshots`.
    pub fn default_snapshot_dir() -> PathBuf {
        Self::default_state_dir()
            .join("unix-local")
            .join("snapshots")
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
        if let Some(ms) = optional_u64(object, "kill_grace_ms", "milliseconds")? {
            config.kill_grace = Duration::from_millis(ms);
        }
        if let Some(bytes) = optional_u64(object, "max_upload_bytes", "bytes")? {
            config.max_upload_bytes = bytes;
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
}

/// [`LocalConfig::default_state_dir`] from the values it depends on.
fn state_dir_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
    temp: &Path,
    uid: u32,
) -> PathBuf {
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(state) = absolute(xdg_state_home) {
        return state.join("runners");
    }
    if let Some(home) = absolute(home) {
        return home.join(".local").join("state").join("runners");
    }
    temp.join(format!("runners-{uid}"))
}

fn field_error(field: &str, what: &str) -> RunnerError {
    RunnerError::invalid_request(format!("unix-local config.{field}: {what}"))
}

fn optional_u64(object: &Map<String, Value>, field: &str, unit: &str) -> RunnerResult<Option<u64>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            field_error(field, &format!("expected a non-negative integer ({unit})"))
        }),
    }
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
    fn defaults_and_values() {
        let config = LocalConfig::from_value(&Value::Null).expect("null config");
        assert_eq!(config, LocalConfig::default());
        let config = LocalConfig::from_value(&json!({
            "root": "/w", "kill_grace_ms": 5, "env": { "A": "1" }, "max_upload_bytes": 10
        }))
        .expect("config");
        assert_eq!(config.max_upload_bytes, 10);
        assert_eq!(config.root, Some(PathBuf::from("/w")));
        assert_eq!(config.kill_grace, Duration::from_millis(5));
        assert_eq!(config.env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn state_dir_prefers_xdg_then_home_then_a_per_user_temp_dir() {
        let temp = Path::new("/tmp");
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_dir_from(some("/x/state"), some("/home/me"), temp, 7),
            PathBuf::from("/x/state/runners")
        );
        assert_eq!(
            state_dir_from(some("relative"), some("/home/me"), temp, 7),
            PathBuf::from("/home/me/.local/state/runners")
        );
        assert_eq!(
            state_dir_from(None, some(""), temp, 7),
            PathBuf::from("/tmp/runners-7")
        );
        assert_eq!(
            state_dir_from(None, None, temp, 0),
            PathBuf::from("/tmp/runners-0")
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
            (json!({ "max_upload_bytes": -1 }), "max_upload_bytes"),
            (json!({ "max_upload_bytes": "4G" }), "max_upload_bytes"),
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
