//! The wire protocol between [`AgentProvider`](crate::AgentProvider) and the
//! `example-agent` binary: one JSON object per line in each direction.
//!
//! The provider writes [`Request`]s to the agent's stdin. The agent answers each
//! with a [`Message::Reply`] carrying the same `id`, in any order, and reports a
//! spawned command's output and exit with [`Message::Output`] and
//! [`Message::Exited`], keyed by the id of the `spawn` request. Bytes travel as
//! JSON arrays of numbers: simple and dependency-free; an agent on a slow link
//! would use base64.
//!
//! ```text
//! → {"id":7,"op":{"spawn":{"program":"sh","args":["-c","echo hi"],"cwd":null,"env":[]}}}
//! ← {"reply":{"id":7,"result":{"Ok":{"spawned":{"pid":4242}}}}}
//! ← {"output":{"process":7,"stream":"stdout","bytes":[104,105,10]}}
//! ← {"exited":{"process":7,"exit_code":0,"signal":null}}
//! → {"id":8,"op":{"read_file":{"path":"missing.txt","offset":null,"limit":null}}}
//! ← {"reply":{"id":8,"result":{"Err":{"code":"ENOENT","message":"read_file …: No such file or directory (os error 2)"}}}}
//! ```
//!
//! Enums are externally tagged (`{"spawn": {…}}`): serde reads those as a
//! stream, where an internally tagged enum (`{"kind": "spawn", …}`) would first
//! buffer the whole object, bytes included, in a generic tree many times its size.

use std::path::PathBuf;

use runner_api::{RunnerFileStat, RunnerOutputStream};
use serde::{Deserialize, Serialize};

/// One line from the provider to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the provider, unique per connection; the reply carries it back.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// An operation of the agent. Relative paths resolve under the agent's workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Start `program` in its own process group, stdin empty; answers
    /// [`Answer::Spawned`], then streams `output` and one `exited` message.
    Spawn {
        /// Program, looked up in `PATH` when it has no slash.
        program: String,
        /// Arguments, verbatim.
        args: Vec<String>,
        /// Working directory (`None`: the workspace).
        cwd: Option<PathBuf>,
        /// Extra environment, in order.
        env: Vec<(String, String)>,
    },
    /// Send signal number `signal` to a spawned command's process tree: its
    /// group, its descendants and those of them the agent adopted.
    Signal {
        /// The id of the `spawn` request.
        process: u64,
        /// Linux signal number.
        signal: i32,
    },
    /// Read a regular file, or `limit` bytes from `offset`, at most
    /// [`runner_api::MAX_READ_BYTES`]; answers [`Answer::File`].
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Start offset.
        offset: Option<u64>,
        /// Most bytes to read.
        limit: Option<u64>,
    },
    /// Write a file atomically (temp file + rename), creating parents.
    WriteFile {
        /// The file.
        path: PathBuf,
        /// New contents.
        contents: Vec<u8>,
        /// Permission bits, masked to `0o777` (`None`: keep the old file's, or `0o644`).
        mode: Option<u32>,
        /// Write in place at this offset instead of replacing the file
        /// (`RunnerFileWriteRequest::offset`).
        #[serde(default)]
        offset: Option<u64>,
    },
    /// Entries of a directory sorted by name; answers [`Answer::Entries`].
    ListDir {
        /// The directory.
        path: PathBuf,
    },
    /// Metadata without following a final symlink; answers [`Answer::Stat`].
    Stat {
        /// The path.
        path: PathBuf,
    },
    /// Remove a file, symlink or directory (non-empty only when `recursive`).
    Remove {
        /// The path.
        path: PathBuf,
        /// Remove a directory's contents too.
        recursive: bool,
    },
    /// Create a directory and its parents.
    MakeDir {
        /// The directory.
        path: PathBuf,
    },
    /// POSIX rename.
    Rename {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
    },
    /// Resolve every symlink; answers [`Answer::Path`].
    Canonicalize {
        /// The path.
        path: PathBuf,
    },
    /// Kill every process below the agent, remove the workspace, answer, and exit.
    Shutdown,
}

/// One line from the agent to the provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// What came of it.
        result: Result<Answer, AgentError>,
    },
    /// Output of a spawned command.
    Output {
        /// The id of the `spawn` request.
        process: u64,
        /// Which stream.
        stream: RunnerOutputStream,
        /// The bytes, unmodified.
        bytes: Vec<u8>,
    },
    /// A spawned command exited; no output of it follows.
    Exited {
        /// The id of the `spawn` request.
        process: u64,
        /// Exit code, when it exited normally.
        exit_code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
    },
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The command runs with this pid.
    Spawned {
        /// Process id (and process group id) on the agent's machine.
        pid: u32,
    },
    /// Done, nothing to return.
    Done,
    /// File contents.
    File {
        /// The bytes read.
        contents: Vec<u8>,
        /// The whole file's size.
        size: u64,
    },
    /// Directory entries.
    Entries {
        /// Sorted by name.
        entries: Vec<RunnerFileStat>,
    },
    /// One path's metadata.
    Stat {
        /// The metadata.
        stat: RunnerFileStat,
    },
    /// A resolved path.
    Path {
        /// Absolute, without symlinks.
        path: PathBuf,
    },
}

/// A failure as the agent reports it: the POSIX errno name (`ENOENT`,
/// `EISDIR`, …) and a message naming the operation and the path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentError {
    /// `ENOENT`, `EACCES`, `EEXIST`, `ENOTEMPTY`, `EISDIR`, `ENOTDIR`, `EINVAL`, …
    pub code: String,
    /// Operation, path and cause.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines shown in the module docs are what the types read and write.
    #[test]
    fn documented_lines_parse() {
        let spawn: Request = serde_json::from_str(
            r#"{"id":7,"op":{"spawn":{"program":"sh","args":["-c","echo hi"],"cwd":null,"env":[]}}}"#,
        )
        .expect("spawn request");
        assert!(matches!(spawn.op, Op::Spawn { .. }));
        let reply: Message =
            serde_json::from_str(r#"{"reply":{"id":7,"result":{"Ok":{"spawned":{"pid":4242}}}}}"#)
                .expect("reply");
        assert_eq!(
            reply,
            Message::Reply {
                id: 7,
                result: Ok(Answer::Spawned { pid: 4242 })
            }
        );
        let output: Message = serde_json::from_str(
            r#"{"output":{"process":7,"stream":"stdout","bytes":[104,105,10]}}"#,
        )
        .expect("output");
        assert!(matches!(output, Message::Output { ref bytes, .. } if bytes == b"hi\n"));
        let shutdown = serde_json::to_string(&Request {
            id: 9,
            op: Op::Shutdown,
        })
        .expect("encode");
        assert_eq!(shutdown, r#"{"id":9,"op":"shutdown"}"#);
    }
}
