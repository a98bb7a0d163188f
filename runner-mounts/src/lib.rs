//! Object-store mounts and artifact export for every provider.
//!
//! A provider gets both by wrapping each new session once:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use runner_api::{RemoteRunnerSession, RunnerDestination, RunnerResult};
//! # use runner_mounts::SecretResolver;
//! # async fn create(inner: Arc<dyn RemoteRunnerSession>, destination: &RunnerDestination,
//! #                 resolver: Arc<dyn SecretResolver>) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
//! runner_mounts::MountedSession::attach(inner, destination, resolver).await
//! # }
//! ```
//!
//! [`MountedSession::attach`] copies every `s3`/`r2`/`gcs`/`azure_blob` mount
//! of the manifest into the workspace through the session's own file API (so
//! credentials never enter the runner), and returns a session that syncs
//! writable mounts back on `sync_mounts`, `snapshot` and `close`, refuses writes
//! under read-only mounts, and exports artifacts to the store named by the
//! destination config's `"artifacts"` key. See `docs/mounts.md`.

mod artifacts;
mod secrets;
mod store;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

pub use self::secrets::{EnvSecretResolver, SecretResolver, SecretValues};
pub use self::store::{StoreSpec, is_store_kind, store_mount_kinds};
use self::sync::{ObjectMount, mount_failed};
/// The object_store crate this module builds on, for callers that open a
/// [`StoreSpec`] themselves.
pub use object_store;
use runner_api::{
    RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerCapabilities, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerDestination, RunnerError, RunnerEventStream, RunnerExecutionLease,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerListeningPort, RunnerManifest, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
};

/// The reserved key of `RunnerDestination.config` naming the artifact store.
pub const ARTIFACTS_CONFIG_KEY: &str = "artifacts";

/// The artifact store of a destination: its config's `"artifacts"` value,
/// or `None` when absent.
///
/// Errors: `InvalidRequest` naming the bad field.
pub fn artifact_store_spec(destination: &RunnerDestination) -> RunnerResult<Option<StoreSpec>> {
    match destination.config.get(ARTIFACTS_CONFIG_KEY) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| {
                RunnerError::invalid_request(format!(
                    "destination {:?}: config.{ARTIFACTS_CONFIG_KEY}: {e} (expected {{\"uri\": …, \
                 \"credentials\": {{\"id\": …}}, \"options\": {{…}}}})",
                    destination.id
                ))
            }),
    }
}

/// The manifest without its object-store mounts: what the provider itself
/// applies (entries and `provider_native` mounts).
pub fn native_manifest(manifest: &RunnerManifest) -> RunnerManifest {
    RunnerManifest {
        entries: manifest.entries.clone(),
        mounts: manifest
            .mounts
            .iter()
            .filter(|m| !is_store_kind(&m.intent.kind))
            .cloned()
            .collect(),
    }
}

/// Checks the object-store parts of a destination without contacting any
/// store: each store mount's URI scheme matches its kind, and the artifact
/// store config parses. Call it from `validate_destination` next to
/// [`validate_manifest`](runner_api::validate_manifest).
///
/// Errors: `InvalidRequest` naming the mount or field.
pub fn validate_stores(destination: &RunnerDestination) -> RunnerResult<()> {
    for mount in &destination.default_manifest.mounts {
        if is_store_kind(&mount.intent.kind) {
            store::check_mount_uri(
                &format!("mount {:?}", mount.name),
                &mount.intent.kind,
                &mount.intent.uri,
            )?;
        }
    }
    artifact_store_spec(destination).map(|_| ())
}

/// A session with materialized object-store mounts and artifact export,
/// wrapping any provider's session. Every other operation goes to the inner
/// session unchanged.
pub struct MountedSession {
    inner: Arc<dyn RemoteRunnerSession>,
    mounts: Vec<ObjectMount>,
    artifacts: Option<StoreSpec>,
    resolver: Arc<dyn SecretResolver>,
    closed: AtomicBool,
}

impl std::fmt::Debug for MountedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedSession")
            .field("session_id", &self.inner.state().session_id)
            .field("mounts", &self.mounts)
            .field("artifacts", &self.artifacts.as_ref().map(|s| &s.uri))
            .finish_non_exhaustive()
    }
}

