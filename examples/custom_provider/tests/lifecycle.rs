//! What the provider itself adds to the agent's session: the daemon's start
//! and end, its socket directory, the config it refuses. Needs a runner-agent
//! binary in `RUNNER_AGENT_BINARY` (scripts/test.sh exports one); without it
//! these tests fail saying so.

use std::path::Path;
use std::time::Duration;

use runner_agent::delivery::AGENT_BINARY_ENV;
use runner_api::{RemoteRunnerProvider, RunnerCommandRequest, RunnerDestination, RunnerErrorKind};
use runner_example_custom_provider::AgentProvider;

fn require_agent_binary() {
    assert!(
        std::env::var_os(AGENT_BINARY_ENV).is_some_and(|path| !path.is_empty()),
        "{AGENT_BINARY_ENV} is not set: build runner-agent (`RUSTFLAGS=\"-C \
         target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu \
         -p runner-agent`) and export its path (scripts/test.sh does both)"
    );
}

fn destination(dir: &Path, config: serde_json::Value) -> RunnerDestination {
    let mut base = serde_json::json!({
        "run_dir": dir.join("run"),
        "session": { "workspaces_dir": dir.join("workspaces"), "snapshot_dir": dir.join("snapshots") },
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), config.as_object()) {
        base.extend(extra.clone());
    }
    RunnerDestination {
        id: "lifecycle".into(),
        provider_id: "agent".into(),
        config: base,
        default_manifest: Default::default(),
        artifacts: None,
    }
}

/// The pid of the agent a command's shell runs under, checked by its command line.
fn agent_pid(stdout: &str) -> u32 {
    let pid: u32 = stdout.trim().parse().expect("a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the agent's cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(" serve --socket "),
        "pid {pid} is not the agent: {cmdline}"
    );
    pid
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(read) => read
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    }
}

#[tokio::test]
async fn close_ends_the_daemon_and_removes_its_socket_directory() {
    require_agent_binary();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let provider = AgentProvider::default();
    let session = provider
        .create_session(destination(dir.path(), serde_json::json!({})))
        .await
        .expect("create_session");
    assert_eq!(session.state().provider_id, "agent");
    let run = dir.path().join("run");
    assert_eq!(
        entries(&run).len(),
        1,
        "one socket directory while the session runs"
    );
    let out = session
        .run_command(
            RunnerCommandRequest::new("c1", "sh", ["-c".to_string(), "echo $PPID".to_string()])
                .with_timeout_ms(30_000),
        )
        .await
        .expect("run_command");
    assert!(out.success(), "{out:?}");
    let agent_pid = agent_pid(&out.stdout);
    session.close().await.expect("close");
    session.close().await.expect("a second close");
    assert!(
        entries(&run).is_empty(),
        "socket directories left: {:?}",
        entries(&run)
    );
    let gone = Path::new("/proc").join(agent_pid.to_string());
    for _ in 0..100 {
        if !gone.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !gone.exists(),
        "the agent (pid {agent_pid}) still runs after close"
    );
}

#[tokio::test]
async fn a_dropped_session_takes_its_daemon_along() {
    require_agent_binary();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let provider = AgentProvider::default();
    let session = provider
        .create_session(destination(dir.path(), serde_json::json!({})))
        .await
        .expect("create_session");
    let out = session
        .run_command(
            RunnerCommandRequest::new("c1", "sh", ["-c".to_string(), "echo $PPID".to_string()])
                .with_timeout_ms(30_000),
        )
        .await
        .expect("run_command");
    let agent_pid = agent_pid(&out.stdout);
    drop(session);
    let alive = Path::new("/proc")
        .join(agent_pid.to_string())
        .join("status");
    let mut exited = false;
    for _ in 0..200 {
        // Gone, or a zombie waiting for tokio's reaper.
        match std::fs::read_to_string(&alive) {
            Err(_) => exited = true,
            Ok(status) => {
                exited = status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            }
        }
        if exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exited,
        "the agent (pid {agent_pid}) outlived its dropped session by 10 s"
    );
}

#[tokio::test]
async fn the_agents_refusal_of_a_session_config_comes_back_typed() {
    require_agent_binary();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let provider = AgentProvider::default();
    let bad = destination(
        dir.path(),
        serde_json::json!({ "session": { "no_such_key": true } }),
    );
    let err = provider
        .create_session(bad)
        .await
        .map(|_| ())
        .expect_err("a session config the agent refuses");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("no_such_key"), "{err}");
    assert!(
        entries(&dir.path().join("run")).is_empty(),
        "a failed start leaves no socket directory"
    );
}

#[tokio::test]
async fn the_provider_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let provider = AgentProvider::default();
    let unknown = destination(dir.path(), serde_json::json!({ "agent": "/bin/true" }));
    let err = provider
        .validate_destination(&unknown)
        .await
        .expect_err("an unknown key");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("agent"), "{err}");
    let relative = destination(dir.path(), serde_json::json!({ "run_dir": "run" }));
    let err = provider
        .validate_destination(&relative)
        .await
        .expect_err("a relative run_dir");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    let missing = destination(
        dir.path(),
        serde_json::json!({ "agent_binaries": { std::env::consts::ARCH: dir.path().join("none") } }),
    );
    let err = provider
        .create_session(missing)
        .await
        .map(|_| ())
        .expect_err("a configured binary that does not exist");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    // An ELF binary that is no agent: it exits without a status line.
    let broken = destination(
        dir.path(),
        serde_json::json!({ "agent_binaries": { std::env::consts::ARCH: "/bin/false" } }),
    );
    let err = provider
        .create_session(broken)
        .await
        .map(|_| ())
        .expect_err("a binary that exits at once");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("create_session"), "{err}");
    assert!(
        entries(&dir.path().join("run")).is_empty(),
        "a failed start leaves no socket directory"
    );
}
