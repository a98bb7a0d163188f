#![doc = include_str!("../README.md")]

mod bulk;
mod config;
mod delivery;
mod error;
mod orphans;
mod pause;
mod session;
mod snapshot;
mod socket;
mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerMountCapabilities, RunnerResult, RunnerSessionState,
    RunnerSweepReport, validate_manifest,
};
use runner_kit::KnownDestinations;

pub use config::{DEFAULT_WORKSPACE, DockerConfig, DockerNetwork, DockerTransport};
pub use session::DockerSession;

use crate::error::{Daemon, unavailable_hint};
use crate::session::{SessionMeta, Source};

/// The provider id destinations name: `"docker"`.
pub const PROVIDER_ID: &str = "docker";

/// Prefix of every label this library sets; user labels may not use it.
pub const LABEL_PREFIX: &str = "io.runners.";
/// Marker label on every container and snapshot image this library creates;
/// `sweep_orphans` only ever touches resources carrying it.
pub const LABEL_MARKER: &str = "io.runners.managed-by";
/// The marker label's value.
pub const MARKER_VALUE: &str = "runner-docker";
/// Label naming the session a container or snapshot belongs to.
pub const LABEL_SESSION: &str = "io.runners.session";
/// Label naming the destination a session was created for.
pub const LABEL_DESTINATION: &str = "io.runners.destination";
/// Label naming the creating process: `<hostname>/<boot id>/<pid>/<start time>`.
pub const LABEL_OWNER: &str = "io.runners.owner";
/// Label with the creation time, milliseconds since the Unix epoch.
pub const LABEL_CREATED_MS: &str = "io.runners.created-ms";
/// Label [`KIND_SESSION`] on containers, [`KIND_SNAPSHOT`] on snapshot images.
pub const LABEL_KIND: &str = "io.runners.kind";
/// [`LABEL_KIND`] of a session's container.
pub const KIND_SESSION: &str = "session";
/// [`LABEL_KIND`] of a snapshot image (and so of any container started from
/// one by hand, which inherits it).
pub const KIND_SNAPSHOT: &str = "snapshot";
/// Label `true` on containers of destinations with `keep_on_close`.
pub const LABEL_KEEP: &str = "io.runners.keep";
/// Name prefix of session containers: `runner-<session id>`.
pub const CONTAINER_PREFIX: &str = "runner-";
/// Name prefix of containers whose session was detached (never swept).
pub const DETACHED_PREFIX: &str = "runner-detached-";
/// Repository of snapshot images (tagged with a unique id).
pub const SNAPSHOT_REPOSITORY: &str = "runners-snapshot";

/// How long a new resource is safe from `sweep_orphans` by default.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// What docker sessions can do themselves: everything but artifact export,
/// with mounts of kind `provider_native` (bind mounts). The layer stack
/// (`runner_stack::stacked`) adds the object-store mount kinds and artifact
/// export, through the session's file API.
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
        detachable: true,
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

/// Runs each session in its own container, through the Docker API.
///
/// Settings come from `RunnerDestination.config` (see [`DockerConfig`]). The
/// provider's own settings ([`with_docker_host`](Self::with_docker_host),
/// [`with_orphan_grace`](Self::with_orphan_grace)) only concern
/// [`sweep_orphans`](RemoteRunnerProvider::sweep_orphans) and the setup hint.
///
/// A session it creates is the bare container session: closed-session and
/// capability checks, workspace confinement, object-store mounts and
/// artifact export are layers of `runner_stack::Stack`, composed around it
/// once (`runner_stack::stacked(DockerProvider::new())`).
///
/// `resume_session` and `rejoin_session` take every setting (image policy,
/// user, environment, bind mounts, read-only paths, daemon) from the
/// destination the state names by id, never from the state: the provider
/// knows the destinations it created sessions for, and those given with
/// [`with_destination`](Self::with_destination) or
/// [`trust_destination`](RemoteRunnerProvider::trust_destination).
#[derive(Clone)]
pub struct DockerProvider {
    docker_host: Option<String>,
    orphan_grace: Duration,
    daemons: Arc<Mutex<HashMap<String, Daemon>>>,
    destinations: KnownDestinations,
}

