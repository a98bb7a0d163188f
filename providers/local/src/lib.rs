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
mod private;
mod session;
mod snapshot;
mod users;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerMountCapabilities, RunnerResult, RunnerSessionState,
    RunnerSweepReport, normalize_lexically, validate_manifest,
};
use runner_kit::KnownDestinations;
use tracing::Instrument;

pub use config::{DEFAULT_KILL_GRACE_MS, LocalConfig};
pub use ownership::SweepConfig;
pub use session::LocalSession;

use crate::error::join_error;
use crate::files::ReadOnlyPath;
use crate::manifest::MountSpec;
use crate::session::{RootSource, SessionMeta, SessionSetup};

/// The provider id destinations name: `"unix-local"`.
pub const PROVIDER_ID: &str = "unix-local";

/// What a bare unix-local session can do: everything except artifact export
/// and detaching; mounts of kind `provider_native` (host directories) only.
/// Through the layer stack (`runner_stack::stacked`) a session also gets the
/// object-store mount kinds, and artifact export when its destination names
/// an artifact store.
pub fn capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        file_read: true,
        file_write: true,
        port_preview: true,
        snapshots: true,
        cancellation: true,
        artifact_export: false,
        mounts: RunnerMountCapabilities {
            provider_native: true,
            ..RunnerMountCapabilities::default()
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
        run_as_user: true,
        pty: true,
        file_watch: true,
    }
}

/// Runs commands and file operations in a directory of this machine.
///
/// Settings come from `RunnerDestination.config` (see [`LocalConfig`]). The
/// file API is confined to the workspace root and acts as the current user;
/// commands run as the current user, or as the user a request names (another
/// user only when this process is root), and are not sandboxed.
///
/// Its sessions are bare: the closed-session and capability checks,
/// object-store mounts and artifact export come from the layer stack
/// (`runner_stack::stacked(LocalProvider::new())`), which users get through
/// the registry.
///
/// `resume_session` takes every setting that matters for trust (root,
/// workspace and snapshot directories, mounts, read-only entries) from the
/// destination the state names, never from the state: the destination must
/// be known to the provider, from an earlier `create_session` or from
/// [`trust_destination`](RemoteRunnerProvider::trust_destination) (or
/// [`with_destination`](Self::with_destination)).
#[derive(Debug, Clone, Default)]
pub struct LocalProvider {
    sweep: SweepConfig,
    /// The destinations sessions may be resumed on, by id: those given to
    /// `create_session` and to `trust_destination`.
    destinations: KnownDestinations,
    /// What commands of another user start through instead of `setpriv`.
    user_switcher: Option<PathBuf>,
}

impl LocalProvider {
    /// A provider with the default [`SweepConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `sweep_orphans` use `sweep` (directories and grace periods)
    /// instead of the defaults.
    pub fn with_sweep(mut self, sweep: SweepConfig) -> Self {
        self.sweep = sweep;
        self
    }

    /// Makes commands that run as another user (`RunnerCommandRequest::user`,
    /// when this process is root) start through `switcher run-as --uid U
    /// --gid G -- PROGRAM ARGS…` instead of util-linux `setpriv`, which is
    /// the default. The runner agent passes its own binary (`runner-agent
    /// run-as`): a sandbox image has no `setpriv`. `switcher` runs as root
    /// in the command's working directory with the command's environment;
    /// it must switch the groups, gid and uid and then exec `PROGRAM`.
    pub fn with_user_switcher(mut self, switcher: impl Into<PathBuf>) -> Self {
        self.user_switcher = Some(switcher.into());
        self
    }

    /// [`trust_destination`](RemoteRunnerProvider::trust_destination) as a
    /// builder that checks the destination first.
    ///
    /// Errors: `InvalidRequest` for a destination of another provider or a
    /// bad config, naming the field.
    pub fn with_destination(self, destination: &RunnerDestination) -> RunnerResult<Self> {
        self.check_provider("with_destination", destination)?;
        LocalConfig::from_destination(destination)?;
        self.trust_destination(destination);
        Ok(self)
    }

