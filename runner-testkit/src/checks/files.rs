//! files: `read_file`, `write_file`, file management and archives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use runner_api::{
    MAX_READ_BYTES, RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileWriteRequest,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{quote, sh, sh_ok};
use crate::context::{Cx, Session};
use crate::fixtures::bytes::{all_byte_values, pseudo_random, seed};
use crate::fixtures::streams::{Generated, MIB, chunked, collect, drain};
use crate::fixtures::tree::{self, Node, Tree};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Files;
    const RW: &[crate::catalogue::Capability] = &[FileRead, FileWrite];
    const MGMT: &[crate::catalogue::Capability] = &[FileWrite, FileManagement];
    vec![
        Check::new(
            "files_write_read_roundtrip",
            a,
            RW,
            "write_file then read_file: the same bytes come back (text, empty file, unusual names).",
            |cx| Box::pin(write_read_roundtrip(cx)),
        ),
        Check::new(
            "files_binary_roundtrip",
            a,
            RW,
            "RunnerFileReadResult.contents: \"The bytes read, unmodified\" (all 256 values, 3 MiB random).",
            |cx| Box::pin(binary_roundtrip(cx)),
        ),
        Check::new(
            "files_write_creates_parents",
            a,
            RW,
            "write_file: \"Creates parent directories\".",
            |cx| Box::pin(write_creates_parents(cx)),
        ),
        Check::new(
            "files_overwrite_atomic",
            a,
            RW,
            "write_file: \"a reader sees the old or the new contents, never a mix\"; no temp files are left.",
            |cx| Box::pin(overwrite_atomic(cx)),
        ),
        Check::new(
            "files_mode_honoured",
            a,
            &[FileRead, FileWrite, FileManagement],
            "RunnerFileWriteRequest.mode: set on write; \"None keeps an existing file's mode, or gives a new file 0o644\".",
            |cx| Box::pin(mode_honoured(cx)),
        ),
        Check::new(
            "files_read_range",
            a,
            RW,
            "read_file: \"limit bytes from offset\"; size is \"The file's whole size\".",
            |cx| Box::pin(read_range(cx)),
        ),
        Check::new(
            "files_read_missing_not_found",
            a,
            &[FileRead],
            "read_file errors: \"NotFound\".",
            |cx| Box::pin(read_missing_not_found(cx)),
        ),
        Check::new(
            "files_read_directory_invalid",
            a,
            RW,
            "read_file errors: \"InvalidRequest (a directory …)\".",
            |cx| Box::pin(read_directory_invalid(cx)),
        ),
        Check::new(
            "files_write_onto_directory_invalid",
            a,
            RW,
            "write_file errors: \"InvalidRequest (target is a directory …)\"; the directory survives.",
            |cx| Box::pin(write_onto_directory_invalid(cx)),
        ),
        Check::new(
            "files_visible_to_commands",
            a,
            &[CommandExec, FileRead, FileWrite],
            "Files written by write_file are what commands read, and the other way round.",
            |cx| Box::pin(visible_to_commands(cx)),
        ),
        Check::new(
            "files_list_dir_sorted",
            a,
            MGMT,
            "list_dir: \"Entries of a directory, sorted by name\" with kinds, sizes and paths.",
            |cx| Box::pin(list_dir_sorted(cx)),
        ),
        Check::new(
            "files_list_dir_errors",
            a,
            MGMT,
            "list_dir errors: \"NotFound, InvalidRequest (not a directory)\".",
            |cx| Box::pin(list_dir_errors(cx)),
        ),
        Check::new(
            "files_stat_kinds",
            a,
            MGMT,
            "stat: \"Metadata of a path; a symlink is reported as a symlink\"; missing is NotFound.",
            |cx| Box::pin(stat_kinds(cx)),
        ),
        Check::new(
            "files_make_dir",
            a,
            MGMT,
            "make_dir: \"Creates a directory and its parents; an existing directory is Ok … AlreadyExists (a file is there)\".",
            |cx| Box::pin(make_dir(cx)),
        ),
        Check::new(
            "files_remove",
            a,
            &[FileRead, FileWrite, FileManagement],
            "remove: file, empty directory, \"non-empty only with recursive\" (else AlreadyExists), missing is NotFound.",
            |cx| Box::pin(remove(cx)),
        ),
        Check::new(
            "files_remove_symlink_not_target",
            a,
            &[CommandExec, FileRead, FileWrite, FileManagement],
            "remove: \"Removes a file, a symlink …\" — the link, not what it points to.",
            |cx| Box::pin(remove_symlink_not_target(cx)),
        ),
        Check::new(
            "files_rename",
            a,
            &[FileRead, FileWrite, FileManagement],
            "rename: \"replacing a file at to, as POSIX rename\"; NotFound; \"AlreadyExists (a non-empty directory at to)\".",
            |cx| Box::pin(rename(cx)),
        ),
        Check::new(
            "files_canonicalize",
            a,
            MGMT,
            "canonicalize: \"The absolute path with every symlink resolved (the path must exist)\".",
            |cx| Box::pin(canonicalize(cx)),
        ),
        Check::new(
            "files_stream_large_roundtrip",
            a,
            RW,
            "write_file_stream then read_file_stream: 64 MiB sent in 1 MiB chunks come back byte for byte (sha256) in chunks of at most 16 MiB; read_file of a window gives the same bytes.",
            |cx| Box::pin(stream_large_roundtrip(cx)),
        ),
        Check::new(
            "files_stream_read_window",
            a,
            RW,
            "read_file_stream: the window [offset, offset+limit) or to the end, with no maximum (a limit above MAX_READ_BYTES included); size is the whole file's.",
            |cx| Box::pin(stream_read_window(cx)),
        ),
        Check::new(
            "files_stream_body_error_keeps_old",
            a,
            RW,
            "write_file_stream: \"A body that ends with an Err item fails the write with that error and leaves the target as it was\" (the old file, or no file; nothing partial).",
            |cx| Box::pin(stream_body_error_keeps_old(cx)),
        ),
        Check::new(
            "files_archive_roundtrip",
            a,
            &[ArchiveTransfer],
            "upload_archive then download_archive: entries, contents, modes and relative symlinks survive.",
            |cx| Box::pin(archive_roundtrip(cx)),
        ),
        Check::new(
            "files_archive_stream_roundtrip",
            a,
            &[ArchiveTransfer],
            "upload_archive_stream then download_archive_stream, in 1 MiB chunks: a tree with a 16 MiB file comes back the same.",
            |cx| Box::pin(archive_stream_roundtrip(cx)),
        ),
        Check::new(
            "files_archive_download_missing_not_found",
            a,
            &[ArchiveTransfer],
            "download_archive errors: \"NotFound\".",
            |cx| Box::pin(archive_download_missing_not_found(cx)),
        ),
        Check::new(
            "files_archive_escape_refused",
            a,
            &[ArchiveTransfer],
            "upload_archive: entries outside target (`..`, absolute) \"are refused with PermissionDenied\"; nothing lands outside.",
            |cx| Box::pin(archive_escape_refused(cx)),
        ),
        Check::new(
            "files_archive_symlink_escape_refused",
            a,
            &[ArchiveTransfer],
            "upload_archive: an entry written \"through a symlink\" out of target is refused with PermissionDenied.",
            |cx| Box::pin(archive_symlink_escape_refused(cx)),
        ),
        Check::new(
            "files_archive_existing_symlink_refused",
            a,
            &[CommandExec, ArchiveTransfer, FileRead],
            "upload_archive: an entry written \"through a symlink\" a command made (in target or a directory below), leading out of target, is refused with PermissionDenied and nothing lands there; a file entry over a symlink to a file outside leaves that file as it was; one leading inside works.",
            |cx| Box::pin(archive_existing_symlink_refused(cx)),
        ),
    ]
}

