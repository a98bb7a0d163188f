//! `ManagedSession`: a session wrapper that records activity, and the timer
//! checks the manager runs on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{IdleAction, ManagerConfig};
use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerEventStream, RunnerExecutionLease, RunnerFileReadRequest,
    RunnerFileReadResult, RunnerFileStat, RunnerFileStream, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerListeningPort, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerProcessState, RunnerResult, RunnerSessionState, RunnerSignal,
    RunnerSnapshotRef, RunnerWatchRequest, RunnerWatchStream,
};

/// Why a managed session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `close` was called on it.
    Requested,
    /// It was idle for `idle_timeout` and could not be (or was not to be) paused.
    Idle,
    /// It reached `max_lifetime`.
    MaxLifetime,
    /// It was detached.
    Detached,
    /// [`SessionManager::close_all`](super::SessionManager::close_all) closed it.
    Shutdown,
}

/// Where a managed session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedStatus {
    /// Open and running.
    Active,
    /// Paused; `by_manager` when the idle rule paused it (the next call
    /// resumes it), `false` when `pause` was called on it.
    Paused {
        /// Whether the manager paused it.
        by_manager: bool,
    },
    /// Closed, for this reason.
    Closed(CloseReason),
}

impl ManagedStatus {
    /// Whether the session is closed.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

/// A session under a [`SessionManager`](super::SessionManager): every call is
/// forwarded to the inner session and counts as activity.
///
/// Hand it out as `Arc<dyn RemoteRunnerSession>`; keep the `Arc<ManagedSession>`
/// where the agent loop runs to call [`touch`](Self::touch) and
/// [`begin_turn`](Self::begin_turn).
pub struct ManagedSession {
    inner: Arc<dyn RemoteRunnerSession>,
    session_id: String,
    config: Arc<ManagerConfig>,
    created: Instant,
    last_activity: Mutex<Instant>,
    last_keepalive: Mutex<Instant>,
    in_flight: AtomicUsize,
    turns: AtomicUsize,
    /// Whether the last look at the session's commands found one running.
    saw_running: AtomicBool,
    status: Mutex<ManagedStatus>,
    /// Serializes status changes (pause, resume, close) with the start of calls.
    transition: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ManagedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedSession")
            .field("session_id", &self.session_id)
            .field("status", &self.status())
            .field("turns", &self.turns.load(Ordering::SeqCst))
            .field("in_flight", &self.in_flight.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Marks an agent turn in progress: while any guard of a session is held, the
/// idle rule leaves the session alone. Dropping it counts as activity.
#[must_use = "the turn ends when the guard is dropped"]
pub struct TurnGuard {
    session: Arc<ManagedSession>,
}

impl std::fmt::Debug for TurnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnGuard")
            .field("session_id", &self.session.session_id)
            .finish()
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.session.turns.fetch_sub(1, Ordering::SeqCst);
        self.session.touch();
    }
}

/// One call in flight; counts as activity until dropped.
struct CallGuard<'a> {
    session: &'a ManagedSession,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.session.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.session.touch();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ManagedSession {
    pub(super) fn new(inner: Arc<dyn RemoteRunnerSession>, config: Arc<ManagerConfig>) -> Self {
        let now = Instant::now();
        Self {
            session_id: inner.state().session_id,
            inner,
            config,
            created: now,
            last_activity: Mutex::new(now),
            last_keepalive: Mutex::new(now),
            in_flight: AtomicUsize::new(0),
            turns: AtomicUsize::new(0),
            saw_running: AtomicBool::new(false),
            status: Mutex::new(ManagedStatus::Active),
            transition: tokio::sync::Mutex::new(()),
        }
    }

    /// The inner session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The provider's session this one wraps. Calls made on it directly do not
    /// count as activity.
    pub fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    /// Where the session stands.
    pub fn status(&self) -> ManagedStatus {
        *lock(&self.status)
    }

    /// Records activity now (the agent is thinking): the idle timer restarts.
    pub fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    /// Starts an agent turn: until the guard is dropped the session is never
    /// paused or closed for idleness (the maximum lifetime still applies).
    pub fn begin_turn(self: &Arc<Self>) -> TurnGuard {
        self.turns.fetch_add(1, Ordering::SeqCst);
        self.touch();
        TurnGuard {
            session: self.clone(),
        }
    }

    fn set_status(&self, status: ManagedStatus) {
        *lock(&self.status) = status;
    }

