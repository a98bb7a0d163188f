//! unix-local served by agent child processes against the whole conformance
//! kit: every session is a `runner-agent serve --socket` daemon, reached
//! through `runner-agent connect` children; the kit composes the layer stack.

mod support;

use std::process::ExitCode;
use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_testkit::{Conformance, S3TestServer, socket_breaker};

fn main() -> ExitCode {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let destination = RunnerDestination {
        id: "conformance".into(),
        provider_id: "unix-local".into(),
        config: serde_json::json!({
            "workspaces_dir": dir.path().join("workspaces"),
            "snapshot_dir": dir.path().join("snapshots"),
        }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    let provider = support::AgentProvider::new();
    let sockets = provider.sockets.clone();
    let breaker = socket_breaker(move |state| {
        sockets
            .lock()
            .unwrap()
            .get(&state.session_id)
            .map(|socket| socket.display().to_string())
            .ok_or_else(|| format!("no agent of session {}", state.session_id))
    });
    Conformance::new(Arc::new(provider), destination)
        .with_object_store(server.target())
        .with_connection_breaker(breaker)
        .with_label("unix-local-agent")
        .run()
}
