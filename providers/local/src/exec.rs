//! Spawning a command as a local process in its own process group and feeding
//! its output into the [`ProcessTable`](runner_kit::ProcessTable)'s sink.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pty_process::{OwnedReadPty, OwnedWritePty};
use runner_api::{
    RunnerCommandId, RunnerCommandRequest, RunnerError, RunnerOutputStream, RunnerResult,
    RunnerSignal, RunnerTerminal,
};
use runner_kit::{OutputSink, ProcessControl, RawExit, SpawnedProcess, StdinPipe};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::signal::unix::SignalKind;
use tokio::task::JoinHandle;

use crate::error::join_error;
use crate::files::Workspace;
use crate::groups::{COMMAND_ENV, CommandTree, Groups, SESSION_ENV};
use crate::users::{self, RunAs};

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
    /// The program commands of another user are started through (`run-as`),
    /// instead of `setpriv`.
    user_switcher: Option<PathBuf>,
}

/// The signals a command must not inherit as ignored: an embedding process
/// started in the background of a shell (`cmd &`), or under `nohup`, ignores
/// some of them, and an ignored signal stays ignored across `exec`, so a
/// shell would start with Ctrl-C (SIGINT) hard-ignored and a terminal's 0x03
/// would never interrupt its jobs.
const DEFAULT_FOR_COMMANDS: [SignalKind; 4] = [
    SignalKind::interrupt(),
    SignalKind::quit(),
    SignalKind::hangup(),
    SignalKind::terminate(),
];

/// Gives commands the default action of [`DEFAULT_FOR_COMMANDS`] while this
/// process keeps ignoring them: each one this process ignores gets a Tokio
/// signal handler instead (one that nothing reads, so the process still does
/// nothing on it), and a handled signal is reset to its default by `exec`.
/// Signals this process does not ignore are left alone. Once per process.
fn default_signals_for_commands() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let ignored = procfs::process::Process::myself()
            .and_then(|me| me.status())
            .map(|status| status.sigign)
            .unwrap_or(0);
        for kind in DEFAULT_FOR_COMMANDS {
            let number = kind.as_raw_value();
            if ignored & (1u64 << (number - 1)) == 0 {
                continue;
            }
            // Tokio panics instead of failing on a runtime without its IO
            // driver; that leaves the signal ignored, as it was.
            let registered = tokio::runtime::Handle::try_current().is_ok()
                && std::panic::catch_unwind(|| tokio::signal::unix::signal(kind))
                    .ok()
                    .and_then(Result::ok)
                    // Kept for the life of the process: dropping the stream
                    // would not restore SIG_IGN anyway.
                    .map(std::mem::forget)
                    .is_some();
            if !registered {
                tracing::warn!(signal = number, "cannot stop commands from inheriting an ignored signal (needs a Tokio runtime with its IO driver)");
            }
        }
    });
}

impl SpawnContext {
    /// The context of session `session_id` with the destination's `env` and
    /// the provider's `user_switcher`; the host environment is read now, once.
    pub(crate) fn new(
        session_id: &str,
        config_env: &BTreeMap<String, String>,
        groups: Arc<Groups>,
        user_switcher: Option<PathBuf>,
    ) -> Self {
        default_signals_for_commands();
        let mut env: BTreeMap<String, String> =
            runner_api::inherited_host_env().into_iter().collect();
        env.extend(config_env.clone());
        Self {
            env,
            session_id: session_id.to_string(),
            groups,
            user_switcher,
        }
    }
}

/// A prepared command: the request (without its stdin bytes), its stdin, its
/// resolved working directory, user and environment.
struct Launch {
    /// `run_command` or `start_command`, for messages.
    operation: &'static str,
    /// The request.
    request: RunnerCommandRequest,
    /// Bytes for stdin, taken out of the request.
    stdin: Option<Vec<u8>>,
    /// Absolute working directory, already checked.
    cwd: PathBuf,
    /// The user the request names, resolved.
    run_as: Option<RunAs>,
    /// The environment without the process marks (see [`spawn`]).
    env: BTreeMap<String, String>,
}

/// Signals the command's process tree, writes its kept-open stdin and
/// resizes its terminal.
struct LocalControl {
    tree: CommandTree,
    /// The command, for stdin errors.
    command_id: RunnerCommandId,
    stdin: StdinPipe,
    /// A descriptor of the terminal's master side, for a terminal command.
    terminal: Option<OwnedFd>,
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

    async fn resize(&self, rows: u16, cols: u16) -> RunnerResult<()> {
        let Some(master) = &self.terminal else {
            return Err(RunnerError::invalid_request(
                "the command does not run on a terminal",
            ));
        };
        // The kernel sends SIGWINCH to the terminal's foreground group.
        rustix::termios::tcsetwinsize(master, winsize(rows, cols))
            .map_err(|e| RunnerError::from_io("resize_terminal", &self.command_id, e.into()))
    }
}

fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Where the command's standard streams go.
enum Streams {
    /// stdout and stderr pipes (and stdin when one was asked for).
    Pipes,
    /// A pseudo-terminal: the master's read and write halves and a descriptor
    /// of it for resizing.
    Terminal(OwnedReadPty, OwnedWritePty, OwnedFd),
}

