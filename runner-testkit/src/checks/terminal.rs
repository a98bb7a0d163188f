//! terminal and watch: commands on a pseudo-terminal, and file events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runner_api::{
    RunnerCommandRequest, RunnerErrorKind, RunnerOutputChunk, RunnerWatchEvent,
    RunnerWatchEventKind, RunnerWatchRequest, RunnerWatchStream,
};

use crate::catalogue::{Area, Capability, Capability::*, Check};
use crate::checks::hostile::setsid_child_cancelled;
use crate::commands::{describe_result, quote, sh_ok, shell, wait_exited};
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, shorten};

/// How long a check waits for output or events it expects.
const WAIT: Duration = Duration::from_secs(20);

/// The size terminal commands start with.
const ROWS: u16 = 30;
const COLS: u16 = 100;

/// How many file events the overflow check causes.
const RAPID_EVENTS: usize = 100_000;

/// The most events a watch may hand out after [`RAPID_EVENTS`] were made
/// while nobody read: its queue, plus as much again for events in flight
/// between a sandbox and the caller.
const HELD_AT_MOST: usize = 2 * RunnerWatchRequest::MAX_QUEUED_EVENTS;

pub(crate) fn checks() -> Vec<Check> {
    let t = Area::Terminal;
    let w = Area::Watch;
    const PTY: &[Capability] = &[CommandExec, BackgroundProcesses, Stdin, Pty];
    const WATCH: &[Capability] = &[CommandExec, FileManagement, FileWatch];
    vec![
        Check::new(
            "terminal_tty_and_size",
            t,
            &[CommandExec, Pty],
            "RunnerCommandRequest::terminal: the program runs on a terminal (`test -t`, `tty`) of the requested size (`stty size`), with TERM set.",
            |cx| Box::pin(tty_and_size(cx)),
        ),
        Check::new(
            "terminal_resize_seen",
            t,
            PTY,
            "resize_terminal: the program gets SIGWINCH and sees the new size.",
            |cx| Box::pin(resize_seen(cx)),
        ),
        Check::new(
            "terminal_interrupt_key",
            t,
            PTY,
            "write_stdin on a terminal is raw input: 0x03 ends a `sleep` run by an interactive shell, and the shell prompts again and runs the next line.",
            |cx| Box::pin(interrupt_key(cx)),
        ),
        Check::new(
            "terminal_output_resumes_after_seq",
            t,
            PTY,
            "A terminal command's output is numbered like any other: command_output after a sequence number gives exactly the later chunks.",
            |cx| Box::pin(output_resumes_after_seq(cx)),
        ),
        Check::new(
            "terminal_setsid_child_cancelled",
            t,
            &[CommandExec, BackgroundProcesses, Cancellation, Pty],
            "cancel_command of a terminal command kills its whole tree, a child that left the session with setsid included.",
            |cx| Box::pin(setsid_child_cancelled(cx, Some((ROWS, COLS)))),
        ),
        Check::new(
            "terminal_bad_resize_refused",
            t,
            PTY,
            "resize_terminal: InvalidRequest for a command not on a terminal and for a size of 0 or over RunnerTerminal::MAX_SIZE; NotFound for an unknown id.",
            |cx| Box::pin(bad_resize_refused(cx)),
        ),
        Check::new(
            "terminal_capability",
            t,
            &[],
            "pty: false → a terminal request and resize_terminal are Unsupported.",
            |cx| Box::pin(terminal_capability(cx)),
        ),
        Check::new(
            "watch_sees_changes_in_order",
            w,
            WATCH,
            "watch: created, modified, renamed and removed events inside the workspace, relative to it, in the order they happened.",
            |cx| Box::pin(sees_changes_in_order(cx)),
        ),
        Check::new(
            "watch_recursive_sees_new_directories",
            w,
            WATCH,
            "watch with recursive: events of a directory created after the watch began, with the directory flag on its creation.",
            |cx| Box::pin(recursive_sees_new_directories(cx)),
        ),
        Check::new(
            "watch_recursive_sees_contents_made_with_their_directory",
            w,
            WATCH,
            "watch with recursive: what a new directory holds when it appears (made at once with it, or moved in with it from outside the watch) is reported as created, each once.",
            |cx| Box::pin(recursive_sees_contents_made_with_their_directory(cx)),
        ),
        Check::new(
            "watch_outside_refused",
            w,
            &[FileWatch],
            "watch: a path outside the workspace (`..`, an absolute path elsewhere) is PermissionDenied; a missing path NotFound.",
            |cx| Box::pin(outside_refused(cx)),
        ),
        Check::new(
            "watch_overflow_bounded",
            w,
            WATCH,
            "watch: 100,000 rapid events while the reader is away give an Overflow event, and no more events are held than the bounded queue allows.",
            |cx| Box::pin(overflow_bounded(cx)),
        ),
        Check::new(
            "watch_ends_with_session",
            w,
            &[FileWatch],
            "watch: \"The watch ends when the stream is dropped or the session closes\".",
            |cx| Box::pin(ends_with_session(cx)),
        ),
        Check::new(
            "watch_capability",
            w,
            &[],
            "file_watch: false → watch is Unsupported.",
            |cx| Box::pin(watch_capability(cx)),
        ),
    ]
}

