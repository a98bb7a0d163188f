//! `DockerConfig`: the destination's settings, parsed once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::LABEL_PREFIX;

/// The workspace directory inside the container when none is configured.
pub const DEFAULT_WORKSPACE: &str = "/workspace";

/// The container network a session joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerNetwork {
    /// Docker's default bridge network.
    Bridge,
    /// No network at all (loopback only).
    None,
}

impl DockerNetwork {
    /// The network mode Docker takes.
    pub fn mode(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::None => "none",
        }
    }
}

/// Settings of a docker destination, from `RunnerDestination.config`.
///
/// Keys (JSON): `image` (required), `workspace_dir` (default `/workspace`),
/// `env` (object of strings), `user`, `ports` (container ports published on
/// 127.0.0.1), `memory` (bytes, or a string such as `"512m"`), `cpus`,
/// `pids_limit`, `network` (`"bridge"` or `"none"`), `labels` (object of
/// strings), `init` (default `true`), `keep_on_close` (default `false`),
/// `docker_host` (default: the local socket), `max_upload_bytes` (default
/// [`DEFAULT_MAX_UNPACKED_BYTES`]). `artifacts` is reserved for the
/// shared artifact-store settings and not interpreted here. Any other key is an
/// error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerConfig {
    /// The image every session's container starts from; it must be present on
    /// the daemon (nothing is pulled).
    pub image: String,
    /// Absolute workspace directory inside the container.
    pub workspace_dir: PathBuf,
    /// Environment of every command (a command's own `env` wins).
    pub env: BTreeMap<String, String>,
    /// The user commands and file operations run as (`name`, `uid`, `uid:gid`).
    pub user: Option<String>,
    /// Container ports published on a random 127.0.0.1 port at creation.
    pub ports: Vec<u16>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit, in CPUs (`1.5`).
    pub cpus: Option<f64>,
    /// Maximum number of processes in the container.
    pub pids_limit: Option<i64>,
    /// The network the container joins.
    pub network: DockerNetwork,
    /// Extra container labels.
    pub labels: BTreeMap<String, String>,
    /// Run an init process as PID 1 that reaps orphaned processes.
    pub init: bool,
    /// Keep (stop, not remove) the container on `close`.
    pub keep_on_close: bool,
    /// The daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`);
    /// `None` is the local socket.
    pub docker_host: Option<String>,
    /// Most bytes the entries of one `upload_archive` may hold together.
    pub max_upload_bytes: u64,
    /// The reserved `artifacts` value, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Value>,
}

const KEYS: &[&str] = &[
    "image",
    "workspace_dir",
    "env",
    "user",
    "ports",
    "memory",
    "cpus",
    "pids_limit",
    "network",
    "labels",
    "init",
    "keep_on_close",
    "docker_host",
    "max_upload_bytes",
    "artifacts",
];

fn bad(key: &str, what: impl std::fmt::Display) -> RunnerError {
    RunnerError::invalid_request(format!("docker config: `{key}` {what}"))
}

fn string(map: &Map<String, Value>, key: &str) -> RunnerResult<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad(key, "must not be empty")),
        Some(Value::String(s)) if s.contains('\0') => Err(bad(key, "contains a NUL byte")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(key, format!("must be a string, got {}", kind(other)))),
    }
}

fn boolean(map: &Map<String, Value>, key: &str, default: bool) -> RunnerResult<bool> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(
            key,
            format!("must be true or false, got {}", kind(other)),
        )),
    }
}

fn string_map(map: &Map<String, Value>, key: &str) -> RunnerResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match map.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (k, v) in entries {
                let Value::String(v) = v else {
                    return Err(bad(
                        key,
                        format!("value of {k:?} must be a string, got {}", kind(v)),
                    ));
                };
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(bad(key, format!("entry {k:?} is invalid")));
                }
                out.insert(k.clone(), v.clone());
            }
        }
        Some(other) => {
            return Err(bad(
                key,
                format!("must be an object of strings, got {}", kind(other)),
            ));
        }
    }
    Ok(out)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `512m`, `2g`, `1048576`, or a number of bytes.
