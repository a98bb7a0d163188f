//! `runner-agent --workspace DIR`: the runner side of the example provider.
//!
//! Reads [`Request`]s line by line from stdin, runs them in `DIR` (created if
//! missing), and writes [`Message`]s line by line to stdout. Each request runs
//! in its own task, so commands run concurrently. On `shutdown` it kills every
//! process group it started, removes `DIR`, answers and exits; when stdin ends
//! without a shutdown (the provider went away) it kills its process groups and
//! exits, leaving `DIR`.
//!
//! This is the shape of an agent inside a VM or a remote sandbox: the provider
//! would reach it over a socket instead of a child's pipes.

mod exec;
mod files;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use runner_example_custom_provider::protocol::{AgentError, Answer, Message, Op, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
    /// Process group of every command started, by spawn request id. Kept after
    /// the leader exits: a TERM'd group may still hold children to KILL.
    groups: Mutex<HashMap<u64, i32>>,
}

impl Agent {
    fn groups(&self) -> MutexGuard<'_, HashMap<u64, i32>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Kills every process group this agent started.
    fn kill_all(&self) {
        for pgid in self.groups().values() {
            exec::kill_group(*pgid, nix::sys::signal::Signal::SIGKILL);
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
        _ => Err("usage: runner-agent --workspace DIR".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let root = match workspace_arg().and_then(|dir| {
        std::fs::create_dir_all(&dir)
            .and_then(|()| dir.canonicalize())
            .map_err(|e| format!("creating the workspace {}: {e}", dir.display()))
    }) {
        Ok(root) => root,
        Err(message) => {
            eprintln!("runner-agent: {message}");
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
        groups: Mutex::default(),
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => {
                eprintln!("runner-agent: ignoring a malformed request: {e}");
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
    drop(agent);
    let _ = writer.await;
    ExitCode::SUCCESS
}
