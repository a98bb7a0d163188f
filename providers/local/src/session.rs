//! `LocalSession`: one workspace directory on this machine and the processes
//! started in it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCapabilities, RunnerCommandId,
    RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerEventStream,
    RunnerFileReadRequest, RunnerFileStat, RunnerFileStream, RunnerFileWriteRequest,
    RunnerListeningPort, RunnerManifestEntry, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
    RunnerTerminal, RunnerWatchRequest, RunnerWatchStream, prepend,
};
use runner_kit::archive::sanitize_upload_stream;
use runner_kit::bridge::{opened_chunk_stream, with_body_reader};
use runner_kit::{ProcessTable, ProcessTableConfig};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::LocalConfig;
use crate::error::join_error;
use crate::exec::{self, SpawnContext};
use crate::files::{ReadOnlyPath, Workspace};
use crate::groups::Groups;
use crate::manifest::{self, MountSpec};
use crate::ownership::{OwnedDir, SnapshotMark};
use crate::{PROVIDER_ID, ports, snapshot, watch};

/// How long `close` keeps KILLing leftover process groups before giving up.
const CLOSE_KILL_LIMIT: Duration = Duration::from_secs(5);

/// A read-only path as recorded in the session state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ReadOnlyMeta {
    /// Relative to the root.
    pub(crate) path: PathBuf,
    /// What made it read-only.
    pub(crate) reason: String,
}

/// `RunnerSessionState.metadata` of a local session: which workspace it
/// used. Holds no config: `resume_session` takes every setting (root,
/// directories, mounts) from the destination and checks the workspace named
/// here against it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct SessionMeta {
    /// Absolute workspace root.
    #[serde(default)]
    pub(crate) root: Option<PathBuf>,
    /// Whether the session created the root (and removes it on close).
    #[serde(default)]
    pub(crate) owned: bool,
    /// Paths the file API refuses to write (a resumed session keeps them on
    /// top of the destination's).
    #[serde(default)]
    pub(crate) read_only: Vec<ReadOnlyMeta>,
    /// Whether the session was paused when the state was taken.
    #[serde(default)]
    pub(crate) paused: bool,
}

/// Where a new session's workspace comes from.
pub(crate) enum RootSource {
    /// A caller-chosen root: created if missing, never removed.
    Configured(PathBuf),
    /// A fresh directory under `workspaces_dir`, removed on close.
    Fresh,
    /// A fresh directory filled from a snapshot archive.
    Snapshot {
        /// Snapshot id, for messages.
        id: String,
        /// The archive.
        path: PathBuf,
    },
    /// An owned root of an earlier session (resume without a snapshot),
    /// checked to be one the provider created.
    Adopted(PathBuf),
}

/// Everything needed to open a session.
pub(crate) struct SessionSetup {
    pub(crate) session_id: String,
    pub(crate) destination_id: String,
    pub(crate) config: LocalConfig,
    pub(crate) root: RootSource,
    pub(crate) mounts: Vec<MountSpec>,
    pub(crate) entries: Vec<RunnerManifestEntry>,
    /// Read-only paths besides those of `mounts` and `entries`.
    pub(crate) read_only: Vec<ReadOnlyPath>,
    /// The program commands of another user start through (`run-as`), when
    /// not setpriv.
    pub(crate) user_switcher: Option<PathBuf>,
}

/// A unix-local session: commands run as local processes (each in its own
/// process group) in the workspace directory, and the file API is confined to
/// that directory.
///
/// Created by [`LocalProvider`](crate::LocalProvider), as the bare session:
/// the layer stack (`runner-stack`) adds the closed-session and capability
/// checks, confinement to a binding's roots, object-store mounts and artifact
/// export. [`close`](RemoteRunnerSession::close) runs once (a second call is
/// `Ok`). Dropping a session without closing it KILLs its processes but
/// leaves its workspace in place (it can be resumed, or removed by
/// `sweep_orphans`).
pub struct LocalSession {
    session_id: String,
    destination_id: String,
    config: LocalConfig,
    workspace: Arc<Workspace>,
    owned: Mutex<Option<OwnedDir>>,
    is_owned: bool,
    table: ProcessTable,
    spawn: Arc<SpawnContext>,
    groups: Arc<Groups>,
    snapshot_mark: Arc<SnapshotMark>,
    closed: AtomicBool,
    /// Cancelled when the session closes or is dropped: ends every watch.
    watches: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSession")
            .field("session_id", &self.session_id)
            .field("root", &self.workspace.root)
            .field("owned", &self.is_owned)
            .finish_non_exhaustive()
    }
}

