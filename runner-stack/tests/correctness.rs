//! The correctness layer: closed and detached sessions, and capability
//! refusals that never reach the provider's session.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use runner_api::{
    RemoteRunnerProvider, RunnerArtifactExportRequest, RunnerCommandRequest, RunnerErrorKind,
    RunnerFileReadRequest, RunnerFileWriteRequest, RunnerLeaseRequest, RunnerPortRequest,
    RunnerResult, bytes_stream,
};
use support::{Probe, destination};

fn kind<T>(result: RunnerResult<T>) -> RunnerErrorKind {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.kind(),
    }
}

#[tokio::test]
async fn every_call_after_close_is_session_closed_naming_operation_and_session() {
    let provider = runner_stack::stacked(Probe::default());
    let s = provider.create_session(destination("d")).await.unwrap();
    s.write_file(RunnerFileWriteRequest::new("a.txt", b"x".to_vec()))
        .await
        .unwrap();
    let id = s.state().session_id;
    s.close().await.unwrap();
    s.close().await.expect("closing twice is Ok");

    let err = s
        .read_file(RunnerFileReadRequest::new("a.txt"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
    assert!(
        err.message().contains("read_file") && err.message().contains(&id),
        "{err}"
    );
    let err = s.list_dir(Path::new(".")).await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
    assert!(err.message().contains("list_dir"), "{err}");
    // Closed wins over a missing capability: the caller learns the session is gone.
    let err = s.pause().await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
    assert!(err.message().contains("pause"), "{err}");
    assert_eq!(
        kind(
            s.run_command(RunnerCommandRequest::shell("c", "true"))
                .await
        ),
        RunnerErrorKind::SessionClosed
    );
    assert_eq!(kind(s.sync_mounts().await), RunnerErrorKind::SessionClosed);
    assert_eq!(
        kind(
            s.write_file_stream(
                RunnerFileWriteRequest::new("b.txt", Vec::new()),
                bytes_stream(b"y".to_vec())
            )
            .await
        ),
        RunnerErrorKind::SessionClosed
    );
}

#[tokio::test]
async fn a_detached_session_is_closed_and_a_failed_detach_is_not() {
    let probe = Probe::default();
    let provider = runner_stack::stacked(probe.clone());
    let s = provider.create_session(destination("d")).await.unwrap();
    s.detach().await.unwrap();
    assert_eq!(probe.seen.detached.load(Ordering::SeqCst), 1);
    let err = s.stat(Path::new(".")).await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
    assert!(err.message().contains("stat"), "{err}");
    assert_eq!(kind(s.detach().await), RunnerErrorKind::SessionClosed);
    assert_eq!(probe.seen.detached.load(Ordering::SeqCst), 1);

    // The memory session cannot detach: refused before it, and still open.
    let plain = runner_stack::stacked(runner_testkit::MemoryProvider::new());
    let s = plain.create_session(destination("d2")).await.unwrap();
    assert_eq!(kind(s.detach().await), RunnerErrorKind::Unsupported);
    s.stat(Path::new(".")).await.expect("still open");
    s.close().await.unwrap();
}

#[tokio::test]
async fn operations_without_their_flag_are_unsupported_before_the_provider() {
    let probe = Probe::default();
    let provider = runner_stack::stacked(probe.clone());
    let s = provider.create_session(destination("d")).await.unwrap();
    let provider_id = s.state().provider_id;

    let err = s.pause().await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
    assert!(
        err.message().contains("pause") && err.message().contains(&provider_id),
        "{err}"
    );
    let id = "c1".to_string();
    assert_eq!(
        kind(s.cancel_command(&id).await),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(
            s.start_command(RunnerCommandRequest::shell("c1", "sleep 1"))
                .await
        ),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(s.stream_command(&id, 0).await),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(s.write_stdin(&id, b"secret".to_vec(), true).await),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(
            s.expose_port(RunnerPortRequest {
                port: 8080,
                label: None
            })
            .await
        ),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(s.list_listening_ports().await),
        RunnerErrorKind::Unsupported
    );
    assert_eq!(
        kind(
            s.acquire_workspace_execution_lease(RunnerLeaseRequest {
                holder: "me".into(),
                ttl_ms: 1000,
                wait_ms: 0,
            })
            .await
        ),
        RunnerErrorKind::Unsupported
    );
    // No artifact store named: the session does not claim artifact_export.
    assert!(!s.capabilities().artifact_export);
    assert_eq!(
        kind(
            s.export_artifact(RunnerArtifactExportRequest {
                path: "a.txt".into(),
                recursive: false,
            })
            .await
        ),
        RunnerErrorKind::Unsupported
    );
    // The session claims command_exec but neither stdin nor run_as_user.
    let err = s
        .run_command(RunnerCommandRequest::shell("c2", "cat").with_stdin(b"in".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
    assert!(err.message().contains("stdin"), "{err}");
    let mut kept_open = RunnerCommandRequest::shell("c3", "cat");
    kept_open.keep_stdin_open = true;
    assert_eq!(
        kind(s.run_command(kept_open).await),
        RunnerErrorKind::Unsupported
    );
    let mut as_user = RunnerCommandRequest::shell("c4", "id");
    as_user.user = Some("nobody".into());
    let err = s.run_command(as_user).await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
    assert!(err.message().contains("user"), "{err}");

    assert_eq!(
        probe.seen.calls(),
        Vec::<String>::new(),
        "nothing reached the session"
    );

    // A claimed flag does reach it (the memory session itself answers).
    let _ = s
        .run_command(RunnerCommandRequest::shell("c5", "true"))
        .await;
    assert_eq!(probe.seen.calls(), vec!["run_command".to_string()]);
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_provider_given_as_dyn_is_stacked_the_same() {
    let inner: Arc<dyn RemoteRunnerProvider> = Arc::new(Probe::default());
    let provider = runner_stack::Stack::new().provider(inner);
    let s = provider.create_session(destination("d")).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("x")).await),
        RunnerErrorKind::SessionClosed
    );
}
