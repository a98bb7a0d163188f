//! `SshSession`: one workspace directory and one session directory on the
//! remote host, reached through the destination's shared master.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCapabilities, RunnerCommandId,
    RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerEventStream,
    RunnerExecutionLease, RunnerFileReadRequest, RunnerFileStat, RunnerFileStream,
    RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort, RunnerPortRequest,
    RunnerPortResult, RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal,
    RunnerSnapshotRef,
};
use runner_kit::{ProcessTable, ProcessTableConfig, ReadOnlyPaths};
use serde::{Deserialize, Serialize};

use crate::config::SshConfig;
use crate::connection::{Connection, Link};
use crate::exec::{self, CommandMeta, ExecContext};
use crate::ownership::{self, OwnerMarker};
use crate::ports::{self, Forward};
use crate::script::run_script;
use crate::{PROVIDER_ID, capabilities, files, snapshot};

/// What `state().metadata` carries: where the session lives, for a rejoin to
/// check against the destination it is rejoined on. No config: resume and
/// rejoin take every setting from the destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// The destination as `user@host:port` ([`SshConfig::destination_label`]).
    pub(crate) destination: String,
    /// Absolute remote workspace root.
    pub(crate) workspace: PathBuf,
    /// Absolute remote session directory.
    pub(crate) session_dir: PathBuf,
    /// Absolute remote paths the file API refuses to change (read-only
    /// manifest entries), a JSON array of paths.
    #[serde(default)]
    pub(crate) read_only: ReadOnlyPaths,
}

impl SessionMeta {
    /// Refuses a state that is not of `config`'s destination: a session id
    /// this provider does not make (`InvalidRequest`), another host, port or
    /// user (`PermissionDenied` naming both).
    pub(crate) fn check_destination(
        &self,
        operation: &str,
        session_id: &str,
        config: &SshConfig,
    ) -> RunnerResult<()> {
        check_destination_label(operation, session_id, &self.destination, config)?;
        if !ownership::is_plain_id(session_id) {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: session id {session_id:?} is not one this provider makes"
            )));
        }
        Ok(())
    }
}

/// Refuses `what` (a session or snapshot id) when the `named` destination is
/// not `config`'s. Errors: `PermissionDenied` naming both.
pub(crate) fn check_destination_label(
    operation: &str,
    what: &str,
    named: &str,
    config: &SshConfig,
) -> RunnerResult<()> {
    let label = config.destination_label();
    if named != label {
        return Err(RunnerError::permission_denied(format!(
            "{operation} {what}: the state names destination {named}, not {label}, the \
             destination it is resumed on"
        )));
    }
    Ok(())
}

/// Everything a new session handle needs.
pub(crate) struct SessionSetup {
    pub(crate) session_id: String,
    pub(crate) destination_id: String,
    pub(crate) config: SshConfig,
    pub(crate) conn: Arc<Connection>,
    pub(crate) workspace: PathBuf,
    pub(crate) session_dir: PathBuf,
    pub(crate) read_only: ReadOnlyPaths,
}

/// A session on an ssh host. Relative paths resolve under the workspace
/// root; absolute ones are taken as they are (the layer stack in front of
/// the session confines paths to the workspace).
pub(crate) struct SshSession {
    session_id: String,
    destination_id: String,
    config: SshConfig,
    ctx: Arc<ExecContext>,
    table: ProcessTable,
    closed: AtomicBool,
    forwards: Mutex<Vec<Forward>>,
    read_only: Mutex<ReadOnlyPaths>,
}

/// Absolute remote path of a configured directory (relative to `home`).
pub(crate) fn remote_dir(link: &Link, dir: &str) -> PathBuf {
    let path = Path::new(dir);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        link.home.join(path)
    }
}

