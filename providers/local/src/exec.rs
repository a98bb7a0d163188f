//! Spawning a command as a local process in its own process group and feeding
//! its output into the [`ProcessTable`](runner_api::ProcessTable)'s sink.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    OutputSink, ProcessControl, RawExit, RunnerCommandId, RunnerCommandRequest, RunnerError,
    RunnerOutputStream, RunnerResult, RunnerSignal, SpawnedProcess, StdinPipe,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::error::join_error;
use crate::files::Workspace;
use crate::groups::{COMMAND_ENV, CommandTree, Groups, SESSION_ENV};

/// Size of the buffers output is read with.
const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading output after the command itself exited. A
/// background grandchild that inherited the pipes would keep them open forever.
const READER_GRACE: Duration = Duration::from_millis(250);

/// What every spawn of one session shares.
pub(crate) struct SpawnContext {
    /// The inherited host variables ([`runner_api::inherited_host_env`]),
    /// then `LocalConfig.env`.
    env: BTreeMap<String, String>,
    /// The session id, for [`SESSION_ENV`].
    session_id: String,
    /// The session's processes.
    groups: Arc<Groups>,
}

impl SpawnContext {
    /// The context of session `session_id` with the destination's `env`; the
    /// host environment is read now, once.
    pub(crate) fn new(
        session_id: &str,
        config_env: &BTreeMap<String, String>,
        groups: Arc<Groups>,
    ) -> Self {
        let mut env: BTreeMap<String, String> =
            runner_api::inherited_host_env().into_iter().collect();
        env.extend(config_env.clone());
        Self {
            env,
            session_id: session_id.to_string(),
            groups,
        }
    }
}

/// A prepared command: the request (without its stdin bytes), its stdin and
/// its resolved working directory.
struct Launch {
    /// `run_command` or `start_command`, for messages.
    operation: &'static str,
    /// The request.
    request: RunnerCommandRequest,
    /// Bytes for stdin, taken out of the request.
    stdin: Option<Vec<u8>>,
    /// Absolute working directory, already checked.
    cwd: PathBuf,
}

/// Signals the command's process tree and writes its kept-open stdin.
struct LocalControl {
    tree: CommandTree,
    /// The command, for stdin errors.
    command_id: RunnerCommandId,
    stdin: StdinPipe,
}

#[async_trait]
impl ProcessControl for LocalControl {
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.signal(signal))
            .await
            .map_err(|e| join_error("signal", e))?
    }

    async fn write_stdin(&self, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        self.stdin.write(&self.command_id, bytes, close).await
    }
}

fn spawn_error(launch: &Launch, error: io::Error) -> RunnerError {
    let op = launch.operation;
    let id = &launch.request.command_id;
    let program = &launch.request.program;
    match error.kind() {
        io::ErrorKind::NotFound => {
            RunnerError::not_found(format!("{op} {id}: program {program} not found"))
                .with_source(error)
        }
        io::ErrorKind::PermissionDenied => RunnerError::permission_denied(format!(
            "{op} {id}: program {program} is not executable (permission denied)"
        ))
        .with_source(error),
        _ => RunnerError::from_io(&format!("{op} {id}: spawning"), program, error),
    }
}

async fn pump(mut reader: impl AsyncRead + Unpin, sink: OutputSink, stream: RunnerOutputStream) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => sink.push(stream, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The spawn step the [`ProcessTable`](runner_api::ProcessTable) runs for a new
/// command id: checks the cwd (before anything runs, so a missing cwd and a
/// missing program give different errors), then spawns.
///
/// Errors: `NotFound` (cwd or program missing), `PermissionDenied` (cwd outside
/// the workspace, program not executable), `Provider` otherwise.
pub(crate) async fn launch(
    ctx: Arc<SpawnContext>,
    workspace: Arc<Workspace>,
    operation: &'static str,
    request: RunnerCommandRequest,
    stdin: Option<Vec<u8>>,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let what = format!("{operation} {}", request.command_id);
    let cwd_arg = request.cwd.clone();
    let cwd = tokio::task::spawn_blocking(move || workspace.command_cwd(&what, cwd_arg.as_deref()))
        .await
        .map_err(|e| join_error(operation, e))??;
    let launch = Launch {
        operation,
        request,
        stdin,
        cwd,
    };
    spawn(&ctx, launch, sink)
}

/// Spawns the command in its own process group and returns it to the table.
/// Its environment: the context's (inherited host variables and the
/// destination's), the request's, then the session and command marks, which
/// the request therefore cannot override.
///
/// Errors: `NotFound` (program missing), `PermissionDenied` (not executable),
/// `Provider` otherwise.
fn spawn(ctx: &SpawnContext, launch: Launch, sink: OutputSink) -> RunnerResult<SpawnedProcess> {
    let request = &launch.request;
    let keep_open = request.keep_stdin_open;
    let mark = CommandTree::new_mark();
    let mut command = tokio::process::Command::new(&request.program);
    command
        .args(&request.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(&ctx.env)
        .envs(request.effective_env())
        .env(SESSION_ENV, &ctx.session_id)
        .env(COMMAND_ENV, &mark)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if launch.stdin.is_some() || keep_open {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|e| spawn_error(&launch, e))?;
    let pid = child
        .id()
        .ok_or_else(|| RunnerError::provider("spawned command has no pid"))?;
    let tree = ctx.groups.remember(pid as i32, mark);
    let command_id = request.command_id.clone();
    tracing::info!(command_id = %command_id, program = %request.program, pid, "spawned local command");

    let stdin = StdinPipe::start(child.stdin.take(), launch.stdin, keep_open);

    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(pump(out, sink.clone(), RunnerOutputStream::Stdout)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump(err, sink, RunnerOutputStream::Stderr)));
    let readers: Vec<JoinHandle<()>> = stdout.into_iter().chain(stderr).collect();

    let control = Arc::new(LocalControl {
        tree,
        command_id: command_id.clone(),
        stdin: stdin.clone(),
    });
    let exit = Box::pin(async move {
        let status = child.wait().await;
        let aborts: Vec<_> = readers.iter().map(JoinHandle::abort_handle).collect();
        let drained = tokio::time::timeout(READER_GRACE, async move {
            for reader in readers {
                let _ = reader.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(command_id = %command_id, "output pipes still open after exit (a background process holds them); stopped reading");
            for abort in aborts {
                abort.abort();
            }
        }
        stdin.release();
        let status = status.map_err(|e| RunnerError::from_io("wait", &command_id, e))?;
        let raw = RawExit {
            exit_code: status.code(),
            signal: status.signal(),
        };
        tracing::info!(command_id = %command_id, exit_code = ?raw.exit_code, signal = ?raw.signal, "local command exited");
        Ok(raw)
    });

    Ok(SpawnedProcess {
        pid: Some(pid),
        control,
        exit,
    })
}
