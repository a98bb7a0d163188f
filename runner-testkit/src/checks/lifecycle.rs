//! lifecycle: `close`, `pause`/`resume`, `detach`/`rejoin_session`, `state`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runner_api::{
    RunnerArtifactExportRequest, RunnerCommandRequest, RunnerErrorKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerPortRequest, RunnerSessionState, RunnerSignal,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{shell, unique_id};
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, describe, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Lifecycle;
    vec![
        Check::new(
            "lifecycle_close_idempotent",
            a,
            &[],
            "close: \"Idempotent: closing twice is Ok\".",
            |cx| Box::pin(close_idempotent(cx)),
        ),
        Check::new(
            "lifecycle_closed_session_refuses",
            a,
            &[],
            "RemoteRunnerSession: \"Every session method returns SessionClosed after close\" (each op the capabilities claim).",
            |cx| Box::pin(closed_session_refuses(cx)),
        ),
        Check::new(
            "lifecycle_close_kills_processes",
            a,
            &[CommandExec, BackgroundProcesses],
            "close: \"Ends every process of the session\" — background trees are gone (counted from a second session).",
            |cx| Box::pin(close_kills_processes(cx)),
        ),
        Check::new(
            "lifecycle_pause_resume",
            a,
            &[Pausable, CommandExec, BackgroundProcesses],
            "pause: \"Stops every process … new commands are refused with InvalidRequest\"; resume continues them.",
            |cx| Box::pin(pause_resume(cx)),
        ),
        Check::new(
            "lifecycle_state_json_roundtrip",
            a,
            &[],
            "state: \"The durable state of this session\" serializes to JSON and back unchanged.",
            |cx| Box::pin(state_json_roundtrip(cx)),
        ),
        Check::new(
            "lifecycle_detach_rejoin",
            a,
            &[Detachable],
            "detach: \"the sandbox stays alive for rejoin_session\"; the handle is closed afterwards.",
            |cx| Box::pin(detach_rejoin(cx)),
        ),
        Check::new(
            "lifecycle_agent_version_mismatch_refused",
            a,
            &[],
            "An agent of another protocol version is refused: create_session fails with Unsupported naming both versions, and the provider goes on serving sessions.",
            |cx| Box::pin(agent_version_mismatch_refused(cx)),
        )
        .skewed(),
    ]
}

/// Closing twice is `Ok`.
async fn close_idempotent(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    s.close().await.or_fail("close")?;
    s.close().await.or_fail("a second close")?;
    s.close().await.or_fail("a third close")
}

