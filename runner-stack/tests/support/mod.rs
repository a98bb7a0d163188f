//! A probe between the stack and the in-memory provider: it claims some
//! flags the memory provider lacks and counts every call of the operations
//! the correctness layer may refuse, so a test sees what reached the bare
//! session.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runner_api::{
    LayeredSession, RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession,
    RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerByteStream, RunnerCapabilities,
    RunnerCommandId, RunnerCommandRequest, RunnerCommandResult, RunnerDestination,
    RunnerEventStream, RunnerExecutionLease, RunnerLeaseRequest, RunnerListeningPort,
    RunnerPortRequest, RunnerPortResult, RunnerProcessInfo, RunnerResult, RunnerSessionState,
};
use runner_testkit::MemoryProvider;

/// A memory destination with `id`.
pub fn destination(id: &str) -> RunnerDestination {
    RunnerDestination {
        id: id.into(),
        provider_id: runner_testkit::MEMORY_PROVIDER_ID.into(),
        config: serde_json::json!({}),
        default_manifest: Default::default(),
        artifacts: None,
    }
}

/// What reached the probe.
#[derive(Default)]
pub struct Seen {
    /// Calls of the counted operations, by operation name.
    pub calls: Mutex<Vec<String>>,
    /// Calls of `detach`.
    pub detached: AtomicUsize,
    /// Destinations given to `validate_destination`, `create_session` and
    /// `trust_destination`.
    pub destinations: Mutex<Vec<RunnerDestination>>,
}

impl Seen {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, op: &str) {
        self.calls.lock().unwrap().push(op.to_string());
    }

    pub fn destinations(&self) -> Vec<RunnerDestination> {
        self.destinations.lock().unwrap().clone()
    }
}

/// The memory provider, with sessions that claim `command_exec` and
/// `detachable` on top of the memory capabilities.
#[derive(Clone, Default)]
pub struct Probe {
    pub memory: MemoryProvider,
    pub seen: Arc<Seen>,
}

/// What probe sessions claim.
pub fn probe_capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        detachable: true,
        ..MemoryProvider::memory_capabilities()
    }
}

#[async_trait]
impl RemoteRunnerProvider for Probe {
    fn id(&self) -> RemoteRunnerProviderId {
        self.memory.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        probe_capabilities()
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.seen
            .destinations
            .lock()
            .unwrap()
            .push(destination.clone());
        self.memory.validate_destination(destination).await
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.seen
            .destinations
            .lock()
            .unwrap()
            .push(destination.clone());
        let inner = self.memory.create_session(destination).await?;
        Ok(Arc::new(ProbeSession {
            inner,
            seen: self.seen.clone(),
        }))
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let inner = self.memory.resume_session(state).await?;
        Ok(Arc::new(ProbeSession {
            inner,
            seen: self.seen.clone(),
        }))
    }

    fn trust_destination(&self, destination: &RunnerDestination) {
        self.seen
            .destinations
            .lock()
            .unwrap()
            .push(destination.clone());
        self.memory.trust_destination(destination);
    }
}

/// A memory session that counts the calls reaching it.
pub struct ProbeSession {
    inner: Arc<dyn RemoteRunnerSession>,
    seen: Arc<Seen>,
}

#[async_trait]
impl LayeredSession for ProbeSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    fn capabilities(&self) -> RunnerCapabilities {
        RunnerCapabilities {
            command_exec: true,
            detachable: true,
            ..self.inner.capabilities()
        }
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.seen.detached.fetch_add(1, Ordering::SeqCst);
        Ok(self.inner.state())
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.seen.call("pause");
        self.inner.pause().await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.seen.call("run_command");
        self.inner.run_command(request).await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.seen.call("cancel_command");
        self.inner.cancel_command(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.seen.call("start_command");
        self.inner.start_command(request).await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.seen.call("stream_command");
        self.inner.stream_command(command_id, after_seq).await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.seen.call("write_stdin");
        self.inner.write_stdin(command_id, bytes, close).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.seen.call("upload_archive_stream");
        self.inner.upload_archive_stream(target, archive).await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.seen.call("expose_port");
        self.inner.expose_port(request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.seen.call("list_listening_ports");
        self.inner.list_listening_ports().await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        self.seen.call("export_artifact");
        self.inner.export_artifact(request).await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.seen.call("acquire_workspace_execution_lease");
        self.inner.acquire_workspace_execution_lease(request).await
    }
}
