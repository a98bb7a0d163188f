//! `runner-conformance` end to end: against unix-local it passes; against a
//! broken agent and a provider that lies about its capabilities it fails and
//! names the failing checks, in its output and in the JSON report.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerResult, RunnerSessionState,
};
use runner_conformance::{Cli, Report};
use runner_testkit::MemoryProvider;

const BINARY: &str = env!("CARGO_BIN_EXE_runner-conformance");

fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::write(path, value.to_string()).expect("write a JSON file");
}

fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).expect("the report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

#[test]
fn binary_passes_against_unix_local() {
    let dir = tempfile::tempdir().expect("temp dir");
    let destination = dir.path().join("local.json");
    let report = dir.path().join("report.json");
    std::fs::create_dir(dir.path().join("artifacts")).expect("artifact store directory");
    write_json(
        &destination,
        &serde_json::json!({
            "id": "cli-local",
            "provider_id": "unix-local",
            "config": {
                "workspaces_dir": dir.path().join("workspaces"),
                "snapshot_dir": dir.path().join("snapshots"),
            },
            "artifacts": { "uri": format!("file://{}/artifacts", dir.path().display()) },
        }),
    );
    let output = Command::new(BINARY)
        .arg("--destination")
        .arg(&destination)
        .arg("--report")
        .arg(&report)
        .arg("--capabilities")
        .output()
        .expect("run runner-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("test ")
            && l.contains(" exec_exit_codes ")
            && l.ends_with(" ok")),
        "one line per check: {stdout}"
    );
    assert!(stdout.contains("capabilities of unix-local"), "{stdout}");
    assert!(
        stdout.contains("no capability flag contradicts the checks"),
        "{stdout}"
    );
    let report = read_report(&report);
    assert_eq!(report.provider_id, "unix-local");
    assert_eq!(report.failed, 0, "{:#?}", report.failed_checks());
    assert!(report.passed >= 80, "{}", report.summary_line);
    assert!(stdout.contains(&report.summary_line), "{stdout}");
    assert_eq!(
        report.checks.len() as u64,
        report.passed + report.skipped,
        "every check is in the report"
    );
    let exec = report
        .capabilities
        .iter()
        .find(|c| c.capability == "command_exec")
        .expect("command_exec in the report");
    assert!(
        exec.declared && !exec.flagged && exec.checks_passed > 10,
        "{exec:?}"
    );
    let detachable = report
        .capabilities
        .iter()
        .find(|c| c.capability == "detachable")
        .expect("detachable in the report");
    assert_eq!(
        detachable.observed,
        "declared false, the operation answered Unsupported"
    );
}

/// The destination a new user writes first: a root and nothing else. Its
/// sessions name no artifact store, so they do not claim `artifact_export`,
/// and the run has no failure.
///
/// Every check of this run shares the one root. While `files_read_limit_bounded`
/// runs, its 64 GiB sparse file sits in that root, and a snapshot check running
/// at the same time would tar it whole (filling the disk), so it is skipped
/// here; it runs in the owned-workspace run above.
#[test]
fn binary_passes_against_a_plain_unix_local_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root directory");
    let destination = dir.path().join("d.json");
    write_json(
        &destination,
        &serde_json::json!({ "id": "d", "provider_id": "unix-local", "config": { "root": root } }),
    );
    let report = dir.path().join("report.json");
    let output = Command::new(BINARY)
        .arg("--destination")
        .arg(&destination)
        .arg("--report")
        .arg(&report)
        .args(["--", "--skip", "files_read_limit_bounded"])
        .output()
        .expect("run runner-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = read_report(&report);
    assert_eq!(report.failed, 0, "{:#?}\n{stderr}", report.failed_checks());
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        report.summary_line.contains(" 0 failed"),
        "{}",
        report.summary_line
    );
    let export = report
        .checks
        .iter()
        .find(|c| c.name == "capabilities_artifact_export")
        .expect("the artifact export check ran");
    assert_eq!(export.status, "passed", "{export:?}");
}

#[test]
fn binary_refuses_the_artifact_store_in_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let destination = dir.path().join("old.json");
    write_json(
        &destination,
        &serde_json::json!({
            "id": "old", "provider_id": "unix-local",
            "config": { "root": dir.path(), "artifacts": { "uri": "file:///tmp" } },
        }),
    );
    let output = Command::new(BINARY)
        .arg("--destination")
        .arg(&destination)
        .output()
        .expect("run runner-conformance");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("config.artifacts") && stderr.contains("`artifacts` field"),
        "{stderr}"
    );
}

