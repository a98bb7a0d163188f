//! `AgentSession`: the trait methods, each one request to the agent (a
//! streamed file, one request per chunk).
//!
//! Commands go through runner-kit's [`ProcessTable`], which owns ids,
//! timeouts, cancellation, the head/tail view, the numbered output log and
//! live streams; this file only says how to start a command on the agent and
//! how to signal it.
//!
//! The session checks nothing the stack checks for every provider (a closed
//! session, an operation without its capability flag, a command with stdin):
//! `runner_stack::Stack` composes its correctness layer over this session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCapabilities, RunnerCommandId,
    RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerEventStream,
    RunnerFileKind, RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileStream,
    RunnerFileWriteRequest, RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal,
    check_read_request, next_chunk, prepend, reject_nul_path,
};
use runner_kit::{OutputSink, ProcessControl, ProcessTable, ProcessTableConfig, SpawnedProcess};

use crate::connection::Connection;
use crate::error::{Failure, map_failure};
use crate::protocol::{Answer, Op};

/// Time the agent gets to answer `shutdown` and exit before it is killed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Bytes one request of a streamed read or write carries at most.
const CHUNK: u64 = 1024 * 1024;

/// A session: one agent process and the commands it runs.
pub struct AgentSession {
    state: RunnerSessionState,
    root: PathBuf,
    connection: Arc<Connection>,
    table: ProcessTable,
}

/// Signals one command's process group through the agent.
struct AgentControl {
    connection: Arc<Connection>,
    process: u64,
    command_id: RunnerCommandId,
}

#[async_trait]
impl ProcessControl for AgentControl {
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        let op = Op::Signal {
            process: self.process,
            signal: signal.number(),
        };
        match self.connection.call(op).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(map_failure("signal_command", &self.command_id, failure)),
        }
    }
}

/// Starts `request` on the agent with its output going to `sink`.
async fn launch(
    connection: Arc<Connection>,
    operation: &'static str,
    request: RunnerCommandRequest,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let command_id = request.command_id.clone();
    let op = Op::Spawn {
        env: request.effective_env(),
        program: request.program,
        args: request.args,
        cwd: request.cwd,
    };
    let (process, pid, exited) = connection
        .spawn(op, sink)
        .await
        .map_err(|failure| map_failure(operation, &command_id, failure))?;
    let id = command_id.clone();
    let exit = Box::pin(async move {
        exited.await.map_err(|_| {
            let gone = Failure::Transport("it exited before the command did".into());
            map_failure("wait", &id, gone)
        })
    });
    Ok(SpawnedProcess {
        pid: Some(pid),
        control: Arc::new(AgentControl {
            connection,
            process,
            command_id,
        }),
        exit,
    })
}

impl AgentSession {
    pub(crate) fn new(state: RunnerSessionState, root: PathBuf, connection: Connection) -> Self {
        let table = ProcessTable::new(ProcessTableConfig::new(crate::PROVIDER_ID));
        Self {
            state,
            root,
            connection: Arc::new(connection),
            table,
        }
    }

    /// Sends a file operation on `path` and returns the answer.
    async fn file_op(&self, operation: &str, path: &Path, op: Op) -> RunnerResult<Answer> {
        file_op(&self.connection, operation, path, op).await
    }

