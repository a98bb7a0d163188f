//! The tracing layer: one span per session operation.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerEventStream, RunnerExecutionLease, RunnerFileReadRequest,
    RunnerFileReadResult, RunnerFileStat, RunnerFileStream, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerListeningPort, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
    RunnerWatchRequest, RunnerWatchStream, SessionLayer,
};

/// The name of every span [`TracedSession`] opens.
pub const SPAN_NAME: &str = "runner_session";

/// Wraps sessions in [`TracedSession`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl SessionLayer for TracingLayer {
    fn layer(&self, inner: Arc<dyn RemoteRunnerSession>) -> Arc<dyn RemoteRunnerSession> {
        Arc::new(TracedSession::new(inner))
    }
}

/// A session that runs every operation inside an `info` span named
/// [`SPAN_NAME`] with the fields `provider`, `session`, `operation`, and
/// where the operation has one, `path` (and `to` for `rename`) or
/// `command_id`; a failed operation records its error kind in `error_kind`.
///
/// Only names go into a span: never file contents, stdin bytes, environment
/// values, command arguments or secrets. Events the provider logs while
/// the operation runs carry the span, so a log line names its session.
/// The span of a streaming operation covers its start (until the stream is
/// returned), not the transfer.
pub struct TracedSession {
    inner: Arc<dyn RemoteRunnerSession>,
    provider_id: String,
    session_id: String,
}

impl std::fmt::Debug for TracedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedSession")
            .field("provider_id", &self.provider_id)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// What a span names besides the operation.