/// A background terminal command running `script` with `sh -c`.
fn terminal_shell(s: &Session, label: &str, script: &str) -> RunnerCommandRequest {
    let mut request = shell(s.as_ref(), label, script).with_terminal(ROWS, COLS);
    request.keep_stdin_open = true;
    request
}

/// Starts `request`, returning its id.
async fn start(s: &Session, request: RunnerCommandRequest) -> CheckResult<String> {
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail(format!("start_command {id} on a terminal"))?;
    Ok(id)
}

/// Polls the command's output until the text after `after_seq` contains
/// `needle`; returns that text and the last sequence number read.
async fn wait_for(
    s: &Session,
    id: &str,
    after_seq: u64,
    needle: &str,
) -> CheckResult<(String, u64)> {
    let deadline = Instant::now() + WAIT;
    let mut text = Vec::new();
    let mut seq = after_seq;
    loop {
        let output = s
            .command_output(&id.to_string(), seq)
            .await
            .or_fail(format!("command_output {id} after {seq}"))?;
        for chunk in &output.chunks {
            text.extend_from_slice(&chunk.bytes);
        }
        seq = output.next_after_seq;
        let got = String::from_utf8_lossy(&text).into_owned();
        if got.contains(needle) {
            return Ok((got, seq));
        }
        if Instant::now() >= deadline || output.status.is_some() {
            return Err(format!(
                "terminal command {id}: waited for {needle:?}, got {} (state {:?})",
                shorten(&format!("{got:?}")),
                output.state
            ));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn tty_and_size(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "if test -t 0 && test -t 1 && test -t 2; then echo TTY-YES; fi; tty; stty size; echo \"TERM=$TERM\"";
    let request = shell(s.as_ref(), "tty", script)
        .with_terminal(ROWS, COLS)
        .with_timeout_ms(30_000);
    let result = s
        .run_command(request)
        .await
        .or_fail("run_command on a terminal")?;
    ensure!(
        result.success(),
        "tty and stty size on a terminal: {}",
        describe_result(&result)
    );
    let out = result.stdout.replace('\r', "");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.first() == Some(&"TTY-YES"),
        "stdin, stdout and stderr must be terminals: {out:?}"
    );
    ensure!(
        lines.get(1).is_some_and(|l| l.starts_with("/dev/")),
        "tty must name the terminal device: {out:?}"
    );
    ensure_eq!(
        lines.get(2).copied(),
        Some(format!("{ROWS} {COLS}").as_str()),
        "stty size on a terminal of {ROWS}x{COLS} ({out:?})"
    );
    ensure_eq!(
        lines.get(3).copied(),
        Some("TERM=xterm-256color"),
        "TERM of a terminal request without one ({out:?})"
    );
    ensure_eq!(
        result.stderr,
        "",
        "stderr of a terminal command (one stream)"
    );
    s.close().await.or_fail("close")
}

async fn resize_seen(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "trap 'echo \"WINCH $(stty size)\"' WINCH; echo READY; while :; do sleep 1; done";
    let id = start(&s, terminal_shell(&s, "resize", script)).await?;
    let (_, seq) = wait_for(&s, &id, 0, "READY").await?;
    s.resize_terminal(&id, 40, 120)
        .await
        .or_fail("resize_terminal to 40x120")?;
    wait_for(&s, &id, seq, "WINCH 40 120").await?;
    s.cancel_command(&id).await.or_fail("cancel_command")?;
    s.close().await.or_fail("close")
}

async fn interrupt_key(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let mut request =
        RunnerCommandRequest::new(crate::commands::unique_id("interactive"), "sh", ["-i"])
            .with_cwd(s.workspace_root())
            .with_terminal(ROWS, COLS)
            .with_env("PS1", "PROMPT> ")
            .with_env("ENV", "/dev/null");
    request.keep_stdin_open = true;
    let id = start(&s, request).await?;
    let (_, seq) = wait_for(&s, &id, 0, "PROMPT> ").await?;
    let line = format!("{}\n", marker.sleep());
    s.write_stdin(&id, line.into_bytes(), false)
        .await
        .or_fail("write_stdin of a sleep line")?;
    marker
        .wait_running(s.as_ref(), 1, Duration::from_secs(30))
        .await?;
    let (_, seq) = wait_for(&s, &id, seq, &marker.sleep()).await?;
    s.write_stdin(&id, vec![0x03], false)
        .await
        .or_fail("write_stdin of 0x03")?;
    marker.wait_gone(s.as_ref(), "0x03 on the terminal").await?;
    let (_, seq) = wait_for(&s, &id, seq, "PROMPT> ").await?;
    s.write_stdin(&id, b"echo AFTER-$((40+2))\n".to_vec(), false)
        .await
        .or_fail("write_stdin of the next line")?;
    wait_for(&s, &id, seq, "AFTER-42").await?;
    s.write_stdin(&id, b"exit 7\n".to_vec(), false)
        .await
        .or_fail("write_stdin of exit")?;
    let info = wait_exited(s.as_ref(), &id, WAIT).await?;
    ensure_eq!(
        info.status.and_then(|st| st.exit_code),
        Some(7),
        "exit code of the interactive shell"
    );
    s.close().await.or_fail("close")
}

async fn output_resumes_after_seq(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.2 2>/dev/null || sleep 1; done";
    let id = start(&s, terminal_shell(&s, "resume", script)).await?;
    wait_exited(s.as_ref(), &id, WAIT).await?;
    let all = s
        .command_output(&id, 0)
        .await
        .or_fail("command_output after 0")?;
    let text: Vec<u8> = all.chunks.iter().flat_map(|c| c.bytes.clone()).collect();
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    ensure_eq!(
        text,
        (1..=6).map(|i| format!("line-{i}\n")).collect::<String>(),
        "a terminal command's output (carriage returns aside)"
    );
    ensure!(
        all.chunks.len() >= 2,
        "expected several chunks, got {}",
        all.chunks.len()
    );
    let mid = all.chunks[all.chunks.len() / 2 - 1].seq;
    let later = s
        .command_output(&id, mid)
        .await
        .or_fail(format!("command_output after {mid}"))?;
    let expected: Vec<RunnerOutputChunk> =
        all.chunks.iter().filter(|c| c.seq > mid).cloned().collect();
    ensure_eq!(later.chunks, expected, "chunks after seq {mid}");
    s.close().await.or_fail("close")
}

async fn bad_resize_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let piped = shell(s.as_ref(), "piped", "sleep 30");
    let piped_id = piped.command_id.clone();
    s.start_command(piped)
        .await
        .or_fail("start_command without a terminal")?;
    s.resize_terminal(&piped_id, 24, 80).await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "resize_terminal of a command not on a terminal",
    )?;
    let id = start(&s, terminal_shell(&s, "sized", "sleep 30")).await?;
    for (rows, cols) in [
        (0, 80),
        (24, 0),
        (runner_api::RunnerTerminal::MAX_SIZE + 1, 80),
    ] {
        s.resize_terminal(&id, rows, cols).await.fails_with(
            RunnerErrorKind::InvalidRequest,
            format!("resize_terminal to {rows}x{cols}"),
        )?;
    }
    s.resize_terminal(&"conformance-no-such-command".to_string(), 24, 80)
        .await
        .fails_with(
            RunnerErrorKind::NotFound,
            "resize_terminal of an unknown id",
        )?;
    for id in [&piped_id, &id] {
        s.cancel_command(id).await.or_fail("cancel_command")?;
    }
    s.close().await.or_fail("close")
}

