//! Workspace directories the provider creates itself (sessions without a
//! configured `root`): creation, liveness locks, removal, and `sweep_orphans`.
//!
//! Each owned workspace `<workspaces_dir>/<name>` has a lock directory
//! `<workspaces_dir>/.locks/<name>/` holding one lock file per live session
//! using it, each held with `flock` for the session's lifetime (the kernel drops
//! the lock when the process dies). `sweep_orphans` removes a workspace only when
//! its lock directory has lock files and none of them is held: that is, only
//! directories this provider created, for sessions that no longer exist.
//!
//! Snapshot archives are marked the same way: a session that takes a snapshot
//! holds a lock file `<snapshot_dir>/.sessions/<session id>.lock` for its
//! lifetime and records `<snapshot_dir>/.owners/<snapshot id>` naming itself.
//! `sweep_orphans` removes a marked archive once no live session holds that
//! lock and the archive is older than the snapshot grace period; unmarked
//! archives are never touched.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use runner_api::{RunnerError, RunnerResult, RunnerSweepReport};

use crate::config::LocalConfig;
use crate::private::{self, FILE_MODE};

const LOCKS: &str = ".locks";
const SNAPSHOT_SESSIONS: &str = ".sessions";
const SNAPSHOT_OWNERS: &str = ".owners";

/// Where and when [`sweep_orphans`](runner_api::RemoteRunnerProvider::sweep_orphans)
/// of a [`LocalProvider`](crate::LocalProvider) removes leftovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepConfig {
    /// The workspaces directory to sweep (default
    /// [`LocalConfig::default_workspaces_dir`]).
    pub workspaces_dir: PathBuf,
    /// The snapshot directory to sweep (default
    /// [`LocalConfig::default_snapshot_dir`]).
    pub snapshot_dir: PathBuf,
    /// An orphaned workspace is removed only when its newest session lock is
    /// at least this old (default 60 seconds), so a session that is just
    /// resuming it is never raced.
    pub grace: Duration,
    /// A snapshot archive whose session is gone is removed once it is at least
    /// this old (default 24 hours); `None` keeps snapshot archives forever.
    pub snapshot_grace: Option<Duration>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            workspaces_dir: LocalConfig::default_workspaces_dir(),
            snapshot_dir: LocalConfig::default_snapshot_dir(),
            grace: Duration::from_secs(60),
            snapshot_grace: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Whether `path` was modified at least `grace` ago (a missing or unreadable
/// time counts as old enough only when `grace` is zero).
fn older_than(path: &Path, grace: Duration) -> bool {
    if grace.is_zero() {
        return true;
    }
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace)
}