impl LocalSession {
    /// Creates the workspace, applies mounts and entries. Blocking. On failure
    /// an owned workspace is removed again.
    pub(crate) fn open_blocking(setup: SessionSetup) -> RunnerResult<Self> {
        let SessionSetup {
            session_id,
            destination_id,
            config,
            root,
            mounts,
            entries,
            read_only,
            user_switcher,
        } = setup;
        let mut owned = None;
        let mut snapshot_file = None;
        // Whether this call created the root (and must remove it on failure).
        let mut created = false;
        let (root, alias) = match root {
            RootSource::Configured(root) => {
                std::fs::create_dir_all(&root)
                    .map_err(|e| RunnerError::from_io("create_session: root", root.display(), e))?;
                (root.clone(), root)
            }
            RootSource::Fresh => {
                let dir = OwnedDir::create(&config.workspaces_dir, &session_id)?;
                let root = dir.path.clone();
                owned = Some(dir);
                created = true;
                (root.clone(), root)
            }
            RootSource::Snapshot { id, path } => {
                let dir = OwnedDir::create(&config.workspaces_dir, &session_id)?;
                let root = dir.path.clone();
                owned = Some(dir);
                created = true;
                snapshot_file = Some((id, path));
                (root.clone(), root)
            }
            RootSource::Adopted(root) => {
                owned = Some(OwnedDir::adopt(&root, &session_id));
                (root.clone(), root)
            }
        };
        let is_owned = owned.is_some();
        let result = (|| {
            let mut ws = Workspace::open(&root, &alias)
                .map_err(|e| RunnerError::from_io("open workspace", root.display(), e))?;
            ws.upload_policy.max_unpacked_bytes = config.max_upload_bytes;
            if let Some((id, path)) = &snapshot_file {
                snapshot::restore(id, path, &ws.dir)?;
            }
            manifest::apply_mounts(&mut ws, &mounts)?;
            manifest::copy_entries(&ws, &entries)?;
            ws.add_read_only(read_only);
            Ok::<_, RunnerError>(ws)
        })();
        let workspace = match result {
            Ok(ws) => ws,
            Err(e) => {
                if let Some(mut dir) = owned
                    && created
                {
                    let _ = dir.remove();
                }
                return Err(e);
            }
        };
        let groups = Arc::new(Groups::new(&session_id));
        let mut table_config = ProcessTableConfig::new(PROVIDER_ID);
        table_config.kill_grace = config.kill_grace;
        table_config.run_as_user = crate::capabilities().run_as_user;
        let session = Self {
            spawn: Arc::new(SpawnContext::new(
                &session_id,
                &config.env,
                groups.clone(),
                user_switcher,
            )),
            groups,
            table: ProcessTable::new(table_config),
            session_id,
            destination_id,
            config,
            workspace: Arc::new(workspace),
            owned: Mutex::new(owned),
            is_owned,
            snapshot_mark: Arc::default(),
            closed: AtomicBool::new(false),
            watches: tokio_util::sync::CancellationToken::new(),
        };
        tracing::info!(
            session_id = %session.session_id,
            root = %session.workspace.root.display(),
            owned = session.is_owned,
            "unix-local session opened"
        );
        Ok(session)
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Makes the manifest entries with `writable: false` of `entries`,
    /// already in the workspace (placed through the file API by a provider
    /// whose entry sources are not on this host), read-only as entries this
    /// session copied itself are: write bits cleared, and every later file
    /// API write at, under or above them refused, checked where the path is
    /// resolved. The session's state carries them (a resume or a fork keeps
    /// them).
    ///
    /// Errors: `NotFound` for a target that is not there, `InvalidRequest`
    /// for one outside the workspace.
    pub async fn protect_entries(&self, entries: Vec<RunnerManifestEntry>) -> RunnerResult<()> {
        self.blocking("protect_entries", move |ws| {
            crate::manifest::protect_entries(ws, &entries)
        })
        .await
    }

    /// `write_file(request)` whose contents are the regular file `source` of
    /// this host (`request.contents` is ignored): every check of
    /// `write_file` applies, then the file is moved into place when it is
    /// on the target's filesystem (no copy) or copied otherwise. `source` is
    /// a path the caller vouches for (the runner agent's private staging
    /// directory), not resolved in the workspace; the call consumes it.
    ///
    /// Errors: `write_file`'s; `InvalidRequest` when `source` is not a
    /// regular file.
    pub async fn install_file(
        &self,
        request: RunnerFileWriteRequest,
        source: PathBuf,
    ) -> RunnerResult<()> {
        self.blocking("write_file", move |ws| ws.install_file(&request, &source))
            .await
    }

    /// Runs blocking file work on the blocking pool.
    async fn blocking<T, F>(&self, operation: &'static str, work: F) -> RunnerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Workspace) -> RunnerResult<T> + Send + 'static,
    {
        let ws = self.workspace.clone();
        tokio::task::spawn_blocking(move || work(&ws))
            .await
            .map_err(|e| join_error(operation, e))?
    }

    fn meta(&self) -> SessionMeta {
        SessionMeta {
            root: Some(self.workspace.root.clone()),
            owned: self.is_owned,
            read_only: self
                .workspace
                .read_only()
                .iter()
                .map(|ro| ReadOnlyMeta {
                    path: ro.rel.clone(),
                    reason: ro.reason.clone(),
                })
                .collect(),
            paused: self.table.is_paused(),
        }
    }

    /// Kills every process of the session and frees what it created.
    async fn shut_down(&self) -> RunnerResult<()> {
        self.table.kill_all().await;
        let groups = self.groups.clone();
        let workspace = self.workspace.clone();
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner()).take();
        let session_id = self.session_id.clone();
        let removed = tokio::task::spawn_blocking(move || {
            groups.kill_all_blocking(CLOSE_KILL_LIMIT);
            match owned {
                Some(mut dir) => dir.remove().map(|()| true),
                None => {
                    // A caller's root stays; only the mount links we placed go.
                    for mount in &workspace.mounts {
                        let is_ours = workspace
                            .dir
                            .read_link_contents(&mount.rel)
                            .is_ok_and(|target| target == mount.host);
                        if is_ours {
                            let _ = workspace.dir.remove_file(&mount.rel);
                        }
                    }
                    Ok(false)
                }
            }
        })
        .await
        .map_err(|e| join_error("close", e))?;
        match removed {
            Ok(removed) => {
                tracing::info!(session_id = %session_id, removed_workspace = removed, "unix-local session closed");
                Ok(())
            }
            Err(e) => Err(RunnerError::from_io(
                "close: removing the workspace",
                self.workspace.root.display(),
                e,
            )),
        }
    }

    async fn session_pids(&self) -> RunnerResult<HashSet<u32>> {
        let groups = self.groups.clone();
        let mut pids: HashSet<u32> = self.table.running_pids().into_iter().collect();
        let members = tokio::task::spawn_blocking(move || groups.live_pids())
            .await
            .map_err(|e| join_error("list_listening_ports", e))?;
        pids.extend(members);
        Ok(pids)
    }

    async fn signal_groups(
        &self,
        operation: &'static str,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        let groups = self.groups.clone();
        tokio::task::spawn_blocking(move || groups.signal_live(signal))
            .await
            .map_err(|e| join_error(operation, e))
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        self.watches.cancel();
        // The workspace and its lock file stay (resumable, or removable by
        // `sweep_orphans` once the lock is released with the owned directory).
        if !self.closed.load(Ordering::SeqCst) {
            self.groups.kill_remembered_now();
        }
    }
}

#[async_trait]
impl RemoteRunnerSession for LocalSession {
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
        self.workspace.root.clone()
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.table.pause().await?;
        self.signal_groups("pause", RunnerSignal::Stop).await?;
        tracing::info!(session_id = %self.session_id, "session paused");
        Ok(self.state())
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.signal_groups("resume", RunnerSignal::Continue).await?;
        self.table.resume().await?;
        tracing::info!(session_id = %self.session_id, "session resumed");
        Ok(self.state())
    }