    /// `create_session`, returning the session's own type (for a host of
    /// the session that needs more than the contract, as the runner agent's
    /// staged writes need [`LocalSession::install_file`]).
    ///
    /// Errors: as `create_session`.
    pub async fn create_local(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<LocalSession>> {
        self.check_provider("create_session", &destination)?;
        let config = LocalConfig::from_destination(&destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        let mounts = native_mounts(&destination)?;
        self.destinations.remember(&destination);
        let root = match &config.root {
            Some(root) => RootSource::Configured(root.clone()),
            None => RootSource::Fresh,
        };
        self.open(SessionSetup {
            session_id: new_session_id(),
            destination_id: destination.id.clone(),
            config,
            root,
            mounts,
            entries: destination.default_manifest.entries.clone(),
            read_only: Vec::new(),
            user_switcher: self.user_switcher.clone(),
        })
        .await
    }

    /// `resume_session`, returning the session's own type (see
    /// [`create_local`](Self::create_local)).
    ///
    /// Errors: as `resume_session`.
    pub async fn resume_local(&self, state: RunnerSessionState) -> RunnerResult<Arc<LocalSession>> {
        const OP: &str = "resume_session";
        if state.provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: state of provider {:?}, not {PROVIDER_ID}",
                state.provider_id
            )));
        }
        let destination = self
            .destinations
            .of_state(OP, &state, "trust_destination")?;
        let meta: SessionMeta = if state.metadata.is_null() {
            SessionMeta::default()
        } else {
            serde_json::from_value(state.metadata.clone()).map_err(|e| {
                RunnerError::invalid_request(format!("{OP}: bad state metadata: {e}"))
            })?
        };
        let config = LocalConfig::from_destination(&destination)?;
        let mounts = native_mounts(&destination)?;
        let root = match &state.snapshot {
            Some(snapshot) => RootSource::Snapshot {
                id: snapshot.snapshot_id.clone(),
                path: snapshot::locate(snapshot, &config.snapshot_dir)?,
            },
            None => {
                let config = config.clone();
                tokio::task::spawn_blocking(move || resumed_root(&config, meta.root.as_deref()))
                    .await
                    .map_err(|e| join_error(OP, e))??
            }
        };
        // Read-only paths: the destination's entries, plus what the state adds
        // (more restrictions, never fewer).
        let mut read_only = manifest::read_only_entries(&destination.default_manifest.entries);
        read_only.extend(meta.read_only.into_iter().map(|ro| ReadOnlyPath {
            rel: ro.path,
            reason: ro.reason,
        }));
        self.open(SessionSetup {
            session_id: new_session_id(),
            destination_id: state.destination_id,
            config,
            root,
            mounts,
            entries: Vec::new(),
            read_only,
            user_switcher: self.user_switcher.clone(),
        })
        .await
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

    async fn open(&self, setup: SessionSetup) -> RunnerResult<Arc<LocalSession>> {
        let span = tracing::info_span!("unix-local session", session_id = %setup.session_id);
        let session = tokio::task::spawn_blocking(move || LocalSession::open_blocking(setup))
            .instrument(span)
            .await
            .map_err(|e| join_error("create_session", e))??;
        Ok(Arc::new(session))
    }
}

/// The `provider_native` mounts of a destination (the only kind a bare
/// session supports; the manifest check refused any other).
fn native_mounts(destination: &RunnerDestination) -> RunnerResult<Vec<MountSpec>> {
    destination
        .default_manifest
        .mounts
        .iter()
        .map(MountSpec::from_mount)
        .collect()
}

/// A path as it is on disk when it exists, else made absolute and folded.
fn comparable(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        normalize_lexically(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
    })
}

/// The workspace a resume without a snapshot opens: the destination's `root`
/// (a state naming another root is refused), or, without one, the owned
/// workspace the state names, which must be one the provider created under
/// the destination's `workspaces_dir` (it has a lock directory there).
/// Blocking.
///
/// Errors: `PermissionDenied` (another workspace), `InvalidRequest` (no
/// workspace named), `NotFound` (the owned workspace is gone).
fn resumed_root(config: &LocalConfig, named: Option<&Path>) -> RunnerResult<RootSource> {
    const OP: &str = "resume_session";
    if let Some(root) = &config.root {
        if let Some(named) = named
            && comparable(named) != comparable(root)
        {
            return Err(RunnerError::permission_denied(format!(
                "{OP}: the state names workspace {}, not the destination's root {}",
                named.display(),
                root.display()
            )));
        }
        return Ok(RootSource::Configured(root.clone()));
    }
    let named = named.ok_or_else(|| {
        RunnerError::invalid_request(format!(
            "{OP}: the state has neither a snapshot nor a workspace root"
        ))
    })?;
    let foreign = || {
        RunnerError::permission_denied(format!(
            "{OP}: {} is not a workspace this destination created under {}",
            named.display(),
            config.workspaces_dir.display()
        ))
    };
    let name = named
        .file_name()
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .ok_or_else(foreign)?;
    let parent = named.parent().ok_or_else(foreign)?;
    if comparable(parent) != comparable(&config.workspaces_dir) {
        return Err(foreign());
    }
    private::check_present(OP, &config.workspaces_dir)?;
    let root = config.workspaces_dir.join(name);
    if !root.is_dir() {
        return Err(RunnerError::not_found(format!(
            "{OP}: workspace {} no longer exists",
            named.display()
        )));
    }
    if !ownership::is_owned_workspace(&config.workspaces_dir, name) {
        return Err(foreign());
    }
    Ok(RootSource::Adopted(root))
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
        let manifest = destination.default_manifest.clone();
        tokio::task::spawn_blocking(move || manifest::check_sources(&manifest))
            .await
            .map_err(|e| join_error("validate_destination", e))?
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        Ok(self.create_local(destination).await?)
    }

    /// With `state.snapshot`: a new session in a fresh owned directory filled
    /// from the snapshot `<snapshot_dir>/<id>.tar` (a fork; the original is
    /// untouched). Without: a new session over the same root (processes are
    /// not carried over). Every setting comes from the destination the state
    /// names (see [`LocalProvider`]); the state only says which workspace.
    ///
    /// Errors: `InvalidRequest` (another provider's state), `NotFound` (a
    /// destination this provider does not know; the snapshot or workspace is
    /// gone), `PermissionDenied` (the state names a workspace that is neither
    /// the destination's root nor one it created under its `workspaces_dir`).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        Ok(self.resume_local(state).await?)
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

    /// Lets `resume_session` accept states of `destination` (by its id), as
    /// it does for every destination this provider created a session for. A
    /// provider that did not create the session (a new process) must be told
    /// the destination this way: the root, directories, mounts and read-only
    /// entries of a resumed session always come from the destination, never
    /// from the state. A destination of another provider is ignored.
    fn trust_destination(&self, destination: &RunnerDestination) {
        if destination.provider_id == PROVIDER_ID {
            self.destinations.remember(destination);
        }
    }
}
