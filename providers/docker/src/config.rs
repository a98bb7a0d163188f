//! `DockerConfig`: the destination's settings, parsed once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runner_api::{RunnerDestination, RunnerResult};
use runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES;
use runner_kit::config::ConfigSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// How the caller reaches a session's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerTransport {
    /// `socket` when the daemon is local (a `unix://` address) and the
    /// agent's socket shows up on this machine; `exec` otherwise (a remote
    /// daemon, a caller in another mount namespace than the daemon's, a
    /// socket this user cannot connect to under user-namespace remapping).
    #[default]
    Auto,
    /// One docker exec of `runner-agent connect` per connection: works with
    /// any daemon; every byte crosses dockerd and the container's shim.
    Exec,
    /// The agent's socket directory is a private directory of this machine
    /// (under `socket_dir`) bind-mounted into the container, and every
    /// connection dials the socket there: no daemon on the data path. A
    /// session that cannot be reached so fails instead of falling back.
    Socket,
}

impl DockerTransport {
    /// `auto`, `exec` or `socket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Exec => "exec",
            Self::Socket => "socket",
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
/// [`DEFAULT_MAX_UNPACKED_BYTES`]), `agent_binaries` (architecture → path of
/// a runner-agent binary on the caller's machine; default empty, then
/// `RUNNER_AGENT_BINARY`), `transport` (`"auto"`, `"exec"` or `"socket"`;
/// default `"auto"`, see [`DockerTransport`]), `socket_dir` (where the host
/// side of agent sockets lives; default `$XDG_RUNTIME_DIR/runners-docker`,
/// else `<temp>/runners-docker-<uid>`). A `null` value is the key's default. Any
/// other key is an error (the artifact store is the destination's
/// `artifacts`, not a config key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The image every session's container starts from; it must be present on
    /// the daemon (nothing is pulled).
    pub image: String,
    /// Absolute workspace directory inside the container.
    #[serde(default = "default_workspace")]
    pub workspace_dir: PathBuf,
    /// Environment of every command (a command's own `env` wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The user commands and file operations run as (`name`, `uid`, `uid:gid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Container ports published on a random 127.0.0.1 port at creation.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Memory limit in bytes.
    #[serde(
        default,
        deserialize_with = "memory",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<i64>,
    /// CPU limit, in CPUs (`1.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// The network the container joins.
    #[serde(default = "default_network")]
    pub network: DockerNetwork,
    /// Extra container labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Start the agent as PID 1 through `runner-agent init`, which reaps
    /// orphaned processes and passes SIGTERM on (`false`: the agent itself is
    /// PID 1 and orphans stay zombies).
    #[serde(default = "yes")]
    pub init: bool,
    /// Keep (stop, not remove) the container on `close`.
    #[serde(default)]
    pub keep_on_close: bool,
    /// The daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`);
    /// `None` is the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Most bytes the entries of one `upload_archive` may hold together.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// The runner-agent binary to deliver per architecture, in Rust's names
    /// (`x86_64`, `aarch64`) → a path on the caller's machine. An
    /// architecture not named here takes the binary `RUNNER_AGENT_BINARY`
    /// names, when it is built for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_binaries: BTreeMap<String, PathBuf>,
    /// How the caller reaches the agent.
    #[serde(default)]
    pub transport: DockerTransport,
    /// The directory of this machine under which each session with the
    /// `socket` transport gets its private socket directory (made 0700);
    /// `None` is `$XDG_RUNTIME_DIR/runners-docker`, else
    /// `<temp>/runners-docker-<uid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<PathBuf>,
}

fn default_workspace() -> PathBuf {
    PathBuf::from(DEFAULT_WORKSPACE)
}

fn default_network() -> DockerNetwork {
    DockerNetwork::Bridge
}

fn yes() -> bool {
    true
}

fn default_max_upload_bytes() -> u64 {
    DEFAULT_MAX_UNPACKED_BYTES
}

