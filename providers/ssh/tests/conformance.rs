//! The ssh provider against the whole conformance kit, over a real sshd on
//! 127.0.0.1 (`scripts/test.sh` starts one and sets `RUNNER_TEST_SSH_*`).

use std::process::ExitCode;
use std::sync::Arc;

use runner_api::{RemoteRunnerProvider, RunnerCommandRequest, RunnerDestination};
use runner_ssh::SshProvider;
use runner_testkit::{
    BackendGate, Conformance, S3TestServer, skewed_agent_destination, socket_breaker, state_socket,
};

mod support;

fn destination(snapshot_dir: &str) -> RunnerDestination {
    let config = support::config(serde_json::json!({ "snapshot_dir": snapshot_dir }))
        .unwrap_or_else(|e| panic!("{e}"));
    support::destination("conformance", config)
}

/// Removes this run's snapshot directory on the server (snapshots outlive
/// their sessions by design).
fn remove_snapshots(snapshot_dir: &str) {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    runtime.block_on(async {
        let provider = SshProvider::new();
        if let Ok(session) = provider.create_session(destination(snapshot_dir)).await {
            let request =
                RunnerCommandRequest::shell("cleanup", format!("rm -rf \"$HOME/{snapshot_dir}\""));
            let _ = session.run_command(request).await;
            let _ = session.close().await;
        }
    });
}

fn main() -> ExitCode {
    let gate = BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    );
    // Relative to the remote home; one directory per run.
    let snapshot_dir = format!(
        ".runners/conformance-snapshots-{}",
        uuid::Uuid::new_v4().simple()
    );
    // The mounts and artifacts areas run against an in-process S3 server on
    // this side; the remote host never talks to it. The kit wraps the bare
    // provider in the layer stack, with the server's resolver.
    let server = match S3TestServer::start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("starting the in-process S3 test server failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = gate.conformance("ssh", || {
        let destination = destination(&snapshot_dir);
        let skewed = skewed_agent_destination(&destination).expect("the skewed agent fixture");
        Conformance::new(Arc::new(SshProvider::new()), destination)
            .with_object_store(server.target())
            .with_skewed_agent(skewed)
            .with_connection_breaker(socket_breaker(state_socket))
    });
    if gate.requested() {
        remove_snapshots(&snapshot_dir);
    }
    code
}
