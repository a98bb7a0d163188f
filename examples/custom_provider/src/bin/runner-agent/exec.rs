//! Commands: spawn in a new process group, stream output, report the exit,
//! signal the group.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_api::RunnerOutputStream;
use runner_example_custom_provider::protocol::{AgentError, Answer, Message};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

use crate::{Agent, error, io_error};

/// Size of the buffers output is read with (one `output` message each at most).
const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading output after the command exited: a background
/// grandchild that inherited the pipes would keep them open forever.
const READER_GRACE: Duration = Duration::from_millis(250);

/// Starts a command in its own process group and remembers the group.
///
/// Errors: `ENOENT`/`ENOTDIR` for a bad cwd (checked first, so it is told apart
/// from a missing program), the spawn's errno otherwise.
pub(crate) fn spawn(
    agent: &Agent,
    id: u64,
    program: &str,
    args: &[String],
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> Result<Child, AgentError> {
    let cwd = agent.resolve(cwd.unwrap_or(Path::new(".")));
    match std::fs::metadata(&cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(error(
                Errno::ENOTDIR,
                format!("spawn: cwd {} is not a directory", cwd.display()),
            ));
        }
        Err(e) => return Err(io_error("spawn: cwd", &cwd, e)),
    }
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_error("spawn: program", Path::new(program), e))?;
    if let Some(pid) = child.id() {
        agent.groups().insert(id, pid as i32);
    }
    Ok(child)
}

/// Answers `spawned`, streams the command's output, and reports its exit.
pub(crate) async fn supervise(agent: Arc<Agent>, id: u64, mut child: Child) {
    let pid = child.id().unwrap_or_default();
    agent.reply(id, Ok(Answer::Spawned { pid })).await;
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            agent.clone(),
            id,
            out,
            RunnerOutputStream::Stdout,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            agent.clone(),
            id,
            err,
            RunnerOutputStream::Stderr,
        )));
    }
    let status = child.wait().await;
    let aborts: Vec<_> = readers.iter().map(|r| r.abort_handle()).collect();
    let drained = tokio::time::timeout(READER_GRACE, async {
        for reader in readers {
            let _ = reader.await;
        }
    });
    if drained.await.is_err() {
        aborts.iter().for_each(|a| a.abort());
    }
    let (exit_code, signal) = match status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (None, None),
    };
    agent
        .send(Message::Exited {
            process: id,
            exit_code,
            signal,
        })
        .await;
}

async fn pump(
    agent: Arc<Agent>,
    process: u64,
    mut pipe: impl AsyncRead + Unpin,
    stream: RunnerOutputStream,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let bytes = buf[..n].to_vec();
        agent
            .send(Message::Output {
                process,
                stream,
                bytes,
            })
            .await;
    }
}

/// Sends signal number `signal` to the group of spawn request `process`.
///
/// Errors: `ESRCH` (never spawned here), `EINVAL` (unknown signal number).
pub(crate) fn signal(agent: &Agent, process: u64, signal: i32) -> Result<Answer, AgentError> {
    let pgid = agent.groups().get(&process).copied().ok_or_else(|| {
        error(
            Errno::ESRCH,
            format!("signal: no process {process} was started"),
        )
    })?;
    let signal = Signal::try_from(signal)
        .map_err(|_| error(Errno::EINVAL, format!("signal: unknown signal {signal}")))?;
    kill_group(pgid, signal);
    Ok(Answer::Done)
}

/// Signals a process group; a group that is gone already is fine.
pub(crate) fn kill_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}
