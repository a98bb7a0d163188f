//! exec: foreground commands (`run_command`, `cancel_command`, stdin, output).

use std::time::{Duration, Instant};

use runner_api::{RunnerCommandRequest, RunnerErrorKind, RunnerFileReadRequest, RunnerOutputLimit};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{describe_result, quote, sh, sh_ok, shell, unique_id};
use crate::context::Cx;
use crate::fixtures::bytes::{all_byte_values, posix_cksum, pseudo_random, seed};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Exec;
    vec![
        Check::new(
            "exec_exit_codes",
            a,
            &[CommandExec],
            "run_command: \"A non-zero exit is a result\" (Ok with the exit code, not an error).",
            |cx| Box::pin(exit_codes(cx)),
        ),
        Check::new(
            "exec_stdout_stderr_apart",
            a,
            &[CommandExec],
            "RunnerCommandResult: stdout and stderr are separate views; interleaved writes stay apart.",
            |cx| Box::pin(stdout_stderr_apart(cx)),
        ),
        Check::new(
            "exec_args_verbatim",
            a,
            &[CommandExec],
            "RunnerCommandRequest: \"Arguments, passed verbatim\" (no shell: spaces, quotes, $HOME, newlines).",
            |cx| Box::pin(args_verbatim(cx)),
        ),
        Check::new(
            "exec_cwd_relative_to_root",
            a,
            &[CommandExec],
            "RunnerCommandRequest.cwd: \"relative paths resolve under the workspace root\".",
            |cx| Box::pin(cwd_relative_to_root(cx)),
        ),
        Check::new(
            "exec_default_cwd_is_root",
            a,
            &[CommandExec],
            "RemoteRunnerSession: \"Relative paths resolve under workspace_root\"; a command without cwd runs there.",
            |cx| Box::pin(default_cwd_is_root(cx)),
        ),
        Check::new(
            "exec_env_applied",
            a,
            &[CommandExec],
            "RunnerCommandRequest.env: \"Extra environment variables, in order\" (a later duplicate wins).",
            |cx| Box::pin(env_applied(cx)),
        ),
        Check::new(
            "exec_non_interactive_env",
            a,
            &[CommandExec],
            "non_interactive: adds NON_INTERACTIVE_ENV (\"a caller's own env wins\").",
            |cx| Box::pin(non_interactive_env(cx)),
        ),
        Check::new(
            "exec_missing_program_not_found",
            a,
            &[CommandExec],
            "run_command errors: \"NotFound (program or cwd missing)\" — the program.",
            |cx| Box::pin(missing_program_not_found(cx)),
        ),
        Check::new(
            "exec_missing_cwd_not_found",
            a,
            &[CommandExec],
            "run_command errors: \"NotFound (program or cwd missing)\" — the cwd.",
            |cx| Box::pin(missing_cwd_not_found(cx)),
        ),
        Check::new(
            "exec_invalid_request_refused",
            a,
            &[CommandExec],
            "run_command errors: \"InvalidRequest (empty id or program, NUL bytes …)\".",
            |cx| Box::pin(invalid_request_refused(cx)),
        ),
        Check::new(
            "exec_signal_reported",
            a,
            &[CommandExec],
            "RunnerCommandResult: \"exit_code None when a signal ended the process\" and `signal` names it.",
            |cx| Box::pin(signal_reported(cx)),
        ),
        Check::new(
            "exec_exit_status_exact",
            a,
            &[CommandExec],
            "RunnerCommandResult: a program's own exit status comes back as it is (126, 127, 130, 137, 143, 255 are exit codes, not signals); SIGKILL and SIGTERM come back as the signal with no exit code.",
            |cx| Box::pin(exit_status_exact(cx)),
        ),
        Check::new(
            "exec_duration_plausible",
            a,
            &[CommandExec],
            "RunnerCommandResult.duration_ms: \"Wall time from start to exit\".",
            |cx| Box::pin(duration_plausible(cx)),
        ),
        Check::new(
            "exec_timeout_keeps_partial_output",
            a,
            &[CommandExec],
            "run_command: past timeout_ms \"the partial output comes back with timed_out: true\".",
            |cx| Box::pin(timeout_keeps_partial_output(cx)),
        ),
        Check::new(
            "exec_timeout_kills_process_tree",
            a,
            &[CommandExec],
            "run_command: past timeout_ms \"the whole process tree is killed (TERM, a short grace, KILL)\".",
            |cx| Box::pin(timeout_kills_process_tree(cx)),
        ),
        Check::new(
            "exec_cancel_kills_process_tree",
            a,
            &[CommandExec, Cancellation],
            "cancel_command: \"Kills the whole process tree of one running command\"; returns true; result cancelled.",
            |cx| Box::pin(cancel_kills_process_tree(cx)),
        ),
        Check::new(
            "exec_cancel_spares_other_commands",
            a,
            &[CommandExec, Cancellation],
            "cancel_command: kills one command's tree, \"nothing else\"; the session goes on.",
            |cx| Box::pin(cancel_spares_other_commands(cx)),
        ),
        Check::new(
            "exec_cancel_unknown_id_false",
            a,
            &[CommandExec, Cancellation],
            "cancel_command: \"false for an unknown or finished id\".",
            |cx| Box::pin(cancel_unknown_id_false(cx)),
        ),
        Check::new(
            "exec_stdin_default_empty",
            a,
            &[CommandExec],
            "RunnerCommandRequest.stdin: \"None … gives the command an empty stdin\" (EOF at once, no hang).",
            |cx| Box::pin(stdin_default_empty(cx)),
        ),
        Check::new(
            "exec_stdin_delivered",
            a,
            &[CommandExec, Stdin],
            "RunnerCommandRequest.stdin: \"Bytes written to the command's stdin, then stdin is closed\".",
            |cx| Box::pin(stdin_delivered(cx)),
        ),
        Check::new(
            "exec_stdin_large_arrives_whole",
            a,
            &[CommandExec, Stdin],
            "stdin: 2 MiB of random bytes arrive whole (length and POSIX cksum computed in the runner).",
            |cx| Box::pin(stdin_large_arrives_whole(cx)),
        ),
        Check::new(
            "exec_stdin_binary_roundtrip",
            a,
            &[CommandExec, Stdin, FileRead],
            "stdin: all 256 byte values and NULs → file → read_file round-trip byte for byte.",
            |cx| Box::pin(stdin_binary_roundtrip(cx)),
        ),
        Check::new(
            "exec_output_bounded",
            a,
            &[CommandExec],
            "run_command: 64 MiB of output: \"dropped from the middle with exact counters; memory stays bounded\" (the caller's peak RSS grows < 40 MiB).",
            |cx| Box::pin(output_bounded(cx)),
        ),
        Check::new(
            "exec_output_limit_honoured",
            a,
            &[CommandExec],
            "output_limit: \"How much of each stream the head/tail view keeps\"; a marker line separates head and tail.",
            |cx| Box::pin(output_limit_honoured(cx)),
        ),
        Check::new(
            "exec_truncation_utf8_safe",
            a,
            &[CommandExec],
            "RunnerOutputTruncation: a cut never splits a UTF-8 sequence; the partial bytes count as dropped.",
            |cx| Box::pin(truncation_utf8_safe(cx)),
        ),
        Check::new(
            "exec_concurrent_commands_isolated",
            a,
            &[CommandExec],
            "RemoteRunnerSession: \"every method may be called concurrently\"; 8 commands each get their own output.",
            |cx| Box::pin(concurrent_commands_isolated(cx)),
        ),
    ]
}