async fn write(s: &Session, path: &Path, contents: &[u8]) -> CheckResult {
    s.write_file(RunnerFileWriteRequest::new(path, contents.to_vec()))
        .await
        .or_fail(format!("write_file {}", path.display()))
}

async fn read(s: &Session, path: &Path) -> CheckResult<Vec<u8>> {
    Ok(s.read_file(RunnerFileReadRequest::new(path))
        .await
        .or_fail(format!("read_file {}", path.display()))?
        .contents)
}

/// Text, an empty file and an unusual name round-trip.
async fn write_read_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let cases: [(&str, &[u8]); 3] = [
        ("plain.txt", b"hello, runner\n"),
        ("empty", b""),
        ("ünï cødé & 'quotes'.txt", "multi\nline ✓\r\n".as_bytes()),
    ];
    for (name, contents) in cases {
        let path = dir.join(name);
        write(&s, &path, contents).await?;
        let got = s
            .read_file(RunnerFileReadRequest::new(&path))
            .await
            .or_fail(format!("read_file {}", path.display()))?;
        same_bytes(&got.contents, contents, format!("contents of {name:?}"))?;
        ensure_eq!(got.size, contents.len() as u64, "size of {name:?}");
        ensure_eq!(got.path, path, "path echoed by read_file");
    }
    s.close().await.or_fail("close")
}

/// Binary contents round-trip byte for byte.
async fn binary_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let all = all_byte_values();
    let big = pseudo_random(3 * 1024 * 1024 + 13, seed());
    for (name, data) in [("all-bytes.bin", &all), ("random-3mib.bin", &big)] {
        let path = dir.join(name);
        write(&s, &path, data).await?;
        let got = read(&s, &path).await?;
        same_bytes(&got, data, format!("{name} read back"))?;
    }
    s.close().await.or_fail("close")
}

/// Writing a file deep in missing directories creates them.
async fn write_creates_parents(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("a/b/c/d/deep.txt");
    write(&s, &path, b"deep").await?;
    same_bytes(
        &read(&s, &path).await?,
        b"deep",
        "file written under new parents",
    )?;
    s.close().await.or_fail("close")
}

