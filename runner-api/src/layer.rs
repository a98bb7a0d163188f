//! Layers: wrappers over a session that override only what they change.
//!
//! A layer (workspace confinement, mounts, the managed lifecycle, the
//! correctness and tracing layers) implements [`LayeredSession`]: it names its
//! inner session and overrides the methods it changes; every other method
//! forwards to the inner session by default, and the blanket implementation
//! makes every `LayeredSession` a [`RemoteRunnerSession`]. This is OpenDAL's
//! `LayeredAccess` applied to our trait: tower's `Layer`/`Service` pair suits a
//! single `call`, not a trait of forty operations with their own types.
//! [`SessionLayer`] is the factory a stack composes: it wraps one session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerByteStream,
    RunnerCapabilities, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerEventStream, RunnerExecutionLease, RunnerFileReadRequest,
    RunnerFileReadResult, RunnerFileStat, RunnerFileStream, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerListeningPort, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
    RunnerWatchRequest, RunnerWatchStream,
};

/// Wraps one session into another: one step of a layer stack.
pub trait SessionLayer: Send + Sync {
    /// The session `inner` seen through this layer.
    fn layer(&self, inner: Arc<dyn RemoteRunnerSession>) -> Arc<dyn RemoteRunnerSession>;
}

/// A session over an inner session. Every method forwards to
/// [`inner`](Self::inner) unless the layer overrides it; see the module docs.
#[async_trait]
pub trait LayeredSession: Send + Sync + 'static {
    /// The session this layer wraps.
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession>;

    /// Forwards to the inner session.
    fn state(&self) -> RunnerSessionState {
        self.inner().state()
    }

    /// Forwards to the inner session.
    fn capabilities(&self) -> RunnerCapabilities {
        self.inner().capabilities()
    }

    /// Forwards to the inner session.
    fn workspace_root(&self) -> PathBuf {
        self.inner().workspace_root()
    }

    /// Forwards to the inner session.
    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.inner().pause().await
    }

    /// Forwards to the inner session.
    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.inner().resume().await
    }

    /// Forwards to the inner session.
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.inner().detach().await
    }

    /// Forwards to the inner session.
    async fn close(&self) -> RunnerResult<()> {
        self.inner().close().await
    }

    /// Forwards to the inner session.
    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.inner().run_command(request).await
    }

    /// Forwards to the inner session.
    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.inner().cancel_command(command_id).await
    }

    /// Forwards to the inner session.
    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.inner().start_command(request).await
    }

    /// Forwards to the inner session.
    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.inner().list_commands().await
    }

    /// Forwards to the inner session.
    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.inner().command_status(command_id).await
    }

    /// Forwards to the inner session.
    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.inner().command_output(command_id, after_seq).await
    }

    /// Forwards to the inner session.
    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.inner().stream_command(command_id, after_seq).await
    }

    /// Forwards to the inner session.
    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.inner().write_stdin(command_id, bytes, close).await
    }

    /// Forwards to the inner session.
    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.inner().signal_command(command_id, signal).await
    }

    /// Forwards to the inner session.
    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        self.inner().resize_terminal(command_id, rows, cols).await
    }

    /// Forwards to the inner session.
    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        self.inner().watch(request).await
    }

    /// Forwards to the inner session.
    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        self.inner().read_file(request).await
    }

    /// Forwards to the inner session.
    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        self.inner().read_file_stream(request).await
    }

    /// Forwards to the inner session.
    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.inner().write_file(request).await
    }

    /// Forwards to the inner session.
    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.inner().write_file_stream(request, body).await
    }

    /// Forwards to the inner session.
    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        self.inner().list_dir(path).await
    }

    /// Forwards to the inner session.
    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        self.inner().stat(path).await
    }

    /// Forwards to the inner session.
    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.inner().remove(path, recursive).await
    }

    /// Forwards to the inner session.
    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.inner().make_dir(path).await
    }

    /// Forwards to the inner session.
    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.inner().rename(from, to).await
    }

    /// Forwards to the inner session.
    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.inner().canonicalize(path).await
    }

    /// Forwards to the inner session.
    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.inner().upload_archive(target, archive).await
    }

    /// Forwards to the inner session.
    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.inner().upload_archive_stream(target, archive).await
    }

    /// Forwards to the inner session.
    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        self.inner().download_archive(path).await
    }

    /// Forwards to the inner session.
    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        self.inner().download_archive_stream(path).await
    }

    /// Forwards to the inner session.
    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.inner().expose_port(request).await
    }

    /// Forwards to the inner session.
    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.inner().list_listening_ports().await
    }

    /// Forwards to the inner session.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.inner().snapshot().await
    }

    /// Forwards to the inner session.
    async fn sync_mounts(&self) -> RunnerResult<()> {
        self.inner().sync_mounts().await
    }

    /// Forwards to the inner session.
    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        self.inner().export_artifact(request).await
    }

    /// Forwards to the inner session.
    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.inner()
            .acquire_workspace_execution_lease(request)
            .await
    }

    /// Forwards to the inner session.
    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.inner()
            .renew_workspace_execution_lease(lease, ttl_ms)
            .await
    }

    /// Forwards to the inner session.
    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        self.inner().release_workspace_execution_lease(lease).await
    }
}

#[async_trait]
impl<T: LayeredSession> RemoteRunnerSession for T {
    fn state(&self) -> RunnerSessionState {
        LayeredSession::state(self)
    }

    fn capabilities(&self) -> RunnerCapabilities {
        LayeredSession::capabilities(self)
    }

    fn workspace_root(&self) -> PathBuf {
        LayeredSession::workspace_root(self)
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        LayeredSession::pause(self).await
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        LayeredSession::resume(self).await
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        LayeredSession::detach(self).await
    }

    async fn close(&self) -> RunnerResult<()> {
        LayeredSession::close(self).await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        LayeredSession::run_command(self, request).await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        LayeredSession::cancel_command(self, command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        LayeredSession::start_command(self, request).await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        LayeredSession::list_commands(self).await
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        LayeredSession::command_status(self, command_id).await
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        LayeredSession::command_output(self, command_id, after_seq).await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        LayeredSession::stream_command(self, command_id, after_seq).await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        LayeredSession::write_stdin(self, command_id, bytes, close).await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        LayeredSession::signal_command(self, command_id, signal).await
    }

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        LayeredSession::resize_terminal(self, command_id, rows, cols).await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        LayeredSession::watch(self, request).await
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        LayeredSession::read_file(self, request).await
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        LayeredSession::read_file_stream(self, request).await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        LayeredSession::write_file(self, request).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        LayeredSession::write_file_stream(self, request, body).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        LayeredSession::list_dir(self, path).await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        LayeredSession::stat(self, path).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        LayeredSession::remove(self, path, recursive).await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        LayeredSession::make_dir(self, path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        LayeredSession::rename(self, from, to).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        LayeredSession::canonicalize(self, path).await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        LayeredSession::upload_archive(self, target, archive).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        LayeredSession::upload_archive_stream(self, target, archive).await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        LayeredSession::download_archive(self, path).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        LayeredSession::download_archive_stream(self, path).await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        LayeredSession::expose_port(self, request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        LayeredSession::list_listening_ports(self).await
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        LayeredSession::snapshot(self).await
    }

    async fn sync_mounts(&self) -> RunnerResult<()> {
        LayeredSession::sync_mounts(self).await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        LayeredSession::export_artifact(self, request).await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        LayeredSession::acquire_workspace_execution_lease(self, request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        LayeredSession::renew_workspace_execution_lease(self, lease, ttl_ms).await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        LayeredSession::release_workspace_execution_lease(self, lease).await
    }
}
