#![doc = include_str!("../README.md")]

mod archive;
mod config;
mod error;
mod exec;
mod files;
mod groups;
mod manifest;
mod ownership;
mod ports;
mod session;
mod snapshot;

use std::sync::Arc;

use async_trait::async_trait;
use runner_api::mounts::MountedSession;
use runner_api::{EnvSecretResolver, SecretResolver};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerMountCapabilities, RunnerResult, RunnerSessionState,
    RunnerSweepReport, validate_manifest,
};
use tracing::Instrument;

pub use config::{DEFAULT_KILL_GRACE_MS, LocalConfig};
pub use ownership::SweepConfig;
pub use session::LocalSession;

use crate::error::join_error;
use crate::manifest::MountSpec;
use crate::session::{RootSource, SessionMeta, SessionSetup};

/// The provider id destinations name: `"unix-local"`.
pub const PROVIDER_ID: &str = "unix-local";

/// What unix-local sessions can do: everything except artifact export and
/// detaching; mounts of kind `provider_native` (host directories) only.
pub fn capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        file_read: true,
        file_write: true,
        port_preview: true,
        snapshots: true,
        cancellation: true,
        artifact_export: true,
        mounts: RunnerMountCapabilities {
            provider_native: true,
            ..runner_api::mounts::store_mount_kinds()
        },
        pausable: true,
        detachable: false,
        streaming: true,
        background_processes: true,
        stdin: true,
        file_management: true,
        archive_transfer: true,
        snapshot_restore: true,
        port_listing: true,
        execution_lease: true,
    }
}

/// Runs commands and file operations in a directory of this machine.
///
/// Settings come from `RunnerDestination.config` (see [`LocalConfig`]). The
/// file API is confined to the workspace root; commands run as the current
/// user and are not sandboxed.
///
/// Object-store mounts and artifact export come from
/// [`MountedSession`](runner_api::mounts::MountedSession); their credentials are
/// resolved on this side with the provider's [`SecretResolver`] (default
/// [`EnvSecretResolver`], see [`with_secret_resolver`](Self::with_secret_resolver)).
#[derive(Debug, Clone, Default)]
pub struct LocalProvider {
    sweep: SweepConfig,
    secrets: Secrets,
}

/// The resolver of mount and artifact-store credentials.
#[derive(Clone)]
struct Secrets(Arc<dyn SecretResolver>);

impl Default for Secrets {
    fn default() -> Self {
        Self(Arc::new(EnvSecretResolver::new()))
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretResolver")
    }
}

impl LocalProvider {
    /// A provider with the default [`SweepConfig`] and secret resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `sweep_orphans` use `sweep` (directories and grace periods)
    /// instead of the defaults.
    pub fn with_sweep(mut self, sweep: SweepConfig) -> Self {
        self.sweep = sweep;
        self
    }

    /// Resolves mount and artifact-store credentials with `resolver` instead
    /// of the environment.
    pub fn with_secret_resolver(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = Secrets(resolver);
        self
    }

    fn check_provider(&self, operation: &str, destination: &RunnerDestination) -> RunnerResult<()> {
        if destination.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: destination {:?} is for provider {:?}, not {PROVIDER_ID}",
                destination.id, destination.provider_id
            )));
        }
        Ok(())
    }

    async fn open(&self, setup: SessionSetup) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let span = tracing::info_span!("unix-local session", session_id = %setup.session_id);
        let session = tokio::task::spawn_blocking(move || LocalSession::open_blocking(setup))
            .instrument(span)
            .await
            .map_err(|e| join_error("create_session", e))??;
        Ok(Arc::new(session))
    }
}