/// Concurrent readers never see a mix; no temp files are left behind.
async fn overwrite_atomic(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let path = dir.join("target.bin");
    let old = vec![b'a'; 1024 * 1024];
    let new = vec![b'b'; 700 * 1024];
    write(&s, &path, &old).await?;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, path, done) = (s.clone(), path.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0usize;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let got = s
                    .read_file(RunnerFileReadRequest::new(&path))
                    .await
                    .or_fail("read_file during overwrites")?;
                let c = &got.contents;
                let whole_old = c.len() == 1024 * 1024 && c.iter().all(|b| *b == b'a');
                let whole_new = c.len() == 700 * 1024 && c.iter().all(|b| *b == b'b');
                if !(whole_old || whole_new) {
                    let a = c.iter().filter(|b| **b == b'a').count();
                    return Err(format!(
                        "a read during overwrites saw a mix: {} bytes ({a} of the old content), \
                         expected all of the old (1 MiB of 'a') or all of the new (700 KiB of 'b')",
                        c.len()
                    ));
                }
                reads += 1;
            }
            Ok::<usize, String>(reads)
        })
    };
    let mut writes = Ok(());
    for i in 0..10 {
        let contents = if i % 2 == 0 { &new } else { &old };
        writes = write(&s, &path, contents).await;
        if writes.is_err() {
            break;
        }
    }
    done.store(true, Ordering::SeqCst);
    let reads = reader.await.map_err(|e| format!("reader task: {e}"))?;
    writes?;
    reads?;
    same_bytes(
        &read(&s, &path).await?,
        &old,
        "contents after the last overwrite",
    )?;
    if cx.has(FileManagement) {
        let names: Vec<String> = s
            .list_dir(&dir)
            .await
            .or_fail(format!("list_dir {}", dir.display()))?
            .into_iter()
            .map(|e| e.name)
            .collect();
        ensure_eq!(
            names,
            vec!["target.bin".to_string()],
            "entries after ten overwrites (no temp files left)"
        );
    }
    if cx.has(CommandExec) {
        let listing = sh_ok(
            s.as_ref(),
            &format!("ls -A {}", quote(&dir.display().to_string())),
        )
        .await?;
        ensure_eq!(
            listing,
            "target.bin\n",
            "`ls -A` after ten overwrites (no temp files left)"
        );
    }
    s.close().await.or_fail("close")
}

async fn mode_of(s: &Session, path: &Path) -> CheckResult<u32> {
    Ok(s.stat(path)
        .await
        .or_fail(format!("stat {}", path.display()))?
        .mode
        & 0o777)
}

/// Modes are set, kept, and defaulted.
async fn mode_honoured(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let exe = dir.join("run.sh");
    let mut request = RunnerFileWriteRequest::new(&exe, b"#!/bin/sh\necho ran-it\n".to_vec());
    request.mode = Some(0o755);
    s.write_file(request)
        .await
        .or_fail("write_file with mode 755")?;
    ensure_eq!(
        format!("{:o}", mode_of(&s, &exe).await?),
        "755",
        "mode after write_file with mode 0o755"
    );
    let private = dir.join("private.txt");
    let mut request = RunnerFileWriteRequest::new(&private, b"v1".to_vec());
    request.mode = Some(0o600);
    s.write_file(request)
        .await
        .or_fail("write_file with mode 600")?;
    ensure_eq!(
        format!("{:o}", mode_of(&s, &private).await?),
        "600",
        "mode after write_file with mode 0o600"
    );
    write(&s, &private, b"v2").await?;
    ensure_eq!(
        format!("{:o}", mode_of(&s, &private).await?),
        "600",
        "mode after an overwrite with mode None (kept)"
    );
    same_bytes(
        &read(&s, &private).await?,
        b"v2",
        "contents after the overwrite",
    )?;
    let fresh = dir.join("fresh.txt");
    write(&s, &fresh, b"new").await?;
    ensure_eq!(
        format!("{:o}", mode_of(&s, &fresh).await?),
        "644",
        "mode of a new file written with mode None"
    );
    if cx.has(CommandExec) {
        let out = sh_ok(s.as_ref(), &quote(&exe.display().to_string())).await?;
        ensure_eq!(
            out,
            "ran-it\n",
            "output of the 0o755 script run by a command"
        );
    }
    s.close().await.or_fail("close")
}

/// Ranged reads return the requested window and the whole size.
async fn read_range(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("range.txt");
    let data = b"0123456789abcdefghij";
    write(&s, &path, data).await?;
    let cases: [(Option<u64>, Option<u64>, &[u8]); 5] = [
        (Some(5), Some(4), b"5678"),
        (Some(15), None, b"fghij"),
        (None, Some(3), b"012"),
        (Some(18), Some(10), b"ij"),
        (Some(25), Some(5), b""),
    ];
    for (offset, limit, expected) in cases {
        let mut request = RunnerFileReadRequest::new(&path);
        request.offset = offset;
        request.limit = limit;
        let got = s
            .read_file(request)
            .await
            .or_fail(format!("read_file offset {offset:?} limit {limit:?}"))?;
        same_bytes(
            &got.contents,
            expected,
            format!("read_file offset {offset:?} limit {limit:?}"),
        )?;
        ensure_eq!(
            got.size,
            20,
            "size reported by read_file offset {offset:?} limit {limit:?}"
        );
    }
    s.close().await.or_fail("close")
}

/// The largest chunk a read stream may yield: a stream holds a few chunks,
/// never the whole file.
const LARGEST_CHUNK: usize = 16 * MIB;

