//! Files, ports and artifacts: requests and results.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Read a file, optionally a byte range of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct RunnerFileReadRequest {
    /// Path; relative paths resolve under the workspace root.
    pub path: PathBuf,
    /// Start reading at this byte offset.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Read at most this many bytes.
    #[serde(default)]
    pub limit: Option<u64>,
}

impl RunnerFileReadRequest {
    /// Read all of `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: None,
            limit: None,
        }
    }
}

/// The bytes read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileReadResult {
    /// The path as requested.
    pub path: PathBuf,
    /// The bytes read, unmodified.
    pub contents: Vec<u8>,
    /// The file's whole size, so a ranged read knows what remains.
    #[serde(default)]
    pub size: u64,
}

/// Write a whole file atomically (temp file + rename), creating parent directories.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileWriteRequest {
    /// Path; relative paths resolve under the workspace root.
    pub path: PathBuf,
    /// The new contents.
    pub contents: Vec<u8>,
    /// Permission bits (such as `0o755`); `None` keeps an existing file's mode,
    /// or gives a new file `0o644`.
    #[serde(default)]
    pub mode: Option<u32>,
    /// Write `contents` at this byte offset of the existing file instead of
    /// replacing it: the file is not truncated, and bytes past the end of
    /// `contents` stay. The offset may be at most the file's size (no holes);
    /// offset 0 of a missing file creates it. Such a write is not atomic: it
    /// is the building block of chunked transfers, which write a staging file
    /// chunk by chunk and `rename` it into place. `None` is the atomic
    /// whole-file replace.
    ///
    /// Errors: `InvalidRequest` naming the path, the offset and the size
    /// when the offset lies past the end of the file, or the file is missing
    /// and the offset is not 0.
    #[serde(default)]
    pub offset: Option<u64>,
}

impl RunnerFileWriteRequest {
    /// Write `contents` to `path`.
    pub fn new(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
            mode: None,
            offset: None,
        }
    }
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunnerFileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else: a socket, a FIFO, a device.
    Other,
}

/// Metadata of one path. Symlinks are reported as symlinks, not followed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileStat {
    /// The path as requested (for `list_dir`: the directory joined with the name).
    pub path: PathBuf,
    /// The final component.
    pub name: String,
    /// File, directory, symlink or other.
    pub kind: RunnerFileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, milliseconds since the Unix epoch.
    #[serde(default)]
    pub modified_ms: Option<u64>,
    /// Where a symlink points, as stored in the link.
    #[serde(default)]
    pub symlink_target: Option<PathBuf>,
}

/// Make a port of the runner reachable from the caller's machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct RunnerPortRequest {
    /// The port inside the runner.
    pub port: u16,
    /// A label for display.
    pub label: Option<String>,
}

/// Where the exposed port can be reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerPortResult {
    /// The port inside the runner.
    pub port: u16,
    /// A URL that works from the caller's machine.
    pub url: Option<String>,
}

/// A port something listens on inside the runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerListeningPort {
    /// The port.
    pub port: u16,
    /// The address bound (`0.0.0.0`, `127.0.0.1`, `::`).
    pub address: String,
    /// `tcp` or `tcp6`.
    pub protocol: String,
    /// The listening process, when known.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// Export a file or directory to the destination's artifact store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerArtifactExportRequest {
    /// Path in the workspace.
    pub path: PathBuf,
    /// Export a directory as a tar of its contents.
    #[serde(default)]
    pub recursive: bool,
}

/// Where the artifact was stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerArtifactExportResult {
    /// The path as requested.
    pub path: PathBuf,
    /// Stable, content-derived id.
    pub artifact_id: String,
    /// Where to fetch it.
    pub url: Option<String>,
    /// Size, sha256, file count and provider details.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_file_requests_deserialize() {
        let read: RunnerFileReadRequest =
            serde_json::from_value(serde_json::json!({ "path": "a.txt" })).expect("read");
        assert_eq!(read, RunnerFileReadRequest::new("a.txt"));
        let write: RunnerFileWriteRequest =
            serde_json::from_value(serde_json::json!({ "path": "a", "contents": [0, 255] }))
                .expect("write");
        assert_eq!(write.contents, vec![0, 255]);
        let res: RunnerFileReadResult =
            serde_json::from_value(serde_json::json!({ "path": "a", "contents": [1] }))
                .expect("read result");
        assert_eq!(res.size, 0);
    }
}
