//! `AgentSession`: the trait methods, each one request to the agent.
//!
//! Commands go through runner-api's [`ProcessTable`], which owns ids,
//! timeouts, cancellation, the head/tail view, the numbered output log and
//! live streams; this file only says how to start a command on the agent and
//! how to signal it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerSession, RunnerCapabilities, RunnerCommandId, RunnerCommandOutput,
    RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerEventStream,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileWriteRequest,
    RunnerProcessInfo, RunnerResult, RunnerSessionState, RunnerSignal, check_read_request,
    reject_nul_path,
};
use runner_kit::{OutputSink, ProcessControl, ProcessTable, ProcessTableConfig, SpawnedProcess};

use crate::connection::Connection;
use crate::error::{Failure, map_failure};
use crate::protocol::{Answer, Op};

/// Time the agent gets to answer `shutdown` and exit before it is killed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// A session: one agent process and the commands it runs.
pub struct AgentSession {
    state: RunnerSessionState,
    root: PathBuf,
    connection: Arc<Connection>,
    table: ProcessTable,
    closed: AtomicBool,
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
            closed: AtomicBool::new(false),
        }
    }

    /// `SessionClosed` once closed.
    fn live(&self, operation: &str) -> RunnerResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(
                operation,
                &self.state.session_id,
            ));
        }
        Ok(())
    }

    /// Commands get no stdin: this provider does not declare `stdin`.
    fn check_command(&self, operation: &str, request: &RunnerCommandRequest) -> RunnerResult<()> {
        self.live(operation)?;
        if request.stdin.is_some() || request.keep_stdin_open {
            return Err(self.unsupported(&format!("{operation} with stdin")));
        }
        Ok(())
    }

    /// Sends a file operation on `path` and returns the answer.
    async fn file_op(&self, operation: &str, path: &Path, op: Op) -> RunnerResult<Answer> {
        self.live(operation)?;
        reject_nul_path(operation, path)?;
        self.connection
            .call(op)
            .await
            .map_err(|failure| map_failure(operation, &path.display().to_string(), failure))
    }
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

    async fn close(&self) -> RunnerResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
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
        self.check_command("run_command", &request)?;
        let connection = self.connection.clone();
        let spawn_request = request.clone();
        self.table
            .run(request, move |sink| {
                launch(connection, "run_command", spawn_request, sink)
            })
            .await
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        self.live("cancel_command")?;
        self.table.cancel(command_id).await
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.check_command("start_command", &request)?;
        let connection = self.connection.clone();
        let spawn_request = request.clone();
        self.table
            .start(request, move |sink| {
                launch(connection, "start_command", spawn_request, sink)
            })
            .await
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.live("list_commands")?;
        Ok(self.table.list())
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.live("command_status")?;
        self.table.status(command_id)
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        self.live("command_output")?;
        self.table.output(command_id, after_seq)
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        self.live("stream_command")?;
        self.table.stream(command_id, after_seq)
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.live("signal_command")?;
        self.table.signal(command_id, signal).await
    }

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

    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        let path = request.path.clone();
        let op = Op::WriteFile {
            path: request.path,
            contents: request.contents,
            mode: request.mode,
            offset: request.offset,
        };
        match self.file_op("write_file", &path, op).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected("write_file", &path, other)),
        }
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
