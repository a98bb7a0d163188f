//! Commands of the unix-local provider as real processes: environment, cwd,
//! stdin, timeouts and cancellation that kill whole trees, close, pause.

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use runner_api::{
    RunnerCommandRequest, RunnerErrorKind, RunnerFileReadRequest, RunnerProcessEvent,
    RunnerProcessState, RunnerSignal,
};
use serde_json::json;
use support::{
    Area, MarkerGuard, alive, eventually, group_gone, group_members, kind, marked_gone,
    marked_processes, marked_running, session, setsid_escape_script, stacked_session,
    unique_marker,
};

fn sh(id: &str, script: &str) -> RunnerCommandRequest {
    RunnerCommandRequest::shell(id, script)
}

#[tokio::test(flavor = "multi_thread")]
async fn output_exit_codes_and_environment() {
    let area = Area::new();
    let mut config = area.rooted_config();
    config["env"] = json!({ "FROM_CONFIG": "config", "BOTH": "config" });
    let s = session(config).await;
    let mut req = sh(
        "env",
        "echo out; echo err >&2; echo \"$FROM_CONFIG $BOTH $TERM\"; pwd; exit 3",
    )
    .with_env("BOTH", "request");
    req.non_interactive = true;
    let res = s.run_command(req).await.expect("run");
    assert_eq!(res.exit_code, Some(3));
    let root = s.workspace_root();
    assert_eq!(
        res.stdout,
        format!("out\nconfig request dumb\n{}\n", root.display())
    );
    assert_eq!(res.stderr, "err\n");
    s.make_dir(Path::new("sub")).await.expect("mkdir");
    let res = s
        .run_command(RunnerCommandRequest::new("cwd", "pwd", Vec::<String>::new()).with_cwd("sub"))
        .await
        .expect("run in sub");
    assert_eq!(
        res.stdout.trim_end(),
        root.join("sub").display().to_string()
    );
    let res = s
        .run_command(
            RunnerCommandRequest::new("abs", "pwd", Vec::<String>::new())
                .with_cwd(root.join("sub")),
        )
        .await
        .expect("absolute cwd");
    assert_eq!(res.exit_code, Some(0));
    s.close().await.expect("close");
}

/// Where the child of `host_environment_stays_out_of_commands` writes what
/// `env` printed in a session; set only for the child.
const ENV_OUT: &str = "RUNNER_LOCAL_TEST_ENV_OUT";

/// The child's side: run only by `host_environment_stays_out_of_commands`,
/// with marker variables in its environment from the start.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the child process of host_environment_stays_out_of_commands, which runs it"]
async fn host_env_child() {
    let Some(out) = std::env::var_os(ENV_OUT) else {
        return;
    };
    let area = Area::new();
    let mut config = area.rooted_config();
    config["env"] = json!({ "FROM_DESTINATION": "destination" });
    let s = session(config).await;
    let request = RunnerCommandRequest::new("env", "env", Vec::<String>::new())
        .with_env("FROM_REQUEST", "request")
        .with_env("RUNNER_LOCAL_SESSION", "forged")
        .with_env("RUNNER_LOCAL_COMMAND", "forged");
    let res = s.run_command(request).await.expect("env");
    assert_eq!(res.exit_code, Some(0), "{res:?}");
    std::fs::write(out, res.stdout).expect("write the child's report");
    s.close().await.expect("close");
}

