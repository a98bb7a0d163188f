//! Delivery: the pod's platform (`uname` through pod exec), the agent binary
//! for it, streamed into the `/.runner` emptyDir through the stdin of one
//! pod exec and checked by its sha256 (`runner-agent version`), and the
//! agent's status line once the bootstrap started it.
//!
//! ```text
//! /.runner/                     emptyDir (the pod's volume)
//! /.runner/bin/runner-agent     0755 the static agent binary
//! /.runner/status               the agent's status line (its stdout)
//! /.runner/run/<session>/agent.sock  the agent's socket (made 0700 by the agent)
//! /.runner/state/               the agent's state (workspaces, snapshots)
//! ```

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use runner_agent::AgentVersion;
use runner_agent::cli::ServeStatus;
use runner_agent::delivery::{AgentBinaries, AgentBinary, Platform};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::CONTAINER_NAME;
use crate::config::KubernetesConfig;
use crate::error::Call;
use crate::exec::Attached;

/// The delivered agent binary in the pod.
pub(crate) const AGENT_PATH: &str = "/.runner/bin/runner-agent";
/// Where the agent makes its socket's directory (0700).
const RUN_DIR: &str = "/.runner/run";
/// The agent's state directory.
pub(crate) const STATE_DIR: &str = "/.runner/state";

/// The socket of the agent of session `session_id`.
pub(crate) fn socket_path(session_id: &str) -> String {
    format!("{RUN_DIR}/{session_id}/agent.sock")
}

/// Writes stdin to a temporary name, makes it executable, moves it into
/// place (the bootstrap starts it then), prints its `version`, waits for
/// the agent's status line and prints it.
const INSTALL: &str = "mkdir -p /.runner/bin && cat > /.runner/bin/.runner-agent.part && \
     chmod 755 /.runner/bin/.runner-agent.part && \
     mv /.runner/bin/.runner-agent.part /.runner/bin/runner-agent && \
     /.runner/bin/runner-agent version && \
     while [ ! -s /.runner/status ]; do sleep 0.05; done && cat /.runner/status";

/// Most bytes of a delivery exec's stderr kept for its error.
const STDERR_KEPT: usize = 4096;

/// Runs `command` in the pod's container, with `stdin` written and closed
/// when given, and returns its stdout.
///
/// Errors: the API's (`PermissionDenied` naming `create` on `pods/exec`),
/// `Provider` with its stderr when it exits non-zero, `Timeout`.
pub(crate) async fn exec(
    operation: &str,
    pods: &Api<Pod>,
    pod: &str,
    command: &[&str],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> RunnerResult<Vec<u8>> {
    let params = AttachParams::default()
        .container(CONTAINER_NAME)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true)
        .max_stdin_buf_size(256 << 10);
    let run = async {
        let process = pods
            .exec(pod, command.iter().copied(), &params)
            .await
            .map_err(|e| {
                Call::new(operation, "create", "pods/exec")
                    .named(pod)
                    .error(e)
            })?;
        let mut attached = Attached::new(process);
        let writer = attached.stdin.take().map(|mut writer| {
            let bytes = stdin.unwrap_or_default();
            async move {
                writer.write_all(&bytes).await?;
                writer.shutdown().await
            }
        });
        let mut stdout_reader = attached.stdout.take();
        let mut stderr_reader = attached.stderr.take();
        let read_out = async {
            let mut out = Vec::new();
            if let Some(reader) = stdout_reader.as_mut() {
                reader.read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(out)
        };
        let read_err = async {
            let mut err = Vec::new();
            if let Some(reader) = stderr_reader.as_mut() {
                reader.read_to_end(&mut err).await?;
            }
            Ok::<_, std::io::Error>(err)
        };
        let write = async {
            match writer {
                Some(writer) => writer.await,
                None => Ok(()),
            }
        };
        let (out, err, written) = tokio::join!(read_out, read_err, write);
        let io = |e: std::io::Error| {
            RunnerError::new(
                RunnerErrorKind::Unavailable,
                format!("{operation}: the exec stream of {command:?} in pod {pod} broke: {e}"),
            )
        };
        let (out, err) = (out.map_err(io)?, err.map_err(io)?);
        let status = attached.status().await;
        let failed = status
            .as_ref()
            .is_none_or(|s| s.status.as_deref() == Some("Failure"));
        if failed || written.is_err() {
            let err = String::from_utf8_lossy(&err[..err.len().min(STDERR_KEPT)]).into_owned();
            let why = match status {
                Some(status) => status.message.unwrap_or_default(),
                None => "the stream ended without an exit status".into(),
            };
            return Err(RunnerError::provider(format!(
                "{operation}: {command:?} in pod {pod} failed: {why}; its stderr: {:?}",
                err.trim_end()
            )));
        }
        Ok(out)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => Err(RunnerError::new(
            RunnerErrorKind::Timeout,
            format!(
                "{operation}: {command:?} in pod {pod} did not finish within {} s",
                timeout.as_secs()
            ),
        )),
    }
}

/// The platform of the pod's node, from `uname -s -m` in its container.
///
/// Errors: those of [`exec`], `Provider` for an answer that is not one.
pub(crate) async fn platform(
    operation: &str,
    pods: &Api<Pod>,
    pod: &str,
    timeout: Duration,
) -> RunnerResult<Platform> {
    let out = exec(operation, pods, pod, &["uname", "-s", "-m"], None, timeout).await?;
    let text = String::from_utf8_lossy(&out);
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [sysname, machine] => Ok(Platform::from_uname(sysname, machine)),
        _ => Err(RunnerError::provider(format!(
            "{operation}: `uname -s -m` in pod {pod} answered {:?}",
            text.trim()
        ))),
    }
}