impl std::fmt::Debug for DockerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerProvider")
            .field("docker_host", &self.docker_host)
            .field("orphan_grace", &self.orphan_grace)
            .finish_non_exhaustive()
    }
}

impl Default for DockerProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerProvider {
    /// A provider whose sweep and setup hint use the local socket.
    pub fn new() -> Self {
        Self {
            docker_host: None,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            daemons: Arc::default(),
            destinations: KnownDestinations::default(),
        }
    }

    /// Makes `destination` known for `resume_session` and `rejoin_session`
    /// of states naming its id (a destination passed to `create_session` is
    /// known already; a process that rejoins sessions another process
    /// created gives its destinations here). A later one with the same id
    /// replaces it.
    ///
    /// Errors: `InvalidRequest` or `Unsupported` when the destination does
    /// not validate.
    pub fn with_destination(self, destination: &RunnerDestination) -> RunnerResult<Self> {
        self.checked_config("with_destination", destination)?;
        self.trust_destination(destination);
        Ok(self)
    }

    /// The known destination `state` names and its parsed config.
    ///
    /// Errors: `NotFound` naming the destination when it is not known.
    fn destination_of(
        &self,
        operation: &str,
        state: &RunnerSessionState,
    ) -> RunnerResult<(RunnerDestination, DockerConfig)> {
        let destination =
            self.destinations
                .of_state(operation, state, "DockerProvider::with_destination")?;
        let config = self.checked_config(operation, &destination)?;
        Ok((destination, config))
    }

    /// Sweeps the daemon at `host` (`unix://…`, `tcp://…`) instead of the local socket.
    pub fn with_docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker_host = Some(host.into());
        self
    }

    /// How old an orphan must be before `sweep_orphans` removes it (default
    /// [`DEFAULT_ORPHAN_GRACE`]).
    pub fn with_orphan_grace(mut self, grace: Duration) -> Self {
        self.orphan_grace = grace;
        self
    }

    /// The same as [`sweep_orphans`](RemoteRunnerProvider::sweep_orphans):
    /// removes containers and snapshot images of sessions whose process died.
    pub async fn remove_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        self.sweep_orphans().await
    }

    /// A connected client for `host`, negotiated once and cached.
    ///
    /// Errors: `Unavailable` when the daemon does not answer.
    pub(crate) async fn daemon(&self, host: Option<&str>) -> RunnerResult<Daemon> {
        let key = host.unwrap_or(error::LOCAL_SOCKET).to_string();
        let cached = self
            .daemons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(daemon) = cached {
            return Ok(daemon);
        }
        let daemon = Daemon::connect(host)?;
        let docker = daemon
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| {
                let mapped = daemon.error("connect", &key, e);
                if mapped.kind() == runner_api::RunnerErrorKind::Provider {
                    RunnerError::new(
                        runner_api::RunnerErrorKind::Unavailable,
                        format!("{}: {}", unavailable_hint(&key), mapped.message()),
                    )
                } else {
                    mapped
                }
            })?;
        let daemon = Daemon {
            docker,
            host: daemon.host,
        };
        self.daemons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, daemon.clone());
        Ok(daemon)
    }

    fn check_provider(&self, operation: &str, provider_id: &str) -> RunnerResult<()> {
        if provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: provider {provider_id:?} is not {PROVIDER_ID}"
            )));
        }
        Ok(())
    }

    /// Checks that `destination` is for this provider, parses its config and
    /// checks its manifest against the capabilities (object-store mounts are
    /// the stack's: it hands the provider the manifest without them).
    /// Errors: `InvalidRequest`, `Unsupported`.
    fn checked_config(
        &self,
        operation: &str,
        destination: &RunnerDestination,
    ) -> RunnerResult<DockerConfig> {
        self.check_provider(operation, &destination.provider_id)?;
        let config = DockerConfig::from_destination(destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        Ok(config)
    }

    /// The session metadata of `state` (the container id; anything else
    /// in it is ignored). Errors: `InvalidRequest` when it is not a docker
    /// session's.
    fn meta(operation: &str, state: &RunnerSessionState) -> RunnerResult<SessionMeta> {
        serde_json::from_value(state.metadata.clone()).map_err(|e| {
            RunnerError::invalid_request(format!(
                "{operation}: state metadata is not a docker session's: {e}"
            ))
        })
    }
}