impl MountedSession {
    /// Materializes the object-store mounts of `destination.default_manifest`
    /// into `inner` and returns the wrapped session. Credentials are resolved
    /// here, on the caller's side, with `resolver`.
    ///
    /// On any failure every mount directory created so far is removed, `inner`
    /// is closed, and the error names the mount: `PermissionDenied` (bad
    /// credentials), `NotFound` (missing bucket or secret), `Unavailable`
    /// (unreachable endpoint), `InvalidRequest` (bad URI or option),
    /// `Unsupported` (a backend not compiled in, or a session without
    /// `file_read`, `file_write` and `file_management`).
    pub async fn attach(
        inner: Arc<dyn RemoteRunnerSession>,
        destination: &RunnerDestination,
        resolver: Arc<dyn SecretResolver>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        match Self::build(&inner, destination, resolver).await {
            Ok(session) => Ok(Arc::new(session)),
            Err(e) => {
                if let Err(close) = inner.close().await {
                    tracing::warn!(error = %close, "closing a session whose mounts failed");
                }
                Err(e)
            }
        }
    }

    async fn build(
        inner: &Arc<dyn RemoteRunnerSession>,
        destination: &RunnerDestination,
        resolver: Arc<dyn SecretResolver>,
    ) -> RunnerResult<Self> {
        let artifacts = artifact_store_spec(destination)?;
        let mut mounts: Vec<ObjectMount> = Vec::new();
        let caps = inner.capabilities();
        for mount in &destination.default_manifest.mounts {
            if !is_store_kind(&mount.intent.kind) {
                continue;
            }
            let what = format!("mount {:?}", mount.name);
            if !(caps.file_read && caps.file_write && caps.file_management) {
                return Err(RunnerError::new(
                    runner_api::RunnerErrorKind::Unsupported,
                    format!(
                        "{what}: object-store mounts need file_read, file_write and \
                         file_management on the {} provider",
                        inner.state().provider_id
                    ),
                ));
            }
            runner_api::validate_relative_path(&what, &mount.path)?;
            store::check_mount_uri(&what, &mount.intent.kind, &mount.intent.uri)?;
            let spec = StoreSpec {
                uri: mount.intent.uri.clone(),
                credentials: mount.intent.credentials.clone(),
                options: Default::default(),
            };
            let result = async {
                let open = store::open_store(&what, &spec, resolver.as_ref()).await?;
                let object_mount = ObjectMount::new(
                    mount.name.clone(),
                    mount.path.clone(),
                    mount.read_only,
                    open,
                );
                object_mount.materialize(inner.as_ref()).await?;
                Ok::<_, RunnerError>(object_mount)
            }
            .await;
            match result {
                Ok(object_mount) => mounts.push(object_mount),
                Err(e) => {
                    for done in mounts.iter().map(|m| &m.path).chain([&mount.path]) {
                        if let Err(remove) = inner.remove(done, true).await
                            && remove.kind() != runner_api::RunnerErrorKind::NotFound
                        {
                            tracing::warn!(error = %remove, "removing a failed mount");
                        }
                    }
                    return Err(mount_failed(&mount.name, e));
                }
            }
            tracing::debug!(mount = %mount.name, "materialized mount");
        }
        Ok(Self {
            inner: inner.clone(),
            mounts,
            artifacts,
            resolver,
            closed: AtomicBool::new(false),
        })
    }

    /// The inner session.
    pub fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    async fn sync_all(&self) -> RunnerResult<()> {
        for mount in &self.mounts {
            mount.sync(self.inner.as_ref()).await?;
        }
        Ok(())
    }

    /// The path relative to the workspace root, lexically normalized; `None`
    /// for an absolute path outside the root.
    fn relative(&self, path: &Path) -> Option<PathBuf> {
        let root = runner_api::normalize_lexically(&self.inner.workspace_root());
        let full = if path.is_absolute() {
            runner_api::normalize_lexically(path)
        } else {
            runner_api::normalize_lexically(&root.join(path))
        };
        full.strip_prefix(&root).ok().map(Path::to_path_buf)
    }