/// 64 MiB streamed in and out arrive whole; a window read whole matches.
async fn stream_large_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("large.bin");
    let data = Generated::new(seed(), 64);
    s.write_file_stream(RunnerFileWriteRequest::new(&path, Vec::new()), data.body())
        .await
        .or_fail(format!("write_file_stream of 64 MiB to {}", path.display()))?;
    let what = format!("read_file_stream {}", path.display());
    let file = s
        .read_file_stream(RunnerFileReadRequest::new(&path))
        .await
        .or_fail(&what)?;
    ensure_eq!(file.size, data.len(), "size reported by {what}");
    let drained = drain(file.bytes, &what).await?;
    ensure_eq!(drained.len, data.len(), "bytes yielded by {what}");
    ensure_eq!(
        drained.sha256,
        data.sha256(),
        "sha256 of the bytes read back against the bytes sent"
    );
    ensure!(
        drained.largest <= LARGEST_CHUNK,
        "{what} yielded a chunk of {} bytes: a stream holds a few chunks of at most \
         {LARGEST_CHUNK} bytes, never the whole file",
        drained.largest
    );
    let (offset, limit) = (30 * MIB as u64 + 12_345, 3 * MIB as u64 + 7);
    let mut request = RunnerFileReadRequest::new(&path);
    request.offset = Some(offset);
    request.limit = Some(limit);
    let window = format!("read_file offset {offset} limit {limit}");
    let got = s.read_file(request).await.or_fail(&window)?;
    ensure_eq!(got.size, data.len(), "size reported by {window}");
    same_bytes(&got.contents, &data.range(offset, limit), &window)?;
    s.close().await.or_fail("close")
}

/// A streamed read yields exactly its window and names the whole size.
async fn stream_read_window(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("window.bin");
    let data = Generated::new(seed(), 3);
    let len = data.len();
    write(&s, &path, &data.range(0, len)).await?;
    let mib = MIB as u64;
    let cases: [(Option<u64>, Option<u64>); 8] = [
        (None, None),
        (Some(mib + 5), Some(mib)),
        (Some(len - 10), None),
        (Some(len - 10), Some(100)),
        (None, Some(4 * MAX_READ_BYTES)),
        (Some(7), Some(0)),
        (Some(len), Some(5)),
        (Some(len + 100), None),
    ];
    for (offset, limit) in cases {
        let what = format!("read_file_stream offset {offset:?} limit {limit:?}");
        let mut request = RunnerFileReadRequest::new(&path);
        request.offset = offset;
        request.limit = limit;
        let file = s.read_file_stream(request).await.or_fail(&what)?;
        ensure_eq!(file.size, len, "size reported by {what}");
        let got = collect(file.bytes, &what).await?;
        let want = data.range(offset.unwrap_or(0), limit.unwrap_or(u64::MAX));
        same_bytes(&got, &want, &what)?;
    }
    s.close().await.or_fail("close")
}

/// A body that fails part way fails the write and leaves the old file (or
/// none), with no partial or temporary file.
async fn stream_body_error_keeps_old(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let kept = dir.join("kept.txt");
    let old = b"the old contents\n";
    write(&s, &kept, old).await?;
    let fresh = dir.join("fresh.bin");
    for (path, what) in [(&kept, "over an existing file"), (&fresh, "to a new file")] {
        let failure = RunnerError::new(
            RunnerErrorKind::Cancelled,
            "conformance: the body failed after 3 MiB",
        );
        let body = Generated::new(seed(), 3).failing_body(failure);
        s.write_file_stream(RunnerFileWriteRequest::new(path, b"head".to_vec()), body)
            .await
            .fails_with(
                RunnerErrorKind::Cancelled,
                format!(
                    "write_file_stream {what} {} whose body fails after 3 MiB (the body's error)",
                    path.display()
                ),
            )?;
    }
    same_bytes(
        &read(&s, &kept).await?,
        old,
        "the existing file after a write whose body failed",
    )?;
    s.read_file(RunnerFileReadRequest::new(&fresh))
        .await
        .fails_with(
            RunnerErrorKind::NotFound,
            format!("read_file {} after its only write failed", fresh.display()),
        )?;
    if cx.has(FileManagement) {
        let names: Vec<String> = s
            .list_dir(&dir)
            .await
            .or_fail(format!("list_dir {}", dir.display()))?
            .into_iter()
            .map(|e| e.name)
            .collect();
        ensure_eq!(
            names,
            vec!["kept.txt".to_string()],
            "entries after two failed writes (no partial or temporary file left)"
        );
    }
    if cx.has(CommandExec) {
        let listing = sh_ok(
            s.as_ref(),
            &format!("ls -A {}", quote(&dir.display().to_string())),
        )
        .await?;
        ensure_eq!(
            listing,
            "kept.txt\n",
            "`ls -A` after two failed writes (no partial or temporary file left)"
        );
    }
    s.close().await.or_fail("close")
}

/// Reading a missing file is `NotFound`.
async fn read_missing_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("missing.txt");
    s.read_file(RunnerFileReadRequest::new(&path))
        .await
        .fails_with(
            RunnerErrorKind::NotFound,
            format!("read_file {}", path.display()),
        )?;
    s.close().await.or_fail("close")
}

/// Reading a directory is `InvalidRequest`.
async fn read_directory_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    write(&s, &dir.join("sub/file.txt"), b"x").await?;
    let sub = dir.join("sub");
    s.read_file(RunnerFileReadRequest::new(&sub))
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            format!("read_file of directory {}", sub.display()),
        )?;
    s.close().await.or_fail("close")
}

/// Writing onto a directory is `InvalidRequest` and leaves the directory alone.
async fn write_onto_directory_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let inner = dir.join("sub/file.txt");
    write(&s, &inner, b"kept").await?;
    let sub = dir.join("sub");
    s.write_file(RunnerFileWriteRequest::new(&sub, b"clobber".to_vec()))
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            format!("write_file onto directory {}", sub.display()),
        )?;
    same_bytes(
        &read(&s, &inner).await?,
        b"kept",
        "a file inside the directory after the refused write",
    )?;
    s.close().await.or_fail("close")
}

