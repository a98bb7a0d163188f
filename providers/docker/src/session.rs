//! `DockerSession`: one container whose PID 1 is the runner agent, and the
//! agent's session over docker exec connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use runner_agent::AgentSession;
use runner_agent::cli::ServeStatus;
use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCapabilities, RunnerCommandId, RunnerCommandOutput,
    RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerErrorKind, RunnerEventStream,
    RunnerExecutionLease, RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat,
    RunnerFileStream, RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort,
    RunnerManifest, RunnerPortRequest, RunnerPortResult, RunnerProcessInfo, RunnerResult,
    RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
};
use serde::{Deserialize, Serialize};

use crate::bulk;
use crate::config::{DockerConfig, DockerTransport};
use crate::delivery::{self, Owner, ServeSpec};
use crate::error::Daemon;
use crate::orphans::{now_ms, session_container, this_owner};
use crate::pause::Freezer;
use crate::socket::HostSocket;
use crate::transport::Endpoint;
use crate::{
    CONTAINER_PREFIX, DETACHED_PREFIX, KIND_SESSION, LABEL_CREATED_MS, LABEL_DESTINATION,
    LABEL_KEEP, LABEL_KIND, LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, MARKER_VALUE, PROVIDER_ID,
    snapshot,
};

/// `RunnerSessionState.metadata` of a docker session. `rejoin_session` uses
/// only `container_id`: the container's labels, name and entrypoint (the
/// agent binary and socket) are read from the daemon, and settings come
/// from the destination, never from a state that whoever holds it may have
/// changed. The other fields say what the session is, for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// The container's id.
    pub(crate) container_id: String,
    /// The container's name.
    #[serde(default)]
    pub(crate) container_name: String,
    /// The image the container started from.
    #[serde(default)]
    pub(crate) image: String,
    /// The delivered agent binary, a container path.
    #[serde(default)]
    pub(crate) agent: String,
    /// The agent's socket, a container path.
    #[serde(default)]
    pub(crate) socket: String,
    /// How this handle reaches the agent: `socket` or `exec`.
    #[serde(default)]
    pub(crate) transport: DockerTransport,
}

/// Where a new container comes from.
pub(crate) enum Source {
    /// The configured image, with the destination's manifest applied.
    Fresh(RunnerManifest),
    /// A snapshot image: the manifest's entries are already inside; its
    /// bind mounts are applied again.
    Snapshot {
        /// The image id.
        image: String,
        /// The destination's manifest (its `provider_native` part).
        manifest: RunnerManifest,
    },
}

/// A docker session: a container whose PID 1 is the runner agent serving
/// unix-local's session, reached through one docker exec of
/// `runner-agent connect` per connection (a lost one is made again).
///
/// Every call but the lifecycle goes to the agent, as the session's user:
/// commands, files, archives, ports, leases. Docker's own part is the
/// container: its state (`rejoin_session` reconnects to it), pausing by
/// `docker pause`, snapshots by `docker commit`, detaching, and removal on
/// `close`.
///
/// Created by [`DockerProvider`](crate::DockerProvider) bare: refusing calls
/// after [`close`](RemoteRunnerSession::close) or `detach`, and calls of
/// capabilities it does not claim, is the stack's correctness layer
/// (`runner_stack::stacked`). A session dropped without `close` leaves its
/// container running, for `rejoin_session` or `sweep_orphans`.
pub struct DockerSession {
    inner: Arc<dyn RemoteRunnerSession>,
    agent: AgentSession,
    session_id: String,
    destination_id: String,
    config: DockerConfig,
    daemon: Daemon,
    meta: SessionMeta,
    /// The container's host socket directory, removed with the container.
    host_socket: Option<HostSocket>,
    freezer: Freezer,
    closed: AtomicBool,
}

impl std::fmt::Debug for DockerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSession")
            .field("session_id", &self.session_id)
            .field("container", &self.meta.container_id)
            .field("image", &self.meta.image)
            .finish_non_exhaustive()
    }
}

/// The first 12 characters of a container id.
pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn labels(
    config: &DockerConfig,
    session_id: &str,
    destination_id: &str,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
        (LABEL_SESSION.to_string(), session_id.to_string()),
        (LABEL_DESTINATION.to_string(), destination_id.to_string()),
        (LABEL_OWNER.to_string(), this_owner().to_string()),
        (LABEL_CREATED_MS.to_string(), now_ms().to_string()),
        (LABEL_KIND.to_string(), KIND_SESSION.to_string()),
    ]);
    // Always set: a fork must not inherit `true` from its snapshot image.
    labels.insert(LABEL_KEEP.to_string(), config.keep_on_close.to_string());
    labels
}

