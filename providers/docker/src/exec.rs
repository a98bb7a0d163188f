//! Commands through the exec API: a small `sh` wrapper checks the cwd and the
//! program, records the command's process group, and execs the program, so
//! stdout and stderr stay apart and the exit code is the program's own.
//!
//! Every exec is a session and process-group leader in the container (runc
//! starts it with `setsid`), so the whole tree of a command is one process
//! group. A child may leave that group (`setsid`), so every command also
//! carries a mark in its environment, [`MARK_VAR`]`=<session id>-<token>`,
//! set after the request's own variables (the request cannot replace it) and
//! inherited by every descendant. Docker cannot kill an exec; signals go
//! through a second short exec, as the user the command runs as, that
//! signals the group (`kill -s SIG -PGID`, with the group id read from the
//! file the wrapper wrote) and every process whose `/proc/<pid>/environ`
//! holds the mark.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use runner_api::{
    RunnerByteStream, RunnerCommandId, RunnerCommandRequest, RunnerError, RunnerErrorKind,
    RunnerOutputStream, RunnerResult, RunnerSignal, next_chunk,
};
use runner_kit::{OutputSink, ProcessControl, RawExit, SpawnedProcess, StdinPipe};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, RwLockWriteGuard};

use crate::error::Daemon;

/// Written by the wrapper to stdout once the program is about to start; not
/// part of the command's output.
const STARTED: &[u8] = b"\x1erunner-started\x1e";

/// Exit codes the wrapper uses before the program starts.
const CWD_MISSING: i64 = 200;
const PROGRAM_MISSING: i64 = 201;
const CWD_NOT_A_DIRECTORY: i64 = 202;
const PROGRAM_NOT_EXECUTABLE: i64 = 203;

/// `$0` is the group-id file, `$1` the cwd, the rest the program and arguments.
const WRAPPER: &str = r#"
f=$0
if ! cd -- "$1" 2>/dev/null; then
  if [ -e "$1" ]; then exit 202; fi
  exit 200
fi
shift
case $1 in
  */*)
    if [ ! -e "$1" ]; then exit 201; fi
    if [ -d "$1" ] || [ ! -x "$1" ]; then exit 203; fi ;;
  *)
    command -v -- "$1" >/dev/null 2>&1 || exit 201 ;;
esac
echo $$ > "$f"
printf '\036runner-started\036'
exec "$@"
"#;

/// The environment variable marking every process of a command.
pub(crate) const MARK_VAR: &str = "RUNNER_DOCKER_MARK";

/// `$1` is the group-id file (empty: no group), `$2` the signal name, `$3` the
/// mark (`MARK_VAR=<value>`, a prefix of it for every command of a session).
/// Waits briefly for a command that is still starting to write its group id,
/// signals the group, then every process whose environment holds the mark
/// (processes that left the group with `setsid`); KILL is repeated until no
/// marked process is left (a dying process's environment reads empty), so
/// children forked meanwhile are caught too. `grep` fails on the environments
/// a non-root user may not read, so only what it prints counts.
const SIGNAL: &str = r#"
if [ -n "$1" ]; then
  i=0
  while [ ! -s "$1" ] && [ $i -le 50 ]; do
    i=$((i+1))
    sleep 0.1
  done
  if read g < "$1"; then
    case $g in
      ''|*[!0-9]*) ;;
      *) [ "$g" -gt 1 ] && kill -s "$2" "-$g" ;;
    esac
  fi
fi 2>/dev/null
n=0
while [ $n -lt 20 ]; do
  n=$((n+1))
  l=$(grep -l -e "$3" /proc/[0-9]*/environ 2>/dev/null)
  [ -n "$l" ] || break
  p=
  for f in $l; do
    f=${f#/proc/}
    p="$p ${f%/environ}"
  done
  kill -s "$2" $p 2>/dev/null
  [ "$2" = KILL ] || break
done
exit 0
"#;

/// Where commands run: one container, its user and environment.
pub(crate) struct ExecContext {
    pub(crate) daemon: Daemon,
    pub(crate) container: String,
    pub(crate) user: Option<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workspace: PathBuf,
    /// Directory in the container for the group-id files.
    pub(crate) state_dir: String,
    /// The session id: every command's mark starts with it.
    pub(crate) session_id: String,
    /// Most bytes one upload unpacks (`max_upload_bytes`).
    pub(crate) max_upload_bytes: u64,
    /// Who commands run as, learned once at creation (unset: root).
    pub(crate) owner: std::sync::OnceLock<Identity>,
}

/// The session user as the container sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    /// Numeric uid.
    pub(crate) uid: u32,
    /// Numeric primary gid.
    pub(crate) gid: u32,
    /// The umask execs start with.
    pub(crate) umask: u32,
}