/// Whether another open file description holds the lock on `path`.
fn is_held(path: &Path) -> bool {
    match File::open(path) {
        Ok(file) => matches!(file.try_lock(), Err(TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

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

/// Whether `<workspaces_dir>/<name>` is a workspace this provider created:
/// it has a lock directory (a real one, not a symlink).
pub(crate) fn is_owned_workspace(workspaces_dir: &Path, name: &std::ffi::OsStr) -> bool {
    fs::symlink_metadata(lock_dir(workspaces_dir, &name.to_string_lossy()))
        .is_ok_and(|meta| meta.is_dir())
}

/// Creates a lock file for `session_id` in `dir` that is already locked when it
/// appears there (created and locked under a temporary name, then renamed).
fn place_lock(workspaces_dir: &Path, dir: &Path, session_id: &str) -> io::Result<(PathBuf, File)> {
    let staging = workspaces_dir.join(LOCKS).join(".staging");
    private::create_dir_all(&staging)?;
    private::create_dir_all(dir)?;
    let temp = staging.join(format!("{session_id}.{}", uuid::Uuid::new_v4().simple()));
    let file = new_private_file(&temp)?;
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

/// Creates a file that did not exist, with mode 0600.
fn new_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

impl OwnedDir {
    /// Creates `<workspaces_dir>/<session_id>` (mode 0700), locked for
    /// `session_id`, in a private `workspaces_dir`.
    ///
    /// Errors: `PermissionDenied` when `workspaces_dir` is not private (see
    /// [`private::ensure`]), I/O errors by kind.
    pub(crate) fn create(workspaces_dir: &Path, session_id: &str) -> RunnerResult<Self> {
        let op = "create workspace";
        let io = |e| RunnerError::from_io(op, workspaces_dir.display(), e);
        private::ensure(op, workspaces_dir)?;
        let (lock_path, lock) = place_lock(
            workspaces_dir,
            &lock_dir(workspaces_dir, session_id),
            session_id,
        )
        .map_err(io)?;
        let path = workspaces_dir.join(session_id);
        if let Err(e) = private::create_dir(&path) {
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

/// Removes what [`SweepConfig`] covers: orphaned owned workspaces, then
/// orphaned snapshot archives.
///
/// Errors: `PermissionDenied` when a directory exists but is not private.
pub(crate) fn sweep(config: &SweepConfig) -> RunnerResult<RunnerSweepReport> {
    let mut report = sweep_workspaces(&config.workspaces_dir, config.grace)?;
    if let Some(grace) = config.snapshot_grace {
        report
            .removed
            .extend(sweep_snapshots(&config.snapshot_dir, grace)?.removed);
    }
    Ok(report)
}

/// Removes owned workspaces of `workspaces_dir` whose sessions are all gone
/// and whose newest lock is at least `grace` old.
fn sweep_workspaces(workspaces_dir: &Path, grace: Duration) -> RunnerResult<RunnerSweepReport> {
    let mut report = RunnerSweepReport::default();
    if !private::check_present("sweep_orphans", workspaces_dir)? {
        return Ok(report);
    }
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
        if locks.iter().any(|lock| is_held(lock)) {
            continue;
        }
        if !locks.iter().all(|lock| older_than(lock, grace)) {
            continue;
        }
        let session_ids: Vec<String> = locks
            .iter()
            .filter_map(|lock| lock.file_stem())
            .map(|stem| stem.to_string_lossy().into_owned())
            .collect();
        let workspace = workspaces_dir.join(&name);
        let killed = crate::groups::kill_sessions(&session_ids);
        if killed > 0 {
            tracing::info!(workspace = %workspace.display(), killed, "ended processes of orphaned sessions");
        }
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

/// The snapshot marks of one live session: its lock file, placed (and
/// locked) when it takes its first snapshot and released when it closes.
#[derive(Default)]
pub(crate) struct SnapshotMark {
    lock: Mutex<Option<File>>,
}

impl SnapshotMark {
    /// Records that `session_id` took `snapshot_id` in `snapshot_dir`, and
    /// holds the session's snapshot lock from now until [`release`](Self::release).
    pub(crate) fn record(
        &self,
        snapshot_dir: &Path,
        session_id: &str,
        snapshot_id: &str,
    ) -> io::Result<()> {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if lock.is_none() {
            let (_, file) = place_lock(
                snapshot_dir,
                &snapshot_dir.join(SNAPSHOT_SESSIONS),
                session_id,
            )?;
            *lock = Some(file);
        }
        let owners = snapshot_dir.join(SNAPSHOT_OWNERS);
        private::create_dir_all(&owners)?;
        let temp = owners.join(format!(".{snapshot_id}.tmp"));
        let _ = fs::remove_file(&temp);
        new_private_file(&temp)?.write_all(session_id.as_bytes())?;
        fs::rename(&temp, owners.join(snapshot_id))
    }

    /// Releases the session's snapshot lock: its archives become sweepable
    /// after the grace period.
    pub(crate) fn release(&self) {
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Removes marked snapshot archives of `snapshot_dir` whose session is gone and
/// that are at least `grace` old, then the lock files nothing refers to.
fn sweep_snapshots(snapshot_dir: &Path, grace: Duration) -> RunnerResult<RunnerSweepReport> {
    let mut report = RunnerSweepReport::default();
    if !private::check_present("sweep_orphans", snapshot_dir)? {
        return Ok(report);
    }
    let owners = snapshot_dir.join(SNAPSHOT_OWNERS);
    let sessions = snapshot_dir.join(SNAPSHOT_SESSIONS);
    let entries = match fs::read_dir(&owners) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(RunnerError::from_io("sweep_orphans", owners.display(), e)),
    };
    let mut kept_sessions = std::collections::HashSet::new();
    for entry in entries.flatten() {
        let snapshot_id = entry.file_name().to_string_lossy().into_owned();
        if snapshot_id.starts_with('.') {
            continue;
        }
        let Ok(session_id) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let session_id = session_id.trim().to_string();
        if session_id.is_empty() || session_id.contains(['/', '\0']) {
            continue;
        }
        let archive = snapshot_dir.join(format!("{snapshot_id}.tar"));
        let lock = sessions.join(format!("{session_id}.lock"));
        if is_held(&lock) || !older_than(&archive, grace) {
            kept_sessions.insert(session_id);
            continue;
        }
        match fs::remove_file(&archive) {
            Ok(()) => {
                tracing::info!(snapshot = %archive.display(), "removed an orphaned snapshot");
                report.removed.push(archive.display().to_string());
                let _ = fs::remove_file(entry.path());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_file(entry.path());
            }
            Err(e) => {
                kept_sessions.insert(session_id);
                tracing::warn!(snapshot = %archive.display(), error = %e, "could not remove an orphaned snapshot");
            }
        }
    }
    if let Ok(locks) = fs::read_dir(&sessions) {
        for lock in locks.flatten() {
            let name = lock.file_name().to_string_lossy().into_owned();
            let Some(session_id) = name.strip_suffix(".lock") else {
                continue;
            };
            if !kept_sessions.contains(session_id) && !is_held(&lock.path()) {
                let _ = fs::remove_file(lock.path());
            }
        }
    }
    Ok(report)
}
