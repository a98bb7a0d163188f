//! Prints the p50 latency of `run_command(true)` through the agent, over a
//! child-process stdio transport (a `runner-agent connect` child, as a docker
//! exec would be, and a `serve --stdio` child), next to unix-local's direct
//! figure in the same run. Asserts only that every command succeeds; run
//! with `--nocapture` (and `--release` for figures worth quoting).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_agent::{AgentSession, command_connector};
use runner_api::{RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest};
use support::{ConnectPids, Launcher};

const WARMUP: usize = 20;
const RUNS: usize = 200;

async fn p50(session: &dyn RemoteRunnerSession, label: &str) -> Duration {
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..WARMUP + RUNS {
        let request =
            RunnerCommandRequest::new(format!("{label}-{i}"), "true", Vec::<String>::new());
        let started = Instant::now();
        let result = session.run_command(request).await.unwrap();
        let elapsed = started.elapsed();
        assert!(result.success(), "{result:?}");
        if i >= WARMUP {
            times.push(elapsed);
        }
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_command_true_p50_through_the_agent_and_direct() {
    let root = tempfile::tempdir().unwrap();
    let destination = support::root_destination("latency", root.path());
    let direct = runner_local::LocalProvider::default()
        .create_session(destination.clone())
        .await
        .unwrap();
    let direct_p50 = p50(direct.as_ref(), "direct").await;
    direct.close().await.unwrap();

    let launcher = Launcher::new();
    let agent = launcher.launch(&destination, None).await.unwrap();
    let bridged = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let bridged_p50 = p50(&bridged, "bridged").await;
    bridged.close().await.unwrap();

    let config = destination.config.to_string();
    let stdio = Arc::new(
        AgentSession::connect(command_connector(move || {
            let mut command = tokio::process::Command::new(support::agent_bin());
            command.args(["serve", "--stdio", "--config", &config]);
            command
        }))
        .await
        .unwrap(),
    );
    let stdio_p50 = p50(stdio.as_ref(), "stdio").await;
    stdio.close().await.unwrap();

    println!(
        "run_command(true) p50 over {RUNS} runs: unix-local direct {direct_p50:?}; through the \
         agent over a `connect` child {bridged_p50:?}; over a `serve --stdio` child {stdio_p50:?}"
    );
}