    /// Writes `contents` to `path` at `offset`: the whole file (atomic in
    /// the agent) without one, in place with one.
    async fn write_op(
        &self,
        path: &Path,
        contents: Vec<u8>,
        mode: Option<u32>,
        offset: Option<u64>,
    ) -> RunnerResult<()> {
        let op = Op::WriteFile {
            path: path.to_path_buf(),
            contents,
            mode,
            offset,
        };
        match self.file_op("write_file", path, op).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected("write_file", path, other)),
        }
    }

    /// The mode a replaced file gets: the one asked for, or the old file's,
    /// or 0o644. A directory at `path` is refused before any byte moves.
    async fn replacement_mode(&self, path: &Path, mode: Option<u32>) -> RunnerResult<u32> {
        match self.stat(path).await {
            Ok(stat) if stat.kind == RunnerFileKind::Directory => {
                Err(RunnerError::invalid_request(format!(
                    "write_file {}: is a directory",
                    path.display()
                )))
            }
            Ok(stat) if stat.kind == RunnerFileKind::File => Ok(mode.unwrap_or(stat.mode)),
            Ok(_) => Ok(mode.unwrap_or(0o644)),
            Err(e) if e.kind() == runner_api::RunnerErrorKind::NotFound => {
                Ok(mode.unwrap_or(0o644))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `first`, `second` and the rest of `body` to `path` at `offset`
    /// and on, one request per chunk.
    async fn write_chunks(
        &self,
        path: &Path,
        mode: Option<u32>,
        mut offset: u64,
        chunks: [Vec<u8>; 2],
        body: &mut RunnerByteStream,
    ) -> RunnerResult<()> {
        let [first, second] = chunks;
        let (first_len, second_len) = (first.len() as u64, second.len() as u64);
        self.write_op(path, first, mode, Some(offset)).await?;
        offset += first_len;
        self.write_op(path, second, None, Some(offset)).await?;
        offset += second_len;
        while let Some(chunk) = next_chunk(body).await {
            let chunk = chunk?;
            let len = chunk.len() as u64;
            self.write_op(path, chunk.to_vec(), None, Some(offset))
                .await?;
            offset += len;
        }
        Ok(())
    }
}

/// Sends a file operation on `path` over `connection` and returns the answer.
async fn file_op(
    connection: &Connection,
    operation: &str,
    path: &Path,
    op: Op,
) -> RunnerResult<Answer> {
    reject_nul_path(operation, path)?;
    connection
        .call(op)
        .await
        .map_err(|failure| map_failure(operation, &path.display().to_string(), failure))
}

/// Reads `limit` bytes of `path` from `offset`: the bytes and the whole size.
async fn read_part(
    connection: &Connection,
    path: &Path,
    offset: u64,
    limit: u64,
) -> RunnerResult<(Vec<u8>, u64)> {
    let op = Op::ReadFile {
        path: path.to_path_buf(),
        offset: Some(offset),
        limit: Some(limit),
    };
    match file_op(connection, "read_file", path, op).await? {
        Answer::File { contents, size } => Ok((contents, size)),
        other => Err(unexpected("read_file", path, other)),
    }
}

/// The rest of a streamed read: `[next, end)` of `path`, one request per
/// chunk. A file that shrank meanwhile ends the stream early.
fn read_rest(connection: Arc<Connection>, path: PathBuf, next: u64, end: u64) -> RunnerByteStream {
    Box::pin(futures_util::stream::try_unfold(
        (connection, path, next),
        move |(connection, path, next)| async move {
            if next >= end {
                return Ok(None);
            }
            let (contents, _) =
                read_part(&connection, &path, next, (end - next).min(CHUNK)).await?;
            if contents.is_empty() {
                return Ok(None);
            }
            let after = next + contents.len() as u64;
            Ok(Some((Bytes::from(contents), (connection, path, after))))
        },
    ))
}

/// An answer of the wrong kind for `operation`.
fn unexpected(operation: &str, path: &Path, answer: Answer) -> RunnerError {
    let failure = Failure::Protocol(format!("{answer:?}"));
    map_failure(operation, &path.display().to_string(), failure)
}

#[async_trait]
impl RemoteRunnerSession for AgentSession {
    fn state(&self) -> RunnerSessionState {
        self.state.clone()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        crate::capabilities()
    }

    fn workspace_root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Kills every command and shuts the agent down; an agent that is gone
    /// already makes this `Ok` too.
    async fn close(&self) -> RunnerResult<()> {
        self.table.kill_all().await;
        match self.connection.shutdown(SHUTDOWN_LIMIT).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(map_failure("close", &self.state.session_id, failure)),
        }
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let connection = self.connection.clone();
        let spawn_request = request.clone();
        self.table
            .run(request, move |sink| {
                launch(connection, "run_command", spawn_request, sink)
            })
            .await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.table.cancel(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let connection = self.connection.clone();
        let spawn_request = request.clone();
        self.table
            .start(request, move |sink| {
                launch(connection, "start_command", spawn_request, sink)
            })
            .await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        Ok(self.table.list())
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.table.status(command_id)
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.table.output(command_id, after_seq)
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.table.stream(command_id, after_seq)
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.table.signal(command_id, signal).await
    }

    /// The whole window in one request, from one open of the file, so a
    /// concurrent replace is never mixed into it (a stream asks per chunk).
    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        // The agent reads at most the window; a limit above the maximum
        // never leaves the provider.
        check_read_request("read_file", &request)?;
        let op = Op::ReadFile {
            path: request.path.clone(),
            offset: request.offset,
            limit: request.limit,
        };
        match self.file_op("read_file", &request.path, op).await? {
            Answer::File { contents, size } => Ok(RunnerFileReadResult {
                path: request.path,
                contents,
                size,
            }),
            other => Err(unexpected("read_file", &request.path, other)),
        }
    }

    /// The window one chunk of at most 1 MiB per request; the first answer
    /// names the size.
    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        let offset = request.offset.unwrap_or(0);
        let first_limit = request.limit.map_or(CHUNK, |limit| limit.min(CHUNK));
        let (first, size) = read_part(&self.connection, &request.path, offset, first_limit).await?;
        let end = request
            .limit
            .map_or(size, |limit| offset.saturating_add(limit).min(size));
        let next = offset.min(size) + first.len() as u64;
        let rest = read_rest(self.connection.clone(), request.path.clone(), next, end);
        Ok(RunnerFileStream {
            path: request.path,
            size,
            bytes: prepend(first, rest),
        })
    }

    /// One chunk (a whole-buffer `write_file`) is one request, atomic in the
    /// agent. More are written to a temporary file next to the target, one
    /// request each, and renamed over it; a failing body removes the
    /// temporary file and leaves the target as it was. With an offset the
    /// chunks are written in place, one after the other: a body failing
    /// part way leaves the chunks written before it.
    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        let path = request.path;
        let mut body = prepend(request.contents, body);
        let first = next_chunk(&mut body).await.transpose()?.unwrap_or_default();
        let Some(second) = next_chunk(&mut body).await.transpose()? else {
            return self
                .write_op(&path, first.to_vec(), request.mode, request.offset)
                .await;
        };
        let chunks = [first.to_vec(), second.to_vec()];
        if let Some(offset) = request.offset {
            return self
                .write_chunks(&path, request.mode, offset, chunks, &mut body)
                .await;
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(RunnerError::invalid_request(format!(
                "write_file {}: not a file path",
                path.display()
            )));
        };
        let mode = self.replacement_mode(&path, request.mode).await?;
        self.make_dir(parent).await?;
        let temp = parent.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = async {
            self.write_chunks(&temp, Some(mode), 0, chunks, &mut body)
                .await?;
            self.rename(&temp, &path).await
        }
        .await;
        if written.is_err() {
            // Best effort: the error of the write is the one to report.
            let _ = self.remove(&temp, false).await;
        }
        written
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let op = Op::ListDir { path: path.into() };
        match self.file_op("list_dir", path, op).await? {
            Answer::Entries { entries } => Ok(entries),
            other => Err(unexpected("list_dir", path, other)),
        }
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        match self
            .file_op("stat", path, Op::Stat { path: path.into() })
            .await?
        {
            Answer::Stat { stat } => Ok(stat),
            other => Err(unexpected("stat", path, other)),
        }
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let op = Op::Remove {
            path: path.into(),
            recursive,
        };
        match self.file_op("remove", path, op).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected("remove", path, other)),
        }
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        match self
            .file_op("make_dir", path, Op::MakeDir { path: path.into() })
            .await?
        {
            Answer::Done => Ok(()),
            other => Err(unexpected("make_dir", path, other)),
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        reject_nul_path("rename", to)?;
        let op = Op::Rename {
            from: from.into(),
            to: to.into(),
        };
        match self.file_op("rename", from, op).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected("rename", from, other)),
        }
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let op = Op::Canonicalize { path: path.into() };
        match self.file_op("canonicalize", path, op).await? {
            Answer::Path { path } => Ok(path),
            other => Err(unexpected("canonicalize", path, other)),
        }
    }
}