/// What a short helper script printed and how it ended.
pub(crate) struct ScriptOutput {
    pub(crate) code: i64,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

pub(crate) type Output =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// A started exec: its id, output and (when attached) stdin.
pub(crate) struct Started {
    pub(crate) id: String,
    pub(crate) output: Output,
    pub(crate) input: Input,
}

/// Most stderr bytes a helper's output keeps (for messages).
const STDERR_KEPT: usize = 16 * 1024;

/// Most bytes a helper may print before the newline of its first line.
const HEAD_LINE_MAX: usize = 32;

/// Decides when file operations may run in a session's container: shared
/// while it runs, exclusive for `pause` and `resume`; and while it is paused,
/// the thaw its file operations share (so an operation started while a
/// stream holds the container thawed joins that thaw instead of waiting for
/// the stream to end).
#[derive(Default)]
pub(crate) struct Freezer {
    lock: Arc<RwLock<()>>,
    thaw: Mutex<Weak<Thaw>>,
}

impl Freezer {
    /// The exclusive hold `pause` and `resume` take.
    pub(crate) async fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().await
    }

    /// Holds the container of `ctx` running for a file operation: a paused
    /// one (`paused`) is thawed for it, or joins the thaw of operations
    /// already running in it, and is frozen again when the last of them
    /// ends.
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn running(
        &self,
        operation: &str,
        paused: &AtomicBool,
        ctx: &Arc<ExecContext>,
    ) -> RunnerResult<Running> {
        if let Some(thaw) = self.current_thaw() {
            return Ok(Running(Hold::Thawed(thaw)));
        }
        let shared = self.lock.clone().read_owned().await;
        if !paused.load(Ordering::SeqCst) {
            return Ok(Running(Hold::Shared { _guard: shared }));
        }
        drop(shared);
        let frozen = self.lock.clone().write_owned().await;
        if !paused.load(Ordering::SeqCst) {
            return Ok(Running(Hold::Shared {
                _guard: frozen.downgrade(),
            }));
        }
        let container = &ctx.container;
        ctx.daemon
            .docker
            .unpause_container(container)
            .await
            .map_err(|e| ctx.daemon.error(operation, container, e))?;
        let thaw = Arc::new(Thaw {
            ctx: ctx.clone(),
            frozen: Some(frozen),
        });
        *self.thaw.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&thaw);
        Ok(Running(Hold::Thawed(thaw)))
    }

    fn current_thaw(&self) -> Option<Arc<Thaw>> {
        self.thaw
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
    }
}

/// A paused container thawed for file operations; holding the freezer
/// exclusively, so nothing else changes its state meanwhile.
struct Thaw {
    ctx: Arc<ExecContext>,
    frozen: Option<OwnedRwLockWriteGuard<()>>,
}

impl Drop for Thaw {
    fn drop(&mut self) {
        let Some(frozen) = self.frozen.take() else {
            return;
        };
        // The last operation was dropped half way: pause again before the
        // next one may see the container running.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ctx = self.ctx.clone();
            runtime.spawn(async move {
                if let Err(e) = ctx.freeze("file operation").await {
                    tracing::warn!(error = %e, "pausing the container again failed");
                }
                drop(frozen);
            });
        }
    }
}

