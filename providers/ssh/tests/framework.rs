//! What agent and evaluation frameworks ask of an ssh sandbox, over the real
//! sshd on 127.0.0.1 with its non-root login user:
//!
//! - `RunnerCommandRequest.user`: the login user by name or uid runs, any
//!   other user is `PermissionDenied` and an unknown one `NotFound`, both
//!   naming it, in the foreground and in the background, and nothing runs;
//! - `RunnerFileWriteRequest.offset`: writes in place over sftp, appends,
//!   creates at 0, refuses holes and changes nothing then;
//! - `write_file_stream`: a body that fails leaves the target as it was and
//!   no temporary file, and a dropped write leaves none either;
//! - POSIX write permissions: a 0444 file and a new file in a 0555 directory
//!   are `PermissionDenied` with nothing changed, an atomic replace keeps the
//!   mode, and a running program can still be replaced;
//! - exit statuses: 0, 1, 126, 127 (also of a missing program run through
//!   `sh -c`) and 255 are the program's own, in the foreground and the
//!   background.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerByteStream, RunnerCommandRequest, RunnerError,
    RunnerErrorKind, RunnerExitStatus, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerProcessState, RunnerResult,
};
use runner_ssh::SshProvider;
use runner_testkit::{BackendGate, async_trial};

mod support;

type TestResult = Result<(), String>;
type Session = Arc<dyn RemoteRunnerSession>;

/// Longest a background command of these tests may take to be seen exited
/// (a guard against a hang, not a measurement).
const HUNG: Duration = Duration::from_secs(60);

fn ensure(ok: bool, message: impl FnOnce() -> String) -> TestResult {
    if ok { Ok(()) } else { Err(message()) }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Runs `test` in a new session of the test server, closing it afterwards
/// whatever the outcome.
async fn in_session<F, Fut>(test: F) -> TestResult
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let destination =
        support::destination("ssh-framework", support::config(serde_json::json!({}))?);
    let session = SshProvider::new()
        .create_session(destination)
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let outcome = test(session.clone()).await;
    let closed = session.close().await.map_err(|e| format!("close: {e}"));
    outcome.and(closed)
}

/// Runs `script`; its stdout when it succeeded.
async fn sh(session: &Session, script: &str) -> Result<String, String> {
    let result = session
        .run_command(RunnerCommandRequest::shell(
            format!("sh-{}", unique()),
            script,
        ))
        .await
        .map_err(|e| format!("run_command {script:?}: {e}"))?;
    ensure(result.success(), || {
        format!("{script:?} failed: {result:?}")
    })?;
    Ok(result.stdout)
}

/// Expects `result` to fail with `kind` and a message holding every one of
/// `named`.
fn refused<T>(
    result: RunnerResult<T>,
    kind: RunnerErrorKind,
    named: &[&str],
    what: &str,
) -> TestResult {
    match result {
        Ok(_) => Err(format!("{what}: accepted, expected {kind:?}")),
        Err(e) if e.kind() == kind && named.iter().all(|n| e.message().contains(n)) => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {kind:?} naming {named:?}, got {:?}: {}",
            e.kind(),
            e.message()
        )),
    }
}

async fn read(session: &Session, path: &str) -> Result<Vec<u8>, String> {
    session
        .read_file(RunnerFileReadRequest::new(path))
        .await
        .map(|r| r.contents)
        .map_err(|e| format!("read_file {path}: {e}"))
}

async fn mode(session: &Session, path: &str) -> Result<u32, String> {
    session
        .stat(Path::new(path))
        .await
        .map(|s| s.mode)
        .map_err(|e| format!("stat {path}: {e}"))
}

fn write_at(path: &str, offset: u64, bytes: &[u8]) -> RunnerFileWriteRequest {
    let mut request = RunnerFileWriteRequest::new(path, bytes.to_vec());
    request.offset = Some(offset);
    request
}

/// `script` run as `user`.
fn as_user(script: &str, user: &str) -> RunnerCommandRequest {
    let mut request = RunnerCommandRequest::shell(format!("as-{}", unique()), script);
    request.user = Some(user.to_string());
    request
}