impl SshSession {
    /// A handle over existing remote directories.
    pub(crate) fn new(setup: SessionSetup) -> Self {
        let mut table_config = ProcessTableConfig::new(PROVIDER_ID);
        table_config.kill_grace = setup.config.kill_grace();
        // Honoured by the launch scripts: only the login user (exec::preflight).
        table_config.run_as_user = true;
        Self {
            ctx: Arc::new(ExecContext {
                conn: setup.conn,
                session_id: setup.session_id.clone(),
                env: setup.config.env.clone(),
                workspace: setup.workspace,
                session_dir: setup.session_dir,
                stopped: tokio::sync::watch::channel(false).0,
            }),
            session_id: setup.session_id,
            destination_id: setup.destination_id,
            config: setup.config,
            table: ProcessTable::new(table_config),
            closed: AtomicBool::new(false),
            forwards: Mutex::new(Vec::new()),
            read_only: Mutex::new(setup.read_only),
        }
    }

    /// From now on, refuses file-API writes at, under (and for removal and
    /// rename, above) `paths`. Each path is kept as given and, when its parent
    /// resolves to another path on the host (a symlink in the workspace
    /// path), as resolved too, so the resolved paths the stack's workspace
    /// layer passes in match.
    pub(crate) async fn protect(&self, paths: ReadOnlyPaths) -> RunnerResult<()> {
        let mut guarded = Vec::new();
        if !paths.is_empty() {
            let link = self.ctx.conn.link().await?;
            for path in paths {
                if let (Some(parent), Some(name)) = (path.parent(), path.file_name())
                    && let Ok(parent) = files::canonicalize(&link, parent).await
                {
                    guarded.push(parent.join(name));
                }
                guarded.push(path);
            }
        }
        self.read_only_paths().extend(guarded);
        Ok(())
    }

    /// Refuses `path` (relative to the workspace) when the nearest of it and
    /// its ancestors that exists resolves outside the workspace: a symlink
    /// would lead a write there out of it. For the manifest, which the
    /// provider writes itself, before any layer confines paths.
    ///
    /// Errors: `PermissionDenied` naming the path and where it leads.
    pub(crate) async fn check_inside(&self, operation: &str, path: &Path) -> RunnerResult<()> {
        let workspace = &self.ctx.workspace;
        self.ctx
            .conn
            .with_link(|link| async move {
                let root = files::canonicalize(&link, workspace).await?;
                let mut existing = workspace.join(path);
                let resolved = loop {
                    match files::canonicalize(&link, &existing).await {
                        Err(e)
                            if e.kind() == runner_api::RunnerErrorKind::NotFound
                                && existing.pop() => {}
                        resolved => break resolved?,
                    }
                };
                if !resolved.starts_with(&root) {
                    return Err(RunnerError::permission_denied(format!(
                        "{operation} {}: leads to {}, outside the workspace",
                        path.display(),
                        resolved.display()
                    )));
                }
                Ok(())
            })
            .await
    }

    fn read_only_paths(&self) -> std::sync::MutexGuard<'_, ReadOnlyPaths> {
        self.read_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates the remote directories and the owner marker.
    pub(crate) async fn create_dirs(&self) -> RunnerResult<()> {
        let ctx = self.ctx.clone();
        let marker = OwnerMarker::for_session(&self.session_id, &ctx.workspace);
        self.ctx
            .conn
            .with_link(|link| {
                let ctx = ctx.clone();
                let marker = marker.clone();
                async move {
                    files::make_dirs(&link, &ctx.workspace).await?;
                    files::make_dirs(&link, &ctx.commands_dir()).await?;
                    files::make_dirs(&link, &ctx.session_dir.join("run")).await?;
                    ownership::write_marker(
                        &link,
                        &ctx.session_dir.join(ownership::MARKER),
                        &marker,
                    )
                    .await
                }
            })
            .await
    }