fn memory(map: &Map<String, Value>) -> RunnerResult<Option<i64>> {
    const KEY: &str = "memory";
    let bytes = match map.get(KEY) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad(KEY, "must be a whole number of bytes"))?,
        Some(Value::String(s)) => {
            let s = s.trim().to_ascii_lowercase();
            let s = s.strip_suffix('b').unwrap_or(&s);
            let (digits, factor) = match s.chars().last() {
                Some('k') => (&s[..s.len() - 1], 1i64 << 10),
                Some('m') => (&s[..s.len() - 1], 1 << 20),
                Some('g') => (&s[..s.len() - 1], 1 << 30),
                _ => (s, 1),
            };
            digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(factor))
                .ok_or_else(|| bad(KEY, format!("{s:?} is not a size such as \"512m\"")))?
        }
        Some(other) => {
            return Err(bad(
                KEY,
                format!("must be bytes or a size string, got {}", kind(other)),
            ));
        }
    };
    // Docker refuses limits below 6 MiB.
    if bytes < 6 << 20 {
        return Err(bad(KEY, "must be at least 6 MiB"));
    }
    Ok(Some(bytes))
}

impl DockerConfig {
    /// Parses the config of `destination`.
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::from_value(&destination.config)
    }

    /// Parses a config value (an object).
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_value(value: &Value) -> RunnerResult<Self> {
        let empty = Map::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => &empty,
            other => {
                return Err(RunnerError::invalid_request(format!(
                    "docker config: must be an object, got {}",
                    kind(other)
                )));
            }
        };
        if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(RunnerError::invalid_request(format!(
                "docker config: unknown key `{unknown}` (known keys: {})",
                KEYS.join(", ")
            )));
        }
        let image = string(map, "image")?.ok_or_else(|| {
            bad(
                "image",
                "is required (the image every session's container starts from)",
            )
        })?;
        let workspace_dir = PathBuf::from(
            string(map, "workspace_dir")?.unwrap_or_else(|| DEFAULT_WORKSPACE.to_string()),
        );
        if !workspace_dir.is_absolute() || runner_api::normalize_lexically(&workspace_dir) == *"/" {
            return Err(bad(
                "workspace_dir",
                format!(
                    "must be an absolute directory other than /, got {}",
                    workspace_dir.display()
                ),
            ));
        }
        let workspace_dir = runner_api::normalize_lexically(&workspace_dir);
        let ports = match map.get("ports") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("ports", format!("{item} is not a port 1-65535")))
                })
                .collect::<RunnerResult<Vec<u16>>>()?,
            Some(other) => {
                return Err(bad(
                    "ports",
                    format!("must be an array of ports, got {}", kind(other)),
                ));
            }
        };
        let cpus = match map.get("cpus") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(c) if c > 0.0 && c <= 1024.0 => Some(c),
                _ => return Err(bad("cpus", format!("{n} is not a CPU count above 0"))),
            },
            Some(other) => {
                return Err(bad(
                    "cpus",
                    format!("must be a number, got {}", kind(other)),
                ));
            }
        };
        let pids_limit = match map.get("pids_limit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(p) if p > 0 => Some(p),
                _ => return Err(bad("pids_limit", format!("{n} is not a count above 0"))),
            },
            Some(other) => {
                return Err(bad(
                    "pids_limit",
                    format!("must be a number, got {}", kind(other)),
                ));
            }
        };
        let network = match string(map, "network")?.as_deref() {
            None | Some("bridge") => DockerNetwork::Bridge,
            Some("none") => DockerNetwork::None,
            Some(other) => {
                return Err(bad(
                    "network",
                    format!("must be \"bridge\" or \"none\", got {other:?}"),
                ));
            }
        };
        if network == DockerNetwork::None && !ports.is_empty() {
            return Err(bad(
                "ports",
                "cannot be published with network \"none\" (expose_port works without them)",
            ));
        }
        let max_upload_bytes = match map.get("max_upload_bytes") {
            None | Some(Value::Null) => DEFAULT_MAX_UNPACKED_BYTES,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(bytes) if bytes > 0 => bytes,
                _ => {
                    return Err(bad(
                        "max_upload_bytes",
                        format!("{n} is not a number of bytes above 0"),
                    ));
                }
            },
            Some(other) => {
                return Err(bad(
                    "max_upload_bytes",
                    format!("must be a number, got {}", kind(other)),
                ));
            }
        };
        let labels = string_map(map, "labels")?;
        if let Some(reserved) = labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
            return Err(bad(
                "labels",
                format!("{reserved:?} uses the reserved prefix {LABEL_PREFIX:?}"),
            ));
        }
        let docker_host = string(map, "docker_host")?;
        if let Some(host) = &docker_host
            && !["unix://", "tcp://", "http://"]
                .iter()
                .any(|scheme| host.starts_with(scheme))
        {
            return Err(bad(
                "docker_host",
                format!("{host:?} must start with unix://, tcp:// or http://"),
            ));
        }
        Ok(Self {
            image,
            workspace_dir,
            env: string_map(map, "env")?,
            user: string(map, "user")?,
            ports,
            memory: memory(map)?,
            cpus,
            pids_limit,
            network,
            labels,
            init: boolean(map, "init", true)?,
            keep_on_close: boolean(map, "keep_on_close", false)?,
            docker_host,
            max_upload_bytes,
            artifacts: map.get("artifacts").cloned().filter(|v| !v.is_null()),
        })
    }

    /// The config as destination JSON (parses back to the same config).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("image".into(), self.image.clone().into());
        map.insert(
            "workspace_dir".into(),
            self.workspace_dir.display().to_string().into(),
        );
        map.insert("env".into(), serde_json::json!(self.env));
        if let Some(user) = &self.user {
            map.insert("user".into(), user.clone().into());
        }
        map.insert("ports".into(), serde_json::json!(self.ports));
        if let Some(memory) = self.memory {
            map.insert("memory".into(), memory.into());
        }
        if let Some(cpus) = self.cpus {
            map.insert("cpus".into(), serde_json::json!(cpus));
        }
        if let Some(pids) = self.pids_limit {
            map.insert("pids_limit".into(), pids.into());
        }
        map.insert("network".into(), self.network.mode().into());
        map.insert("labels".into(), serde_json::json!(self.labels));
        map.insert("init".into(), self.init.into());
        map.insert("keep_on_close".into(), self.keep_on_close.into());
        if let Some(host) = &self.docker_host {
            map.insert("docker_host".into(), host.clone().into());
        }
        map.insert("max_upload_bytes".into(), self.max_upload_bytes.into());
        if let Some(artifacts) = &self.artifacts {
            map.insert("artifacts".into(), artifacts.clone());
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_round_trip() {
        let config = DockerConfig::from_value(&json!({ "image": "busybox" })).expect("config");
        assert_eq!(config.workspace_dir, PathBuf::from(DEFAULT_WORKSPACE));
        assert!(config.init && !config.keep_on_close);
        assert_eq!(config.network, DockerNetwork::Bridge);
        let again = DockerConfig::from_value(&config.to_value()).expect("round trip");
        assert_eq!(again, config);
    }

    #[test]
    fn every_key_parses() {
        let config = DockerConfig::from_value(&json!({
            "image": "img", "workspace_dir": "/work/./x", "env": { "A": "1" }, "user": "1000:1000",
            "ports": [8080], "memory": "512m", "cpus": 1.5, "pids_limit": 100,
            "network": "bridge", "labels": { "team": "x" }, "init": false,
            "keep_on_close": true, "docker_host": "unix:///tmp/d.sock", "max_upload_bytes": 1024,
            "artifacts": { "url": "s3://bucket/prefix" }
        }))
        .expect("config");
        assert_eq!(config.workspace_dir, PathBuf::from("/work/x"));
        assert_eq!(config.memory, Some(512 << 20));
        assert_eq!(config.ports, vec![8080]);
        assert_eq!(config.max_upload_bytes, 1024);
        assert!(config.artifacts.is_some());
        assert_eq!(
            DockerConfig::from_value(&config.to_value()).expect("again"),
            config
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({}), "`image`"),
            (json!({ "image": 3 }), "`image`"),
            (
                json!({ "image": "i", "workspace_dir": "rel" }),
                "`workspace_dir`",
            ),
            (json!({ "image": "i", "env": { "A": 1 } }), "`env`"),
            (json!({ "image": "i", "ports": [0] }), "`ports`"),
            (json!({ "image": "i", "memory": "lots" }), "`memory`"),
            (json!({ "image": "i", "cpus": -1 }), "`cpus`"),
            (json!({ "image": "i", "pids_limit": 0 }), "`pids_limit`"),
            (json!({ "image": "i", "network": "host" }), "`network`"),
            (
                json!({ "image": "i", "labels": { "io.runners.session": "x" } }),
                "`labels`",
            ),
            (json!({ "image": "i", "init": "yes" }), "`init`"),
            (
                json!({ "image": "i", "keep_on_close": 1 }),
                "`keep_on_close`",
            ),
            (
                json!({ "image": "i", "docker_host": "ftp://x" }),
                "`docker_host`",
            ),
            (
                json!({ "image": "i", "network": "none", "ports": [80] }),
                "`ports`",
            ),
            (
                json!({ "image": "i", "max_upload_bytes": 0 }),
                "`max_upload_bytes`",
            ),
            (json!({ "image": "i", "colour": "blue" }), "`colour`"),
        ];
        for (value, named) in cases {
            let err = DockerConfig::from_value(&value).expect_err("bad config");
            assert_eq!(err.kind(), runner_api::RunnerErrorKind::InvalidRequest);
            assert!(
                err.message().contains(named),
                "{named} in {}",
                err.message()
            );
        }
    }
}
