//! processes: background commands keyed by the caller's command id.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runner_api::{
    RunnerCommandRequest, RunnerErrorKind, RunnerEventStream, RunnerExitStatus, RunnerOutputChunk,
    RunnerOutputStream, RunnerProcessEvent, RunnerProcessState, RunnerSignal,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{quote, sh_ok, shell, unique_id, wait_exited};
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Processes;
    const BG: &[crate::catalogue::Capability] = &[CommandExec, BackgroundProcesses];
    vec![
        Check::new(
            "processes_start_and_output",
            a,
            BG,
            "start_command: \"Starts a command in the background\"; command_output gives its output and status.",
            |cx| Box::pin(start_and_output(cx)),
        ),
        Check::new(
            "processes_idempotent_id",
            a,
            BG,
            "start_command: \"Starting an id that already exists returns the existing process\" (it runs once).",
            |cx| Box::pin(idempotent_id(cx)),
        ),
        Check::new(
            "processes_list_and_status",
            a,
            BG,
            "list_commands (\"oldest first\") and command_status: running, then exited with its exit code.",
            |cx| Box::pin(list_and_status(cx)),
        ),
        Check::new(
            "processes_output_counters",
            a,
            BG,
            "RunnerProcessInfo: stdout_bytes, stderr_bytes and last_seq count the output exactly.",
            |cx| Box::pin(output_counters(cx)),
        ),
        Check::new(
            "processes_output_resume_after_seq",
            a,
            BG,
            "command_output: \"Numbered output chunks after after_seq … so a client … resumes where it stopped\".",
            |cx| Box::pin(output_resume_after_seq(cx)),
        ),
        Check::new(
            "processes_connection_lost_resumes_output",
            a,
            BG,
            "A connection to the sandbox cut mid-command loses nothing: the command runs on, and command_output after the last sequence number seen gives every later chunk once, in order.",
            |cx| Box::pin(connection_lost_resumes_output(cx)),
        )
        .breaking(),
        Check::new(
            "processes_stream_until_exited",
            a,
            &[CommandExec, BackgroundProcesses, Streaming],
            "stream_command: \"Live output events after after_seq, ending with Exited\".",
            |cx| Box::pin(stream_until_exited(cx)),
        ),
        Check::new(
            "processes_stream_resumes_after_seq",
            a,
            &[CommandExec, BackgroundProcesses, Streaming],
            "stream_command: events after a given seq only, then Exited.",
            |cx| Box::pin(stream_resumes_after_seq(cx)),
        ),
        Check::new(
            "processes_write_stdin_then_close",
            a,
            &[CommandExec, BackgroundProcesses, Stdin],
            "write_stdin: \"Writes to a background command's stdin … closing it afterwards when close is set\".",
            |cx| Box::pin(write_stdin_then_close(cx)),
        ),
        Check::new(
            "processes_signal_terminate",
            a,
            BG,
            "signal_command: \"Sends signal to a running command's process group\"; Terminate ends it with signal 15.",
            |cx| Box::pin(signal_terminate(cx)),
        ),
        Check::new(
            "processes_signal_exited_invalid",
            a,
            BG,
            "signal_command errors: \"InvalidRequest (already exited)\".",
            |cx| Box::pin(signal_exited_invalid(cx)),
        ),
        Check::new(
            "processes_cancel_kills_tree",
            a,
            &[CommandExec, BackgroundProcesses, Cancellation],
            "cancel_command of a background command kills its whole process tree; its status says cancelled.",
            |cx| Box::pin(cancel_kills_tree(cx)),
        ),
        Check::new(
            "processes_timeout_applies",
            a,
            BG,
            "timeout_ms applies to background commands: the tree is killed and the status says timed_out.",
            |cx| Box::pin(timeout_applies(cx)),
        ),
        Check::new(
            "processes_unknown_id_not_found",
            a,
            BG,
            "command_status / command_output / signal_command / stream_command / write_stdin: \"NotFound for an unknown id\".",
            |cx| Box::pin(unknown_id_not_found(cx)),
        ),
        Check::new(
            "processes_running_id_already_exists",
            a,
            BG,
            "run_command errors: \"AlreadyExists (the id is running in the background)\".",
            |cx| Box::pin(running_id_already_exists(cx)),
        ),
    ]
}

