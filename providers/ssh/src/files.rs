//! The file API over sftp, on absolute remote paths (confinement to the
//! workspace is done by [`RemoteWorkspace`](runner_api::RemoteWorkspace) in
//! front of the session), plus tar archives in and out.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::BytesMut;
use futures_util::StreamExt;
use openssh_sftp_client::file::File;
use openssh_sftp_client::metadata::{MetaData, Permissions};
use runner_api::archive::{CONFINED_PARENTS_SCRIPT, confined_parents_error};
use runner_api::{RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileStat, RunnerResult};
use tokio::io::AsyncSeek;

use crate::connection::Link;
use crate::error::sftp_error;
use crate::script::{quote, quote_path, run_checked, run_script};

/// Largest single sftp read request.
const READ_CHUNK: u32 = 256 * 1024;

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Positions `file` at `offset` (sftp reads carry their offset).
pub(crate) fn seek(file: &mut File, offset: u64) -> RunnerResult<()> {
    Pin::new(file)
        .start_seek(SeekFrom::Start(offset))
        .map_err(|e| RunnerError::provider(format!("seek: {e}")))
}

/// Reads up to `n` bytes of `file` at `offset`; empty at the end of the file.
pub(crate) async fn read_at(
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
        match file
            .read(want, BytesMut::new())
            .await
            .map_err(|e| sftp_error("read", display(path), e))?
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
    unless_missing(path, link.sftp.fs().symlink_metadata(path).await)
}

/// `stat` (following links) of `path`, `None` when it does not exist.
async fn stat_follow(link: &Link, path: &Path) -> RunnerResult<Option<MetaData>> {
    unless_missing(path, link.sftp.fs().metadata(path).await)
}

/// A stat result of `path`: `None` when it does not exist, other failures as
/// typed errors.
fn unless_missing(
    path: &Path,
    result: Result<MetaData, openssh_sftp_client::Error>,
) -> RunnerResult<Option<MetaData>> {
    match result {
        Ok(meta) => Ok(Some(meta)),
        Err(e) => {
            let e = sftp_error("stat", display(path), e);
            if e.kind() == RunnerErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
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
            link.sftp
                .fs()
                .read_link(path)
                .await
                .map_err(|e| sftp_error("read_link", display(path), e))?,
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

/// Reads a file, or `limit` bytes from `offset`; returns the bytes and the size.
pub(crate) async fn read_file(
    link: &Link,
    path: &Path,
    offset: Option<u64>,
    limit: Option<u64>,
) -> RunnerResult<(Vec<u8>, u64)> {
    let meta = stat_follow(link, path).await?.ok_or_else(|| {
        RunnerError::not_found(format!("read_file {}: no such file", display(path)))
    })?;
    if is_dir(&meta) {
        return Err(RunnerError::invalid_request(format!(
            "read_file {}: is a directory",
            display(path)
        )));
    }
    let size = meta.len().unwrap_or(0);
    let mut file = link
        .sftp
        .open(path)
        .await
        .map_err(|e| sftp_error("read_file", display(path), e))?;
    let start = offset.unwrap_or(0);
    let n = limit.unwrap_or(u64::MAX);
    // Read to the end as it is now (the size may have changed since `stat`).
    let contents = read_at(&mut file, path, start, n).await?;
    let _ = file.close().await;
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
        if let Err(e) = link.sftp.fs().create_dir(&dir).await {
            // Another writer may have created it meanwhile.
            match stat_follow(link, &dir).await? {
                Some(meta) if is_dir(&meta) => {}
                _ => return Err(sftp_error("make_dir", display(&dir), e)),
            }
        }
    }
    Ok(())
}

/// Writes a whole file atomically: a temporary file next to it, then rename.
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
    let mode = mode.unwrap_or_else(|| existing.as_ref().map_or(0o644, mode_of)) & 0o7777;
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
        let mut file = link
            .sftp
            .options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(|e| sftp_error("write_file", &what, e))?;
        file.write_all(contents)
            .await
            .map_err(|e| sftp_error("write_file", &what, e))?;
        file.set_permissions(Permissions::from(mode as u16))
            .await
            .map_err(|e| sftp_error("write_file: set mode of", &what, e))?;
        file.close()
            .await
            .map_err(|e| sftp_error("write_file", &what, e))?;
        link.sftp
            .fs()
            .rename(&temp, path)
            .await
            .map_err(|e| sftp_error("write_file: rename into", &what, e))
    };
    let result = written.await;
    if result.is_err() {
        let _ = link.sftp.fs().remove_file(&temp).await;
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
        .sftp
        .fs()
        .open_dir(path)
        .await
        .map_err(|e| sftp_error("list_dir", &what, e))?;
    let mut entries = std::pin::pin!(dir.read_dir());
    let mut out = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| sftp_error("list_dir", &what, e))?;
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
            .sftp
            .fs()
            .remove_file(path)
            .await
            .map_err(|e| sftp_error("remove", &what, e));
    }
    if recursive {
        let script = format!("rm -rf -- {}", quote_path("remove", path)?);
        run_checked(link, "remove", &script, None).await?;
        return Ok(());
    }
    if let Err(e) = link.sftp.fs().remove_dir(path).await {
        let e = sftp_error("remove", &what, e);
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
    link.sftp
        .fs()
        .rename(from, to)
        .await
        .map_err(|e| sftp_error("rename", &what, e))
}

/// The absolute path with every symlink resolved, by the server's `realpath`.
pub(crate) async fn canonicalize(link: &Link, path: &Path) -> RunnerResult<PathBuf> {
    let what = display(path);
    // The server's realpath accepts a missing last component: a stat of the
    // same path (sent at once, one round trip) says whether it exists.
    let mut fs = link.sftp.fs();
    let (resolved, exists) = tokio::join!(fs.canonicalize(path), stat_follow(link, path));
    let resolved = resolved.map_err(|e| sftp_error("canonicalize", &what, e))?;
    if exists?.is_none() {
        return Err(RunnerError::not_found(format!(
            "canonicalize {what}: no such file"
        )));
    }
    Ok(resolved)
}

/// Unpacks a tar into `target` (created if missing) with the remote `tar`,
/// after [`runner_api::archive::check_upload`] passed.
///
/// One remote `sh` runs [`CONFINED_PARENTS_SCRIPT`] (it creates the target
/// and refuses directories of the entries that are symlinks leading out of
/// it) and then `exec`s `tar`, which reads the archive from stdin: one round
/// trip. The directories travel on the command line; when they do not fit one
/// ([`runner_api::archive::CONFINED_PARENTS_ARGS_BUDGET`]), the check runs
/// alone on all but the last share of them, and the last comes with `tar`.
pub(crate) async fn upload_archive(link: &Link, target: &Path, archive: &[u8]) -> RunnerResult<()> {
    const OP: &str = "upload_archive";
    let target_arg = quote_path(OP, target)?;
    let checked = match runner_api::archive::check_upload(OP, target, archive) {
        Ok(checked) => checked,
        Err(refused) => {
            // The target is created even when the archive is refused, as on
            // the other providers.
            confined_run(link, target, &target_arg, &[], None).await?;
            return Err(refused);
        }
    };
    let mut runs = checked.confined_parents_runs(OP, target, |p| quote(p).len() + 1)?;
    let last = runs.pop().unwrap_or_default();
    for run in runs {
        confined_run(link, target, &target_arg, &run, None).await?;
    }
    confined_run(link, target, &target_arg, &last, Some(archive)).await
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
                 --delay-directory-restore\n"
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
