//! Staging for bulk file transfers: a private directory of the agent where a
//! provider hands over, or picks up, a file's bytes through the sandbox's own
//! copy API (docker's archive API) instead of the agent stream.
//!
//! The agent stays the one that checks paths and owns files: a staged upload
//! is written into the workspace by the session's `write_file` (every check,
//! the atomic replace, the session user's permissions), a staged download is
//! the bytes the session's `read_file` gave. The provider only ever touches a
//! file of a directory the agent made for it, named by an id it cannot
//! guess, in a root only the agent's user can enter.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use futures_util::StreamExt;
use runner_api::{RunnerByteStream, RunnerError, RunnerErrorKind, RunnerResult};
use tokio::io::AsyncWriteExt;

/// The staged file's name inside its directory.
pub const STAGED_FILE: &str = "data";

/// The agent's staging root and the directories it made there.
#[derive(Debug)]
pub(crate) struct Stage {
    root: PathBuf,
    live: Mutex<HashSet<String>>,
}

fn stage_error(operation: &str, path: &Path, error: std::io::Error) -> RunnerError {
    RunnerError::from_io(&format!("{operation}: staging"), path.display(), error)
}

impl Stage {
    /// Makes `root` (0700; an existing one must be a directory of this user
    /// closed to others) and empties it of what an earlier agent left.
    ///
    /// Errors: `PermissionDenied` for a root others may enter or another
    /// user owns, the I/O error otherwise, each naming the root.
    pub(crate) fn open(root: &Path) -> RunnerResult<Self> {
        const OP: &str = "serve --stage-dir";
        let io = |e| stage_error(OP, root, e);
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::symlink_metadata(root).map_err(io)?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.permissions().mode() & 0o077 != 0
        {
            return Err(RunnerError::permission_denied(format!(
                "{OP} {}: not a private directory of this user",
                root.display()
            )));
        }
        for entry in std::fs::read_dir(root).map_err(io)? {
            let path = entry.map_err(io)?.path();
            std::fs::remove_dir_all(&path).map_err(io)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            live: Mutex::default(),
        })
    }

    fn live(&self) -> MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new empty directory: its id and path.
    pub(crate) fn create(&self, operation: &str) -> RunnerResult<(String, PathBuf)> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(&id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| stage_error(operation, &dir, e))?;
        self.live().insert(id.clone());
        Ok((id, dir))
    }

    /// The staged file of directory `id`, which this agent made and has not
    /// removed.
    ///
    /// Errors: `NotFound` naming the id.
    pub(crate) fn file(&self, operation: &str, id: &str) -> RunnerResult<PathBuf> {
        if !self.live().contains(id) {
            return Err(RunnerError::not_found(format!(
                "{operation}: no staged transfer {id}"
            )));
        }
        Ok(self.root.join(id).join(STAGED_FILE))
    }

    /// Removes directory `id` and what it holds; an unknown id is a no-op.
    pub(crate) fn remove(&self, id: &str) {
        if self.live().remove(id) {
            let dir = self.root.join(id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "agent: removing a staged transfer");
            }
        }
    }

    /// Writes `bytes` as the staged file of a new directory: its id, path
    /// and size. A failure removes the directory.
    pub(crate) async fn fill(
        &self,
        operation: &str,
        mut bytes: RunnerByteStream,
    ) -> RunnerResult<(String, PathBuf, u64)> {
        let (id, dir) = self.create(operation)?;
        let path = dir.join(STAGED_FILE);
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .await
                .map_err(|e| stage_error(operation, &path, e))?;
            let mut size = 0u64;
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk?;
                size += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| stage_error(operation, &path, e))?;
            }
            file.flush()
                .await
                .map_err(|e| stage_error(operation, &path, e))?;
            Ok::<_, RunnerError>(size)
        }
        .await;
        match written {
            Ok(size) => Ok((id, path, size)),
            Err(e) => {
                self.remove(&id);
                Err(e)
            }
        }
    }
}

/// `Unsupported`: the agent was started without a staging directory.
pub(crate) fn no_stage(operation: &str) -> RunnerError {
    RunnerError::new(
        RunnerErrorKind::Unsupported,
        format!("{operation}: this agent stages no transfers (started without --stage-dir)"),
    )
}