    /// Refuses to rejoin when the paths `meta` (a state's) gives are not this
    /// handle's (`<workspace_root>/<id>`, `<state_dir>/<id>` of the
    /// destination), or when one of them is a symlink or no directory on the
    /// host (it would lead elsewhere): `PermissionDenied` naming the path.
    /// A workspace that is gone is `NotFound`.
    pub(crate) async fn check_state_paths(
        &self,
        link: &Link,
        meta: &SessionMeta,
    ) -> RunnerResult<()> {
        const OP: &str = "rejoin_session";
        let id = &self.session_id;
        for (what, given, own, key) in [
            (
                "workspace",
                &meta.workspace,
                &self.ctx.workspace,
                "workspace_root",
            ),
            (
                "session directory",
                &meta.session_dir,
                &self.ctx.session_dir,
                "state_dir",
            ),
        ] {
            if runner_api::normalize_lexically(given) != *own {
                return Err(RunnerError::permission_denied(format!(
                    "{OP} {id}: the state's {what} {} is not {}, the session's under the \
                     destination's {key}",
                    given.display(),
                    own.display()
                )));
            }
            match files::lstat(link, own).await? {
                None if what == "workspace" => {
                    return Err(RunnerError::not_found(format!(
                        "{OP} {id}: the workspace {} no longer exists",
                        own.display()
                    )));
                }
                None => {}
                Some(found) if found.file_type().is_some_and(|t| t.is_dir()) => {}
                Some(_) => {
                    return Err(RunnerError::permission_denied(format!(
                        "{OP} {id}: the {what} {} is not a directory (a symlink leads \
                         elsewhere); refusing to rejoin",
                        own.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Takes over the background commands recorded in the session directory.
    pub(crate) async fn adopt_commands(&self) -> RunnerResult<()> {
        let link = self.ctx.conn.link().await?;
        let marker = OwnerMarker::for_session(&self.session_id, &self.ctx.workspace);
        ownership::write_marker(
            &link,
            &self.ctx.session_dir.join(ownership::MARKER),
            &marker,
        )
        .await?;
        let dir = self.ctx.commands_dir();
        let entries = match files::list_dir(&link, &dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == runner_api::RunnerErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut found: Vec<(CommandMeta, PathBuf)> = Vec::new();
        for entry in entries {
            let Some(text) = exec::read_small(&link, &entry.path.join("meta.json")).await? else {
                continue;
            };
            match serde_json::from_str::<CommandMeta>(&text) {
                Ok(meta) => found.push((meta, entry.path.clone())),
                Err(e) => {
                    tracing::warn!(dir = %entry.path.display(), error = %e, "skipping a command directory with bad metadata")
                }
            }
        }
        found.sort_by_key(|(meta, _)| meta.started_at_ms);
        for (meta, dir) in found {
            let mut request = meta.request;
            // The timeout was enforced by the instance that started the command.
            request.timeout_ms = None;
            request.stdin = None;
            let keep_open = request.keep_stdin_open;
            let id = request.command_id.clone();
            let finished = exec::read_small(&link, &dir.join("exit")).await?.is_some();
            let ctx = self.ctx.clone();
            self.table
                .start(request, move |sink| {
                    exec::adopt_background(ctx, dir, keep_open, sink)
                })
                .await?;
            if finished {
                // Its status is known: report it as exited from the start.
                let _ = tokio::time::timeout(Duration::from_secs(10), self.table.wait(&id)).await;
            }
        }
        Ok(())
    }

    fn meta(&self) -> SessionMeta {
        SessionMeta {
            destination: self.config.destination_label(),
            workspace: self.ctx.workspace.clone(),
            session_dir: self.ctx.session_dir.clone(),
            read_only: self.read_only_paths().clone(),
        }
    }

    fn forward_list(&self) -> std::sync::MutexGuard<'_, Vec<Forward>> {
        self.forwards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The session's open forward to `remote_port`, after forgetting the
    /// forwards a reconnect could not re-create.
    fn open_forward(&self, remote_port: u16) -> Option<Forward> {
        let mut list = self.forward_list();
        list.retain(|forward| self.ctx.conn.forward_is_open(forward));
        list.iter()
            .find(|forward| forward.remote_port == remote_port)
            .copied()
    }

    async fn close_forwards(&self) {
        let forwards: Vec<Forward> = std::mem::take(&mut *self.forward_list());
        for forward in forwards {
            ports::close(&self.ctx.conn, &forward).await;
        }
    }

    /// Ends the handle: followers stop, forwards close. Returns whether this
    /// call did it (false when already closed).
    async fn shut(&self) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.close_forwards().await;
        true
    }
}

impl Drop for SshSession {
    /// A dropped handle stops following output; the remote side stays (see
    /// `detach`).
    fn drop(&mut self) {
        self.ctx.stopped.send_replace(true);
    }
}

#[async_trait]
impl RemoteRunnerSession for SshSession {
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
        capabilities()
    }

    fn workspace_root(&self) -> PathBuf {
        self.ctx.workspace.clone()
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.table.pause().await?;
        Ok(self.state())
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.table.resume().await?;
        Ok(self.state())
    }

    /// Leaves the workspace, the session directory and every background
    /// command running; marks the owner marker detached.
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        let state = self.state();
        let link = self.ctx.conn.link().await?;
        let mut marker = OwnerMarker::for_session(&self.session_id, &self.ctx.workspace);
        marker.detach();
        ownership::write_marker(
            &link,
            &self.ctx.session_dir.join(ownership::MARKER),
            &marker,
        )
        .await?;
        if self.shut().await {
            self.ctx.stopped.send_replace(true);
        }
        Ok(state)
    }

    async fn close(&self) -> RunnerResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.table.kill_all().await;
        if !self.shut().await {
            return Ok(());
        }
        self.ctx.stopped.send_replace(true);
        let script = ownership::teardown_script(
            "close",
            &self.session_id,
            &self.ctx.session_dir,
            Some(&self.ctx.workspace),
        )?;
        self.ctx
            .conn
            .with_link(|link| {
                let script = script.clone();
                async move { crate::script::run_checked(&link, "close", &script, None).await }
            })
            .await?;
        Ok(())
    }

    async fn run_command(
        &self,
        mut request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let stdin = request.stdin.take();
        let ctx = self.ctx.clone();
        self.table
            .run(request.clone(), move |sink| {
                exec::start_foreground(ctx, request, stdin, sink)
            })
            .await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.table.cancel(command_id).await
    }

    async fn start_command(
        &self,
        mut request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let stdin = request.stdin.take();
        let ctx = self.ctx.clone();
        self.table
            .start(request.clone(), move |sink| {
                exec::start_background(ctx, request, stdin, sink)
            })
            .await
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
        let path = self.ctx.workspace.join(&request.path);
        let (link, (file, size, window)) = self
            .ctx
            .conn
            .with_link(|link| {
                let (path, request) = (&path, &request);
                async move {
                    let opened = files::open_read(&link, "read_file", path, request).await?;
                    Ok((link, opened))
                }
            })
            .await?;
        Ok(RunnerFileStream {
            path: request.path,
            size,
            bytes: files::read_stream(link, file, path, window),
        })
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let path = self.ctx.workspace.join(&request.path);
        self.read_only_paths().check("write_file", &path)?;
        let (link, open) = self
            .ctx
            .conn
            .with_link(|link| {
                let path = &path;
                async move {
                    let open = files::open_write(&link, path, request.mode, request.offset).await?;
                    Ok((link, open))
                }
            })
            .await?;
        open.finish(&link, runner_api::prepend(request.contents, body))
            .await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let path = self.ctx.workspace.join(path);
        self.ctx
            .conn
            .with_link(|link| {
                let path = path.clone();
                async move { files::list_dir(&link, &path).await }
            })
            .await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let path = self.ctx.workspace.join(path);
        self.ctx
            .conn
            .with_link(|link| {
                let path = path.clone();
                async move { files::stat(&link, &path).await }
            })
            .await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let path = self.ctx.workspace.join(path);
        if runner_api::normalize_lexically(&path)
            == runner_api::normalize_lexically(&self.ctx.workspace)
        {
            return Err(RunnerError::permission_denied(format!(
                "remove {}: the workspace root itself cannot be removed",
                path.display()
            )));
        }
        self.read_only_paths().check_removal("remove", &path)?;
        self.ctx
            .conn
            .with_link(|link| {
                let path = path.clone();
                async move { files::remove(&link, &path, recursive).await }
            })
            .await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let path = self.ctx.workspace.join(path);
        self.read_only_paths().check("make_dir", &path)?;
        self.ctx
            .conn
            .with_link(|link| {
                let path = path.clone();
                async move { files::make_dir(&link, &path).await }
            })
            .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let from = self.ctx.workspace.join(from);
        let to = self.ctx.workspace.join(to);
        self.read_only_paths().check_rename(&from, &to)?;
        self.ctx
            .conn
            .with_link(|link| {
                let (from, to) = (from.clone(), to.clone());
                async move { files::rename(&link, &from, &to).await }
            })
            .await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let path = self.ctx.workspace.join(path);
        self.ctx
            .conn
            .with_link(|link| {
                let path = path.clone();
                async move { files::canonicalize(&link, &path).await }
            })
            .await
    }

    /// The archive is checked and rewritten on this side as it arrives,
    /// spooled to a local temporary file
    /// ([`runner_kit::archive::sanitize_upload_stream`]), then fed to the
    /// remote `tar` ([`files::upload_archive`]). A refused archive still
    /// creates the target, as on the other providers.
    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        let target = self.ctx.workspace.join(target);
        let read_only = self.read_only_paths().clone();
        read_only.check(OP, &target)?;
        let policy = self.config.upload_policy();
        let sanitized =
            runner_kit::archive::sanitize_upload_stream(OP, &target, archive, &policy).await;
        let upload = match sanitized {
            Ok(upload) => upload,
            Err(refused) => {
                self.ctx
                    .conn
                    .with_link(|link| {
                        let target = &target;
                        async move { files::upload_target(&link, target).await }
                    })
                    .await?;
                return Err(refused);
            }
        };
        files::upload_archive(&self.ctx.conn, &target, upload, &read_only).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let path = self.ctx.workspace.join(path);
        self.ctx
            .conn
            .with_link(|link| {
                let path = &path;
                async move { files::download_archive(&link, path).await }
            })
            .await
    }

    /// The URL of the session's open forward to `request.port`, or of a new
    /// one. A forward that a reconnect could not re-create at its local port
    /// is no longer open: exposing the port again gives a new URL.
    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        if request.port == 0 {
            return Err(RunnerError::invalid_request(
                "expose_port: port 0 is not a port",
            ));
        }
        let result = |forward: Forward| RunnerPortResult {
            port: request.port,
            url: Some(format!("http://127.0.0.1:{}/", forward.local_port)),
        };
        if let Some(open) = self.open_forward(request.port) {
            return Ok(result(open));
        }
        let forward = ports::open(&self.ctx.conn, request.port).await?;
        let raced = {
            let mut list = self.forward_list();
            let existing = list.iter().find(|f| f.remote_port == request.port).copied();
            if existing.is_none() {
                list.push(forward);
            }
            existing
        };
        match raced {
            Some(existing) => {
                // Another call forwarded the port meanwhile: keep one.
                ports::close(&self.ctx.conn, &forward).await;
                Ok(result(existing))
            }
            None => Ok(result(forward)),
        }
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.ctx
            .conn
            .with_link(|link| async move {
                let out = run_script(
                    &link,
                    "list_listening_ports",
                    "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null",
                    None,
                )
                .await?;
                Ok(runner_kit::parse_proc_net_tcp(&String::from_utf8_lossy(
                    &out.stdout,
                )))
            })
            .await
    }

    /// The shell lease of `runner_api` on the remote host: the lease file
    /// lives in the remote user's state directory, so every session on this
    /// host and workspace path shares it, whichever machine drives it.
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

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let workspace = self.ctx.workspace.clone();
        let config = self.config.clone();
        let session_id = self.session_id.clone();
        self.ctx
            .conn
            .with_link(|link| {
                let workspace = workspace.clone();
                let config = config.clone();
                let session_id = session_id.clone();
                async move { snapshot::take(&link, &config, &session_id, &workspace).await }
            })
            .await
    }
}