/// `run_command`: a non-zero exit is a result, not an error.
async fn exit_codes(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    for code in [0, 1, 3, 42, 255] {
        let result = sh(s.as_ref(), &format!("exit {code}")).await?;
        ensure_eq!(result.exit_code, Some(code), "exit code of `exit {code}`");
        ensure_eq!(result.signal, None, "signal of `exit {code}`");
        ensure_eq!(result.success(), code == 0, "success() of `exit {code}`");
    }
    s.close().await.or_fail("close")
}

/// Stdout and stderr are kept apart even when writes interleave.
async fn stdout_stderr_apart(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let result = sh(
        s.as_ref(),
        "i=1; while [ $i -le 20 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
    )
    .await?;
    let out: String = (1..=20).map(|i| format!("out{i}\n")).collect();
    let err: String = (1..=20).map(|i| format!("err{i}\n")).collect();
    ensure_eq!(result.stdout, out, "stdout of interleaved writes");
    ensure_eq!(result.stderr, err, "stderr of interleaved writes");
    s.close().await.or_fail("close")
}

/// Arguments reach the program verbatim, with no shell interpretation.
async fn args_verbatim(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let args = [
        "two words",
        "it's",
        "\"double\"",
        "$HOME",
        "${PATH}",
        "`id`",
        "$(echo injected)",
        "line1\nline2",
        "back\\slash",
        "*",
        "",
        "  padded  ",
        "tab\there",
        "semi;colon && pipe | amp &",
        "ünïcødé ✓",
    ];
    let script = "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; echo \"count=$#\"";
    let mut argv = vec![
        "-c".to_string(),
        script.to_string(),
        "conformance".to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let request = RunnerCommandRequest::new(unique_id("args"), "sh", argv)
        .with_cwd(s.workspace_root())
        .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command sh -c with args")?;
    let mut expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    expected.push_str(&format!("count={}\n", args.len()));
    ensure_eq!(result.stdout, expected, "arguments as the program saw them");
    s.close().await.or_fail("close")
}

/// A relative cwd resolves under the workspace root.
async fn cwd_relative_to_root(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let sub = dir.join("a").join("b");
    sh_ok(
        s.as_ref(),
        &format!(
            "mkdir -p {sub} && printf here > {sub}/marker.txt",
            sub = quote(&sub.display().to_string())
        ),
    )
    .await?;
    let request = RunnerCommandRequest::shell(unique_id("cwd"), "cat marker.txt; echo; pwd")
        .with_cwd(&sub)
        .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail(format!("run_command with cwd {}", sub.display()))?;
    ensure!(
        result.success(),
        "run_command with relative cwd {}: expected exit 0, got {}",
        sub.display(),
        describe_result(&result)
    );
    let mut lines = result.stdout.lines();
    ensure_eq!(
        lines.next(),
        Some("here"),
        "contents of marker.txt read from cwd {}",
        sub.display()
    );
    let pwd = lines.next().unwrap_or_default();
    let tail = format!("/{}", sub.display());
    ensure!(
        pwd.ends_with(&tail),
        "pwd with relative cwd {}: expected a path ending in {tail:?}, got {pwd:?}",
        sub.display()
    );
    s.close().await.or_fail("close")
}

/// A command without cwd runs in the workspace root.
async fn default_cwd_is_root(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let d = quote(&dir.display().to_string());
    let request = RunnerCommandRequest::shell(
        unique_id("default-cwd"),
        format!("mkdir -p {d} && printf rooted > {d}/default-cwd.txt"),
    )
    .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command without cwd")?;
    ensure!(
        result.success(),
        "run_command without cwd: expected exit 0, got {}",
        describe_result(&result)
    );
    let seen = sh(s.as_ref(), &format!("cat {d}/default-cwd.txt")).await?;
    ensure!(
        seen.success() && seen.stdout == "rooted",
        "a file written with a relative path by a command without cwd is not under the workspace \
         root: `cat {}/default-cwd.txt` from the root gave {}",
        dir.display(),
        describe_result(&seen)
    );
    s.close().await.or_fail("close")
}

/// Environment variables are applied in order.
async fn env_applied(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let request = shell(
        s.as_ref(),
        "env",
        "printf '[%s][%s][%s][%s][%s]' \"$A\" \"$B\" \"${C-unset}\" \"$D\" \"$E\"",
    )
    .with_env("A", "two words")
    .with_env("B", "with=equals sign")
    .with_env("C", "")
    .with_env("D", "first")
    .with_env("D", "second")
    .with_env("E", "$HOME literal")
    .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command with env")?;
    ensure_eq!(
        result.stdout,
        "[two words][with=equals sign][][second][$HOME literal]",
        "environment as the command saw it (A, B, C empty, D set twice, E)"
    );
    s.close().await.or_fail("close")
}

/// `non_interactive` adds the non-interactive environment; the caller's env wins.
async fn non_interactive_env(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "printf '%s|%s|%s|%s|%s|%s' \"$TERM\" \"$NO_COLOR\" \"$PAGER\" \"$GIT_EDITOR\" \
                  \"$GIT_TERMINAL_PROMPT\" \"$DEBIAN_FRONTEND\"";
    let mut request = shell(s.as_ref(), "non-interactive", script).with_timeout_ms(30_000);
    request.non_interactive = true;
    let result = s
        .run_command(request.clone())
        .await
        .or_fail("run_command non_interactive")?;
    ensure_eq!(
        result.stdout,
        "dumb|1|cat|true|0|noninteractive",
        "TERM|NO_COLOR|PAGER|GIT_EDITOR|GIT_TERMINAL_PROMPT|DEBIAN_FRONTEND with non_interactive"
    );
    request.command_id = unique_id("non-interactive");
    request.env.push(("TERM".into(), "caller-term".into()));
    request.env.push(("PAGER".into(), "less".into()));
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command non_interactive with caller env")?;
    ensure_eq!(
        result.stdout,
        "caller-term|1|less|true|0|noninteractive",
        "non_interactive env with the caller's TERM and PAGER (the caller's env wins)"
    );
    s.close().await.or_fail("close")
}

/// A program that does not exist is `NotFound`.
async fn missing_program_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let program = format!(
        "conformance-no-such-program-{}",
        uuid::Uuid::new_v4().simple()
    );
    let request = RunnerCommandRequest::new(unique_id("missing"), program.clone(), ["x"])
        .with_cwd(s.workspace_root())
        .with_timeout_ms(30_000);
    s.run_command(request)
        .await
        .fails_with(RunnerErrorKind::NotFound, format!("run_command {program}"))?;
    s.close().await.or_fail("close")
}

