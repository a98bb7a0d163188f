//! Maps host I/O errors onto runner error kinds, in one place.

use std::fmt;
use std::io;

use runner_api::{RunnerError, RunnerErrorKind};

/// What cap-std says when a path would resolve outside its directory (a `..`
/// too many, an absolute symlink, a symlink leading out).
const CAP_STD_ESCAPE: &str = "a path led outside of the filesystem";

/// Whether `error` is cap-std refusing a path that leads outside its directory.
pub(crate) fn is_escape(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied && error.to_string() == CAP_STD_ESCAPE
}

/// Maps an I/O error of `operation` on `path` to a [`RunnerError`]: cap-std's
/// escape refusals become `PermissionDenied` "outside the workspace", symlink
/// loops `InvalidRequest`, everything else goes through [`RunnerError::from_io`].
pub(crate) fn io_error(
    operation: &str,
    path: impl fmt::Display,
    root: impl fmt::Display,
    error: io::Error,
) -> RunnerError {
    if is_escape(&error) {
        return RunnerError::permission_denied(format!(
            "{operation} {path}: leads outside the workspace {root} (through a symlink or `..`)"
        ))
        .with_source(error);
    }
    if error.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
        return RunnerError::new(
            RunnerErrorKind::InvalidRequest,
            format!("{operation} {path}: too many levels of symbolic links"),
        )
        .with_source(error);
    }
    RunnerError::from_io(operation, path, error)
}

/// Maps a failure of a blocking task (a panic) to a `Provider` error.
pub(crate) fn join_error(operation: &str, error: tokio::task::JoinError) -> RunnerError {
    RunnerError::provider(format!("{operation}: the worker task failed: {error}"))
}

/// Maps a procfs error to a `Provider` error.
pub(crate) fn proc_error(operation: &str, error: procfs::ProcError) -> RunnerError {
    RunnerError::provider(format!("{operation}: reading /proc failed: {error}"))
}