fn new_session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[async_trait]
impl RemoteRunnerProvider for LocalProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        PROVIDER_ID.to_string()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        capabilities()
    }

    /// Parses the config, checks the manifest against the capabilities, and
    /// checks that every manifest source and mount host path exists.
    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.check_provider("validate_destination", destination)?;
        LocalConfig::from_destination(destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        runner_api::mounts::validate_stores(destination)?;
        let manifest = runner_api::mounts::native_manifest(&destination.default_manifest);
        tokio::task::spawn_blocking(move || manifest::check_sources(&manifest))
            .await
            .map_err(|e| join_error("validate_destination", e))?
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.check_provider("create_session", &destination)?;
        let config = LocalConfig::from_destination(&destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        runner_api::mounts::validate_stores(&destination)?;
        let mounts = runner_api::mounts::native_manifest(&destination.default_manifest)
            .mounts
            .iter()
            .map(MountSpec::from_mount)
            .collect::<RunnerResult<Vec<_>>>()?;
        let root = match &config.root {
            Some(root) => RootSource::Configured(root.clone()),
            None => RootSource::Fresh,
        };
        let session = self
            .open(SessionSetup {
                session_id: new_session_id(),
                destination_id: destination.id.clone(),
                config,
                root,
                mounts,
                entries: destination.default_manifest.entries.clone(),
                read_only: Vec::new(),
            })
            .await?;
        MountedSession::attach(session, &destination, self.secrets.0.clone()).await
    }

    /// With `state.snapshot`: a new session in a fresh owned directory filled
    /// from the snapshot (a fork; the original is untouched). Without: a new
    /// session over the same root (processes are not carried over).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        if state.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "resume_session: state of provider {:?}, not {PROVIDER_ID}",
                state.provider_id
            )));
        }
        let meta: SessionMeta = if state.metadata.is_null() {
            SessionMeta::default()
        } else {
            serde_json::from_value(state.metadata.clone()).map_err(|e| {
                RunnerError::invalid_request(format!("resume_session: bad state metadata: {e}"))
            })?
        };
        let mut config = LocalConfig::from_value(&meta.config)
            .map_err(|e| e.context("resume_session: state metadata"))?;
        if let Some(dir) = &meta.workspaces_dir {
            config.workspaces_dir = dir.clone();
        }
        if let Some(dir) = &meta.snapshot_dir {
            config.snapshot_dir = dir.clone();
        }
        let root =
            match &state.snapshot {
                Some(snapshot) => {
                    config.root = None;
                    RootSource::Snapshot {
                        id: snapshot.snapshot_id.clone(),
                        path: snapshot::locate(snapshot, &config.snapshot_dir)?,
                    }
                }
                None => {
                    let root = meta.root.clone().or_else(|| config.root.clone()).ok_or_else(|| {
                    RunnerError::invalid_request(
                        "resume_session: the state has neither a snapshot nor a workspace root",
                    )
                })?;
                    if meta.owned {
                        RootSource::Adopted(root)
                    } else {
                        RootSource::Configured(root)
                    }
                }
            };
        let read_only = meta.read_only.clone();
        // The state does not carry the destination: a resumed session has no
        // object-store mounts (their files stay as plain files) and no artifact store.
        let destination = RunnerDestination {
            id: state.destination_id.clone(),
            provider_id: PROVIDER_ID.to_string(),
            config: serde_json::Value::Null,
            default_manifest: Default::default(),
        };
        let session = self
            .open(SessionSetup {
                session_id: new_session_id(),
                destination_id: state.destination_id,
                config,
                root,
                mounts: meta.mounts,
                entries: Vec::new(),
                read_only,
            })
            .await?;
        MountedSession::attach(session, &destination, self.secrets.0.clone()).await
    }

    /// Removes, under the directories of its [`SweepConfig`], owned workspaces
    /// whose sessions no longer exist (no live session holds their lock) and
    /// snapshot archives whose session is gone, each after its grace period.
    /// Caller-chosen roots and unmarked files are never touched.
    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        let sweep = self.sweep.clone();
        tokio::task::spawn_blocking(move || ownership::sweep(&sweep))
            .await
            .map_err(|e| join_error("sweep_orphans", e))?
    }
}
