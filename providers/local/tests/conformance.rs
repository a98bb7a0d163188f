//! The unix-local provider against the whole conformance kit.

use std::process::ExitCode;
use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_local::LocalProvider;
use runner_testkit::{Conformance, S3TestServer};

fn main() -> ExitCode {
    // Every session gets a fresh owned workspace; snapshots stay in this run's temp dir.
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
    // The mounts and artifacts areas run against an in-process S3 server; the
    // kit composes the layer stack around the bare provider with its resolver.
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    Conformance::new(Arc::new(LocalProvider::default()), destination)
        .with_object_store(server.target())
        .run()
}
