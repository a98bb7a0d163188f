//! `MemoryProvider`: an in-memory provider for framework unit tests.
//!
//! Sessions hold a filesystem in memory with the workspace at `/workspace`.
//! Files can be read, written and managed, and snapshots fork a session; there
//! are no commands, ports, pausing or detaching, and those operations honestly
//! return `Unsupported`. Relative paths resolve under `/workspace`; absolute paths
//! may point anywhere in the session's own tree (wrap the session in a
//! [`RemoteWorkspace`](runner_stack::RemoteWorkspace) to confine it).

mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities, RunnerDestination,
    RunnerError, RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat,
    RunnerFileWriteRequest, RunnerManifest, RunnerResult, RunnerSessionState, RunnerSnapshotRef,
    RunnerSweepReport,
};
use runner_mounts::MountedSession;
use runner_mounts::SecretResolver;

use self::tree::{Node, Parts, Tree, split};

/// The provider id of [`MemoryProvider`].
pub const MEMORY_PROVIDER_ID: &str = "memory";

/// The workspace root of every memory session.
pub const MEMORY_WORKSPACE_ROOT: &str = "/workspace";

/// An in-memory provider: file operations and snapshots, no commands.
///
/// Capabilities: `file_read`, `file_write`, `file_management`, `snapshots` and
/// `snapshot_restore`; everything else returns `Unsupported`. Snapshots live in
/// the provider (shared by its clones), so `resume_session` with a snapshot
/// forks a new session from it. Destinations name provider `"memory"`; `config`
/// must be `null` or an object (it has no settings). Manifest entries are copied
/// from the caller's filesystem at `create_session`; read-only entries refuse
/// writes with `PermissionDenied`.
///
/// Object-store mounts (`s3`/`r2` with runner-api's `s3` feature, `gcs`,
/// `azure_blob` with theirs) and artifact export come from
/// [`MountedSession`](runner_mounts::MountedSession): credentials are
/// resolved with the provider's [`SecretResolver`] (default
/// [`EnvSecretResolver`](runner_mounts::EnvSecretResolver); see
/// [`with_secret_resolver`](Self::with_secret_resolver)).
#[derive(Clone)]
pub struct MemoryProvider {
    store: Arc<Store>,
    resolver: Arc<dyn SecretResolver>,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            resolver: Arc::new(runner_mounts::EnvSecretResolver::new()),
        }
    }
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider").finish_non_exhaustive()
    }
}

/// Snapshots and live session trees, shared by every session of a provider.
#[derive(Default)]
struct Store {
    snapshots: Mutex<HashMap<String, Tree>>,
    live: Mutex<HashMap<String, Arc<Shared>>>,
}

/// One session's state, shared by every handle on it.
struct Shared {
    tree: Mutex<Tree>,
    closed: AtomicBool,
}

impl Shared {
    fn new(tree: Tree) -> Arc<Self> {
        Arc::new(Self {
            tree: Mutex::new(tree),
            closed: AtomicBool::new(false),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn workspace_parts() -> Parts {
    vec![MEMORY_WORKSPACE_ROOT.trim_start_matches('/').to_string()]
}

impl MemoryProvider {
    /// A provider with an empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves mount and artifact-store credentials with `resolver`.
    pub fn with_secret_resolver(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The capabilities of the in-memory tree itself: without the object-store
    /// mount kinds and `artifact_export`, which [`MemoryProvider`] adds.
    pub fn memory_capabilities() -> RunnerCapabilities {
        RunnerCapabilities {
            file_read: true,
            file_write: true,
            file_management: true,
            snapshots: true,
            snapshot_restore: true,
            ..RunnerCapabilities::default()
        }
    }

    fn check_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        if destination.provider_id != MEMORY_PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "destination {:?}: provider_id is {:?}, expected {MEMORY_PROVIDER_ID:?}",
                destination.id, destination.provider_id
            )));
        }
        if !(destination.config.is_null() || destination.config.is_object()) {
            return Err(RunnerError::invalid_request(format!(
                "destination {:?}: config must be null or an object (the memory provider has \
                 no settings)",
                destination.id
            )));
        }
        runner_api::validate_manifest(
            &destination.default_manifest,
            &Self::provider_capabilities(),
        )?;
        runner_mounts::validate_stores(destination)
    }

    /// [`memory_capabilities`](Self::memory_capabilities) plus artifact export
    /// and the compiled-in object-store mount kinds.
    fn provider_capabilities() -> RunnerCapabilities {
        let mut caps = Self::memory_capabilities();
        caps.artifact_export = true;
        caps.mounts = runner_mounts::store_mount_kinds();
        caps
    }

