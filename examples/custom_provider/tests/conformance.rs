//! The agent provider against the whole conformance kit.

use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_example_custom_provider::AgentProvider;
use runner_testkit::Conformance;

fn main() -> std::process::ExitCode {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let destination = RunnerDestination {
        id: "conformance".into(),
        provider_id: "agent".into(),
        config: serde_json::json!({
            "agent": env!("CARGO_BIN_EXE_example-agent"),
            "workspaces_dir": dir.path(),
        }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    Conformance::new(Arc::new(AgentProvider::default()), destination).run()
}
