//! Lifecycle: one session's agent daemon, `runner-agent serve --socket …`
//! started as a local child process, and the transport that reaches it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use runner_agent::cli::ServeStatus;
use runner_agent::protocol::WireError;
use runner_agent::{AgentConnector, command_connector};
use runner_api::{
    RunnerDestination, RunnerError, RunnerErrorKind, RunnerResult, RunnerSessionState,
};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStdin, Command};

use crate::config::AgentConfig;

/// How long the agent may take to open (or restore) its session and print
/// its status line.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long a daemon whose session was closed may take to exit before it is
/// killed.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// A running agent daemon. Its stdin is a lifeline (`--exit-on-stdin-eof`):
/// when this process goes, or drops the daemon without [`stop`](Self::stop),
/// the agent closes its session (every process of it ends) and exits.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    lifeline: Option<ChildStdin>,
    binary: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `binary serve --socket <run_dir>/<uuid>/agent.sock` for
    /// `destination` (restoring `resume` when given) and waits until it
    /// says it is ready.
    ///
    /// Errors: `NotFound` (no such binary), the agent's own error when it
    /// could not open the session (`InvalidRequest` for a bad `session`
    /// config, `NotFound` for a missing snapshot, …), `Timeout` when it
    /// does not answer, `Unavailable` when it exits without a status.
    pub(crate) async fn start(
        operation: &str,
        binary: &Path,
        config: &AgentConfig,
        destination: &RunnerDestination,
        resume: Option<&RunnerSessionState>,
    ) -> RunnerResult<Self> {
        let dir = config
            .run_dir
            .join(uuid::Uuid::new_v4().simple().to_string());
        let socket = dir.join("agent.sock");
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| RunnerError::from_io(operation, config.run_dir.display(), e))?;
        let encode = |what: &str, value: serde_json::Result<String>| {
            value.map_err(|e| {
                RunnerError::provider(format!("{operation}: encoding the {what}: {e}"))
            })
        };
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(config.session.to_string())
            .arg("--destination-id")
            .arg(&destination.id)
            .arg("--manifest")
            .arg(encode(
                "manifest",
                serde_json::to_string(&destination.default_manifest),
            )?)
            .arg("--exit-on-stdin-eof");
        if let Some(state) = resume {
            command
                .arg("--resume")
                .arg(encode("state", serde_json::to_string(state))?);
        }
        // Nothing of this process's environment but the allow-list reaches
        // the agent (and so the commands): no token or key of the embedder.
        command
            .env_clear()
            .envs(runner_api::inherited_host_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .map_err(|e| RunnerError::from_io(operation, binary.display(), e))?;
        let lifeline = child.stdin.take();
        let stdout = child.stdout.take();
        let mut daemon = Self {
            child,
            lifeline,
            binary: binary.to_path_buf(),
            dir,
            socket,
        };
        let status = match stdout {
            Some(stdout) => {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                match tokio::time::timeout(READY_WITHIN, lines.next_line()).await {
                    Ok(Ok(Some(line))) => serde_json::from_str::<ServeStatus>(&line).map_err(|e| {
                        RunnerError::provider(format!(
                            "{operation}: the agent's status line {line:?}: {e}"
                        ))
                    }),
                    Ok(Ok(None)) | Ok(Err(_)) => Err(RunnerError::new(
                        RunnerErrorKind::Unavailable,
                        format!("{operation}: the agent exited without a status line"),
                    )),
                    Err(_) => Err(RunnerError::new(
                        RunnerErrorKind::Timeout,
                        format!(
                            "{operation}: the agent did not say it was ready within {} s",
                            READY_WITHIN.as_secs()
                        ),
                    )),
                }
            }
            None => Err(RunnerError::provider(format!(
                "{operation}: the agent's stdout was not piped"
            ))),
        };
        match status {
            Ok(ServeStatus::Ready { .. }) => Ok(daemon),
            Ok(ServeStatus::Failed { kind, message }) => {
                daemon.stop().await;
                Err(WireError { kind, message }.into())
            }
            Err(e) => {
                daemon.stop().await;
                Err(e)
            }
        }
    }

    /// The transport: every connection is a `runner-agent connect --socket`
    /// child bridging its stdio to the daemon's socket. For a real sandbox
    /// this command is the one line to change: the same `connect` run
    /// through the sandbox's exec (`docker exec -i`, `ssh`, a pod exec) or
    /// any other byte stream to it.
    pub(crate) fn connector(&self) -> impl AgentConnector {
        let binary = self.binary.clone();
        let socket = self.socket.clone();
        command_connector(move || {
            let mut command = Command::new(&binary);
            command
                .arg("connect")
                .arg("--socket")
                .arg(&socket)
                .env_clear()
                .stderr(Stdio::inherit());
            command
        })
    }

    /// Ends the daemon: the lifeline is closed (an agent whose session is
    /// still open closes it), the agent gets [`EXIT_WITHIN`] to exit and is
    /// killed after it; then its socket directory is removed.
    pub(crate) async fn stop(&mut self) {
        self.lifeline.take();
        if tokio::time::timeout(EXIT_WITHIN, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                socket = %self.socket.display(),
                "the agent did not exit within {} s of its session's close; killing it",
                EXIT_WITHIN.as_secs()
            );
            let _ = self.child.kill().await;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %self.dir.display(),
                error = %e,
                "removing the agent's socket directory failed"
            ),
        }
    }
}
