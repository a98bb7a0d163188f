//! The directories unix-local keeps its own files in (owned workspaces,
//! snapshots, locks) are private to the user: created with mode 0700, and
//! refused when they already exist but are not a plain directory owned by the
//! user with no group or other permissions. A directory under the default
//! state directory ([`LocalConfig::default_state_dir`]) is checked from the
//! state directory down, since its place is predictable; any other directory
//! is checked itself.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use runner_api::{RunnerError, RunnerResult};

use crate::config::LocalConfig;

/// Permission bits of the directories the provider creates for itself.
const DIR_MODE: u32 = 0o700;

/// Permission bits of the files the provider writes for itself (snapshot
/// archives, lock and mark files).
pub(crate) const FILE_MODE: u32 = 0o600;

/// The effective uid of this process.
pub(crate) fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `mkdir -p` with mode 0700 for every directory it creates.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// `mkdir` with mode 0700.
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// The directories to check for `dir`: from the default state directory down
/// when `dir` lies under it, else `dir` alone.
fn chain(dir: &Path) -> Vec<PathBuf> {
    let state = LocalConfig::default_state_dir();
    match dir.strip_prefix(&state) {
        Ok(rest) => {
            let mut at = state.clone();
            let mut out = vec![state];
            for component in rest.components() {
                at.push(component);
                out.push(at.clone());
            }
            out
        }
        Err(_) => vec![dir.to_path_buf()],
    }
}

/// Refuses `meta` of `dir` unless it is a directory (not a symlink) owned by
/// this user with no group or other permissions.
fn check(operation: &str, dir: &Path, meta: &fs::Metadata) -> RunnerResult<()> {
    let denied = |why: String| {
        RunnerError::permission_denied(format!("{operation}: refusing {}: {why}", dir.display()))
    };
    if !meta.file_type().is_dir() {
        return Err(denied(
            "not a directory (a symlink or a file is in its place)".to_string(),
        ));
    }
    let me = uid();
    if meta.uid() != me {
        return Err(denied(format!(
            "owned by uid {}, not by this user (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(denied(format!(
            "open to group or others (mode {mode:o}); make it private (chmod 700) or configure another directory"
        )));
    }
    Ok(())
}

fn lstat(operation: &str, dir: &Path) -> RunnerResult<Option<fs::Metadata>> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RunnerError::from_io(operation, dir.display(), e)),
    }
}

/// Creates `dir` (mode 0700) when missing and checks that it is private.
///
/// Errors: `PermissionDenied` naming the directory that is not private, I/O
/// errors by kind.
pub(crate) fn ensure(operation: &str, dir: &Path) -> RunnerResult<()> {
    for at in chain(dir) {
        let meta = match lstat(operation, &at)? {
            Some(meta) => meta,
            None => {
                match create_dir_all(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(RunnerError::from_io(operation, at.display(), e)),
                }
                fs::symlink_metadata(&at)
                    .map_err(|e| RunnerError::from_io(operation, at.display(), e))?
            }
        };
        check(operation, &at, &meta)?;
    }
    Ok(())
}

/// Checks that `dir` is private when it exists; `false` when it does not.
///
/// Errors: `PermissionDenied` naming the directory that is not private.
pub(crate) fn check_present(operation: &str, dir: &Path) -> RunnerResult<bool> {
    for at in chain(dir) {
        match lstat(operation, &at)? {
            Some(meta) => check(operation, &at, &meta)?,
            None => return Ok(false),
        }
    }
    Ok(true)
}
