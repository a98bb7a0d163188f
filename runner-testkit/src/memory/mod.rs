//! `MemoryProvider`: an in-memory provider for framework unit tests.
//!
//! Sessions hold a filesystem in memory with the workspace at `/workspace`:
//! files (streamed in and out), directories, symlinks (made by archives),
//! archives and snapshots that fork a session; there are no commands, ports,
//! pausing or detaching. The provider is bare, as every provider is: wrap it
//! with [`runner_stack::stacked`] to get what users get (closed-session and
//! capability checks, workspace confinement, object-store mounts and
//! artifacts). Relative paths resolve under `/workspace`; absolute paths may
//! point anywhere in the session's own tree until the stack confines them.

mod archive;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use runner_api::{
    RemoteRunnerProviderId, RemoteRunnerSession, RunnerByteStream, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerFileReadRequest, RunnerFileStat, RunnerFileStream,
    RunnerFileWriteRequest, RunnerManifest, RunnerResult, RunnerSessionState, RunnerSnapshotRef,
    RunnerSweepReport, next_chunk, prepend,
};
use runner_kit::KnownDestinations;
use runner_kit::archive::MODE_MASK;

use self::tree::{Node, Parts, Tree, split};

/// The provider id of [`MemoryProvider`].
pub const MEMORY_PROVIDER_ID: &str = "memory";

/// The workspace root of every memory session.
pub const MEMORY_WORKSPACE_ROOT: &str = "/workspace";

/// Bytes one chunk of a `read_file_stream` holds at most.
const READ_CHUNK: usize = 1024 * 1024;

/// An in-memory provider: files, archives and snapshots, no commands.
///
/// Capabilities ([`memory_capabilities`](Self::memory_capabilities)):
/// `file_read`, `file_write`, `file_management`, `archive_transfer`,
/// `snapshots` and `snapshot_restore`; everything else is `Unsupported`.
/// Snapshots live in the provider (shared by its clones), so `resume_session`
/// with a snapshot forks a new session from it; without one it opens another
/// handle on a session that is still open. Either takes a state only for a
/// destination the provider created a session on or was given with
/// [`trust_destination`](runner_api::RemoteRunnerProvider::trust_destination),
/// as real providers do. Destinations name provider `"memory"`; `config`
/// must be `null` or an object (it has no settings). Manifest entries are
/// copied from the caller's filesystem at `create_session`; read-only entries
/// refuse writes with `PermissionDenied`.
///
/// Object-store mounts and artifact export come from the stack
/// ([`runner_stack::stacked`], or [`runner_stack::Stack`] with a secret
/// resolver), which also adds them to the capabilities.
#[derive(Clone, Default)]
pub struct MemoryProvider {
    store: Arc<Store>,
    destinations: KnownDestinations,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

/// Snapshots and live session trees, shared by every session of a provider.
#[derive(Default)]
struct Store {
    snapshots: Mutex<HashMap<String, Tree>>,
    live: Mutex<HashMap<String, Arc<Shared>>>,
}

/// One session's filesystem, shared by every handle on it; `None` once a
/// handle closed the session (the tree is freed).
struct Shared {
    tree: Mutex<Option<Tree>>,
}

impl Shared {
    fn new(tree: Tree) -> Arc<Self> {
        Arc::new(Self {
            tree: Mutex::new(Some(tree)),
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

    /// What memory sessions can do (the stack adds the object-store mount
    /// kinds and `artifact_export`).
    pub fn memory_capabilities() -> RunnerCapabilities {
        RunnerCapabilities {
            file_read: true,
            file_write: true,
            file_management: true,
            archive_transfer: true,
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
        runner_api::validate_manifest(&destination.default_manifest, &Self::memory_capabilities())
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
        Self::memory_capabilities()
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
        self.destinations.remember(&destination);
        let session_id = format!("memory-{}", uuid::Uuid::new_v4().simple());
        Ok(self.open(session_id, destination.id, Shared::new(tree)))
    }

    /// With a snapshot: a new session restored from it (a fork). Without: another
    /// handle on a session that is still open (closing any handle closes it).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        if state.provider_id != MEMORY_PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: the state belongs to provider {:?}, not {MEMORY_PROVIDER_ID:?}",
                state.provider_id
            )));
        }
        // Nothing is taken from the destination (it has no settings), but a
        // state is only trusted for a known one, as with every provider.
        self.destinations
            .of_state(OP, &state, "RemoteRunnerProvider::trust_destination")?;
        let (session_id, shared) = match &state.snapshot {
            Some(snapshot) => {
                if snapshot.provider_id != MEMORY_PROVIDER_ID {
                    return Err(RunnerError::invalid_request(format!(
                        "{OP}: snapshot {:?} belongs to provider {:?}",
                        snapshot.snapshot_id, snapshot.provider_id
                    )));
                }
                let tree = lock(&self.store.snapshots)
                    .get(&snapshot.snapshot_id)
                    .cloned()
                    .ok_or_else(|| {
                        RunnerError::not_found(format!(
                            "{OP}: no snapshot {:?}",
                            snapshot.snapshot_id
                        ))
                    })?;
                let session_id = format!("memory-{}", uuid::Uuid::new_v4().simple());
                (session_id, Shared::new(tree))
            }
            None => {
                let shared = lock(&self.store.live)
                    .get(&state.session_id)
                    .cloned()
                    .ok_or_else(|| {
                        RunnerError::not_found(format!(
                            "{OP}: session {:?} is closed (resume from a snapshot instead)",
                            state.session_id
                        ))
                    })?;
                (state.session_id.clone(), shared)
            }
        };
        Ok(self.open(session_id, state.destination_id, shared))
    }

    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        // Nothing outlives the process: there is nothing to sweep.
        Ok(RunnerSweepReport::default())
    }

    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
    }
}