    async fn close(&self) -> RunnerResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.watches.cancel();
        let span = tracing::info_span!("unix-local close", session_id = %self.session_id);
        let result = self.shut_down().instrument(span).await;
        self.snapshot_mark.release();
        result
    }

    async fn run_command(
        &self,
        mut request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let (ctx, workspace) = (self.spawn.clone(), self.workspace.clone());
        let stdin = request.stdin.take();
        let launch = request.clone();
        self.table
            .run(request, move |sink| {
                exec::launch(ctx, workspace, "run_command", launch, stdin, sink)
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
        let (ctx, workspace) = (self.spawn.clone(), self.workspace.clone());
        let stdin = request.stdin.take();
        let launch = request.clone();
        self.table
            .start(request, move |sink| {
                exec::launch(ctx, workspace, "start_command", launch, stdin, sink)
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

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        RunnerTerminal::check_size("resize_terminal", command_id, rows, cols)?;
        self.table.resize(command_id, rows, cols).await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        let workspace = self.workspace.clone();
        let path = request.path.clone();
        let target = tokio::task::spawn_blocking(move || workspace.watch_target(&path))
            .await
            .map_err(|e| join_error("watch", e))??;
        watch::start(target, request.recursive, self.watches.clone())
    }

    /// One blocking task opens the file and then feeds the stream, so an
    /// error about the path comes back from this call, before any chunk.
    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let path = request.path.clone();
        let (ws, fed) = (self.workspace.clone(), self.workspace.clone());
        let (size, bytes) = opened_chunk_stream(
            "read_file",
            move || {
                let file = ws.open_read(&request)?;
                Ok((file.size, (file, request.path)))
            },
            move |(file, shown), out| file.send(out).map_err(|e| fed.io("read_file", &shown, e)),
        )
        .await?;
        Ok(RunnerFileStream { path, size, bytes })
    }

    async fn write_file_stream(
        &self,
        mut request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let body = prepend(std::mem::take(&mut request.contents), body);
        let ws = self.workspace.clone();
        with_body_reader("write_file", body, move |mut body| {
            ws.write_file(&request, &mut body)
        })
        .await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let path = path.to_path_buf();
        self.blocking("list_dir", move |ws| ws.list_dir(&path))
            .await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let path = path.to_path_buf();
        self.blocking("stat", move |ws| ws.stat(&path)).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let path = path.to_path_buf();
        self.blocking("remove", move |ws| ws.remove(&path, recursive))
            .await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let path = path.to_path_buf();
        self.blocking("make_dir", move |ws| ws.make_dir(&path))
            .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        self.blocking("rename", move |ws| ws.rename(&from, &to))
            .await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let path = path.to_path_buf();
        self.blocking("canonicalize", move |ws| ws.canonicalize(&path))
            .await
    }

    /// Checks the target, then checks and spools the whole archive
    /// ([`sanitize_upload_stream`]) before unpacking a single entry, so a
    /// refused archive writes nothing; memory stays bounded (the spool is an
    /// anonymous temporary file).
    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        // Lexical, no I/O: a refused target never reads the body.
        self.workspace.upload_target(target).map(drop)?;
        let policy = self.workspace.upload_policy;
        let upload = sanitize_upload_stream(OP, target, archive, &policy).await?;
        let target = target.to_path_buf();
        self.blocking(OP, move |ws| ws.unpack_upload(&target, upload))
            .await
    }

    /// Opens the path and packs it on one blocking task (a missing path is
    /// this call's error, before any chunk).
    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        const OP: &str = "download_archive";
        let (ws, fed) = (self.workspace.clone(), self.workspace.clone());
        let (opened, shown) = (path.to_path_buf(), path.to_path_buf());
        let ((), archive) = opened_chunk_stream(
            OP,
            move || Ok(((), ws.open_download(&opened)?)),
            move |download, out| download.pack(out).map_err(|e| fed.io(OP, &shown, e)),
        )
        .await?;
        Ok(archive)
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        ports::expose(&request)
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        let pids = self.session_pids().await?;
        tokio::task::spawn_blocking(move || ports::listening(&pids))
            .await
            .map_err(|e| join_error("list_listening_ports", e))?
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let snapshot_dir = self.config.snapshot_dir.clone();
        let session_id = self.session_id.clone();
        let mark = self.snapshot_mark.clone();
        self.blocking("snapshot", move |ws| {
            let snapshot = snapshot::take(ws, &snapshot_dir, &session_id)?;
            // The mark lets `sweep_orphans` remove the archive once this
            // session is gone; without it the archive is simply kept.
            if let Err(e) = mark.record(&snapshot_dir, &session_id, &snapshot.snapshot_id) {
                tracing::warn!(snapshot_id = %snapshot.snapshot_id, error = %e, "could not mark a snapshot for orphan sweeping");
            }
            Ok(snapshot)
        })
        .await
    }

    /// The shared lease file of [`runner_kit::acquire_shell_lease`], under the
    /// user's state directory on this machine, outside the workspace.
    async fn acquire_workspace_execution_lease(
        &self,
        request: runner_api::RunnerLeaseRequest,
    ) -> RunnerResult<runner_api::RunnerExecutionLease> {
        runner_kit::acquire_shell_lease(self, request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &runner_api::RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<runner_api::RunnerExecutionLease> {
        runner_kit::renew_shell_lease(self, lease, ttl_ms).await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &runner_api::RunnerExecutionLease,
    ) -> RunnerResult<()> {
        runner_kit::release_shell_lease(self, lease).await
    }
}
