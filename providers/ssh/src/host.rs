//! The provider's own files on the host, over sftp: private directories,
//! the records of a session directory, delivered agent binaries, and
//! removing what a closed or orphaned session leaves. Nothing a session
//! does goes through here: that is the agent's.

use std::path::{Path, PathBuf};

use openssh_sftp_client::metadata::{MetaData, Permissions};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

use crate::connection::Link;

/// Most bytes [`read_small`] reads: records are a few hundred bytes.
const SMALL_FILE: u64 = 1024 * 1024;

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `lstat` of `path`, `None` when it does not exist.
pub(crate) async fn lstat(link: &Link, path: &Path) -> RunnerResult<Option<MetaData>> {
    match link
        .sftp_call("stat", display(path), link.sftp.fs().symlink_metadata(path))
        .await
    {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `meta` is a directory's (a symlink is not).
pub(crate) fn is_dir(meta: &MetaData) -> bool {
    meta.file_type().is_some_and(|t| t.is_dir())
}

/// The canonical form of `path` on the host.
pub(crate) async fn canonicalize(link: &Link, path: &Path) -> RunnerResult<PathBuf> {
    link.sftp_call(
        "canonicalize",
        display(path),
        link.sftp.fs().canonicalize(path),
    )
    .await
}

/// Sets the permission bits of `path`.
pub(crate) async fn chmod(link: &Link, path: &Path, mode: u16) -> RunnerResult<()> {
    link.sftp_call(
        "chmod",
        display(path),
        link.sftp
            .fs()
            .set_permissions(path, Permissions::from(mode)),
    )
    .await
}

/// Creates `path` and its missing parents, each missing one with mode 0700
/// (existing directories are left as they are).
///
/// Errors: `AlreadyExists` when a component is not a directory.
pub(crate) async fn make_private_dirs(link: &Link, path: &Path) -> RunnerResult<()> {
    let mut missing = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        let found = link
            .sftp_call(
                "make_dir",
                display(&current),
                link.sftp.fs().metadata(&current),
            )
            .await;
        match found {
            Ok(meta) if is_dir(&meta) => break,
            Ok(_) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "make_dir {}: {} is not a directory",
                        display(path),
                        display(&current)
                    ),
                ));
            }
            Err(e) if e.kind() == RunnerErrorKind::NotFound => {
                missing.push(current.clone());
                if !current.pop() {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.into_iter().rev() {
        let created = link
            .sftp_call("make_dir", display(&dir), link.sftp.fs().create_dir(&dir))
            .await;
        match created {
            Ok(()) => chmod(link, &dir, 0o700).await?,
            // Another writer may have created it meanwhile.
            Err(e) => match lstat(link, &dir).await? {
                Some(meta) if is_dir(&meta) => {}
                _ => return Err(e),
            },
        }
    }
    Ok(())
}

/// Writes `contents` to `path` with permission bits `mode`: into a new
/// temporary file next to it, renamed into place (readers see the old file
/// or the new one, never a part).
pub(crate) async fn write_file(
    link: &Link,
    path: &Path,
    contents: &[u8],
    mode: u16,
) -> RunnerResult<()> {
    const OP: &str = "write";
    let what = display(path);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RunnerError::invalid_request(format!(
            "{OP} {what}: not a file path"
        )));
    };
    let temp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = async {
        let mut options = link.sftp.options();
        options.write(true).create_new(true);
        let mut file = link.sftp_call(OP, &what, options.open(&temp)).await?;
        link.sftp_call(OP, &what, file.write_all(contents)).await?;
        link.sftp_call(OP, &what, file.close()).await?;
        chmod(link, &temp, mode).await?;
        link.sftp_call(OP, &what, link.sftp.fs().rename(&temp, path))
            .await
    }
    .await;
    if written.is_err() {
        let _ = link
            .sftp_call(OP, &what, link.sftp.fs().remove_file(&temp))
            .await;
    }
    written
}

/// The text of a small regular file; `None` when it does not exist, is not
/// a regular file, or is larger than a record can be.
pub(crate) async fn read_small(link: &Link, path: &Path) -> RunnerResult<Option<String>> {
    let Some(meta) = lstat(link, path).await? else {
        return Ok(None);
    };
    let regular = meta.file_type().is_some_and(|t| t.is_file());
    if !regular || meta.len().is_none_or(|len| len > SMALL_FILE) {
        return Ok(None);
    }
    match link
        .sftp_call("read", display(path), link.sftp.fs().read(path))
        .await
    {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One entry of a directory: its name and whether it is a directory (a
/// symlink is not).
pub(crate) struct Entry {
    /// The file name.
    pub(crate) name: String,
    /// A directory, not a symlink to one.
    pub(crate) is_dir: bool,
    /// A regular file.
    pub(crate) is_file: bool,
}

/// The entries of directory `dir` (without `.` and `..`).
pub(crate) async fn list(link: &Link, dir: &Path) -> RunnerResult<Vec<Entry>> {
    let what = display(dir);
    let handle = link
        .sftp_call("list_dir", &what, link.sftp.fs().open_dir(dir))
        .await?;
    let mut entries = std::pin::pin!(handle.read_dir());
    let mut out = Vec::new();
    while let Some(entry) = link
        .sftp_call("list_dir", &what, async {
            futures_util::StreamExt::next(&mut entries)
                .await
                .transpose()
        })
        .await?
    {
        let name = entry.filename().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let kind = entry.file_type();
        out.push(Entry {
            name,
            is_dir: kind.is_some_and(|t| t.is_dir()),
            is_file: kind.is_some_and(|t| t.is_file()),
        });
    }
    Ok(out)
}

/// Removes `path` and, for a directory, everything under it (symlinks are
/// removed, never followed). A missing path is `Ok`. Each directory is
/// made 0700 before it is emptied.
pub(crate) async fn remove_tree(link: &Link, path: &Path) -> RunnerResult<()> {
    let Some(meta) = lstat(link, path).await? else {
        return Ok(());
    };
    if !is_dir(&meta) {
        return link
            .sftp_call("remove", display(path), link.sftp.fs().remove_file(path))
            .await
            .or_else(ignore_missing);
    }
    let mut stack = vec![(path.to_path_buf(), false)];
    while let Some((dir, visited)) = stack.pop() {
        if visited {
            link.sftp_call("remove", display(&dir), link.sftp.fs().remove_dir(&dir))
                .await
                .or_else(ignore_missing)?;
            continue;
        }
        // A session may leave directories it cannot read or write (mode
        // 000): the owner may open them up again.
        let _ = chmod(link, &dir, 0o700).await;
        let entries = match list(link, &dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == RunnerErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        stack.push((dir.clone(), true));
        for entry in entries {
            let child = dir.join(&entry.name);
            if entry.is_dir {
                stack.push((child, false));
            } else {
                link.sftp_call(
                    "remove",
                    display(&child),
                    link.sftp.fs().remove_file(&child),
                )
                .await
                .or_else(ignore_missing)?;
            }
        }
    }
    Ok(())
}

fn ignore_missing(e: RunnerError) -> RunnerResult<()> {
    if e.kind() == RunnerErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