/// The file API and commands see the same files.
async fn visible_to_commands(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let from_api = dir.join("from-api.txt");
    write(&s, &from_api, b"written by write_file\n").await?;
    let seen = sh_ok(
        s.as_ref(),
        &format!("cat {}", quote(&from_api.display().to_string())),
    )
    .await?;
    ensure_eq!(
        seen,
        "written by write_file\n",
        "`cat` of a file written by write_file"
    );
    let from_cmd = dir.join("from-cmd.txt");
    sh_ok(
        s.as_ref(),
        &format!(
            "printf 'written by a command' > {}",
            quote(&from_cmd.display().to_string())
        ),
    )
    .await?;
    same_bytes(
        &read(&s, &from_cmd).await?,
        b"written by a command",
        "read_file of a file a command wrote",
    )?;
    s.close().await.or_fail("close")
}

/// `list_dir` is sorted by name and reports kinds, sizes and paths.
async fn list_dir_sorted(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    write(&s, &dir.join("b.txt"), b"bb").await?;
    write(&s, &dir.join("a.txt"), b"a").await?;
    write(&s, &dir.join(".hidden"), b"").await?;
    s.make_dir(&dir.join("c-dir")).await.or_fail("make_dir")?;
    write(&s, &dir.join("c-dir/inner.txt"), b"not listed").await?;
    let entries = s
        .list_dir(&dir)
        .await
        .or_fail(format!("list_dir {}", dir.display()))?;
    let got: Vec<(String, RunnerFileKind)> =
        entries.iter().map(|e| (e.name.clone(), e.kind)).collect();
    let expected = vec![
        (".hidden".to_string(), RunnerFileKind::File),
        ("a.txt".to_string(), RunnerFileKind::File),
        ("b.txt".to_string(), RunnerFileKind::File),
        ("c-dir".to_string(), RunnerFileKind::Directory),
    ];
    ensure_eq!(got, expected, "list_dir names and kinds, sorted by name");
    for entry in &entries {
        ensure_eq!(
            entry.path,
            dir.join(&entry.name),
            "path of list_dir entry {:?}",
            entry.name
        );
    }
    ensure_eq!(entries[1].size, 1, "size of a.txt in list_dir");
    ensure_eq!(entries[2].size, 2, "size of b.txt in list_dir");
    s.close().await.or_fail("close")
}

/// `list_dir` of a missing path or of a file fails with the documented kinds.
async fn list_dir_errors(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let file = dir.join("file.txt");
    write(&s, &file, b"x").await?;
    s.list_dir(&dir.join("missing"))
        .await
        .fails_with(RunnerErrorKind::NotFound, "list_dir of a missing directory")?;
    s.list_dir(&file)
        .await
        .fails_with(RunnerErrorKind::InvalidRequest, "list_dir of a file")?;
    s.close().await.or_fail("close")
}

/// `stat` reports files, directories and symlinks (not followed).
async fn stat_kinds(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let file = dir.join("file.txt");
    write(&s, &file, b"12345").await?;
    let st = s.stat(&file).await.or_fail("stat of a file")?;
    ensure_eq!(st.kind, RunnerFileKind::File, "kind of a file");
    ensure_eq!(st.size, 5, "size of a 5-byte file");
    ensure_eq!(st.name, "file.txt", "name of a file");
    ensure!(
        st.modified_ms.is_some_and(|m| m > 1_500_000_000_000),
        "modified_ms of a new file: {:?}",
        st.modified_ms
    );
    let st = s.stat(&dir).await.or_fail("stat of a directory")?;
    ensure_eq!(st.kind, RunnerFileKind::Directory, "kind of a directory");
    s.stat(&dir.join("missing"))
        .await
        .fails_with(RunnerErrorKind::NotFound, "stat of a missing path")?;
    if cx.has(CommandExec) {
        let link = dir.join("link");
        sh_ok(
            s.as_ref(),
            &format!("ln -s file.txt {}", quote(&link.display().to_string())),
        )
        .await?;
        let st = s.stat(&link).await.or_fail("stat of a symlink")?;
        ensure_eq!(
            st.kind,
            RunnerFileKind::Symlink,
            "kind of a symlink (not followed)"
        );
        ensure_eq!(
            st.symlink_target,
            Some(PathBuf::from("file.txt")),
            "symlink_target as stored in the link"
        );
        let dangling = dir.join("dangling");
        sh_ok(
            s.as_ref(),
            &format!(
                "ln -s no-such-target {}",
                quote(&dangling.display().to_string())
            ),
        )
        .await?;
        let st = s
            .stat(&dangling)
            .await
            .or_fail("stat of a dangling symlink")?;
        ensure_eq!(
            st.kind,
            RunnerFileKind::Symlink,
            "kind of a dangling symlink"
        );
    }
    s.close().await.or_fail("close")
}

/// `make_dir` creates parents, is idempotent, and refuses a file.
async fn make_dir(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let deep = dir.join("x/y/z");
    s.make_dir(&deep)
        .await
        .or_fail(format!("make_dir {}", deep.display()))?;
    for p in [dir.join("x"), dir.join("x/y"), deep.clone()] {
        let st = s.stat(&p).await.or_fail(format!("stat {}", p.display()))?;
        ensure_eq!(
            st.kind,
            RunnerFileKind::Directory,
            "kind of {}",
            p.display()
        );
    }
    s.make_dir(&deep)
        .await
        .or_fail("make_dir of an existing directory")?;
    let file = dir.join("file");
    write(&s, &file, b"x").await?;
    s.make_dir(&file)
        .await
        .fails_with(RunnerErrorKind::AlreadyExists, "make_dir where a file is")?;
    s.close().await.or_fail("close")
}