async fn terminal_capability(cx: Cx) -> CheckResult {
    if cx.has(Pty) {
        return Ok(());
    }
    let s = cx.session().await?;
    let request = shell(s.as_ref(), "no-pty", "true").with_terminal(ROWS, COLS);
    if cx.has(CommandExec) {
        s.run_command(request.clone()).await.fails_with(
            RunnerErrorKind::Unsupported,
            "run_command on a terminal without pty",
        )?;
    }
    if cx.has(BackgroundProcesses) {
        s.start_command(request).await.fails_with(
            RunnerErrorKind::Unsupported,
            "start_command on a terminal without pty",
        )?;
    }
    s.resize_terminal(&"conformance-any".to_string(), 24, 80)
        .await
        .fails_with(RunnerErrorKind::Unsupported, "resize_terminal without pty")?;
    s.close().await.or_fail("close")
}

/// Starts a watch, or fails naming it.
async fn watch(s: &Session, path: &Path, recursive: bool) -> CheckResult<RunnerWatchStream> {
    s.watch(RunnerWatchRequest::new(path, recursive))
        .await
        .or_fail(format!("watch {}", path.display()))
}

/// The watch refuses `path` with `kind`.
async fn watch_fails(s: &Session, path: &Path, kind: RunnerErrorKind, what: &str) -> CheckResult {
    match s.watch(RunnerWatchRequest::new(path, false)).await {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {kind:?}, got {}",
            crate::outcome::describe(&e)
        )),
        Ok(_) => Err(format!("{what}: expected {kind:?}, got a watch")),
    }
}

