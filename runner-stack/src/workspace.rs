//! `RemoteWorkspace`: the seed's path rule, enforced over any session.
//!
//! Writes and the working directory stay under `root`; reads may also resolve
//! under `read_roots`. A path is checked twice: lexically (after folding `.` and
//! `..`), and on the runner with `canonicalize`, so a symlink that leads outside
//! is refused too. Operations on a path itself (`stat`, `remove`, `rename`) resolve
//! the parent and keep the final component, so they act on a link, not its target.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerByteStream, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerErrorKind,
    RunnerFileKind, RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileStream,
    RunnerFileWriteRequest, RunnerProcessInfo, RunnerResult, RunnerWatchRequest, RunnerWatchStream,
    normalize_lexically, reject_nul_path,
};

/// Whether a path is read or written: writes may only land under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAccess {
    /// Reads may resolve under the root or a read root.
    Read,
    /// Writes and the working directory stay under the root.
    Write,
}

/// Whether the final component is followed when it is a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

/// A session whose paths are confined to a workspace root (and read roots).
///
/// A [`LayeredSession`], so it can stand wherever a session does; it overrides
/// the operations that take a path or a working directory (the whole-buffer
/// and the streaming forms alike) and forwards every other one. Relative paths
/// resolve under `root`; a command without `cwd` runs in `root`. Refusals are `PermissionDenied` (outside) or `InvalidRequest` (NUL byte).
/// Symlink checks need the session's `canonicalize`; without `file_management` the
/// check is lexical only.
#[derive(Clone)]
pub struct RemoteWorkspace {
    /// The session operations go to.
    pub session: Arc<dyn RemoteRunnerSession>,
    /// Absolute runner path of the workspace root.
    pub root: PathBuf,
    /// Extra absolute runner paths reads may resolve under.
    pub read_roots: Vec<PathBuf>,
    /// Canonical forms of the roots that existed when first resolved, shared
    /// by clones: each root costs one `canonicalize` per workspace, not one
    /// per operation. A root replaced later (by a symlink elsewhere) keeps
    /// its first answer, so paths through the replacement are refused.
    canonical: Arc<Mutex<HashMap<PathBuf, PathBuf>>>,
}

impl RemoteWorkspace {
    /// Confines `session` to `root`.
    pub fn new(session: Arc<dyn RemoteRunnerSession>, root: impl Into<PathBuf>) -> Self {
        Self {
            session,
            root: root.into(),
            read_roots: Vec::new(),
            canonical: Arc::default(),
        }
    }

    /// Confines `session` to its own workspace root.
    pub fn for_session(session: Arc<dyn RemoteRunnerSession>) -> Self {
        let root = session.workspace_root();
        Self::new(session, root)
    }

    /// Adds read roots.
    pub fn with_read_roots(mut self, read_roots: impl IntoIterator<Item = PathBuf>) -> Self {
        self.read_roots.extend(read_roots);
        self
    }

    fn allowed(&self, access: PathAccess) -> Vec<PathBuf> {
        let mut roots = vec![normalize_lexically(&self.root)];
        if access == PathAccess::Read {
            roots.extend(self.read_roots.iter().map(|r| normalize_lexically(r)));
        }
        roots
    }

    fn canonical(&self) -> MutexGuard<'_, HashMap<PathBuf, PathBuf>> {
        self.canonical
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn canonical_roots(&self, access: PathAccess) -> RunnerResult<Vec<PathBuf>> {
        let mut out = Vec::new();
        for root in self.allowed(access) {
            let known = self.canonical().get(&root).cloned();
            let canonical = match known {
                Some(canonical) => canonical,
                None => {
                    let (canonical, existed) = self.canonical_existing(&root).await?;
                    if existed {
                        self.canonical().insert(root, canonical.clone());
                    }
                    canonical
                }
            };
            out.push(canonical);
        }
        Ok(out)
    }

    /// `canonicalize` of the longest existing prefix, with the rest appended, and
    /// whether the whole path existed.
    async fn canonical_existing(&self, path: &Path) -> RunnerResult<(PathBuf, bool)> {
        let mut missing = Vec::new();
        let mut current = path.to_path_buf();
        loop {
            match self.session.canonicalize(&current).await {
                Ok(canonical) => {
                    let existed = missing.is_empty();
                    let mut out = canonical;
                    for part in missing.iter().rev() {
                        out.push(part);
                    }
                    return Ok((out, existed));
                }
                Err(e) if e.kind() == RunnerErrorKind::NotFound => {
                    let Some(name) = current.file_name().map(|n| n.to_os_string()) else {
                        return Ok((path.to_path_buf(), false));
                    };
                    missing.push(name);
                    current.pop();
                }
                Err(e) if e.kind() == RunnerErrorKind::Unsupported => {
                    return Ok((path.to_path_buf(), true));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Resolves `path` for `operation` and returns the absolute path to use.
    ///
    /// Errors: `InvalidRequest` (NUL byte), `PermissionDenied` (outside the allowed
    /// roots, lexically or through a symlink).
    pub async fn resolve(
        &self,
        operation: &str,
        path: &Path,
        access: PathAccess,
    ) -> RunnerResult<PathBuf> {
        self.resolve_with(operation, path, access, Follow::Yes)
            .await
    }

    async fn resolve_with(
        &self,
        operation: &str,
        path: &Path,
        access: PathAccess,
        follow: Follow,
    ) -> RunnerResult<PathBuf> {
        reject_nul_path(operation, path)?;
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        };
        let lexical = normalize_lexically(&joined);
        let outside = || {
            RunnerError::permission_denied(format!(
                "{operation} {}: outside the workspace {}",
                path.display(),
                self.root.display()
            ))
        };
        if !self
            .allowed(access)
            .iter()
            .any(|root| lexical.starts_with(root))
        {
            return Err(outside());
        }
        let roots = self.canonical_roots(access).await?;
        let is_root = self.allowed(access).contains(&lexical);
        let resolved = match (follow, lexical.parent(), lexical.file_name()) {
            (Follow::No, Some(parent), Some(name)) if !is_root => {
                self.canonical_existing(parent).await?.0.join(name)
            }
            _ => {
                let (canonical, existed) = self.canonical_existing(&lexical).await?;
                if !existed {
                    self.refuse_dangling_link(operation, path, &canonical)
                        .await?;
                }
                canonical
            }
        };
        if !roots.iter().any(|root| resolved.starts_with(root)) {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: resolves outside the workspace {} through a symlink",
                path.display(),
                self.root.display()
            )));
        }
        Ok(resolved)
    }

