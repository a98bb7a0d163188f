//! Where a thread's tools run: destinations, manifests, mounts, session state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Identifier of a provider, such as `"unix-local"` or `"docker"`.
pub type RemoteRunnerProviderId = String;
/// Identifier of a session, unique per provider.
pub type RemoteRunnerSessionId = String;
/// Identifier of a destination, chosen by the framework.
pub type RunnerDestinationId = String;
/// Identifier of a command, chosen by the caller; an idempotency key.
pub type RunnerCommandId = String;

/// A runner destination: which provider, with which provider-specific config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerDestination {
    /// The framework's id for this destination.
    pub id: RunnerDestinationId,
    /// The provider that serves it.
    pub provider_id: RemoteRunnerProviderId,
    /// Provider settings, parsed once by the provider into a typed config.
    /// Never put secret values here: refer to them with [`RunnerSecretRef`].
    #[serde(default)]
    pub config: serde_json::Value,
    /// What to place in every new session's workspace.
    #[serde(default)]
    pub default_manifest: RunnerManifest,
    /// The artifact store `export_artifact` uploads to, as `runner-mounts`
    /// reads it (`{"uri": "s3://bucket/prefix", "credentials": {"id": …},
    /// "options": {…}}`). `None`: the destination's sessions export no
    /// artifacts and do not claim `artifact_export`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<serde_json::Value>,
}

/// What a new session's workspace starts with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerManifest {
    /// Local sources copied into the workspace.
    #[serde(default)]
    pub entries: Vec<RunnerManifestEntry>,
    /// Mounts placed at paths of the workspace.
    #[serde(default)]
    pub mounts: Vec<RunnerMount>,
}

/// A file or directory on the caller's machine copied into the workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerManifestEntry {
    /// Path on the caller's machine.
    pub source: PathBuf,
    /// Path in the workspace (relative to its root).
    pub target: PathBuf,
    /// When `false`, the provider's file API refuses writes under `target`.
    pub writable: bool,
}

/// A mount placed at a path of the workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMount {
    /// Name used in messages and sync reports.
    pub name: String,
    /// Path in the workspace (relative to its root).
    pub path: PathBuf,
    /// When `true`, writes through the file API are refused and nothing syncs back.
    pub read_only: bool,
    /// What backs the mount.
    #[serde(default)]
    pub intent: RunnerMountIntent,
}

/// What backs a mount: a kind, a URI, and optionally a secret reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMountIntent {
    /// The storage kind.
    pub kind: RunnerMountKind,
    /// `s3://bucket/prefix`, a host path for `provider_native`, and so on.
    pub uri: String,
    /// Credentials, resolved on the caller's side by a [`SecretResolver`](runner_mounts::SecretResolver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RunnerSecretRef>,
}

impl Default for RunnerMountIntent {
    fn default() -> Self {
        Self {
            kind: RunnerMountKind::ProviderNative,
            uri: String::new(),
            credentials: None,
        }
    }
}

/// The storage kind of a mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunnerMountKind {
    /// Amazon S3 or an S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Cloudflare R2.
    R2,
    /// Azure Blob Storage.
    AzureBlob,
    /// Box storage (no object_store backend: refused by validation).
    BoxStorage,
    /// A host path or bind mount native to the provider.
    ProviderNative,
}

/// A reference to a secret, resolved by a [`SecretResolver`](runner_mounts::SecretResolver).
/// Holds only the id, never the value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSecretRef {
    /// Secret id, such as `"r2-readonly"`.
    pub id: String,
}

/// A snapshot a provider took of a session's workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSnapshotRef {
    /// The provider that can restore it.
    pub provider_id: RemoteRunnerProviderId,
    /// Provider-specific snapshot id.
    pub snapshot_id: String,
    /// Provider-specific details (never secrets).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// The durable state of a session, enough for `resume_session` and `rejoin_session`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSessionState {
    /// The provider that created the session.
    pub provider_id: RemoteRunnerProviderId,
    /// The session's id.
    pub session_id: RemoteRunnerSessionId,
    /// The destination it was created for.
    pub destination_id: RunnerDestinationId,
    /// When set, `resume_session` restores this snapshot into a new session.
    #[serde(default)]
    pub snapshot: Option<RunnerSnapshotRef>,
    /// Provider-specific details (never secrets).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Per-thread runner binding chosen at thread creation.
///
/// The destination config is persisted with the thread, so secrets must reach the
/// provider through a [`SecretResolver`](runner_mounts::SecretResolver), not this config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadRunnerBinding {
    /// Where the thread's tools run.
    pub destination: RunnerDestination,
    /// Absolute path on the runner used as the thread's workspace root.
    pub workspace: PathBuf,
    /// Extra absolute runner paths that reads may resolve under; writes and the
    /// working directory stay confined to `workspace`.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_destination_json_deserializes_unchanged() {
        let json = serde_json::json!({
            "id": "local",
            "provider_id": "unix-local",
            "config": { "root": "." },
            "default_manifest": {
                "entries": [{ "source": "src", "target": "workspace/src", "writable": true }],
                "mounts": [{ "name": "cache", "path": ".cache", "read_only": false,
                             "intent": { "kind": "provider_native", "uri": "" } }]
            }
        });
        let dest: RunnerDestination = serde_json::from_value(json.clone()).expect("seed json");
        assert_eq!(
            dest.default_manifest.mounts[0].intent.kind,
            RunnerMountKind::ProviderNative
        );
        assert_eq!(serde_json::to_value(&dest).expect("encode"), json);
    }

    #[test]
    fn mount_kinds_are_snake_case() {
        let kind: RunnerMountKind = serde_json::from_str("\"azure_blob\"").expect("kind");
        assert_eq!(kind, RunnerMountKind::AzureBlob);
        let state: RunnerSessionState = serde_json::from_value(serde_json::json!({
            "provider_id": "p", "session_id": "s", "destination_id": "d"
        }))
        .expect("minimal state");
        assert!(state.snapshot.is_none());
    }
}