/// Reads events until `done` says the list is complete or [`WAIT`] passed.
async fn events_until(
    stream: &mut RunnerWatchStream,
    done: impl Fn(&[RunnerWatchEvent]) -> bool,
) -> CheckResult<Vec<RunnerWatchEvent>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut events = Vec::new();
    while !done(&events) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => {
                return Err(format!(
                    "the watch failed: {}",
                    crate::outcome::describe(&e)
                ));
            }
            Ok(None) => return Err(format!("the watch ended early after {events:?}")),
            Err(_) => {
                return Err(format!(
                    "the watch gave only {} within {} s",
                    shorten(&format!("{events:?}")),
                    WAIT.as_secs()
                ));
            }
        }
    }
    Ok(events)
}

/// Whether `events` holds `wanted` as a subsequence (kind, path, from).
fn holds_in_order(
    events: &[RunnerWatchEvent],
    wanted: &[(RunnerWatchEventKind, PathBuf, Option<PathBuf>)],
) -> bool {
    let mut want = wanted.iter().peekable();
    for event in events {
        if let Some((kind, path, from)) = want.peek()
            && event.kind == *kind
            && event.path == *path
            && event.from == *from
        {
            want.next();
        }
    }
    want.peek().is_none()
}

async fn sees_changes_in_order(cx: Cx) -> CheckResult {
    use RunnerWatchEventKind as K;
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    s.make_dir(&dir).await.or_fail("make_dir")?;
    let mut stream = watch(&s, &dir, false).await?;
    let script = format!(
        "cd {} && echo one > f && echo two >> f && mv f g && rm g",
        quote(&dir.to_string_lossy())
    );
    sh_ok(s.as_ref(), &script).await?;
    let (f, g) = (dir.join("f"), dir.join("g"));
    let wanted = vec![
        (K::Created, f.clone(), None),
        (K::Modified, f.clone(), None),
        (K::Renamed, g.clone(), Some(f.clone())),
        (K::Removed, g.clone(), None),
    ];
    let events = events_until(&mut stream, |events| holds_in_order(events, &wanted)).await?;
    ensure!(
        events
            .iter()
            .all(|e| !e.is_dir && (e.path == f || e.path == g)),
        "only f and g changed, as files: {events:?}"
    );
    drop(stream);
    s.close().await.or_fail("close")
}

async fn recursive_sees_new_directories(cx: Cx) -> CheckResult {
    use RunnerWatchEventKind as K;
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    s.make_dir(&dir).await.or_fail("make_dir")?;
    let mut stream = watch(&s, &dir, true).await?;
    let sub = dir.join("sub");
    s.make_dir(&sub).await.or_fail("make_dir sub")?;
    let first = events_until(&mut stream, |events| {
        events.iter().any(|e| e.kind == K::Created && e.path == sub)
    })
    .await?;
    let created = first.iter().find(|e| e.path == sub);
    ensure!(
        created.is_some_and(|e| e.is_dir),
        "the new directory's Created event carries the directory flag: {first:?}"
    );
    // The watch of the new directory is in place once its creation was seen.
    let file = sub.join("deep");
    let script = format!("echo x > {}", quote(&file.to_string_lossy()));
    sh_ok(s.as_ref(), &script).await?;
    events_until(&mut stream, |events| {
        events
            .iter()
            .any(|e| e.kind == K::Created && e.path == file)
    })
    .await?;
    drop(stream);
    s.close().await.or_fail("close")
}