    fn busy(&self) -> bool {
        self.turns.load(Ordering::SeqCst) > 0 || self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Starts a forwarded call: resumes a session the manager paused, then
    /// counts the call as in flight.
    async fn begin(&self, operation: &str) -> RunnerResult<CallGuard<'_>> {
        let _transition = self.transition.lock().await;
        if self.status() == (ManagedStatus::Paused { by_manager: true }) {
            match self.inner.resume().await {
                Ok(_) => {
                    tracing::info!(session_id = %self.session_id, operation, "resumed a session paused for idleness");
                    self.set_status(ManagedStatus::Active);
                }
                Err(e) => {
                    tracing::warn!(session_id = %self.session_id, operation, error = %e, "could not resume a session paused for idleness");
                    return Err(e.context(format!("{operation}: resuming the idle session")));
                }
            }
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Ok(CallGuard { session: self })
    }

    /// Closes the inner session and records why.
    pub(super) async fn close_because(&self, reason: CloseReason) -> RunnerResult<()> {
        let _transition = self.transition.lock().await;
        if self.status().is_closed() {
            return Ok(());
        }
        let result = self.inner.close().await;
        match &result {
            Ok(()) => tracing::info!(session_id = %self.session_id, ?reason, "session closed"),
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, ?reason, error = %e, "closing the session failed")
            }
        }
        self.set_status(ManagedStatus::Closed(reason));
        result
    }

    /// Whether the inner session reports a running background command.
    /// Sessions without `background_processes` report none. When
    /// `list_commands` fails the answer is unknown and counts as running, so
    /// a passing backend error never pauses a session under a job.
    async fn has_running_commands(&self) -> bool {
        if !self.inner.capabilities().background_processes {
            return false;
        }
        match self.inner.list_commands().await {
            Ok(list) => {
                let running = list.iter().any(|p| p.state == RunnerProcessState::Running);
                self.saw_running.store(running, Ordering::SeqCst);
                running
            }
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, error = %e, "list_commands failed while checking activity; counting the session as active");
                true
            }
        }
    }

    /// A cheap call that reaches the backend.
    async fn keepalive(&self) {
        let caps = self.inner.capabilities();
        let result = if caps.background_processes {
            self.has_running_commands().await;
            Ok(())
        } else if caps.command_exec {
            let request = RunnerCommandRequest::new(
                format!("runner-keepalive-{}", uuid::Uuid::new_v4().simple()),
                "true",
                Vec::<String>::new(),
            )
            .with_timeout_ms(30_000);
            self.inner.run_command(request).await.map(drop)
        } else {
            Ok(())
        };
        match result {
            Ok(()) => tracing::debug!(session_id = %self.session_id, "keepalive sent"),
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, error = %e, "keepalive failed")
            }
        }
    }

    /// One round of the manager's timers.
    pub(super) async fn check(&self) {
        let config = self.config.clone();
        if self.status().is_closed() {
            return;
        }
        let now = Instant::now();
        if let Some(max) = config.max_lifetime
            && now.duration_since(self.created) >= max
        {
            tracing::info!(session_id = %self.session_id, max_lifetime_ms = max.as_millis() as u64, "closing a session at its maximum lifetime");
            let _ = self.close_because(CloseReason::MaxLifetime).await;
            return;
        }
        if self.status() != ManagedStatus::Active {
            return;
        }
        if let Some(interval) = config.keepalive_interval {
            let due = now.duration_since(*lock(&self.last_keepalive)) >= interval;
            if due && (self.busy() || self.saw_running.load(Ordering::SeqCst)) {
                *lock(&self.last_keepalive) = Instant::now();
                self.keepalive().await;
            }
        }
        let Some(idle_timeout) = config.idle_timeout else {
            return;
        };
        let idle = |s: &Self| {
            !s.busy() && Instant::now().duration_since(*lock(&s.last_activity)) >= idle_timeout
        };
        if !idle(self) {
            return;
        }
        let _transition = self.transition.lock().await;
        if self.status() != ManagedStatus::Active || !idle(self) {
            return;
        }
        if self.has_running_commands().await {
            self.touch();
            return;
        }
        let pause = config.on_idle == IdleAction::Pause && self.inner.capabilities().pausable;
        if pause {
            match self.inner.pause().await {
                Ok(_) => {
                    // A turn that began while the pause was in flight (pausing a
                    // container takes a while) keeps the session active.
                    if self.busy() {
                        match self.inner.resume().await {
                            Ok(_) => return,
                            Err(e) => {
                                tracing::warn!(session_id = %self.session_id, error = %e, "resuming a session whose idle pause raced a new turn failed")
                            }
                        }
                    }
                    tracing::info!(session_id = %self.session_id, idle_timeout_ms = idle_timeout.as_millis() as u64, "paused an idle session");
                    self.set_status(ManagedStatus::Paused { by_manager: true });
                    return;
                }
                Err(e) => {
                    tracing::warn!(session_id = %self.session_id, error = %e, "pausing an idle session failed; closing it");
                }
            }
        }
        match self.inner.close().await {
            Ok(()) => {
                tracing::info!(session_id = %self.session_id, idle_timeout_ms = idle_timeout.as_millis() as u64, "closed an idle session")
            }
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, error = %e, "closing an idle session failed")
            }
        }
        self.set_status(ManagedStatus::Closed(CloseReason::Idle));
    }
}