/// A cwd that does not exist is `NotFound`.
async fn missing_cwd_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let cwd = cx.scratch(&s).join("no-such-dir");
    let request = RunnerCommandRequest::shell(unique_id("missing-cwd"), "echo ran")
        .with_cwd(&cwd)
        .with_timeout_ms(30_000);
    s.run_command(request).await.fails_with(
        RunnerErrorKind::NotFound,
        format!("run_command with cwd {}", cwd.display()),
    )?;
    s.close().await.or_fail("close")
}

/// Malformed requests are `InvalidRequest`.
async fn invalid_request_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let root = s.workspace_root();
    let empty_id = RunnerCommandRequest::new("", "echo", ["x"]).with_cwd(&root);
    s.run_command(empty_id).await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "run_command with an empty command_id",
    )?;
    let empty_program = RunnerCommandRequest::new(unique_id("empty"), "", ["x"]).with_cwd(&root);
    s.run_command(empty_program).await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "run_command with an empty program",
    )?;
    let nul_arg = RunnerCommandRequest::new(unique_id("nul"), "echo", ["a\0b"]).with_cwd(&root);
    s.run_command(nul_arg).await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "run_command with a NUL byte in an argument",
    )?;
    s.close().await.or_fail("close")
}

/// A command killed by a signal reports the signal and no exit code.
async fn signal_reported(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    for (name, number) in [("KILL", 9), ("TERM", 15)] {
        let result = sh(s.as_ref(), &format!("kill -{name} $$; sleep 5")).await?;
        ensure_eq!(
            result.signal,
            Some(number),
            "signal of a shell that sent itself SIG{name}"
        );
        ensure_eq!(
            result.exit_code,
            None,
            "exit_code of a shell killed by SIG{name}"
        );
        ensure!(
            !result.timed_out && !result.cancelled && !result.success(),
            "a shell killed by SIG{name}: expected not timed out, not cancelled, not success; got {}",
            describe_result(&result)
        );
    }
    s.close().await.or_fail("close")
}

