//! What a provider can do, as plain data checked before each call.

use serde::{Deserialize, Serialize};

/// The operations a provider (or one of its sessions) supports.
///
/// Every flag is honest: an operation whose flag is `false` returns
/// [`RunnerErrorKind::Unsupported`](crate::RunnerErrorKind::Unsupported), and an
/// operation whose flag is `true` does the work. The conformance kit checks both.
/// The first six fields are the seed's and required in JSON; every later field
/// defaults to `false` so older payloads deserialize unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCapabilities {
    /// `run_command` works.
    pub command_exec: bool,
    /// `read_file` works.
    pub file_read: bool,
    /// `write_file` works.
    pub file_write: bool,
    /// `expose_port` returns a URL reachable from the caller's machine.
    pub port_preview: bool,
    /// `snapshot` captures the workspace.
    pub snapshots: bool,
    /// `cancel_command` kills a running command's process tree.
    pub cancellation: bool,
    /// `export_artifact` uploads to the artifact store.
    #[serde(default)]
    pub artifact_export: bool,
    /// Which mount kinds a manifest may use.
    #[serde(default)]
    pub mounts: RunnerMountCapabilities,
    /// `pause` and `resume` stop and continue the session without losing state.
    #[serde(default)]
    pub pausable: bool,
    /// `detach` keeps the sandbox alive for a later `rejoin_session`.
    #[serde(default)]
    pub detachable: bool,
    /// `stream_command` yields live output events.
    #[serde(default)]
    pub streaming: bool,
    /// `start_command`, `list_commands`, `command_status`, `command_output` and
    /// `signal_command` work.
    #[serde(default)]
    pub background_processes: bool,
    /// `RunnerCommandRequest::stdin` is delivered and `write_stdin` works.
    #[serde(default)]
    pub stdin: bool,
    /// `list_dir`, `stat`, `remove`, `make_dir`, `rename` and `canonicalize` work.
    #[serde(default)]
    pub file_management: bool,
    /// `upload_archive` and `download_archive` work.
    #[serde(default)]
    pub archive_transfer: bool,
    /// `resume_session` with a snapshot creates a new session restored from it.
    #[serde(default)]
    pub snapshot_restore: bool,
    /// `list_listening_ports` works.
    #[serde(default)]
    pub port_listing: bool,
    /// `acquire_workspace_execution_lease`, `renew_workspace_execution_lease`
    /// and `release_workspace_execution_lease` give a cross-process guarantee.
    #[serde(default)]
    pub execution_lease: bool,
    /// `RunnerCommandRequest::user` is honoured: a command runs as the user
    /// it names. Without it a request naming a user is `Unsupported`.
    #[serde(default)]
    pub run_as_user: bool,
    /// `RunnerCommandRequest::terminal` starts a command on a pseudo-terminal
    /// and `resize_terminal` works.
    #[serde(default)]
    pub pty: bool,
    /// `watch` streams file events of the workspace.
    #[serde(default)]
    pub file_watch: bool,
}

/// Which mount kinds a provider materializes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMountCapabilities {
    /// `s3://` intents.
    #[serde(default)]
    pub s3: bool,
    /// `gs://` intents.
    #[serde(default)]
    pub gcs: bool,
    /// `r2://` intents.
    #[serde(default)]
    pub r2: bool,
    /// `az://` intents.
    #[serde(default)]
    pub azure_blob: bool,
    /// Box storage (no object_store backend; always `false` here).
    #[serde(default)]
    pub box_storage: bool,
    /// Host paths or bind mounts native to the provider.
    #[serde(default)]
    pub provider_native: bool,
}

impl RunnerMountCapabilities {
    /// Whether mounts of `kind` are supported.
    pub fn supports(&self, kind: &crate::RunnerMountKind) -> bool {
        use crate::RunnerMountKind as K;
        match kind {
            K::S3 => self.s3,
            K::Gcs => self.gcs,
            K::R2 => self.r2,
            K::AzureBlob => self.azure_blob,
            K::BoxStorage => self.box_storage,
            K::ProviderNative => self.provider_native,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_payload_deserializes_with_new_flags_false() {
        let caps: RunnerCapabilities = serde_json::from_value(serde_json::json!({
            "command_exec": true, "file_read": true, "file_write": true,
            "port_preview": false, "snapshots": false, "cancellation": false
        }))
        .expect("seed capabilities");
        assert!(caps.command_exec);
        assert!(!caps.pausable && !caps.streaming && !caps.file_management);
        assert_eq!(caps.mounts, RunnerMountCapabilities::default());
    }
}
