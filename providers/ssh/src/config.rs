//! `SshConfig`: the destination's `config`, parsed once into typed settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_api::{RunnerDestination, RunnerError, RunnerResult};
use runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES;
use serde::{Deserialize, Serialize};

/// How the server's host key is checked against the known_hosts file.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The key must already be in the known_hosts file (`StrictHostKeyChecking=yes`).
    #[default]
    Strict,
    /// An unknown host's key is added on first connection; a changed key is
    /// still refused (`StrictHostKeyChecking=accept-new`).
    AcceptNew,
}

/// Settings of an ssh destination, from `RunnerDestination.config`.
///
/// ```json
/// { "host": "build-1.internal", "port": 22, "user": "agent",
///   "identity_file": "/home/me/.ssh/id_ed25519",
///   "known_hosts_file": "/home/me/.ssh/known_hosts", "host_key_policy": "strict",
///   "workspace_root": ".runners/workspaces", "connect_timeout_ms": 10000 }
/// ```
///
/// Only `host` is required. Keys are referred to by path: the config never holds
/// key material or passwords. An unknown key, or a value of the wrong type, is
/// one `InvalidRequest` naming the key (never echoing the value). The artifact
/// store is not part of it: it is the destination's own `artifacts` field
/// (`RunnerDestination::artifacts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Host name or address of the server.
    pub host: String,
    /// TCP port of the server (default 22).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Login user (default: the local ssh default, the current user).
    #[serde(default)]
    pub user: Option<String>,
    /// Private key file used for the login (only this key is offered). `None`
    /// leaves the choice to ssh (its default keys, or an agent).
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// known_hosts file the server's key is checked against (default: ssh's own,
    /// `~/.ssh/known_hosts`).
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// `strict` (default) or `accept-new`.
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    /// Remote directory under which each session gets its workspace
    /// `<workspace_root>/<session id>`; relative to the remote user's home.
    #[serde(default = "default_workspace_root")]
    pub workspace_root: String,
    /// Remote directory of the session directories (the agent's socket,
    /// log and status, the owner record) and of the delivered agent
    /// binaries (`bin/`); relative to the remote user's home.
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// Remote directory of snapshot archives; relative to the remote user's home.
    #[serde(default = "default_snapshot_dir")]
    pub snapshot_dir: String,
    /// How long establishing the connection may take (default 10 000 ms).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Local directory of the multiplexing control sockets (default the
    /// system temp dir; keep the path short, sockets are limited to 108 bytes).
    #[serde(default)]
    pub control_dir: Option<PathBuf>,
    /// Environment added to every command (the request's own `env` wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between keepalive probes of an idle connection (ssh
    /// `ServerAliveInterval`); `None` sends none.
    #[serde(default)]
    pub keepalive_interval_s: Option<u64>,
    /// Seconds the local master connection lives on once no channel uses it
    /// (ssh `ControlPersist`; default 30). A provider keeps a channel open
    /// while it holds the connection, so this only ends the master of an
    /// embedding process that was killed without closing anything.
    #[serde(default = "default_master_idle_s")]
    pub master_idle_s: u64,
    /// Time between TERM and KILL when a process tree is killed (default 1000 ms).
    #[serde(default = "default_kill_grace_ms")]
    pub kill_grace_ms: u64,
    /// Age after which `sweep_orphans` may remove a marked remote directory whose
    /// owner is gone (default 3600 s).
    #[serde(default = "default_orphan_grace_s")]
    pub orphan_grace_s: u64,
    /// Longest one of the provider's own sftp requests (delivery, session
    /// directories, markers, removal) may go unanswered (default 30 000 ms).
    /// A request that takes longer fails with `Timeout`, and the
    /// destination's sftp channel is replaced before the next one.
    #[serde(default = "default_sftp_timeout_ms")]
    pub sftp_timeout_ms: u64,
    /// Most bytes one `upload_archive` may unpack, the sum of its entries'
    /// sizes (default [`DEFAULT_MAX_UNPACKED_BYTES`], 4 GiB).
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Runner agent binaries by architecture, in Rust's names (`x86_64`,
    /// `aarch64`) → path on this machine (default none). The host's
    /// architecture (`uname -m`) picks one; without one, the binary
    /// `RUNNER_AGENT_BINARY` names is used when it is built for it, else
    /// sessions fail with `Unsupported` naming the build command.
    #[serde(default)]
    pub agent_binaries: BTreeMap<String, PathBuf>,
    /// Age after which `sweep_orphans` may remove a finished snapshot archive
    /// whose session is gone (closed, swept, or its owner process no longer
    /// runs); default 86 400 s. `null` keeps snapshot archives forever.
    #[serde(default = "default_snapshot_grace_s")]
    pub snapshot_grace_s: Option<u64>,
}

