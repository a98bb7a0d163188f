//! The agent provider against the whole conformance kit: every session is a
//! `runner-agent serve --socket` daemon started as a child of this test.
//!
//! The agent binary is the one `RUNNER_AGENT_BINARY` names (scripts/test.sh
//! builds the static one docker and ssh deliver and exports it); without it
//! the run fails, saying how to build one. The version-mismatch check
//! delivers the `runner-agent-skewed` fixture `RUNNER_AGENT_SKEWED_BINARY`
//! names.

use std::process::ExitCode;
use std::sync::Arc;

use runner_agent::delivery::AGENT_BINARY_ENV;
use runner_api::RunnerDestination;
use runner_example_custom_provider::AgentProvider;
use runner_testkit::{Conformance, S3TestServer, skewed_agent_destination};

fn main() -> ExitCode {
    if std::env::var_os(AGENT_BINARY_ENV).is_none_or(|path| path.is_empty()) {
        eprintln!(
            "{AGENT_BINARY_ENV} is not set: the agent provider needs a runner-agent binary. Build \
             one with `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target \
             x86_64-unknown-linux-gnu -p runner-agent` and export {AGENT_BINARY_ENV}=\
             $PWD/target/x86_64-unknown-linux-gnu/release/runner-agent (scripts/test.sh does both)"
        );
        return ExitCode::FAILURE;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let destination = RunnerDestination {
        id: "conformance".into(),
        provider_id: "agent".into(),
        config: serde_json::json!({
            "run_dir": dir.path().join("run"),
            "session": {
                "workspaces_dir": dir.path().join("workspaces"),
                "snapshot_dir": dir.path().join("snapshots"),
            },
        }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    let skewed = skewed_agent_destination(&destination).expect("the skewed agent fixture");
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    Conformance::new(Arc::new(AgentProvider::default()), destination)
        .with_object_store(server.target())
        .with_skewed_agent(skewed)
        .run()
}
