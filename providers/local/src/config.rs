//! `LocalConfig`: the destination's `config`, parsed once with serde and a
//! clear error per field.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

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
/// Every key is optional, and `null` is the key's default; an unknown key is
/// an `InvalidRequest` naming it. The artifact store is not a config key: it
/// is the destination's `artifacts` setting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Workspace root chosen by the caller. Created if missing and never deleted
    /// by the session. `None`: each session gets a fresh directory
    /// `<workspaces_dir>/<session id>` that it removes on close.
    #[serde(default, deserialize_with = "optional_path")]
    pub root: Option<PathBuf>,
    /// Where sessions without `root` create their workspace (default
    /// `<state dir>/unix-local/workspaces`, see
    /// [`default_state_dir`](Self::default_state_dir)). Must be private to
    /// the user: created with mode 0700, refused (`PermissionDenied`) when it
    /// exists with group or other permissions or another owner.
    #[serde(
        default = "LocalConfig::default_workspaces_dir",
        deserialize_with = "workspaces_dir"
    )]
    pub workspaces_dir: PathBuf,
    /// Where `snapshot()` writes its archives (mode 0600; default
    /// `<state dir>/unix-local/snapshots`). Private like `workspaces_dir`.
    #[serde(
        default = "LocalConfig::default_snapshot_dir",
        deserialize_with = "snapshot_dir"
    )]
    pub snapshot_dir: PathBuf,
    /// Time between TERM and KILL when a command's process tree is killed
    /// (key `kill_grace_ms`, in milliseconds; default
    /// [`DEFAULT_KILL_GRACE_MS`]).
    #[serde(
        rename = "kill_grace_ms",
        default = "default_kill_grace",
        deserialize_with = "kill_grace"
    )]
    pub kill_grace: Duration,
    /// Environment added to every command on top of the inherited host
    /// variables ([`runner_api::HOST_ENV_ALLOWLIST`]); the request's own
    /// `env` wins.
    #[serde(default, deserialize_with = "env")]
    pub env: BTreeMap<String, String>,
    /// Most bytes one `upload_archive` unpacks (the sum of its entries'
    /// sizes); above it the upload is `InvalidRequest` and nothing is
    /// written. Default [`DEFAULT_MAX_UNPACKED_BYTES`] (4 GiB).
    #[serde(
        default = "default_max_upload_bytes",
        deserialize_with = "max_upload_bytes"
    )]
    pub max_upload_bytes: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            root: None,
            workspaces_dir: Self::default_workspaces_dir(),
            snapshot_dir: Self::default_snapshot_dir(),
            kill_grace: default_kill_grace(),
            env: BTreeMap::new(),
            max_upload_bytes: default_max_upload_bytes(),
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
    /// Errors: `InvalidRequest` naming the bad or unknown field
    /// (`unix-local config.<key>: …`; `config.env.<name>` for a bad value of
    /// one variable).
    pub fn from_value(value: &Value) -> RunnerResult<Self> {
        match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(_) => {}
            other => {
                return Err(RunnerError::invalid_request(format!(
                    "unix-local config: expected a JSON object, got {}",
                    runner_kit::config::json_kind(other)
                )));
            }
        }
        serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            let error = error.into_inner();
            if path == "." {
                RunnerError::invalid_request(format!("unix-local config: {error}"))
            } else {
                RunnerError::invalid_request(format!("unix-local config.{path}: {error}"))
            }
        })
    }
}

fn default_kill_grace() -> Duration {
    Duration::from_millis(DEFAULT_KILL_GRACE_MS)
}

fn default_max_upload_bytes() -> u64 {
    DEFAULT_MAX_UNPACKED_BYTES
}

/// A path value: a non-empty string without NUL bytes.
struct ConfigPath(PathBuf);

impl<'de> Deserialize<'de> for ConfigPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathVisitor;
        impl Visitor<'_> for PathVisitor {
            type Value = ConfigPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string path")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ConfigPath, E> {
                if s.is_empty() {
                    return Err(E::custom("must not be an empty path"));
                }
                if s.contains('\0') {
                    return Err(E::custom("the path contains a NUL byte"));
                }
                Ok(ConfigPath(PathBuf::from(s)))
            }
        }
        deserializer.deserialize_str(PathVisitor)
    }
}

