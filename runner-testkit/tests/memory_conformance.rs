//! The conformance suite against `MemoryProvider`.

use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_testkit::{Conformance, MemoryProvider};

fn main() -> std::process::ExitCode {
    let destination = RunnerDestination {
        id: "memory-conformance".into(),
        provider_id: "memory".into(),
        config: serde_json::Value::Null,
        default_manifest: Default::default(),
    };
    Conformance::new(Arc::new(MemoryProvider::default()), destination).run()
}