/// `remove` of files and directories, recursive only when asked.
async fn remove(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let file = dir.join("file.txt");
    write(&s, &file, b"x").await?;
    s.remove(&file, false).await.or_fail("remove of a file")?;
    s.read_file(RunnerFileReadRequest::new(&file))
        .await
        .fails_with(RunnerErrorKind::NotFound, "read_file after remove")?;
    let full = dir.join("full");
    write(&s, &full.join("inner/file.txt"), b"x").await?;
    s.remove(&full, false).await.fails_with(
        RunnerErrorKind::AlreadyExists,
        "remove of a non-empty directory without recursive",
    )?;
    same_bytes(
        &read(&s, &full.join("inner/file.txt")).await?,
        b"x",
        "contents after the refused remove",
    )?;
    s.remove(&full, true).await.or_fail("remove recursive")?;
    s.stat(&full)
        .await
        .fails_with(RunnerErrorKind::NotFound, "stat after a recursive remove")?;
    let empty = dir.join("empty");
    s.make_dir(&empty).await.or_fail("make_dir")?;
    s.remove(&empty, false)
        .await
        .or_fail("remove of an empty directory without recursive")?;
    s.remove(&dir.join("missing"), false)
        .await
        .fails_with(RunnerErrorKind::NotFound, "remove of a missing path")?;
    s.close().await.or_fail("close")
}

/// Removing a symlink removes the link only.
async fn remove_symlink_not_target(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let target = dir.join("target-dir/kept.txt");
    write(&s, &target, b"kept").await?;
    let link = dir.join("link");
    sh_ok(
        s.as_ref(),
        &format!("ln -s target-dir {}", quote(&link.display().to_string())),
    )
    .await?;
    s.remove(&link, true)
        .await
        .or_fail("remove of a symlink to a directory (recursive)")?;
    s.stat(&link)
        .await
        .fails_with(RunnerErrorKind::NotFound, "stat of the removed symlink")?;
    same_bytes(
        &read(&s, &target).await?,
        b"kept",
        "a file in the link's target after removing the link",
    )?;
    s.close().await.or_fail("close")
}

/// `rename` moves files and directories with POSIX semantics.
async fn rename(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    write(&s, &a, b"alpha").await?;
    s.rename(&a, &b).await.or_fail("rename a.txt to b.txt")?;
    same_bytes(&read(&s, &b).await?, b"alpha", "b.txt after the rename")?;
    s.read_file(RunnerFileReadRequest::new(&a))
        .await
        .fails_with(RunnerErrorKind::NotFound, "read_file of the old name")?;
    let c = dir.join("c.txt");
    write(&s, &c, b"gamma").await?;
    s.rename(&c, &b)
        .await
        .or_fail("rename onto an existing file")?;
    same_bytes(&read(&s, &b).await?, b"gamma", "the replaced file")?;
    s.rename(&dir.join("missing"), &dir.join("elsewhere"))
        .await
        .fails_with(RunnerErrorKind::NotFound, "rename of a missing path")?;
    let src = dir.join("src-dir");
    write(&s, &src.join("inner.txt"), b"inner").await?;
    let moved = dir.join("moved-dir");
    s.rename(&src, &moved)
        .await
        .or_fail("rename of a directory")?;
    same_bytes(
        &read(&s, &moved.join("inner.txt")).await?,
        b"inner",
        "a file inside the renamed directory",
    )?;
    let full = dir.join("full-dir");
    write(&s, &full.join("occupant.txt"), b"x").await?;
    s.rename(&moved, &full).await.fails_with(
        RunnerErrorKind::AlreadyExists,
        "rename onto a non-empty directory",
    )?;
    s.close().await.or_fail("close")
}

/// `canonicalize` folds `.` and `..`, resolves symlinks, and needs the path to exist.
async fn canonicalize(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    write(&s, &dir.join("a/b/f.txt"), b"x").await?;
    let root = s
        .canonicalize(&s.workspace_root())
        .await
        .or_fail("canonicalize of the workspace root")?;
    ensure!(
        root.is_absolute(),
        "canonicalize of the root gave a relative path {}",
        root.display()
    );
    let expected = root.join(&dir).join("a/b");
    let dotted = dir.join("a/./b/../b");
    let got = s
        .canonicalize(&dotted)
        .await
        .or_fail(format!("canonicalize {}", dotted.display()))?;
    ensure_eq!(got, expected, "canonicalize {}", dotted.display());
    let dot = s
        .canonicalize(Path::new("."))
        .await
        .or_fail("canonicalize .")?;
    ensure_eq!(dot, root, "canonicalize of \".\" (the workspace root)");
    s.canonicalize(&dir.join("missing"))
        .await
        .fails_with(RunnerErrorKind::NotFound, "canonicalize of a missing path")?;
    if cx.has(CommandExec) {
        let link = dir.join("a/link");
        sh_ok(
            s.as_ref(),
            &format!("ln -s b {}", quote(&link.display().to_string())),
        )
        .await?;
        let got = s
            .canonicalize(&link)
            .await
            .or_fail("canonicalize of a symlink")?;
        ensure_eq!(got, expected, "canonicalize of a symlink to a/b");
    }
    s.close().await.or_fail("close")
}

