//! Workspace directories the provider creates itself (sessions without a
//! configured `root`): creation, liveness locks, removal, and `sweep_orphans`.
//!
//! Each owned workspace `<workspaces_dir>/<name>` has a lock directory
//! `<workspaces_dir>/.locks/<name>/` holding one lock file per live session
//! using it, each held with `flock` for the session's lifetime (the kernel drops
//! the lock when the process dies). `sweep_orphans` removes a workspace only when
//! its lock directory has lock files and none of them is held: that is, only
//! directories this provider created, for sessions that no longer exist.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use runner_api::{RunnerError, RunnerResult, RunnerSweepReport};

const LOCKS: &str = ".locks";

/// A workspace directory this provider created, with the session's lock on it.
/// Dropping it releases the lock and keeps the lock file, so that
/// `sweep_orphans` can recognise the workspace as orphaned.
pub(crate) struct OwnedDir {
    /// The workspace directory.
    pub(crate) path: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
}

fn lock_dir(workspaces_dir: &Path, name: &str) -> PathBuf {
    workspaces_dir.join(LOCKS).join(name)
}

/// Creates a lock file for `session_id` in `dir` that is already locked when it
/// appears there (created and locked under a temporary name, then renamed).
fn place_lock(workspaces_dir: &Path, dir: &Path, session_id: &str) -> io::Result<(PathBuf, File)> {
    let staging = workspaces_dir.join(LOCKS).join(".staging");
    fs::create_dir_all(&staging)?;
    fs::create_dir_all(dir)?;
    let temp = staging.join(format!("{session_id}.{}", uuid::Uuid::new_v4().simple()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    file.try_lock().map_err(|e| match e {
        TryLockError::Error(e) => e,
        TryLockError::WouldBlock => io::Error::other("a fresh lock file is locked"),
    })?;
    let lock_path = dir.join(format!("{session_id}.lock"));
    if let Err(e) = fs::rename(&temp, &lock_path) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok((lock_path, file))
}

impl OwnedDir {
    /// Creates `<workspaces_dir>/<session_id>`, locked for `session_id`.
    pub(crate) fn create(workspaces_dir: &Path, session_id: &str) -> RunnerResult<Self> {
        let op = "create workspace";
        let io = |e| RunnerError::from_io(op, workspaces_dir.display(), e);
        fs::create_dir_all(workspaces_dir).map_err(io)?;
        let (lock_path, lock) = place_lock(
            workspaces_dir,
            &lock_dir(workspaces_dir, session_id),
            session_id,
        )
        .map_err(io)?;
        let path = workspaces_dir.join(session_id);
        if let Err(e) = fs::create_dir(&path) {
            let _ = fs::remove_file(&lock_path);
            return Err(RunnerError::from_io(op, path.display(), e));
        }
        Ok(Self {
            path,
            lock_path,
            lock: Some(lock),
        })
    }

    /// Takes a share of an existing owned workspace for `session_id` (resuming
    /// without a snapshot). A workspace outside a workspaces directory gets no
    /// lock.
    pub(crate) fn adopt(path: &Path, session_id: &str) -> Self {
        let placed = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if lock_dir(parent, &name.to_string_lossy()).is_dir() => {
                place_lock(
                    parent,
                    &lock_dir(parent, &name.to_string_lossy()),
                    session_id,
                )
                .ok()
            }
            _ => None,
        };
        match placed {
            Some((lock_path, lock)) => Self {
                path: path.to_path_buf(),
                lock_path,
                lock: Some(lock),
            },
            None => Self {
                path: path.to_path_buf(),
                lock_path: PathBuf::new(),
                lock: None,
            },
        }
    }

    /// Removes the workspace and its lock directory.
    pub(crate) fn remove(&mut self) -> io::Result<()> {
        let result = remove_tree(&self.path);
        self.lock.take();
        if let Some(locks) = self.lock_path.parent()
            && !self.lock_path.as_os_str().is_empty()
        {
            let _ = fs::remove_dir_all(locks);
        }
        result
    }
}

/// Gives every directory of a tree owner write permission (without following
/// symlinks), so read-only entries do not block its removal.
fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// Removes a whole tree (symlinks are removed, never followed). A tree that is
/// already gone is `Ok`.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    make_writable(path);
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes owned workspaces of `workspaces_dir` whose sessions are all gone.
pub(crate) fn sweep(workspaces_dir: &Path) -> RunnerResult<RunnerSweepReport> {
    let mut report = RunnerSweepReport::default();
    let locks_root = workspaces_dir.join(LOCKS);
    let entries = match fs::read_dir(&locks_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => {
            return Err(RunnerError::from_io(
                "sweep_orphans",
                locks_root.display(),
                e,
            ));
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == ".staging" || !entry.path().is_dir() {
            continue;
        }
        let locks: Vec<PathBuf> = match fs::read_dir(entry.path()) {
            Ok(files) => files.flatten().map(|f| f.path()).collect(),
            Err(_) => continue,
        };
        if locks.is_empty() {
            continue;
        }
        let held = locks.iter().any(|lock| match File::open(lock) {
            Ok(file) => matches!(file.try_lock(), Err(TryLockError::WouldBlock)),
            Err(_) => false,
        });
        if held {
            continue;
        }
        let workspace = workspaces_dir.join(&name);
        let existed = fs::symlink_metadata(&workspace).is_ok();
        match remove_tree(&workspace) {
            Ok(()) => {
                let _ = fs::remove_dir_all(entry.path());
                if existed {
                    tracing::info!(workspace = %workspace.display(), "removed an orphaned workspace");
                    report.removed.push(workspace.display().to_string());
                }
            }
            Err(e) => {
                tracing::warn!(workspace = %workspace.display(), error = %e, "could not remove an orphaned workspace");
            }
        }
    }
    Ok(report)
}