const WAIT: Duration = Duration::from_secs(30);

/// Starts `script` in the background and returns its command id.
async fn start(s: &Session, label: &str, script: &str) -> CheckResult<String> {
    let request = shell(s.as_ref(), label, script);
    let id = request.command_id.clone();
    let info = s
        .start_command(request)
        .await
        .or_fail(format!("start_command {label}"))?;
    ensure_eq!(info.command_id, id, "command_id of the started process");
    Ok(id)
}

/// Output chunks of one stream, concatenated.
fn concat(chunks: &[RunnerOutputChunk], stream: RunnerOutputStream) -> Vec<u8> {
    chunks
        .iter()
        .filter(|c| c.stream == stream)
        .flat_map(|c| c.bytes.iter().copied())
        .collect()
}

/// A script printing `n` numbered lines to stdout and stderr, with short pauses.
fn ticking_script(n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); sleep 0.05; done"
    )
}

fn ticking_expected(n: usize) -> (String, String) {
    (
        (0..n).map(|i| format!("out-{i}\n")).collect(),
        (0..n).map(|i| format!("err-{i}\n")).collect(),
    )
}

/// Background output and status come back through `command_output`.
async fn start_and_output(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let id = start(&s, "bg", "echo hello; echo oops >&2; exit 4").await?;
    let info = wait_exited(s.as_ref(), &id, WAIT).await?;
    let status = info.status.ok_or("an exited command has no status")?;
    ensure_eq!(status.exit_code, Some(4), "exit code in command_status");
    let out = s.command_output(&id, 0).await.or_fail("command_output")?;
    ensure_eq!(out.command_id, id, "command_output command_id");
    ensure_eq!(out.stdout, "hello\n", "command_output stdout view");
    ensure_eq!(out.stderr, "oops\n", "command_output stderr view");
    ensure_eq!(
        out.state,
        RunnerProcessState::Exited,
        "command_output state"
    );
    ensure_eq!(
        out.status.and_then(|s| s.exit_code),
        Some(4),
        "command_output status exit code"
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&out.chunks, RunnerOutputStream::Stdout)),
        "hello\n",
        "stdout chunks"
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&out.chunks, RunnerOutputStream::Stderr)),
        "oops\n",
        "stderr chunks"
    );
    s.close().await.or_fail("close")
}

