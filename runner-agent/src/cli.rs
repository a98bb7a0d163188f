//! The `runner-agent` command line: `serve`, `connect`, `version`, `init`
//! and the hidden `run-as`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use runner_api::{RunnerError, RunnerResult};
use serde::{Deserialize, Serialize};

use crate::daemon::{self, SessionSpec};
use crate::protocol::{AgentVersion, PROTOCOL_VERSION};
use crate::server::AgentServer;

/// The runner agent: serves one unix-local session over byte streams from
/// inside a sandbox.
#[derive(Debug, Parser)]
#[command(name = "runner-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the session and serve it: on a unix socket until the session is
    /// closed (a daemon), or on stdin/stdout for one connection (`--stdio`).
    Serve(ServeArgs),
    /// Bridge stdin/stdout to an agent's socket: what a docker exec or an
    /// ssh channel runs for each connection.
    Connect(ConnectArgs),
    /// Print the protocol version, agent version, binary sha256, OS and
    /// architecture as JSON.
    Version,
    /// Run as a container's PID 1: start this binary with `ARGS` (for
    /// example `serve --socket …`) as the one child, reap every orphan
    /// that is reparented here, pass SIGTERM and SIGINT on, and exit with
    /// the child's status.
    Init(InitArgs),
    /// unix-local's user switcher: as root, already in the command's
    /// working directory, clear the supplementary groups, set the gid and
    /// uid, and exec `PROGRAM ARGS…` (126/127 when it cannot be run).
    #[command(hide = true)]
    RunAs(RunAsArgs),
}

/// `runner-agent run-as`.
#[derive(Debug, Args)]
pub struct RunAsArgs {
    /// The user id to switch to.
    #[arg(long)]
    pub uid: u32,
    /// The group id to switch to.
    #[arg(long)]
    pub gid: u32,
    /// The program and its arguments, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `runner-agent init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The arguments of the child (this binary again), after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<std::ffi::OsString>,
}

/// `runner-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The unix socket to listen on; its directory is created 0700 (an
    /// existing one must be private) and the socket is made 0600.
    #[arg(long, required_unless_present = "stdio", conflicts_with = "stdio")]
    pub socket: Option<PathBuf>,
    /// Serve one connection on stdin/stdout instead; the session closes when it ends.
    #[arg(long)]
    pub stdio: bool,
    /// The unix-local config as JSON: `{"root": DIR}` and the other unix-local keys.
    #[arg(long)]
    pub config: String,
    /// The destination id the session's state names.
    #[arg(long, default_value = "agent")]
    pub destination_id: String,
    /// A manifest (entries, `provider_native` mounts) as JSON, with paths as
    /// the agent sees them.
    #[arg(long)]
    pub manifest: Option<String>,
    /// A session state as JSON to resume (a snapshot fork, or the same
    /// workspace) instead of creating a session.
    #[arg(long)]
    pub resume: Option<String>,
    /// Close the session and exit when stdin reaches its end: a launcher
    /// that keeps the pipe open ties the agent to its own life (tests).
    #[arg(long, conflicts_with = "stdio")]
    pub exit_on_stdin_eof: bool,
    /// Start the daemon in the background, in its own process group, with
    /// stdin and stdout closed: print its status line, then exit (0 when it
    /// is ready, 1 when it failed). What a transport whose channel must end
    /// (an ssh exec) starts the agent with.
    #[arg(long, conflicts_with_all = ["stdio", "exit_on_stdin_eof"])]
    pub detach: bool,
    /// Stage bulk file transfers in this directory (made 0700, emptied at
    /// start): a provider with its own copy API (docker's archive API) moves
    /// large files through it, the agent checking and writing them. Only an
    /// agent running as root stages (the copy API writes as root, and
    /// another user's staging root would be open to the session's own
    /// commands); as any other user the flag is ignored and every byte
    /// takes the stream.
    #[arg(long)]
    pub stage_dir: Option<PathBuf>,
    /// The socket's directory is a private directory of the host
    /// bind-mounted in (docker's host socket): it must exist and be closed
    /// to group and others; its owner may be another user, and the socket
    /// is given to that owner so that the host's user connects to it
    /// without an exec.
    #[arg(long, requires = "socket")]
    pub socket_from_host: bool,
    /// Append the daemon's log (stderr) to this file, created 0600; with
    /// `--detach` stderr is discarded otherwise.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// `runner-agent connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The agent's unix socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// How long to wait for the socket to appear (an agent still starting), in ms.
    #[arg(long, default_value_t = 5_000)]
    pub wait_ms: u64,
}

/// The one line `serve` prints on stdout: ready (listening, or serving
/// stdio), or why the session could not be opened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServeStatus {
    /// The agent serves its session.
    Ready {
        /// The agent's versions.
        agent: AgentVersion,
        /// The session's id.
        session_id: String,
        /// The agent's process id.
        pid: u32,
        /// The socket it listens on (`None` with `--stdio`).
        socket: Option<PathBuf>,
    },
    /// The session could not be opened; the agent exits with status 1.
    Failed {
        /// The error's kind ([`RunnerErrorKind::as_str`](runner_api::RunnerErrorKind::as_str)).
        kind: String,
        /// The error's message.
        message: String,
    },
}

