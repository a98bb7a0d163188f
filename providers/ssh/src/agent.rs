//! The runner agent on the host: the documented bootstrap (`uname -s -m`,
//! `<copy> version`, `<copy> serve --detach …`, `<copy> connect …`, each
//! run by the login shell with every argument quoted by openssh), the
//! delivery of the binary by content hash, and the channels the agent
//! client speaks over.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use openssh::{Session, Stdio};
use runner_agent::cli::ServeStatus;
use runner_agent::delivery::{AgentBinaries, AgentBinary, Platform};
use runner_agent::protocol::WireError;
use runner_agent::{AgentConnection, AgentConnector, AgentVersion};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::SshConfig;
use crate::connection::{Connection, Link, Pool};
use crate::error::transport_error;
use crate::host;
use crate::session::remote_dir;

/// A path as one argument of a remote command (openssh quotes it).
///
/// Errors: `InvalidRequest` for a path that is not UTF-8.
pub(crate) fn arg<'a>(operation: &str, path: &'a Path) -> RunnerResult<&'a str> {
    path.to_str().ok_or_else(|| {
        RunnerError::invalid_request(format!(
            "{operation} {}: the ssh provider needs UTF-8 paths",
            path.display()
        ))
    })
}

/// The host's platform, from `uname -s -m` over the master; asked once per
/// host for each provider (`pool` caches it).
///
/// Errors: `Unavailable` when the master cannot run it, `Provider` when
/// `uname` prints something else than two words.
pub(crate) async fn platform(
    pool: &Pool,
    link: &Link,
    config: &SshConfig,
) -> RunnerResult<Platform> {
    const OP: &str = "uname -s -m";
    if let Some(known) = pool.platform(config) {
        return Ok(known);
    }
    let output = Session::to_command(link.session.clone(), "uname")
        .args(["-s", "-m"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| transport_error(OP, e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let [sysname, machine] = words[..] else {
        return Err(RunnerError::provider(format!(
            "{OP} on {}: expected the system and machine names, got {:?}",
            config.destination_label(),
            text.trim()
        )));
    };
    let found = Platform::from_uname(sysname, machine);
    pool.remember_platform(config, found.clone());
    Ok(found)
}

/// The agent binary for `config`'s host: its platform resolved against the
/// destination's `agent_binaries` (then `RUNNER_AGENT_BINARY`).
///
/// Errors: `Unsupported` naming the platform and the build command when no
/// binary is for it; those of [`platform`] and of `AgentBinaries::resolve`.
pub(crate) async fn binary_for(
    operation: &str,
    pool: &Pool,
    link: &Link,
    config: &SshConfig,
) -> RunnerResult<AgentBinary> {
    let platform = platform(pool, link, config).await?;
    let binaries = AgentBinaries::new(config.agent_binaries.clone());
    tokio::task::spawn_blocking({
        let operation = operation.to_string();
        move || binaries.resolve(&operation, &platform)
    })
    .await
    .map_err(|e| RunnerError::provider(format!("{operation}: resolving the agent binary: {e}")))?
}

/// The copies verified by running them in this process: (destination,
/// copy path, sha256).
fn verified() -> &'static Mutex<HashSet<(String, PathBuf, String)>> {
    static VERIFIED: OnceLock<Mutex<HashSet<(String, PathBuf, String)>>> = OnceLock::new();
    VERIFIED.get_or_init(Mutex::default)
}

/// The directory delivered binaries live in: `<state_dir>/bin`.
pub(crate) fn bin_dir(link: &Link, config: &SshConfig) -> PathBuf {
    remote_dir(link, &config.state_dir).join("bin")
}

/// Delivers `binary` to `<state_dir>/bin/<binary.file_name()>` unless a
/// copy is there, and checks the copy once per host in this process:
/// `<copy> version` must report the binary's sha256 (a copy that does not
/// is uploaded again). Returns the copy's path.
///
/// Errors: `Provider` when the copy still does not report the hash after
/// a new upload; sftp and transport errors as they come.
pub(crate) async fn deliver(
    link: &Link,
    config: &SshConfig,
    binary: &AgentBinary,
) -> RunnerResult<PathBuf> {
    const OP: &str = "deliver runner-agent";
    let dir = bin_dir(link, config);
    let copy = dir.join(binary.file_name());
    let key = (
        config.destination_label(),
        copy.clone(),
        binary.sha256.clone(),
    );
    if verified()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&key)
    {
        return Ok(copy);
    }
    host::make_private_dirs(link, &dir).await?;
    host::chmod(link, &dir, 0o700).await?;
    let mut uploaded = false;
    if host::lstat(link, &copy).await?.is_none() {
        upload(link, binary, &copy).await?;
        uploaded = true;
    }
    loop {
        let reported = version(link, &copy).await;
        match reported {
            Ok(version) if version.binary_sha256 == binary.sha256 => {
                // An agent of another protocol is refused before it starts.
                version
                    .check_protocol()
                    .map_err(|e| e.context(format!("{OP} {}", copy.display())))?;
                break;
            }
            _ if !uploaded => {
                tracing::info!(copy = %copy.display(), "the delivered agent is not the expected binary; uploading it again");
                upload(link, binary, &copy).await?;
                uploaded = true;
            }
            Ok(version) => {
                return Err(RunnerError::provider(format!(
                    "{OP} {}: the uploaded copy reports sha256 {}, not {}",
                    copy.display(),
                    version.binary_sha256,
                    binary.sha256
                )));
            }
            Err(e) => return Err(e.context(format!("{OP} {}", copy.display()))),
        }
    }
    verified()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key);
    Ok(copy)
}

