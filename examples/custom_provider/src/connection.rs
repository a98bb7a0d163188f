//! One running agent: requests out, replies and command output in.
//!
//! A reader task reads the agent's stdout line by line and routes each message:
//! a reply to the caller waiting for its id, output into the command's
//! [`OutputSink`], an exit to the command's exit future. When the agent goes
//! away every waiter gets a transport failure.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runner_kit::{OutputSink, RawExit};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::oneshot;

use crate::error::Failure;
use crate::protocol::{Answer, Message, Op, Request};

type Reply = Result<Answer, Failure>;

/// A command the agent runs: where its output and its exit go.
struct Process {
    sink: OutputSink,
    exit: oneshot::Sender<RawExit>,
}

#[derive(Default)]
struct Routes {
    /// Callers waiting for a reply, by request id.
    replies: HashMap<u64, oneshot::Sender<Reply>>,
    /// Running commands, by the id of their spawn request.
    processes: HashMap<u64, Process>,
    /// Set once the agent's stdout closed: nothing will be routed any more.
    gone: bool,
}

/// The pipes to one agent process.
pub(crate) struct Connection {
    stdin: tokio::sync::Mutex<ChildStdin>,
    child: tokio::sync::Mutex<Child>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Starts `program --workspace <workspace>` with an environment of
    /// [`runner_api::inherited_host_env`] only: the agent's commands inherit
    /// it, and nothing else of the embedding process (tokens, keys) reaches them.
    pub(crate) fn start(program: &Path, workspace: &Path) -> std::io::Result<Self> {
        let mut child = tokio::process::Command::new(program)
            .arg("--workspace")
            .arg(workspace)
            .env_clear()
            .envs(runner_api::inherited_host_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("the agent's pipes are missing"));
        };
        let routes = Arc::new(Mutex::new(Routes::default()));
        tokio::spawn(read_messages(stdout, routes.clone()));
        Ok(Self {
            stdin: tokio::sync::Mutex::new(stdin),
            child: tokio::sync::Mutex::new(child),
            routes,
            next_id: AtomicU64::new(1),
        })
    }

    /// Sends `op` and waits for its reply.
    pub(crate) async fn call(&self, op: Op) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.call_with_id(id, op).await
    }

    /// Sends a spawn `op` with its output routed into `sink`; returns the
    /// process handle (the request id), the pid and a receiver of the exit.
    pub(crate) async fn spawn(
        &self,
        op: Op,
        sink: OutputSink,
    ) -> Result<(u64, u32, oneshot::Receiver<RawExit>), Failure> {
        let handle = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The route exists before the request goes out: output may arrive
        // right behind the reply.
        let (exit, exited) = oneshot::channel();
        lock(&self.routes)
            .processes
            .insert(handle, Process { sink, exit });
        let failure = match self.call_with_id(handle, op).await {
            Ok(Answer::Spawned { pid }) => return Ok((handle, pid, exited)),
            Ok(other) => Failure::Protocol(format!("expected spawned, got {other:?}")),
            Err(failure) => failure,
        };
        lock(&self.routes).processes.remove(&handle);
        Err(failure)
    }

    async fn call_with_id(&self, id: u64, op: Op) -> Reply {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if routes.gone {
                return Err(Failure::Transport("the agent has exited".into()));
            }
            routes.replies.insert(id, tx);
        }
        if let Err(failure) = self.send(&Request { id, op }).await {
            lock(&self.routes).replies.remove(&id);
            return Err(failure);
        }
        rx.await
            .unwrap_or_else(|_| Err(Failure::Transport("the agent exited".into())))
    }

    async fn send(&self, request: &Request) -> Result<(), Failure> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| Failure::Protocol(format!("encoding the request: {e}")))?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(&line)
            .await
            .map_err(|e| Failure::Transport(format!("writing to the agent: {e}")))
    }

    /// Sends `shutdown` and waits for the agent to exit; kills it when it does
    /// not exit within `limit`. An agent that is gone already is done.
    pub(crate) async fn shutdown(&self, limit: Duration) -> Reply {
        let gone = lock(&self.routes).gone;
        let reply = if gone {
            Ok(Answer::Done)
        } else {
            tokio::time::timeout(limit, self.call(Op::Shutdown))
                .await
                .unwrap_or_else(|_| Err(Failure::Transport("shutdown was not answered".into())))
        };
        let mut child = self.child.lock().await;
        if tokio::time::timeout(limit, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        reply
    }
}

/// Routes every message of the agent until its stdout closes.
async fn read_messages(stdout: ChildStdout, routes: Arc<Mutex<Routes>>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let message: Message = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed line from the runner agent");
                continue;
            }
        };
        let mut routes = lock(&routes);
        match message {
            Message::Reply { id, result } => {
                if let Some(waiter) = routes.replies.remove(&id) {
                    let _ = waiter.send(result.map_err(Failure::Agent));
                }
            }
            Message::Output {
                process,
                stream,
                bytes,
            } => {
                if let Some(p) = routes.processes.get(&process) {
                    p.sink.push(stream, &bytes);
                }
            }
            Message::Exited {
                process,
                exit_code,
                signal,
            } => {
                if let Some(p) = routes.processes.remove(&process) {
                    let _ = p.exit.send(RawExit { exit_code, signal });
                }
            }
        }
    }
    // Dropping the senders wakes every waiter with a transport failure.
    let mut routes = lock(&routes);
    routes.gone = true;
    routes.replies.clear();
    routes.processes.clear();
}
