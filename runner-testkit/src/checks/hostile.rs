//! Inputs an agent controls, chosen to hurt: set-id modes, sparse and special
//! archive entries, PAX global headers, huge sizes, FIFOs, processes that leave
//! their process group, and the embedding process's environment. Each check
//! names the defence of `docs/security.md` it proves.

use std::path::Path;
use std::time::Duration;

use runner_api::{
    RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerOutputLimit,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{describe_result, quote, sh, sh_ok, shell};
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq};

pub(crate) fn checks() -> Vec<Check> {
    vec![
        Check::new(
            "files_write_setid_masked",
            Area::Files,
            &[FileRead, FileWrite, FileManagement],
            "RunnerFileWriteRequest.mode: \"set-id and sticky bits are dropped\" (0o4755, 0o2755, 0o1777 give 0o755, 0o755, 0o777).",
            |cx| Box::pin(write_setid_masked(cx)),
        ),
        Check::new(
            "files_upload_setid_masked",
            Area::Files,
            &[ArchiveTransfer, FileManagement],
            "upload_archive: entry modes are masked to 0o777 (set-id and sticky bits dropped).",
            |cx| Box::pin(upload_setid_masked(cx)),
        ),
        Check::new(
            "files_upload_owner_is_session_user",
            Area::Files,
            &[ArchiveTransfer, CommandExec],
            "upload_archive: entries (files and directories) are owned by the session's user, as a file the session wrote itself, whatever uid and gid (0 included) the archive says.",
            |cx| Box::pin(upload_owner_is_session_user(cx)),
        ),
        Check::new(
            "files_upload_sparse_refused",
            Area::Files,
            &[ArchiveTransfer, FileManagement],
            "upload_archive: a GNU sparse entry (here claiming 1 TiB) is InvalidRequest and nothing is written.",
            |cx| Box::pin(upload_sparse_refused(cx)),
        ),
        Check::new(
            "files_upload_special_refused",
            Area::Files,
            &[ArchiveTransfer, FileManagement],
            "upload_archive: character and block devices and FIFOs are InvalidRequest and nothing is written.",
            |cx| Box::pin(upload_special_refused(cx)),
        ),
        Check::new(
            "files_upload_pax_global_refused",
            Area::Files,
            &[ArchiveTransfer, FileManagement],
            "upload_archive: a PAX global header (which GNU tar applies to every later entry) is InvalidRequest and nothing is written.",
            |cx| Box::pin(upload_pax_global_refused(cx)),
        ),
        Check::new(
            "files_upload_pax_global_no_redirect",
            Area::Files,
            &[ArchiveTransfer, FileManagement],
            "upload_archive: a PAX global header whose `path` leads out of target (`../…`) redirects no entry: refused (InvalidRequest, nothing written) or unpacked at the entries' own names; nothing lands outside target.",
            |cx| Box::pin(upload_pax_global_no_redirect(cx)),
        ),
        Check::new(
            "files_read_limit_bounded",
            Area::Files,
            &[FileRead, FileWrite, CommandExec],
            "read_file: a limit above MAX_READ_BYTES, or no limit on a 64 GiB sparse file, is InvalidRequest; a 4-byte window at its end comes back.",
            |cx| Box::pin(read_limit_bounded(cx)),
        ),
        Check::new(
            "files_read_fifo_fails_fast",
            Area::Files,
            &[FileRead, FileWrite, CommandExec],
            "read_file: a FIFO (made with mkfifo) is InvalidRequest within 5 s, without waiting for a writer, and the session's file operations (write, read, list_dir, stat) keep working.",
            |cx| Box::pin(read_fifo_fails_fast(cx)),
        ),
        Check::new(
            "exec_output_limit_bounded",
            Area::Exec,
            &[CommandExec],
            "RunnerOutputLimit: budgets above MAX_BYTES (here 1e12) are InvalidRequest.",
            |cx| Box::pin(output_limit_bounded(cx)),
        ),
        Check::new(
            "exec_host_env_not_inherited",
            Area::Exec,
            &[CommandExec],
            "Commands see nothing of the embedding process's environment beyond the allow-list (PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR, TERM).",
            |cx| Box::pin(host_env_not_inherited(cx)),
        ),
        Check::new(
            "exec_timeout_kills_setsid_escape",
            Area::Exec,
            &[CommandExec],
            "run_command timeout_ms kills the whole tree, a child that left the process group with setsid included.",
            |cx| Box::pin(timeout_kills_setsid_escape(cx)),
        ),
        Check::new(
            "processes_setsid_escape_cancelled",
            Area::Processes,
            &[BackgroundProcesses, Cancellation],
            "cancel_command kills the whole tree, a child that left the process group with setsid included.",
            |cx| Box::pin(setsid_escape_cancelled(cx)),
        ),
        Check::new(
            "lifecycle_close_kills_setsid_escape",
            Area::Lifecycle,
            &[CommandExec],
            "close: \"ends every process of the session\", children that left with setsid after their command exited included (counted from a fresh session of the destination).",
            |cx| Box::pin(close_kills_setsid_escape(cx)),
        ),
    ]
}

