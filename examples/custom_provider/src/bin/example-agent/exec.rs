//! Commands: spawn in a new process group, stream output, report the exit,
//! signal the command's whole process tree.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use runner_api::RunnerOutputStream;
use runner_example_custom_provider::protocol::{AgentError, Answer, Message};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

use crate::tree::{Proc, below, signal_tree};
use crate::{Agent, error, io_error};

/// Size of the buffers output is read with (one `output` message each at most).
const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading output after the command exited: a background
/// grandchild that inherited the pipes would keep them open forever.
const READER_GRACE: Duration = Duration::from_millis(250);

/// A command the agent started.
pub(crate) struct Command {
    /// Its pid, also its process group id.
    pid: i32,
    /// Until tokio has reaped it: only then may its pid name another process.
    running: bool,
    /// The processes of its tree the last signal reached. Those that left the
    /// group and lost their parent are now the agent's children (it is a
    /// subreaper): this is how later signals still find them.
    tree: BTreeSet<i32>,
}

/// Every command started, by spawn request id.
pub(crate) type Commands = HashMap<u64, Command>;

/// The pids tokio still waits for: the agent's children that are commands,
/// not adopted orphans.
pub(crate) fn running_pids(commands: &Commands) -> BTreeSet<i32> {
    commands
        .values()
        .filter(|c| c.running)
        .map(|c| c.pid)
        .collect()
}

/// Starts a command in its own process group and remembers it.
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
    // Locked across the spawn: the reaper must not take the new pid for an orphan.
    let mut commands = agent.commands();
    // The agent's own environment is the embedding process's allow-list
    // (the provider cleared the rest); the request's variables come on top.
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
        let pid = pid as i32;
        let tree = BTreeSet::new();
        let running = true;
        commands.insert(id, Command { pid, running, tree });
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
    if let Some(command) = agent.commands().get_mut(&id) {
        command.running = false;
    }
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

/// Sends signal number `signal` to the tree of spawn request `process`: its
/// process group, every descendant of its pid, and what earlier signals
/// reached that the agent has since adopted, with their descendants.
///
/// Errors: `ESRCH` (never spawned here), `EINVAL` (unknown signal number).
pub(crate) fn signal(agent: &Agent, process: u64, signal: i32) -> Result<Answer, AgentError> {
    let signal = Signal::try_from(signal)
        .map_err(|_| error(Errno::EINVAL, format!("signal: unknown signal {signal}")))?;
    let mut commands = agent.commands();
    let Some(command) = commands.get(&process) else {
        return Err(error(
            Errno::ESRCH,
            format!("signal: no process {process} was started"),
        ));
    };
    let (pid, running, recorded) = (command.pid, command.running, command.tree.clone());
    let me = std::process::id() as i32;
    let tokio_owned = running_pids(&commands);
    let tree = signal_tree(signal, |procs: &[Proc], signalled| {
        // Once tokio reaped the leader, its pid and group id may be reused.
        let roots: BTreeSet<i32> = procs
            .iter()
            .filter(|p| {
                let member = running && (p.pid == pid || p.pgrp == pid);
                let known = recorded.contains(&p.pid) || signalled.contains(&p.pid);
                let adopted = p.ppid == me && !tokio_owned.contains(&p.pid);
                member || (known && adopted)
            })
            .map(|p| p.pid)
            .collect();
        let mut tree = below(procs, &roots);
        tree.extend(roots);
        tree
    });
    if let Some(command) = commands.get_mut(&process) {
        command.tree = tree;
    }
    Ok(Answer::Done)
}