#[test]
fn host_environment_stays_out_of_commands() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("env.txt");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "host_env_child", "--test-threads=1"])
        .env(ENV_OUT, &out)
        .env("RUNNER_LOCAL_TEST_HOST_MARKER", "host-marker-value")
        .env("RUNNER_SECRET_LOCALTEST_TOKEN_KEY", "secret-token-value")
        .env("MCP_BEARER_TOKEN", "bearer-token-value")
        .env("TZ", "UTC")
        .env("LC_MESSAGES", "C")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run the child test");
    assert!(status.success(), "the child test failed: {status}");
    let env = std::fs::read_to_string(&out).expect("the child's report");
    let vars: std::collections::HashMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    for leaked in [
        "host-marker-value",
        "secret-token-value",
        "bearer-token-value",
        ENV_OUT,
    ] {
        assert!(
            !env.contains(leaked),
            "{leaked} reached the command:\n{env}"
        );
    }
    assert!(
        !vars.keys().any(|k| k.starts_with("RUNNER_SECRET_")),
        "{env}"
    );
    // The allow-list, the destination's env and the request's env pass.
    assert_eq!(vars.get("TZ"), Some(&"UTC"), "{env}");
    assert_eq!(vars.get("LC_MESSAGES"), Some(&"C"), "{env}");
    assert!(vars.contains_key("PATH"), "{env}");
    assert_eq!(vars.get("FROM_DESTINATION"), Some(&"destination"));
    assert_eq!(vars.get("FROM_REQUEST"), Some(&"request"));
    // The process marks are the session's, whatever the request says.
    for mark in ["RUNNER_LOCAL_SESSION", "RUNNER_LOCAL_COMMAND"] {
        let value = vars.get(mark).copied().unwrap_or_default();
        assert!(!value.is_empty() && value != "forged", "{mark}={value}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_program_missing_cwd_and_outside_cwd_are_told_apart() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let err = s
        .run_command(RunnerCommandRequest::new(
            "p",
            "no-such-program-xyz",
            Vec::<String>::new(),
        ))
        .await
        .expect_err("missing program");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(
        err.message()
            .contains("program no-such-program-xyz not found"),
        "{err}"
    );
    let err = s
        .run_command(RunnerCommandRequest::new("c", "true", Vec::<String>::new()).with_cwd("nope"))
        .await
        .expect_err("missing cwd");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("cwd nope"), "{err}");
    let outside = RunnerCommandRequest::new("o", "true", Vec::<String>::new()).with_cwd("/");
    assert_eq!(
        kind(s.run_command(outside).await),
        RunnerErrorKind::PermissionDenied
    );
    let outside = RunnerCommandRequest::new("o2", "true", Vec::<String>::new()).with_cwd("..");
    assert_eq!(
        kind(s.run_command(outside).await),
        RunnerErrorKind::PermissionDenied
    );
    s.write_file(runner_api::RunnerFileWriteRequest::new(
        "plain.txt",
        b"x".to_vec(),
    ))
    .await
    .expect("write");
    let not_exec = RunnerCommandRequest::new("x", "./plain.txt", Vec::<String>::new());
    assert_eq!(
        kind(s.run_command(not_exec).await),
        RunnerErrorKind::PermissionDenied
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_stdin_arrives_whole_and_early_exit_is_fine() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let input: Vec<u8> = (0..(2 * 1024 * 1024 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let res = s
        .run_command(sh("cat", "cat > in.bin").with_stdin(input.clone()))
        .await
        .expect("run");
    assert_eq!(res.exit_code, Some(0), "{}", res.stderr);
    let back = s
        .read_file(RunnerFileReadRequest::new("in.bin"))
        .await
        .expect("read");
    assert!(back.contents == input, "stdin arrived whole");
    let res = s
        .run_command(sh("head", "head -c 1 >/dev/null; echo done").with_stdin(input))
        .await
        .expect("a program that stops reading early");
    assert_eq!(res.stdout, "done\n");
    // Without stdin the program reads EOF at once.
    let res = s
        .run_command(sh("eof", "cat; echo end"))
        .await
        .expect("eof");
    assert_eq!(res.stdout, "end\n");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_tree_including_a_grandchild_that_ignores_term() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let req = sh("slow", "trap '' TERM; echo $$; sleep 1000 & sleep 1000").with_timeout_ms(500);
    let res = s.run_command(req).await.expect("run");
    assert!(res.timed_out, "{res:?}");
    let pgid: i32 = res
        .stdout
        .trim()
        .parse()
        .expect("the shell printed its pid");
    assert!(
        group_gone(pgid).await,
        "survivors: {:?}",
        group_members(pgid)
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_one_command_and_leaves_the_other() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let a = s
        .start_command(sh("a", "sleep 1000 & sleep 1000"))
        .await
        .expect("start a");
    let b = s
        .start_command(sh("b", "sleep 1000"))
        .await
        .expect("start b");
    let (pa, pb) = (a.pid.expect("pid") as i32, b.pid.expect("pid") as i32);
    assert!(
        eventually(Duration::from_secs(5), || async {
            group_members(pa).len() >= 2
        })
        .await,
        "a's background child started"
    );
    assert!(s.cancel_command(&"a".to_string()).await.expect("cancel"));
    assert!(group_gone(pa).await, "a's tree is gone");
    let status = s.command_status(&"a".to_string()).await.expect("status");
    assert_eq!(status.state, RunnerProcessState::Exited);
    assert!(status.status.expect("exited").cancelled);
    assert!(!s.cancel_command(&"a".to_string()).await.expect("again"));
    assert!(!s.cancel_command(&"zzz".to_string()).await.expect("unknown"));
    let b_status = s.command_status(&"b".to_string()).await.expect("b");
    assert_eq!(b_status.state, RunnerProcessState::Running);
    assert!(alive(pb));
    s.close().await.expect("close");
    assert!(group_gone(pb).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn close_kills_background_processes_of_finished_commands() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let res = s
        .run_command(sh("bg", "sleep 1000 & echo $!"))
        .await
        .expect("run");
    assert_eq!(res.exit_code, Some(0));
    let pid: i32 = res.stdout.trim().parse().expect("background pid");
    assert!(alive(pid), "the background sleep outlives its command");
    s.close().await.expect("close");
    assert!(
        eventually(Duration::from_secs(5), || async move { !alive(pid) }).await,
        "close killed the background process"
    );
    s.close().await.expect("close is idempotent");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_processes_that_left_the_group() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let (a, b) = (unique_marker(), unique_marker());
    let _guard = MarkerGuard(vec![a, b]);
    s.start_command(sh("esc", &setsid_escape_script(a, b, "sleep 1000")))
        .await
        .expect("start");
    assert!(marked_running(a).await && marked_running(b).await);
    assert!(s.cancel_command(&"esc".to_string()).await.expect("cancel"));
    assert_all_gone(&[a, b]).await;
    s.close().await.expect("close");
}

/// Waits until no process carries any of `markers`; fails naming the survivors.
async fn assert_all_gone(markers: &[u64]) {
    for marker in markers {
        if !marked_gone(*marker).await {
            let survivors: Vec<Vec<i32>> = markers.iter().map(|m| marked_processes(*m)).collect();
            panic!("survivors: {survivors:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_processes_that_left_the_group() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let (a, b) = (unique_marker(), unique_marker());
    let _guard = MarkerGuard(vec![a, b]);
    let script = setsid_escape_script(a, b, "sleep 1000");
    let seen = tokio::spawn(async move { marked_running(a).await && marked_running(b).await });
    let res = s
        .run_command(sh("esc", &script).with_timeout_ms(3_000))
        .await
        .expect("run");
    assert!(res.timed_out, "{res:?}");
    assert!(
        seen.await.expect("watcher"),
        "both escapes ran before the timeout"
    );
    assert_all_gone(&[a, b]).await;
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_kills_processes_that_left_the_group() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let (a, b) = (unique_marker(), unique_marker());
    let _guard = MarkerGuard(vec![a, b]);
    let res = s
        .run_command(sh("esc", &setsid_escape_script(a, b, "true")))
        .await
        .expect("run");
    assert_eq!(res.exit_code, Some(0));
    assert!(marked_running(a).await && marked_running(b).await);
    // An escape that also clears the marks but stays a child of a session
    // process is found through its parent.
    let c = unique_marker();
    let _guard_c = MarkerGuard(vec![c]);
    s.start_command(sh(
        "parent",
        &format!("env -i setsid sleep {c} & sleep 1000"),
    ))
    .await
    .expect("start");
    assert!(marked_running(c).await);
    s.close().await.expect("close");
    assert_all_gone(&[a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_output_and_resume_continues() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let id = "ticker".to_string();
    s.start_command(sh(&id, "while true; do echo tick; sleep 0.02; done"))
        .await
        .expect("start");
    let bytes = || async { s.command_status(&id).await.expect("status").stdout_bytes };
    assert!(eventually(Duration::from_secs(10), || async { bytes().await > 0 }).await);
    s.pause().await.expect("pause");
    assert_eq!(
        kind(s.run_command(sh("refused", "true")).await),
        RunnerErrorKind::InvalidRequest
    );
    // Let output in flight settle, then it must not grow.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = bytes().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bytes().await, frozen, "no output while paused");
    s.resume().await.expect("resume");
    assert!(
        eventually(Duration::from_secs(10), || async { bytes().await > frozen }).await,
        "output continues after resume"
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn background_commands_stdin_streams_and_signals() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let mut req =
        RunnerCommandRequest::new("cat", "cat", Vec::<String>::new()).with_stdin("first ");
    req.keep_stdin_open = true;
    let info = s.start_command(req.clone()).await.expect("start");
    let again = s.start_command(req).await.expect("idempotent");
    assert_eq!(info.pid, again.pid);
    let id = "cat".to_string();
    s.write_stdin(&id, b"second".to_vec(), true)
        .await
        .expect("write");
    let mut events = s.stream_command(&id, 0).await.expect("stream");
    let mut out = Vec::new();
    let mut exited = None;
    while let Some(event) = events.next().await {
        match event.expect("event") {
            RunnerProcessEvent::Stdout { bytes, .. } => out.extend(bytes),
            RunnerProcessEvent::Exited { status } => exited = Some(status),
            _ => {}
        }
    }
    assert_eq!(out, b"first second");
    assert_eq!(exited.expect("exited").exit_code, Some(0));
    assert_eq!(
        kind(s.write_stdin(&id, b"late".to_vec(), false).await),
        RunnerErrorKind::InvalidRequest
    );
    let output = s.command_output(&id, 0).await.expect("output");
    assert_eq!(output.stdout, "first second");

    s.start_command(sh("sleeper", "sleep 1000"))
        .await
        .expect("start");
    let sleeper = "sleeper".to_string();
    s.signal_command(&sleeper, RunnerSignal::Terminate)
        .await
        .expect("signal");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.command_status(&sleeper).await.expect("status").state == RunnerProcessState::Exited
        })
        .await
    );
    let status = s
        .command_status(&sleeper)
        .await
        .expect("status")
        .status
        .expect("exited");
    assert_eq!(status.signal, Some(15));
    let listed: Vec<_> = s
        .list_commands()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(listed, vec!["cat".to_string(), "sleeper".to_string()]);
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_after_close_is_session_closed() {
    // The closed-session answers come from the layer stack's correctness
    // layer; the bare session frees its workspace and processes.
    let area = Area::new();
    let s = stacked_session(area.owned_config()).await;
    let root = s.workspace_root();
    assert!(root.starts_with(area.path("workspaces")));
    s.close().await.expect("close");
    assert!(!root.exists(), "an owned workspace is removed on close");
    let closed = RunnerErrorKind::SessionClosed;
    let id = "x".to_string();
    assert_eq!(kind(s.run_command(sh("x", "true")).await), closed);
    assert_eq!(kind(s.start_command(sh("x", "true")).await), closed);
    assert_eq!(kind(s.cancel_command(&id).await), closed);
    assert_eq!(kind(s.list_commands().await), closed);
    assert_eq!(kind(s.command_status(&id).await), closed);
    assert_eq!(kind(s.command_output(&id, 0).await), closed);
    assert!(matches!(s.stream_command(&id, 0).await, Err(e) if e.kind() == closed));
    assert_eq!(kind(s.write_stdin(&id, vec![], true).await), closed);
    assert_eq!(
        kind(s.signal_command(&id, RunnerSignal::Kill).await),
        closed
    );
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("a")).await),
        closed
    );
    assert_eq!(kind(s.list_dir(Path::new(".")).await), closed);
    assert_eq!(kind(s.stat(Path::new(".")).await), closed);
    assert_eq!(kind(s.make_dir(Path::new("d")).await), closed);
    assert_eq!(kind(s.canonicalize(Path::new(".")).await), closed);
    assert_eq!(kind(s.download_archive(Path::new(".")).await), closed);
    let streams = [
        s.read_file_stream(RunnerFileReadRequest::new("a"))
            .await
            .map(drop),
        s.write_file_stream(
            runner_api::RunnerFileWriteRequest::new("a", b"x".to_vec()),
            runner_api::empty_stream(),
        )
        .await,
        s.upload_archive_stream(Path::new("t"), runner_api::empty_stream())
            .await,
        s.download_archive_stream(Path::new(".")).await.map(drop),
    ];
    for result in streams {
        assert_eq!(kind(result), closed);
    }
    assert_eq!(kind(s.snapshot().await), closed);
    assert_eq!(kind(s.pause().await), closed);
    assert_eq!(kind(s.resume().await), closed);
    assert_eq!(kind(s.detach().await), closed);
    assert_eq!(kind(s.list_listening_ports().await), closed);
    assert_eq!(
        kind(
            s.expose_port(runner_api::RunnerPortRequest {
                port: 80,
                label: None
            })
            .await
        ),
        closed
    );
    s.close().await.expect("idempotent");
}
