//! `DockerSession`: one container and the commands started in it.

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
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCapabilities, RunnerCommandId,
    RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerErrorKind,
    RunnerEventStream, RunnerExecutionLease, RunnerFileReadRequest, RunnerFileStat,
    RunnerFileStream, RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort,
    RunnerManifest, RunnerMountKind, RunnerPortRequest, RunnerPortResult, RunnerProcessInfo,
    RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
};
use runner_kit::{ProcessTable, ProcessTableConfig, ReadOnlyPaths};
use serde::{Deserialize, Serialize};

use crate::config::DockerConfig;
use crate::error::{Daemon, join_error};
use crate::exec::{self, ExecContext, Freezer, Identity, Running, absolute, short};
use crate::files::directories_tar;
use crate::orphans::{now_ms, session_container, this_owner};
use crate::ports::Forwarders;
use crate::{
    CONTAINER_PREFIX, DETACHED_PREFIX, LABEL_CREATED_MS, LABEL_DESTINATION, LABEL_KEEP, LABEL_KIND,
    LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, MARKER_VALUE, PROVIDER_ID, snapshot,
};

/// Directory in the container for the provider's per-command state files.
const STATE_DIR: &str = "/tmp/.runner";

/// What a fresh container gets after it starts (a fork has it already).
#[derive(Default)]
struct Setup {
    /// Plain directories of mounts without a host path.
    plain_dirs: Vec<PathBuf>,
    /// A tar of the manifest entries, named by their targets.
    entries: Option<Vec<u8>>,
    /// The entries' absolute targets, given to the session user.
    entry_targets: Vec<PathBuf>,
}

/// Keeps the container alive; commands run beside it through exec.
const KEEPALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// `RunnerSessionState.metadata` of a docker session: the container id and
/// nothing else. Settings (user, binds, daemon, read-only paths) come from the
/// destination on rejoin and resume, never from a state, which whoever holds
/// it may have changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// The container's id.
    pub(crate) container_id: String,
}

/// Where a new container comes from.
pub(crate) enum Source {
    /// The configured image, with the destination's manifest applied.
    Fresh(RunnerManifest),
    /// A snapshot image: the manifest's files are already inside; its bind
    /// mounts and read-only paths are applied again.
    Snapshot {
        /// The image id.
        image: String,
        /// The destination's manifest (its `provider_native` part).
        manifest: RunnerManifest,
    },
}

/// A docker session: one container, commands and file helpers run in it
/// through exec, file contents and archives streamed on their stdin and
/// stdout.
///
/// Created by [`DockerProvider`](crate::DockerProvider) bare: refusing calls
/// after [`close`](RemoteRunnerSession::close) or `detach`, and calls of
/// capabilities it does not claim, is the stack's correctness layer
/// (`runner_stack::stacked`). A session dropped without `close` leaves its
/// container running, for `rejoin_session` or `sweep_orphans`.
pub struct DockerSession {
    session_id: String,
    destination_id: String,
    config: DockerConfig,
    ctx: Arc<ExecContext>,
    read_only: ReadOnlyPaths,
    table: ProcessTable,
    forwarders: Forwarders,
    closed: AtomicBool,
    paused: AtomicBool,
    /// Held shared by file operations on a running container and exclusively
    /// by `pause`, `resume` and the thaw of a paused one, which the file
    /// operations on it share.
    freezer: Freezer,
}

impl std::fmt::Debug for DockerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSession")
            .field("session_id", &self.session_id)
            .field("container", &self.ctx.container)
            .field("image", &self.config.image)
            .finish_non_exhaustive()
    }
}

/// The paths of a manifest the file API refuses to write: read-only mounts
/// and entries.
fn read_only_paths(config: &DockerConfig, manifest: &RunnerManifest) -> ReadOnlyPaths {
    let mut read_only = ReadOnlyPaths::default();
    read_only.extend(
        manifest
            .mounts
            .iter()
            .filter(|mount| mount.read_only)
            .map(|mount| absolute(&config.workspace_dir, &mount.path)),
    );
    read_only.extend(ReadOnlyPaths::from_manifest(
        &config.workspace_dir,
        &manifest.entries,
    ));
    read_only
}