/// A terminal error as an I/O error, for [`spawn_error`].
fn pty_io(error: pty_process::Error) -> io::Error {
    match error {
        pty_process::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Spawns `command` on a new pseudo-terminal of `terminal`'s size: the child
/// becomes a session leader with the terminal as its controlling terminal
/// (so its process group id is its pid, as for piped commands).
fn spawn_on_terminal(
    command: tokio::process::Command,
    terminal: &RunnerTerminal,
) -> io::Result<(tokio::process::Child, Streams)> {
    let (pty, pts) = pty_process::open().map_err(pty_io)?;
    pty.resize(pty_process::Size::new(terminal.rows, terminal.cols))
        .map_err(pty_io)?;
    let master = pty.as_fd().try_clone_to_owned()?;
    let child = pty_process::Command::from(command)
        .spawn(pts)
        .map_err(pty_io)?;
    let (read, write) = pty.into_split();
    Ok((child, Streams::Terminal(read, write, master)))
}

fn spawn_error(launch: &Launch, error: io::Error) -> RunnerError {
    let op = launch.operation;
    let id = &launch.request.command_id;
    let program = &launch.request.program;
    let what = match &launch.request.user {
        Some(user) => format!("{op} {id} (as user {user:?})"),
        None => format!("{op} {id}"),
    };
    match error.kind() {
        io::ErrorKind::NotFound => {
            RunnerError::not_found(format!("{what}: program {program} not found"))
                .with_source(error)
        }
        io::ErrorKind::PermissionDenied => RunnerError::permission_denied(format!(
            "{what}: program {program} is not executable (permission denied)"
        ))
        .with_source(error),
        _ => RunnerError::from_io(&format!("{what}: spawning"), program, error),
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

/// The spawn step the [`ProcessTable`](runner_kit::ProcessTable) runs for a new
/// command id: checks the cwd (before anything runs, so a missing cwd and a
/// missing program give different errors) and the user, then spawns.
///
/// Errors: `NotFound` (cwd, user or program missing), `PermissionDenied` (cwd
/// outside the workspace, a user this process may not switch to, program not
/// executable), `InvalidRequest` (a malformed user), `Unsupported` (a switch
/// without a user switcher on a host without `setpriv`), `Provider` otherwise.
pub(crate) async fn launch(
    ctx: Arc<SpawnContext>,
    workspace: Arc<Workspace>,
    operation: &'static str,
    request: RunnerCommandRequest,
    stdin: Option<Vec<u8>>,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let base_env = ctx.env.clone();
    let switcher = ctx.user_switcher.clone();
    let launch = tokio::task::spawn_blocking(move || {
        let what = format!("{operation} {}", request.command_id);
        let cwd = workspace.command_cwd(&what, request.cwd.as_deref())?;
        let run_as = match &request.user {
            Some(user) => Some(RunAs::resolve(&what, user, switcher.as_deref())?),
            None => None,
        };
        let env = command_env(base_env, run_as.as_ref(), &request);
        let launch = Launch {
            operation,
            request,
            stdin,
            cwd,
            run_as,
            env,
        };
        if launch.run_as.as_ref().is_some_and(RunAs::is_switch) {
            let path = launch.env.get("PATH").map(String::as_str);
            users::find_program(&launch.request.program, path, &launch.cwd)
                .map_err(|e| spawn_error(&launch, e))?;
        }
        Ok::<_, RunnerError>(launch)
    })
    .await
    .map_err(|e| join_error(operation, e))??;
    spawn(&ctx, launch, sink)
}

/// A command's environment without the process marks, later entries
/// winning: the context's (inherited host variables and the destination's),
/// the named user's `HOME`, `USER` and `LOGNAME`, then the request's.
fn command_env(
    mut env: BTreeMap<String, String>,
    run_as: Option<&RunAs>,
    request: &RunnerCommandRequest,
) -> BTreeMap<String, String> {
    env.extend(run_as.into_iter().flat_map(RunAs::login_env));
    env.extend(request.effective_env());
    env
}

/// Spawns the command in its own process group and returns it to the table.
/// Its environment: [`command_env`], then the session and command marks,
/// which the request therefore cannot override.
///
/// Errors: `NotFound` (program missing), `PermissionDenied` (not executable),
/// `Provider` otherwise.
fn spawn(ctx: &SpawnContext, launch: Launch, sink: OutputSink) -> RunnerResult<SpawnedProcess> {
    let request = &launch.request;
    let keep_open = request.keep_stdin_open;
    let mark = CommandTree::new_mark();
    let mut command = match &launch.run_as {
        Some(run_as) => run_as.command(&request.program),
        None => tokio::process::Command::new(&request.program),
    };
    command
        .args(&request.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(&launch.env)
        .env(SESSION_ENV, &ctx.session_id)
        .env(COMMAND_ENV, &mark)
        .kill_on_drop(false);
    let (mut child, streams) = match &request.terminal {
        Some(terminal) => spawn_on_terminal(command, terminal),
        None => {
            command
                .process_group(0)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(if launch.stdin.is_some() || keep_open {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
            command.spawn().map(|child| (child, Streams::Pipes))
        }
    }
    .map_err(|e| spawn_error(&launch, e))?;
    let pid = child
        .id()
        .ok_or_else(|| RunnerError::provider("spawned command has no pid"))?;
    let tree = ctx.groups.remember(pid as i32, mark);
    let command_id = request.command_id.clone();
    tracing::info!(command_id = %command_id, program = %request.program, user = ?request.user, pid, terminal = request.terminal.is_some(), "spawned local command");

    let (stdin, readers, terminal) = match streams {
        Streams::Pipes => {
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
            (stdin, readers, None)
        }
        // A terminal's input stays open (keys are sent with write_stdin);
        // its output is one stream, reported as stdout.
        Streams::Terminal(read, write, master) => {
            let stdin = StdinPipe::start(Some(write), launch.stdin, true);
            let reader = tokio::spawn(pump(read, sink, RunnerOutputStream::Stdout));
            (stdin, vec![reader], Some(master))
        }
    };

    let control = Arc::new(LocalControl {
        tree,
        command_id: command_id.clone(),
        stdin: stdin.clone(),
        terminal,
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