async fn recursive_sees_contents_made_with_their_directory(cx: Cx) -> CheckResult {
    use RunnerWatchEventKind as K;
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    s.make_dir(&dir).await.or_fail("make_dir")?;
    let watched = dir.join("watched");
    s.make_dir(&watched).await.or_fail("make_dir")?;
    let mut stream = watch(&s, &watched, true).await?;
    // Made beside the watch, then moved in whole: its contents are there
    // before any watch of it can be.
    let outside = dir.join("made");
    let script = format!(
        "mkdir -p {o}/inner && echo a > {o}/a && echo b > {o}/inner/b && mv {o} {w}/",
        o = quote(&outside.to_string_lossy()),
        w = quote(&watched.to_string_lossy()),
    );
    sh_ok(s.as_ref(), &script).await?;
    let top = watched.join("made");
    let inner = top.join("inner");
    let files = [top.join("a"), inner.join("b")];
    let wanted = [&top, &inner, &files[0], &files[1]];
    let events = events_until(&mut stream, |events| {
        wanted.iter().all(|path| {
            events
                .iter()
                .any(|e| e.kind == K::Created && e.path == **path)
        })
    })
    .await?;
    for path in wanted {
        let created: Vec<_> = events
            .iter()
            .filter(|e| e.kind == K::Created && e.path == *path)
            .collect();
        ensure!(
            created.len() == 1,
            "{} is reported as created once: {events:?}",
            path.display()
        );
        ensure!(
            created[0].is_dir == (path == &top || path == &inner),
            "the directory flag of {}: {events:?}",
            path.display()
        );
    }
    drop(stream);
    s.close().await.or_fail("close")
}

async fn outside_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    watch_fails(
        &s,
        Path::new(".."),
        RunnerErrorKind::PermissionDenied,
        "watch ..",
    )
    .await?;
    watch_fails(
        &s,
        Path::new("/etc"),
        RunnerErrorKind::PermissionDenied,
        "watch /etc",
    )
    .await?;
    watch_fails(
        &s,
        Path::new("conformance-no-such-dir"),
        RunnerErrorKind::NotFound,
        "watch of a missing path",
    )
    .await?;
    s.close().await.or_fail("close")
}

async fn overflow_bounded(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    s.make_dir(&dir).await.or_fail("make_dir")?;
    let mut stream = watch(&s, &dir, false).await?;
    // Half the events creating files, half removing them, while nobody reads.
    let files = RAPID_EVENTS / 2;
    let script = format!(
        "cd {} && seq 1 {files} | xargs touch && seq 1 {files} | xargs rm -f",
        quote(&dir.to_string_lossy())
    );
    sh_ok(s.as_ref(), &script).await?;
    let mut held = 0usize;
    let mut overflowed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            Ok(Some(Ok(event))) => {
                held += 1;
                overflowed |= event.kind == RunnerWatchEventKind::Overflow;
            }
            Ok(Some(Err(e))) => {
                return Err(format!(
                    "the watch failed: {}",
                    crate::outcome::describe(&e)
                ));
            }
            Ok(None) => return Err("the watch ended while events were pending".into()),
            Err(_) => break,
        }
        ensure!(
            held <= HELD_AT_MOST,
            "the watch handed out {held} events of {RAPID_EVENTS} made while nobody read, more \
             than {HELD_AT_MOST}: its queue is not bounded"
        );
    }
    ensure!(
        overflowed,
        "{RAPID_EVENTS} events while nobody read gave no Overflow event ({held} events)"
    );
    // The watch keeps working after an overflow.
    let after = dir.join("after");
    sh_ok(
        s.as_ref(),
        &format!("echo x > {}", quote(&after.to_string_lossy())),
    )
    .await?;
    events_until(&mut stream, |events| {
        events
            .iter()
            .any(|e| e.kind == RunnerWatchEventKind::Created && e.path == after)
    })
    .await?;
    drop(stream);
    s.close().await.or_fail("close")
}

async fn ends_with_session(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let mut stream = watch(&s, Path::new("."), false).await?;
    s.close().await.or_fail("close")?;
    match tokio::time::timeout(WAIT, async {
        // Events already queued may come first; the stream then ends.
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(_) => Err(format!(
            "the watch went on {} s after close",
            WAIT.as_secs()
        )),
    }
}

async fn watch_capability(cx: Cx) -> CheckResult {
    if cx.has(FileWatch) {
        return Ok(());
    }
    let s = cx.session().await?;
    watch_fails(
        &s,
        Path::new("."),
        RunnerErrorKind::Unsupported,
        "watch without file_watch",
    )
    .await?;
    s.close().await.or_fail("close")
}