/// A handle on one memory session.
struct MemorySession {
    state: RunnerSessionState,
    shared: Arc<Shared>,
    store: Arc<Store>,
}

impl MemorySession {
    /// Runs `f` on the session's tree, with `path` (as the caller gave it)
    /// split into lexical parts and shown absolute in messages.
    ///
    /// Errors: `SessionClosed` when a handle closed the session (its tree is
    /// gone), `InvalidRequest` for a NUL byte or a path that is not UTF-8,
    /// and those of `f`.
    fn with_tree<T>(
        &self,
        op: &str,
        path: &Path,
        f: impl FnOnce(&mut Tree, &Path, &Parts) -> RunnerResult<T>,
    ) -> RunnerResult<T> {
        let parts = split(op, Path::new(MEMORY_WORKSPACE_ROOT), path)?;
        let shown = Path::new(MEMORY_WORKSPACE_ROOT).join(path);
        match lock(&self.shared.tree).as_mut() {
            Some(tree) => f(tree, &shown, &parts),
            None => Err(RunnerError::session_closed(op, &self.state.session_id)),
        }
    }
}

/// `bytes` as a stream of chunks of at most [`READ_CHUNK`] bytes.
fn chunked(bytes: Bytes) -> RunnerByteStream {
    let len = bytes.len();
    let chunks = (0..len)
        .step_by(READ_CHUNK)
        .map(move |at| Ok(bytes.slice(at..(at + READ_CHUNK).min(len))));
    Box::pin(futures_util::stream::iter(chunks))
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

    /// Frees the tree; other handles on the session see `SessionClosed`.
    async fn close(&self) -> RunnerResult<()> {
        if lock(&self.shared.tree).take().is_some() {
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

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let op = "read_file";
        let contents = self.with_tree(op, &request.path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            tree.contents(op, shown, &parts)
        })?;
        let size = contents.len();
        let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(size);
        let start = clamp(request.offset.unwrap_or(0));
        let end = request
            .limit
            .map_or(size, |limit| start.saturating_add(clamp(limit)).min(size));
        Ok(RunnerFileStream {
            path: request.path,
            size: size as u64,
            bytes: chunked(contents.slice(start..end)),
        })
    }

    /// Refuses the write before reading the body, collects the body chunk
    /// by chunk, and replaces the file only when the body ended well.
    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let op = "write_file";
        let (path, offset) = (request.path, request.offset);
        let mode = request.mode.map(|mode| mode & MODE_MASK);
        self.with_tree(op, &path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            tree.check_write(op, shown, &parts, offset)
        })?;
        let mut body = prepend(request.contents, body);
        let mut contents = BytesMut::new();
        while let Some(chunk) = next_chunk(&mut body).await {
            contents.extend_from_slice(&chunk?);
        }
        self.with_tree(op, &path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            tree.write(op, shown, &parts, contents.freeze(), mode, offset)
        })
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let op = "list_dir";
        let mut entries = self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            tree.list(op, shown, &parts)
        })?;
        for entry in &mut entries {
            entry.path = path.join(&entry.name);
        }
        Ok(entries)
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let op = "stat";
        let mut stat = self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, false)?;
            tree.stat(op, shown, &parts)
        })?;
        stat.path = path.to_path_buf();
        Ok(stat)
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let op = "remove";
        self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, false)?;
            tree.remove(op, shown, &parts, recursive, &workspace_parts())
        })
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let op = "make_dir";
        self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            tree.make_dir(op, shown, &parts)
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let op = "rename";
        let to_parts = split(op, Path::new(MEMORY_WORKSPACE_ROOT), to)?;
        let to_shown = Path::new(MEMORY_WORKSPACE_ROOT).join(to);
        self.with_tree(op, from, |tree, shown, parts| {
            let from_parts = tree.resolve(op, shown, parts, false)?;
            let to_parts = tree.resolve(op, &to_shown, &to_parts, false)?;
            tree.rename(
                op,
                (shown, &from_parts),
                (&to_shown, &to_parts),
                &workspace_parts(),
            )
        })
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let op = "canonicalize";
        self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            if !tree.exists(&parts) {
                return Err(RunnerError::not_found(format!(
                    "{op} {}: no such file or directory",
                    shown.display()
                )));
            }
            let mut canonical = PathBuf::from("/");
            canonical.extend(&parts);
            Ok(canonical)
        })
    }

    /// Checks the archive with runner-kit's rules, then places its entries on
    /// a copy of the tree that replaces it only when every entry landed.
    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        let op = "upload_archive";
        // A closed session or a bad path fails before the archive is read.
        self.with_tree(op, target, |_, _, _| Ok(()))?;
        let entries = archive::read_upload(op, target, archive).await?;
        self.with_tree(op, target, |tree, shown, parts| {
            let mut staged = tree.clone();
            archive::unpack(&mut staged, op, shown, parts, entries)?;
            *tree = staged;
            Ok(())
        })
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let op = "download_archive";
        let (shown, name, node) = self.with_tree(op, path, |tree, shown, parts| {
            let parts = tree.resolve(op, shown, parts, true)?;
            let node = tree.node(&parts).ok_or_else(|| {
                RunnerError::not_found(format!(
                    "{op} {}: no such file or directory",
                    shown.display()
                ))
            })?;
            let name = parts.last().cloned().unwrap_or_default();
            Ok((shown.to_path_buf(), name, node))
        })?;
        Ok(archive::pack(op, shown, name, node))
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let op = "snapshot";
        let tree = self.with_tree(op, Path::new("."), |tree, _, _| Ok(tree.clone()))?;
        let snapshot_id = format!("memory-snapshot-{}", uuid::Uuid::new_v4().simple());
        lock(&self.store.snapshots).insert(snapshot_id.clone(), tree);
        Ok(RunnerSnapshotRef {
            provider_id: MEMORY_PROVIDER_ID.into(),
            snapshot_id,
            metadata: serde_json::json!({ "session_id": self.state.session_id }),
        })
    }
}
