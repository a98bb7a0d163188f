//! Running shell snippets in a session and waiting for background commands.

use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerSession, RunnerCommandRequest, RunnerCommandResult, RunnerProcessInfo,
    RunnerProcessState,
};

use crate::outcome::{CheckResult, Expect, shorten};

/// Eight hex digits of a fresh UUID.
pub(crate) fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A command id nobody else uses: `conformance-<label>-<uuid>`.
pub(crate) fn unique_id(label: &str) -> String {
    format!("conformance-{label}-{}", uuid::Uuid::new_v4().simple())
}

/// `sh -c script` with a unique id, run in the session's workspace root.
pub(crate) fn shell(
    session: &dyn RemoteRunnerSession,
    label: &str,
    script: &str,
) -> RunnerCommandRequest {
    RunnerCommandRequest::shell(unique_id(label), script).with_cwd(session.workspace_root())
}

/// One line describing a command result, for failure messages.
pub(crate) fn describe_result(result: &RunnerCommandResult) -> String {
    format!(
        "exit_code {:?}, signal {:?}, timed_out {}, cancelled {}, stdout {}, stderr {}",
        result.exit_code,
        result.signal,
        result.timed_out,
        result.cancelled,
        shorten(&format!("{:?}", result.stdout)),
        shorten(&format!("{:?}", result.stderr)),
    )
}

/// Runs `script` with `sh -c` (60 s limit) and returns the result, whatever the exit.
pub(crate) async fn sh(
    session: &dyn RemoteRunnerSession,
    script: &str,
) -> CheckResult<RunnerCommandResult> {
    session
        .run_command(shell(session, "sh", script).with_timeout_ms(60_000))
        .await
        .or_fail(format!("run_command sh -c {:?}", shorten(script)))
}

/// Runs `script` with `sh -c` and returns its stdout; a failure unless it exits 0.
pub(crate) async fn sh_ok(session: &dyn RemoteRunnerSession, script: &str) -> CheckResult<String> {
    let result = sh(session, script).await?;
    if !result.success() {
        return Err(format!(
            "run_command sh -c {:?}: expected exit 0, got {}",
            shorten(script),
            describe_result(&result)
        ));
    }
    Ok(result.stdout)
}

/// Polls `command_status` until the command has exited.
pub(crate) async fn wait_exited(
    session: &dyn RemoteRunnerSession,
    command_id: &str,
    within: Duration,
) -> CheckResult<RunnerProcessInfo> {
    let deadline = Instant::now() + within;
    loop {
        let info = session
            .command_status(&command_id.to_string())
            .await
            .or_fail(format!("command_status {command_id:?}"))?;
        if info.state == RunnerProcessState::Exited {
            return Ok(info);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "command {command_id:?} was still running {} s after it was expected to exit \
                 ({} stdout bytes, {} stderr bytes so far)",
                within.as_secs(),
                info.stdout_bytes,
                info.stderr_bytes
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Quotes `text` for a POSIX shell.
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