/// Bind mounts (`host:container[:ro]`) and plain directories of a manifest.
fn mounts(
    config: &DockerConfig,
    manifest: &RunnerManifest,
    local_daemon: bool,
) -> RunnerResult<(Vec<String>, Vec<PathBuf>)> {
    let mut binds = Vec::new();
    let mut plain_dirs = Vec::new();
    for mount in &manifest.mounts {
        let what = format!("mount {:?}", mount.name);
        if mount.intent.kind != RunnerMountKind::ProviderNative {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!("{what}: only provider_native mounts are supported by the docker provider"),
            ));
        }
        let target = absolute(&config.workspace_dir, &mount.path);
        let host = mount
            .intent
            .uri
            .strip_prefix("file://")
            .unwrap_or(&mount.intent.uri);
        if host.is_empty() {
            plain_dirs.push(target);
            continue;
        }
        let host = Path::new(host);
        if !host.is_absolute() {
            return Err(RunnerError::invalid_request(format!(
                "{what}: host path {} must be absolute",
                host.display()
            )));
        }
        if local_daemon && !host.exists() {
            return Err(RunnerError::not_found(format!(
                "{what}: host path {} not found",
                host.display()
            )));
        }
        let suffix = if mount.read_only { ":ro" } else { "" };
        binds.push(format!("{}:{}{suffix}", host.display(), target.display()));
    }
    Ok((binds, plain_dirs))
}

/// A tar of the manifest entries, named by their targets. Blocking.
fn entries_tar(manifest: &RunnerManifest) -> RunnerResult<Option<Vec<u8>>> {
    if manifest.entries.is_empty() {
        return Ok(None);
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    for entry in &manifest.entries {
        let source = &entry.source;
        let what = format!("manifest entry {}", source.display());
        let meta = std::fs::symlink_metadata(source).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RunnerError::not_found(format!("{what}: source not found"))
            } else {
                RunnerError::from_io(&what, source.display(), e)
            }
        })?;
        let added = if meta.is_dir() {
            builder.append_dir_all(&entry.target, source)
        } else {
            builder.append_path_with_name(source, &entry.target)
        };
        added.map_err(|e| RunnerError::from_io(&what, source.display(), e))?;
    }
    builder
        .into_inner()
        .map(Some)
        .map_err(|e| RunnerError::from_io("manifest", "archive", e))
}