/// `512m`, `2g`, `1048576`, or a number of bytes.
fn memory<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(i64),
        Text(String),
    }
    let text = match Option::<Size>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Size::Bytes(bytes)) => return Ok(Some(bytes)),
        Some(Size::Text(text)) => text.trim().to_ascii_lowercase(),
    };
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (digits, factor) = match text.chars().last() {
        Some('k') => (&text[..text.len() - 1], 1i64 << 10),
        Some('m') => (&text[..text.len() - 1], 1 << 20),
        Some('g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("not a size"))
}

/// What a key takes, for the message of a value that does not parse
/// (`None`: not a key of the config).
fn expected(key: &str) -> Option<&'static str> {
    Some(match key {
        "image" | "workspace_dir" | "user" | "docker_host" => "a string",
        "env" | "labels" => "an object of strings",
        "ports" => "an array of ports 1-65535",
        "memory" => "bytes, or a size string such as \"512m\"",
        "cpus" => "a number of CPUs",
        "pids_limit" => "a whole number",
        "network" => "\"bridge\" or \"none\"",
        "init" | "keep_on_close" => "true or false",
        "max_upload_bytes" => "a whole number of bytes",
        "agent_binaries" => "an object of architecture to path",
        "transport" => "\"auto\", \"exec\" or \"socket\"",
        "socket_dir" => "an absolute path",
        _ => return None,
    })
}

/// The docker config's keys, for parsing and for messages.
const SCHEMA: ConfigSchema = ConfigSchema {
    provider: "docker",
    expected,
    required: &[("image", "the image every session's container starts from")],
    nested: &[],
};