/// A tree uploaded as tar comes back the same.
async fn archive_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let sample = tree::sample_tree(seed(), true);
    let archive = tree::to_tar(&sample)?;
    let target = dir.join("unpacked");
    s.upload_archive(&target, archive)
        .await
        .or_fail(format!("upload_archive to {}", target.display()))?;
    let back = s
        .download_archive(&target)
        .await
        .or_fail(format!("download_archive {}", target.display()))?;
    let got = tree::from_tar(&back)?;
    tree::compare(
        &got,
        &sample,
        "the downloaded tree against the uploaded one",
    )?;
    if cx.has(FileRead)
        && let Some(Node::File { contents, .. }) = sample.get("nested/deeper/data.bin")
    {
        let read_back = read(&s, &target.join("nested/deeper/data.bin")).await?;
        same_bytes(&read_back, contents, "read_file of an uploaded binary file")?;
    }
    if cx.has(CommandExec) {
        let out = sh_ok(
            s.as_ref(),
            &quote(&target.join("nested/run.sh").display().to_string()),
        )
        .await?;
        ensure_eq!(out, "run\n", "output of the uploaded executable");
        let linked = sh_ok(
            s.as_ref(),
            &format!(
                "cat {}",
                quote(&target.join("nested/link-to-notes").display().to_string())
            ),
        )
        .await?;
        ensure!(
            linked.starts_with("conformance tree"),
            "reading through the uploaded relative symlink gave {linked:?}"
        );
    }
    s.close().await.or_fail("close")
}

/// A tree with a 16 MiB file streamed up and down comes back the same.
async fn archive_stream_roundtrip(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let target = cx.scratch(&s).join("unpacked");
    let mut sample = tree::sample_tree(seed(), true);
    let big = Generated::new(seed(), 16);
    sample.insert(
        "big/sixteen-mib.bin".into(),
        Node::File {
            contents: big.range(0, big.len()),
            mode: Some(0o644),
        },
    );
    let sample = tree::with_parents(sample);
    s.upload_archive_stream(&target, chunked(tree::to_tar(&sample)?))
        .await
        .or_fail(format!("upload_archive_stream to {}", target.display()))?;
    let what = format!("download_archive_stream {}", target.display());
    let stream = s.download_archive_stream(&target).await.or_fail(&what)?;
    let back = collect(stream, &what).await?;
    tree::compare(
        &tree::from_tar(&back)?,
        &sample,
        "the tree downloaded as a stream against the one uploaded as a stream",
    )?;
    s.close().await.or_fail("close")
}

/// Downloading a missing path is `NotFound`.
async fn archive_download_missing_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("missing");
    s.download_archive(&path)
        .await
        .map(|bytes| bytes.len())
        .fails_with(
            RunnerErrorKind::NotFound,
            format!("download_archive {}", path.display()),
        )?;
    s.close().await.or_fail("close")
}

/// Lists what `dir` holds (relative paths), through the archive API; an
/// empty tree when `dir` does not exist (a refused upload may create nothing).
async fn archive_listing(s: &Session, dir: &Path) -> CheckResult<Tree> {
    match s.download_archive(dir).await {
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(Tree::new()),
        downloaded => {
            tree::from_tar(&downloaded.or_fail(format!("download_archive {}", dir.display()))?)
        }
    }
}

/// Tar entries with `..` or an absolute path are refused; nothing lands outside.
async fn archive_escape_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let target = dir.join("target");
    let mut seed_tree = Tree::new();
    seed_tree.insert(
        "inside.txt".into(),
        Node::File {
            contents: b"in".to_vec(),
            mode: Some(0o644),
        },
    );
    s.upload_archive(&target, tree::to_tar(&seed_tree)?)
        .await
        .or_fail("upload_archive of a plain tar")?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let dotdot = format!("../escaped-{token}.txt");
    s.upload_archive(&target, tree::tar_with_raw_path(&dotdot, b"escaped")?)
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            format!("upload_archive with entry {dotdot:?}"),
        )?;
    let listing = archive_listing(&s, &dir).await?;
    ensure!(
        !listing.keys().any(|k| k.contains("escaped-")),
        "after the refused upload a file landed outside the target: {:?}",
        listing.keys().collect::<Vec<_>>()
    );
    let absolute = format!("/tmp/conformance-escaped-{token}.txt");
    s.upload_archive(&target, tree::tar_with_raw_path(&absolute, b"escaped")?)
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            format!("upload_archive with entry {absolute:?}"),
        )?;
    if cx.has(CommandExec) {
        let probe = sh(s.as_ref(), &format!("[ -e {} ]", quote(&absolute))).await?;
        ensure!(
            probe.exit_code == Some(1),
            "after the refused upload, {absolute} exists on the runner"
        );
    }
    let listing = archive_listing(&s, &target).await?;
    ensure!(
        !listing.keys().any(|k| k.contains("escaped-")),
        "after the refused upload of an absolute entry, something landed in the target: {:?}",
        listing.keys().collect::<Vec<_>>()
    );
    s.close().await.or_fail("close")
}

