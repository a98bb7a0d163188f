//! The agent as a process: the session it opens, the unix socket it serves,
//! the stdio it serves for tests, and the bridge `runner-agent connect` runs.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RunnerDestination, RunnerError, RunnerErrorKind, RunnerManifest,
    RunnerResult, RunnerSessionState,
};
use runner_local::{LocalProvider, LocalSession};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::protocol::{AgentVersion, CRATE_VERSION};
use crate::server::AgentServer;

/// How long a stopping daemon waits for its connections to send their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Buffer of the `connect` bridge, each direction.
const BRIDGE_BUFFER: usize = 256 * 1024;

/// This binary's versions and hash, speaking protocol `protocol` (an agent
/// speaks [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION)): what
/// `runner-agent version` prints and every handshake reply starts with. The
/// hash is of `/proc/self/exe` (empty when it cannot be read).
pub fn agent_version(protocol: u32) -> AgentVersion {
    AgentVersion {
        protocol,
        agent_version: CRATE_VERSION.to_string(),
        binary_sha256: crate::delivery::sha256_file(Path::new("/proc/self/exe"))
            .unwrap_or_default(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
    }
}

/// What the agent's session is made from.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The destination's id (the session state names it).
    pub destination_id: String,
    /// The unix-local config (`{"root": DIR}` and the other unix-local keys).
    pub config: serde_json::Value,
    /// Entries and `provider_native` mounts to apply, with paths as the
    /// agent sees them (store mounts are the caller's layer stack's).
    pub manifest: RunnerManifest,
    /// Resume this state (a snapshot or a workspace) instead of creating a session.
    pub resume: Option<RunnerSessionState>,
}

/// Opens unix-local's bare session for `spec`: `create_session`, or
/// `resume_session` of `spec.resume` on the same destination. The agent is
/// the session's user switcher (`runner-agent run-as`): commands of another
/// user need no `setpriv` in the sandbox.
///
/// (When this binary's path cannot be found, `setpriv` stays the switcher.)
///
/// Errors: the provider's (`InvalidRequest` for a bad config key, `NotFound`
/// for a missing snapshot, …).
pub async fn open_session(spec: SessionSpec) -> RunnerResult<Arc<LocalSession>> {
    let provider = match std::env::current_exe() {
        Ok(exe) => LocalProvider::default().with_user_switcher(exe),
        Err(e) => {
            tracing::warn!(error = %e, "agent: this binary's path is unknown; setpriv switches users");
            LocalProvider::default()
        }
    };
    let destination = RunnerDestination {
        id: spec.destination_id,
        provider_id: provider.id(),
        config: spec.config,
        default_manifest: spec.manifest,
        artifacts: None,
    };
    match spec.resume {
        Some(state) => {
            provider.trust_destination(&destination);
            provider.resume_local(state).await
        }
        None => provider.create_local(destination).await,
    }
}

/// Whose the socket's directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketDir {
    /// This user's: made 0700 when missing; an existing one must be owned
    /// by this user and closed to others.
    #[default]
    Own,
    /// A private directory of the host bind-mounted in (docker's host
    /// socket): it must exist and be closed to group and others, its owner
    /// may be any user (the host's user, as this side sees it), and the
    /// socket is given to that owner, so that the host's user connects.
    FromHost,
}

/// Makes the socket's directory (see [`SocketDir`]) and clears a stale
/// socket.
///
/// Errors: `PermissionDenied` for a directory others can enter (or, for
/// [`SocketDir::Own`], of another user), `NotFound` for a missing
/// [`SocketDir::FromHost`] one, `AlreadyExists` when another agent serves
/// the socket or a non-socket file is there.
pub fn prepare_socket(socket: &Path, owner: SocketDir) -> RunnerResult<()> {
    const OP: &str = "serve";
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() && owner == SocketDir::Own {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RunnerError::from_io(OP, dir.display(), e))?;
    }
    let meta = std::fs::metadata(&dir).map_err(|e| RunnerError::from_io(OP, dir.display(), e))?;
    let uid = match owner {
        SocketDir::Own => nix::unistd::geteuid().as_raw(),
        SocketDir::FromHost => meta.uid(),
    };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(RunnerError::permission_denied(format!(
            "{OP}: the socket directory {} must be a directory of uid {uid} that others cannot \
             enter (mode 0700); it is mode {:o} owned by uid {}",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        )));
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if StdUnixStream::connect(socket).is_ok() {
                return Err(RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!("{OP}: another agent serves {}", socket.display()),
                ));
            }
            std::fs::remove_file(socket).map_err(|e| RunnerError::from_io(OP, socket.display(), e))
        }
        Ok(_) => Err(RunnerError::new(
            RunnerErrorKind::AlreadyExists,
            format!("{OP}: {} exists and is not a socket", socket.display()),
        )),
        Err(_) => Ok(()),
    }
}

