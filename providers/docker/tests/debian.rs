//! A typical agent episode on a real distribution: the Debian image
//! `scripts/provision/docker-debian.sh` builds (minbase with python3), through
//! the session API as an agent's tools drive it. It computes with `python3 -c`,
//! writes a module and its unit tests, runs the test runner, fixes the failing
//! function through a read and a write, looks for pip, greps what it wrote, and
//! serves a directory with `python3 -m http.server` in the background, fetched
//! from the host through `expose_port`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerDestination, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerPortRequest, RunnerProcessState,
};
use runner_docker::DockerProvider;
use runner_testkit::{BackendGate, async_trial, http_fetch};

type TestResult = Result<(), String>;

/// The image the provisioning script exports; required once the run asked
/// for the Debian tests.
fn image() -> Result<String, String> {
    std::env::var("RUNNER_TEST_DOCKER_DEBIAN_IMAGE").map_err(|_| {
        "RUNNER_TEST_DOCKER_DEBIAN=1 but RUNNER_TEST_DOCKER_DEBIAN_IMAGE is not set \
         (scripts/provision/docker-debian.sh exports both)"
            .to_string()
    })
}

/// Runs `script` with `sh -c` in the workspace and returns the whole result.
async fn run(
    session: &dyn RemoteRunnerSession,
    script: &str,
) -> Result<RunnerCommandResult, String> {
    let request =
        RunnerCommandRequest::shell(format!("t-{}", uuid::Uuid::new_v4().simple()), script)
            .with_timeout_ms(60_000);
    session
        .run_command(request)
        .await
        .map_err(|e| format!("run_command {script:?}: {e}"))
}

/// Runs `script` and returns its stdout; fails unless it exits with 0.
async fn sh(session: &dyn RemoteRunnerSession, script: &str) -> Result<String, String> {
    let result = run(session, script).await?;
    if result.exit_code != Some(0) {
        return Err(format!(
            "sh -c {script:?}: exit {:?}, signal {:?}, stderr {:?}",
            result.exit_code, result.signal, result.stderr
        ));
    }
    Ok(result.stdout)
}

/// Fails unless `actual` equals `expected`, naming `what`.
fn expect_eq(what: &str, actual: &str, expected: &str) -> TestResult {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}

/// Fails unless `haystack` contains `needle`, naming `what`.
fn expect_contains(what: &str, haystack: &str, needle: &str) -> TestResult {
    if haystack.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what}: expected {needle:?} in {haystack:?}"))
    }
}

async fn write(session: &dyn RemoteRunnerSession, path: &str, contents: &str) -> TestResult {
    session
        .write_file(RunnerFileWriteRequest::new(path, contents))
        .await
        .map_err(|e| format!("write_file {path}: {e}"))
}