#[async_trait]
impl RemoteRunnerProvider for DockerProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        PROVIDER_ID.to_string()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        capabilities()
    }

    /// Says how to start the daemon when its socket is missing.
    fn setup_hint(&self) -> Option<String> {
        let host = self.docker_host.as_deref().unwrap_or(error::LOCAL_SOCKET);
        let socket = host.strip_prefix("unix://")?;
        (!std::path::Path::new(socket).exists()).then(|| unavailable_hint(host))
    }

    fn default_workspace(&self) -> Option<String> {
        Some(DEFAULT_WORKSPACE.to_string())
    }

    /// Parses the config and checks the manifest against the capabilities;
    /// when the daemon has the image, checks that an agent binary is there
    /// for its platform (`Unsupported` naming the platform and the build
    /// command otherwise). An absent image or an unreachable daemon is left
    /// to `create_session`.
    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        const OP: &str = "validate_destination";
        let config = self.checked_config(OP, destination)?;
        let Ok(daemon) = self.daemon(config.docker_host.as_deref()).await else {
            return Ok(());
        };
        match delivery::image_platform(&daemon, OP, &config.image).await {
            Ok((platform, _)) => delivery::agent_binary(&config, OP, &platform).map(|_| ()),
            Err(_) => Ok(()),
        }
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let config = self.checked_config("create_session", &destination)?;
        self.destinations.remember(&destination);
        let daemon = self.daemon(config.docker_host.as_deref()).await?;
        let session = DockerSession::create(
            daemon,
            config,
            destination.id.clone(),
            Source::Fresh(destination.default_manifest.clone()),
        )
        .await?;
        Ok(Arc::new(session))
    }

    /// With `state.snapshot`: a new container from the snapshot image (a
    /// fork), which must be a snapshot this provider took of the state's
    /// destination; the destination's settings, bind mounts and read-only
    /// paths apply. Without: the same as
    /// [`rejoin_session`](Self::rejoin_session).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        self.check_provider(OP, &state.provider_id)?;
        let Some(snapshot) = &state.snapshot else {
            return self.rejoin_session(state).await;
        };
        self.check_provider(OP, &snapshot.provider_id)?;
        let (destination, config) = self.destination_of(OP, &state)?;
        let daemon = self.daemon(config.docker_host.as_deref()).await?;
        let image = snapshot::locate(&daemon, snapshot, &destination.id).await?;
        let session = DockerSession::create(
            daemon,
            config,
            destination.id.clone(),
            Source::Snapshot {
                image,
                manifest: destination.default_manifest.clone(),
            },
        )
        .await?;
        Ok(Arc::new(session))
    }

    /// Reattaches to the container of a detached (or still running) session
    /// of a known destination, with that destination's settings. The
    /// container must be this library's container of that session
    /// (`NotFound` naming it otherwise, and it is left alone). Commands
    /// started by the earlier handle go on in the agent and are seen by the
    /// new one (`list_commands`, `command_output` from any sequence number).
    async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "rejoin_session";
        self.check_provider(OP, &state.provider_id)?;
        let meta = Self::meta(OP, &state)?;
        let (_, config) = self.destination_of(OP, &state)?;
        let daemon = self.daemon(config.docker_host.as_deref()).await?;
        let session = DockerSession::rejoin(daemon, config, state, meta).await?;
        Ok(Arc::new(session))
    }

    /// Removes containers and snapshot images of sessions whose creating
    /// process is gone (see `docs/providers/docker.md`): only resources with
    /// the marker label, older than the grace period, owned by a dead process
    /// of this host, and neither detached nor kept on close.
    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        let daemon = self.daemon(self.docker_host.as_deref()).await?;
        orphans::sweep(&daemon, self.orphan_grace).await
    }

    /// Remembers `destination` for states naming its id, as
    /// [`with_destination`](DockerProvider::with_destination) does (which
    /// also validates it first).
    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
    }
}
