//! Every failure of the agent provider becomes a [`RunnerError`] here, in one
//! place, so the same failure always has the same [`RunnerErrorKind`].

use runner_api::{RunnerError, RunnerErrorKind};

use crate::protocol::AgentError;

/// Why a call to the agent failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The agent program could not be started.
    Start(std::io::Error),
    /// The agent ran the operation and reported an errno.
    Agent(AgentError),
    /// The agent cannot be reached: it exited, or its pipes broke.
    Transport(String),
    /// The agent answered something the protocol does not allow.
    Protocol(String),
}

/// Maps a failure of `operation` on `target` (a path or a command id).
pub(crate) fn map_failure(operation: &str, target: &str, failure: Failure) -> RunnerError {
    match failure {
        Failure::Start(e) => RunnerError::from_io(
            &format!("{operation}: starting the runner agent"),
            target,
            e,
        ),
        Failure::Agent(e) => {
            let kind = match e.code.as_str() {
                "ENOENT" | "ESRCH" => RunnerErrorKind::NotFound,
                "EACCES" | "EPERM" | "EROFS" => RunnerErrorKind::PermissionDenied,
                "EEXIST" | "ENOTEMPTY" => RunnerErrorKind::AlreadyExists,
                "EISDIR" | "ENOTDIR" | "EINVAL" | "ENAMETOOLONG" | "ELOOP" => {
                    RunnerErrorKind::InvalidRequest
                }
                "ETIMEDOUT" => RunnerErrorKind::Timeout,
                _ => RunnerErrorKind::Provider,
            };
            RunnerError::new(
                kind,
                format!("{operation} {target}: {} ({})", e.message, e.code),
            )
        }
        Failure::Transport(cause) => RunnerError::new(
            RunnerErrorKind::Unavailable,
            format!("{operation} {target}: the runner agent is unreachable: {cause}"),
        ),
        Failure::Protocol(cause) => RunnerError::provider(format!(
            "{operation} {target}: unexpected answer from the runner agent: {cause}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(code: &str) -> Failure {
        Failure::Agent(AgentError {
            code: code.into(),
            message: "m".into(),
        })
    }

    #[test]
    fn errno_names_map_to_kinds() {
        for (code, kind) in [
            ("ENOENT", RunnerErrorKind::NotFound),
            ("EACCES", RunnerErrorKind::PermissionDenied),
            ("ENOTEMPTY", RunnerErrorKind::AlreadyExists),
            ("EISDIR", RunnerErrorKind::InvalidRequest),
            ("EIO", RunnerErrorKind::Provider),
        ] {
            assert_eq!(map_failure("op", "p", agent(code)).kind(), kind, "{code}");
        }
        let gone = map_failure("op", "p", Failure::Transport("eof".into()));
        assert_eq!(gone.kind(), RunnerErrorKind::Unavailable);
        let missing = Failure::Start(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(
            map_failure("create_session", "example-agent", missing).kind(),
            RunnerErrorKind::NotFound
        );
    }
}
