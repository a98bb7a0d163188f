//! The agent outlives its connections: a killed `connect` child (the
//! transport, not the agent) loses nothing, a new connection resumes a
//! command's output by sequence number, stdin stays open, a dropped
//! `run_command` future leaves its command running, and `close` ends the
//! agent with every process it started.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerSession, RunnerCommandRequest, RunnerErrorKind, RunnerOutputStream,
    RunnerProcessEvent, RunnerProcessState,
};
use runner_testkit::is_running;
use support::{ConnectPids, Launcher};

/// Waits (bounded) until `pid` no longer runs.
async fn wait_gone(pid: u32) -> bool {
    runner_testkit::wait_gone(pid, Duration::from_secs(20)).await
}

/// Kills the newest `connect` child and waits until it is dead: the
/// connection drops, the agent stays.
async fn kill_connection(pids: &ConnectPids) {
    let pid = *pids.lock().unwrap().last().expect("a connect child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the connect child");
    assert!(wait_gone(pid).await, "the connect child dies");
}

/// Records one output event's line numbers by sequence number.
fn record(lines: &mut BTreeMap<u64, Vec<u8>>, seq: u64, bytes: &[u8]) {
    assert!(
        lines.insert(seq, bytes.to_vec()).is_none(),
        "sequence number {seq} delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_resumes_output_by_sequence_number_without_loss() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let pids = ConnectPids::default();
    let session = support::connect(&agent, pids.clone()).await.unwrap();

    let script = "i=1; while [ $i -le 300 ]; do echo line$i; i=$((i+1)); sleep 0.005; done";
    let info = session
        .start_command(RunnerCommandRequest::shell("printer", script))
        .await
        .unwrap();
    assert_eq!(info.state, RunnerProcessState::Running);

    // Read part of the output live, then kill the transport under the stream.
    let mut lines = BTreeMap::new();
    let mut events = session.stream_command(&"printer".into(), 0).await.unwrap();
    while lines.len() < 20 {
        match events.next().await.expect("an event").expect("live output") {
            RunnerProcessEvent::Stdout { seq, bytes } => record(&mut lines, seq, &bytes),
            other => panic!("unexpected event before the kill: {other:?}"),
        }
    }
    let first_connect = *pids.lock().unwrap().last().unwrap();
    kill_connection(&pids).await;
    let ended = loop {
        match events.next().await {
            Some(Ok(RunnerProcessEvent::Stdout { seq, bytes })) => record(&mut lines, seq, &bytes),
            Some(Ok(other)) => panic!("unexpected event: {other:?}"),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error when its connection died"),
        }
    };
    assert_eq!(ended.kind(), RunnerErrorKind::Unavailable, "{ended}");
    assert!(ended.message().contains("stream_command"), "{ended}");
    assert!(
        is_running(agent.pid),
        "the agent must outlive its connection"
    );

    // The next call reconnects through a new `connect` child and resumes
    // after the last sequence number seen.
    let last = *lines.keys().next_back().unwrap();
    let output = session
        .command_output(&"printer".into(), last)
        .await
        .unwrap();
    assert_ne!(*pids.lock().unwrap().last().unwrap(), first_connect);
    assert!(output.first_retained_seq <= last + 1, "nothing was dropped");
    for chunk in &output.chunks {
        assert_eq!(chunk.stream, RunnerOutputStream::Stdout);
        record(&mut lines, chunk.seq, &chunk.bytes);
    }
    let mut events = session
        .stream_command(&"printer".into(), output.next_after_seq)
        .await
        .unwrap();
    let status = loop {
        match events.next().await.expect("events until exit").unwrap() {
            RunnerProcessEvent::Stdout { seq, bytes } => record(&mut lines, seq, &bytes),
            RunnerProcessEvent::Exited { status } => break status,
            other => panic!("unexpected event: {other:?}"),
        }
    };
    assert_eq!(status.exit_code, Some(0), "the command ran on: {status:?}");

    // Sequence numbers are contiguous and the text is every line once.
    let seqs: Vec<u64> = lines.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let text: Vec<u8> = lines.into_values().flatten().collect();
    let expected: String = (1..=300).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8(text).unwrap(), expected);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_across_a_lost_connection() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let pids = ConnectPids::default();
    let session = support::connect(&agent, pids.clone()).await.unwrap();
    let mut request = RunnerCommandRequest::new("cat", "cat", Vec::<String>::new());
    request.keep_stdin_open = true;
    session.start_command(request).await.unwrap();
    session
        .write_stdin(&"cat".into(), b"before ".to_vec(), false)
        .await
        .unwrap();
    kill_connection(&pids).await;
    // The first call after the loss may find the dead connection: it
    // reconnects by itself.
    session
        .write_stdin(&"cat".into(), b"after".to_vec(), true)
        .await
        .unwrap();
    let mut events = session.stream_command(&"cat".into(), 0).await.unwrap();
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap() {
            RunnerProcessEvent::Stdout { bytes, .. } => out.extend(bytes),
            RunnerProcessEvent::Exited { status } => {
                assert_eq!(status.exit_code, Some(0));
                break;
            }
            other => panic!("unexpected event: {other:?}"),
        }
    }
    assert_eq!(out, b"before after");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_run_command_future_leaves_the_command_running() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let request = RunnerCommandRequest::shell("slow", "sleep 0.5; echo done > marker");
    let dropped = tokio::time::timeout(Duration::from_millis(100), session.run_command(request));
    assert!(dropped.await.is_err(), "the call is dropped while it runs");
    // The agent got a cancel frame for the call, not for the command.
    let status = session.command_status(&"slow".into()).await.unwrap();
    assert_eq!(status.state, RunnerProcessState::Running);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.path().join("marker").exists() {
        assert!(Instant::now() < deadline, "the command was killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The marker is written just before the shell exits: wait for the exit.
    let status = loop {
        let status = session.command_status(&"slow".into()).await.unwrap();
        if status.state != RunnerProcessState::Running {
            break status;
        }
        assert!(Instant::now() < deadline, "the command did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.status.and_then(|s| s.exit_code), Some(0));
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_process_and_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let sleeper = session
        .start_command(RunnerCommandRequest::new("sleeper", "sleep", ["600"]))
        .await
        .unwrap();
    let pid = sleeper.pid.expect("the sleeper's pid");
    assert!(is_running(pid));
    session.close().await.unwrap();
    assert!(wait_gone(pid).await, "close ends the session's processes");
    assert!(wait_gone(agent.pid).await, "the agent exits after close");
    assert!(!agent.socket.exists(), "the agent removes its socket");
    let err = session.list_commands().await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed, "{err}");
    session.close().await.expect("closing twice is Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_sees_the_same_session_and_many_requests_share_one() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let first = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let second = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    assert_eq!(first.state().session_id, agent.session_id);
    assert_eq!(second.state().session_id, agent.session_id);
    // 32 commands in flight on one connection, answered as they finish.
    let calls = (0..32).map(|i| {
        let session = first.clone();
        async move {
            let script = format!("sleep 0.{}; echo {i}", (31 - i) % 10);
            session
                .run_command(RunnerCommandRequest::shell(format!("c{i}"), script))
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().stdout, format!("{i}\n"));
    }
    let listed = second.list_commands().await.unwrap();
    assert_eq!(
        listed.len(),
        32,
        "the other connection sees the same commands"
    );
    second.close().await.unwrap();
    // The agent tells every connection that its session was closed before
    // it exits; a call that meets the agent already gone without that
    // notice reports it unreachable. Either way the call runs nothing.
    let err = first.list_commands().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            RunnerErrorKind::SessionClosed | RunnerErrorKind::Unavailable
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_closes_its_connection_not_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("agent-tests", root.path()), None)
        .await
        .unwrap();
    let pids = ConnectPids::default();
    let session = support::connect(&agent, pids.clone()).await.unwrap();
    session
        .start_command(RunnerCommandRequest::new("sleeper", "sleep", ["600"]))
        .await
        .unwrap();
    let connect_pid = *pids.lock().unwrap().last().unwrap();
    drop(session);
    assert!(wait_gone(connect_pid).await, "the connection's child ends");
    assert!(is_running(agent.pid), "the agent goes on");
    let again = support::connect(&agent, pids).await.unwrap();
    let listed = again.list_commands().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, RunnerProcessState::Running);
    again.close().await.unwrap();
}
