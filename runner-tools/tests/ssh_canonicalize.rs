//! One `read_file` tool call on ssh resolves its path once: the stack
//! confines the session a single time, so the `canonicalize` calls reaching
//! the bare ssh session are counted between the stack and `SshProvider`.
//! Runs against the test sshd when `RUNNER_TEST_SSH=1`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runner_api::{
    LayeredSession, RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession,
    RunnerCapabilities, RunnerDestination, RunnerResult,
};
use runner_stack::RunnerRegistry;
use runner_testkit::{BackendGate, async_trial};
use runner_tools::{ToolDestination, ToolSet, ToolsConfig};

type Calls = Arc<Mutex<Vec<PathBuf>>>;

/// `SshProvider`, with every session counting the `canonicalize` calls it gets.
struct Counting {
    inner: runner_ssh::SshProvider,
    calls: Calls,
}

struct CountingSession {
    inner: Arc<dyn RemoteRunnerSession>,
    calls: Calls,
}

#[async_trait]
impl RemoteRunnerProvider for Counting {
    fn id(&self) -> RemoteRunnerProviderId {
        self.inner.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        self.inner.capabilities()
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.inner.validate_destination(destination).await
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let inner = self.inner.create_session(destination).await?;
        Ok(Arc::new(CountingSession {
            inner,
            calls: self.calls.clone(),
        }))
    }
}

#[async_trait]
impl LayeredSession for CountingSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
        self.inner.canonicalize(path).await
    }
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} must be set when RUNNER_TEST_SSH=1"))
}

/// The test server as a destination (as in providers/ssh/tests/support).
fn destination() -> Result<RunnerDestination, String> {
    let port: u16 = var("RUNNER_TEST_SSH_PORT")?
        .parse()
        .map_err(|e| format!("RUNNER_TEST_SSH_PORT: {e}"))?;
    Ok(RunnerDestination {
        id: "ssh-tools".into(),
        provider_id: "ssh".into(),
        config: serde_json::json!({
            "host": var("RUNNER_TEST_SSH_HOST")?,
            "port": port,
            "user": var("RUNNER_TEST_SSH_USER")?,
            "identity_file": var("RUNNER_TEST_SSH_KEY")?,
            "known_hosts_file": var("RUNNER_TEST_SSH_KNOWN_HOSTS")?,
        }),
        default_manifest: Default::default(),
        artifacts: None,
    })
}

async fn read_file_resolves_its_path_once() -> Result<(), String> {
    let calls = Calls::default();
    let mut registry = RunnerRegistry::new();
    registry
        .register(Arc::new(Counting {
            inner: runner_ssh::SshProvider::new(),
            calls: calls.clone(),
        }))
        .map_err(|e| e.to_string())?;
    let config = ToolsConfig {
        destinations: vec![ToolDestination {
            destination: destination()?,
            workspace: None,
            read_roots: vec![],
        }],
    };
    let tools = ToolSet::new(registry, config)
        .await
        .map_err(|e| format!("ToolSet::new: {e}"))?;
    // Opens the session, which resolves the workspace root once for good.
    tools
        .call(
            "write_file",
            serde_json::json!({ "path": "notes/a.txt", "content": "hello" }),
        )
        .await
        .map_err(|e| format!("write_file: {e}"))?;
    calls.lock().unwrap_or_else(|p| p.into_inner()).clear();

    let read = tools
        .call("read_file", serde_json::json!({ "path": "notes/a.txt" }))
        .await
        .map_err(|e| format!("read_file: {e}"))?;
    let seen = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tools.close().await.map_err(|e| format!("close: {e}"))?;
    if !read.to_string().contains("hello") {
        return Err(format!("read_file returned {read}"));
    }
    match seen.as_slice() {
        [only] if only.ends_with("notes/a.txt") => Ok(()),
        _ => Err(format!(
            "one read_file reached the ssh session with {} canonicalize calls (expected one, \
             of notes/a.txt): {seen:?}",
            seen.len()
        )),
    }
}

fn main() -> ExitCode {
    BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    )
    .run(vec![async_trial(
        "read_file_resolves_its_path_once",
        read_file_resolves_its_path_once,
    )])
}