/// A tar that writes through its own symlink out of the target is refused.
async fn archive_symlink_escape_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let target = dir.join("target");
    let token = uuid::Uuid::new_v4().simple().to_string();
    let escaped = format!("escaped-{token}.txt");
    let mut evil = Tree::new();
    evil.insert(
        "up".into(),
        Node::Symlink {
            target: PathBuf::from(".."),
        },
    );
    let archive = {
        let mut bytes = tree::to_tar(&evil)?;
        // Append `up/<escaped>` after the link: drop the end-of-archive blocks first.
        let data = tree::to_tar(&Tree::from([(
            format!("up/{escaped}"),
            Node::File {
                contents: b"escaped".to_vec(),
                mode: Some(0o644),
            },
        )]))?;
        let body_end = |b: &[u8]| b.len() - 1024;
        bytes.truncate(body_end(&bytes));
        bytes.extend_from_slice(&data);
        bytes
    };
    s.upload_archive(&target, archive).await.fails_with(
        RunnerErrorKind::PermissionDenied,
        "upload_archive writing through a symlink to ..",
    )?;
    let listing = archive_listing(&s, &dir).await?;
    ensure!(
        !listing.keys().any(|k| k.ends_with(&escaped)),
        "after the refused upload, {escaped} landed outside the target: {:?}",
        listing.keys().collect::<Vec<_>>()
    );
    s.close().await.or_fail("close")
}

/// An entry beneath a symlink that a command made, leading to a directory
/// outside the workspace, is refused and nothing lands there; beneath a
/// symlink leading inside the target, an entry is written.
async fn archive_existing_symlink_refused(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    // The workspace root and a fresh directory outside it, both resolved.
    let made = sh_ok(
        s.as_ref(),
        "pwd -P && d=$(mktemp -d) && cd \"$d\" && pwd -P",
    )
    .await?;
    let mut lines = made.lines();
    let (Some(root), Some(outside)) = (lines.next(), lines.next()) else {
        return Err(format!(
            "`pwd -P; mktemp -d` printed {made:?}, expected two lines"
        ));
    };
    let outside = outside.to_string();
    let result = if outside.starts_with(&format!("{root}/")) {
        Err(format!(
            "`mktemp -d` made {outside:?} inside the workspace {root:?}; the check needs a \
             directory outside it"
        ))
    } else {
        existing_symlink_refused(&s, &dir, &outside).await
    };
    let removed = sh_ok(s.as_ref(), &format!("rm -rf -- {}", quote(&outside))).await;
    result?;
    removed?;
    s.close().await.or_fail("close")
}

async fn existing_symlink_refused(s: &Session, dir: &Path, outside: &str) -> CheckResult {
    let scratch = quote(&dir.display().to_string());
    sh_ok(
        s.as_ref(),
        &format!(
            "mkdir -p {scratch}/real && ln -s {o} {scratch}/up && ln -s real {scratch}/in && \
             ln -s {o} {scratch}/real/deep && printf original > {o}/victim && \
             ln -s {victim} {scratch}/victim-link",
            o = quote(outside),
            victim = quote(&format!("{outside}/victim")),
        ),
    )
    .await?;
    // Larger than pipe and channel buffers: a provider refusing it must not
    // wait for an unpacker that never reads it.
    let contents = pseudo_random(4 * 1024 * 1024, seed());
    let file = |path: &str| {
        Tree::from([(
            path.to_string(),
            Node::File {
                contents: contents.clone(),
                mode: Some(0o644),
            },
        )])
    };
    s.upload_archive(dir, tree::to_tar(&file("up/x"))?)
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            format!(
                "upload_archive of up/x into {} where up -> {outside}",
                dir.display()
            ),
        )?;
    let probe = sh(
        s.as_ref(),
        &format!("test ! -e {}", quote(&format!("{outside}/x"))),
    )
    .await?;
    ensure!(
        probe.exit_code == Some(0),
        "after the refused upload, {outside}/x exists on the runner"
    );
    // The same through a symlink one directory down.
    s.upload_archive(dir, tree::to_tar(&file("real/deep/z"))?)
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            format!(
                "upload_archive of real/deep/z into {} where real/deep -> {outside}",
                dir.display()
            ),
        )?;
    // A file entry named like a symlink to a file outside: the link may be
    // replaced or the entry refused, but the file outside stays as it was.
    match s
        .upload_archive(dir, tree::to_tar(&file("victim-link"))?)
        .await
    {
        Ok(()) => {}
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
        Err(e) => {
            return Err(format!(
                "upload_archive of victim-link into {} where victim-link -> {outside}/victim: \
                 expected Ok (the link replaced) or PermissionDenied, got {}",
                dir.display(),
                crate::outcome::describe(&e)
            ));
        }
    }
    let probe = sh(
        s.as_ref(),
        &format!(
            "test ! -e {} && test \"$(cat {})\" = original",
            quote(&format!("{outside}/z")),
            quote(&format!("{outside}/victim"))
        ),
    )
    .await?;
    ensure!(
        probe.exit_code == Some(0),
        "after the uploads through real/deep and victim-link, {outside}/z exists or \
         {outside}/victim was changed"
    );
    s.upload_archive(dir, tree::to_tar(&file("in/y"))?)
        .await
        .or_fail(format!(
            "upload_archive of in/y into {} where in -> real (inside)",
            dir.display()
        ))?;
    same_bytes(
        &read(s, &dir.join("real/y")).await?,
        &contents,
        "real/y, uploaded as in/y through the symlink in -> real",
    )
}
