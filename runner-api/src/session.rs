//! The two traits every provider implements.
//!
//! Each method says which capability it requires, how it behaves, and which
//! [`RunnerErrorKind`](crate::RunnerErrorKind)s it returns. Every method a
//! provider does not support returns `Unsupported`; the defaults here do exactly
//! that, so a provider overrides what it really implements and nothing more.
//! Every session method returns `SessionClosed` after [`RemoteRunnerSession::close`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_core::Stream;

use crate::{
    RemoteRunnerProviderId, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerCapabilities, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerDestination, RunnerError, RunnerExecutionLease,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerListeningPort, RunnerPortRequest, RunnerPortResult,
    RunnerProcessEvent, RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal,
    RunnerSnapshotRef, RunnerWatchRequest, RunnerWatchStream,
};
use crate::{RunnerByteStream, RunnerFileStream};

/// A live stream of a command's output events, ending with `Exited`.
pub type RunnerEventStream =
    Pin<Box<dyn Stream<Item = RunnerResult<RunnerProcessEvent>> + Send + 'static>>;

/// What `sweep_orphans` removed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunnerSweepReport {
    /// One line per removed resource (a container id, a directory, an image).
    pub removed: Vec<String>,
}

/// A kind of runner: creates, resumes and rejoins sessions for destinations.
#[async_trait]
pub trait RemoteRunnerProvider: Send + Sync + 'static {
    /// The provider id destinations name in `provider_id` (`"unix-local"`).
    fn id(&self) -> RemoteRunnerProviderId;

    /// What sessions of this provider can do.
    fn capabilities(&self) -> RunnerCapabilities;

    /// Setup guidance when the provider is installed but not usable yet (a missing
    /// binary, an unreachable daemon). Names only documented settings, never secret
    /// values. `None` means ready.
    fn setup_hint(&self) -> Option<String> {
        None
    }

    /// Default absolute workspace path on the runner, when the provider has one.
    fn default_workspace(&self) -> Option<String> {
        None
    }

    /// Checks a destination without creating anything: the config parses, every
    /// manifest mount kind is supported. The default checks the manifest with
    /// [`validate_manifest`](crate::validate_manifest).
    ///
    /// Errors: `InvalidRequest` naming the bad field, `Unsupported` for a mount kind.
    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        crate::validate_manifest(&destination.default_manifest, &self.capabilities())
    }

    /// Creates a new session for `destination`, with its manifest applied.
    ///
    /// Errors: `InvalidRequest` (bad config), `Unavailable` (backend unreachable),
    /// `NotFound` (an image or host path that does not exist), `Unsupported`.
    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>>;

    /// Resumes from persisted state. When `state.snapshot` is set, creates a new
    /// session restored from that snapshot (a fork: the original goes on).
    ///
    /// Requires `snapshot_restore` when a snapshot is given. Errors: `NotFound`
    /// (unknown snapshot), `InvalidRequest` (state of another provider), `Unsupported`.
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let _ = state;
        Err(RunnerError::unsupported("resume_session", &self.id()))
    }

    /// Reattaches to a detached session (see [`RemoteRunnerSession::detach`]).
    ///
    /// Requires `detachable`. Errors: `NotFound` (the sandbox is gone), `Unsupported`.
    async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let _ = state;
        Err(RunnerError::unsupported("rejoin_session", &self.id()))
    }

    /// Removes what this library created for sessions that no longer exist, and
    /// never anything it did not create.
    ///
    /// Errors: `Unavailable`, `Unsupported`.
    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        Err(RunnerError::unsupported("sweep_orphans", &self.id()))
    }

    /// Records `destination` as one that `resume_session` and `rejoin_session`
    /// may take their settings from: a provider never trusts settings carried
    /// in a state, only destinations given to `create_session` or here (a
    /// process that resumes sessions it did not create calls this first).
    /// Providers that keep no such record ignore it.
    fn trust_destination(&self, destination: &RunnerDestination) {
        let _ = destination;
    }
}