fn remove_options() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build()
}

/// Whether `user` (`name`, `uid`, `name:group`, `uid:gid`) needs the
/// image's `/etc/passwd` or `/etc/group` to be resolved to numbers.
fn needs_lookup(user: Option<&str>) -> bool {
    user.is_some_and(|user| {
        let (name, group) = user.split_once(':').unwrap_or((user, "0"));
        name.parse::<u64>().is_err() || group.parse::<u64>().is_err() || !user.contains(':')
    })
}

/// The host socket directory of a new session whose agent runs as `user`,
/// when its transport may be `socket`: always for `socket` (which needs a
/// local daemon, and an agent user the directory can be given to), for
/// `auto` when those hold and the directory can be made.
///
/// Errors (`socket` only): `InvalidRequest` for a daemon that is not
/// local or a user the directory cannot be given to, the directory's own.
fn host_socket(
    config: &DockerConfig,
    local_daemon: bool,
    user: Option<&str>,
    session_id: &str,
) -> RunnerResult<Option<HostSocket>> {
    let strict = config.transport == DockerTransport::Socket;
    let unusable = if !local_daemon {
        Some("needs a local daemon (a unix:// docker_host)".to_string())
    } else if !HostSocket::can_serve(user) {
        Some(format!(
            "cannot give the socket directory to the session's user {:?}: only a caller running \
             as root, or as that user, can",
            user.unwrap_or_default()
        ))
    } else {
        None
    };
    match (config.transport, unusable) {
        (DockerTransport::Exec, _) => Ok(None),
        (_, Some(why)) if strict => Err(RunnerError::invalid_request(format!(
            "create_session: transport \"socket\" {why}; use \"exec\" or \"auto\""
        ))),
        (_, Some(why)) => {
            tracing::debug!(reason = %why, "docker: the session takes the exec transport");
            Ok(None)
        }
        (DockerTransport::Socket, None) => HostSocket::create(config, session_id).map(Some),
        (DockerTransport::Auto, None) => match HostSocket::create(config, session_id) {
            Ok(host) => Ok(Some(host)),
            Err(e) => {
                tracing::info!(error = %e, "docker: no host socket directory; the session takes the exec transport");
                Ok(None)
            }
        },
    }
}

/// Connects to the agent `endpoint` names: through `host` when given and
/// the agent's socket is there, else by exec. With `transport: "socket"` a
/// host socket that is missing or refuses is an error; with `auto` the exec
/// transport takes over. Returns the session and the endpoint it uses.
///
/// Errors: `Unavailable` naming the socket (`socket` transport), the
/// agent's handshake errors.
async fn connect(
    operation: &str,
    config: &DockerConfig,
    endpoint: Endpoint,
    host: Option<&HostSocket>,
) -> RunnerResult<(AgentSession, Endpoint)> {
    let strict = config.transport == DockerTransport::Socket;
    if let Some(host) = host {
        let direct = Endpoint {
            host_socket: Some(host.socket()),
            ..endpoint.clone()
        };
        let failure = if host.is_served() {
            match AgentSession::connect(direct.clone().connector()).await {
                Ok(agent) => return Ok((agent, direct)),
                Err(e) if e.kind() == RunnerErrorKind::Unavailable => e,
                Err(e) => return Err(e),
            }
        } else {
            RunnerError::new(
                RunnerErrorKind::Unavailable,
                format!(
                    "{operation}: the agent's socket did not appear at {} (the daemon does not \
                     share this machine's filesystem)",
                    host.socket().display()
                ),
            )
        };
        if strict {
            return Err(failure);
        }
        tracing::info!(error = %failure, "docker: the host socket does not answer; the session takes the exec transport");
    } else if strict {
        return Err(RunnerError::new(
            RunnerErrorKind::Unavailable,
            format!(
                "{operation}: the container of transport \"socket\" has no host socket directory"
            ),
        ));
    }
    let agent = AgentSession::connect(endpoint.clone().connector()).await?;
    Ok((agent, endpoint))
}