/// The same id twice returns the same process; the command runs once.
async fn idempotent_id(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let counter = dir.join("counter");
    let d = quote(&dir.display().to_string());
    sh_ok(s.as_ref(), &format!("mkdir -p {d}")).await?;
    let script = format!(
        "echo run >> {}; sleep 1",
        quote(&counter.display().to_string())
    );
    let request = shell(s.as_ref(), "once", &script);
    let id = request.command_id.clone();
    let first = s
        .start_command(request.clone())
        .await
        .or_fail("start_command")?;
    let second = s
        .start_command(request.clone())
        .await
        .or_fail("start_command again with the same id")?;
    ensure_eq!(
        second.command_id,
        first.command_id,
        "command_id of the repeated start"
    );
    ensure_eq!(
        second.started_at_ms,
        first.started_at_ms,
        "started_at_ms of the repeated start (same process)"
    );
    ensure_eq!(
        second.pid,
        first.pid,
        "pid of the repeated start (same process)"
    );
    wait_exited(s.as_ref(), &id, WAIT).await?;
    let third = s
        .start_command(request)
        .await
        .or_fail("start_command with the id of an exited command")?;
    ensure_eq!(
        third.started_at_ms,
        first.started_at_ms,
        "started_at_ms after exit (still the same process)"
    );
    ensure_eq!(
        third.state,
        RunnerProcessState::Exited,
        "state returned for the exited id"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = sh_ok(
        s.as_ref(),
        &format!("cat {}", quote(&counter.display().to_string())),
    )
    .await?;
    ensure_eq!(
        runs,
        "run\n",
        "side effects of three starts with one id (the command must run once)"
    );
    s.close().await.or_fail("close")
}

/// `list_commands` and `command_status` follow a command from running to exited.
async fn list_and_status(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Both commands run until the check lets them go, however slowly the
    // backend starts the second one.
    let dir = cx.scratch(&s);
    sh_ok(
        s.as_ref(),
        &format!("mkdir -p {}", quote(&dir.display().to_string())),
    )
    .await?;
    let gate = quote(&dir.join("gate").display().to_string());
    let wait_gate = format!("while [ ! -e {gate} ]; do sleep 0.05; done");
    let first = start(&s, "first", &format!("{wait_gate}; exit 7")).await?;
    let second = start(&s, "second", &format!("{wait_gate}; exit 0")).await?;
    let status = s.command_status(&first).await.or_fail("command_status")?;
    ensure_eq!(
        status.state,
        RunnerProcessState::Running,
        "state of a sleeping command"
    );
    ensure!(
        status.status.is_none(),
        "a running command has a status: {:?}",
        status.status
    );
    ensure!(
        status.started_at_ms + 60_000 >= before_ms && status.started_at_ms <= before_ms + 60_000,
        "started_at_ms {} is not within a minute of now ({before_ms})",
        status.started_at_ms
    );
    let list = s.list_commands().await.or_fail("list_commands")?;
    let ids: Vec<&str> = list.iter().map(|p| p.command_id.as_str()).collect();
    let pos_first = ids.iter().position(|i| *i == first);
    let pos_second = ids.iter().position(|i| *i == second);
    ensure!(
        matches!((pos_first, pos_second), (Some(a), Some(b)) if a < b),
        "list_commands: expected {first:?} before {second:?} (oldest first), got {ids:?}"
    );
    ensure!(
        list.iter()
            .filter(|p| p.command_id == first || p.command_id == second)
            .all(|p| p.state == RunnerProcessState::Running),
        "list_commands: both sleeping commands should be running: {list:?}"
    );
    sh_ok(s.as_ref(), &format!("touch {gate}")).await?;
    let done = wait_exited(s.as_ref(), &first, WAIT).await?;
    ensure_eq!(
        done.status.and_then(|s| s.exit_code),
        Some(7),
        "exit code of `exit 7` in command_status"
    );
    wait_exited(s.as_ref(), &second, WAIT).await?;
    let list = s
        .list_commands()
        .await
        .or_fail("list_commands after exit")?;
    let entry = list.iter().find(|p| p.command_id == first);
    ensure!(
        entry.is_some_and(|p| p.state == RunnerProcessState::Exited
            && p.status.and_then(|s| s.exit_code) == Some(7)),
        "list_commands after exit: expected {first:?} exited with code 7, got {entry:?}"
    );
    s.close().await.or_fail("close")
}

/// The info counters match the output exactly.
async fn output_counters(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "i=0; while [ $i -lt 100 ]; do printf 0123456789; i=$((i+1)); done; \
                  i=0; while [ $i -lt 30 ]; do printf abcdefghij >&2; i=$((i+1)); done";
    let id = start(&s, "counters", script).await?;
    let info = wait_exited(s.as_ref(), &id, WAIT).await?;
    ensure_eq!(info.stdout_bytes, 1000, "stdout_bytes");
    ensure_eq!(info.stderr_bytes, 300, "stderr_bytes");
    let out = s.command_output(&id, 0).await.or_fail("command_output")?;
    let last = out.chunks.last().map_or(0, |c| c.seq);
    ensure_eq!(
        info.last_seq,
        last,
        "last_seq against the newest chunk's seq"
    );
    ensure_eq!(out.next_after_seq, last, "next_after_seq");
    ensure_eq!(
        out.stdout_truncation.bytes_seen,
        1000,
        "command_output stdout bytes_seen"
    );
    ensure_eq!(
        out.stderr_truncation.bytes_seen,
        300,
        "command_output stderr bytes_seen"
    );
    s.close().await.or_fail("close")
}

/// Resuming after a seq gives exactly the later chunks.
/// Every chunk of `id` after `after`, until it exits: calls that meet the
/// cut connection (`Unavailable`) are retried, a bounded number of times.
async fn output_until_exited(
    s: &Session,
    id: &runner_api::RunnerCommandId,
    mut after: u64,
    chunks: &mut Vec<RunnerOutputChunk>,
) -> CheckResult<Option<RunnerExitStatus>> {
    let deadline = Instant::now() + WAIT;
    let mut lost = 0;
    loop {
        let output = match s.command_output(id, after).await {
            Ok(output) => output,
            Err(e) if e.kind() == RunnerErrorKind::Unavailable && lost < 5 => {
                lost += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(format!("command_output after {after}: {e}")),
        };
        ensure!(
            output.first_retained_seq <= after + 1,
            "output after seq {after} was dropped: the oldest retained is {}",
            output.first_retained_seq
        );
        after = output.next_after_seq;
        chunks.extend(output.chunks);
        if output.state == RunnerProcessState::Exited {
            return Ok(output.status);
        }
        ensure!(
            Instant::now() < deadline,
            "{id} did not exit within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connection_lost_resumes_output(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let n = 150;
    let script = format!("i=1; while [ $i -le {n} ]; do echo line$i; i=$((i+1)); sleep 0.01; done");
    let id = start(&s, "cut", &script).await?;
    // Some output first, so the cut falls in the middle of the command.
    let mut chunks = Vec::new();
    let mut after = 0;
    let deadline = Instant::now() + WAIT;
    while concat(&chunks, RunnerOutputStream::Stdout).len() < 40 {
        let output = s
            .command_output(&id, after)
            .await
            .or_fail("command_output before the cut")?;
        after = output.next_after_seq;
        chunks.extend(output.chunks);
        ensure!(Instant::now() < deadline, "no output before the cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cx.break_connections(s.state()).await?;
    let exit = output_until_exited(&s, &id, after, &mut chunks).await?;
    ensure!(
        exit.as_ref().is_some_and(|e| e.exit_code == Some(0)),
        "the command ran on to exit 0 after the cut: {exit:?}"
    );
    let seqs: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase strictly across the cut (none twice): {seqs:?}"
    );
    let expected: String = (1..=n).map(|i| format!("line{i}\n")).collect();
    ensure_eq!(
        String::from_utf8_lossy(&concat(&chunks, RunnerOutputStream::Stdout)),
        expected,
        "stdout across the cut, every line once"
    );
    // The session goes on working over a new connection.
    sh_ok(s.as_ref(), "true").await?;
    Ok(())
}

async fn output_resume_after_seq(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let n = 20;
    let id = start(&s, "resume", &ticking_script(n)).await?;
    wait_exited(s.as_ref(), &id, WAIT).await?;
    let all = s
        .command_output(&id, 0)
        .await
        .or_fail("command_output after 0")?;
    let (out, err) = ticking_expected(n);
    ensure!(
        all.first_retained_seq <= 1,
        "first_retained_seq {} > 1 for a small output",
        all.first_retained_seq
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&all.chunks, RunnerOutputStream::Stdout)),
        out,
        "stdout chunks concatenated"
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&all.chunks, RunnerOutputStream::Stderr)),
        err,
        "stderr chunks concatenated"
    );
    let seqs: Vec<u64> = all.chunks.iter().map(|c| c.seq).collect();
    ensure!(
        seqs.first().is_some_and(|f| *f >= 1) && seqs.windows(2).all(|w| w[0] < w[1]),
        "chunk seqs must start at 1 or later and increase strictly: {seqs:?}"
    );
    ensure!(
        seqs.len() >= 4,
        "expected several chunks from output paced over a second, got {}",
        seqs.len()
    );
    let mid = seqs[seqs.len() / 2];
    let rest = s
        .command_output(&id, mid)
        .await
        .or_fail(format!("command_output after {mid}"))?;
    ensure!(
        rest.chunks.iter().all(|c| c.seq > mid),
        "command_output after {mid} returned chunks with seq ≤ {mid}: {:?}",
        rest.chunks.iter().map(|c| c.seq).collect::<Vec<_>>()
    );
    let expected_rest: Vec<&RunnerOutputChunk> =
        all.chunks.iter().filter(|c| c.seq > mid).collect();
    ensure_eq!(
        rest.chunks.iter().collect::<Vec<_>>(),
        expected_rest,
        "chunks after seq {mid}"
    );
    let mut joined: Vec<RunnerOutputChunk> = all
        .chunks
        .iter()
        .filter(|c| c.seq <= mid)
        .cloned()
        .collect();
    joined.extend(rest.chunks.iter().cloned());
    ensure_eq!(
        String::from_utf8_lossy(&concat(&joined, RunnerOutputStream::Stdout)),
        out,
        "stdout of chunks up to {mid} joined with chunks after {mid}"
    );
    let last = *seqs.last().unwrap_or(&0);
    ensure_eq!(rest.next_after_seq, last, "next_after_seq after {mid}");
    let none = s
        .command_output(&id, last)
        .await
        .or_fail(format!("command_output after {last}"))?;
    ensure!(
        none.chunks.is_empty(),
        "command_output after the last seq returned chunks: {:?}",
        none.chunks
    );
    ensure_eq!(
        none.next_after_seq,
        last,
        "next_after_seq when nothing is new"
    );
    s.close().await.or_fail("close")
}

/// Collected events of a stream: (seq, stream, bytes) and the exit status.
struct Collected {
    chunks: Vec<RunnerOutputChunk>,
    exit: RunnerExitStatus,
}

async fn collect(mut stream: RunnerEventStream, within: Duration) -> CheckResult<Collected> {
    let deadline = Instant::now() + within;
    let mut chunks = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.next())
            .await
            .map_err(|_| {
                format!(
                    "stream_command: no Exited event within {} s",
                    within.as_secs()
                )
            })?;
        let event = match next {
            None => return Err("stream_command ended without an Exited event".into()),
            Some(event) => event.or_fail("stream_command event")?,
        };
        match event {
            RunnerProcessEvent::Stdout { seq, bytes } => chunks.push(RunnerOutputChunk {
                seq,
                stream: RunnerOutputStream::Stdout,
                bytes,
            }),
            RunnerProcessEvent::Stderr { seq, bytes } => chunks.push(RunnerOutputChunk {
                seq,
                stream: RunnerOutputStream::Stderr,
                bytes,
            }),
            RunnerProcessEvent::Exited { status } => {
                let after = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
                return match after {
                    Ok(None) => Ok(Collected {
                        chunks,
                        exit: status,
                    }),
                    Ok(Some(extra)) => Err(format!(
                        "stream_command yielded an event after Exited: {:?}",
                        extra.map_err(|e| e.to_string())
                    )),
                    Err(_) => Err("stream_command did not end within 5 s after Exited".into()),
                };
            }
            other => return Err(format!("stream_command: unexpected event {other:?}")),
        }
    }
}

