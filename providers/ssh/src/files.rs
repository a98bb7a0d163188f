//! The file API over sftp, on absolute remote paths (confinement to the
//! workspace is done by [`RemoteWorkspace`](runner_stack::RemoteWorkspace) in
//! front of the session), plus tar archives in and out.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::BytesMut;
use futures_util::StreamExt;
use openssh_sftp_client::file::{File, OpenOptions};
use openssh_sftp_client::metadata::{MetaData, Permissions};
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest, RunnerFileStat,
    RunnerResult,
};
use runner_kit::archive::{
    CONFINED_PARENTS_SCRIPT, MODE_MASK, SanitizedUpload, confined_parents_error,
};
use tokio::io::AsyncSeek;

use crate::connection::Link;
use crate::script::{quote, quote_path, run_checked, run_script};

/// Largest single sftp read request.
const READ_CHUNK: u32 = 256 * 1024;

/// Largest piece of a file written by one timed sftp call.
const WRITE_CHUNK: usize = 1024 * 1024;

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Positions `file` at `offset` (sftp reads carry their offset).
pub(crate) fn seek(file: &mut File, offset: u64) -> RunnerResult<()> {
    Pin::new(file)
        .start_seek(SeekFrom::Start(offset))
        .map_err(|e| RunnerError::provider(format!("seek: {e}")))
}