    fn open(
        &self,
        session_id: String,
        destination_id: String,
        shared: Arc<Shared>,
    ) -> Arc<dyn RemoteRunnerSession> {
        lock(&self.store.live).insert(session_id.clone(), shared.clone());
        Arc::new(MemorySession {
            state: RunnerSessionState {
                provider_id: MEMORY_PROVIDER_ID.into(),
                session_id,
                destination_id,
                snapshot: None,
                metadata: serde_json::json!({ "workspace_root": MEMORY_WORKSPACE_ROOT }),
            },
            shared,
            store: self.store.clone(),
        })
    }
}

impl MemoryProvider {
    /// Wraps a resumed session like a new one, without mounts or an artifact
    /// store (the state does not carry the destination), so its capabilities
    /// match the provider's.
    async fn rewrap(
        &self,
        session: Arc<dyn RemoteRunnerSession>,
        state: &RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let destination = RunnerDestination {
            id: state.destination_id.clone(),
            provider_id: MEMORY_PROVIDER_ID.into(),
            config: serde_json::Value::Null,
            default_manifest: RunnerManifest::default(),
            artifacts: None,
        };
        MountedSession::attach(session, &destination, self.resolver.clone()).await
    }
}

/// Copies the manifest's entries from the caller's filesystem into `tree`.
fn apply_manifest(tree: &mut Tree, manifest: &RunnerManifest) -> RunnerResult<()> {
    let root = Path::new(MEMORY_WORKSPACE_ROOT);
    for entry in &manifest.entries {
        let node = load_host(&entry.source).map_err(|e| {
            RunnerError::from_io("create_session: manifest entry", entry.source.display(), e)
        })?;
        let parts = split("create_session: manifest entry", root, &entry.target)?;
        tree.insert(&parts, node).map_err(|what| {
            RunnerError::invalid_request(format!(
                "create_session: manifest entry {}: {what}",
                entry.target.display()
            ))
        })?;
        if !entry.writable {
            tree.mark_read_only(parts);
        }
    }
    Ok(())
}

fn load_host(source: &Path) -> std::io::Result<Node> {
    let meta = std::fs::metadata(source)?;
    let mode = host_mode(&meta);
    if meta.is_dir() {
        let mut dir = Node::dir(mode);
        let mut names: Vec<_> = std::fs::read_dir(source)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().into_owned();
            dir.insert_child(name, load_host(&entry.path())?);
        }
        Ok(dir)
    } else {
        Ok(Node::file(std::fs::read(source)?, mode))
    }
}

#[cfg(unix)]
fn host_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & runner_kit::archive::MODE_MASK
}

#[cfg(not(unix))]
fn host_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.is_dir() { 0o755 } else { 0o644 }
}

#[async_trait]
impl runner_api::RemoteRunnerProvider for MemoryProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        MEMORY_PROVIDER_ID.into()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        Self::provider_capabilities()
    }

    fn default_workspace(&self) -> Option<String> {
        Some(MEMORY_WORKSPACE_ROOT.into())
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.check_destination(destination)
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.check_destination(&destination)?;
        let mut tree = Tree::with_workspace(&workspace_parts());
        if !destination.default_manifest.entries.is_empty() {
            let manifest = destination.default_manifest.clone();
            tree = tokio::task::spawn_blocking(move || {
                apply_manifest(&mut tree, &manifest).map(|()| tree)
            })
            .await
            .map_err(|e| {
                RunnerError::provider(format!("create_session: loading the manifest: {e}"))
            })??;
        }
        let session_id = format!("memory-{}", uuid::Uuid::new_v4().simple());
        let session = self.open(session_id, destination.id.clone(), Shared::new(tree));
        MountedSession::attach(session, &destination, self.resolver.clone()).await
    }

    /// With a snapshot: a new session restored from it (a fork). Without: another
    /// handle on a session that is still open (closing any handle closes it).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        if state.provider_id != MEMORY_PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "resume_session: the state belongs to provider {:?}, not {MEMORY_PROVIDER_ID:?}",
                state.provider_id
            )));
        }
        match &state.snapshot {
            Some(snapshot) => {
                if snapshot.provider_id != MEMORY_PROVIDER_ID {
                    return Err(RunnerError::invalid_request(format!(
                        "resume_session: snapshot {:?} belongs to provider {:?}",
                        snapshot.snapshot_id, snapshot.provider_id
                    )));
                }
                let tree = lock(&self.store.snapshots)
                    .get(&snapshot.snapshot_id)
                    .cloned()
                    .ok_or_else(|| {
                        RunnerError::not_found(format!(
                            "resume_session: no snapshot {:?}",
                            snapshot.snapshot_id
                        ))
                    })?;
                let session_id = format!("memory-{}", uuid::Uuid::new_v4().simple());
                let session =
                    self.open(session_id, state.destination_id.clone(), Shared::new(tree));
                self.rewrap(session, &state).await
            }
            None => {
                let shared = lock(&self.store.live).get(&state.session_id).cloned().ok_or_else(|| {
                    RunnerError::not_found(format!(
                        "resume_session: session {:?} is closed (resume from a snapshot instead)",
                        state.session_id
                    ))
                })?;
                let session = self.open(
                    state.session_id.clone(),
                    state.destination_id.clone(),
                    shared,
                );
                self.rewrap(session, &state).await
            }
        }
    }

    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        // Nothing outlives the process: there is nothing to sweep.
        Ok(RunnerSweepReport::default())
    }
}

