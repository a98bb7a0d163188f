//! The conformance suite against `MemoryProvider`, with the mounts and
//! artifacts areas run against an in-process S3 server.

use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_testkit::{Conformance, MemoryProvider, S3TestServer};

fn main() -> std::process::ExitCode {
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    let destination = RunnerDestination {
        id: "memory-conformance".into(),
        provider_id: "memory".into(),
        config: serde_json::Value::Null,
        default_manifest: Default::default(),
        artifacts: None,
    };
    Conformance::new(Arc::new(MemoryProvider::default()), destination)
        .with_object_store(server.target())
        .run()
}
