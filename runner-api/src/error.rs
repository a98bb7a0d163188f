//! The one error type every runner operation returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, coarsely enough that a caller can decide what to do next.
///
/// Providers map their backend's errors onto these kinds in one place, so the
/// same failure has the same kind on every provider.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerErrorKind {
    /// The provider does not support this operation (its capability flag is false).
    Unsupported,
    /// The request is malformed: an empty id, a NUL byte in a path, a bad config field.
    InvalidRequest,
    /// The file, directory, command id, snapshot or image does not exist.
    NotFound,
    /// Refused: a path outside the workspace, a read-only mount, a host key mismatch.
    PermissionDenied,
    /// The target already exists where the operation needs it not to.
    AlreadyExists,
    /// The operation did not finish in the time it was given.
    Timeout,
    /// The operation was cancelled before it finished.
    Cancelled,
    /// The daemon or host cannot be reached right now; retrying later may work.
    Unavailable,
    /// The session was closed; open a new one.
    SessionClosed,
    /// Anything else the provider's backend reported.
    Provider,
}

impl RunnerErrorKind {
    /// The snake_case name of the kind, as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsupported => "unsupported",
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::AlreadyExists => "already_exists",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Unavailable => "unavailable",
            Self::SessionClosed => "session_closed",
            Self::Provider => "provider",
        }
    }

    /// Whether retrying the same operation later can succeed without changing it.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout)
    }
}

impl fmt::Display for RunnerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a runner operation: a [`RunnerErrorKind`], a message that names
/// the operation and the path or command id, and optionally the underlying cause.
///
/// Messages never contain secret values.
pub struct RunnerError {
    kind: RunnerErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// The result type of every runner operation.
pub type RunnerResult<T> = Result<T, RunnerError>;

impl RunnerError {
    /// An error of `kind` with `message`.
    pub fn new(kind: RunnerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// `operation` is not supported by `provider`.
    pub fn unsupported(operation: &str, provider: &str) -> Self {
        Self::new(
            RunnerErrorKind::Unsupported,
            format!("{operation} is not supported by the {provider} provider"),
        )
    }

    /// Shorthand for [`RunnerErrorKind::InvalidRequest`].
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(RunnerErrorKind::InvalidRequest, message)
    }

    /// Shorthand for [`RunnerErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RunnerErrorKind::NotFound, message)
    }

    /// Shorthand for [`RunnerErrorKind::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(RunnerErrorKind::PermissionDenied, message)
    }

    /// Shorthand for [`RunnerErrorKind::SessionClosed`], naming the operation and session.
    pub fn session_closed(operation: &str, session_id: &str) -> Self {
        Self::new(
            RunnerErrorKind::SessionClosed,
            format!("{operation}: session {session_id} is closed"),
        )
    }

    /// Shorthand for [`RunnerErrorKind::Provider`].
    pub fn provider(message: impl Into<String>) -> Self {
        Self::new(RunnerErrorKind::Provider, message)
    }

    /// Maps an I/O error from `operation` on `path` to the matching kind.
    pub fn from_io(operation: &str, path: impl fmt::Display, error: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match error.kind() {
            Io::NotFound => RunnerErrorKind::NotFound,
            Io::PermissionDenied | Io::ReadOnlyFilesystem => RunnerErrorKind::PermissionDenied,
            Io::AlreadyExists | Io::DirectoryNotEmpty => RunnerErrorKind::AlreadyExists,
            Io::InvalidInput
            | Io::InvalidFilename
            | Io::NotADirectory
            | Io::IsADirectory
            | Io::InvalidData => RunnerErrorKind::InvalidRequest,
            Io::TimedOut => RunnerErrorKind::Timeout,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe
            | Io::HostUnreachable
            | Io::NetworkUnreachable => RunnerErrorKind::Unavailable,
            _ => RunnerErrorKind::Provider,
        };
        Self::new(kind, format!("{operation} {path}: {error}")).with_source(error)
    }

    /// The kind of failure.
    pub fn kind(&self) -> RunnerErrorKind {
        self.kind
    }

    /// The message, naming the operation and the path or id.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying later may succeed (see [`RunnerErrorKind::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Prefixes the message with more context, keeping kind and source.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Debug for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RunnerError");
        s.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            s.field("source", &source.to_string());
        }
        s.finish()
    }
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for RunnerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<anyhow::Error> for RunnerError {
    /// Keeps the kind of a [`RunnerError`] found in the chain; anything else is
    /// [`RunnerErrorKind::Provider`] with the whole context chain as message.
    fn from(error: anyhow::Error) -> Self {
        let kind = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<RunnerError>().map(RunnerError::kind))
            .unwrap_or(RunnerErrorKind::Provider);
        let message = format!("{error:#}");
        let source: BoxError = error.into();
        Self {
            kind,
            message,
            source: Some(source),
        }
    }
}

/// Adds operation context to a [`RunnerResult`] without losing the kind.
pub trait RunnerResultExt<T> {
    /// Prefixes the error message with `context`.
    fn context_op(self, context: impl fmt::Display) -> RunnerResult<T>;
}

impl<T> RunnerResultExt<T> for RunnerResult<T> {
    fn context_op(self, context: impl fmt::Display) -> RunnerResult<T> {
        self.map_err(|e| e.context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anyhow_keeps_runner_kind_in_chain() {
        let inner = RunnerError::not_found("read_file a.txt: missing");
        let wrapped = anyhow::Error::new(inner).context("loading config");
        let err = RunnerError::from(wrapped);
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        assert!(err.message().contains("loading config"));
        assert!(err.message().contains("a.txt"));
    }

    #[test]
    fn plain_anyhow_is_provider() {
        let err = RunnerError::from(anyhow::anyhow!("boom"));
        assert_eq!(err.kind(), RunnerErrorKind::Provider);
    }

    #[test]
    fn io_errors_map_to_kinds() {
        let err = RunnerError::from_io(
            "read_file",
            "x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        assert!(err.message().starts_with("read_file x"));
    }
}