/// Exit statuses are reported as the program ended, never decoded or guessed:
/// the exit codes a shell uses for "cannot execute", "not found" and
/// "killed by signal N" (128 + N) stay exit codes when a program exits with
/// them itself, and a real signal is never turned into 128 + N.
async fn exit_status_exact(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let run = |script: String| {
        let request =
            RunnerCommandRequest::new(unique_id("status"), "sh", ["-c".to_string(), script])
                .with_cwd(s.workspace_root())
                .with_timeout_ms(30_000);
        s.run_command(request)
    };
    for code in [0, 1, 126, 127, 130, 137, 143, 255] {
        let script = format!("exit {code}");
        let result = run(script.clone())
            .await
            .or_fail(format!("run_command sh -c {script:?}"))?;
        ensure!(
            result.exit_code == Some(code)
                && result.signal.is_none()
                && !result.timed_out
                && !result.cancelled,
            "sh -c {script:?}: expected exit_code Some({code}) and no signal, got {}",
            describe_result(&result)
        );
    }
    for (name, number) in [("KILL", 9), ("TERM", 15)] {
        let script = format!("kill -{name} $$");
        let result = run(script.clone())
            .await
            .or_fail(format!("run_command sh -c {script:?}"))?;
        ensure!(
            result.signal == Some(number)
                && result.exit_code.is_none()
                && !result.timed_out
                && !result.cancelled
                && !result.success(),
            "sh -c {script:?}: expected signal Some({number}) and exit_code None, got {}",
            describe_result(&result)
        );
    }
    s.close().await.or_fail("close")
}

