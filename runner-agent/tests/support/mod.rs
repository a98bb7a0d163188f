//! Agents as real child processes: `runner-agent serve --socket` daemons in a
//! temporary directory, reached through `runner-agent connect` children.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runner_agent::cli::ServeStatus;
use runner_agent::protocol::WireError;
use runner_agent::{AgentConnection, AgentConnector, AgentSession, ChildStream};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerResult, RunnerSessionState, RunnerSweepReport,
};
use runner_kit::KnownDestinations;
use runner_local::LocalProvider;
use tokio::io::AsyncBufReadExt;
use tokio::process::{ChildStdin, Command};

/// The agent binary cargo built for these tests.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runner-agent"))
}

/// A unix-local destination `id` whose workspace is the directory `root`.
pub fn root_destination(id: &str, root: &Path) -> RunnerDestination {
    RunnerDestination {
        id: id.into(),
        provider_id: "unix-local".into(),
        config: serde_json::json!({ "root": root }),
        default_manifest: Default::default(),
        artifacts: None,
    }
}

/// A running agent daemon.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Its socket.
    pub socket: PathBuf,
    /// Its process id.
    pub pid: u32,
    /// The id of the session it serves.
    pub session_id: String,
}

/// Starts agent daemons, each tied to this launcher by its stdin
/// (`--exit-on-stdin-eof`): when the launcher goes, its agents close their
/// sessions and exit.
pub struct Launcher {
    dir: tempfile::TempDir,
    next: AtomicU64,
    lifelines: Mutex<Vec<ChildStdin>>,
    /// Whether each agent gets `--stage-dir` (beside its socket).
    staging: bool,
}

impl Launcher {
    /// A launcher with sockets under a fresh temporary directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory for agent sockets"),
            next: AtomicU64::new(1),
            lifelines: Mutex::default(),
            staging: false,
        }
    }

    /// A launcher whose agents stage bulk transfers in `stage/` beside
    /// their sockets.
    pub fn staging() -> Self {
        Self {
            staging: true,
            ..Self::new()
        }
    }

    /// The staging root of the agent whose socket is `socket`.
    pub fn stage_dir(socket: &Path) -> PathBuf {
        socket.with_file_name("stage")
    }

    /// Starts `runner-agent serve` for `destination` (resuming `resume` when
    /// given) and waits for its status line.
    ///
    /// Errors: the error the agent reported (kind and message as it sent them).
    pub async fn launch(
        &self,
        destination: &RunnerDestination,
        resume: Option<&RunnerSessionState>,
    ) -> RunnerResult<Agent> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let socket = self
            .dir
            .path()
            .join(format!("agent-{n}"))
            .join("agent.sock");
        let mut command = Command::new(agent_bin());
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(destination.config.to_string())
            .arg("--destination-id")
            .arg(&destination.id)
            .arg("--manifest")
            .arg(serde_json::to_string(&destination.default_manifest).expect("manifest json"))
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if self.staging {
            command.arg("--stage-dir").arg(Self::stage_dir(&socket));
        }
        if let Some(state) = resume {
            command
                .arg("--resume")
                .arg(serde_json::to_string(state).expect("state json"));
        }
        let mut child = command
            .spawn()
            .map_err(|e| RunnerError::provider(format!("spawning runner-agent serve: {e}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id().unwrap_or_default();
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .map_err(|e| RunnerError::provider(format!("reading the agent's status: {e}")))?
            .ok_or_else(|| RunnerError::provider("the agent exited without a status line"))?;
        let status: ServeStatus = serde_json::from_str(&line)
            .map_err(|e| RunnerError::provider(format!("agent status {line:?}: {e}")))?;
        match status {
            ServeStatus::Ready { session_id, .. } => {
                self.lifelines.lock().unwrap().push(stdin);
                Ok(Agent {
                    socket,
                    pid,
                    session_id,
                })
            }
            ServeStatus::Failed { kind, message } => Err(WireError { kind, message }.into()),
        }
    }
}

/// The process ids of the `connect` children a connector spawned, newest last.
pub type ConnectPids = Arc<Mutex<Vec<u32>>>;

/// A connector that spawns `runner-agent connect --socket SOCKET` for each
/// connection and speaks over its stdio, recording each child's pid.
pub fn connector(socket: &Path, pids: ConnectPids) -> impl AgentConnector {
    let socket = socket.to_path_buf();
    move || {
        let mut command = Command::new(agent_bin());
        command.arg("connect").arg("--socket").arg(&socket);
        let spawned = ChildStream::spawn(&mut command);
        if let Ok(stream) = &spawned {
            pids.lock().unwrap().push(stream.id().unwrap_or_default());
        }
        async move { spawned.map(|stream| Box::new(stream) as AgentConnection) }
    }
}

/// A session of `agent` through `connect` children.
pub async fn connect(agent: &Agent, pids: ConnectPids) -> RunnerResult<AgentSession> {
    AgentSession::connect(connector(&agent.socket, pids)).await
}

/// unix-local with every session served by an agent child process: what the
/// conformance run and the process tests use. Its sessions are bare
/// [`AgentSession`]s.
pub struct AgentProvider {
    local: LocalProvider,
    launcher: Launcher,
    destinations: KnownDestinations,
    /// Every `connect` child spawned, newest last.
    pub connects: ConnectPids,
    /// The socket of each session's agent, by session id.
    pub sockets: Arc<Mutex<std::collections::HashMap<String, PathBuf>>>,
}

impl AgentProvider {
    /// A provider with a fresh launcher.
    pub fn new() -> Self {
        Self {
            local: LocalProvider::default(),
            launcher: Launcher::new(),
            destinations: KnownDestinations::default(),
            connects: ConnectPids::default(),
            sockets: Arc::default(),
        }
    }

    async fn open(
        &self,
        destination: &RunnerDestination,
        resume: Option<&RunnerSessionState>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let agent = self.launcher.launch(destination, resume).await?;
        self.sockets
            .lock()
            .unwrap()
            .insert(agent.session_id.clone(), agent.socket.clone());
        Ok(Arc::new(connect(&agent, self.connects.clone()).await?))
    }
}

#[async_trait]
impl RemoteRunnerProvider for AgentProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        self.local.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        self.local.capabilities()
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.local.validate_destination(destination).await
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.destinations.remember(&destination);
        self.open(&destination, None).await
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        if state.provider_id != self.id() {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: state of provider {:?}, not {}",
                state.provider_id,
                self.id()
            )));
        }
        let destination = self
            .destinations
            .of_state(OP, &state, "trust_destination")?;
        self.open(&destination, Some(&state)).await
    }

    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        self.local.sweep_orphans().await
    }

    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
    }
}