    /// A followed path that does not exist may still be a dangling symlink whose
    /// target cannot be checked: refuse it.
    async fn refuse_dangling_link(
        &self,
        operation: &str,
        path: &Path,
        canonical: &Path,
    ) -> RunnerResult<()> {
        match self.session.stat(canonical).await {
            Ok(stat) if stat.kind == RunnerFileKind::Symlink => {
                Err(RunnerError::permission_denied(format!(
                    "{operation} {}: is a symlink whose target does not exist",
                    path.display()
                )))
            }
            _ => Ok(()),
        }
    }

    async fn resolve_command(
        &self,
        mut request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandRequest> {
        let cwd = request.cwd.clone().unwrap_or_else(|| self.root.clone());
        request.cwd = Some(self.resolve("command cwd", &cwd, PathAccess::Write).await?);
        Ok(request)
    }
}

#[async_trait]
impl LayeredSession for RemoteWorkspace {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.session
    }

    fn workspace_root(&self) -> PathBuf {
        self.root.clone()
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let request = self.resolve_command(request).await?;
        self.session.run_command(request).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let request = self.resolve_command(request).await?;
        self.session.start_command(request).await
    }

    async fn read_file(
        &self,
        mut request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        let asked = request.path.clone();
        request.path = self.resolve("read_file", &asked, PathAccess::Read).await?;
        let mut result = self.session.read_file(request).await?;
        result.path = asked;
        Ok(result)
    }

    async fn read_file_stream(
        &self,
        mut request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let asked = request.path.clone();
        request.path = self
            .resolve("read_file_stream", &asked, PathAccess::Read)
            .await?;
        let mut file = self.session.read_file_stream(request).await?;
        file.path = asked;
        Ok(file)
    }

    async fn write_file(&self, mut request: RunnerFileWriteRequest) -> RunnerResult<()> {
        request.path = self
            .resolve("write_file", &request.path, PathAccess::Write)
            .await?;
        self.session.write_file(request).await
    }

    async fn write_file_stream(
        &self,
        mut request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        request.path = self
            .resolve("write_file_stream", &request.path, PathAccess::Write)
            .await?;
        self.session.write_file_stream(request, body).await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        // Events name paths relative to the root, so a watch stays under the
        // root itself (read roots are not watched).
        let path = self
            .resolve("watch", &request.path, PathAccess::Write)
            .await?;
        self.session
            .watch(RunnerWatchRequest { path, ..request })
            .await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let resolved = self.resolve("list_dir", path, PathAccess::Read).await?;
        let mut entries = self.session.list_dir(&resolved).await?;
        for entry in &mut entries {
            entry.path = path.join(&entry.name);
        }
        Ok(entries)
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let resolved = self
            .resolve_with("stat", path, PathAccess::Read, Follow::No)
            .await?;
        let mut stat = self.session.stat(&resolved).await?;
        stat.path = path.to_path_buf();
        Ok(stat)
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let resolved = self
            .resolve_with("remove", path, PathAccess::Write, Follow::No)
            .await?;
        if normalize_lexically(&self.root.join(path)) == normalize_lexically(&self.root) {
            return Err(RunnerError::permission_denied(format!(
                "remove {}: refusing to remove the workspace root",
                path.display()
            )));
        }
        self.session.remove(&resolved, recursive).await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let resolved = self.resolve("make_dir", path, PathAccess::Write).await?;
        self.session.make_dir(&resolved).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let from = self
            .resolve_with("rename", from, PathAccess::Write, Follow::No)
            .await?;
        let to = self
            .resolve_with("rename", to, PathAccess::Write, Follow::No)
            .await?;
        self.session.rename(&from, &to).await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let resolved = self.resolve("canonicalize", path, PathAccess::Read).await?;
        self.session.canonicalize(&resolved).await
    }

    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        let resolved = self
            .resolve("upload_archive", target, PathAccess::Write)
            .await?;
        self.session.upload_archive(&resolved, archive).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        let resolved = self
            .resolve("upload_archive_stream", target, PathAccess::Write)
            .await?;
        self.session.upload_archive_stream(&resolved, archive).await
    }

    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        let resolved = self
            .resolve("download_archive", path, PathAccess::Read)
            .await?;
        self.session.download_archive(&resolved).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        let resolved = self
            .resolve("download_archive_stream", path, PathAccess::Read)
            .await?;
        self.session.download_archive_stream(&resolved).await
    }

    async fn export_artifact(
        &self,
        mut request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let asked = request.path.clone();
        request.path = self
            .resolve("export_artifact", &asked, PathAccess::Read)
            .await?;
        let mut result = self.session.export_artifact(request).await?;
        result.path = asked;
        Ok(result)
    }
}