/// The keys `config` may contain, with what each expects.
const KNOWN_KEYS: &[(&str, &str)] = &[
    ("host", "a host name or address"),
    ("port", "an integer from 1 to 65535"),
    ("user", "a user name"),
    ("identity_file", "a path"),
    ("known_hosts_file", "a path"),
    ("host_key_policy", "\"strict\" or \"accept-new\""),
    ("workspace_root", "a directory path"),
    ("state_dir", "a directory path"),
    ("snapshot_dir", "a directory path"),
    ("connect_timeout_ms", "a positive integer (milliseconds)"),
    ("control_dir", "a path"),
    ("env", "an object of string values"),
    ("keepalive_interval_s", "a non-negative integer (seconds)"),
    ("master_idle_s", "a positive integer (seconds)"),
    ("kill_grace_ms", "a non-negative integer (milliseconds)"),
    ("orphan_grace_s", "a non-negative integer (seconds)"),
    ("sftp_timeout_ms", "a positive integer (milliseconds)"),
    ("max_upload_bytes", "a positive integer (bytes)"),
    (
        "snapshot_grace_s",
        "a non-negative integer (seconds) or null",
    ),
    ("agent_binaries", "an object of architecture to path"),
];

fn default_port() -> u16 {
    22
}
fn default_workspace_root() -> String {
    ".runners/workspaces".into()
}
fn default_state_dir() -> String {
    ".runners/sessions".into()
}
fn default_snapshot_dir() -> String {
    ".runners/snapshots".into()
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_master_idle_s() -> u64 {
    30
}
fn default_kill_grace_ms() -> u64 {
    1000
}
fn default_orphan_grace_s() -> u64 {
    3600
}
fn default_sftp_timeout_ms() -> u64 {
    30_000
}
fn default_max_upload_bytes() -> u64 {
    DEFAULT_MAX_UNPACKED_BYTES
}
fn default_snapshot_grace_s() -> Option<u64> {
    Some(86_400)
}

impl SshConfig {
    /// A config for `host` with every other setting at its default.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: default_port(),
            user: None,
            identity_file: None,
            known_hosts_file: None,
            host_key_policy: HostKeyPolicy::Strict,
            workspace_root: default_workspace_root(),
            state_dir: default_state_dir(),
            snapshot_dir: default_snapshot_dir(),
            connect_timeout_ms: default_connect_timeout_ms(),
            control_dir: None,
            env: BTreeMap::new(),
            keepalive_interval_s: None,
            master_idle_s: default_master_idle_s(),
            kill_grace_ms: default_kill_grace_ms(),
            orphan_grace_s: default_orphan_grace_s(),
            sftp_timeout_ms: default_sftp_timeout_ms(),
            max_upload_bytes: default_max_upload_bytes(),
            snapshot_grace_s: default_snapshot_grace_s(),
            agent_binaries: BTreeMap::new(),
        }
    }

    /// Parses the destination's `config`.
    ///
    /// Errors: `InvalidRequest` naming the bad or unknown field.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::from_value(&destination.config)
    }

    /// Parses a config object.
    ///
    /// Errors: `InvalidRequest` naming the bad or unknown field.
    pub fn from_value(value: &serde_json::Value) -> RunnerResult<Self> {
        let object = value.as_object().ok_or_else(|| {
            RunnerError::invalid_request(
                "ssh config: expected a JSON object with at least \"host\"",
            )
        })?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !KNOWN_KEYS.iter().any(|(known, _)| known == k))
        {
            let known: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(RunnerError::invalid_request(format!(
                "ssh config: unknown key {unknown:?} (known keys: {})",
                known.join(", ")
            )));
        }
        if !object.contains_key("host") {
            return Err(RunnerError::invalid_request(
                "ssh config: field \"host\" is required",
            ));
        }
        let config: Self = match serde_json::from_value(value.clone()) {
            Ok(config) => config,
            Err(_) => {
                // Name the offending field without echoing its value.
                for (key, expected) in KNOWN_KEYS {
                    let Some(field) = object.get(*key) else {
                        continue;
                    };
                    let mut probe = serde_json::Map::new();
                    probe.insert("host".into(), "h".into());
                    probe.insert((*key).to_string(), field.clone());
                    if serde_json::from_value::<Self>(serde_json::Value::Object(probe)).is_err() {
                        return Err(RunnerError::invalid_request(format!(
                            "ssh config: field {key:?}: expected {expected}"
                        )));
                    }
                }
                return Err(RunnerError::invalid_request("ssh config: invalid value"));
            }
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> RunnerResult<()> {
        let bad = |field: &str, why: &str| {
            RunnerError::invalid_request(format!("ssh config: field {field:?}: {why}"))
        };
        if self.host.is_empty()
            || self.host.starts_with('-')
            || self.host.contains(char::is_whitespace)
        {
            return Err(bad("host", "expected a host name or address"));
        }
        if let Some(user) = &self.user
            && (user.is_empty() || user.starts_with('-') || user.contains(['@', ' ', '\0']))
        {
            return Err(bad("user", "expected a user name"));
        }
        if self.port == 0 {
            return Err(bad("port", "must be between 1 and 65535"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(bad("connect_timeout_ms", "must be greater than 0"));
        }
        if self.sftp_timeout_ms == 0 {
            return Err(bad("sftp_timeout_ms", "must be greater than 0"));
        }
        if self.max_upload_bytes == 0 {
            return Err(bad("max_upload_bytes", "must be greater than 0"));
        }
        if self.master_idle_s == 0 || usize::try_from(self.master_idle_s).is_err() {
            return Err(bad("master_idle_s", "must be a positive number of seconds"));
        }
        for (field, dir) in [
            ("workspace_root", &self.workspace_root),
            ("state_dir", &self.state_dir),
            ("snapshot_dir", &self.snapshot_dir),
        ] {
            if dir.is_empty()
                || dir.contains('\0')
                || Path::new(dir)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad(field, "expected a directory path without `..`"));
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(bad("env", &format!("invalid variable name {key:?}")));
            }
        }
        Ok(())
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The sftp request timeout as a duration.
    pub fn sftp_timeout(&self) -> Duration {
        Duration::from_millis(self.sftp_timeout_ms)
    }

    /// The unix-local config the agent serves its session with: the
    /// workspace `root` (absent for a snapshot fork, which unix-local
    /// unpacks into a fresh directory under `workspaces_dir`), the host's
    /// directories as absolute paths, and this destination's `env`,
    /// `kill_grace_ms` and `max_upload_bytes`.
    pub(crate) fn agent_config(
        &self,
        root: Option<&Path>,
        workspaces_dir: &Path,
        snapshot_dir: &Path,
    ) -> serde_json::Value {
        let mut config = serde_json::json!({
            "workspaces_dir": workspaces_dir,
            "snapshot_dir": snapshot_dir,
            "kill_grace_ms": self.kill_grace_ms,
            "env": self.env,
            "max_upload_bytes": self.max_upload_bytes,
        });
        if let (Some(root), Some(object)) = (root, config.as_object_mut()) {
            object.insert("root".into(), serde_json::json!(root));
        }
        config
    }

    /// The kill grace as a duration.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }

    /// `user@host:port`, for messages (no secret is part of it).
    pub fn destination_label(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// What identifies one shared master connection: every setting that
    /// changes how ssh connects.
    pub(crate) fn connection_key(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}|{}",
            self.destination_label(),
            self.identity_file,
            self.known_hosts_file,
            self.host_key_policy,
            self.control_dir,
            self.connect_timeout_ms,
            self.keepalive_interval_s,
            self.master_idle_s,
            self.sftp_timeout_ms
        )
    }

    /// Checks the local files the config names: the identity file must be a
    /// readable file, the known_hosts file must exist under the strict policy.
    ///
    /// Errors: `NotFound` or `PermissionDenied` naming the path (never its contents).
    pub fn check_local_files(&self) -> RunnerResult<()> {
        if let Some(key) = &self.identity_file {
            std::fs::File::open(key)
                .map_err(|e| RunnerError::from_io("ssh config: identity_file", key.display(), e))?;
            if !key.is_file() {
                return Err(RunnerError::invalid_request(format!(
                    "ssh config: identity_file {} is not a file",
                    key.display()
                )));
            }
        }
        if let Some(known) = &self.known_hosts_file
            && self.host_key_policy == HostKeyPolicy::Strict
        {
            std::fs::metadata(known).map_err(|e| {
                RunnerError::from_io("ssh config: known_hosts_file", known.display(), e)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = SshConfig::from_value(&serde_json::json!({ "host": "h" })).expect("parse");
        assert_eq!(config, SshConfig::new("h"));
        assert_eq!(config.host_key_policy, HostKeyPolicy::Strict);
    }

    #[test]
    fn upload_bound_and_sftp_timeout_reach_the_agent_config() {
        let config = SshConfig::new("h");
        assert_eq!(config.sftp_timeout(), Duration::from_secs(30));
        let config = SshConfig::from_value(&serde_json::json!({
            "host": "h", "max_upload_bytes": 16, "env": { "A": "1" },
            "agent_binaries": { "x86_64": "/opt/runner-agent" }
        }))
        .expect("parse");
        let agent = config.agent_config(Some(Path::new("/w/s")), Path::new("/w"), Path::new("/s"));
        assert_eq!(agent["max_upload_bytes"], 16);
        assert_eq!(agent["root"], "/w/s");
        assert_eq!(agent["env"]["A"], "1");
        assert_eq!(
            config.agent_binaries["x86_64"],
            PathBuf::from("/opt/runner-agent")
        );
        let fork = config.agent_config(None, Path::new("/w"), Path::new("/s"));
        assert!(fork.get("root").is_none());
    }

    #[test]
    fn snapshot_grace_defaults_to_a_day_and_null_keeps_snapshots() {
        assert_eq!(SshConfig::new("h").snapshot_grace_s, Some(86_400));
        let config =
            SshConfig::from_value(&serde_json::json!({ "host": "h", "snapshot_grace_s": null }))
                .expect("parse");
        assert_eq!(config.snapshot_grace_s, None);
    }

    #[test]
    fn accept_new_is_accepted() {
        let config = SshConfig::from_value(&serde_json::json!({
            "host": "h", "host_key_policy": "accept-new"
        }))
        .expect("parse");
        assert_eq!(config.host_key_policy, HostKeyPolicy::AcceptNew);
    }

    #[test]
    fn artifacts_is_no_longer_a_config_key() {
        let err = SshConfig::from_value(&serde_json::json!({
            "host": "h", "artifacts": { "uri": "s3://b" }
        }))
        .expect_err("refused");
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("\"artifacts\""), "{}", err.message());
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        for (value, field) in [
            (
                serde_json::json!({ "host": "h", "password": "x" }),
                "password",
            ),
            (serde_json::json!({ "host": "h", "port": "22" }), "port"),
            (
                serde_json::json!({ "host": "h", "master_idle_s": 0 }),
                "master_idle_s",
            ),
            (serde_json::json!({ "port": 22 }), "host"),
            (
                serde_json::json!({ "host": "h", "workspace_root": "../x" }),
                "workspace_root",
            ),
            (
                serde_json::json!({ "host": "h", "sftp_timeout_ms": 0 }),
                "sftp_timeout_ms",
            ),
            (
                serde_json::json!({ "host": "h", "max_upload_bytes": 0 }),
                "max_upload_bytes",
            ),
            (
                serde_json::json!({ "host": "h", "host_key_policy": "x" }),
                "host_key_policy",
            ),
            (serde_json::json!({ "host": "h", "env": { "A": 1 } }), "env"),
            (
                serde_json::json!({ "host": "h", "snapshot_grace_s": -1 }),
                "snapshot_grace_s",
            ),
            (
                serde_json::json!({ "host": "h", "identity_file": ["x"] }),
                "identity_file",
            ),
        ] {
            let err = SshConfig::from_value(&value).expect_err("refused");
            assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
            assert!(err.message().contains(field), "{}", err.message());
            assert!(!err.message().contains("\"x\""), "{}", err.message());
        }
    }
}