/// Listens on `socket` (after [`prepare_socket`]), the socket made 0600
/// and, for [`SocketDir::FromHost`], given to the directory's owner (a
/// failure to is logged: the host's root still connects, another host user
/// falls back to its other transport).
pub fn listen(socket: &Path, owner: SocketDir) -> RunnerResult<UnixListener> {
    prepare_socket(socket, owner)?;
    let listener = UnixListener::bind(socket)
        .map_err(|e| RunnerError::from_io("serve", socket.display(), e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| RunnerError::from_io("serve", socket.display(), e))?;
    if owner == SocketDir::FromHost
        && let Some(dir) = socket.parent()
        && let Ok(meta) = std::fs::metadata(dir)
        && meta.uid() != nix::unistd::geteuid().as_raw()
        && let Err(e) = std::os::unix::fs::lchown(socket, Some(meta.uid()), Some(meta.gid()))
    {
        tracing::warn!(socket = %socket.display(), uid = meta.uid(), error = %e, "agent: cannot give the socket to its directory's owner");
    }
    Ok(listener)
}

/// Serves every connection `listener` accepts until the session is closed
/// (by a client, or by SIGTERM/SIGINT, which close it here), then removes
/// the socket and lets the connections send their last frames.
pub async fn serve_socket(server: AgentServer, listener: UnixListener, socket: &Path) {
    let mut connections = JoinSet::new();
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            tracing::warn!("agent: cannot watch SIGTERM/SIGINT");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let server = server.clone();
                    connections.spawn(async move {
                        if let Err(e) = server.serve(stream).await {
                            tracing::info!(error = %e, "agent: a connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "agent: accept failed"),
            },
            () = server.closed() => break,
            _ = term.recv() => { close_on_signal(&server).await; break }
            _ = int.recv() => { close_on_signal(&server).await; break }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = std::fs::remove_file(socket);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}

async fn close_on_signal(server: &AgentServer) {
    if let Err(e) = server.close().await {
        tracing::warn!(error = %e, "agent: closing the session on a signal failed");
    }
}

/// Closes the session once stdin reaches its end (`serve --exit-on-stdin-eof`).
pub async fn close_on_stdin_eof(server: AgentServer) {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    if let Err(e) = server.close().await {
        tracing::warn!(error = %e, "agent: closing the session at the end of stdin failed");
    }
}

/// Serves one connection on stdin/stdout; when it ends the session is
/// closed (nobody can connect again).
pub async fn serve_stdio(server: AgentServer) -> RunnerResult<()> {
    let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let served = server.serve(io).await;
    if !server.is_closed() {
        server.close().await?;
    }
    served
}

/// Connects to `socket`, retrying for up to `wait` while it does not exist
/// yet or refuses (an agent still starting).
fn connect_socket(socket: &Path, wait: Duration) -> std::io::Result<StdUnixStream> {
    let start = Instant::now();
    loop {
        match StdUnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && start.elapsed() < wait =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `runner-agent connect`: bridges stdin/stdout to the agent's socket with
/// two plain threads (no runtime, no extra copies), until the agent closes
/// its side. Closing stdin half-closes the socket.
///
/// Errors: the socket cannot be reached within `wait`, or the bridge failed.
pub fn bridge(socket: &Path, wait: Duration) -> std::io::Result<()> {
    let stream = connect_socket(socket, wait)?;
    let mut to_agent = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; BRIDGE_BUFFER];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_agent.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_agent.shutdown(std::net::Shutdown::Write);
    });
    let mut from_agent = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; BRIDGE_BUFFER];
    loop {
        let n = match from_agent.read(&mut buf) {
            // The agent ended the connection (a reset: it exited with bytes unread).
            Ok(0) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            read => read?,
        };
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
}

/// `serve --detach`: starts this binary again with the same arguments but
/// `--detach`, in its own process group, stdin from `/dev/null` and stderr
/// discarded (the child appends it to `--log` itself), prints the status
/// line the child prints, and returns without waiting for it: 0 when the
/// agent is ready, 1 otherwise.
pub fn detach() -> std::process::ExitCode {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{ExitCode, Stdio};
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("runner-agent serve --detach: finding this binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = std::env::args_os().skip(1).filter(|arg| arg != "--detach");
    let spawned = std::process::Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "runner-agent serve --detach: starting {}: {e}",
                exe.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    }
    print!("{line}");
    let ready = serde_json::from_str::<crate::cli::ServeStatus>(line.trim_end())
        .is_ok_and(|status| matches!(status, crate::cli::ServeStatus::Ready { .. }));
    if ready {
        ExitCode::SUCCESS
    } else {
        // A failed agent exits by itself; reap it.
        let _ = child.wait();
        if line.is_empty() {
            eprintln!("runner-agent serve --detach: the agent exited without a status line");
        }
        ExitCode::FAILURE
    }
}

/// Points this process's stderr at `log` (appended, created 0600).
///
/// Errors: the file cannot be opened, or the descriptor not duplicated.
pub fn redirect_stderr(log: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    nix::unistd::dup2_stderr(&file).map_err(std::io::Error::from)
}