/// The permission bits of `path`, set-id and sticky bits included: through
/// `stat -c %a` when commands run, else from `stat`.
async fn full_mode(cx: &Cx, s: &Session, path: &Path) -> CheckResult<u32> {
    if cx.has(CommandExec) {
        let out = sh_ok(
            s.as_ref(),
            &format!("stat -c %a {}", quote(&path.display().to_string())),
        )
        .await?;
        return u32::from_str_radix(out.trim(), 8)
            .map_err(|e| format!("stat -c %a {}: {out:?}: {e}", path.display()));
    }
    Ok(s.stat(path)
        .await
        .or_fail(format!("stat {}", path.display()))?
        .mode
        & 0o7777)
}

/// write_file drops set-id and sticky bits.
async fn write_setid_masked(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    for (name, mode, want) in [
        ("suid", 0o4755, 0o755),
        ("sgid", 0o2755, 0o755),
        ("sticky", 0o1777, 0o777),
    ] {
        let path = dir.join(name);
        let mut request = RunnerFileWriteRequest::new(&path, b"#!/bin/sh\n".to_vec());
        request.mode = Some(mode);
        s.write_file(request)
            .await
            .or_fail(format!("write_file {} with mode {mode:o}", path.display()))?;
        let got = full_mode(&cx, &s, &path).await?;
        ensure!(
            got == want,
            "mode of {} written with mode {mode:o}: expected {want:o}, got {got:o}",
            path.display()
        );
    }
    s.close().await.or_fail("close")
}

/// One raw tar entry for the archive checks.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    data: &'a [u8],
}

impl<'a> Raw<'a> {
    fn file(name: &'a str, mode: u32, uid: u64) -> Self {
        Self {
            name,
            kind: tar::EntryType::Regular,
            mode,
            uid,
            data: b"payload\n",
        }
    }
}

/// A GNU tar of `entries`, as a hostile client would write it.
fn raw_tar(entries: &[Raw<'_>]) -> CheckResult<Vec<u8>> {
    let err = |e: std::io::Error| format!("building the test tar: {e}");
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.uid);
        header.set_mtime(1_700_000_000);
        header.set_size(entry.data.len() as u64);
        builder
            .append_data(&mut header, entry.name, entry.data)
            .map_err(err)?;
    }
    builder.into_inner().map_err(err)
}

/// Uploads `archive` into `target` and requires `InvalidRequest`, with
/// nothing created at `target` (which did not exist before).
async fn refused_leaving_nothing(
    s: &Session,
    target: &Path,
    archive: Vec<u8>,
    what: &str,
) -> CheckResult {
    s.upload_archive(target, archive).await.fails_with(
        RunnerErrorKind::InvalidRequest,
        format!("upload_archive of {what} to {}", target.display()),
    )?;
    match s.list_dir(target).await {
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(()),
        Ok(entries) => {
            ensure!(
                entries.is_empty(),
                "after the refused upload of {what}, {} holds {:?}",
                target.display(),
                entries.iter().map(|e| &e.name).collect::<Vec<_>>()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "list_dir {} after the refused upload of {what}: {}",
            target.display(),
            crate::outcome::describe(&e)
        )),
    }
}

/// Uploaded set-id and sticky bits are dropped.
async fn upload_setid_masked(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s);
    let archive = raw_tar(&[
        Raw::file("suid", 0o4755, 0),
        Raw::file("sgid", 0o2755, 0),
        Raw::file("sticky", 0o1777, 0),
        Raw {
            name: "dir",
            kind: tar::EntryType::Directory,
            mode: 0o3777,
            uid: 0,
            data: b"",
        },
    ])?;
    s.upload_archive(&target, archive)
        .await
        .or_fail("upload_archive of set-id entries")?;
    for (name, want) in [
        ("suid", 0o755),
        ("sgid", 0o755),
        ("sticky", 0o777),
        ("dir", 0o777),
    ] {
        let got = full_mode(&cx, &s, &target.join(name)).await?;
        ensure!(
            got == want,
            "mode of uploaded {name}: expected {want:o}, got {got:o}"
        );
    }
    s.close().await.or_fail("close")
}