/// The static agent binary for `platform` (`agent_binaries`, then
/// `RUNNER_AGENT_BINARY`).
///
/// Errors: `Unsupported` naming the platform and the build command when
/// there is none, `InvalidRequest` for a dynamically linked one.
pub(crate) fn agent_binary(
    config: &KubernetesConfig,
    operation: &str,
    platform: &Platform,
) -> RunnerResult<AgentBinary> {
    AgentBinaries::new(config.agent_binaries.clone()).resolve_static(operation, platform)
}

/// Streams `binary` into the pod, checks that the copy is the same binary
/// (its `version`'s sha256), and reads the status line of the agent the
/// bootstrap starts with it.
///
/// Errors: `Provider` when the copy's hash differs or the status line is
/// missing or not one, the agent's own error when it failed to open its
/// session, those of [`exec`].
pub(crate) async fn deliver(
    operation: &str,
    pods: &Api<Pod>,
    pod: &str,
    binary: &AgentBinary,
    timeout: Duration,
) -> RunnerResult<()> {
    let path = binary.path.clone();
    let contents = {
        let binary = binary.clone();
        tokio::task::spawn_blocking(move || binary.contents())
            .await
            .map_err(|e| {
                RunnerError::provider(format!("{operation}: reading {}: {e}", path.display()))
            })??
    };
    let out = exec(
        operation,
        pods,
        pod,
        &["sh", "-c", INSTALL],
        Some(contents),
        timeout,
    )
    .await?;
    let text = String::from_utf8_lossy(&out);
    let mut lines = text.lines();
    let version: AgentVersion = lines
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| {
            RunnerError::provider(format!(
                "{operation}: the delivered agent in pod {pod} did not print its version: {:?}",
                text.trim()
            ))
        })?;
    if version.binary_sha256 != binary.sha256 {
        return Err(RunnerError::provider(format!(
            "{operation}: the agent delivered into pod {pod} has sha256 {} instead of {} ({})",
            version.binary_sha256,
            binary.sha256,
            binary.path.display()
        )));
    }
    version
        .check_protocol()
        .map_err(|e| e.context(format!("{operation}: the agent delivered into pod {pod}")))?;
    let line = lines.next().unwrap_or_default();
    match serde_json::from_str::<ServeStatus>(line) {
        Ok(ServeStatus::Ready { .. }) => Ok(()),
        Ok(ServeStatus::Failed { kind, message }) => {
            Err(RunnerError::from(runner_agent::protocol::WireError {
                kind,
                message,
            }))
        }
        Err(e) => Err(RunnerError::provider(format!(
            "{operation}: the agent in pod {pod} printed {line:?} instead of its status line: {e}"
        ))),
    }
}