/// `duration_ms` measures wall time from start to exit.
async fn duration_plausible(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let started = Instant::now();
    let result = sh(s.as_ref(), "sleep 1").await?;
    let outer = started.elapsed().as_millis() as u64;
    ensure!(
        result.success(),
        "sleep 1: expected exit 0, got {}",
        describe_result(&result)
    );
    ensure!(
        (900..=outer + 50).contains(&result.duration_ms),
        "duration_ms of `sleep 1`: expected between 900 and {} (the call took {outer} ms), got {}",
        outer + 50,
        result.duration_ms
    );
    let quick = sh(s.as_ref(), "exit 0").await?;
    ensure!(
        quick.duration_ms < result.duration_ms,
        "duration_ms of `exit 0` ({}) is not below that of `sleep 1` ({})",
        quick.duration_ms,
        result.duration_ms
    );
    s.close().await.or_fail("close")
}

/// Output printed before a timeout survives it, flagged `timed_out`.
async fn timeout_keeps_partial_output(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let script = format!(
        "echo partial-stdout; echo partial-stderr >&2; {}; echo never-printed",
        marker.sleep()
    );
    let request = shell(s.as_ref(), "timeout", &script).with_timeout_ms(1_500);
    let started = Instant::now();
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command with timeout_ms 1500")?;
    let took = started.elapsed();
    ensure!(
        result.timed_out,
        "expected timed_out: true after timeout_ms 1500, got {}",
        describe_result(&result)
    );
    ensure!(
        !result.success(),
        "a timed-out command must not be a success: {}",
        describe_result(&result)
    );
    ensure_eq!(
        result.stdout,
        "partial-stdout\n",
        "stdout printed before the timeout"
    );
    ensure_eq!(
        result.stderr,
        "partial-stderr\n",
        "stderr printed before the timeout"
    );
    ensure!(
        result.duration_ms >= 1_400 && took < Duration::from_secs(20),
        "timeout_ms 1500: expected the command to end soon after 1.5 s, got duration_ms {} \
         (the call took {} ms)",
        result.duration_ms,
        took.as_millis()
    );
    marker.wait_gone(s.as_ref(), "the timeout").await?;
    s.close().await.or_fail("close")
}

/// A timeout kills the whole tree, including a child that ignores TERM.
async fn timeout_kills_process_tree(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let request = shell(
        s.as_ref(),
        "timeout-tree",
        &format!("echo started; {}", marker.tree()),
    )
    .with_timeout_ms(10_000);
    let runner = s.clone();
    let task = tokio::spawn(async move { runner.run_command(request).await });
    let counted = marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(9))
        .await;
    let result = task
        .await
        .map_err(|e| format!("the run_command task failed: {e}"))?
        .or_fail("run_command with timeout_ms 10000")?;
    counted?;
    marker.wait_gone(s.as_ref(), "the timeout").await?;
    ensure!(
        result.timed_out,
        "expected timed_out: true, got {}",
        describe_result(&result)
    );
    ensure_eq!(result.stdout, "started\n", "stdout of the timed-out tree");
    s.close().await.or_fail("close")
}

/// Cancelling kills the whole tree (a TERM-ignoring child included).
async fn cancel_kills_process_tree(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let request = shell(
        s.as_ref(),
        "cancel-tree",
        &format!("echo started; {}", marker.tree()),
    )
    .with_timeout_ms(50_000);
    let id = request.command_id.clone();
    let runner = s.clone();
    let task = tokio::spawn(async move { runner.run_command(request).await });
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(15))
        .await?;
    let cancelled = s
        .cancel_command(&id)
        .await
        .or_fail(format!("cancel_command {id:?}"))?;
    ensure!(
        cancelled,
        "cancel_command of running command {id:?}: expected true, got false"
    );
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .map_err(|_| "run_command did not return within 20 s of cancel_command".to_string())?
        .map_err(|e| format!("the run_command task failed: {e}"))?
        .or_fail("run_command of the cancelled command")?;
    marker.wait_gone(s.as_ref(), "cancel_command").await?;
    ensure!(
        result.cancelled && !result.timed_out && !result.success(),
        "result of a cancelled command: expected cancelled, not timed out, not success; got {}",
        describe_result(&result)
    );
    ensure_eq!(
        result.stdout,
        "started\n",
        "stdout of the cancelled command"
    );
    let again = s
        .cancel_command(&id)
        .await
        .or_fail("second cancel_command")?;
    ensure!(
        !again,
        "cancel_command of an already cancelled command: expected false, got true"
    );
    s.close().await.or_fail("close")
}

