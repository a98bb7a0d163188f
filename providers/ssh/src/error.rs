//! Maps openssh and sftp errors onto runner error kinds, in one place.

use std::fmt;
use std::io;

use openssh_sftp_client::error::{Error as SftpError, SftpErrorKind};
use runner_api::{RunnerError, RunnerErrorKind};

/// Maps a failure to establish the master connection. Host key problems are
/// `PermissionDenied`, refused or unreachable hosts `Unavailable`.
pub(crate) fn connect_error(destination: &str, error: openssh::Error) -> RunnerError {
    let text = error_chain(&error);
    let lower = text.to_lowercase();
    if lower.contains("host key verification failed")
        || lower.contains("remote host identification has changed")
        || lower.contains("no matching host key")
    {
        return RunnerError::permission_denied(format!(
            "connect to {destination}: host key verification failed (the server's key does not \
             match the known_hosts file, or the host is missing from it under the strict policy)"
        ))
        .with_source(error);
    }
    let kind = if lower.contains("permission denied") {
        RunnerErrorKind::PermissionDenied
    } else {
        RunnerErrorKind::Unavailable
    };
    RunnerError::new(kind, format!("connect to {destination}: {text}")).with_source(error)
}

/// Where the `ssh` binary is, if it is on `PATH`.
pub(crate) fn which_ssh() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ssh"))
        .find(|candidate| candidate.is_file())
}

/// The message of an error and of its sources, joined.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Maps an error of running something over the master. These are transport
/// failures: the caller checks the master and reconnects.
pub(crate) fn transport_error(operation: &str, error: openssh::Error) -> RunnerError {
    RunnerError::new(
        RunnerErrorKind::Unavailable,
        format!("{operation}: {}", error_chain(&error)),
    )
    .with_source(error)
}

/// Maps an sftp error of `operation` on `path`.
pub(crate) fn sftp_error(
    operation: &str,
    path: impl fmt::Display,
    error: SftpError,
) -> RunnerError {
    let kind = match &error {
        SftpError::SftpError(code, _) => match code {
            SftpErrorKind::NoSuchFile => RunnerErrorKind::NotFound,
            SftpErrorKind::PermDenied => RunnerErrorKind::PermissionDenied,
            SftpErrorKind::OpUnsupported => RunnerErrorKind::Unsupported,
            _ => RunnerErrorKind::Provider,
        },
        SftpError::IOError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            RunnerErrorKind::Provider
        }
        _ => RunnerErrorKind::Unavailable,
    };
    RunnerError::new(kind, format!("{operation} {path}: {}", error_chain(&error)))
        .with_source(error)
}