/// A live stream yields the output, in order, and ends with `Exited`.
async fn stream_until_exited(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let n = 15;
    let id = start(&s, "stream", &format!("{}; exit 3", ticking_script(n))).await?;
    let stream = s.stream_command(&id, 0).await.or_fail("stream_command")?;
    let got = collect(stream, WAIT).await?;
    let (out, err) = ticking_expected(n);
    let seqs: Vec<u64> = got.chunks.iter().map(|c| c.seq).collect();
    ensure!(
        seqs.first().is_some_and(|f| *f >= 1) && seqs.windows(2).all(|w| w[0] < w[1]),
        "stream seqs must start at 1 or later and increase strictly: {seqs:?}"
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&got.chunks, RunnerOutputStream::Stdout)),
        out,
        "streamed stdout"
    );
    ensure_eq!(
        String::from_utf8_lossy(&concat(&got.chunks, RunnerOutputStream::Stderr)),
        err,
        "streamed stderr"
    );
    ensure_eq!(got.exit.exit_code, Some(3), "exit code in the Exited event");
    s.close().await.or_fail("close")
}

/// A stream opened after a seq yields only later events, then `Exited`.
async fn stream_resumes_after_seq(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let n = 10;
    let id = start(&s, "stream-resume", &ticking_script(n)).await?;
    wait_exited(s.as_ref(), &id, WAIT).await?;
    let all = s.command_output(&id, 0).await.or_fail("command_output")?;
    ensure!(
        all.chunks.len() >= 2,
        "expected several chunks, got {}",
        all.chunks.len()
    );
    let mid = all.chunks[all.chunks.len() / 2 - 1].seq;
    let stream = s
        .stream_command(&id, mid)
        .await
        .or_fail(format!("stream_command after {mid}"))?;
    let got = collect(stream, WAIT).await?;
    let expected: Vec<RunnerOutputChunk> =
        all.chunks.iter().filter(|c| c.seq > mid).cloned().collect();
    ensure_eq!(got.chunks, expected, "events streamed after seq {mid}");
    ensure_eq!(got.exit.exit_code, Some(0), "exit code in the Exited event");
    s.close().await.or_fail("close")
}