/// Every call but `state`, `capabilities` and `workspace_root` counts as
/// activity for its whole duration (a stream's until it is returned) and
/// first resumes a session the manager paused.
#[async_trait]
impl LayeredSession for ManagedSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        let _transition = self.transition.lock().await;
        self.touch();
        let state = self.inner.pause().await?;
        self.set_status(ManagedStatus::Paused { by_manager: false });
        Ok(state)
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        let _transition = self.transition.lock().await;
        self.touch();
        let state = self.inner.resume().await?;
        self.set_status(ManagedStatus::Active);
        Ok(state)
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        let _transition = self.transition.lock().await;
        let state = self.inner.detach().await?;
        self.set_status(ManagedStatus::Closed(CloseReason::Detached));
        Ok(state)
    }

    async fn close(&self) -> RunnerResult<()> {
        self.close_because(CloseReason::Requested).await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let _call = self.begin("run_command").await?;
        self.inner.run_command(request).await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        let _call = self.begin("cancel_command").await?;
        self.inner.cancel_command(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let _call = self.begin("start_command").await?;
        let info = self.inner.start_command(request).await?;
        if info.state == RunnerProcessState::Running {
            self.saw_running.store(true, Ordering::SeqCst);
        }
        Ok(info)
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        let _call = self.begin("list_commands").await?;
        self.inner.list_commands().await
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        let _call = self.begin("command_status").await?;
        self.inner.command_status(command_id).await
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        let _call = self.begin("command_output").await?;
        self.inner.command_output(command_id, after_seq).await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        let _call = self.begin("stream_command").await?;
        self.inner.stream_command(command_id, after_seq).await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        let _call = self.begin("write_stdin").await?;
        self.inner.write_stdin(command_id, bytes, close).await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        let _call = self.begin("signal_command").await?;
        self.inner.signal_command(command_id, signal).await
    }

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        let _call = self.begin("resize_terminal").await?;
        self.inner.resize_terminal(command_id, rows, cols).await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        let _call = self.begin("watch").await?;
        self.inner.watch(request).await
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        let _call = self.begin("read_file").await?;
        self.inner.read_file(request).await
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let _call = self.begin("read_file_stream").await?;
        self.inner.read_file_stream(request).await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        let _call = self.begin("write_file").await?;
        self.inner.write_file(request).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let _call = self.begin("write_file_stream").await?;
        self.inner.write_file_stream(request, body).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let _call = self.begin("list_dir").await?;
        self.inner.list_dir(path).await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let _call = self.begin("stat").await?;
        self.inner.stat(path).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let _call = self.begin("remove").await?;
        self.inner.remove(path, recursive).await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let _call = self.begin("make_dir").await?;
        self.inner.make_dir(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let _call = self.begin("rename").await?;
        self.inner.rename(from, to).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let _call = self.begin("canonicalize").await?;
        self.inner.canonicalize(path).await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        let _call = self.begin("upload_archive").await?;
        self.inner.upload_archive(target, archive).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        let _call = self.begin("upload_archive_stream").await?;
        self.inner.upload_archive_stream(target, archive).await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        let _call = self.begin("download_archive").await?;
        self.inner.download_archive(path).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let _call = self.begin("download_archive_stream").await?;
        self.inner.download_archive_stream(path).await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        let _call = self.begin("expose_port").await?;
        self.inner.expose_port(request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        let _call = self.begin("list_listening_ports").await?;
        self.inner.list_listening_ports().await
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let _call = self.begin("snapshot").await?;
        self.inner.snapshot().await
    }

    async fn sync_mounts(&self) -> RunnerResult<()> {
        let _call = self.begin("sync_mounts").await?;
        self.inner.sync_mounts().await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let _call = self.begin("export_artifact").await?;
        self.inner.export_artifact(request).await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        let _call = self.begin("acquire_workspace_execution_lease").await?;
        self.inner.acquire_workspace_execution_lease(request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        let _call = self.begin("renew_workspace_execution_lease").await?;
        self.inner
            .renew_workspace_execution_lease(lease, ttl_ms)
            .await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        let _call = self.begin("release_workspace_execution_lease").await?;
        self.inner.release_workspace_execution_lease(lease).await
    }
}