/// Polls a background command's output until `done` holds for it, for up to
/// 30 s; fails with what it last saw.
async fn poll_output(
    session: &dyn RemoteRunnerSession,
    command_id: &str,
    what: &str,
    done: impl Fn(&RunnerCommandOutput) -> bool,
) -> Result<RunnerCommandOutput, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = session
            .command_output(&command_id.to_string(), 0)
            .await
            .map_err(|e| format!("command_output {command_id:?}: {e}"))?;
        if done(&output) {
            return Ok(output);
        }
        if Instant::now() > deadline || output.state != RunnerProcessState::Running {
            return Err(format!(
                "{what}: not seen within 30 s; state {:?}, status {:?}, stdout {:?}, stderr {:?}",
                output.state, output.status, output.stdout, output.stderr
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The module the agent writes first: `median` is wrong for an even count.
const STATS_PY: &str = r#"import sys


def mean(values):
    return sum(values) / len(values)


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    numbers = [float(arg) for arg in sys.argv[1:]]
    print(f"mean={mean(numbers):g} median={median(numbers):g}")
"#;

/// The buggy line and its fix.
const MEDIAN_BUG: &str = "    return ordered[len(ordered) // 2]\n";
const MEDIAN_FIX: &str = "    middle = len(ordered) // 2\n    if len(ordered) % 2 == 0:\n        return (ordered[middle - 1] + ordered[middle]) / 2\n    return ordered[middle]\n";

const TEST_STATS_PY: &str = r#"import unittest

from stats import mean, median


class StatsTest(unittest.TestCase):
    def test_mean(self):
        self.assertEqual(mean([1, 2, 3, 4]), 2.5)

    def test_median_of_an_even_count(self):
        self.assertEqual(median([4, 1, 3, 2]), 2.5)


if __name__ == "__main__":
    unittest.main()
"#;

/// The whole episode on one session of the Debian image.
async fn agent_episode() -> TestResult {
    let provider = DockerProvider::new();
    let destination = RunnerDestination {
        id: "docker-debian-tests".into(),
        provider_id: "docker".into(),
        config: serde_json::json!({ "image": image()?, "network": "none" }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    let session = provider
        .create_session(destination)
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let outcome = episode(&session).await;
    let closed = session.close().await;
    outcome?;
    closed.map_err(|e| format!("close: {e}"))
}

async fn episode(session: &Arc<dyn RemoteRunnerSession>) -> TestResult {
    let session = session.as_ref();

    // The image is the distribution the run asked for.
    let version = sh(session, "cat /etc/debian_version").await?;
    if !version.starts_with("12.") {
        return Err(format!(
            "/etc/debian_version: expected 12.x, got {version:?}"
        ));
    }

    // `python3 -c` computing something.
    let sum = sh(
        session,
        "python3 -c 'print(sum(i * i for i in range(1, 101)))'",
    )
    .await?;
    expect_eq("python3 -c sum of squares", &sum, "338350\n")?;

    // A script written with write_file and run.
    write(session, "calc/stats.py", STATS_PY).await?;
    let printed = sh(session, "python3 calc/stats.py 3 1 4 1 5").await?;
    expect_eq("python3 calc/stats.py", &printed, "mean=2.8 median=3\n")?;

    // The test runner finds the bug: exit status 1 and the failure summary.
    write(session, "calc/test_stats.py", TEST_STATS_PY).await?;
    let failing = run(session, "cd calc && python3 -m unittest -v test_stats").await?;
    if failing.exit_code != Some(1) {
        return Err(format!(
            "unittest with the bug: expected exit 1, got {:?} (stderr {:?})",
            failing.exit_code, failing.stderr
        ));
    }
    expect_contains(
        "unittest with the bug",
        &failing.stderr,
        "FAILED (failures=1)",
    )?;
    expect_contains(
        "unittest with the bug",
        &failing.stderr,
        "test_median_of_an_even_count",
    )?;

    // The fix, through a read and a write of the whole file.
    let read = session
        .read_file(RunnerFileReadRequest::new("calc/stats.py"))
        .await
        .map_err(|e| format!("read_file calc/stats.py: {e}"))?;
    let text = String::from_utf8(read.contents)
        .map_err(|e| format!("read_file calc/stats.py: not UTF-8: {e}"))?;
    expect_eq("read_file calc/stats.py", &text, STATS_PY)?;
    write(
        session,
        "calc/stats.py",
        &text.replace(MEDIAN_BUG, MEDIAN_FIX),
    )
    .await?;
    let passing = run(session, "cd calc && python3 -m unittest -v test_stats").await?;
    if passing.exit_code != Some(0) {
        return Err(format!(
            "unittest after the fix: expected exit 0, got {:?} (stderr {:?})",
            passing.exit_code, passing.stderr
        ));
    }
    expect_contains("unittest after the fix", &passing.stderr, "Ran 2 tests")?;
    expect_contains("unittest after the fix", &passing.stderr, "\nOK\n")?;

    // Looking for pip: minbase has none, and the agent sees Python's own
    // answer with its exit status; the package manager the image has knows
    // the interpreter.
    let pip = run(session, "python3 -m pip --version").await?;
    if pip.exit_code != Some(1) {
        return Err(format!(
            "python3 -m pip --version on minbase: expected exit 1, got {:?} (stdout {:?})",
            pip.exit_code, pip.stdout
        ));
    }
    expect_contains(
        "python3 -m pip --version",
        &pip.stderr,
        "No module named pip",
    )?;
    let package = sh(session, "dpkg-query -W -f '${Package} ${Version}' python3").await?;
    if !package.starts_with("python3 3.11") {
        return Err(format!(
            "dpkg-query python3: expected 3.11.x, got {package:?}"
        ));
    }

    // grep over the files written, with line numbers.
    let found = sh(session, "grep -rn 'def median' calc | sort").await?;
    expect_eq(
        "grep -rn 'def median' calc",
        &found,
        "calc/stats.py:8:def median(values):\n",
    )?;

    serve_and_fetch(session).await
}

/// `python3 -m http.server` in the background, polled until it serves, then
/// fetched from the host through the forwarded URL; its request log shows the
/// fetch, and cancelling it ends it.
async fn serve_and_fetch(session: &dyn RemoteRunnerSession) -> TestResult {
    let token = uuid::Uuid::new_v4().simple().to_string();
    write(session, "www/index.html", &token).await?;
    let command_id = "http-server".to_string();
    let server = RunnerCommandRequest::shell(
        command_id.clone(),
        "exec python3 -u -m http.server 8000 --bind 127.0.0.1 --directory www",
    );
    session
        .start_command(server)
        .await
        .map_err(|e| format!("start_command http.server: {e}"))?;
    poll_output(session, &command_id, "http.server's start line", |output| {
        output
            .stdout
            .contains("Serving HTTP on 127.0.0.1 port 8000")
    })
    .await?;
    let exposed = session
        .expose_port(RunnerPortRequest {
            port: 8000,
            label: None,
        })
        .await
        .map_err(|e| format!("expose_port 8000: {e}"))?;
    let Some(url) = exposed.url.as_deref() else {
        return Err(format!("expose_port 8000 returned no URL: {exposed:?}"));
    };
    let body = http_fetch(url, "index.html", Duration::from_secs(30)).await?;
    expect_eq("GET index.html through expose_port", &body, &token)?;
    poll_output(
        session,
        &command_id,
        "http.server's log of the GET",
        |output| output.stderr.contains("\"GET /index.html HTTP/1.0\" 200"),
    )
    .await?;
    let cancelled = session
        .cancel_command(&command_id)
        .await
        .map_err(|e| format!("cancel_command {command_id:?}: {e}"))?;
    if !cancelled {
        return Err("cancel_command of the running http.server returned false".into());
    }
    let ended = poll_output(session, &command_id, "http.server's end", |output| {
        output.state != RunnerProcessState::Running
    })
    .await?;
    match ended.status {
        Some(status) if status.cancelled => Ok(()),
        other => Err(format!(
            "http.server after cancel: expected a cancelled status, got {other:?}"
        )),
    }
}

fn main() -> ExitCode {
    let gate = BackendGate::new(
        "RUNNER_TEST_DOCKER_DEBIAN",
        "scripts/test.sh starts dockerd and builds the Debian image",
    );
    gate.run(vec![async_trial("agent_episode", agent_episode)])
}