/// `write_stdin` delivers bytes; `close` delivers EOF.
async fn write_stdin_then_close(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let mut request =
        shell(s.as_ref(), "stdin", "cat; echo EOF-SEEN").with_stdin(b"first\n".to_vec());
    request.keep_stdin_open = true;
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail("start_command with keep_stdin_open")?;
    s.write_stdin(&id, b"second\n".to_vec(), false)
        .await
        .or_fail("write_stdin")?;
    s.write_stdin(&id, b"third\0binary\n".to_vec(), true)
        .await
        .or_fail("write_stdin with close")?;
    wait_exited(s.as_ref(), &id, Duration::from_secs(20))
        .await
        .map_err(|e| format!("after write_stdin(close = true) the command did not see EOF: {e}"))?;
    let out = s.command_output(&id, 0).await.or_fail("command_output")?;
    let stdout = concat(&out.chunks, RunnerOutputStream::Stdout);
    ensure_eq!(
        String::from_utf8_lossy(&stdout),
        "first\nsecond\nthird\0binary\nEOF-SEEN\n",
        "what the command read from stdin, then EOF"
    );
    s.write_stdin(&id, b"late".to_vec(), false)
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "write_stdin after the command exited",
        )?;
    let marker = cx.marker();
    let closed = start(&s, "no-stdin", &marker.sleep()).await?;
    s.write_stdin(&closed, b"x".to_vec(), false)
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "write_stdin to a command started without keep_stdin_open",
        )?;
    s.signal_command(&closed, RunnerSignal::Kill)
        .await
        .or_fail("signal_command Kill")?;
    s.close().await.or_fail("close")
}

