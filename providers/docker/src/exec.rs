//! Commands through the exec API: a small `sh` wrapper checks the cwd and the
//! program, records the command's process group, and execs the program, so
//! stdout and stderr stay apart and the exit code is the program's own.
//!
//! Every exec is a session and process-group leader in the container (runc
//! starts it with `setsid`), so the whole tree of a command is one process
//! group. Docker cannot kill an exec; signals go through a second short exec,
//! `kill -s SIG -PGID`, with the group id read from the file the wrapper wrote.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use runner_api::{
    OutputSink, ProcessControl, RawExit, RunnerCommandId, RunnerCommandRequest, RunnerError,
    RunnerErrorKind, RunnerOutputStream, RunnerResult, RunnerSignal, SpawnedProcess, StdinPipe,
};
use tokio::io::AsyncWrite;

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

/// `$1` is the group-id file, `$2` the signal name. Waits briefly for a command
/// that is still starting to write its group id.
const SIGNAL: &str = r#"
i=0
while [ ! -s "$1" ]; do
  i=$((i+1))
  [ $i -gt 50 ] && exit 0
  sleep 0.1
done
read g < "$1"
kill -s "$2" "-$g" 2>/dev/null
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
    /// Numeric uid and gid of `user`, for files unpacked from archives
    /// (unset: root).
    pub(crate) owner: std::sync::OnceLock<(u64, u64)>,
}

/// What a short helper script printed and how it ended.
pub(crate) struct ScriptOutput {
    pub(crate) code: i64,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// A started exec: its id, output and (when attached) stdin.
struct Started {
    id: String,
    output: Output,
    input: Input,
}

impl ExecContext {
    /// The uid and gid files written through the archive API get.
    pub(crate) fn file_owner(&self) -> (u64, u64) {
        self.owner.get().copied().unwrap_or((0, 0))
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

    fn subject(&self) -> String {
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
    async fn exit_code(&self, operation: &str, exec_id: &str) -> RunnerResult<i64> {
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

    async fn run_script(
        &self,
        operation: &str,
        script: &str,
        args: &[&str],
        user: Option<String>,
    ) -> RunnerResult<ScriptOutput> {
        let mut cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        cmd.push("sh".to_string());
        cmd.extend(args.iter().map(|a| a.to_string()));
        let mut started = self.start(operation, cmd, Vec::new(), user, false).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(item) = started.output.next().await {
            match item.map_err(|e| self.daemon.error(operation, &self.subject(), e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.extend_from_slice(&message)
                }
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let code = self.exit_code(operation, &started.id).await?;
        Ok(ScriptOutput {
            code,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }

    fn cwd(&self, request: &RunnerCommandRequest) -> PathBuf {
        match &request.cwd {
            Some(cwd) if cwd.is_absolute() => cwd.clone(),
            Some(cwd) => self.workspace.join(cwd),
            None => self.workspace.clone(),
        }
    }
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
    let env: Vec<String> = ctx
        .env
        .iter()
        .cloned()
        .chain(request.effective_env())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let attach_stdin = stdin.is_some() || request.keep_stdin_open;
    let started = ctx
        .start(operation, cmd, env, ctx.user.clone(), attach_stdin)
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
    /// The command, for stdin errors.
    command_id: RunnerCommandId,
    stdin: StdinPipe,
}

#[async_trait]
impl ProcessControl for ExecControl {
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        let result = self
            .ctx
            .script("signal_command", SIGNAL, &[&self.pid_file, signal.name()])
            .await;
        match result {
            Ok(_) => Ok(()),
            // The container is gone or stopped: so is the group.
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

    async fn write_stdin(&self, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        self.stdin.write(&self.command_id, bytes, close).await
    }
}

/// The absolute path of `path` in the container: relative paths resolve under
/// `workspace`.
pub(crate) fn absolute(workspace: &Path, path: &Path) -> PathBuf {
    runner_api::normalize_lexically(&workspace.join(path))
}