impl DockerSession {
    /// Creates a container for a new session, delivers the agent into it,
    /// starts it and connects. Checks the image's platform against the
    /// agent binaries before anything is created.
    ///
    /// Errors: `NotFound` for an absent image (named), `Unsupported` when no
    /// agent binary is for the image's platform, the agent's error when it
    /// failed to open its session (the container is removed then), the
    /// daemon's.
    pub(crate) async fn create(
        daemon: Daemon,
        config: DockerConfig,
        destination_id: String,
        source: Source,
    ) -> RunnerResult<Self> {
        const OP: &str = "create_session";
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let local_daemon = daemon.host.starts_with("unix://");
        let (image, manifest, fresh) = match source {
            Source::Fresh(manifest) => (config.image.clone(), manifest, true),
            Source::Snapshot { image, manifest } => (image, manifest, false),
        };
        let (platform, image_user) = delivery::image_platform(&daemon, OP, &image).await?;
        let binary = delivery::agent_binary(&config, OP, &platform)?;
        let placement = delivery::place(&manifest, fresh, local_daemon)?;
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for port in &config.ports {
            let key = format!("{port}/tcp");
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("0".into()),
                }]),
            );
        }
        let user = config.user.clone().or(image_user);
        let mut host_socket = host_socket(&config, local_daemon, user.as_deref(), &session_id)?;
        let binds = placement.binds.clone();
        let body = |host_socket: Option<&HostSocket>| ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(delivery::entrypoint(&ServeSpec {
                config: &config,
                binary: &binary,
                session_id: &session_id,
                destination_id: &destination_id,
                manifest: &placement.agent,
                socket_from_host: host_socket.is_some(),
            })),
            cmd: Some(Vec::new()),
            user: config.user.clone(),
            working_dir: Some(config.workspace_dir.display().to_string()),
            labels: Some(labels(&config, &session_id, &destination_id)),
            exposed_ports: (!exposed.is_empty()).then(|| exposed.clone()),
            host_config: Some(HostConfig {
                // PID 1 is the agent's own `init`.
                init: Some(false),
                memory: config.memory,
                nano_cpus: config.cpus.map(|c| (c * 1e9) as i64),
                pids_limit: config.pids_limit,
                network_mode: Some(config.network.mode().to_string()),
                port_bindings: (!port_bindings.is_empty()).then(|| port_bindings.clone()),
                binds: (!binds.is_empty()).then(|| binds.clone()),
                mounts: host_socket.map(|host| vec![host.mount(&session_id)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("{CONTAINER_PREFIX}{session_id}");
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut created = daemon
            .docker
            .create_container(Some(options.clone()), body(host_socket.as_ref()))
            .await;
        if let (Err(e), Some(host)) = (&created, &host_socket)
            && config.transport == DockerTransport::Auto
            && e.to_string().contains("bind source path does not exist")
        {
            // The daemon does not see this machine's filesystem.
            tracing::info!(session_id = %session_id, "docker: the daemon cannot mount the host socket directory; the session takes the exec transport");
            host.remove();
            host_socket = None;
            created = daemon
                .docker
                .create_container(Some(options), body(None))
                .await;
        }
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                if let Some(host) = &host_socket {
                    host.remove();
                }
                return Err(daemon.error(OP, &image, e));
            }
        };
        let container = created.id;
        let started = async {
            let (passwd, group) = if needs_lookup(user.as_deref()) {
                (
                    delivery::read_small_file(&daemon, &container, "/etc/passwd").await?,
                    delivery::read_small_file(&daemon, &container, "/etc/group").await?,
                )
            } else {
                Default::default()
            };
            let owner: Owner = delivery::resolve_owner(OP, user.as_deref(), &passwd, &group)?;
            if let Some(host) = &host_socket {
                host.give_to(owner)?;
            }
            let agent = delivery::agent_path(&binary);
            delivery::deliver(
                &daemon,
                &container,
                binary,
                config.workspace_dir.clone(),
                owner,
                placement,
            )
            .await?;
            daemon
                .docker
                .start_container(&container, None::<StartContainerOptions>)
                .await
                .map_err(|e| daemon.error(OP, &container, e))?;
            match delivery::status(&daemon, &container).await? {
                ServeStatus::Ready { agent, .. } => agent.check_protocol()?,
                ServeStatus::Failed { kind, message } => {
                    return Err(delivery::failed(kind, message));
                }
            }
            let endpoint = Endpoint {
                daemon: daemon.clone(),
                container: container.clone(),
                user: config.user.clone(),
                agent,
                socket: delivery::socket_path(&session_id),
                host_socket: None,
            };
            connect(OP, &config, endpoint, host_socket.as_ref()).await
        }
        .await;
        let (agent, endpoint) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = daemon
                    .docker
                    .remove_container(&container, Some(remove_options()))
                    .await;
                if let Some(host) = &host_socket {
                    host.remove();
                }
                return Err(e);
            }
        };
        let transport = endpoint.transport();
        tracing::info!(
            session_id = %session_id,
            container = %short(&container),
            image = %image,
            transport = transport.as_str(),
            "docker session started"
        );
        let meta = SessionMeta {
            container_id: container.clone(),
            container_name: name,
            image,
            agent: endpoint.agent,
            socket: endpoint.socket,
            transport,
        };
        let freezer = Freezer::new(daemon.clone(), container, false);
        Ok(Self::assemble(
            agent,
            (session_id, destination_id),
            config,
            daemon,
            meta,
            host_socket,
            freezer,
        ))
    }

    /// The handle over `agent`, with `(session id, destination id)`.
    fn assemble(
        agent: AgentSession,
        (session_id, destination_id): (String, String),
        config: DockerConfig,
        daemon: Daemon,
        meta: SessionMeta,
        host_socket: Option<HostSocket>,
        freezer: Freezer,
    ) -> Self {
        Self {
            inner: Arc::new(agent.clone()),
            agent,
            session_id,
            destination_id,
            config,
            daemon,
            meta,
            host_socket,
            freezer,
            closed: AtomicBool::new(false),
        }
    }

    /// A new handle on the container of `state`, with the settings of the
    /// destination (`config`): the agent binary and socket are those of the
    /// container's entrypoint. A stopped container is started again (its
    /// agent opens a new session over the same workspace); a paused one
    /// stays paused.
    ///
    /// Errors: `NotFound` naming the container when it is gone, or when it
    /// is not this library's container of that session and destination (the
    /// marker, kind, session, destination and owner labels and the name are
    /// checked; such a container is left alone); `Unavailable` when its
    /// agent does not answer.
    pub(crate) async fn rejoin(
        daemon: Daemon,
        config: DockerConfig,
        state: RunnerSessionState,
        meta: SessionMeta,
    ) -> RunnerResult<Self> {
        const OP: &str = "rejoin_session";
        let requested = &meta.container_id;
        if requested.is_empty() || requested.contains(['\0', '/']) {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: container id {requested:?} of session {} is empty or holds '/' or a NUL byte",
                state.session_id
            )));
        }
        let inspect = daemon
            .docker
            .inspect_container(requested, None)
            .await
            .map_err(|e| {
                let mapped = daemon.error(OP, requested, e);
                if mapped.kind() == RunnerErrorKind::NotFound {
                    RunnerError::not_found(format!(
                        "{OP}: the container {} of session {} no longer exists",
                        short(requested),
                        state.session_id
                    ))
                } else {
                    mapped
                }
            })?;
        let container_config = inspect.config.clone().unwrap_or_default();
        let labels = container_config.labels.clone().unwrap_or_default();
        let name = inspect.name.clone().unwrap_or_default();
        let not_ours = || {
            RunnerError::not_found(format!(
                "{OP}: container {requested} is not the container of docker session {} of \
                 destination {:?} (its labels, name or entrypoint are not this library's); it is \
                 left alone",
                state.session_id, state.destination_id
            ))
        };
        if !session_container(&labels, &name, &state.session_id, &state.destination_id) {
            return Err(not_ours());
        }
        let entrypoint = container_config.entrypoint.unwrap_or_default();
        let agent = entrypoint
            .first()
            .filter(|path| path.starts_with(&format!("{}/runner-agent-", delivery::RUNNER_DIR)))
            .cloned()
            .ok_or_else(not_ours)?;
        let socket = [
            delivery::socket_path(&state.session_id),
            delivery::legacy_socket_path(&state.session_id),
        ]
        .into_iter()
        .find(|socket| entrypoint.contains(socket))
        .ok_or_else(not_ours)?;
        let host_socket = inspect
            .mounts
            .as_deref()
            .and_then(|mounts| HostSocket::of_mounts(mounts, &state.session_id));
        let container = inspect.id.clone().unwrap_or_else(|| requested.clone());
        let run_state = inspect.state.unwrap_or_default();
        let paused = run_state.paused == Some(true);
        if run_state.running != Some(true) {
            daemon
                .docker
                .start_container(&container, None::<StartContainerOptions>)
                .await
                .map_err(|e| daemon.error(OP, &container, e))?;
        }
        let endpoint = Endpoint {
            daemon: daemon.clone(),
            container: container.clone(),
            user: config.user.clone(),
            agent,
            socket,
            host_socket: None,
        };
        let freezer = Freezer::new(daemon.clone(), container.clone(), paused);
        let usable = host_socket
            .as_ref()
            .filter(|_| config.transport != DockerTransport::Exec);
        let (agent, endpoint) = {
            let _hold = freezer.hold(OP).await?;
            connect(OP, &config, endpoint, usable).await?
        };
        let transport = endpoint.transport();
        tracing::info!(session_id = %state.session_id, container = %short(&container), transport = transport.as_str(), "docker session rejoined");
        let meta = SessionMeta {
            container_id: container,
            container_name: name.trim_start_matches('/').to_string(),
            image: container_config.image.unwrap_or_default(),
            agent: endpoint.agent,
            socket: endpoint.socket,
            transport,
        };
        Ok(Self::assemble(
            agent,
            (state.session_id, state.destination_id),
            config,
            daemon,
            meta,
            host_socket,
            freezer,
        ))
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The container's id.
    pub fn container_id(&self) -> &str {
        &self.meta.container_id
    }

    /// The agent session every call goes through.
    pub fn agent(&self) -> &AgentSession {
        &self.agent
    }

    /// Whether large files take the archive API: over the exec transport,
    /// whose stream is slower than docker cp, when the agent stages; the
    /// host socket carries them faster itself.
    fn stages_bulk(&self) -> bool {
        self.agent.stages() && self.meta.transport == DockerTransport::Exec
    }

    /// The agent's `SessionClosed` or `Unavailable` on a session this
    /// handle did not close, told apart: when the daemon itself cannot be
    /// reached (the agent's container was stopped with it), `Unavailable`
    /// with the daemon's hint; anything else as it was.
    async fn explain(&self, error: RunnerError) -> RunnerError {
        if !matches!(
            error.kind(),
            RunnerErrorKind::SessionClosed | RunnerErrorKind::Unavailable
        ) || self.closed.load(Ordering::SeqCst)
        {
            return error;
        }
        match self
            .daemon
            .docker
            .inspect_container(&self.meta.container_id, None)
            .await
        {
            Err(e) => {
                let daemon = self.daemon.error("inspect", &self.meta.container_id, e);
                if daemon.kind() == RunnerErrorKind::Unavailable {
                    RunnerError::new(
                        RunnerErrorKind::Unavailable,
                        format!("{}; {}", error.message(), daemon.message()),
                    )
                } else {
                    error
                }
            }
            Ok(_) => error,
        }
    }

    /// Ends the container after the agent closed: stopped with
    /// `keep_on_close`, removed otherwise (a container already gone is fine).
    async fn end_container(&self) -> RunnerResult<()> {
        const OP: &str = "close";
        let docker = &self.daemon.docker;
        let container = &self.meta.container_id;
        let ended = if self.config.keep_on_close {
            let stop = StopContainerOptionsBuilder::new().t(1).build();
            docker.stop_container(container, Some(stop)).await
        } else {
            docker
                .remove_container(container, Some(remove_options()))
                .await
        };
        let ended = match ended {
            Ok(()) => {
                tracing::info!(session_id = %self.session_id, container = %short(container), "docker session closed");
                Ok(())
            }
            // 304: stopped already (the agent, PID 1, exited).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => match self.daemon.error(OP, container, e) {
                e if e.kind() == RunnerErrorKind::NotFound => Ok(()),
                e => Err(e),
            },
        };
        // A kept container mounts its host socket directory again when it starts.
        if ended.is_ok()
            && !self.config.keep_on_close
            && let Some(host) = &self.host_socket
        {
            host.remove();
        }
        ended
    }
}