/// Reads up to `n` bytes of `file` at `offset`; fewer at the end of the
/// file. The buffer grows with the bytes that arrive.
pub(crate) async fn read_at(
    link: &Link,
    file: &mut File,
    path: &Path,
    offset: u64,
    n: u64,
) -> RunnerResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = offset;
    while (out.len() as u64) < n {
        seek(file, at)?;
        let want = (n - out.len() as u64).min(READ_CHUNK as u64) as u32;
        match link
            .sftp_call("read", display(path), file.read(want, BytesMut::new()))
            .await?
        {
            Some(bytes) if !bytes.is_empty() => {
                at += bytes.len() as u64;
                out.extend_from_slice(&bytes);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// `lstat` of `path`, `None` when it does not exist.
pub(crate) async fn lstat(link: &Link, path: &Path) -> RunnerResult<Option<MetaData>> {
    unless_missing(
        link.sftp_call("stat", display(path), link.sftp.fs().symlink_metadata(path))
            .await,
    )
}

/// `stat` (following links) of `path`, `None` when it does not exist.
async fn stat_follow(link: &Link, path: &Path) -> RunnerResult<Option<MetaData>> {
    unless_missing(
        link.sftp_call("stat", display(path), link.sftp.fs().metadata(path))
            .await,
    )
}

/// A stat result: `None` when the path does not exist, other failures as
/// they are.
fn unless_missing(result: RunnerResult<MetaData>) -> RunnerResult<Option<MetaData>> {
    match result {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_of(meta: &MetaData) -> RunnerFileKind {
    match meta.file_type() {
        Some(t) if t.is_dir() => RunnerFileKind::Directory,
        Some(t) if t.is_file() => RunnerFileKind::File,
        Some(t) if t.is_symlink() => RunnerFileKind::Symlink,
        _ => RunnerFileKind::Other,
    }
}

fn is_dir(meta: &MetaData) -> bool {
    meta.file_type().is_some_and(|t| t.is_dir())
}

fn mode_of(meta: &MetaData) -> u32 {
    meta.permissions().map_or(0, |p| p.as_raw().bits() & 0o7777)
}

async fn file_stat(link: &Link, path: &Path, meta: &MetaData) -> RunnerResult<RunnerFileStat> {
    let kind = kind_of(meta);
    let symlink_target = if kind == RunnerFileKind::Symlink {
        Some(
            link.sftp_call("read_link", display(path), link.sftp.fs().read_link(path))
                .await?,
        )
    } else {
        None
    };
    Ok(RunnerFileStat {
        path: path.to_path_buf(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind,
        size: meta.len().unwrap_or(0),
        mode: mode_of(meta),
        modified_ms: meta.modified().map(|t| t.as_duration().as_millis() as u64),
        symlink_target,
    })
}

/// Refuses what `operation` must not open: anything but a regular file.
fn require_regular(operation: &str, path: &Path, meta: &MetaData) -> RunnerResult<()> {
    match kind_of(meta) {
        RunnerFileKind::File => Ok(()),
        RunnerFileKind::Directory => Err(RunnerError::invalid_request(format!(
            "{operation} {}: is a directory",
            display(path)
        ))),
        _ => Err(RunnerError::invalid_request(format!(
            "{operation} {}: not a regular file (a FIFO, socket or device); only regular files \
             are opened",
            display(path)
        ))),
    }
}

/// Opens the regular file `path` with `options` (the default: for reading;
/// read access is always added).
///
/// sftp has no non-blocking open, and `sftp-server` opening a FIFO waits for
/// the other end, answering nothing else meanwhile. So the path is stat'ed
/// first and anything but a regular file refused (`InvalidRequest`); a path
/// that does not exist is left to `options` (a create). The open itself is
/// timed like every sftp request: when the path was swapped for a FIFO in
/// between and the open times out (`Timeout`), the stuck server is killed on
/// the host and the connection replaces the channel (see
/// [`Link::sftp_call`]).
/// Once open, the handle is stat'ed (`fstat`) and refused unless it is a
/// regular file (a swap for a device).
///
/// Returns the file and its size.
pub(crate) async fn open_regular(
    link: &Link,
    operation: &str,
    path: &Path,
    options: Option<OpenOptions>,
) -> RunnerResult<(File, u64)> {
    let opened = open_checked(link, operation, path, options).await?;
    Ok((opened.file, opened.size))
}

/// A regular file [`open_checked`] opened.
struct Opened {
    file: File,
    /// Its size, from `fstat` of the open handle.
    size: u64,
    /// Whether the path existed before the open (`false`: `options` created
    /// it).
    existed: bool,
}

/// [`open_regular`], also telling whether the file existed before.
async fn open_checked(
    link: &Link,
    operation: &str,
    path: &Path,
    options: Option<OpenOptions>,
) -> RunnerResult<Opened> {
    let what = display(path);
    let existed = match stat_follow(link, path).await? {
        Some(meta) => {
            require_regular(operation, path, &meta)?;
            true
        }
        None if options.is_none() => {
            return Err(RunnerError::not_found(format!(
                "{operation} {what}: no such file"
            )));
        }
        None => false,
    };
    // Read access too: the client stats only handles open for reading.
    let mut options = options.unwrap_or_else(|| link.sftp.options());
    options.read(true);
    let mut file = link.sftp_call(operation, &what, options.open(path)).await?;
    let meta = link.sftp_call(operation, &what, file.metadata()).await?;
    // A dropped handle is closed in the background.
    require_regular(operation, path, &meta)?;
    Ok(Opened {
        file,
        size: meta.len().unwrap_or(0),
        existed,
    })
}

/// Reads the window `request` asks of the regular file `path` (see
/// [`runner_api::read_window`]): never more than it, however large the file
/// or the request; returns the bytes and the file's size.
pub(crate) async fn read_file(
    link: &Link,
    path: &Path,
    request: &RunnerFileReadRequest,
) -> RunnerResult<(Vec<u8>, u64)> {
    runner_api::check_read_request("read_file", request)?;
    let (mut file, size) = open_regular(link, "read_file", path, None).await?;
    let window = runner_api::read_window("read_file", request, size)?;
    // A file that grew since it was stat'ed is still cut at the window. The
    // handle is closed in the background when dropped.
    let contents = read_at(link, &mut file, path, window.offset, window.len).await?;
    Ok((contents, size))
}

/// Creates `path` and its missing parents; an existing directory is fine.
pub(crate) async fn make_dirs(link: &Link, path: &Path) -> RunnerResult<()> {
    let mut missing = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        match stat_follow(link, &current).await? {
            Some(meta) if is_dir(&meta) => break,
            Some(_) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "make_dir {}: {} is not a directory",
                        display(path),
                        display(&current)
                    ),
                ));
            }
            None => {
                missing.push(current.clone());
                if !current.pop() {
                    break;
                }
            }
        }
    }
    for dir in missing.into_iter().rev() {
        let created = link
            .sftp_call("make_dir", display(&dir), link.sftp.fs().create_dir(&dir))
            .await;
        if let Err(e) = created {
            // Another writer may have created it meanwhile.
            match stat_follow(link, &dir).await? {
                Some(meta) if is_dir(&meta) => {}
                _ => return Err(e),
            }
        }
    }
    Ok(())
}

/// Writes `contents` at the position of `file`, one timed request per
/// [`WRITE_CHUNK`].
pub(crate) async fn write_chunks(
    link: &Link,
    operation: &str,
    path: &Path,
    file: &mut File,
    contents: &[u8],
) -> RunnerResult<()> {
    for chunk in contents.chunks(WRITE_CHUNK) {
        link.sftp_call(operation, display(path), file.write_all(chunk))
            .await?;
    }
    Ok(())
}

/// Refuses to replace the regular file `path` when the login user may not
/// write it. A temporary file and a rename need only the directory's write
/// permission; POSIX asks for the file's, so the file is opened for writing
/// first (no truncation, no creation: nothing changes) and the handle closed
/// in the background.
///
/// Errors: `PermissionDenied` naming the path when the open is refused
/// (`EACCES`, `EPERM`); `Timeout` and `Unavailable` as they come. Other
/// refusals of the open are left to the replace, which may still work: a
/// running program (`ETXTBSY`) is replaced by the rename as on any POSIX
/// system.
async fn check_writable(link: &Link, path: &Path) -> RunnerResult<()> {
    let what = display(path);
    let mut options = link.sftp.options();
    options.write(true);
    match link
        .sftp_call("write_file", &what, options.open(path))
        .await
    {
        Ok(_file) => Ok(()),
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {
            Err(RunnerError::permission_denied(format!(
                "write_file {what}: the login user may not write this file (permission \
                 denied); it is left unchanged"
            ))
            .with_source(e))
        }
        Err(e) if e.kind() == RunnerErrorKind::Provider => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `contents` at byte `offset` of the regular file `path`, in place:
/// the file is not truncated and bytes past the written ones stay
/// ([`RunnerFileWriteRequest::offset`](runner_api::RunnerFileWriteRequest)).
/// Offset 0 of a missing file creates it (and its missing parents) with
/// `mode` or `0o644`; a given `mode` is also applied to an existing file.
/// Modes are masked with [`MODE_MASK`]. The open handle's `fstat` gives the
/// size the offset is checked against. Not atomic.
///
/// Errors: `InvalidRequest` naming the path, the offset and the size when the
/// offset lies past the end of the file, or the file is missing and the
/// offset is not 0 (nothing changes); `InvalidRequest` for a directory or
/// anything but a regular file; `PermissionDenied` when the login user may
/// not read and write the file (the handle is opened for both: sftp stats
/// only readable handles).
pub(crate) async fn write_at(
    link: &Link,
    path: &Path,
    contents: &[u8],
    mode: Option<u32>,
    offset: u64,
) -> RunnerResult<()> {
    const OP: &str = "write_file";
    let what = display(path);
    let options = || {
        let mut options = link.sftp.options();
        options.write(true).create(offset == 0);
        options
    };
    let mut opened = open_checked(link, OP, path, Some(options())).await;
    if offset == 0
        && let Err(e) = &opened
        && e.kind() == RunnerErrorKind::NotFound
        && let Some(parent) = path.parent()
    {
        make_dirs(link, parent).await?;
        opened = open_checked(link, OP, path, Some(options())).await;
    }
    let Opened {
        mut file,
        size,
        existed,
    } = match opened {
        Err(e) if e.kind() == RunnerErrorKind::NotFound && offset > 0 => {
            return Err(RunnerError::invalid_request(format!(
                "{OP} {what}: offset {offset} lies past the end of a missing file (size 0); \
                 only offset 0 creates a file"
            )));
        }
        other => other?,
    };
    if offset > size {
        return Err(RunnerError::invalid_request(format!(
            "{OP} {what}: offset {offset} lies past the end of the file (size {size}); \
             writes may not leave holes"
        )));
    }
    let mode = mode.or((!existed).then_some(0o644));
    let written = async {
        seek(&mut file, offset)?;
        write_chunks(link, OP, path, &mut file, contents).await?;
        if let Some(mode) = mode {
            link.sftp_call(
                "write_file: set mode of",
                &what,
                file.set_permissions(Permissions::from((mode & MODE_MASK) as u16)),
            )
            .await?;
        }
        link.sftp_call(OP, &what, file.close()).await
    };
    let result = written.await;
    if result.is_err() && !existed {
        // No partial file of a write that created it.
        let _ = link
            .sftp_call(OP, &what, link.sftp.fs().remove_file(path))
            .await;
    }
    result
}

/// Writes a whole file atomically: a temporary file next to it, then rename.
/// The mode (the given one, or the existing file's) is masked with
/// [`MODE_MASK`]: no set-id or sticky bits. An existing regular file the
/// login user may not write is refused first ([`check_writable`]).
pub(crate) async fn write_file(
    link: &Link,
    path: &Path,
    contents: &[u8],
    mode: Option<u32>,
) -> RunnerResult<()> {
    let what = display(path);
    let existing = stat_follow(link, path).await?;
    if existing.as_ref().is_some_and(is_dir) {
        return Err(RunnerError::invalid_request(format!(
            "write_file {what}: is a directory"
        )));
    }
    if existing
        .as_ref()
        .is_some_and(|meta| kind_of(meta) == RunnerFileKind::File)
    {
        check_writable(link, path).await?;
    }
    let mode = mode.unwrap_or_else(|| existing.as_ref().map_or(0o644, mode_of)) & MODE_MASK;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RunnerError::invalid_request(format!(
            "write_file {what}: not a file path"
        )));
    };
    make_dirs(link, parent).await?;
    let temp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = async {
        let mut options = link.sftp.options();
        options.write(true).create_new(true);
        let mut file = link
            .sftp_call("write_file", &what, options.open(&temp))
            .await?;
        write_chunks(link, "write_file", path, &mut file, contents).await?;
        link.sftp_call(
            "write_file: set mode of",
            &what,
            file.set_permissions(Permissions::from(mode as u16)),
        )
        .await?;
        link.sftp_call("write_file", &what, file.close()).await?;
        link.sftp_call(
            "write_file: rename into",
            &what,
            link.sftp.fs().rename(&temp, path),
        )
        .await
    };
    let result = written.await;
    if result.is_err() {
        let _ = link
            .sftp_call("write_file", &what, link.sftp.fs().remove_file(&temp))
            .await;
    }
    result
}

/// Entries of a directory, sorted by name.
pub(crate) async fn list_dir(link: &Link, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
    let what = display(path);
    let meta = stat_follow(link, path)
        .await?
        .ok_or_else(|| RunnerError::not_found(format!("list_dir {what}: no such directory")))?;
    if !is_dir(&meta) {
        return Err(RunnerError::invalid_request(format!(
            "list_dir {what}: not a directory"
        )));
    }
    let dir = link
        .sftp_call("list_dir", &what, link.sftp.fs().open_dir(path))
        .await?;
    let mut entries = std::pin::pin!(dir.read_dir());
    let mut out = Vec::new();
    while let Some(entry) = link
        .sftp_call("list_dir", &what, async {
            entries.next().await.transpose()
        })
        .await?
    {
        let name = entry.filename().to_path_buf();
        if name == Path::new(".") || name == Path::new("..") {
            continue;
        }
        let full = path.join(&name);
        out.push(file_stat(link, &full, &entry.metadata()).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Metadata of a path; a symlink is reported as a symlink.
pub(crate) async fn stat(link: &Link, path: &Path) -> RunnerResult<RunnerFileStat> {
    let meta = lstat(link, path)
        .await?
        .ok_or_else(|| RunnerError::not_found(format!("stat {}: no such file", display(path))))?;
    file_stat(link, path, &meta).await
}

/// Removes a file, a link, or a directory (non-empty only with `recursive`).
pub(crate) async fn remove(link: &Link, path: &Path, recursive: bool) -> RunnerResult<()> {
    let what = display(path);
    let meta = lstat(link, path)
        .await?
        .ok_or_else(|| RunnerError::not_found(format!("remove {what}: no such file")))?;
    if !is_dir(&meta) {
        return link
            .sftp_call("remove", &what, link.sftp.fs().remove_file(path))
            .await;
    }
    if recursive {
        let script = format!("rm -rf -- {}", quote_path("remove", path)?);
        run_checked(link, "remove", &script, None).await?;
        return Ok(());
    }
    let removed = link
        .sftp_call("remove", &what, link.sftp.fs().remove_dir(path))
        .await;
    if let Err(e) = removed {
        if e.kind() == RunnerErrorKind::Provider && !list_dir(link, path).await?.is_empty() {
            return Err(RunnerError::new(
                RunnerErrorKind::AlreadyExists,
                format!("remove {what}: directory not empty (pass recursive)"),
            ));
        }
        return Err(e);
    }
    Ok(())
}

/// Creates a directory and its parents; an existing directory is `Ok`.
pub(crate) async fn make_dir(link: &Link, path: &Path) -> RunnerResult<()> {
    make_dirs(link, path).await
}

/// Renames `from` to `to`, replacing a file at `to` (POSIX rename).
pub(crate) async fn rename(link: &Link, from: &Path, to: &Path) -> RunnerResult<()> {
    let what = format!("{} to {}", display(from), display(to));
    if lstat(link, from).await?.is_none() {
        return Err(RunnerError::not_found(format!(
            "rename {what}: {} does not exist",
            display(from)
        )));
    }
    if let Some(meta) = lstat(link, to).await?
        && is_dir(&meta)
        && !list_dir(link, to).await?.is_empty()
    {
        return Err(RunnerError::new(
            RunnerErrorKind::AlreadyExists,
            format!("rename {what}: {} is a non-empty directory", display(to)),
        ));
    }
    link.sftp_call("rename", &what, link.sftp.fs().rename(from, to))
        .await
}

/// The absolute path with every symlink resolved, by the server's `realpath`.
pub(crate) async fn canonicalize(link: &Link, path: &Path) -> RunnerResult<PathBuf> {
    let what = display(path);
    // The server's realpath accepts a missing last component: a stat of the
    // same path (sent at once, one round trip) says whether it exists.
    let mut fs = link.sftp.fs();
    let (resolved, exists) = tokio::join!(
        link.sftp_call("canonicalize", &what, fs.canonicalize(path)),
        stat_follow(link, path)
    );
    let resolved = resolved?;
    if exists?.is_none() {
        return Err(RunnerError::not_found(format!(
            "canonicalize {what}: no such file"
        )));
    }
    Ok(resolved)
}

/// Unpacks an upload that [`runner_kit::archive::sanitize_upload`] checked
/// and rewrote into `target` (created if missing) with the remote `tar`.
/// The rewritten entries carry no set-id bits, so `tar` applies their modes
/// as they are (`--same-permissions`, no umask); it keeps no owner
/// (`--no-same-owner`: the login user owns what it unpacks).
///
/// One remote `sh` runs [`CONFINED_PARENTS_SCRIPT`] (it creates the target
/// and refuses directories of the entries that are symlinks leading out of
/// it) and then `exec`s `tar`, which reads the archive from stdin: one round
/// trip. The directories travel on the command line; when they do not fit one
/// ([`runner_kit::archive::CONFINED_PARENTS_ARGS_BUDGET`]), the check runs
/// alone on all but the last share of them, and the last comes with `tar`.
pub(crate) async fn upload_archive(
    link: &Link,
    target: &Path,
    upload: &SanitizedUpload,
) -> RunnerResult<()> {
    const OP: &str = "upload_archive";
    let target_arg = quote_path(OP, target)?;
    let mut runs = upload
        .check
        .confined_parents_runs(OP, target, |p| quote(p).len() + 1)?;
    let last = runs.pop().unwrap_or_default();
    for run in runs {
        confined_run(link, target, &target_arg, &run, None).await?;
    }
    confined_run(link, target, &target_arg, &last, Some(&upload.archive)).await
}

/// Creates the target of a refused upload, as the other providers do (and
/// refuses it the same way when it leads out).
pub(crate) async fn upload_target(link: &Link, target: &Path) -> RunnerResult<()> {
    confined_run(
        link,
        target,
        &quote_path("upload_archive", target)?,
        &[],
        None,
    )
    .await
}

/// Runs [`CONFINED_PARENTS_SCRIPT`] on `parents` of `target`, followed by the
/// unpacking `tar` when `archive` is given.
async fn confined_run(
    link: &Link,
    target: &Path,
    target_arg: &str,
    parents: &[&str],
    archive: Option<&[u8]>,
) -> RunnerResult<()> {
    const OP: &str = "upload_archive";
    let (body, what) = match archive {
        Some(_) => (
            format!(
                "{CONFINED_PARENTS_SCRIPT}exec tar -x -f - -C \"$1\" --no-same-owner \
                 --same-permissions --delay-directory-restore\n"
            ),
            "remote tar",
        ),
        None => (CONFINED_PARENTS_SCRIPT.to_string(), "remote check"),
    };
    let mut command = format!("sh -c {} sh {target_arg}", quote(&body));
    for parent in parents {
        command.push(' ');
        command.push_str(&quote(parent));
    }
    let out = run_script(link, OP, &command, archive).await?;
    if let Some(code) = out.code
        && let Some(refused) = confined_parents_error(OP, target, code, &out.stdout, &out.stderr)
    {
        return Err(refused);
    }
    if out.code != Some(0) {
        return Err(RunnerError::provider(format!(
            "{OP} {}: {what} failed: {}",
            display(target),
            out.stderr_text()
        )));
    }
    Ok(())
}

/// A tar of a directory's contents, or of one file.
pub(crate) async fn download_archive(link: &Link, path: &Path) -> RunnerResult<Vec<u8>> {
    let what = display(path);
    let meta = stat_follow(link, path)
        .await?
        .ok_or_else(|| RunnerError::not_found(format!("download_archive {what}: no such file")))?;
    let script = if is_dir(&meta) {
        format!("tar -c -f - -C {} .", quote_path("download_archive", path)?)
    } else {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "tar -c -f - -C {} -- {}",
            quote_path("download_archive", parent)?,
            quote(&name)
        )
    };
    let out = run_script(link, "download_archive", &script, None).await?;
    if out.code != Some(0) {
        return Err(RunnerError::provider(format!(
            "download_archive {what}: remote tar failed: {}",
            out.stderr_text()
        )));
    }
    Ok(out.stdout)
}