/// Cancelling one command leaves a concurrent one and the session alone.
async fn cancel_spares_other_commands(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let victim = shell(s.as_ref(), "victim", &marker.tree()).with_timeout_ms(50_000);
    let victim_id = victim.command_id.clone();
    let bystander = shell(
        s.as_ref(),
        "bystander",
        "echo other-start; sleep 6; echo other-ok",
    )
    .with_timeout_ms(50_000);
    let (a, b) = (s.clone(), s.clone());
    let victim_task = tokio::spawn(async move { a.run_command(victim).await });
    let bystander_task = tokio::spawn(async move { b.run_command(bystander).await });
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(15))
        .await?;
    let cancelled = s
        .cancel_command(&victim_id)
        .await
        .or_fail("cancel_command")?;
    ensure!(
        cancelled,
        "cancel_command of a running command: expected true, got false"
    );
    ensure!(
        !bystander_task.is_finished(),
        "the second command finished before the cancel could be observed (the runner is too slow \
         for this check: counting processes took over 6 s)"
    );
    let victim_result = victim_task
        .await
        .map_err(|e| format!("victim task: {e}"))?
        .or_fail("run_command of the cancelled command")?;
    ensure!(
        victim_result.cancelled,
        "the cancelled command: expected cancelled, got {}",
        describe_result(&victim_result)
    );
    let other = bystander_task
        .await
        .map_err(|e| format!("bystander task: {e}"))?
        .or_fail("run_command of the concurrent command")?;
    ensure!(
        other.success() && !other.cancelled,
        "the concurrent command was affected by cancelling another: {}",
        describe_result(&other)
    );
    ensure_eq!(
        other.stdout,
        "other-start\nother-ok\n",
        "stdout of the concurrent command"
    );
    marker.wait_gone(s.as_ref(), "cancel_command").await?;
    let after = sh_ok(s.as_ref(), "echo still-works").await?;
    ensure_eq!(after, "still-works\n", "a command after the cancel");
    s.close().await.or_fail("close")
}

/// Cancelling an unknown or finished id is `Ok(false)`.
async fn cancel_unknown_id_false(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let unknown = unique_id("never-started");
    let cancelled = s
        .cancel_command(&unknown)
        .await
        .or_fail("cancel_command of an unknown id")?;
    ensure!(
        !cancelled,
        "cancel_command of an unknown id: expected false, got true"
    );
    let request = shell(s.as_ref(), "finished", "exit 0");
    let id = request.command_id.clone();
    s.run_command(request).await.or_fail("run_command")?;
    let cancelled = s
        .cancel_command(&id)
        .await
        .or_fail("cancel_command of a finished id")?;
    ensure!(
        !cancelled,
        "cancel_command of a finished command: expected false, got true"
    );
    s.close().await.or_fail("close")
}

