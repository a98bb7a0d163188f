//! Object-store mounts and artifact export for every provider.
//!
//! The layer stack (`runner-stack`) wraps every session once:
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
//! destination's [`artifacts`](RunnerDestination::artifacts) field. Files move
//! as streams both ways, so no object is held whole in memory. See
//! `docs/mounts.md`.

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
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCapabilities, RunnerDestination, RunnerError, RunnerErrorKind,
    RunnerFileWriteRequest, RunnerManifest, RunnerResult, RunnerSnapshotRef,
};

/// The artifact store of a destination: its
/// [`artifacts`](RunnerDestination::artifacts) field, or `None` when absent.
///
/// Errors: `InvalidRequest` naming the destination and the bad field.
pub fn artifact_store_spec(destination: &RunnerDestination) -> RunnerResult<Option<StoreSpec>> {
    match &destination.artifacts {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| {
                RunnerError::invalid_request(format!(
                    "destination {:?}: artifacts: {e} (expected {{\"uri\": …, \
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
/// store setting parses. The stack calls it in `validate_destination` next to
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

/// Whether a session with `capabilities` can hold object-store mounts and
/// export artifacts: both go through its `file_read`, `file_write` and
/// `file_management`.
pub fn supports_stores(capabilities: &RunnerCapabilities) -> bool {
    capabilities.file_read && capabilities.file_write && capabilities.file_management
}

/// `capabilities` with what [`MountedSession`] adds when
/// [`supports_stores`] holds: the compiled-in object-store mount kinds, and
/// `artifact_export` when `artifact_store` (the destination names a store, or
/// for a provider: it can export wherever a store is named). A flag the inner
/// session already claims stays claimed.
pub fn mounted_capabilities(
    mut capabilities: RunnerCapabilities,
    artifact_store: bool,
) -> RunnerCapabilities {
    if supports_stores(&capabilities) {
        let kinds = store_mount_kinds();
        capabilities.artifact_export |= artifact_store;
        capabilities.mounts.s3 |= kinds.s3;
        capabilities.mounts.r2 |= kinds.r2;
        capabilities.mounts.gcs |= kinds.gcs;
        capabilities.mounts.azure_blob |= kinds.azure_blob;
    }
    capabilities
}

/// A session with materialized object-store mounts and artifact export,
/// wrapping any provider's session. It overrides what mounts change (writes
/// under read-only mounts, sync back on `sync_mounts`, `snapshot` and
/// `close`, artifact export, the capabilities); every other operation goes to
/// the inner session unchanged.
pub struct MountedSession {
    inner: Arc<dyn RemoteRunnerSession>,
    mounts: Vec<ObjectMount>,
    artifacts: Option<StoreSpec>,
    resolver: Arc<dyn SecretResolver>,
    synced_on_close: AtomicBool,
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
    /// into `inner` and returns the wrapped session, exporting artifacts to
    /// the destination's artifact store. Credentials are resolved here, on
    /// the caller's side, with `resolver`.
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
        let built = match artifact_store_spec(destination) {
            Ok(artifacts) => Self::materialize(&inner, destination, artifacts, resolver).await,
            Err(e) => Err(e),
        };
        match built {
            Ok(session) => Ok(Arc::new(session)),
            Err(e) => {
                if let Err(close) = inner.close().await {
                    tracing::warn!(error = %close, "closing a session whose mounts failed");
                }
                Err(e)
            }
        }
    }

    /// Wraps a resumed or rejoined session: no mount is materialized again
    /// (its files stay as plain files of the workspace) and nothing syncs
    /// back; artifacts go to the store `destination` names. `None` (a
    /// destination nobody vouched for) exports no artifacts.
    ///
    /// Errors: `InvalidRequest` for a bad artifact store setting; `inner` is
    /// then closed.
    pub async fn reattach(
        inner: Arc<dyn RemoteRunnerSession>,
        destination: Option<&RunnerDestination>,
        resolver: Arc<dyn SecretResolver>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        match destination.map(artifact_store_spec).transpose() {
            Ok(artifacts) => Ok(Arc::new(Self::new(
                inner.clone(),
                Vec::new(),
                artifacts.flatten(),
                resolver,
            ))),
            Err(e) => {
                if let Err(close) = inner.close().await {
                    tracing::warn!(error = %close, "closing a session whose artifact store is bad");
                }
                Err(e)
            }
        }
    }

    fn new(
        inner: Arc<dyn RemoteRunnerSession>,
        mounts: Vec<ObjectMount>,
        artifacts: Option<StoreSpec>,
        resolver: Arc<dyn SecretResolver>,
    ) -> Self {
        Self {
            inner,
            mounts,
            artifacts,
            resolver,
            synced_on_close: AtomicBool::new(false),
        }
    }

    async fn materialize(
        inner: &Arc<dyn RemoteRunnerSession>,
        destination: &RunnerDestination,
        artifacts: Option<StoreSpec>,
        resolver: Arc<dyn SecretResolver>,
    ) -> RunnerResult<Self> {
        let mut mounts: Vec<ObjectMount> = Vec::new();
        let caps = inner.capabilities();
        for mount in &destination.default_manifest.mounts {
            if !is_store_kind(&mount.intent.kind) {
                continue;
            }
            let what = format!("mount {:?}", mount.name);
            if !supports_stores(&caps) {
                return Err(RunnerError::new(
                    RunnerErrorKind::Unsupported,
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
                            && remove.kind() != RunnerErrorKind::NotFound
                        {
                            tracing::warn!(error = %remove, "removing a failed mount");
                        }
                    }
                    return Err(mount_failed(&mount.name, e));
                }
            }
            tracing::debug!(mount = %mount.name, "materialized mount");
        }
        Ok(Self::new(inner.clone(), mounts, artifacts, resolver))
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
impl LayeredSession for MountedSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    /// The inner session's, with the compiled-in object-store mount kinds,
    /// and `artifact_export` when the destination names an artifact store
    /// (see [`mounted_capabilities`]).
    fn capabilities(&self) -> RunnerCapabilities {
        mounted_capabilities(self.inner.capabilities(), self.artifacts.is_some())
    }

    /// Syncs writable mounts back, then closes the inner session. When the
    /// sync fails the session stays open (nothing is lost) and the error names
    /// the mount; closing again retries.
    async fn close(&self) -> RunnerResult<()> {
        if !self.synced_on_close.load(Ordering::SeqCst) {
            self.sync_all().await.map_err(|e| e.context("close"))?;
            self.synced_on_close.store(true, Ordering::SeqCst);
        }
        self.inner.close().await
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.guard("write_file", &request.path, false)?;
        self.inner.write_file(request).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.guard("write_file_stream", &request.path, false)?;
        self.inner.write_file_stream(request, body).await
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

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.guard("upload_archive", target, true)?;
        self.inner.upload_archive(target, archive).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.guard("upload_archive_stream", target, true)?;
        self.inner.upload_archive_stream(target, archive).await
    }

    /// Syncs writable mounts back, then snapshots the inner session.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.sync_all().await.map_err(|e| e.context("snapshot"))?;
        self.inner.snapshot().await
    }

    /// Syncs writable object-store mounts back (new, changed and deleted
    /// files), then the inner session's own mounts where it has any.
    async fn sync_mounts(&self) -> RunnerResult<()> {
        self.sync_all()
            .await
            .map_err(|e| e.context("sync_mounts"))?;
        match self.inner.sync_mounts().await {
            Err(e) if e.kind() == RunnerErrorKind::Unsupported => Ok(()),
            other => other,
        }
    }

    /// Uploads a file, or a directory as a tar, to the destination's artifact
    /// store; without one, the inner session exports (a provider's own
    /// export, else `Unsupported`).
    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let Some(spec) = &self.artifacts else {
            return self.inner.export_artifact(request).await;
        };
        let store = store::open_store("export_artifact", spec, self.resolver.as_ref()).await?;
        artifacts::export(self.inner.as_ref(), &store, request).await
    }
}
