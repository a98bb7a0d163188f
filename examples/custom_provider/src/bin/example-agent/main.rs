//! `example-agent --workspace DIR`: the runner side of the example provider.
//!
//! Reads [`Request`]s line by line from stdin, runs them in `DIR` (created if
//! missing), and writes [`Message`]s line by line to stdout. Each request runs
//! in its own task, so commands run concurrently. On `shutdown` it kills every
//! process below it, removes `DIR`, answers and exits; when stdin ends without
//! a shutdown (the provider went away) it kills every process below it and
//! exits, leaving `DIR`.
//!
//! Process trees: the agent is a child subreaper (see [`tree`]), so a process
//! that leaves its command's group with `setsid` is adopted by the agent when
//! its parent exits, and signals, timeouts, cancellation and shutdown still
//! reach it. The agent reaps the orphans it adopts; tokio reaps the commands.
//!
//! Environment: commands get the agent's environment, which the provider
//! limited to [`runner_api::inherited_host_env`], plus the request's `env`.
//!
//! This is the shape of an agent inside a VM or a remote sandbox: the provider
//! would reach it over a socket instead of a child's pipes.

mod exec;
mod files;
mod tree;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use runner_example_custom_provider::protocol::{AgentError, Answer, Message, Op, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Messages queued for stdout; a full queue slows the command output readers
/// down, so memory stays bounded when the provider reads slowly.
const OUTBOX: usize = 64;

/// What every request handler shares.
struct Agent {
    /// The workspace, absolute and canonical.
    root: PathBuf,
    /// Lines to write to stdout.
    outbox: mpsc::Sender<Message>,
    /// Kept after a command exits: a TERM'd tree may still hold processes to
    /// KILL. Locked while spawning, signalling and reaping.
    commands: Mutex<exec::Commands>,
}

impl Agent {
    fn commands(&self) -> MutexGuard<'_, exec::Commands> {
        self.commands.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` resolved against the workspace when relative.
    fn resolve(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    async fn send(&self, message: Message) {
        // The writer only stops when stdout is gone; nobody is listening then.
        let _ = self.outbox.send(message).await;
    }

    async fn reply(&self, id: u64, result: Result<Answer, AgentError>) {
        self.send(Message::Reply { id, result }).await;
    }

    /// Runs one request; `spawn` replies itself, before its output starts.
    async fn handle(self: Arc<Self>, request: Request) {
        let id = request.id;
        let result = match request.op {
            Op::Spawn {
                program,
                args,
                cwd,
                env,
            } => {
                let spawned = exec::spawn(&self, id, &program, &args, cwd.as_deref(), &env);
                match spawned {
                    Ok(child) => return exec::supervise(self, id, child).await,
                    Err(e) => Err(e),
                }
            }
            Op::Signal { process, signal } => exec::signal(&self, process, signal),
            Op::Shutdown => Ok(Answer::Done),
            op => {
                let agent = self.clone();
                tokio::task::spawn_blocking(move || files::handle(&agent, op))
                    .await
                    .unwrap_or_else(|e| Err(error(Errno::EIO, format!("file task failed: {e}"))))
            }
        };
        self.reply(id, result).await;
    }

    /// Kills every process below the agent: all commands and all they left.
    /// Holds the command table, so nothing is spawned meanwhile.
    fn kill_all(&self) {
        let _commands = self.commands();
        let me = BTreeSet::from([std::process::id() as i32]);
        tree::signal_tree(Signal::SIGKILL, |procs, _| tree::below(procs, &me));
    }

    /// Reaps the exited orphans the agent adopted; its commands' own pids
    /// are left to tokio, which waits for each of them by pid.
    fn reap_adopted(&self) {
        let commands = self.commands();
        let tokio_owned = exec::running_pids(&commands);
        let me = std::process::id() as i32;
        for p in tree::processes() {
            if p.ppid == me && p.zombie && !tokio_owned.contains(&p.pid) {
                let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// An [`AgentError`] with errno `code`.
fn error(code: Errno, message: impl Into<String>) -> AgentError {
    AgentError {
        code: format!("{code:?}"),
        message: message.into(),
    }
}

/// An [`AgentError`] from an I/O error of `operation` on `path`, with its errno.
fn io_error(operation: &str, path: &Path, e: io::Error) -> AgentError {
    let code = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
    error(code, format!("{operation} {}: {e}", path.display()))
}

fn workspace_arg() -> Result<PathBuf, String> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--workspace" => Ok(PathBuf::from(dir)),
        _ => Err("usage: example-agent --workspace DIR".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = workspace_arg().and_then(|dir| {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("becoming a child subreaper: {e}"))?;
        std::fs::create_dir_all(&dir)
            .and_then(|()| dir.canonicalize())
            .map_err(|e| format!("creating the workspace {}: {e}", dir.display()))
    });
    let root = match started {
        Ok(root) => root,
        Err(message) => {
            eprintln!("example-agent: {message}");
            return ExitCode::from(2);
        }
    };
    let (outbox, mut queued) = mpsc::channel::<Message>(OUTBOX);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(message) = queued.recv().await {
            let Ok(mut line) = serde_json::to_vec(&message) else {
                continue;
            };
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let agent = Arc::new(Agent {
        root,
        outbox,
        commands: Mutex::default(),
    });
    let reaper = match signal(SignalKind::child()) {
        Ok(mut exits) => {
            let agent = agent.clone();
            tokio::spawn(async move {
                while exits.recv().await.is_some() {
                    agent.reap_adopted();
                }
            })
        }
        Err(e) => {
            eprintln!("example-agent: listening for SIGCHLD: {e}");
            return ExitCode::from(2);
        }
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => {
                eprintln!("example-agent: ignoring a malformed request: {e}");
                continue;
            }
        };
        if request.op == Op::Shutdown {
            agent.kill_all();
            let removed = std::fs::remove_dir_all(&agent.root)
                .map_err(|e| io_error("removing the workspace", &agent.root, e));
            agent
                .reply(request.id, removed.map(|()| Answer::Done))
                .await;
            break;
        }
        tokio::spawn(agent.clone().handle(request));
    }
    agent.kill_all();
    reaper.abort();
    drop(agent);
    let _ = writer.await;
    ExitCode::SUCCESS
}
