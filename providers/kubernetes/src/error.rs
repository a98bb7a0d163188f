//! The one place Kubernetes API errors become `RunnerError`s.

use runner_api::{RunnerError, RunnerErrorKind};

/// What an API call was: the runner operation, the Kubernetes verb and
/// resource (`create`, `pods`), and the object's name when there is one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) operation: &'a str,
    pub(crate) verb: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) name: &'a str,
}

impl<'a> Call<'a> {
    /// A call of `verb` on `resource` during `operation`.
    pub(crate) fn new(operation: &'a str, verb: &'a str, resource: &'a str) -> Self {
        Self {
            operation,
            verb,
            resource,
            name: "",
        }
    }

    /// The same call on the object `name`.
    pub(crate) fn named(self, name: &'a str) -> Self {
        Self { name, ..self }
    }

    fn what(&self) -> String {
        if self.name.is_empty() {
            format!("{}: {} {}", self.operation, self.verb, self.resource)
        } else {
            format!(
                "{}: {} {} {:?}",
                self.operation, self.verb, self.resource, self.name
            )
        }
    }

    /// Maps a kube error of this call: 404 `NotFound`, 401 and 403
    /// `PermissionDenied` (naming the verb and resource), 409
    /// `AlreadyExists`, 400 and 422 `InvalidRequest`, 408 and 504
    /// `Timeout`, 429 and 5xx `Unavailable`, an API server that cannot be
    /// reached (connection, TLS, upgrade) `Unavailable`, anything else
    /// `Provider`.
    pub(crate) fn error(&self, error: kube::Error) -> RunnerError {
        let what = self.what();
        let (kind, message) = match &error {
            kube::Error::Api(status) => {
                let kind = match status.code {
                    404 => RunnerErrorKind::NotFound,
                    401 | 403 => RunnerErrorKind::PermissionDenied,
                    409 => RunnerErrorKind::AlreadyExists,
                    400 | 422 => RunnerErrorKind::InvalidRequest,
                    408 | 504 => RunnerErrorKind::Timeout,
                    429 | 500..=599 => RunnerErrorKind::Unavailable,
                    _ => RunnerErrorKind::Provider,
                };
                let message = match kind {
                    RunnerErrorKind::PermissionDenied => format!(
                        "{what}: the Kubernetes API refused the verb {:?} on the resource {:?} \
                         ({} {}): {}; grant it with the Role in docs/providers/kubernetes.md",
                        self.verb, self.resource, status.code, status.reason, status.message
                    ),
                    _ => format!(
                        "{what}: {} {}: {}",
                        status.code, status.reason, status.message
                    ),
                };
                (kind, message)
            }
            kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::UpgradeConnection(_)
            | kube::Error::RustlsTls(_)
            | kube::Error::ReadEvents(_) => (
                RunnerErrorKind::Unavailable,
                format!("{what}: the Kubernetes API server cannot be reached: {error}"),
            ),
            kube::Error::Auth(_) => (
                RunnerErrorKind::PermissionDenied,
                format!("{what}: authenticating to the Kubernetes API server: {error}"),
            ),
            _ => (RunnerErrorKind::Provider, format!("{what}: {error}")),
        };
        RunnerError::new(kind, message).with_source(error)
    }

    /// Maps a watcher error of this call as [`error`](Self::error) does.
    pub(crate) fn watch_error(&self, error: kube::runtime::watcher::Error) -> RunnerError {
        use kube::runtime::watcher::Error as W;
        match error {
            W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => self.error(e),
            W::WatchError(status) => self.error(kube::Error::Api(status)),
            other => RunnerError::provider(format!("{}: {other}", self.what())),
        }
    }
}

/// An error as the I/O error a connector returns (the agent client reports
/// it as `Unavailable` naming the operation).
pub(crate) fn io_error(error: RunnerError) -> std::io::Error {
    std::io::Error::other(error.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn kinds_by_code() {
        let call = Call::new("create_session", "create", "pods").named("runner-1");
        let forbidden = call.error(status(
            403,
            "Forbidden",
            "pods is forbidden: User \"u\" cannot create resource \"pods\"",
        ));
        assert_eq!(forbidden.kind(), RunnerErrorKind::PermissionDenied);
        assert!(forbidden.message().contains("\"create\""), "{forbidden}");
        assert!(forbidden.message().contains("\"pods\""), "{forbidden}");
        for (code, kind) in [
            (404, RunnerErrorKind::NotFound),
            (409, RunnerErrorKind::AlreadyExists),
            (422, RunnerErrorKind::InvalidRequest),
            (503, RunnerErrorKind::Unavailable),
            (418, RunnerErrorKind::Provider),
        ] {
            assert_eq!(call.error(status(code, "R", "m")).kind(), kind, "{code}");
        }
    }
}