/// One session on a runner: the thread's shell and file tools go through it.
///
/// Relative paths resolve under [`workspace_root`](Self::workspace_root).
/// Sessions are shared as `Arc<dyn RemoteRunnerSession>` and every method may be
/// called concurrently.
#[async_trait]
pub trait RemoteRunnerSession: Send + Sync + 'static {
    /// The durable state of this session.
    fn state(&self) -> RunnerSessionState;

    /// What this session can do (normally the provider's capabilities).
    fn capabilities(&self) -> RunnerCapabilities;

    /// Absolute path of the workspace root on the runner.
    fn workspace_root(&self) -> PathBuf;

    // ----- lifecycle -----

    /// Stops every process of the session without losing state.
    ///
    /// Requires `pausable`. While paused, new commands are refused with
    /// `InvalidRequest`; file operations keep working. Returns the new state.
    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        Err(self.unsupported("pause"))
    }

    /// Continues a paused session. Requires `pausable`.
    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        Err(self.unsupported("resume"))
    }

    /// Releases this handle while the sandbox stays alive for
    /// [`RemoteRunnerProvider::rejoin_session`]. Returns the state to persist.
    /// Requires `detachable`; the handle is closed afterwards (`SessionClosed`).
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        Err(self.unsupported("detach"))
    }

    /// Ends every process of the session and frees what the session created.
    /// Idempotent: closing twice is `Ok`. Writable mounts sync back first.
    async fn close(&self) -> RunnerResult<()>;

    // ----- commands -----

    /// Runs a command in the foreground and returns its result.
    ///
    /// Requires `command_exec` (and `stdin` when `request.stdin` is set). A
    /// non-zero exit is a result. Past `timeout_ms` the whole process tree is
    /// killed (TERM, a short grace, KILL) and the partial output comes back with
    /// `timed_out: true`. Output beyond the head/tail budget is dropped from the
    /// middle with exact counters; memory stays bounded.
    ///
    /// Errors: `NotFound` (program or cwd missing), `PermissionDenied` (cwd outside
    /// the workspace, program not executable), `InvalidRequest` (empty id or
    /// program, NUL bytes, paused session), `AlreadyExists` (the id is running in
    /// the background), `SessionClosed`.
    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let _ = request;
        Err(self.unsupported("run_command"))
    }

    /// Kills the whole process tree of one running command, nothing else.
    /// Returns `true` if a running command was cancelled, `false` for an unknown
    /// or finished id. Requires `cancellation`.
    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        let _ = command_id;
        Err(self.unsupported("cancel_command"))
    }

    /// Starts a command in the background. Starting an id that already exists
    /// returns the existing process (an idempotency key). Requires
    /// `background_processes`. Errors as `run_command`.
    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let _ = request;
        Err(self.unsupported("start_command"))
    }

    /// Every command the session still tracks, oldest first. Requires
    /// `background_processes`.
    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        Err(self.unsupported("list_commands"))
    }

    /// State, start time and output counters of one command. Requires
    /// `background_processes`. Errors: `NotFound` for an unknown id.
    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        let _ = command_id;
        Err(self.unsupported("command_status"))
    }

    /// Numbered output chunks after `after_seq` (0 for all) plus the head/tail
    /// view, so a client that lost its connection resumes where it stopped.
    /// Requires `background_processes`. Errors: `NotFound` for an unknown id.
    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        let _ = (command_id, after_seq);
        Err(self.unsupported("command_output"))
    }

    /// Live output events after `after_seq`, ending with `Exited`. Requires
    /// `streaming`. Errors: `NotFound` for an unknown id.
    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        let _ = (command_id, after_seq);
        Err(self.unsupported("stream_command"))
    }

    /// Writes to a background command's stdin (started with `keep_stdin_open`),
    /// closing it afterwards when `close` is set. Requires `stdin`.
    /// Errors: `NotFound` (unknown id), `InvalidRequest` (stdin already closed or
    /// the command has exited).
    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        let _ = (command_id, bytes, close);
        Err(self.unsupported("write_stdin"))
    }

    /// Sends `signal` to a running command's process group. Requires
    /// `background_processes`. Errors: `NotFound` (unknown id), `InvalidRequest`
    /// (already exited).
    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        let _ = (command_id, signal);
        Err(self.unsupported("signal_command"))
    }

    /// Changes the size of a running terminal command's terminal; the program
    /// gets SIGWINCH. Requires `pty`. Errors: `NotFound` (unknown id),
    /// `InvalidRequest` (not a terminal command, exited, a size of 0 or over
    /// [`RunnerTerminal::MAX_SIZE`](crate::RunnerTerminal::MAX_SIZE)).
    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        let _ = (command_id, rows, cols);
        Err(self.unsupported("resize_terminal"))
    }

    // ----- files -----

    /// Reads a file, or `limit` bytes from `offset`, into one buffer of at most
    /// [`MAX_READ_BYTES`](crate::MAX_READ_BYTES). Requires `file_read`. The
    /// default collects [`read_file_stream`](Self::read_file_stream).
    /// Errors: `NotFound`, `InvalidRequest` (a directory, NUL byte, a window
    /// over the maximum), `PermissionDenied` (outside the workspace where the
    /// provider confines).
    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        const OP: &str = "read_file";
        crate::check_read_request(OP, &request)?;
        let file = self.read_file_stream(request.clone()).await?;
        let window = crate::read_window(OP, &request, file.size)?;
        let what = request.path.display().to_string();
        let contents = crate::collect_stream(OP, &what, file.bytes, window.len).await?;
        Ok(RunnerFileReadResult {
            path: request.path,
            contents,
            size: file.size,
        })
    }

    /// Streams a file, or `limit` bytes from `offset` (no maximum), in chunks:
    /// memory stays bounded whatever the file's size. Requires `file_read`.
    /// Errors as [`read_file`](Self::read_file), before the first chunk; an
    /// I/O failure later ends the stream with an `Err` item.
    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let _ = request;
        Err(self.unsupported("read_file_stream"))
    }

    /// Writes a whole file atomically: a reader sees the old or the new contents,
    /// never a mix, and a failed write leaves no partial file. Creates parent
    /// directories. Requires `file_write`. The default is
    /// [`write_file_stream`](Self::write_file_stream) with an empty body.
    /// Errors: `PermissionDenied` (read-only mount or entry, outside the
    /// workspace), `InvalidRequest` (target is a directory, NUL byte).
    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.write_file_stream(request, crate::empty_stream()).await
    }

    /// Writes `request.contents` followed by every chunk of `body`, with the
    /// same rules as [`write_file`](Self::write_file) (atomic unless
    /// `request.offset` is set, mode, parents). Memory stays bounded whatever
    /// the size. A body that ends with an `Err` item fails the write with
    /// that error: an atomic write leaves the target as it was; a write at an
    /// offset removes a file it created, while bytes it already wrote into an
    /// existing file may stay (offset writes are not atomic). Requires
    /// `file_write`.
    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let _ = (request, body);
        Err(self.unsupported("write_file_stream"))
    }

    /// Entries of a directory, sorted by name. Requires `file_management`.
    /// Errors: `NotFound`, `InvalidRequest` (not a directory).
    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let _ = path;
        Err(self.unsupported("list_dir"))
    }

    /// Metadata of a path; a symlink is reported as a symlink. Requires
    /// `file_management`. Errors: `NotFound`.
    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let _ = path;
        Err(self.unsupported("stat"))
    }

    /// Removes a file, a symlink, or a directory (non-empty only with
    /// `recursive`). Requires `file_management`. Errors: `NotFound`,
    /// `AlreadyExists` (directory not empty and not recursive), `PermissionDenied`
    /// (the workspace root itself, a read-only path).
    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let _ = (path, recursive);
        Err(self.unsupported("remove"))
    }

    /// Creates a directory and its parents; an existing directory is `Ok`.
    /// Requires `file_management`. Errors: `AlreadyExists` (a file is there).
    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let _ = path;
        Err(self.unsupported("make_dir"))
    }

    /// Renames `from` to `to` (replacing a file at `to`, as POSIX `rename`).
    /// Requires `file_management`. Errors: `NotFound`, `AlreadyExists` (a
    /// non-empty directory at `to`).
    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let _ = (from, to);
        Err(self.unsupported("rename"))
    }

    /// The absolute path with every symlink resolved (the path must exist).
    /// Requires `file_management`. Errors: `NotFound`.
    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let _ = path;
        Err(self.unsupported("canonicalize"))
    }

    /// Unpacks a tar archive into the directory `target` (created if missing).
    /// Entries that would land outside `target` (absolute, `..`, through a
    /// symlink) are refused with `PermissionDenied`. Requires `archive_transfer`.
    /// The default is [`upload_archive_stream`](Self::upload_archive_stream).
    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.upload_archive_stream(target, crate::bytes_stream(archive))
            .await
    }

    /// [`upload_archive`](Self::upload_archive) from a stream: memory stays
    /// bounded whatever the archive's size. Requires `archive_transfer`.
    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        let _ = (target, archive);
        Err(self.unsupported("upload_archive_stream"))
    }

    /// A tar archive of a directory's contents (paths relative to it) or of a
    /// single file. Symlinks are stored as symlinks. Requires `archive_transfer`.
    /// The default collects [`download_archive_stream`](Self::download_archive_stream).
    /// Errors: `NotFound`.
    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        let stream = self.download_archive_stream(path).await?;
        let what = path.display().to_string();
        crate::collect_stream("download_archive", &what, stream, u64::MAX).await
    }

    /// [`download_archive`](Self::download_archive) as a stream: memory stays
    /// bounded whatever the archive's size. Requires `archive_transfer`.
    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let _ = path;
        Err(self.unsupported("download_archive_stream"))
    }

    /// Watches a path of the workspace: created, modified, removed and
    /// renamed events with paths relative to the workspace, in the order they
    /// happened; past [`RunnerWatchRequest::MAX_QUEUED_EVENTS`] unread events
    /// an `Overflow` event replaces what was lost. The watch ends when the
    /// stream is dropped or the session closes. Requires `file_watch`.
    /// Errors: `NotFound` (no such path), `PermissionDenied` (outside the
    /// workspace), `InvalidRequest` (NUL byte).
    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        let _ = request;
        Err(self.unsupported("watch"))
    }

    // ----- ports, snapshots, mounts, artifacts -----

    /// A URL that reaches `port` of the runner from the caller's machine.
    /// Requires `port_preview`. Errors: `InvalidRequest` (port 0).
    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        let _ = request;
        Err(self.unsupported("expose_port"))
    }

    /// Ports the session's processes listen on. Requires `port_listing`.
    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        Err(self.unsupported("list_listening_ports"))
    }

    /// Captures the workspace. Requires `snapshots`. The reference can be put in
    /// a [`RunnerSessionState`] for [`RemoteRunnerProvider::resume_session`].
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        Err(self.unsupported("snapshot"))
    }

    /// Syncs writable mounts back to their stores. Requires a mount kind with a
    /// store. Errors: the store's error kind, naming the mount.
    async fn sync_mounts(&self) -> RunnerResult<()> {
        Err(self.unsupported("sync_mounts"))
    }

    /// Uploads a file or directory to the artifact store. Requires `artifact_export`.
    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let _ = request;
        Err(self.unsupported("export_artifact"))
    }

    /// Takes the workspace execution lease, so that no other holder (in this
    /// or another process, on this or another machine) holds it until it is
    /// released or lapses. Requires `execution_lease`.
    ///
    /// Errors: `AlreadyExists` naming the current holder when another live lease
    /// exists after `wait_ms`; `InvalidRequest` for a zero `ttl_ms` or an empty
    /// holder.
    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        let _ = request;
        Err(self.unsupported("acquire_workspace_execution_lease"))
    }

    /// Extends a held lease to `ttl_ms` from now. Requires `execution_lease`.
    ///
    /// Errors: `NotFound` when the lease lapsed and was taken by another holder
    /// or released.
    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        let _ = (lease, ttl_ms);
        Err(self.unsupported("renew_workspace_execution_lease"))
    }

    /// Gives a held lease back. Releasing a lease that already lapsed or was
    /// released is not an error. Requires `execution_lease`.
    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        let _ = lease;
        Err(self.unsupported("release_workspace_execution_lease"))
    }

    /// The `Unsupported` error for `operation` on this session's provider.
    fn unsupported(&self, operation: &str) -> RunnerError {
        RunnerError::unsupported(operation, &self.state().provider_id)
    }
}
