//! The session manager of `runner-api` over the provider under test: the idle
//! rule pauses (or closes) honestly, activity and agent turns hold it off, and
//! the maximum lifetime closes.
//!
//! Limits are milliseconds; every wait polls for the state it needs with a
//! generous bound, and nothing asserts how fast something happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{RemoteRunnerSession, RunnerErrorKind, RunnerProcessState};
use runner_lifecycle::{
    CloseReason, IdleAction, ManagedSession, ManagedStatus, ManagerConfig, SessionManager,
};

use crate::catalogue::{Area, Capability, Check};
use crate::commands::{sh_ok, shell};
use crate::context::Cx;
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq};

/// How long a state change may take to show.
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Lifecycle;
    vec![
        Check::new(
            "lifecycle_manager_idle",
            a,
            &[],
            "SessionManager: an idle session is paused where the provider is pausable (and the next call resumes it), closed otherwise.",
            |cx| Box::pin(idle(cx)),
        ),
        Check::new(
            "lifecycle_manager_activity_holds_idle",
            a,
            &[Capability::CommandExec, Capability::BackgroundProcesses],
            "SessionManager: a running background command and a held turn guard are activity; the idle rule waits for both.",
            |cx| Box::pin(activity_holds_idle(cx)),
        ),
        Check::new(
            "lifecycle_manager_max_lifetime",
            a,
            &[],
            "SessionManager: max_lifetime closes a session even inside an agent turn.",
            |cx| Box::pin(max_lifetime(cx)),
        ),
    ]
}

fn config(idle_ms: Option<u64>, max_ms: Option<u64>) -> ManagerConfig {
    ManagerConfig {
        idle_timeout: idle_ms.map(Duration::from_millis),
        max_lifetime: max_ms.map(Duration::from_millis),
        keepalive_interval: None,
        on_idle: IdleAction::Pause,
        check_interval: Duration::from_millis(25),
    }
}

/// A manager over the provider under test and one managed session of the
/// destination, closed after the check.
async fn managed(
    cx: &Cx,
    config: ManagerConfig,
) -> CheckResult<(SessionManager, Arc<ManagedSession>)> {
    let manager =
        SessionManager::new(cx.provider.clone(), config).or_fail("SessionManager::new")?;
    let session = manager
        .create_session(cx.destination.clone())
        .await
        .or_fail("SessionManager::create_session")?;
    cx.adopt(session.clone());
    Ok((manager, session))
}

/// Polls until the status is `wanted`.
async fn status_becomes(session: &ManagedSession, wanted: ManagedStatus) -> CheckResult {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = session.status();
        if status == wanted {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "managed session {}: expected status {wanted:?} within {} s, still {status:?}",
                session.session_id(),
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn idle(cx: Cx) -> CheckResult {
    let (_manager, s) = managed(&cx, config(Some(200), None)).await?;
    if cx.caps.pausable {
        status_becomes(&s, ManagedStatus::Paused { by_manager: true }).await?;
        if cx.caps.command_exec {
            let out = sh_ok(s.as_ref(), "echo resumed").await?;
            ensure_eq!(out, "resumed\n", "stdout of a command after an idle pause");
        } else if cx.caps.file_read {
            let missing = runner_api::RunnerFileReadRequest::new("conformance-missing-file");
            let result = s.read_file(missing).await;
            ensure!(
                !matches!(&result, Err(e) if e.kind() == RunnerErrorKind::SessionClosed),
                "read_file after an idle pause: the session is closed"
            );
        }
    } else {
        status_becomes(&s, ManagedStatus::Closed(CloseReason::Idle)).await?;
    }
    s.close().await.or_fail("close")
}

async fn activity_holds_idle(cx: Cx) -> CheckResult {
    let (_manager, s) = managed(&cx, config(Some(150), None)).await?;
    let inner = s.inner().clone();
    // The background command runs until a gate file appears; the check opens
    // the gate through the inner session, which is not activity.
    let gate = format!(".conformance-gate-{}", crate::commands::unique_suffix());
    let request = shell(
        inner.as_ref(),
        "bg",
        &format!("while [ ! -e {gate} ]; do sleep 0.05; done; rm -f {gate}"),
    );
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail("start_command waiting for a gate")?;
    // While the command runs (watched through the inner session), the session
    // stays active, for many idle periods.
    let running_since = Instant::now();
    while running_since.elapsed() < Duration::from_millis(1_200) {
        let status = s.status();
        let info = inner
            .command_status(&id)
            .await
            .or_fail(format!("command_status {id}"))?;
        ensure!(
            info.state == RunnerProcessState::Running,
            "the background command ended before its gate opened: {info:?}"
        );
        ensure_eq!(
            status,
            ManagedStatus::Active,
            "status while a background command runs"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A held turn is activity too. It begins while the command still runs, so
    // the idle rule never had a moment without activity; then the command
    // ends and only the turn holds the rule off.
    let turn = s.begin_turn();
    sh_ok(inner.as_ref(), &format!(": > {gate}")).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = inner
            .command_status(&id)
            .await
            .or_fail(format!("command_status {id} after opening the gate"))?;
        if info.state != RunnerProcessState::Running {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the background command did not end within {PATIENCE:?} of opening its gate"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ensure_eq!(s.status(), ManagedStatus::Active, "status during a turn");
    }
    drop(turn);
    let after = if cx.caps.pausable {
        ManagedStatus::Paused { by_manager: true }
    } else {
        ManagedStatus::Closed(CloseReason::Idle)
    };
    status_becomes(&s, after).await?;
    s.close().await.or_fail("close")
}

async fn max_lifetime(cx: Cx) -> CheckResult {
    let (_manager, s) = managed(&cx, config(None, Some(500))).await?;
    let _turn = s.begin_turn();
    status_becomes(&s, ManagedStatus::Closed(CloseReason::MaxLifetime)).await?;
    let inner: &Arc<dyn RemoteRunnerSession> = s.inner();
    if cx.caps.command_exec {
        let request = shell(inner.as_ref(), "closed", "true");
        inner.run_command(request).await.fails_with(
            RunnerErrorKind::SessionClosed,
            "run_command after the maximum lifetime",
        )?;
    }
    Ok(())
}
