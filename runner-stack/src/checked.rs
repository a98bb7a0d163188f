//! The correctness layer: closed-session and capability checks, once for
//! every provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCapabilities, RunnerCommandId, RunnerCommandOutput,
    RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerEventStream,
    RunnerExecutionLease, RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat,
    RunnerFileStream, RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort,
    RunnerPortRequest, RunnerPortResult, RunnerProcessInfo, RunnerResult, RunnerSessionState,
    RunnerSignal, RunnerSnapshotRef, RunnerTerminal, RunnerWatchRequest, RunnerWatchStream,
    SessionLayer,
};

/// A capability flag of [`RunnerCapabilities`], as a reader of it.
type Flag = fn(&RunnerCapabilities) -> bool;

/// Wraps sessions in [`CheckedSession`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrectnessLayer;

impl SessionLayer for CorrectnessLayer {
    fn layer(&self, inner: Arc<dyn RemoteRunnerSession>) -> Arc<dyn RemoteRunnerSession> {
        Arc::new(CheckedSession::new(inner))
    }
}

/// A session that enforces the contract's closed-session and capability
/// rules before anything reaches the inner session:
///
/// - after [`close`](RemoteRunnerSession::close) (idempotent: `Ok` twice) or
///   a successful [`detach`](RemoteRunnerSession::detach), every call is
///   `SessionClosed` naming the operation and the session id;
/// - an operation whose capability flag the session does not claim is
///   `Unsupported` naming the operation and the provider (a command with
///   `stdin` or `keep_stdin_open` needs `stdin`, one with `user` needs
///   `run_as_user`).
///
/// `sync_mounts` has no flag of its own (the mounts layer answers it) and is
/// only checked for closing. A failed `close` leaves the session open, so
/// closing again retries (a mount that did not sync back is not lost).
pub struct CheckedSession {
    inner: Arc<dyn RemoteRunnerSession>,
    provider_id: String,
    session_id: String,
    closed: AtomicBool,
}

impl std::fmt::Debug for CheckedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedSession")
            .field("provider_id", &self.provider_id)
            .field("session_id", &self.session_id)
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl CheckedSession {
    /// Checks every call to `inner`.
    pub fn new(inner: Arc<dyn RemoteRunnerSession>) -> Self {
        let state = inner.state();
        Self {
            inner,
            provider_id: state.provider_id,
            session_id: state.session_id,
            closed: AtomicBool::new(false),
        }
    }

    fn open(&self, operation: &str) -> RunnerResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(operation, &self.session_id));
        }
        Ok(())
    }

    /// Open, and the session claims `flag`.
    fn require(&self, operation: &str, flag: Flag) -> RunnerResult<()> {
        self.open(operation)?;
        if flag(&self.inner.capabilities()) {
            Ok(())
        } else {
            Err(RunnerError::unsupported(operation, &self.provider_id))
        }
    }

    /// [`require`](Self::require) for a command request, with the flags its
    /// `stdin`, `keep_stdin_open` and `user` need.
    fn require_command(
        &self,
        operation: &str,
        flag: Flag,
        request: &RunnerCommandRequest,
    ) -> RunnerResult<()> {
        self.require(operation, flag)?;
        let caps = self.inner.capabilities();
        if (request.stdin.is_some() || request.keep_stdin_open) && !caps.stdin {
            return Err(RunnerError::unsupported(
                &format!("{operation} {} with stdin", request.command_id),
                &self.provider_id,
            ));
        }
        if request.user.is_some() && !caps.run_as_user {
            return Err(RunnerError::unsupported(
                &format!("{operation} {} as another user", request.command_id),
                &self.provider_id,
            ));
        }
        if let Some(terminal) = &request.terminal {
            if !caps.pty {
                return Err(RunnerError::unsupported(
                    &format!("{operation} {} on a terminal", request.command_id),
                    &self.provider_id,
                ));
            }
            RunnerTerminal::check_size(
                operation,
                &request.command_id,
                terminal.rows,
                terminal.cols,
            )?;
        }
        Ok(())
    }
}