/// `Terminate` ends a command with signal 15.
async fn signal_terminate(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let request = RunnerCommandRequest::new(
        unique_id("term"),
        "sleep",
        [marker.sleep()[6..].to_string()],
    )
    .with_cwd(s.workspace_root());
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail("start_command sleep")?;
    marker
        .wait_running(s.as_ref(), 1, Duration::from_secs(10))
        .await?;
    s.signal_command(&id, RunnerSignal::Terminate)
        .await
        .or_fail("signal_command Terminate")?;
    let info = wait_exited(s.as_ref(), &id, Duration::from_secs(10)).await?;
    let status = info.status.ok_or("an exited command has no status")?;
    ensure_eq!(
        status.signal,
        Some(15),
        "signal of a sleep ended by Terminate"
    );
    ensure_eq!(
        status.exit_code,
        None,
        "exit_code of a sleep ended by Terminate"
    );
    marker
        .wait_gone(s.as_ref(), "signal_command Terminate")
        .await?;
    s.close().await.or_fail("close")
}

/// Signalling an exited command is `InvalidRequest`.
async fn signal_exited_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let id = start(&s, "quick", "exit 0").await?;
    wait_exited(s.as_ref(), &id, WAIT).await?;
    s.signal_command(&id, RunnerSignal::Terminate)
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "signal_command of an exited command",
        )?;
    s.close().await.or_fail("close")
}