/// Without stdin, a command reads EOF at once.
async fn stdin_default_empty(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let request = RunnerCommandRequest::new(unique_id("cat"), "cat", Vec::<String>::new())
        .with_cwd(s.workspace_root())
        .with_timeout_ms(10_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command cat without stdin")?;
    ensure!(
        !result.timed_out,
        "`cat` without stdin was still waiting for input after 10 s: a command without stdin \
         must get an empty stdin"
    );
    ensure!(
        result.success(),
        "cat without stdin: expected exit 0, got {}",
        describe_result(&result)
    );
    ensure_eq!(result.stdout, "", "stdout of cat without stdin");
    s.close().await.or_fail("close")
}

/// Stdin bytes reach the command, then EOF.
async fn stdin_delivered(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let input = "line one\nline two with ünïcødé\nno trailing newline";
    let request = RunnerCommandRequest::new(unique_id("cat"), "cat", Vec::<String>::new())
        .with_cwd(s.workspace_root())
        .with_stdin(input.as_bytes().to_vec())
        .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command cat with stdin")?;
    ensure!(
        !result.timed_out,
        "cat with stdin did not see EOF within 30 s"
    );
    ensure_eq!(result.stdout, input, "stdin echoed by cat");
    s.close().await.or_fail("close")
}

/// 2 MiB of random stdin arrives whole.
async fn stdin_large_arrives_whole(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let data = pseudo_random(2 * 1024 * 1024 + 7, seed());
    let expected = format!("{} {}", posix_cksum(&data), data.len());
    let request = RunnerCommandRequest::new(unique_id("cksum"), "cksum", Vec::<String>::new())
        .with_cwd(s.workspace_root())
        .with_stdin(data)
        .with_timeout_ms(50_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command cksum with 2 MiB stdin")?;
    ensure!(
        result.success(),
        "cksum with 2 MiB stdin: expected exit 0, got {}",
        describe_result(&result)
    );
    let got: Vec<&str> = result.stdout.split_whitespace().take(2).collect();
    ensure_eq!(
        got.join(" "),
        expected,
        "`cksum` of the stdin (checksum and length)"
    );
    s.close().await.or_fail("close")
}

/// Binary stdin (every byte value, NULs) round-trips through a file.
async fn stdin_binary_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let file = dir.join("stdin.bin");
    let data = all_byte_values();
    let script = format!(
        "mkdir -p {} && cat > {}",
        quote(&dir.display().to_string()),
        quote(&file.display().to_string())
    );
    let request = shell(s.as_ref(), "stdin-file", &script)
        .with_stdin(data.clone())
        .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command cat > file with binary stdin")?;
    ensure!(
        result.success(),
        "cat > file: expected exit 0, got {}",
        describe_result(&result)
    );
    let read = s
        .read_file(RunnerFileReadRequest::new(&file))
        .await
        .or_fail(format!("read_file {}", file.display()))?;
    same_bytes(
        &read.contents,
        &data,
        "binary stdin written to a file and read back",
    )?;
    s.close().await.or_fail("close")
}

/// How much the caller's peak memory may grow while 64 MiB are printed.
const MEMORY_BOUND: u64 = 40 << 20;

/// The peak resident memory of this process (Linux `VmHWM`), reset at start
/// through `/proc/self/clear_refs` when allowed. Other checks running at the same
/// time add to it, hence the generous bound.
struct PeakMemory(Option<u64>);

impl PeakMemory {
    fn read() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn start() -> Self {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self(Self::read())
    }

    /// Bytes the peak grew by, when it can be measured.
    fn growth(&self) -> Option<u64> {
        Some(Self::read()?.saturating_sub(self.0?))
    }
}

/// 64 MiB of output: exact counters, a bounded view, bounded caller memory.
async fn output_bounded(cx: Cx) -> CheckResult {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let s = cx.session().await?;
    let request = shell(
        s.as_ref(),
        "64mib",
        "dd if=/dev/zero bs=1048576 count=64 2>/dev/null",
    )
    .with_timeout_ms(150_000);
    let peak = PeakMemory::start();
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command printing 64 MiB")?;
    if let Some(grown) = peak.growth() {
        ensure!(
            grown < MEMORY_BOUND,
            "while a command printed 64 MiB, the peak memory of this process (where the \
             provider's client runs) grew by {} MiB: output must not be buffered whole",
            grown >> 20
        );
    }
    ensure!(
        result.success(),
        "dd printing 64 MiB: expected exit 0, got exit {:?} signal {:?} timed_out {}",
        result.exit_code,
        result.signal,
        result.timed_out
    );
    let t = result.stdout_truncation;
    ensure_eq!(
        t.bytes_seen,
        TOTAL,
        "stdout_truncation.bytes_seen of 64 MiB"
    );
    let budget = RunnerOutputLimit::default();
    let kept = result.stdout.bytes().filter(|b| *b == 0).count() as u64;
    ensure_eq!(
        kept,
        (budget.head_bytes + budget.tail_bytes) as u64,
        "NUL bytes kept in the stdout view (head + tail budget)"
    );
    ensure_eq!(
        t.bytes_dropped,
        TOTAL - kept,
        "stdout_truncation.bytes_dropped (seen − kept)"
    );
    ensure!(
        result.stdout.len() <= budget.head_bytes + budget.tail_bytes + 100,
        "the stdout view is {} bytes, over the head+tail budget of {} plus a marker line",
        result.stdout.len(),
        budget.head_bytes + budget.tail_bytes
    );
    let omitted = format!("{} bytes omitted", TOTAL - kept);
    ensure!(
        result.stdout.contains(&omitted),
        "the stdout view lacks the marker line naming {omitted:?}"
    );
    ensure_eq!(result.stderr, "", "stderr of dd 2>/dev/null");
    s.close().await.or_fail("close")
}

/// A custom `output_limit` is honoured per stream.
async fn output_limit_honoured(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script =
        "i=0; while [ $i -lt 1000 ]; do printf 0123456789; i=$((i+1)); done; echo small-stderr >&2";
    let mut request = shell(s.as_ref(), "limit", script).with_timeout_ms(30_000);
    request.output_limit = RunnerOutputLimit {
        head_bytes: 100,
        tail_bytes: 50,
    };
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command with output_limit 100+50")?;
    let t = result.stdout_truncation;
    ensure_eq!(t.bytes_seen, 10_000, "stdout bytes_seen");
    ensure_eq!(
        t.bytes_dropped,
        9_850,
        "stdout bytes_dropped with head 100 + tail 50"
    );
    let head = "0123456789".repeat(10);
    let tail = "0123456789".repeat(5);
    ensure!(
        result.stdout.starts_with(&head) && result.stdout.ends_with(&tail),
        "stdout view: expected the first 100 and the last 50 bytes, got {:?}",
        result.stdout
    );
    ensure!(
        result.stdout.contains("[… 9850 bytes omitted …]"),
        "stdout view lacks the line `[… 9850 bytes omitted …]`: {:?}",
        result.stdout
    );
    ensure!(
        result.stdout.len() <= 150 + 64,
        "stdout view is {} bytes, over 100 + 50 plus a marker line",
        result.stdout.len()
    );
    ensure_eq!(
        result.stderr,
        "small-stderr\n",
        "stderr under the budget is kept whole"
    );
    ensure_eq!(
        result.stderr_truncation.bytes_dropped,
        0,
        "stderr bytes_dropped"
    );
    ensure_eq!(result.stderr_truncation.bytes_seen, 13, "stderr bytes_seen");
    s.close().await.or_fail("close")
}

/// Head and tail cuts never split a UTF-8 sequence, and counters stay exact.
async fn truncation_utf8_safe(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    // 1 + 2 + 3 + 4 bytes: every cut position lands somewhere interesting.
    let unit = "aé€😀";
    let script = "i=0; while [ $i -lt 1000 ]; do printf '%s' \"$S\"; i=$((i+1)); done";
    let mut request = shell(s.as_ref(), "utf8", script)
        .with_env("S", unit)
        .with_timeout_ms(120_000);
    // A head of 104 bytes ends inside "€"; a tail of 8 bytes starts inside "é".
    request.output_limit = RunnerOutputLimit {
        head_bytes: 104,
        tail_bytes: 8,
    };
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command printing UTF-8")?;
    ensure!(
        result.success(),
        "printing 10 000 bytes of UTF-8: expected exit 0, got {}",
        describe_result(&result)
    );
    ensure!(
        !result.stdout.contains('\u{FFFD}'),
        "the stdout view contains U+FFFD (a split UTF-8 sequence): {:?}",
        result.stdout
    );
    let head = format!("{}aé", unit.repeat(10));
    ensure!(
        result.stdout.starts_with(&head),
        "stdout view: expected it to start with the whole characters of the first 104 bytes \
         ({head:?}), got {:?}",
        result.stdout
    );
    ensure!(
        result.stdout.ends_with("€😀"),
        "stdout view: expected it to end with the whole characters of the last 8 bytes (\"€😀\"), \
         got {:?}",
        result.stdout
    );
    let t = result.stdout_truncation;
    ensure_eq!(t.bytes_seen, 10_000, "stdout bytes_seen");
    ensure_eq!(
        t.bytes_dropped,
        10_000 - 103 - 7,
        "stdout bytes_dropped (partial sequences included)"
    );
    s.close().await.or_fail("close")
}

/// Eight concurrent commands each get exactly their own output.
async fn concurrent_commands_isolated(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let runs = (0..8).map(|k| {
        let s = s.clone();
        async move {
            let script = format!(
                "i=0; while [ $i -lt 200 ]; do echo cmd-{k}-line-$i; i=$((i+1)); done; echo err-{k} >&2; exit {k}"
            );
            let request = shell(s.as_ref(), &format!("concurrent-{k}"), &script).with_timeout_ms(50_000);
            (k, s.run_command(request).await)
        }
    });
    for (k, result) in futures_util::future::join_all(runs).await {
        let result = result.or_fail(format!("concurrent run_command #{k}"))?;
        let expected: String = (0..200).map(|i| format!("cmd-{k}-line-{i}\n")).collect();
        ensure_eq!(result.stdout, expected, "stdout of concurrent command #{k}");
        ensure_eq!(
            result.stderr,
            format!("err-{k}\n"),
            "stderr of concurrent command #{k}"
        );
        ensure_eq!(
            result.exit_code,
            Some(k),
            "exit code of concurrent command #{k}"
        );
    }
    s.close().await.or_fail("close")
}