/// Keeps the container running while a file operation's helpers run (see
/// [`Freezer::running`]); [`release`](Self::release) ends it.
pub(crate) struct Running(Hold);

enum Hold {
    /// Held only to be dropped with the operation.
    Shared {
        _guard: OwnedRwLockReadGuard<()>,
    },
    Thawed(Arc<Thaw>),
}

impl Running {
    /// Ends the hold; the last operation in a thawed container pauses it
    /// again first.
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn release(self, operation: &str) -> RunnerResult<()> {
        let Hold::Thawed(thaw) = self.0 else {
            return Ok(());
        };
        let Ok(mut thaw) = Arc::try_unwrap(thaw) else {
            // Another operation still runs in the thaw; the last one pauses.
            return Ok(());
        };
        let frozen = thaw.frozen.take();
        let paused = thaw.ctx.freeze(operation).await;
        drop(frozen);
        paused
    }
}

/// A started helper whose first line of stdout was read.
pub(crate) struct Headed {
    /// The line, without its newline.
    pub(crate) line: String,
    /// The helper's stdin.
    pub(crate) input: Input,
    /// The rest of its output.
    pub(crate) rest: HelperOutput,
}

/// What is left of a helper's output after its first line.
pub(crate) struct HelperOutput {
    exec_id: String,
    output: Output,
    /// Stdout bytes already read after the line.
    first: Bytes,
    /// Stderr so far (at most [`STDERR_KEPT`] bytes).
    stderr: Vec<u8>,
}

impl ExecContext {
    /// The uid and gid of the session user (files created at setup and
    /// uploaded entries get them).
    pub(crate) fn file_owner(&self) -> (u32, u32) {
        self.owner.get().map_or((0, 0), |id| (id.uid, id.gid))
    }

    /// The umask the session user's execs start with (unset: 022).
    pub(crate) fn umask(&self) -> u32 {
        self.owner.get().map_or(0o022, |id| id.umask)
    }

    /// The mark of every command of this session, as `SIGNAL` matches it.
    pub(crate) fn session_mark(&self) -> String {
        format!("{MARK_VAR}={}-", self.session_id)
    }