/// A handle on one memory session.
struct MemorySession {
    state: RunnerSessionState,
    shared: Arc<Shared>,
    store: Arc<Store>,
}

impl MemorySession {
    fn open(&self, op: &str) -> RunnerResult<MutexGuard<'_, Tree>> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(op, &self.state.session_id));
        }
        Ok(lock(&self.shared.tree))
    }

    fn parts(&self, op: &str, path: &Path) -> RunnerResult<Parts> {
        split(op, Path::new(MEMORY_WORKSPACE_ROOT), path)
    }

    fn shown(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            Path::new(MEMORY_WORKSPACE_ROOT).join(path)
        }
    }
}

#[async_trait]
impl RemoteRunnerSession for MemorySession {
    fn state(&self) -> RunnerSessionState {
        self.state.clone()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        MemoryProvider::memory_capabilities()
    }

    fn workspace_root(&self) -> PathBuf {
        PathBuf::from(MEMORY_WORKSPACE_ROOT)
    }

    async fn close(&self) -> RunnerResult<()> {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            let mut live = lock(&self.store.live);
            if live
                .get(&self.state.session_id)
                .is_some_and(|shared| Arc::ptr_eq(shared, &self.shared))
            {
                live.remove(&self.state.session_id);
            }
        }
        Ok(())
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        let op = "read_file";
        let tree = self.open(op)?;
        let parts = self.parts(op, &request.path)?;
        let (contents, size) = tree.read(
            op,
            &self.shown(&request.path),
            &parts,
            request.offset,
            request.limit,
        )?;
        Ok(RunnerFileReadResult {
            path: request.path,
            contents,
            size,
        })
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        let op = "write_file";
        let mut tree = self.open(op)?;
        let parts = self.parts(op, &request.path)?;
        tree.write(
            op,
            &self.shown(&request.path),
            &parts,
            request.contents,
            request
                .mode
                .map(|mode| mode & runner_kit::archive::MODE_MASK),
            request.offset,
        )
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let op = "list_dir";
        let tree = self.open(op)?;
        let parts = self.parts(op, path)?;
        let mut entries = tree.list(op, &self.shown(path), &parts)?;
        for entry in &mut entries {
            entry.path = path.join(&entry.name);
        }
        Ok(entries)
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let op = "stat";
        let tree = self.open(op)?;
        let parts = self.parts(op, path)?;
        let mut stat = tree.stat(op, &self.shown(path), &parts)?;
        stat.path = path.to_path_buf();
        Ok(stat)
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let op = "remove";
        let mut tree = self.open(op)?;
        let parts = self.parts(op, path)?;
        tree.remove(op, &self.shown(path), &parts, recursive, &workspace_parts())
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let op = "make_dir";
        let mut tree = self.open(op)?;
        let parts = self.parts(op, path)?;
        tree.make_dir(op, &self.shown(path), &parts)
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let op = "rename";
        let mut tree = self.open(op)?;
        let from_parts = self.parts(op, from)?;
        let to_parts = self.parts(op, to)?;
        tree.rename(
            op,
            (&self.shown(from), &from_parts),
            (&self.shown(to), &to_parts),
            &workspace_parts(),
        )
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let op = "canonicalize";
        let tree = self.open(op)?;
        let parts = self.parts(op, path)?;
        if !tree.exists(&parts) {
            return Err(RunnerError::not_found(format!(
                "{op} {}: no such file or directory",
                self.shown(path).display()
            )));
        }
        let mut canonical = PathBuf::from("/");
        canonical.extend(&parts);
        Ok(canonical)
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let op = "snapshot";
        let tree = self.open(op)?.clone();
        let snapshot_id = format!("memory-snapshot-{}", uuid::Uuid::new_v4().simple());
        lock(&self.store.snapshots).insert(snapshot_id.clone(), tree);
        Ok(RunnerSnapshotRef {
            provider_id: MEMORY_PROVIDER_ID.into(),
            snapshot_id,
            metadata: serde_json::json!({ "session_id": self.state.session_id }),
        })
    }
}