impl DockerConfig {
    /// Parses the config of `destination`.
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::from_value(&destination.config)
    }

    /// Parses a config value (an object; `null` keys take their defaults).
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_value(value: &Value) -> RunnerResult<Self> {
        let mut config: Self = SCHEMA.parse(value)?;
        config.check()?;
        config.workspace_dir = runner_api::normalize_lexically(&config.workspace_dir);
        Ok(config)
    }

    /// The checks beyond the types, one message per key.
    fn check(&self) -> RunnerResult<()> {
        SCHEMA.check_text("image", Some(&self.image))?;
        SCHEMA.check_text("user", self.user.as_deref())?;
        SCHEMA.check_text("docker_host", self.docker_host.as_deref())?;
        let workspace = &self.workspace_dir;
        SCHEMA.check_text("workspace_dir", workspace.to_str())?;
        if !workspace.is_absolute() || runner_api::normalize_lexically(workspace) == *"/" {
            return Err(SCHEMA.bad(
                "workspace_dir",
                format!(
                    "must be an absolute directory other than /, got {}",
                    workspace.display()
                ),
            ));
        }
        SCHEMA.check_entries("env", &self.env)?;
        SCHEMA.check_entries("labels", &self.labels)?;
        if self.ports.contains(&0) {
            return Err(SCHEMA.bad("ports", "0 is not a port 1-65535"));
        }
        if matches!(self.memory, Some(bytes) if bytes < 6 << 20) {
            // Docker refuses limits below 6 MiB.
            return Err(SCHEMA.bad("memory", "must be at least 6 MiB"));
        }
        if let Some(cpus) = self.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(SCHEMA.bad("cpus", format!("{cpus} is not a CPU count above 0")));
        }
        if let Some(pids) = self.pids_limit
            && pids <= 0
        {
            return Err(SCHEMA.bad("pids_limit", format!("{pids} is not a count above 0")));
        }
        if self.network == DockerNetwork::None && !self.ports.is_empty() {
            return Err(SCHEMA.bad(
                "ports",
                "cannot be published with network \"none\" (expose_port works without them)",
            ));
        }
        if self.max_upload_bytes == 0 {
            return Err(SCHEMA.bad("max_upload_bytes", "0 is not a number of bytes above 0"));
        }
        for (arch, path) in &self.agent_binaries {
            if arch.is_empty() || !path.is_absolute() {
                return Err(SCHEMA.bad(
                    "agent_binaries",
                    format!("entry {arch:?} must name an absolute path"),
                ));
            }
        }
        if let Some(dir) = &self.socket_dir
            && !dir.is_absolute()
        {
            return Err(SCHEMA.bad(
                "socket_dir",
                format!("must be an absolute path, got {}", dir.display()),
            ));
        }
        if let Some(reserved) = self.labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
            return Err(SCHEMA.bad(
                "labels",
                format!("{reserved:?} uses the reserved prefix {LABEL_PREFIX:?}"),
            ));
        }
        if let Some(host) = &self.docker_host
            && !["unix://", "tcp://", "http://"]
                .iter()
                .any(|scheme| host.starts_with(scheme))
        {
            return Err(SCHEMA.bad(
                "docker_host",
                format!("{host:?} must start with unix://, tcp:// or http://"),
            ));
        }
        Ok(())
    }

    /// The config as destination JSON (parses back to the same config).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
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
            "agent_binaries": { "aarch64": "/opt/agents/runner-agent-aarch64" }
        }))
        .expect("config");
        assert_eq!(config.workspace_dir, PathBuf::from("/work/x"));
        assert_eq!(config.memory, Some(512 << 20));
        assert_eq!(config.ports, vec![8080]);
        assert_eq!(config.max_upload_bytes, 1024);
        assert_eq!(
            DockerConfig::from_value(&config.to_value()).expect("again"),
            config
        );
    }

    #[test]
    fn nulls_take_the_defaults() {
        let config = DockerConfig::from_value(&json!({
            "image": "busybox", "init": null, "env": null, "memory": null, "network": null
        }))
        .expect("config");
        assert_eq!(
            config,
            DockerConfig::from_value(&json!({ "image": "busybox" })).expect("plain")
        );
    }

    /// The artifact store is the destination's `artifacts`, not a config key.
    #[test]
    fn artifacts_is_not_a_config_key() {
        let err = DockerConfig::from_value(&json!({
            "image": "i", "artifacts": { "uri": "s3://bucket/prefix" }
        }))
        .expect_err("artifacts in the config");
        assert_eq!(err.kind(), runner_api::RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("`artifacts`"), "{}", err.message());
    }

    /// A value in the wrong place is named by its key, never echoed.
    #[test]
    fn bad_values_are_not_echoed() {
        for config in [
            json!({ "image": "i", "env": { "TOKEN": { "secret": "hunter2" } } }),
            json!({ "image": "i", "cpus": "hunter2" }),
            json!({ "image": "i", "init": "hunter2" }),
            json!({ "image": "i", "memory": "hunter2" }),
        ] {
            let err = DockerConfig::from_value(&config).expect_err("bad config");
            assert!(!err.message().contains("hunter2"), "{}", err.message());
        }
        let err = DockerConfig::from_value(&json!({ "image": "i", "env": { "A": 1 } }))
            .expect_err("a number in env");
        assert!(err.message().contains("\"A\""), "{}", err.message());
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
            (json!({ "image": "i", "ports": [70000] }), "`ports`"),
            (json!({ "image": "i", "memory": 1.5 }), "`memory`"),
            (json!({ "image": "i", "env": ["A=1"] }), "`env`"),
            (json!({ "image": "i", "user": "" }), "`user`"),
            (
                json!({ "image": "i", "workspace_dir": "/" }),
                "`workspace_dir`",
            ),
            (json!({ "image": "i", "memory": 1024 }), "`memory`"),
            (
                json!({ "image": "i", "agent_binaries": { "x86_64": "rel/agent" } }),
                "`agent_binaries`",
            ),
            (
                json!({ "image": "i", "agent_binaries": ["/a"] }),
                "`agent_binaries`",
            ),
            (json!({ "image": "i", "transport": "ssh" }), "`transport`"),
            (
                json!({ "image": "i", "socket_dir": "rel/dir" }),
                "`socket_dir`",
            ),
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