/// Cancelling a background command kills its tree.
async fn cancel_kills_tree(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let id = start(&s, "bg-cancel", &format!("echo started; {}", marker.tree())).await?;
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(15))
        .await?;
    let cancelled = s.cancel_command(&id).await.or_fail("cancel_command")?;
    ensure!(
        cancelled,
        "cancel_command of a running background command: expected true, got false"
    );
    marker.wait_gone(s.as_ref(), "cancel_command").await?;
    let info = wait_exited(s.as_ref(), &id, Duration::from_secs(15)).await?;
    let status = info.status.ok_or("an exited command has no status")?;
    ensure!(
        status.cancelled && !status.timed_out,
        "status of a cancelled command: expected cancelled, got {status:?}"
    );
    s.close().await.or_fail("close")
}

/// `timeout_ms` kills a background command's tree too.
async fn timeout_applies(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let request = shell(
        s.as_ref(),
        "bg-timeout",
        &format!("echo begun; {}", marker.tree()),
    )
    .with_timeout_ms(10_000);
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail("start_command with timeout_ms 10000")?;
    // The tree must be seen running before the timeout ends it; counting goes
    // through the session, which a loaded machine slows down.
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(9))
        .await?;
    let info = wait_exited(s.as_ref(), &id, WAIT).await?;
    let status = info.status.ok_or("an exited command has no status")?;
    ensure!(
        status.timed_out,
        "status of a background command past timeout_ms: expected timed_out, got {status:?}"
    );
    let out = s.command_output(&id, 0).await.or_fail("command_output")?;
    ensure_eq!(out.stdout, "begun\n", "output printed before the timeout");
    marker.wait_gone(s.as_ref(), "the timeout").await?;
    s.close().await.or_fail("close")
}

/// Every operation on an unknown id is `NotFound`.
async fn unknown_id_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let id = unique_id("never-started");
    let nf = RunnerErrorKind::NotFound;
    s.command_status(&id)
        .await
        .fails_with(nf, "command_status of an unknown id")?;
    s.command_output(&id, 0)
        .await
        .fails_with(nf, "command_output of an unknown id")?;
    s.signal_command(&id, RunnerSignal::Terminate)
        .await
        .fails_with(nf, "signal_command of an unknown id")?;
    if cx.has(Streaming) {
        s.stream_command(&id, 0)
            .await
            .map(|_| ())
            .fails_with(nf, "stream_command of an unknown id")?;
    }
    if cx.has(Stdin) {
        s.write_stdin(&id, b"x".to_vec(), true)
            .await
            .fails_with(nf, "write_stdin of an unknown id")?;
    }
    s.close().await.or_fail("close")
}

/// `run_command` with the id of a running background command is `AlreadyExists`.
async fn running_id_already_exists(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let id = start(&s, "busy", &marker.sleep()).await?;
    let again = RunnerCommandRequest::shell(id.clone(), "echo second").with_cwd(s.workspace_root());
    s.run_command(again).await.fails_with(
        RunnerErrorKind::AlreadyExists,
        "run_command with the id of a running background command",
    )?;
    s.signal_command(&id, RunnerSignal::Kill)
        .await
        .or_fail("signal_command Kill")?;
    wait_exited(s.as_ref(), &id, WAIT).await?;
    marker.wait_gone(s.as_ref(), "signal_command Kill").await?;
    s.close().await.or_fail("close")
}