/// The final status of the background command `id`.
async fn background_status(session: &Session, id: &str) -> Result<RunnerExitStatus, String> {
    let deadline = Instant::now() + HUNG;
    loop {
        let info = session
            .command_status(&id.to_string())
            .await
            .map_err(|e| format!("command_status {id}: {e}"))?;
        if info.state == RunnerProcessState::Exited {
            return info
                .status
                .ok_or_else(|| format!("{id} exited without a status: {info:?}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{id} still running after {} s", HUNG.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `request` in the foreground and in the background; the stdout of
/// each, which must have succeeded.
async fn both_ways(
    session: &Session,
    request: RunnerCommandRequest,
) -> Result<[String; 2], String> {
    let fore = session
        .run_command(request.clone())
        .await
        .map_err(|e| format!("run_command {request:?}: {e}"))?;
    ensure(fore.success(), || {
        format!("foreground {request:?}: {fore:?}")
    })?;
    let mut background = request;
    background.command_id = format!("bg-{}", unique());
    let id = background.command_id.clone();
    session
        .start_command(background)
        .await
        .map_err(|e| format!("start_command {id}: {e}"))?;
    let status = background_status(session, &id).await?;
    ensure(status.exit_code == Some(0), || {
        format!("background {id}: {status:?}")
    })?;
    let out = session
        .command_output(&id, 0)
        .await
        .map_err(|e| format!("command_output {id}: {e}"))?;
    let stdout: Vec<u8> = out
        .chunks
        .iter()
        .filter(|c| c.stream == runner_api::RunnerOutputStream::Stdout)
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    Ok([fore.stdout, String::from_utf8_lossy(&stdout).into_owned()])
}

// ----- run as a user -----

/// The login user runs commands as itself, named by name or by uid, in the
/// foreground and the background.
async fn run_as_login_user_by_name_and_uid() -> TestResult {
    in_session(|session| async move {
        let uid = sh(&session, "id -u").await?.trim().to_string();
        let name = sh(&session, "id -un").await?.trim().to_string();
        ensure(uid != "0", || "the test server's login user is root".into())?;
        for user in [&name, &uid] {
            let outs = both_ways(&session, as_user("id -u; id -un", user)).await?;
            for out in outs {
                ensure(out == format!("{uid}\n{name}\n"), || {
                    format!("a command run as {user:?} printed {out:?}")
                })?;
            }
        }
        Ok(())
    })
    .await
}

/// Another existing user (root, nobody, root's uid 0) is `PermissionDenied`
/// naming it, an unknown name or uid `NotFound` naming it, foreground and
/// background; the command never runs.
async fn run_as_other_or_unknown_user_refused() -> TestResult {
    in_session(|session| async move {
        let cases = [
            ("root", RunnerErrorKind::PermissionDenied),
            ("nobody", RunnerErrorKind::PermissionDenied),
            ("0", RunnerErrorKind::PermissionDenied),
            ("runner-no-such-user-5c1e", RunnerErrorKind::NotFound),
            ("4242424", RunnerErrorKind::NotFound),
        ];
        for (user, kind) in cases {
            let marker = format!("ran-{}", unique());
            let request = as_user(&format!("touch {marker}"), user);
            refused(
                session.run_command(request.clone()).await,
                kind,
                &[user],
                &format!("run_command as {user:?}"),
            )?;
            refused(
                session.start_command(request).await,
                kind,
                &[user],
                &format!("start_command as {user:?}"),
            )?;
            let left = sh(&session, &format!("ls -A | grep -c -x {marker} || true")).await?;
            ensure(left.trim() == "0", || {
                format!("a command refused as {user:?} ran anyway")
            })?;
        }
        let denied = session.run_command(as_user("true", "root")).await;
        let message = denied
            .err()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        ensure(message.contains("runs commands only as itself"), || {
            format!("the refusal does not say no escalation is offered: {message}")
        })
    })
    .await
}

// ----- writes at an offset -----

/// In-place writes at an offset: a patch, an append at the size, a chunk
/// over 1 MiB (several sftp writes), a create at 0 (mode masked, parents
/// made); holes, a missing file at another offset, a directory and a file
/// the login user may not write are refused and change nothing.
async fn write_at_offset_in_place() -> TestResult {
    in_session(|session| async move {
        let put = |request: RunnerFileWriteRequest| {
            let session = session.clone();
            async move {
                let what = format!(
                    "write_file {} at {:?}",
                    request.path.display(),
                    request.offset
                );
                session
                    .write_file(request)
                    .await
                    .map_err(|e| format!("{what}: {e}"))
            }
        };
        put(RunnerFileWriteRequest::new(
            "f.bin",
            b"hello world".to_vec(),
        ))
        .await?;
        put(write_at("f.bin", 6, b"there")).await?;
        put(write_at("f.bin", 11, b"!!")).await?;
        ensure(read(&session, "f.bin").await? == b"hello there!!", || {
            "patch and append".into()
        })?;
        let big = vec![7u8; (1 << 20) + 4321];
        put(write_at("f.bin", 5, &big)).await?;
        let back = read(&session, "f.bin").await?;
        ensure(
            back.len() == 5 + big.len() && back[..5] == *b"hello" && back[5..] == big[..],
            || {
                format!(
                    "a {}-byte write at offset 5: {} bytes back",
                    big.len(),
                    back.len()
                )
            },
        )?;

        refused(
            session
                .write_file(write_at("f.bin", 10_000_000, b"gap"))
                .await,
            RunnerErrorKind::InvalidRequest,
            &["f.bin", "10000000", &back.len().to_string()],
            "a write past the end",
        )?;
        ensure(read(&session, "f.bin").await? == back, || {
            "the refused write past the end changed the file".into()
        })?;
        refused(
            session.write_file(write_at("missing.bin", 3, b"x")).await,
            RunnerErrorKind::InvalidRequest,
            &["missing.bin", "3", "0 bytes"],
            "a missing file at offset 3",
        )?;
        refused(
            session.stat(Path::new("missing.bin")).await,
            RunnerErrorKind::NotFound,
            &[],
            "the file a refused write named",
        )?;

        let mut create = write_at("new/dir/c.bin", 0, b"abc");
        create.mode = Some(0o4750);
        put(create).await?;
        ensure(read(&session, "new/dir/c.bin").await? == b"abc", || {
            "a file created at offset 0".into()
        })?;
        let created = mode(&session, "new/dir/c.bin").await?;
        ensure(created == 0o750, || {
            format!("mode of a file created with 0o4750: {created:o}")
        })?;
        put(write_at("d.bin", 0, b"d")).await?;
        let default = mode(&session, "d.bin").await?;
        ensure(default == 0o644, || {
            format!("mode of a file created without one: {default:o}")
        })?;

        put(RunnerFileWriteRequest::new("ro.bin", b"original".to_vec())).await?;
        sh(&session, "chmod 444 ro.bin").await?;
        refused(
            session.write_file(write_at("ro.bin", 0, b"X")).await,
            RunnerErrorKind::PermissionDenied,
            &["ro.bin"],
            "a write at an offset of a 0444 file",
        )?;
        ensure(read(&session, "ro.bin").await? == b"original", || {
            "the refused write changed the 0444 file".into()
        })?;
        sh(&session, "chmod 644 ro.bin && mkdir adir").await?;
        refused(
            session.write_file(write_at("adir", 0, b"x")).await,
            RunnerErrorKind::InvalidRequest,
            &["adir"],
            "a write at an offset of a directory",
        )
    })
    .await
}

// ----- streamed writes -----

/// `write_file_stream`'s body: its chunks as given, then an `Err` when
/// `fails`.
fn body(chunks: usize, fails: bool) -> RunnerByteStream {
    let chunks = (0..chunks).map(|i| Ok(Bytes::from(vec![i as u8; 1 << 20])));
    let end = fails.then(|| Err(RunnerError::provider("the caller's body broke")));
    Box::pin(stream::iter(chunks.chain(end)))
}

/// A body that yields an `Err` after some chunks fails the write with that
/// error and leaves the target as it was: an existing file keeps its
/// contents (atomic), a new file is not created (atomic, and in place at
/// offset 0), and no temporary file is left; a whole body is written.
async fn failing_write_body_leaves_no_file() -> TestResult {
    in_session(|session| async move {
        let stream_write = |request: RunnerFileWriteRequest, body: RunnerByteStream| {
            let session = session.clone();
            async move { session.write_file_stream(request, body).await }
        };
        stream_write(
            RunnerFileWriteRequest::new("old.txt", b"old".to_vec()),
            body(0, false),
        )
        .await
        .map_err(|e| format!("write_file_stream old.txt: {e}"))?;
        let broken = "the caller's body broke";
        refused(
            stream_write(
                RunnerFileWriteRequest::new("old.txt", b"new".to_vec()),
                body(3, true),
            )
            .await,
            RunnerErrorKind::Provider,
            &[broken],
            "replacing a file with a failing body",
        )?;
        ensure(read(&session, "old.txt").await? == b"old", || {
            "a failed replace changed the file".into()
        })?;
        refused(
            stream_write(
                RunnerFileWriteRequest::new("sub/new.bin", Vec::new()),
                body(3, true),
            )
            .await,
            RunnerErrorKind::Provider,
            &[broken],
            "a new file with a failing body",
        )?;
        refused(
            stream_write(write_at("fresh.bin", 0, b"head"), body(2, true)).await,
            RunnerErrorKind::Provider,
            &[broken],
            "a new file at offset 0 with a failing body",
        )?;
        let left = sh(
            &session,
            "find . -mindepth 1 -name '*.bin*' -o -name '.*tmp*'",
        )
        .await?;
        ensure(left.is_empty(), || format!("failed writes left {left:?}"))?;
        stream_write(
            RunnerFileWriteRequest::new("whole.bin", b"ab".to_vec()),
            body(3, false),
        )
        .await
        .map_err(|e| format!("write_file_stream whole.bin: {e}"))?;
        let whole = read(&session, "whole.bin").await?;
        ensure(
            whole.len() == 2 + 3 * (1 << 20)
                && whole[..2] == *b"ab"
                && whole[2 + (2 << 20)..].iter().all(|b| *b == 2),
            || format!("whole.bin has {} bytes", whole.len()),
        )
    })
    .await
}

/// A write whose future is dropped while its body is still coming leaves
/// no temporary file behind (it is removed in the background).
async fn dropped_write_leaves_no_temporary_file() -> TestResult {
    in_session(|session| async move {
        let endless: RunnerByteStream =
            Box::pin(stream::iter([Ok(Bytes::from(vec![7u8; 1 << 20]))]).chain(stream::pending()));
        let write = session.write_file_stream(
            RunnerFileWriteRequest::new("dropped.bin", Vec::new()),
            endless,
        );
        // The body never ends, so neither does the write: it is dropped.
        ensure(
            tokio::time::timeout(Duration::from_secs(2), write)
                .await
                .is_err(),
            || "the write ended before its body".into(),
        )?;
        let deadline = Instant::now() + HUNG;
        loop {
            let left = sh(&session, "ls -A").await?;
            if left.is_empty() {
                return Ok(());
            }
            ensure(Instant::now() < deadline, || {
                format!("a dropped write left {left:?}")
            })?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

// ----- POSIX write permissions -----

/// A 0444 file is not replaced (contents, mode and directory unchanged), a
/// new file in a 0555 directory is refused, an atomic replace keeps a 0640
/// mode, and a program that is running is replaced (the rename works even
/// when the file cannot be opened for writing).
async fn writes_obey_posix_permissions() -> TestResult {
    in_session(|session| async move {
        let write = |path: &str, bytes: &[u8]| {
            session.write_file(RunnerFileWriteRequest::new(path, bytes.to_vec()))
        };
        sh(
            &session,
            "mkdir box && printf original > box/locked && chmod 444 box/locked",
        )
        .await?;
        refused(
            write("box/locked", b"replaced").await,
            RunnerErrorKind::PermissionDenied,
            &["box/locked"],
            "a replace of a 0444 file",
        )?;
        ensure(read(&session, "box/locked").await? == b"original", || {
            "the refused replace changed the file".into()
        })?;
        let locked = mode(&session, "box/locked").await?;
        ensure(locked == 0o444, || {
            format!("mode after the refused replace: {locked:o}")
        })?;
        let entries = sh(&session, "ls -A box").await?;
        ensure(entries == "locked\n", || {
            format!("the refused replace left entries behind: {entries:?}")
        })?;

        sh(&session, "mkdir sealed && chmod 555 sealed").await?;
        let sealed = write("sealed/new.txt", b"x").await;
        let entries = sh(&session, "ls -A sealed; chmod 755 sealed").await?;
        refused(
            sealed,
            RunnerErrorKind::PermissionDenied,
            &["sealed"],
            "a new file in a 0555 directory",
        )?;
        ensure(entries.is_empty(), || {
            format!("the refused write left entries in the 0555 directory: {entries:?}")
        })?;

        write("kept.txt", b"one")
            .await
            .map_err(|e| format!("write kept.txt: {e}"))?;
        sh(&session, "chmod 640 kept.txt").await?;
        write("kept.txt", b"two")
            .await
            .map_err(|e| format!("replace kept.txt: {e}"))?;
        let kept = mode(&session, "kept.txt").await?;
        ensure(kept == 0o640, || {
            format!("mode after an atomic replace: {kept:o}")
        })?;
        ensure(read(&session, "kept.txt").await? == b"two", || {
            "replaced contents".into()
        })?;

        sh(
            &session,
            "cp \"$(command -v sleep)\" busy && chmod 755 busy",
        )
        .await?;
        let id = format!("busy-{}", unique());
        session
            .start_command(RunnerCommandRequest::new(&id, "./busy", ["30".to_string()]))
            .await
            .map_err(|e| format!("start ./busy: {e}"))?;
        let replaced = write("busy", b"#!/bin/sh\n").await;
        let _ = session.cancel_command(&id).await;
        replaced.map_err(|e| format!("replace of a running program: {e}"))?;
        ensure(read(&session, "busy").await? == b"#!/bin/sh\n", || {
            "the running program was not replaced".into()
        })?;
        let busy = mode(&session, "busy").await?;
        ensure(busy == 0o755, || {
            format!("mode of the replaced program: {busy:o}")
        })
    })
    .await
}

// ----- exit statuses -----

/// `sh -c 'exit N'` reports exit code N (127, 130 and 255 exactly), and a
/// missing program run through `sh -c` 127, in the foreground and the
/// background, never as a signal.
async fn exit_statuses_are_the_programs_own() -> TestResult {
    in_session(|session| async move {
        let cases: Vec<(String, i32)> = [0, 1, 126, 127, 130, 255]
            .into_iter()
            .map(|code| (format!("exit {code}"), code))
            .chain([("runner-no-such-program-8d2b".to_string(), 127)])
            .collect();
        for (script, code) in cases {
            let fore = session
                .run_command(RunnerCommandRequest::shell(
                    format!("x-{}", unique()),
                    &script,
                ))
                .await
                .map_err(|e| format!("run_command {script:?}: {e}"))?;
            ensure(
                fore.exit_code == Some(code) && fore.signal.is_none(),
                || {
                    format!(
                        "foreground {script:?}: exit_code {:?}, signal {:?}, expected {code}",
                        fore.exit_code, fore.signal
                    )
                },
            )?;
            let id = format!("bx-{}", unique());
            session
                .start_command(RunnerCommandRequest::shell(&id, &script))
                .await
                .map_err(|e| format!("start_command {script:?}: {e}"))?;
            let status = background_status(&session, &id).await?;
            ensure(
                status.exit_code == Some(code) && status.signal.is_none(),
                || format!("background {script:?}: {status:?}, expected exit code {code}"),
            )?;
        }
        Ok(())
    })
    .await
}

/// A command killed by SIGKILL or SIGTERM (its own shell signalling itself)
/// reports that signal and no exit code, in the foreground and the
/// background.
async fn signal_deaths_report_the_signal() -> TestResult {
    in_session(|session| async move {
        for (name, number) in [("KILL", 9), ("TERM", 15)] {
            let script = format!("kill -s {name} $$");
            let fore = session
                .run_command(RunnerCommandRequest::shell(
                    format!("s-{}", unique()),
                    &script,
                ))
                .await
                .map_err(|e| format!("run_command {script:?}: {e}"))?;
            ensure(
                fore.signal == Some(number) && fore.exit_code.is_none(),
                || {
                    format!(
                        "foreground {script:?}: exit_code {:?}, signal {:?}, expected signal {number}",
                        fore.exit_code, fore.signal
                    )
                },
            )?;
            let id = format!("bs-{}", unique());
            session
                .start_command(RunnerCommandRequest::shell(&id, &script))
                .await
                .map_err(|e| format!("start_command {script:?}: {e}"))?;
            let status = background_status(&session, &id).await?;
            ensure(
                status.signal == Some(number) && status.exit_code.is_none(),
                || format!("background {script:?}: {status:?}, expected signal {number}"),
            )?;
        }
        Ok(())
    })
    .await
}

fn main() -> ExitCode {
    BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    )
    .run(vec![
        async_trial(
            "run_as_login_user_by_name_and_uid",
            run_as_login_user_by_name_and_uid,
        ),
        async_trial(
            "run_as_other_or_unknown_user_refused",
            run_as_other_or_unknown_user_refused,
        ),
        async_trial("write_at_offset_in_place", write_at_offset_in_place),
        async_trial(
            "failing_write_body_leaves_no_file",
            failing_write_body_leaves_no_file,
        ),
        async_trial(
            "dropped_write_leaves_no_temporary_file",
            dropped_write_leaves_no_temporary_file,
        ),
        async_trial(
            "writes_obey_posix_permissions",
            writes_obey_posix_permissions,
        ),
        async_trial(
            "exit_statuses_are_the_programs_own",
            exit_statuses_are_the_programs_own,
        ),
        async_trial(
            "signal_deaths_report_the_signal",
            signal_deaths_report_the_signal,
        ),
    ])
}