/// After `close`, every operation the capabilities claim is `SessionClosed`.
async fn closed_session_refuses(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let state = s.state();
    s.close().await.or_fail("close")?;
    let mut wrong: Vec<String> = Vec::new();
    let mut expect = |op: &str, outcome: Result<(), runner_api::RunnerError>| match outcome {
        Err(e) if e.kind() == RunnerErrorKind::SessionClosed => {}
        Err(e) => wrong.push(format!("{op}: {}", describe(&e))),
        Ok(()) => wrong.push(format!("{op}: Ok")),
    };
    let id = unique_id("after-close");
    let path = PathBuf::from("after-close.txt");
    let caps = cx.caps.clone();
    if caps.command_exec {
        let request = RunnerCommandRequest::shell(id.clone(), "echo ran");
        expect("run_command", s.run_command(request).await.map(|_| ()));
    }
    if caps.cancellation {
        expect("cancel_command", s.cancel_command(&id).await.map(|_| ()));
    }
    if caps.background_processes {
        let request = RunnerCommandRequest::shell(id.clone(), "echo ran");
        expect("start_command", s.start_command(request).await.map(|_| ()));
        expect("list_commands", s.list_commands().await.map(|_| ()));
        expect("command_status", s.command_status(&id).await.map(|_| ()));
        expect("command_output", s.command_output(&id, 0).await.map(|_| ()));
        expect(
            "signal_command",
            s.signal_command(&id, RunnerSignal::Terminate).await,
        );
    }
    if caps.streaming {
        expect("stream_command", s.stream_command(&id, 0).await.map(|_| ()));
    }
    if caps.stdin {
        expect("write_stdin", s.write_stdin(&id, b"x".to_vec(), true).await);
    }
    if caps.file_read {
        expect(
            "read_file",
            s.read_file(RunnerFileReadRequest::new(&path))
                .await
                .map(|_| ()),
        );
    }
    if caps.file_write {
        let request = RunnerFileWriteRequest::new(&path, b"x".to_vec());
        expect("write_file", s.write_file(request).await);
    }
    if caps.file_management {
        expect(
            "list_dir",
            s.list_dir(&PathBuf::from(".")).await.map(|_| ()),
        );
        expect("stat", s.stat(&path).await.map(|_| ()));
        expect(
            "make_dir",
            s.make_dir(&PathBuf::from("after-close-dir")).await,
        );
        expect("remove", s.remove(&path, false).await);
        expect(
            "rename",
            s.rename(&path, &PathBuf::from("renamed.txt")).await,
        );
        expect(
            "canonicalize",
            s.canonicalize(&PathBuf::from(".")).await.map(|_| ()),
        );
    }
    if caps.archive_transfer {
        expect(
            "upload_archive",
            s.upload_archive(&PathBuf::from("up"), Vec::new()).await,
        );
        expect(
            "download_archive",
            s.download_archive(&PathBuf::from(".")).await.map(|_| ()),
        );
    }
    if caps.port_preview {
        let request = RunnerPortRequest {
            port: 31_337,
            label: None,
        };
        expect("expose_port", s.expose_port(request).await.map(|_| ()));
    }
    if caps.port_listing {
        expect(
            "list_listening_ports",
            s.list_listening_ports().await.map(|_| ()),
        );
    }
    if caps.snapshots {
        expect("snapshot", s.snapshot().await.map(|_| ()));
    }
    if caps.pausable {
        expect("pause", s.pause().await.map(|_| ()));
        expect("resume", s.resume().await.map(|_| ()));
    }
    if caps.detachable {
        expect("detach", s.detach().await.map(|_| ()));
    }
    if caps.artifact_export {
        let request = RunnerArtifactExportRequest {
            path: path.clone(),
            recursive: false,
        };
        expect(
            "export_artifact",
            s.export_artifact(request).await.map(|_| ()),
        );
    }
    ensure!(
        wrong.is_empty(),
        "after close of session {}, expected Err(session_closed) from every claimed operation; got {}",
        state.session_id,
        wrong.join("; ")
    );
    Ok(())
}

/// Closing a session ends its background process trees.
async fn close_kills_processes(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let request = shell(s.as_ref(), "close-tree", &marker.tree());
    s.start_command(request).await.or_fail("start_command")?;
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(15))
        .await?;
    s.close().await.or_fail("close")?;
    s.list_commands()
        .await
        .fails_with(RunnerErrorKind::SessionClosed, "list_commands after close")?;
    // Count from a second session: on isolated providers (a container per
    // session) it cannot see the first session's processes and observes less.
    let observer = cx.session().await?;
    marker.wait_gone(observer.as_ref(), "close").await?;
    observer
        .close()
        .await
        .or_fail("close of the observer session")
}

async fn stdout_bytes(s: &Session, id: &str) -> CheckResult<u64> {
    Ok(s.command_status(&id.to_string())
        .await
        .or_fail(format!("command_status {id:?}"))?
        .stdout_bytes)
}