/// Uploaded entries belong to the session's user: the owner of a file a
/// command of the session made itself (and of one `write_file` made), not
/// uid 0 / gid 0 or another id the archive names.
async fn upload_owner_is_session_user(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s);
    let archive = raw_tar(&[
        Raw {
            name: "root-dir",
            kind: tar::EntryType::Directory,
            mode: 0o755,
            uid: 0,
            data: b"",
        },
        Raw::file("root-dir/nested", 0o644, 0),
        Raw::file("root-owned", 0o644, 0),
        Raw::file("other", 0o644, 4242),
    ])?;
    s.upload_archive(&target, archive)
        .await
        .or_fail("upload_archive of entries owned by uid 0 and 4242")?;
    let t = quote(&target.display().to_string());
    let stat = |name: &str| format!("stat -c '%u %g' {t}/{name}");
    // The session's own files, as references: one a command wrote, and one
    // written through the file API when the session has it.
    let own = sh_ok(
        s.as_ref(),
        &format!(": > {t}/by-command && {}", stat("by-command")),
    )
    .await?;
    let own = own.trim().to_string();
    let me = sh_ok(s.as_ref(), "echo \"$(id -u) $(id -g)\"").await?;
    ensure!(
        own == me.trim(),
        "owner (uid gid) of a file a command wrote: {own:?}, but the command runs as {:?}",
        me.trim()
    );
    if cx.has(FileWrite) {
        let path = target.join("by-write-file");
        s.write_file(RunnerFileWriteRequest::new(&path, b"mine".to_vec()))
            .await
            .or_fail(format!("write_file {}", path.display()))?;
        let written = sh_ok(s.as_ref(), &stat("by-write-file")).await?;
        ensure!(
            written.trim() == own,
            "owner (uid gid) of a file write_file wrote: expected the session user's {own:?}, \
             got {:?}",
            written.trim()
        );
    }
    for name in ["root-dir", "root-dir/nested", "root-owned", "other"] {
        let owner = sh_ok(s.as_ref(), &stat(name)).await?;
        ensure!(
            owner.trim() == own,
            "owner (uid gid) of uploaded {name}: expected the session user's {own:?} (the owner \
             of a file the session wrote), got {:?}",
            owner.trim()
        );
    }
    s.close().await.or_fail("close")
}

/// A GNU sparse entry is refused.
async fn upload_sparse_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_size(5);
    header.set_mtime(1_700_000_000);
    {
        let gnu = header.as_gnu_mut().ok_or("a GNU header has GNU fields")?;
        let tib: u64 = 1 << 40;
        gnu.sparse[0].set_offset(tib - 5);
        gnu.sparse[0].set_length(5);
        gnu.set_real_size(tib);
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, "huge.bin", &b"tail!"[..])
        .map_err(|e| format!("building the sparse tar: {e}"))?;
    let archive = builder
        .into_inner()
        .map_err(|e| format!("building the sparse tar: {e}"))?;
    refused_leaving_nothing(&s, &target, archive, "a sparse entry of 1 TiB").await?;
    s.close().await.or_fail("close")
}

/// Devices and FIFOs are refused.
async fn upload_special_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    for (kind, what) in [
        (tar::EntryType::Char, "a character device"),
        (tar::EntryType::Block, "a block device"),
        (tar::EntryType::Fifo, "a FIFO"),
    ] {
        let target = cx.scratch(&s);
        let archive = raw_tar(&[
            Raw::file("first", 0o644, 0),
            Raw {
                name: "special",
                kind,
                mode: 0o666,
                uid: 0,
                data: b"",
            },
        ])?;
        refused_leaving_nothing(&s, &target, archive, what).await?;
    }
    s.close().await.or_fail("close")
}

/// A PAX global header is refused.
async fn upload_pax_global_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s);
    let err = |e: std::io::Error| format!("building the PAX tar: {e}");
    let mut builder = tar::Builder::new(Vec::new());
    let record = b"18 path=elsewhere\n";
    let mut global = tar::Header::new_ustar();
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    global.set_size(record.len() as u64);
    builder
        .append_data(&mut global, "pax_global_header", &record[..])
        .map_err(err)?;
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o644);
    header.set_size(4);
    builder
        .append_data(&mut header, "named", &b"data"[..])
        .map_err(err)?;
    let archive = builder.into_inner().map_err(err)?;
    refused_leaving_nothing(&s, &target, archive, "a PAX global header").await?;
    s.close().await.or_fail("close")
}