enum Subject<'a> {
    None,
    Path(&'a Path),
    Paths(&'a Path, &'a Path),
    Command(&'a str),
}

impl TracedSession {
    /// Traces every call to `inner`.
    pub fn new(inner: Arc<dyn RemoteRunnerSession>) -> Self {
        let state = inner.state();
        Self {
            inner,
            provider_id: state.provider_id,
            session_id: state.session_id,
        }
    }

    fn span(&self, operation: &'static str, subject: Subject<'_>) -> Span {
        let span = tracing::info_span!(
            SPAN_NAME,
            provider = %self.provider_id,
            session = %self.session_id,
            operation,
            path = Empty,
            to = Empty,
            command_id = Empty,
            error_kind = Empty,
        );
        match subject {
            Subject::None => {}
            Subject::Path(path) => {
                span.record("path", display(path.display()));
            }
            Subject::Paths(from, to) => {
                span.record("path", display(from.display()));
                span.record("to", display(to.display()));
            }
            Subject::Command(id) => {
                span.record("command_id", id);
            }
        }
        span
    }

    /// Runs `call` inside the span of `operation`, recording a failure's kind.
    async fn traced<T>(
        &self,
        operation: &'static str,
        subject: Subject<'_>,
        call: impl Future<Output = RunnerResult<T>>,
    ) -> RunnerResult<T> {
        let span = self.span(operation, subject);
        let result = call.instrument(span.clone()).await;
        if let Err(e) = &result {
            span.record("error_kind", e.kind().as_str());
        }
        result
    }
}

#[async_trait]
impl LayeredSession for TracedSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.traced("pause", Subject::None, self.inner.pause())
            .await
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.traced("resume", Subject::None, self.inner.resume())
            .await
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.traced("detach", Subject::None, self.inner.detach())
            .await
    }

    async fn close(&self) -> RunnerResult<()> {
        self.traced("close", Subject::None, self.inner.close())
            .await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let id = request.command_id.clone();
        self.traced(
            "run_command",
            Subject::Command(&id),
            self.inner.run_command(request),
        )
        .await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.traced(
            "cancel_command",
            Subject::Command(command_id),
            self.inner.cancel_command(command_id),
        )
        .await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let id = request.command_id.clone();
        self.traced(
            "start_command",
            Subject::Command(&id),
            self.inner.start_command(request),
        )
        .await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.traced("list_commands", Subject::None, self.inner.list_commands())
            .await
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.traced(
            "command_status",
            Subject::Command(command_id),
            self.inner.command_status(command_id),
        )
        .await
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.traced(
            "command_output",
            Subject::Command(command_id),
            self.inner.command_output(command_id, after_seq),
        )
        .await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.traced(
            "stream_command",
            Subject::Command(command_id),
            self.inner.stream_command(command_id, after_seq),
        )
        .await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.traced(
            "write_stdin",
            Subject::Command(command_id),
            self.inner.write_stdin(command_id, bytes, close),
        )
        .await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.traced(
            "signal_command",
            Subject::Command(command_id),
            self.inner.signal_command(command_id, signal),
        )
        .await
    }

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        self.traced(
            "resize_terminal",
            Subject::Command(command_id),
            self.inner.resize_terminal(command_id, rows, cols),
        )
        .await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        let path = request.path.clone();
        self.traced("watch", Subject::Path(&path), self.inner.watch(request))
            .await
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        let path = request.path.clone();
        self.traced(
            "read_file",
            Subject::Path(&path),
            self.inner.read_file(request),
        )
        .await
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let path = request.path.clone();
        self.traced(
            "read_file_stream",
            Subject::Path(&path),
            self.inner.read_file_stream(request),
        )
        .await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        let path = request.path.clone();
        self.traced(
            "write_file",
            Subject::Path(&path),
            self.inner.write_file(request),
        )
        .await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let path = request.path.clone();
        self.traced(
            "write_file_stream",
            Subject::Path(&path),
            self.inner.write_file_stream(request, body),
        )
        .await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        self.traced("list_dir", Subject::Path(path), self.inner.list_dir(path))
            .await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        self.traced("stat", Subject::Path(path), self.inner.stat(path))
            .await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.traced(
            "remove",
            Subject::Path(path),
            self.inner.remove(path, recursive),
        )
        .await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.traced("make_dir", Subject::Path(path), self.inner.make_dir(path))
            .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.traced(
            "rename",
            Subject::Paths(from, to),
            self.inner.rename(from, to),
        )
        .await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.traced(
            "canonicalize",
            Subject::Path(path),
            self.inner.canonicalize(path),
        )
        .await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.traced(
            "upload_archive",
            Subject::Path(target),
            self.inner.upload_archive(target, archive),
        )
        .await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.traced(
            "upload_archive_stream",
            Subject::Path(target),
            self.inner.upload_archive_stream(target, archive),
        )
        .await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        self.traced(
            "download_archive",
            Subject::Path(path),
            self.inner.download_archive(path),
        )
        .await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        self.traced(
            "download_archive_stream",
            Subject::Path(path),
            self.inner.download_archive_stream(path),
        )
        .await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.traced(
            "expose_port",
            Subject::None,
            self.inner.expose_port(request),
        )
        .await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.traced(
            "list_listening_ports",
            Subject::None,
            self.inner.list_listening_ports(),
        )
        .await
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.traced("snapshot", Subject::None, self.inner.snapshot())
            .await
    }

    async fn sync_mounts(&self) -> RunnerResult<()> {
        self.traced("sync_mounts", Subject::None, self.inner.sync_mounts())
            .await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let path = request.path.clone();
        self.traced(
            "export_artifact",
            Subject::Path(&path),
            self.inner.export_artifact(request),
        )
        .await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.traced(
            "acquire_workspace_execution_lease",
            Subject::None,
            self.inner.acquire_workspace_execution_lease(request),
        )
        .await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.traced(
            "renew_workspace_execution_lease",
            Subject::None,
            self.inner.renew_workspace_execution_lease(lease, ttl_ms),
        )
        .await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        self.traced(
            "release_workspace_execution_lease",
            Subject::None,
            self.inner.release_workspace_execution_lease(lease),
        )
        .await
    }
}