    /// Refuses `operation` on `path` when it lies under a read-only mount, or
    /// (with `contains`) when it holds one.
    fn guard(&self, operation: &str, path: &Path, contains: bool) -> RunnerResult<()> {
        let Some(rel) = self.relative(path) else {
            return Ok(());
        };
        for mount in self.mounts.iter().filter(|m| m.read_only) {
            let mount_rel = runner_api::normalize_lexically(&Path::new("/").join(&mount.path));
            let mount_rel = mount_rel.strip_prefix("/").unwrap_or(&mount_rel);
            if rel.starts_with(mount_rel) || (contains && mount_rel.starts_with(&rel)) {
                return Err(RunnerError::permission_denied(format!(
                    "{operation} {}: mount {:?} is read-only",
                    path.display(),
                    mount.name
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RemoteRunnerSession for MountedSession {
    fn state(&self) -> RunnerSessionState {
        self.inner.state()
    }

    /// The inner session's, with `artifact_export` and the compiled-in
    /// object-store mount kinds.
    fn capabilities(&self) -> RunnerCapabilities {
        let mut caps = self.inner.capabilities();
        let kinds = store_mount_kinds();
        caps.artifact_export = true;
        caps.mounts.s3 |= kinds.s3;
        caps.mounts.r2 |= kinds.r2;
        caps.mounts.gcs |= kinds.gcs;
        caps.mounts.azure_blob |= kinds.azure_blob;
        caps
    }

    fn workspace_root(&self) -> PathBuf {
        self.inner.workspace_root()
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.inner.pause().await
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.inner.resume().await
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.inner.detach().await
    }

    /// Syncs writable mounts back, then closes the inner session. When the
    /// sync fails the session stays open (nothing is lost) and the error names
    /// the mount; closing again retries.
    async fn close(&self) -> RunnerResult<()> {
        if !self.closed.load(Ordering::SeqCst) {
            self.sync_all().await.map_err(|e| e.context("close"))?;
            self.closed.store(true, Ordering::SeqCst);
        }
        self.inner.close().await
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.inner.run_command(request).await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.inner.cancel_command(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.inner.start_command(request).await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.inner.list_commands().await
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.inner.command_status(command_id).await
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.inner.command_output(command_id, after_seq).await
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.inner.stream_command(command_id, after_seq).await
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        self.inner.write_stdin(command_id, bytes, close).await
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.inner.signal_command(command_id, signal).await
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        self.inner.read_file(request).await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.guard("write_file", &request.path, false)?;
        self.inner.write_file(request).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        self.inner.list_dir(path).await
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        self.inner.stat(path).await
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.guard("remove", path, true)?;
        self.inner.remove(path, recursive).await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.guard("make_dir", path, false)?;
        self.inner.make_dir(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.guard("rename", from, true)?;
        self.guard("rename", to, true)?;
        self.inner.rename(from, to).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.inner.canonicalize(path).await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.guard("upload_archive", target, true)?;
        self.inner.upload_archive(target, archive).await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        self.inner.download_archive(path).await
    }

    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        self.inner.expose_port(request).await
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        self.inner.list_listening_ports().await
    }

    /// Syncs writable mounts back, then snapshots the inner session.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.sync_all().await.map_err(|e| e.context("snapshot"))?;
        self.inner.snapshot().await
    }

    /// Syncs writable object-store mounts back (new, changed and deleted
    /// files), then the inner session's own mounts where it has any.
    async fn sync_mounts(&self) -> RunnerResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(
                "sync_mounts",
                &self.inner.state().session_id,
            ));
        }
        self.sync_all()
            .await
            .map_err(|e| e.context("sync_mounts"))?;
        match self.inner.sync_mounts().await {
            Err(e) if e.kind() == runner_api::RunnerErrorKind::Unsupported => Ok(()),
            other => other,
        }
    }

    /// Uploads a file, or a directory as a tar, to the destination's artifact
    /// store. Errors: `InvalidRequest` when the destination names none.
    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(
                "export_artifact",
                &self.inner.state().session_id,
            ));
        }
        let spec = self.artifacts.as_ref().ok_or_else(|| {
            RunnerError::invalid_request(format!(
                "export_artifact {}: the destination names no artifact store (set config.{ARTIFACTS_CONFIG_KEY}.uri)",
                request.path.display()
            ))
        })?;
        let store = store::open_store("export_artifact", spec, self.resolver.as_ref()).await?;
        artifacts::export(self.inner.as_ref(), &store, request).await
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.inner.acquire_workspace_execution_lease(request).await
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        self.inner
            .renew_workspace_execution_lease(lease, ttl_ms)
            .await
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        self.inner.release_workspace_execution_lease(lease).await
    }
}
