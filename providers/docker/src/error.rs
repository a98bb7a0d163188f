//! The daemon connection and the one place Docker errors become `RunnerError`s.

use bollard::Docker;
use bollard::errors::Error as DockerError;
use runner_api::{RunnerError, RunnerErrorKind};

/// The local socket used when no `docker_host` is configured.
pub(crate) const LOCAL_SOCKET: &str = "unix:///var/run/docker.sock";

/// A client for one daemon, with the address used in messages.
#[derive(Clone)]
pub(crate) struct Daemon {
    pub(crate) docker: Docker,
    pub(crate) host: String,
}

impl Daemon {
    /// A client for `host` (`None`: the local socket). Connects lazily.
    pub(crate) fn connect(host: Option<&str>) -> Result<Self, RunnerError> {
        let host = host.unwrap_or(LOCAL_SOCKET).to_string();
        let docker = Docker::connect_with_host(&host).map_err(|e| match e {
            DockerError::SocketNotFoundError(_) => map_docker_error(&host, "connect", &host, e),
            e => RunnerError::invalid_request(format!("docker_host {host:?}: {e}")).with_source(e),
        })?;
        Ok(Self { docker, host })
    }

    /// Maps an error of `operation` on `subject` (a container, an image, a path).
    pub(crate) fn error(&self, operation: &str, subject: &str, error: DockerError) -> RunnerError {
        map_docker_error(&self.host, operation, subject, error)
    }
}

/// What to tell a user whose daemon cannot be reached.
pub(crate) fn unavailable_hint(host: &str) -> String {
    format!(
        "the Docker daemon at {host} is not reachable; start dockerd (or Docker Desktop), \
         check that this user may open the socket, or set `docker_host` in the destination config"
    )
}

/// Maps a Docker error to the runner error kind: 404 and an unknown user
/// ("unable to find user …", naming it) are `NotFound`, 400
/// `InvalidRequest`, 403 `PermissionDenied`, a paused container
/// `InvalidRequest`, a name conflict `AlreadyExists`, a connection failure
/// `Unavailable` (with a hint), a request timeout `Timeout`, anything else
/// `Provider`.
pub(crate) fn map_docker_error(
    host: &str,
    operation: &str,
    subject: &str,
    error: DockerError,
) -> RunnerError {
    let what = if subject.is_empty() {
        operation.to_string()
    } else {
        format!("{operation} {subject}")
    };
    let (kind, message) = match &error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                // A `user` the container's /etc/passwd does not know.
                _ if message.contains("unable to find user") => RunnerErrorKind::NotFound,
                404 => RunnerErrorKind::NotFound,
                400 => RunnerErrorKind::InvalidRequest,
                403 => RunnerErrorKind::PermissionDenied,
                409 if message.contains("paused") => RunnerErrorKind::InvalidRequest,
                409 if message.contains("already in use") => RunnerErrorKind::AlreadyExists,
                409 if message.contains("is not running") => RunnerErrorKind::SessionClosed,
                _ => RunnerErrorKind::Provider,
            };
            (kind, format!("{what}: {}", message.trim()))
        }
        DockerError::RequestTimeoutError => (
            RunnerErrorKind::Timeout,
            format!("{what}: the Docker daemon at {host} did not answer in time"),
        ),
        DockerError::SocketNotFoundError(_)
        | DockerError::HyperLegacyError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. } => (
            RunnerErrorKind::Unavailable,
            format!("{what}: {}: {error}", unavailable_hint(host)),
        ),
        _ => (RunnerErrorKind::Provider, format!("{what}: {error}")),
    };
    RunnerError::new(kind, message).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_kinds() {
        let err = |status_code, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        let cases = [
            (err(404, "No such image: x"), RunnerErrorKind::NotFound),
            (err(400, "bad"), RunnerErrorKind::InvalidRequest),
            (
                err(
                    409,
                    "Container abc is paused, unpause the container before exec",
                ),
                RunnerErrorKind::InvalidRequest,
            ),
            (err(500, "boom"), RunnerErrorKind::Provider),
            (
                err(
                    500,
                    "unable to find user ghost: no matching entries in passwd file",
                ),
                RunnerErrorKind::NotFound,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(map_docker_error("h", "op", "x", error).kind(), kind);
        }
        let io = DockerError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let mapped = map_docker_error("unix:///nowhere", "create_session", "", io);
        assert_eq!(mapped.kind(), RunnerErrorKind::Unavailable);
        assert!(mapped.message().contains("unix:///nowhere"));
    }

    #[test]
    fn a_missing_socket_is_unavailable() {
        let err = Daemon::connect(Some("unix:///nonexistent/runner-test.sock"))
            .err()
            .expect("no socket there");
        assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
        assert!(err.message().contains("start dockerd"), "{}", err.message());
    }
}