/// Uploads `binary` to a temporary name next to `copy`, mode 0700, and
/// renames it into place.
async fn upload(link: &Link, binary: &AgentBinary, copy: &Path) -> RunnerResult<()> {
    let contents = tokio::task::spawn_blocking({
        let binary = binary.clone();
        move || binary.contents()
    })
    .await
    .map_err(|e| RunnerError::provider(format!("reading the agent binary: {e}")))??;
    host::write_file(link, copy, &contents, 0o700).await
}

/// `<copy> version`: the copy's versions and hash.
///
/// Errors: `Unavailable` when the master cannot run it, `Provider` when it
/// does not print a version.
async fn version(link: &Link, copy: &Path) -> RunnerResult<AgentVersion> {
    const OP: &str = "runner-agent version";
    let output = Session::to_command(link.session.clone(), arg(OP, copy)?)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| transport_error(OP, e))?;
    serde_json::from_slice(&output.stdout).map_err(|e| {
        RunnerError::provider(format!(
            "{OP} {}: exit {:?}, no version ({e}): {}",
            copy.display(),
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })
}

/// How an agent is started: `serve --detach` with these arguments.
pub(crate) struct Start<'a> {
    /// The delivered binary.
    pub(crate) copy: &'a Path,
    /// The session directory (0700; holds the socket and the log).
    pub(crate) session_dir: &'a Path,
    /// The unix-local config, as JSON.
    pub(crate) config: serde_json::Value,
    /// The destination id the agent's session state names.
    pub(crate) destination_id: &'a str,
    /// A unix-local state to resume (a snapshot fork).
    pub(crate) resume: Option<serde_json::Value>,
}

/// The agent's socket in a session directory: relative to the login
/// user's home when the directory is under it (the bootstrap commands and
/// sftp start there), so the path stays within the 107 bytes a unix socket
/// path may have.
pub(crate) fn socket_of(link: &Link, session_dir: &Path) -> PathBuf {
    let socket = session_dir.join("agent.sock");
    match socket.strip_prefix(&link.home) {
        Ok(relative) if !link.home.as_os_str().is_empty() => relative.to_path_buf(),
        _ => socket,
    }
}

/// Starts the agent daemon (`<copy> serve --detach …`) and reads its status
/// line. Returns the `Ready` status.
///
/// Errors: the agent's own when it reports `Failed` (kind and message as it
/// sent them); `Unavailable` when the master cannot run it; `Provider` when
/// it prints no status.
pub(crate) async fn start(link: &Link, start: Start<'_>) -> RunnerResult<ServeStatus> {
    const OP: &str = "runner-agent serve";
    let socket = socket_of(link, start.session_dir);
    let log = start.session_dir.join("agent.log");
    let mut command = Session::to_command(link.session.clone(), arg(OP, start.copy)?);
    command
        .args(["serve", "--detach", "--socket", arg(OP, &socket)?])
        .args(["--log", arg(OP, &log)?])
        .args(["--destination-id", start.destination_id])
        .arg("--config")
        .arg(start.config.to_string());
    if let Some(resume) = &start.resume {
        command.arg("--resume").arg(resume.to_string());
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| transport_error(OP, e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or_default();
    match serde_json::from_str::<ServeStatus>(line) {
        Ok(status @ ServeStatus::Ready { .. }) => Ok(status),
        Ok(ServeStatus::Failed { kind, message }) => Err(WireError { kind, message }.into()),
        Err(_) => Err(RunnerError::provider(format!(
            "{OP} in {}: exit {:?} without a status line: {}",
            start.session_dir.display(),
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// One agent connection: a `runner-agent connect` command's stdio on an
/// ssh channel of the master.
struct Channel {
    _child: openssh::Child<Arc<Session>>,
    stdin: openssh::ChildStdin,
    stdout: openssh::ChildStdout,
}

impl AsyncRead for Channel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

/// Opens a channel running `<copy> connect --socket <socket>`.
async fn channel(link: &Link, copy: &Path, socket: &Path) -> RunnerResult<Channel> {
    const OP: &str = "runner-agent connect";
    let mut child = Session::to_command(link.session.clone(), arg(OP, copy)?)
        .args(["connect", "--socket", arg(OP, socket)?])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .await
        .map_err(|e| transport_error(OP, e))?;
    let missing = || RunnerError::provider(format!("{OP}: the channel's stdio was not piped"));
    let stdin = child.stdin().take().ok_or_else(missing)?;
    let stdout = child.stdout().take().ok_or_else(missing)?;
    Ok(Channel {
        _child: child,
        stdin,
        stdout,
    })
}

/// The connector of an agent session: each connection is a new channel on
/// the destination's master; when the master is gone it is connected again
/// first.
pub(crate) fn connector(
    conn: Arc<Connection>,
    copy: PathBuf,
    socket: PathBuf,
) -> impl AgentConnector {
    move || {
        let (conn, copy, socket) = (conn.clone(), copy.clone(), socket.clone());
        async move {
            let failed =
                |e: RunnerError| io::Error::new(io::ErrorKind::NotConnected, e.to_string());
            let link = conn.link().await.map_err(failed)?;
            let opened = match channel(&link, &copy, &socket).await {
                Ok(opened) => opened,
                Err(e) if e.kind() == RunnerErrorKind::Unavailable => {
                    match conn.recover(&link).await.map_err(failed)? {
                        Some(fresh) => channel(&fresh, &copy, &socket).await.map_err(failed)?,
                        None => return Err(failed(e)),
                    }
                }
                Err(e) => return Err(failed(e)),
            };
            Ok(Box::new(opened) as AgentConnection)
        }
    }
}
