//! File watching: a request for one path of the workspace and the events a
//! watch reports.

use std::path::PathBuf;
use std::pin::Pin;

use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::RunnerResult;

/// What to watch (see [`RemoteRunnerSession::watch`](crate::RemoteRunnerSession::watch)).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerWatchRequest {
    /// A directory (or file) of the workspace; relative paths resolve under
    /// the workspace root.
    pub path: PathBuf,
    /// Watch every directory below `path` too, including ones created later.
    #[serde(default)]
    pub recursive: bool,
}

impl RunnerWatchRequest {
    /// The most events a watch queues for a slow reader; past it the oldest
    /// pending events are replaced by one [`RunnerWatchEventKind::Overflow`].
    pub const MAX_QUEUED_EVENTS: usize = 4096;

    /// A request for `path`, recursive or not.
    pub fn new(path: impl Into<PathBuf>, recursive: bool) -> Self {
        Self {
            path: path.into(),
            recursive,
        }
    }
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunnerWatchEventKind {
    /// A file or directory appeared.
    Created,
    /// A file's content or metadata changed.
    Modified,
    /// A file or directory went away.
    Removed,
    /// A file or directory moved from `from` to `path` (both inside the watch).
    Renamed,
    /// Events were lost: the queue was full or the kernel dropped some. The
    /// reader should re-list what it follows.
    Overflow,
}

/// One change the watch saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerWatchEvent {
    /// What happened.
    pub kind: RunnerWatchEventKind,
    /// The path, relative to the workspace root (empty for `Overflow`).
    pub path: PathBuf,
    /// For `Renamed`, the old path relative to the workspace root.
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// Whether the path is a directory.
    #[serde(default)]
    pub is_dir: bool,
}

impl RunnerWatchEvent {
    /// An event of `kind` for `path`.
    pub fn new(kind: RunnerWatchEventKind, path: impl Into<PathBuf>, is_dir: bool) -> Self {
        Self {
            kind,
            path: path.into(),
            from: None,
            is_dir,
        }
    }

    /// The overflow marker.
    pub fn overflow() -> Self {
        Self::new(RunnerWatchEventKind::Overflow, PathBuf::new(), false)
    }
}

/// The events of one watch; dropping it ends the watch.
pub type RunnerWatchStream =
    Pin<Box<dyn Stream<Item = RunnerResult<RunnerWatchEvent>> + Send + 'static>>;