#[async_trait]
impl LayeredSession for CheckedSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.require("pause", |c| c.pausable)?;
        self.inner.pause().await
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.require("resume", |c| c.pausable)?;
        self.inner.resume().await
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.require("detach", |c| c.detachable)?;
        let state = self.inner.detach().await?;
        self.closed.store(true, Ordering::SeqCst);
        Ok(state)
    }

    async fn close(&self) -> RunnerResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.close().await?;
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.require_command("run_command", |c| c.command_exec, &request)?;
        self.inner.run_command(request).await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.require("cancel_command", |c| c.cancellation)?;
        self.inner.cancel_command(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.require_command("start_command", |c| c.background_processes, &request)?;
        self.inner.start_command(request).await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.require("list_commands", |c| c.background_processes)?;
        self.inner.list_commands().await
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.require("command_status", |c| c.background_processes)?;
        self.inner.command_status(command_id).await
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.require("command_output", |c| c.background_processes)?;
        self.inner.command_output(command_id, after_seq).await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.require("stream_command", |c| c.streaming)?;
        self.inner.stream_command(command_id, after_seq).await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.require("write_stdin", |c| c.stdin)?;
        self.inner.write_stdin(command_id, bytes, close).await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.require("signal_command", |c| c.background_processes)?;
        self.inner.signal_command(command_id, signal).await
    }

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        self.require("resize_terminal", |c| c.pty)?;
        RunnerTerminal::check_size("resize_terminal", command_id, rows, cols)?;
        self.inner.resize_terminal(command_id, rows, cols).await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        self.require("watch", |c| c.file_watch)?;
        self.inner.watch(request).await
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        self.require("read_file", |c| c.file_read)?;
        self.inner.read_file(request).await
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        self.require("read_file_stream", |c| c.file_read)?;
        self.inner.read_file_stream(request).await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.require("write_file", |c| c.file_write)?;
        self.inner.write_file(request).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.require("write_file_stream", |c| c.file_write)?;
        self.inner.write_file_stream(request, body).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        self.require("list_dir", |c| c.file_management)?;
        self.inner.list_dir(path).await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        self.require("stat", |c| c.file_management)?;
        self.inner.stat(path).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.require("remove", |c| c.file_management)?;
        self.inner.remove(path, recursive).await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.require("make_dir", |c| c.file_management)?;
        self.inner.make_dir(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.require("rename", |c| c.file_management)?;
        self.inner.rename(from, to).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.require("canonicalize", |c| c.file_management)?;
        self.inner.canonicalize(path).await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.require("upload_archive", |c| c.archive_transfer)?;
        self.inner.upload_archive(target, archive).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.require("upload_archive_stream", |c| c.archive_transfer)?;
        self.inner.upload_archive_stream(target, archive).await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        self.require("download_archive", |c| c.archive_transfer)?;
        self.inner.download_archive(path).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        self.require("download_archive_stream", |c| c.archive_transfer)?;
        self.inner.download_archive_stream(path).await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.require("expose_port", |c| c.port_preview)?;
        self.inner.expose_port(request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.require("list_listening_ports", |c| c.port_listing)?;
        self.inner.list_listening_ports().await
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.require("snapshot", |c| c.snapshots)?;
        self.inner.snapshot().await
    }

    async fn sync_mounts(&self) -> RunnerResult<()> {
        self.open("sync_mounts")?;
        self.inner.sync_mounts().await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        self.require("export_artifact", |c| c.artifact_export)?;
        self.inner.export_artifact(request).await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.require("acquire_workspace_execution_lease", |c| c.execution_lease)?;
        self.inner.acquire_workspace_execution_lease(request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.require("renew_workspace_execution_lease", |c| c.execution_lease)?;
        self.inner
            .renew_workspace_execution_lease(lease, ttl_ms)
            .await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        self.require("release_workspace_execution_lease", |c| c.execution_lease)?;
        self.inner.release_workspace_execution_lease(lease).await
    }
}