/// One PAX record, `"<length> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while format!("{length}{body}").len() != length {
        length += 1;
    }
    format!("{length}{body}").into_bytes()
}

/// A PAX global header naming another path does not move later entries.
async fn upload_pax_global_no_redirect(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s);
    // A sibling of target under the workspace root: where a global `path`
    // of `../<escape>` would put every later entry.
    let escape = cx.scratch(&s);
    let record = pax_record("path", &format!("../{}", escape.display()));
    let err = |e: std::io::Error| format!("building the PAX tar: {e}");
    let mut builder = tar::Builder::new(Vec::new());
    let mut global = tar::Header::new_ustar();
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    global.set_mode(0o644);
    global.set_size(record.len() as u64);
    builder
        .append_data(&mut global, "pax_global_header", &record[..])
        .map_err(err)?;
    let entries: [(&str, &[u8]); 2] = [("first.txt", b"first"), ("sub/second.txt", b"second")];
    for (name, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data).map_err(err)?;
    }
    let archive = builder.into_inner().map_err(err)?;
    let what = format!(
        "an archive whose PAX global header sets path=../{}",
        escape.display()
    );
    match s.upload_archive(&target, archive).await {
        Err(e) if e.kind() == RunnerErrorKind::InvalidRequest => match s.list_dir(&target).await {
            Err(e) if e.kind() == RunnerErrorKind::NotFound => {}
            Ok(listed) => ensure!(
                listed.is_empty(),
                "after the refused upload of {what}, {} holds {:?}",
                target.display(),
                listed.iter().map(|e| &e.name).collect::<Vec<_>>()
            ),
            Err(e) => {
                return Err(format!(
                    "list_dir {} after the refused upload of {what}: {}",
                    target.display(),
                    crate::outcome::describe(&e)
                ));
            }
        },
        Err(e) => {
            return Err(format!(
                "upload_archive of {what}: expected Ok or InvalidRequest, got {}",
                crate::outcome::describe(&e)
            ));
        }
        Ok(()) => {
            for (name, data) in entries {
                let path = target.join(name);
                let back = s
                    .read_file(RunnerFileReadRequest::new(&path))
                    .await
                    .or_fail(format!(
                        "read_file {} (an entry of the accepted upload of {what})",
                        path.display()
                    ))?;
                ensure_eq!(
                    back.contents,
                    data.to_vec(),
                    "contents of {} after the upload of {what}",
                    path.display()
                );
            }
            let mut listed: Vec<String> = s
                .list_dir(&target)
                .await
                .or_fail(format!("list_dir {}", target.display()))?
                .into_iter()
                .map(|e| e.name)
                .collect();
            listed.sort();
            ensure_eq!(
                listed,
                vec!["first.txt".to_string(), "sub".to_string()],
                "names in {} after the upload of {what}",
                target.display()
            );
        }
    }
    match s.stat(&escape).await {
        Err(e) if e.kind() == RunnerErrorKind::NotFound => {}
        Ok(_) => {
            return Err(format!(
                "after the upload of {what}, {} exists outside the target {}",
                escape.display(),
                target.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "stat {} after the upload of {what}: expected NotFound, got {}",
                escape.display(),
                crate::outcome::describe(&e)
            ));
        }
    }
    s.close().await.or_fail("close")
}