impl DockerSession {
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
            (LABEL_KIND.to_string(), "session".to_string()),
        ]);
        // Always set: a fork must not inherit `true` from its snapshot image.
        labels.insert(LABEL_KEEP.to_string(), config.keep_on_close.to_string());
        labels
    }

    /// Where the commands and file helpers of `container` run: the
    /// configured user, environment and workspace (owner learned later).
    fn exec_context(
        daemon: Daemon,
        container: String,
        config: &DockerConfig,
        session_id: &str,
    ) -> Arc<ExecContext> {
        Arc::new(ExecContext {
            daemon,
            container,
            user: config.user.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workspace: config.workspace_dir.clone(),
            state_dir: STATE_DIR.to_string(),
            session_id: session_id.to_string(),
            max_upload_bytes: config.max_upload_bytes,
            owner: std::sync::OnceLock::new(),
        })
    }

    /// Creates and starts a container for a new session.
    pub(crate) async fn create(
        daemon: Daemon,
        config: DockerConfig,
        destination_id: String,
        source: Source,
    ) -> RunnerResult<Self> {
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let local_daemon = daemon.host.starts_with("unix://");
        let (image, manifest, fresh) = match source {
            Source::Fresh(manifest) => (config.image.clone(), manifest, true),
            Source::Snapshot { image, manifest } => (image, manifest, false),
        };
        let (binds, plain_dirs) = mounts(&config, &manifest, local_daemon)?;
        let read_only = read_only_paths(&config, &manifest);
        // A snapshot holds the directories and entries already.
        let setup = if fresh {
            let entry_targets: Vec<PathBuf> = manifest
                .entries
                .iter()
                .map(|entry| absolute(&config.workspace_dir, &entry.target))
                .collect();
            let entries = tokio::task::spawn_blocking(move || entries_tar(&manifest))
                .await
                .map_err(|e| join_error("create_session", e))??;
            Setup {
                plain_dirs,
                entries,
                entry_targets,
            }
        } else {
            Setup::default()
        };
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
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec!["sh".into(), "-c".into(), KEEPALIVE.into()]),
            cmd: Some(Vec::new()),
            user: config.user.clone(),
            working_dir: Some(config.workspace_dir.display().to_string()),
            labels: Some(Self::labels(&config, &session_id, &destination_id)),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                init: Some(config.init),
                memory: config.memory,
                nano_cpus: config.cpus.map(|c| (c * 1e9) as i64),
                pids_limit: config.pids_limit,
                network_mode: Some(config.network.mode().to_string()),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                binds: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("{CONTAINER_PREFIX}{session_id}");
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = daemon
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                let mapped = daemon.error("create_session", &name, e);
                if mapped.kind() == RunnerErrorKind::NotFound {
                    RunnerError::not_found(format!(
                        "create_session: image {image:?} is not present on the Docker daemon at \
                         {}; build, load or pull it first (the provider never pulls): {}",
                        daemon.host,
                        mapped.message()
                    ))
                } else {
                    mapped
                }
            })?;
        let ctx = Self::exec_context(daemon.clone(), created.id.clone(), &config, &session_id);
        let prepared = Self::prepare(&ctx, &config, setup).await;
        if let Err(e) = prepared {
            let _ = daemon
                .docker
                .remove_container(&created.id, Some(Self::remove_options()))
                .await;
            return Err(e);
        }
        tracing::info!(
            session_id = %session_id,
            container = %short(&created.id),
            image = %image,
            "docker session started"
        );
        Ok(Self::assemble(
            session_id,
            destination_id,
            config,
            ctx,
            read_only,
            false,
        ))
    }

    /// Learns the numeric uid, gid and umask commands run as (the configured
    /// user, or the image's): setup files and uploaded entries get them.
    async fn resolve_owner(ctx: &ExecContext, config: &DockerConfig) -> RunnerResult<()> {
        const OP: &str = "create_session";
        let ids = ctx.script(OP, "id -u && id -g && umask", &[]).await?;
        let text = String::from_utf8_lossy(&ids.stdout);
        let mut words = text.split_whitespace();
        let mut number = |radix| {
            words
                .next()
                .and_then(|w| u32::from_str_radix(w, radix).ok())
        };
        match (ids.code, number(10), number(10), number(8)) {
            (0, Some(uid), Some(gid), Some(umask)) => {
                let _ = ctx.owner.set(Identity { uid, gid, umask });
                Ok(())
            }
            _ => Err(RunnerError::invalid_request(format!(
                "{OP}: user {:?} is not known in the image: {}",
                config.user.as_deref().unwrap_or("of the image"),
                ids.stderr
            ))),
        }
    }

    /// Starts the container, creates the workspace and state directories and
    /// copies the manifest entries, owned by the session user.
    async fn prepare(ctx: &ExecContext, config: &DockerConfig, setup: Setup) -> RunnerResult<()> {
        const OP: &str = "create_session";
        ctx.daemon
            .docker
            .start_container(&ctx.container, None::<StartContainerOptions>)
            .await
            .map_err(|e| ctx.daemon.error(OP, &ctx.container, e))?;
        Self::resolve_owner(ctx, config).await?;
        let workspace = config.workspace_dir.display().to_string();
        let mut dirs: Vec<(String, u32)> = vec![
            (workspace.trim_start_matches('/').to_string(), 0o755),
            (STATE_DIR.trim_start_matches('/').to_string(), 0o1777),
        ];
        for dir in &setup.plain_dirs {
            let dir = dir.display().to_string();
            dirs.push((dir.trim_start_matches('/').to_string(), 0o755));
        }
        let dir_refs: Vec<(&str, u32)> = dirs.iter().map(|(d, m)| (d.as_str(), *m)).collect();
        let tar = directories_tar(&dir_refs, ctx.file_owner())
            .map_err(|e| RunnerError::from_io(OP, "workspace", e))?;
        ctx.upload(OP, Path::new("/"), tar).await?;
        if let Some(entries) = setup.entries {
            ctx.upload(OP, &config.workspace_dir, entries).await?;
            let (uid, gid) = ctx.file_owner();
            if uid != 0 || gid != 0 {
                let owner = format!("{uid}:{gid}");
                let mut args = vec![owner.as_str()];
                let targets: Vec<String> = setup
                    .entry_targets
                    .iter()
                    .map(|t| t.display().to_string())
                    .collect();
                args.extend(targets.iter().map(String::as_str));
                let out = ctx
                    .script_as_root(OP, r#"o=$1; shift; chown -R -- "$o" "$@""#, &args)
                    .await?;
                if out.code != 0 {
                    return Err(RunnerError::provider(format!(
                        "{OP}: giving the manifest entries to user {owner} failed: {}",
                        out.stderr
                    )));
                }
            }
        }
        Ok(())
    }

    fn assemble(
        session_id: String,
        destination_id: String,
        config: DockerConfig,
        ctx: Arc<ExecContext>,
        read_only: ReadOnlyPaths,
        paused: bool,
    ) -> Self {
        let table = ProcessTable::new(ProcessTableConfig {
            run_as_user: true,
            ..ProcessTableConfig::new(PROVIDER_ID)
        });
        if paused {
            // The container is frozen: refuse new commands until resume.
            let _ = futures_util::FutureExt::now_or_never(table.pause());
        }
        Self {
            session_id,
            destination_id,
            config,
            ctx,
            read_only,
            table,
            forwarders: Forwarders::default(),
            closed: AtomicBool::new(false),
            paused: AtomicBool::new(paused),
            freezer: Freezer::default(),
        }
    }

    /// A new handle on the container of `state`, with the settings of the
    /// destination (`config`, `manifest`).
    ///
    /// Errors: `NotFound` naming the container when it is gone, or when it
    /// is not this library's container of that session and destination (the
    /// marker, kind, session, destination and owner labels and the name are
    /// checked; such a container is left alone).
    pub(crate) async fn rejoin(
        daemon: Daemon,
        config: DockerConfig,
        manifest: &RunnerManifest,
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
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let name = inspect.name.as_deref().unwrap_or_default();
        if !session_container(&labels, name, &state.session_id, &state.destination_id) {
            return Err(RunnerError::not_found(format!(
                "{OP}: container {requested} is not the container of docker session {} of \
                 destination {:?} (its labels or name are not this library's); it is left alone",
                state.session_id, state.destination_id
            )));
        }
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
        let ctx = Self::exec_context(daemon, container.clone(), &config, &state.session_id);
        if paused {
            // Thawed briefly: file operations need the owner too.
            ctx.daemon
                .docker
                .unpause_container(&container)
                .await
                .map_err(|e| ctx.daemon.error(OP, &container, e))?;
        }
        let owner = Self::resolve_owner(&ctx, &config).await;
        if paused {
            ctx.daemon
                .docker
                .pause_container(&container)
                .await
                .map_err(|e| ctx.daemon.error(OP, &container, e))?;
        }
        owner?;
        tracing::info!(session_id = %state.session_id, container = %short(&container), "docker session rejoined");
        let read_only = read_only_paths(&config, manifest);
        Ok(Self::assemble(
            state.session_id,
            state.destination_id,
            config,
            ctx,
            read_only,
            paused,
        ))
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The container's id.
    pub fn container_id(&self) -> &str {
        &self.ctx.container
    }

    /// `path` as an absolute container path (relative ones under the workspace).
    fn absolute(&self, path: &Path) -> PathBuf {
        absolute(&self.config.workspace_dir, path)
    }

    fn meta(&self) -> SessionMeta {
        SessionMeta {
            container_id: self.ctx.container.clone(),
        }
    }

    /// Holds the container running for a file operation: a paused one is
    /// thawed for it and frozen again when the hold is released (the
    /// session's commands stay stopped: `pause` sent them STOP first), so
    /// file operations keep working while paused and still act as the
    /// session user.
    async fn running(&self, operation: &str) -> RunnerResult<Running> {
        self.freezer
            .running(operation, &self.paused, &self.ctx)
            .await
    }

    /// Runs the file operation `op` while [`running`](Self::running) holds
    /// the container running.
    async fn thawed<T, F>(&self, operation: &str, op: impl FnOnce() -> F) -> RunnerResult<T>
    where
        F: std::future::Future<Output = RunnerResult<T>>,
    {
        let running = self.running(operation).await?;
        let result = op().await;
        running.release(operation).await?;
        result
    }

    fn remove_options() -> bollard::query_parameters::RemoveContainerOptions {
        RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build()
    }

    async fn shut_down(&self) -> RunnerResult<()> {
        const OP: &str = "close";
        self.forwarders.stop_all();
        let docker = &self.ctx.daemon.docker;
        let container = &self.ctx.container;
        if self.config.keep_on_close {
            if self.paused.swap(false, Ordering::SeqCst) {
                docker
                    .unpause_container(container)
                    .await
                    .map_err(|e| self.ctx.daemon.error(OP, container, e))?;
                self.table.resume().await?;
            }
            self.table.kill_all().await;
            // Processes that left their command's group, of finished
            // commands and of earlier handles too.
            self.ctx
                .signal_marked(
                    OP,
                    &self.ctx.session_mark(),
                    "",
                    RunnerSignal::Kill,
                    self.ctx.user.clone(),
                )
                .await?;
            let stop = StopContainerOptionsBuilder::new().t(1).build();
            return match docker.stop_container(container, Some(stop)).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let e = self.ctx.daemon.error(OP, container, e);
                    if e.kind() == RunnerErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }
            };
        }
        let removed = docker
            .remove_container(container, Some(Self::remove_options()))
            .await
            .map_err(|e| self.ctx.daemon.error(OP, container, e));
        // Every exec ended with the container; settle the records.
        self.table.kill_all().await;
        match removed {
            Ok(()) => {
                tracing::info!(session_id = %self.session_id, container = %short(container), "docker session closed");
                Ok(())
            }
            Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn launch_command(
        &self,
        operation: &'static str,
        mut request: RunnerCommandRequest,
        background: bool,
    ) -> RunnerResult<Option<RunnerCommandResult>> {
        let ctx = self.ctx.clone();
        let stdin = request.stdin.take();
        let launch = request.clone();
        let spawn = move |sink| exec::launch(ctx, operation, launch, stdin, sink);
        if background {
            self.table.start(request, spawn).await.map(|_| None)
        } else {
            self.table.run(request, spawn).await.map(Some)
        }
    }
}

#[async_trait]
impl RemoteRunnerSession for DockerSession {
    fn state(&self) -> RunnerSessionState {
        RunnerSessionState {
            provider_id: PROVIDER_ID.to_string(),
            session_id: self.session_id.clone(),
            destination_id: self.destination_id.clone(),
            snapshot: None,
            metadata: serde_json::to_value(self.meta()).unwrap_or_default(),
        }
    }

    fn capabilities(&self) -> RunnerCapabilities {
        crate::capabilities()
    }

    fn workspace_root(&self) -> PathBuf {
        self.config.workspace_dir.clone()
    }

    /// Stops every command's process group, then freezes the container
    /// (`docker pause`). While paused, file operations thaw it for their
    /// helper (a stream keeps it thawed until it ends) and freeze it again;
    /// new commands return `InvalidRequest`.
    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        let _frozen = self.freezer.exclusive().await;
        if !self.paused.load(Ordering::SeqCst) {
            self.table.pause().await?;
            self.ctx
                .daemon
                .docker
                .pause_container(&self.ctx.container)
                .await
                .map_err(|e| self.ctx.daemon.error("pause", &self.ctx.container, e))?;
            self.paused.store(true, Ordering::SeqCst);
            tracing::info!(session_id = %self.session_id, "docker session paused");
        }
        Ok(self.state())
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        let _frozen = self.freezer.exclusive().await;
        if self.paused.load(Ordering::SeqCst) {
            self.ctx
                .daemon
                .docker
                .unpause_container(&self.ctx.container)
                .await
                .map_err(|e| self.ctx.daemon.error("resume", &self.ctx.container, e))?;
            self.paused.store(false, Ordering::SeqCst);
            tracing::info!(session_id = %self.session_id, "docker session resumed");
        }
        self.table.resume().await?;
        Ok(self.state())
    }

    /// Releases this handle; the container and its processes keep running and
    /// the container is renamed `runner-detached-<session id>`, which
    /// `sweep_orphans` never removes.
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        let name = format!("{DETACHED_PREFIX}{}", self.session_id);
        let docker = &self.ctx.daemon.docker;
        let current = docker
            .inspect_container(&self.ctx.container, None)
            .await
            .map_err(|e| self.ctx.daemon.error("detach", &self.ctx.container, e))?
            .name
            .unwrap_or_default();
        if current.trim_start_matches('/') != name {
            let options = RenameContainerOptionsBuilder::new().name(&name).build();
            docker
                .rename_container(&self.ctx.container, options)
                .await
                .map_err(|e| self.ctx.daemon.error("detach", &self.ctx.container, e))?;
        }
        self.closed.store(true, Ordering::SeqCst);
        self.forwarders.stop_all();
        tracing::info!(session_id = %self.session_id, "docker session detached");
        Ok(self.state())
    }

    async fn close(&self) -> RunnerResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shut_down().await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.launch_command("run_command", request, false)
            .await?
            .ok_or_else(|| RunnerError::provider("run_command: no result"))
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.table.cancel(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let id = request.command_id.clone();
        self.launch_command("start_command", request, true).await?;
        self.table.status(&id)
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        Ok(self.table.list())
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.table.status(command_id)
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.table.output(command_id, after_seq)
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.table.stream(command_id, after_seq)
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.table.write_stdin(command_id, bytes, close).await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.table.signal(command_id, signal).await
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let running = self.running("read_file").await?;
        self.ctx.clone().read_file_stream(request, running).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.read_only
            .check("write_file", &self.absolute(&request.path))?;
        self.thawed("write_file", || {
            self.ctx.clone().write_file_stream(request, body)
        })
        .await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        self.thawed("list_dir", || self.ctx.list_dir(path)).await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        self.thawed("stat", || self.ctx.stat(path)).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.read_only
            .check_removal("remove", &self.absolute(path))?;
        self.thawed("remove", || self.ctx.remove(path, recursive))
            .await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.read_only.check("make_dir", &self.absolute(path))?;
        self.thawed("make_dir", || self.ctx.make_dir(path)).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.read_only
            .check_rename(&self.absolute(from), &self.absolute(to))?;
        self.thawed("rename", || self.ctx.rename(from, to)).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.thawed("canonicalize", || self.ctx.canonicalize(path))
            .await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.thawed("upload_archive", || {
            self.ctx
                .upload_archive_stream(target, archive, &self.read_only)
        })
        .await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let running = self.running("download_archive").await?;
        self.ctx
            .clone()
            .download_archive_stream(path, running)
            .await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.forwarders.expose(self.ctx.clone(), &request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        const OP: &str = "list_listening_ports";
        let out = self
            .ctx
            .script(
                OP,
                "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; exit 0",
                &[],
            )
            .await?;
        Ok(runner_kit::parse_proc_net_tcp(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }

    /// The shared lease file of [`runner_kit::acquire_shell_lease`], inside
    /// the container (outside the workspace): every handle on the container
    /// shares it.
    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        runner_kit::acquire_shell_lease(self, request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        runner_kit::renew_shell_lease(self, lease, ttl_ms).await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        runner_kit::release_shell_lease(self, lease).await
    }

    /// Commits the container to a labelled image; the reference names the
    /// image and the session, never the destination's settings.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        snapshot::take(
            &self.ctx.daemon,
            &self.ctx.container,
            &self.session_id,
            &self.destination_id,
        )
        .await
    }
}
