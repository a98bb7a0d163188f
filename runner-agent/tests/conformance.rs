//! unix-local served by agent child processes against the whole conformance
//! kit: every session is a `runner-agent serve --socket` daemon, reached
//! through `runner-agent connect` children; the kit composes the layer stack.

mod support;

use std::process::ExitCode;
use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_testkit::{Conformance, S3TestServer};

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
    Conformance::new(Arc::new(support::AgentProvider::new()), destination)
        .with_object_store(server.target())
        .with_label("unix-local-agent")
        .run()
}