/// Read sizes are bounded by the library, not by the request.
async fn read_limit_bounded(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let small = dir.join("small.txt");
    s.write_file(RunnerFileWriteRequest::new(&small, b"four".to_vec()))
        .await
        .or_fail("write_file small.txt")?;
    let mut request = RunnerFileReadRequest::new(&small);
    request.limit = Some(1_000_000_000_000);
    s.read_file(request)
        .await
        .fails_with(RunnerErrorKind::InvalidRequest, "read_file with limit 1e12")?;
    let big = dir.join("big.sparse");
    let size: u64 = 64 << 30;
    let b = quote(&big.display().to_string());
    let made = sh(s.as_ref(), &format!("truncate -s {size} {b}")).await?;
    ensure!(
        made.success(),
        "making a 64 GiB sparse file with truncate: {}",
        describe_result(&made)
    );
    s.read_file(RunnerFileReadRequest::new(&big))
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "read_file without limit of a 64 GiB file",
        )?;
    let mut request = RunnerFileReadRequest::new(&big);
    request.offset = Some(size - 4);
    request.limit = Some(4);
    let tail = tokio::time::timeout(Duration::from_secs(60), s.read_file(request))
        .await
        .map_err(
            |_| "read_file of the last 4 bytes of a 64 GiB sparse file did not return within 60 s",
        )?
        .or_fail("read_file of the last 4 bytes of a 64 GiB sparse file")?;
    ensure_eq!(
        tail.contents,
        vec![0; 4],
        "the last 4 bytes of the sparse file"
    );
    ensure_eq!(tail.size, size, "the size read_file reports");
    // A session over a shared root keeps its files: leave no 64 GiB file for
    // later checks (a snapshot would pack it whole).
    s.remove(&big, false)
        .await
        .or_fail("remove the sparse file")?;
    s.close().await.or_fail("close")
}

/// How long a read of a FIFO may take to fail: a provider that checks the
/// file type refuses at once; a watchdog that ends a blocked open must be
/// this quick, too.
const FIFO_REFUSAL_WITHIN: Duration = Duration::from_secs(5);

/// A FIFO read does not wait for a writer: it fails within a few seconds
/// with `InvalidRequest`, and the session's file operations go on.
async fn read_fifo_fails_fast(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let fifo = dir.join("pipe");
    let d = quote(&dir.display().to_string());
    sh_ok(s.as_ref(), &format!("mkdir -p {d} && mkfifo {d}/pipe")).await?;
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        s.read_file(RunnerFileReadRequest::new(&fifo)),
    )
    .await;
    let elapsed = started.elapsed();
    let Ok(read) = read else {
        // Release whatever is blocked on the FIFO before failing.
        let _ = sh(s.as_ref(), &format!("timeout 5 sh -c ': > {d}/pipe'")).await;
        return Err(
            "read_file of a FIFO did not return within 30 s (it waits for a writer)".into(),
        );
    };
    read.fails_with(RunnerErrorKind::InvalidRequest, "read_file of a FIFO")?;
    ensure!(
        elapsed <= FIFO_REFUSAL_WITHIN,
        "read_file of a FIFO failed as it should, but only after {} ms (expected within {} s)",
        elapsed.as_millis(),
        FIFO_REFUSAL_WITHIN.as_secs()
    );
    let after = dir.join("after.txt");
    let work = async {
        s.write_file(RunnerFileWriteRequest::new(&after, b"still works".to_vec()))
            .await
            .or_fail("write_file after the FIFO read")?;
        let back = s
            .read_file(RunnerFileReadRequest::new(&after))
            .await
            .or_fail("read_file after the FIFO read")?;
        ensure_eq!(
            back.contents,
            b"still works".to_vec(),
            "a file read after the FIFO read"
        );
        if cx.has(FileManagement) {
            let mut names: Vec<String> = s
                .list_dir(&dir)
                .await
                .or_fail(format!("list_dir {} after the FIFO read", dir.display()))?
                .into_iter()
                .map(|e| e.name)
                .collect();
            names.sort();
            ensure_eq!(
                names,
                vec!["after.txt".to_string(), "pipe".to_string()],
                "list_dir {} after the FIFO read",
                dir.display()
            );
            let stat = s
                .stat(&after)
                .await
                .or_fail(format!("stat {} after the FIFO read", after.display()))?;
            ensure_eq!(stat.size, 11, "size stat gives for {}", after.display());
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .map_err(|_| "file operations after the FIFO read did not finish within 60 s")??;
    s.close().await.or_fail("close")
}

/// Output budgets are bounded by the library.
async fn output_limit_bounded(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    for (head, tail) in [(1_000_000_000_000, 16), (16, 1_000_000_000_000)] {
        let mut request = shell(s.as_ref(), "huge-budget", "echo hi");
        request.output_limit = RunnerOutputLimit {
            head_bytes: head,
            tail_bytes: tail,
        };
        s.run_command(request).await.fails_with(
            RunnerErrorKind::InvalidRequest,
            format!("run_command with output_limit head {head} tail {tail}"),
        )?;
    }
    let mut request = shell(s.as_ref(), "max-budget", "echo hi");
    request.output_limit = RunnerOutputLimit {
        head_bytes: RunnerOutputLimit::MAX_BYTES,
        tail_bytes: RunnerOutputLimit::MAX_BYTES,
    };
    let out = s
        .run_command(request)
        .await
        .or_fail("run_command with the largest output_limit")?;
    ensure_eq!(out.stdout, "hi\n", "stdout with the largest output_limit");
    s.close().await.or_fail("close")
}

/// Variables of the embedding process that commands may see, plus those
/// every shell sets itself.
fn allowed_host_variable(name: &str) -> bool {
    runner_api::host_env_allowed(name) || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&name)
}