    /// Sends `signal` to the processes carrying `mark` (and the group named
    /// in `group_file`), those that left their process group included, as
    /// `user` (Docker's exec user: the one the command runs as, so a command
    /// can have only its own processes signalled, whatever it writes to its
    /// group file).
    pub(crate) async fn signal_marked(
        &self,
        operation: &str,
        mark: &str,
        group_file: &str,
        signal: RunnerSignal,
        user: Option<String>,
    ) -> RunnerResult<()> {
        let result = self
            .run_script(operation, SIGNAL, &[group_file, signal.name(), mark], user)
            .await;
        match result {
            Ok(_) => Ok(()),
            // The container is gone or stopped: so is every process in it.
            Err(e)
                if matches!(
                    e.kind(),
                    RunnerErrorKind::NotFound | RunnerErrorKind::SessionClosed
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `sh -c script` as root (for setting up the container).
    pub(crate) async fn script_as_root(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
    ) -> RunnerResult<ScriptOutput> {
        self.run_script(operation, script, args, Some("0".to_string()))
            .await
    }

    pub(crate) fn subject(&self) -> String {
        format!("in container {}", short(&self.container))
    }

    async fn start(
        &self,
        operation: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
        stdin: bool,
    ) -> RunnerResult<Started> {
        let docker = &self.daemon.docker;
        let subject = self.subject();
        let exec = docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(env),
                    user,
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.daemon.error(operation, &subject, e))?;
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(64 * 1024),
        };
        match docker
            .start_exec(&exec.id, Some(options))
            .await
            .map_err(|e| self.daemon.error(operation, &subject, e))?
        {
            StartExecResults::Attached { output, input } => Ok(Started {
                id: exec.id,
                output,
                input,
            }),
            StartExecResults::Detached => Err(RunnerError::provider(format!(
                "{operation} {subject}: the exec started detached"
            ))),
        }
    }

    /// The exit code of a finished exec (waits until Docker reports it).
    pub(crate) async fn exit_code(&self, operation: &str, exec_id: &str) -> RunnerResult<i64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let inspect = self
                .daemon
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|e| self.daemon.error(operation, &self.subject(), e))?;
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                return Ok(code);
            }
            if Instant::now() >= deadline {
                return Err(RunnerError::provider(format!(
                    "{operation} {}: Docker did not report the exit code within 30 s",
                    self.subject()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `sh -c script sh args…` as the session's user and collects its
    /// output; for the provider's own short helpers (file operations, signals).
    pub(crate) async fn script(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
    ) -> RunnerResult<ScriptOutput> {
        self.run_script(operation, script, args, self.user.clone())
            .await
    }

    /// [`script`](Self::script) with the chunks of `input` on its stdin
    /// (closed after the last), written as the script reads them. A script
    /// that exits without reading all of it still ends the call (its status
    /// tells).
    ///
    /// Errors: the daemon's; an error `input` yields, once the script has
    /// ended (it sees its stdin closed early).
    pub(crate) async fn script_with_input(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
        mut input: RunnerByteStream,
    ) -> RunnerResult<ScriptOutput> {
        let started = self.start_script(operation, script, args, true).await?;
        let Started {
            id,
            output,
            input: mut pipe,
        } = started;
        let write = async {
            let mut fed = Ok(());
            while let Some(chunk) = next_chunk(&mut input).await {
                match chunk {
                    // A script that exits early closes the stream: its status tells.
                    Ok(chunk) => {
                        if pipe.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        fed = Err(e);
                        break;
                    }
                }
            }
            let _ = pipe.shutdown().await;
            fed
        };
        let collect = self.collect(operation, &id, output);
        tokio::pin!(write, collect);
        let mut fed = None;
        loop {
            tokio::select! {
                result = &mut write, if fed.is_none() => fed = Some(result),
                out = &mut collect => {
                    return match fed {
                        Some(Err(e)) => Err(e),
                        _ => out,
                    };
                }
            }
        }
    }

    /// Starts `sh -c script sh args…` as the session's user.
    pub(crate) async fn start_script(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
        stdin: bool,
    ) -> RunnerResult<Started> {
        self.start(
            operation,
            script_command(script, args),
            Vec::new(),
            self.user.clone(),
            stdin,
        )
        .await
    }

    async fn run_script(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
        user: Option<String>,
    ) -> RunnerResult<ScriptOutput> {
        let started = self
            .start(
                operation,
                script_command(script, args),
                Vec::new(),
                user,
                false,
            )
            .await?;
        self.collect(operation, &started.id, started.output).await
    }

    /// Reads an exec's output to the end (stderr up to [`STDERR_KEPT`]
    /// bytes) and takes its exit code.
    async fn collect(
        &self,
        operation: &str,
        exec_id: &str,
        mut output: Output,
    ) -> RunnerResult<ScriptOutput> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(item) = output.next().await {
            match item.map_err(|e| self.daemon.error(operation, &self.subject(), e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.extend_from_slice(&message)
                }
                LogOutput::StdErr { message } => keep_stderr(&mut stderr, &message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let code = self.exit_code(operation, exec_id).await?;
        Ok(ScriptOutput {
            code,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }

    /// Pauses the container (after a file operation thawed it).
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn freeze(&self, operation: &str) -> RunnerResult<()> {
        self.daemon
            .docker
            .pause_container(&self.container)
            .await
            .map_err(|e| self.daemon.error(operation, &self.container, e))
    }

    /// Starts `sh -c script sh args…` as the session's user, with its stdin
    /// attached, and reads its stdout up to the end of its first line (at
    /// most [`HEAD_LINE_MAX`] bytes), keeping its stderr.
    ///
    /// Errors: the daemon's; `failed(code, stderr)` when the output ended
    /// before a line (the helper failed); `Provider` naming `operation` and
    /// `subject` when the helper printed something else.
    pub(crate) async fn start_headed(
        &self,
        operation: &str,
        subject: &str,
        script: &str,
        args: &[&str],
        failed: impl FnOnce(i64, &str) -> RunnerError,
    ) -> RunnerResult<Headed> {
        let Started {
            id,
            mut output,
            input,
        } = self.start_script(operation, script, args, true).await?;
        let (mut head, mut stderr) = (Vec::new(), Vec::new());
        while let Some(item) = output.next().await {
            match item.map_err(|e| self.daemon.error(operation, subject, e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    head.extend_from_slice(&message);
                    if let Some(newline) = head.iter().position(|b| *b == b'\n') {
                        let first = Bytes::from(head.split_off(newline + 1));
                        head.truncate(newline);
                        let line = String::from_utf8(head)
                            .map_err(|e| unexpected_output(operation, subject, e.as_bytes()))?;
                        let rest = HelperOutput {
                            exec_id: id,
                            output,
                            first,
                            stderr,
                        };
                        return Ok(Headed { line, input, rest });
                    }
                    if head.len() > HEAD_LINE_MAX {
                        return Err(unexpected_output(operation, subject, &head));
                    }
                }
                LogOutput::StdErr { message } => keep_stderr(&mut stderr, &message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let code = self.exit_code(operation, &id).await?;
        Err(failed(code, String::from_utf8_lossy(&stderr).trim()))
    }

    /// The rest of a helper's stdout as a stream: the bytes read after its
    /// first line, then each chunk as Docker delivers it, at most `limit`
    /// bytes in all. When the output ends the exit code is taken; a non-zero
    /// one ends the stream with `failed(code, stderr)`. `running` is
    /// released at the end.
    pub(crate) fn stdout_stream(
        self: Arc<Self>,
        operation: &'static str,
        rest: HelperOutput,
        limit: u64,
        failed: impl FnOnce(i64, &str) -> RunnerError + Send + 'static,
        running: Running,
    ) -> RunnerByteStream {
        let tail = Tail {
            ctx: self,
            operation,
            exec_id: rest.exec_id,
            output: rest.output,
            first: Some(rest.first),
            left: limit,
            stderr: rest.stderr,
            failed: Some(Box::new(failed)),
            running: Some(running),
        };
        Box::pin(futures_util::stream::unfold(tail, Tail::next))
    }

    fn cwd(&self, request: &RunnerCommandRequest) -> PathBuf {
        match &request.cwd {
            Some(cwd) if cwd.is_absolute() => cwd.clone(),
            Some(cwd) => self.workspace.join(cwd),
            None => self.workspace.clone(),
        }
    }
}

/// How a failed helper's stream ends: its exit code and stderr into the error.
type Failure = Box<dyn FnOnce(i64, &str) -> RunnerError + Send>;

/// The state of [`ExecContext::stdout_stream`]; `failed` is taken at the end.
struct Tail {
    ctx: Arc<ExecContext>,
    operation: &'static str,
    exec_id: String,
    output: Output,
    first: Option<Bytes>,
    left: u64,
    stderr: Vec<u8>,
    failed: Option<Failure>,
    running: Option<Running>,
}

impl Tail {
    /// The next chunk, or the stream's end (with the exit code's verdict).
    async fn next(mut self) -> Option<(RunnerResult<Bytes>, Self)> {
        self.failed.as_ref()?;
        if let Some(first) = self.first.take()
            && let Some(chunk) = self.within_limit(first)
        {
            return Some((Ok(chunk), self));
        }
        while let Some(item) = self.output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    if let Some(chunk) = self.within_limit(message) {
                        return Some((Ok(chunk), self));
                    }
                }
                Ok(LogOutput::StdErr { message }) => keep_stderr(&mut self.stderr, &message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    self.failed = None;
                    let subject = self.ctx.subject();
                    let error = self.ctx.daemon.error(self.operation, &subject, e);
                    return Some((Err(error), self));
                }
            }
        }
        let failed = self.failed.take()?;
        let code = self.ctx.exit_code(self.operation, &self.exec_id).await;
        let released = match self.running.take() {
            Some(running) => running.release(self.operation).await,
            None => Ok(()),
        };
        let error = match code {
            Ok(0) => released.err()?,
            Ok(code) => failed(code, String::from_utf8_lossy(&self.stderr).trim()),
            Err(e) => e,
        };
        Some((Err(error), self))
    }

    /// `chunk` cut to the bytes still allowed; `None` when none are left or
    /// it is empty.
    fn within_limit(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        let room = usize::try_from(self.left).unwrap_or(usize::MAX);
        chunk.truncate(room);
        self.left -= chunk.len() as u64;
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// A helper printed something this provider does not understand.
pub(crate) fn unexpected_output(operation: &str, subject: &str, out: &[u8]) -> RunnerError {
    RunnerError::provider(format!(
        "{operation} {subject}: unexpected helper output {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    ))
}

/// `sh -c script sh args…`.
fn script_command(script: &str, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    cmd.push("sh".to_string());
    cmd.extend(args.iter().map(|a| a.to_string()));
    cmd
}

/// Appends `message` to `stderr`, keeping at most [`STDERR_KEPT`] bytes.
pub(crate) fn keep_stderr(stderr: &mut Vec<u8>, message: &[u8]) {
    let room = STDERR_KEPT.saturating_sub(stderr.len());
    stderr.extend_from_slice(&message[..message.len().min(room)]);
}

/// The short form of a container id, for messages.
pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Starts `request` through the wrapper and returns once the program runs.
///
/// Errors: `NotFound` (cwd or program missing), `PermissionDenied` (cwd not a
/// directory, program not executable), and the daemon's errors.
pub(crate) async fn launch(
    ctx: Arc<ExecContext>,
    operation: &'static str,
    request: RunnerCommandRequest,
    stdin: Option<Vec<u8>>,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let id = request.command_id.clone();
    let run_as = ctx.run_as(operation, &request).await?;
    let cwd = ctx.cwd(&request);
    let pid_file = format!("{}/{}.pgid", ctx.state_dir, uuid::Uuid::new_v4().simple());
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        WRAPPER.to_string(),
        pid_file.clone(),
        cwd.display().to_string(),
        request.program.clone(),
    ];
    cmd.extend(request.args.iter().cloned());
    // The mark comes last: Docker lets a later variable replace an earlier one.
    // Another user's HOME, USER and LOGNAME replace the destination's, and
    // the request's own variables replace them.
    let mark = format!("{}{}", ctx.session_mark(), uuid::Uuid::new_v4().simple());
    let env: Vec<String> = ctx
        .env
        .iter()
        .cloned()
        .chain(run_as.env)
        .chain(request.effective_env())
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once(mark.clone()))
        .collect();
    let attach_stdin = stdin.is_some() || request.keep_stdin_open;
    let started = ctx
        .start(operation, cmd, env, run_as.exec_user.clone(), attach_stdin)
        .await
        .map_err(|e| e.context(format!("command {id:?}")))?;
    let Started {
        id: exec_id,
        mut output,
        input,
    } = started;

    // Wait for the wrapper's go-ahead; anything before it is the wrapper's.
    let mut head = Vec::new();
    let mut early_stderr = Vec::new();
    let started = loop {
        match output.next().await {
            Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                head.extend_from_slice(&message);
                if head.len() >= STARTED.len() {
                    break head.starts_with(STARTED);
                }
            }
            Some(Ok(LogOutput::StdErr { message })) => early_stderr.extend_from_slice(&message),
            Some(Ok(LogOutput::StdIn { .. })) => {}
            Some(Err(e)) => {
                return Err(ctx
                    .daemon
                    .error(operation, &ctx.subject(), e)
                    .context(format!("command {id:?}")));
            }
            None => break false,
        }
    };
    if !started {
        let code = ctx.exit_code(operation, &exec_id).await?;
        let cwd = cwd.display();
        let program = &request.program;
        let stderr = String::from_utf8_lossy(&early_stderr);
        return Err(match code {
            CWD_MISSING => {
                RunnerError::not_found(format!("{operation} {id:?}: cwd {cwd} does not exist"))
            }
            CWD_NOT_A_DIRECTORY => RunnerError::permission_denied(format!(
                "{operation} {id:?}: cwd {cwd} is not a directory this user can enter"
            )),
            PROGRAM_MISSING => {
                RunnerError::not_found(format!("{operation} {id:?}: program {program:?} not found"))
            }
            PROGRAM_NOT_EXECUTABLE => RunnerError::permission_denied(format!(
                "{operation} {id:?}: program {program:?} is not an executable file"
            )),
            126 | 127 => RunnerError::not_found(format!(
                "{operation} {id:?}: the container has no usable /bin/sh or sh (exit {code}): \
                 {stderr}"
            )),
            _ => RunnerError::provider(format!(
                "{operation} {id:?}: the command wrapper failed with exit {code}: {stderr}"
            )),
        });
    }
    if head.len() > STARTED.len() {
        sink.push(RunnerOutputStream::Stdout, &head[STARTED.len()..]);
    }
    if !early_stderr.is_empty() {
        sink.push(RunnerOutputStream::Stderr, &early_stderr);
    }

    // Without stdin attached the exec's writer leads nowhere: drop it.
    let stdin = StdinPipe::start(
        attach_stdin.then_some(input),
        stdin,
        request.keep_stdin_open,
    );
    let control = Arc::new(ExecControl {
        ctx: ctx.clone(),
        pid_file,
        mark,
        user: run_as.exec_user,
        command_id: id,
        stdin: stdin.clone(),
    });
    let exit = async move {
        let mut failed = None;
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    sink.push(RunnerOutputStream::Stdout, &message)
                }
                Ok(LogOutput::StdErr { message }) => {
                    sink.push(RunnerOutputStream::Stderr, &message)
                }
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The exec's stream ended with the command: nothing reads its stdin.
        stdin.release();
        if let Some(e) = failed {
            return Err(ctx.daemon.error("command output", &ctx.subject(), e));
        }
        let code = ctx.exit_code("command exit", &exec_id).await?;
        Ok(RawExit::from_shell_status(code))
    };
    Ok(SpawnedProcess {
        pid: None,
        control,
        exit: Box::pin(exit),
    })
}

/// Signals and stdin of one command.
struct ExecControl {
    ctx: Arc<ExecContext>,
    pid_file: String,
    /// `MARK_VAR=<value>` of this command.
    mark: String,
    /// Docker's exec user of the command, which its signals are sent as.
    user: Option<String>,
    /// The command, for stdin errors.
    command_id: RunnerCommandId,
    stdin: StdinPipe,
}

#[async_trait]
impl ProcessControl for ExecControl {
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        self.ctx
            .signal_marked(
                "signal_command",
                &self.mark,
                &self.pid_file,
                signal,
                self.user.clone(),
            )
            .await
    }

    async fn write_stdin(&self, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        self.stdin.write(&self.command_id, bytes, close).await
    }
}

/// The absolute path of `path` in the container: relative paths resolve under
/// `workspace`.
pub(crate) fn absolute(workspace: &Path, path: &Path) -> PathBuf {
    runner_api::normalize_lexically(&workspace.join(path))
}