#[test]
fn binary_fails_and_names_checks_when_the_agent_is_broken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let destination = dir.path().join("agent.json");
    let report = dir.path().join("report.json");
    // `/bin/false` is an ELF binary for this architecture that exits at
    // once: every session's agent is gone before it prints its status.
    write_json(
        &destination,
        &serde_json::json!({
            "id": "cli-broken-agent",
            "provider_id": "agent",
            "config": {
                "agent_binaries": { std::env::consts::ARCH: "/bin/false" },
                "run_dir": dir.path(),
            },
        }),
    );
    let output = Command::new(BINARY)
        .arg("--destination")
        .arg(&destination)
        .arg("--report")
        .arg(&report)
        .args(["--", "capabilities_"])
        .output()
        .expect("run runner-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(101), "{stdout}");
    assert!(stdout.contains("failed checks ("), "{stdout}");
    assert!(
        stdout.contains("capabilities_command_exec: create_session"),
        "{stdout}"
    );
    let report = read_report(&report);
    assert!(
        report.failed > 0 && report.passed == 0,
        "{}",
        report.summary_line
    );
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.name.starts_with("capabilities_")),
        "the filter reached the harness"
    );
    let failed = report.failed_checks();
    assert!(failed.contains(&"capabilities_file_read"), "{failed:?}");
    let message = report
        .checks
        .iter()
        .find(|c| c.name == "capabilities_file_read")
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("unavailable"), "{message}");
}

#[test]
fn binary_refuses_an_unknown_provider() {
    let dir = tempfile::tempdir().expect("temp dir");
    let destination = dir.path().join("nowhere.json");
    write_json(
        &destination,
        &serde_json::json!({ "id": "x", "provider_id": "nowhere" }),
    );
    let output = Command::new(BINARY)
        .arg("--destination")
        .arg(&destination)
        .output()
        .expect("run runner-conformance");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"nowhere\""), "{stderr}");
    assert!(
        stderr.contains("unix-local, docker, ssh, memory, agent"),
        "{stderr}"
    );
}

/// `MemoryProvider` declaring `pausable` it does not have, and hiding
/// `file_management` it does have.
struct Liar(MemoryProvider);

#[async_trait]
impl RemoteRunnerProvider for Liar {
    fn id(&self) -> RemoteRunnerProviderId {
        self.0.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        RunnerCapabilities {
            pausable: true,
            file_management: false,
            ..self.0.capabilities()
        }
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.0.create_session(destination).await
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.0.resume_session(state).await
    }
}

#[test]
fn entry_point_flags_a_lying_provider() {
    let dir = tempfile::tempdir().expect("temp dir");
    let destination = dir.path().join("memory.json");
    let report_path = dir.path().join("report.json");
    write_json(
        &destination,
        &serde_json::json!({
            "id": "cli-liar",
            "provider_id": "memory",
            "config": {},
        }),
    );
    let cli = Cli {
        destination,
        report: Some(report_path.clone()),
        capabilities: true,
        check_timeout: 60,
        // Keeps the nested run's per-check lines out of this test's output.
        harness: vec!["--logfile".into(), "/dev/null".into()],
    };
    let providers: Vec<Arc<dyn RemoteRunnerProvider>> =
        vec![Arc::new(Liar(MemoryProvider::default()))];
    let mut out = Vec::new();
    let report = runner_conformance::run(&cli, &providers, &mut out).expect("the run happens");
    let out = String::from_utf8_lossy(&out);
    assert!(report.failed > 0, "{}", report.summary_line);
    assert_ne!(report.exit_code(), std::process::ExitCode::SUCCESS);
    for check in [
        "capabilities_session_matches_provider",
        "capabilities_pausable",
        "capabilities_file_management",
    ] {
        assert!(report.failed_checks().contains(&check), "{check}: {out}");
        assert!(out.contains(&format!("  {check}: ")), "{check}: {out}");
    }
    assert_eq!(
        report.flagged_capabilities(),
        vec!["pausable", "file_management"],
        "{out}"
    );
    assert!(
        out.contains("flagged capabilities: pausable, file_management"),
        "{out}"
    );
    assert!(
        out.contains("declared false but the operation did not answer Unsupported"),
        "{out}"
    );
    assert_eq!(read_report(&report_path), report);
}