/// Pausing stops output and refuses new commands; resuming continues.
async fn pause_resume(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done";
    let request = shell(s.as_ref(), "ticker", script);
    let id = request.command_id.clone();
    s.start_command(request).await.or_fail("start_command")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stdout_bytes(&s, &id).await? == 0 {
        ensure!(
            Instant::now() < deadline,
            "the ticking command printed nothing within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.pause().await.or_fail("pause")?;
    // Output already on its way to the session's buffers may still land: wait
    // until the counter holds still, then require that it stays so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut paused_at = stdout_bytes(&s, &id).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stdout_bytes(&s, &id).await?;
        if now == paused_at {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "while paused, the ticking command kept printing for 10 s ({paused_at} stdout bytes, then {now})"
        );
        paused_at = now;
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stdout_bytes(&s, &id).await?;
        ensure!(
            now == paused_at,
            "while paused, the ticking command kept printing: {paused_at} stdout bytes, then {now}"
        );
    }
    s.run_command(shell(s.as_ref(), "while-paused", "echo no"))
        .await
        .fails_with(RunnerErrorKind::InvalidRequest, "run_command while paused")?;
    if cx.has(FileWrite) && cx.has(FileRead) {
        let path = cx.scratch(&s).join("while-paused.txt");
        s.write_file(RunnerFileWriteRequest::new(&path, b"paused".to_vec()))
            .await
            .or_fail("write_file while paused (file operations keep working)")?;
        let got = s
            .read_file(RunnerFileReadRequest::new(&path))
            .await
            .or_fail("read_file while paused")?;
        same_bytes(&got.contents, b"paused", "a file written while paused")?;
    }
    s.resume().await.or_fail("resume")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stdout_bytes(&s, &id).await? <= paused_at {
        ensure!(
            Instant::now() < deadline,
            "after resume, the ticking command printed nothing more within 10 s (stuck at {paused_at} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = s
        .run_command(shell(s.as_ref(), "after-resume", "echo yes"))
        .await
        .or_fail("run_command after resume")?;
    ensure_eq!(after.stdout, "yes\n", "a command after resume");
    s.signal_command(&id, RunnerSignal::Kill)
        .await
        .or_fail("signal_command Kill")?;
    s.close().await.or_fail("close")
}

/// `state()` round-trips through JSON and names the provider and destination.
async fn state_json_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let state = s.state();
    let json = serde_json::to_string(&state).map_err(|e| format!("serializing state(): {e}"))?;
    let back: RunnerSessionState = serde_json::from_str(&json)
        .map_err(|e| format!("deserializing state() JSON {json}: {e}"))?;
    ensure_eq!(back, state, "state() after a JSON round trip");
    ensure_eq!(state.provider_id, cx.provider.id(), "state().provider_id");
    ensure_eq!(
        state.destination_id,
        cx.destination.id,
        "state().destination_id"
    );
    ensure!(!state.session_id.is_empty(), "state().session_id is empty");
    let other = cx.session().await?;
    ensure!(
        other.state().session_id != state.session_id,
        "two sessions share the session_id {:?}",
        state.session_id
    );
    other.close().await.or_fail("close")?;
    s.close().await.or_fail("close")
}

/// A detached session can be rejoined; the detached handle is closed.
async fn detach_rejoin(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("kept.txt");
    if cx.has(FileWrite) {
        s.write_file(RunnerFileWriteRequest::new(&path, b"kept".to_vec()))
            .await
            .or_fail("write_file before detach")?;
    }
    let state = s.detach().await.or_fail("detach")?;
    if cx.has(FileRead) {
        s.read_file(RunnerFileReadRequest::new(&path))
            .await
            .fails_with(
                RunnerErrorKind::SessionClosed,
                "read_file on the detached handle",
            )?;
    }
    let rejoined = cx
        .provider
        .rejoin_session(state.clone())
        .await
        .or_fail("rejoin_session")?;
    cx.adopt(rejoined.clone());
    ensure_eq!(
        rejoined.state().session_id,
        state.session_id,
        "session_id of the rejoined session"
    );
    if cx.has(FileWrite) && cx.has(FileRead) {
        let got = rejoined
            .read_file(RunnerFileReadRequest::new(&path))
            .await
            .or_fail("read_file in the rejoined session")?;
        same_bytes(
            &got.contents,
            b"kept",
            "a file written before detach, read after rejoin",
        )?;
    }
    rejoined
        .close()
        .await
        .or_fail("close of the rejoined session")
}

/// A sandbox whose agent speaks another protocol version gets no session:
/// `Unsupported`, with both versions in the message, and the provider's next
/// session works.
async fn agent_version_mismatch_refused(cx: Cx) -> CheckResult {
    let skewed = cx.skewed_destination()?;
    let id = skewed.id.clone();
    match cx.provider.create_session(skewed).await {
        Ok(session) => {
            cx.adopt(session);
            return Err(format!(
                "create_session for destination {id:?}, whose agent speaks another protocol \
                 version, succeeded"
            ));
        }
        Err(error) => {
            ensure_eq!(
                error.kind(),
                RunnerErrorKind::Unsupported,
                "kind of the refusal ({})",
                describe(&error)
            );
            let versions = protocol_versions(error.message());
            ensure!(
                versions.len() >= 2,
                "the refusal names both protocol versions (\"protocol N\"): {}",
                describe(&error)
            );
        }
    }
    let s = cx.session().await?;
    if cx.has(CommandExec) {
        let result = s
            .run_command(RunnerCommandRequest::new(
                unique_id("after-mismatch"),
                "echo",
                ["served"],
            ))
            .await
            .or_fail("run_command in a session created after the refusal")?;
        ensure_eq!(result.stdout, "served\n", "stdout after the refusal");
    }
    s.close().await.or_fail("close")
}

/// The distinct numbers `N` that `message` names as `protocol N`.
fn protocol_versions(message: &str) -> std::collections::BTreeSet<u64> {
    message
        .match_indices("protocol ")
        .filter_map(|(at, word)| {
            let digits: String = message[at + word.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}