/// Runs the command line.
pub fn run(cli: Cli) -> ExitCode {
    run_speaking(cli, PROTOCOL_VERSION)
}

/// Runs the command line as an agent that speaks protocol `protocol`: it
/// announces that version (in `version`, the status line and every
/// handshake) and refuses clients of any other. [`run`] is this with
/// [`PROTOCOL_VERSION`]; another version makes an agent of another release
/// as a client meets it, which is what the `runner-agent-skewed` fixture
/// (feature `skewed-fixture`) is for.
pub fn run_speaking(cli: Cli, protocol: u32) -> ExitCode {
    match cli.command {
        Command::Version => {
            println!("{}", json(&daemon::agent_version(protocol)));
            ExitCode::SUCCESS
        }
        Command::Connect(args) => {
            match daemon::bridge(&args.socket, Duration::from_millis(args.wait_ms)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("runner-agent connect {}: {e}", args.socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => serve(args, protocol),
        Command::Init(args) => crate::init::run(args.args),
        Command::RunAs(args) => crate::run_as::run(args.uid, args.gid, &args.command),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(flag: &str, text: &str) -> RunnerResult<T> {
    serde_json::from_str(text)
        .map_err(|e| RunnerError::invalid_request(format!("serve: --{flag} is not valid: {e}")))
}

fn serve(args: ServeArgs, protocol: u32) -> ExitCode {
    if args.detach {
        return daemon::detach();
    }
    if let Some(log) = &args.log
        && let Err(e) = daemon::redirect_stderr(log)
    {
        eprintln!("runner-agent serve: --log {}: {e}", log.display());
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("runner-agent")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runner-agent serve: building the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let version = daemon::agent_version(protocol);
        match start(&args, version.clone()).await {
            Ok((server, listener)) => {
                let status = ServeStatus::Ready {
                    agent: version,
                    session_id: server.session().state().session_id,
                    pid: std::process::id(),
                    socket: args.socket.clone(),
                };
                announce(&status, args.stdio);
                match (listener, &args.socket) {
                    (Some(listener), Some(socket)) => {
                        if args.exit_on_stdin_eof {
                            tokio::spawn(daemon::close_on_stdin_eof(server.clone()));
                        }
                        daemon::serve_socket(server, listener, socket).await;
                    }
                    _ => {
                        if let Err(e) = daemon::serve_stdio(server).await {
                            eprintln!("runner-agent serve --stdio: {e}");
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                announce(
                    &ServeStatus::Failed {
                        kind: e.kind().as_str().to_string(),
                        message: e.message().to_string(),
                    },
                    args.stdio,
                );
                ExitCode::FAILURE
            }
        }
    });
    // A read of stdin may still block a thread of the runtime: do not wait for it.
    runtime.shutdown_background();
    code
}

/// Prints the status line: on stdout, or on stderr with `--stdio` (stdout
/// carries the protocol then).
fn announce(status: &ServeStatus, stdio: bool) {
    if stdio {
        eprintln!("{}", json(status));
    } else {
        println!("{}", json(status));
    }
}

async fn start(
    args: &ServeArgs,
    version: AgentVersion,
) -> RunnerResult<(AgentServer, Option<tokio::net::UnixListener>)> {
    let spec = SessionSpec {
        destination_id: args.destination_id.clone(),
        config: parse("config", &args.config)?,
        manifest: args
            .manifest
            .as_deref()
            .map(|m| parse("manifest", m))
            .transpose()?
            .unwrap_or_default(),
        resume: args
            .resume
            .as_deref()
            .map(|r| parse("resume", r))
            .transpose()?,
    };
    // Listen first, so a socket already served fails before a session exists.
    let owner = if args.socket_from_host {
        daemon::SocketDir::FromHost
    } else {
        daemon::SocketDir::Own
    };
    let listener = args
        .socket
        .as_deref()
        .map(|socket| daemon::listen(socket, owner))
        .transpose()?;
    let session = match daemon::open_session(spec).await {
        Ok(session) => session,
        Err(e) => {
            if let Some(socket) = &args.socket {
                let _ = std::fs::remove_file(socket);
            }
            return Err(e);
        }
    };
    let stage_dir = args
        .stage_dir
        .as_ref()
        .filter(|_| nix::unistd::geteuid().is_root());
    let server = match AgentServer::local(session.clone(), version, stage_dir.map(PathBuf::as_path))
    {
        Ok(server) => server,
        Err(e) => {
            let _ = runner_api::RemoteRunnerSession::close(session.as_ref()).await;
            if let Some(socket) = &args.socket {
                let _ = std::fs::remove_file(socket);
            }
            return Err(e);
        }
    };
    Ok((server, listener))
}