/// A non-negative integer of milliseconds (`MS`) or bytes.
struct Count<const MS: bool>(u64);

impl<'de, const MS: bool> Deserialize<'de> for Count<MS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor<const MS: bool>;
        impl<const MS: bool> Visitor<'_> for CountVisitor<MS> {
            type Value = Count<MS>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let unit = if MS { "milliseconds" } else { "bytes" };
                write!(f, "a non-negative integer ({unit})")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count<MS>, E> {
                Ok(Count(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count<MS>, E> {
                u64::try_from(n)
                    .map(Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            }
        }
        deserializer.deserialize_u64(CountVisitor::<MS>)
    }
}

fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<ConfigPath>::deserialize(d)?.map(|path| path.0))
}

fn workspaces_dir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(optional_path(d)?.unwrap_or_else(LocalConfig::default_workspaces_dir))
}

fn snapshot_dir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(optional_path(d)?.unwrap_or_else(LocalConfig::default_snapshot_dir))
}

fn kill_grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<Count<true>>::deserialize(d)?
        .map_or_else(default_kill_grace, |ms| Duration::from_millis(ms.0)))
}

fn max_upload_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<Count<false>>::deserialize(d)?.map_or_else(default_max_upload_bytes, |n| n.0))
}

/// `env`: an object of string values under valid variable names (`null`:
/// none).
fn env<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct EnvVisitor;
    impl<'de> Visitor<'de> for EnvVisitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut env = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(de::Error::custom(format!(
                        "variable name {name:?} is invalid"
                    )));
                }
                let value: EnvValue = map.next_value()?;
                env.insert(name, value.0);
            }
            Ok(env)
        }
    }
    d.deserialize_any(EnvVisitor)
}

/// The value of one `env` variable: a string without NUL bytes.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                if s.contains('\0') {
                    return Err(E::custom("the value contains a NUL byte"));
                }
                Ok(EnvValue(s.to_owned()))
            }
        }
        deserializer.deserialize_str(ValueVisitor)
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

    #[test]
    fn messages_name_the_key_and_what_it_takes() {
        let cases = [
            (
                json!({ "root": 3 }),
                "unix-local config.root: invalid type: integer `3`, expected a string path",
            ),
            (
                json!({ "kill_grace_ms": -1 }),
                "unix-local config.kill_grace_ms: invalid value: integer `-1`, expected a \
                 non-negative integer (milliseconds)",
            ),
            (
                json!({ "max_upload_bytes": "4G" }),
                "unix-local config.max_upload_bytes: invalid type: string \"4G\", expected a \
                 non-negative integer (bytes)",
            ),
            (
                json!({ "env": { "A": 1 } }),
                "unix-local config.env.A: invalid type: integer `1`, expected a string value",
            ),
            (
                json!({ "env": { "A=B": "x" } }),
                "unix-local config.env: variable name \"A=B\" is invalid",
            ),
            (
                json!({ "workspaces_dir": "" }),
                "unix-local config.workspaces_dir: must not be an empty path",
            ),
            (
                json!("root"),
                "unix-local config: expected a JSON object, got a string",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(err(value).message(), message);
        }
        // The artifact store moved to the destination: the old key is unknown.
        let e = err(json!({ "artifacts": { "uri": "s3://b/p" } }));
        assert!(
            e.message().starts_with(
                "unix-local config.artifacts: unknown field `artifacts`, expected one of `root`"
            ),
            "{e}"
        );
    }

    #[test]
    fn null_values_are_the_defaults() {
        let config = LocalConfig::from_value(&json!({
            "root": null, "workspaces_dir": null, "snapshot_dir": null, "kill_grace_ms": null,
            "env": null, "max_upload_bytes": null
        }))
        .expect("nulls");
        assert_eq!(config, LocalConfig::default());
        let empty = LocalConfig::from_value(&json!({})).expect("empty object");
        assert_eq!(empty, LocalConfig::default());
    }
}