/// Wraps a stream so that `hold` lasts as long as the stream.
fn holding<S: futures_util::Stream + Send + 'static>(
    stream: S,
    hold: crate::pause::Hold,
) -> impl futures_util::Stream<Item = S::Item> + Send + 'static
where
    S::Item: Send,
{
    stream.map(move |item| {
        let _ = &hold;
        item
    })
}

/// The session's [`LayeredSession`] implementation: the calls in `held`
/// forward to the agent with the container held running (see
/// [`crate::pause`]); `own` are docker's.
macro_rules! layered {
    (
        held { $( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )* }
        own { $($own:tt)* }
    ) => {
        #[async_trait]
        impl LayeredSession for DockerSession {
            fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
                &self.inner
            }

            $(
                async fn $name(&self $(, $arg: $ty)*) -> RunnerResult<$ret> {
                    let _hold = self.freezer.hold(stringify!($name)).await?;
                    match self.inner.$name($($arg),*).await {
                        Err(e) => Err(self.explain(e).await),
                        done => done,
                    }
                }
            )*

            $($own)*
        }
    };
}

layered! {
    held {
        fn run_command(&self, request: RunnerCommandRequest) -> RunnerCommandResult;
        fn cancel_command(&self, command_id: &RunnerCommandId) -> bool;
        fn start_command(&self, request: RunnerCommandRequest) -> RunnerProcessInfo;
        fn list_commands(&self) -> Vec<RunnerProcessInfo>;
        fn command_status(&self, command_id: &RunnerCommandId) -> RunnerProcessInfo;
        fn command_output(&self, command_id: &RunnerCommandId, after_seq: u64) -> RunnerCommandOutput;
        fn write_stdin(&self, command_id: &RunnerCommandId, bytes: Vec<u8>, close: bool) -> ();
        fn signal_command(&self, command_id: &RunnerCommandId, signal: RunnerSignal) -> ();
        fn write_file_stream(&self, request: RunnerFileWriteRequest, body: RunnerByteStream) -> ();
        fn list_dir(&self, path: &Path) -> Vec<RunnerFileStat>;
        fn stat(&self, path: &Path) -> RunnerFileStat;
        fn remove(&self, path: &Path, recursive: bool) -> ();
        fn make_dir(&self, path: &Path) -> ();
        fn rename(&self, from: &Path, to: &Path) -> ();
        fn canonicalize(&self, path: &Path) -> PathBuf;
        fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> ();
        fn upload_archive_stream(&self, target: &Path, archive: RunnerByteStream) -> ();
        fn download_archive(&self, path: &Path) -> Vec<u8>;
        fn expose_port(&self, request: RunnerPortRequest) -> RunnerPortResult;
        fn list_listening_ports(&self) -> Vec<RunnerListeningPort>;
        fn sync_mounts(&self) -> ();
        fn export_artifact(&self, request: RunnerArtifactExportRequest) -> RunnerArtifactExportResult;
        fn acquire_workspace_execution_lease(&self, request: RunnerLeaseRequest) -> RunnerExecutionLease;
        fn renew_workspace_execution_lease(&self, lease: &RunnerExecutionLease, ttl_ms: u64) -> RunnerExecutionLease;
        fn release_workspace_execution_lease(&self, lease: &RunnerExecutionLease) -> ();
    }
    own {
        fn state(&self) -> RunnerSessionState {
            RunnerSessionState {
                provider_id: PROVIDER_ID.to_string(),
                session_id: self.session_id.clone(),
                destination_id: self.destination_id.clone(),
                snapshot: None,
                metadata: serde_json::to_value(&self.meta).unwrap_or_default(),
            }
        }

        fn capabilities(&self) -> RunnerCapabilities {
            crate::capabilities()
        }

        fn workspace_root(&self) -> PathBuf {
            self.config.workspace_dir.clone()
        }

        /// The agent stops every command's process group and refuses new
        /// commands, then the container is frozen (`docker pause`); calls
        /// while paused thaw it for their length.
        async fn pause(&self) -> RunnerResult<RunnerSessionState> {
            let mut state = self.freezer.lock().await;
            if !state.paused {
                self.inner.pause().await?;
                self.freezer.freeze("pause", &mut state).await?;
                tracing::info!(session_id = %self.session_id, "docker session paused");
            }
            Ok(LayeredSession::state(self))
        }

        /// Thaws the container, then the agent continues the commands.
        async fn resume(&self) -> RunnerResult<RunnerSessionState> {
            let mut state = self.freezer.lock().await;
            let was_paused = state.paused;
            self.freezer.unfreeze("resume", &mut state).await?;
            self.inner.resume().await?;
            if was_paused {
                tracing::info!(session_id = %self.session_id, "docker session resumed");
            }
            Ok(LayeredSession::state(self))
        }

        /// Releases this handle: its connection to the agent closes, the
        /// agent and its commands keep running, and the container is renamed
        /// `runner-detached-<session id>`, which `sweep_orphans` never
        /// removes.
        async fn detach(&self) -> RunnerResult<RunnerSessionState> {
            const OP: &str = "detach";
            let name = format!("{DETACHED_PREFIX}{}", self.session_id);
            let docker = &self.daemon.docker;
            let container = &self.meta.container_id;
            let current = docker
                .inspect_container(container, None)
                .await
                .map_err(|e| self.daemon.error(OP, container, e))?
                .name
                .unwrap_or_default();
            if current.trim_start_matches('/') != name {
                let options = RenameContainerOptionsBuilder::new().name(&name).build();
                docker
                    .rename_container(container, options)
                    .await
                    .map_err(|e| self.daemon.error(OP, container, e))?;
            }
            self.closed.store(true, Ordering::SeqCst);
            self.agent.client().disconnect().await;
            tracing::info!(session_id = %self.session_id, "docker session detached");
            let mut state = LayeredSession::state(self);
            if let Some(meta) = state.metadata.as_object_mut() {
                meta.insert("container_name".into(), name.into());
            }
            Ok(state)
        }

        /// The agent closes its session (every process of it ends) and
        /// exits; then the container is removed, or stopped with
        /// `keep_on_close`. An agent that cannot be reached (a daemon that
        /// restarted, a container that stopped) does not keep the container.
        async fn close(&self) -> RunnerResult<()> {
            if self.closed.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            {
                let mut state = self.freezer.lock().await;
                if state.paused {
                    self.freezer.unfreeze("close", &mut state).await?;
                    if let Err(e) = self.inner.resume().await {
                        tracing::debug!(error = %e, "resuming the agent before close");
                    }
                }
            }
            if let Err(e) = self.inner.close().await {
                tracing::debug!(session_id = %self.session_id, error = %e, "closing the agent's session");
            }
            self.end_container().await
        }

        async fn stream_command(
            &self,
            command_id: &RunnerCommandId,
            after_seq: u64,
        ) -> RunnerResult<RunnerEventStream> {
            let hold = self.freezer.hold("stream_command").await?;
            let events = self.inner.stream_command(command_id, after_seq).await?;
            Ok(Box::pin(holding(events, hold)))
        }

        /// Large reads over the exec transport take the archive API ([`crate::bulk`]).
        async fn read_file(&self, request: RunnerFileReadRequest) -> RunnerResult<RunnerFileReadResult> {
            let _hold = self.freezer.hold("read_file").await?;
            let read = if self.stages_bulk() {
                bulk::read(&self.daemon, &self.meta.container_id, &self.agent, request).await
            } else {
                self.inner.read_file(request).await
            };
            match read {
                Err(e) => Err(self.explain(e).await),
                done => done,
            }
        }

        /// Large writes over the exec transport take the archive API ([`crate::bulk`]).
        async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
            let _hold = self.freezer.hold("write_file").await?;
            let written = if self.stages_bulk() && request.contents.len() >= bulk::BULK_BYTES {
                bulk::write(&self.daemon, &self.meta.container_id, &self.agent, request).await
            } else {
                self.inner.write_file(request).await
            };
            match written {
                Err(e) => Err(self.explain(e).await),
                done => done,
            }
        }

        async fn read_file_stream(
            &self,
            request: RunnerFileReadRequest,
        ) -> RunnerResult<RunnerFileStream> {
            let hold = self.freezer.hold("read_file").await?;
            let file = self.inner.read_file_stream(request).await?;
            Ok(RunnerFileStream {
                bytes: Box::pin(holding(file.bytes, hold)),
                ..file
            })
        }

        async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
            let hold = self.freezer.hold("download_archive").await?;
            let archive = self.inner.download_archive_stream(path).await?;
            Ok(Box::pin(holding(archive, hold)))
        }

        /// Commits the container to a labelled image; the reference names
        /// the image and the session, never the destination's settings. A
        /// session resumed from it is a new container of that image, with
        /// the agent delivered again.
        async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
            let _hold = self.freezer.hold("snapshot").await?;
            snapshot::take(
                &self.daemon,
                &self.meta.container_id,
                &self.session_id,
                &self.destination_id,
            )
            .await
        }
    }
}