/// Nothing of the embedding process's environment leaks into commands.
async fn host_env_not_inherited(cx: Cx) -> CheckResult {
    let markers: Vec<String> = std::env::vars()
        .filter(|(name, value)| !allowed_host_variable(name) && value.len() >= 4)
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    ensure!(
        !markers.is_empty(),
        "the test process has no variable outside the allow-list to look for (scripts/test.sh \
         exports RUNNER_CONFORMANCE_HOST_MARKER)"
    );
    let s = cx.session().await?;
    let env = sh_ok(s.as_ref(), "env").await?;
    let lines: std::collections::HashSet<&str> = env.lines().collect();
    let leaked: Vec<&str> = markers
        .iter()
        .filter(|pair| lines.contains(pair.as_str()))
        .map(|pair| pair.split('=').next().unwrap_or_default())
        .collect();
    // Names only: the values may be secrets.
    ensure!(
        leaked.is_empty(),
        "commands see these variables of the embedding process with its values: {leaked:?}"
    );
    s.close().await.or_fail("close")
}

/// A shell line starting a child that leaves the process group and sleeps
/// with `marker` on its command line, detached from the command's pipes.
fn escaping_child(marker: &crate::fixtures::process_tree::Marker) -> String {
    format!(
        "setsid sh -c 'trap \"\" TERM HUP; {}; :' </dev/null >/dev/null 2>&1 &",
        marker.sleep()
    )
}

/// The foreground timeout ends a setsid child.
async fn timeout_kills_setsid_escape(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let script = format!("{} echo begun; {}", escaping_child(&marker), marker.sleep());
    let request = shell(s.as_ref(), "setsid-timeout", &script).with_timeout_ms(5_000);
    let out = s
        .run_command(request)
        .await
        .or_fail("run_command with a setsid child and timeout_ms 5000")?;
    ensure!(
        out.timed_out,
        "run_command past timeout_ms: expected timed_out, got {}",
        describe_result(&out)
    );
    marker.wait_gone(s.as_ref(), "the timeout").await?;
    s.close().await.or_fail("close")
}

/// cancel_command ends a setsid child of a running background command.
async fn setsid_escape_cancelled(cx: Cx) -> CheckResult {
    setsid_child_cancelled(cx, None).await
}

/// A background command (on a terminal of `terminal`'s rows and columns,
/// when given) whose child left with setsid: cancel_command ends both.
pub(crate) async fn setsid_child_cancelled(cx: Cx, terminal: Option<(u16, u16)>) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let script = format!(
        "{} echo started; {}",
        escaping_child(&marker),
        marker.sleep()
    );
    let mut request = shell(s.as_ref(), "setsid-cancel", &script);
    if let Some((rows, cols)) = terminal {
        request = request.with_terminal(rows, cols);
    }
    let id = request.command_id.clone();
    s.start_command(request)
        .await
        .or_fail("start_command with a setsid child")?;
    marker
        .wait_running(s.as_ref(), 3, Duration::from_secs(30))
        .await?;
    let cancelled = s.cancel_command(&id).await.or_fail("cancel_command")?;
    ensure!(
        cancelled,
        "cancel_command of a running command: expected true"
    );
    marker.wait_gone(s.as_ref(), "cancel_command").await?;
    s.close().await.or_fail("close")
}

/// close ends setsid children whose command exited long ago.
async fn close_kills_setsid_escape(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let marker = cx.marker();
    let script = format!(
        "( {} ); {} echo spawned",
        escaping_child(&marker),
        escaping_child(&marker)
    );
    let out = sh_ok(s.as_ref(), &script).await?;
    ensure_eq!(
        out,
        "spawned\n",
        "stdout of the command starting setsid children"
    );
    marker
        .wait_running(s.as_ref(), 4, Duration::from_secs(30))
        .await?;
    s.close().await.or_fail("close")?;
    let fresh = cx.session().await?;
    marker.wait_gone(fresh.as_ref(), "close").await?;
    fresh.close().await.or_fail("close of the fresh session")
}
