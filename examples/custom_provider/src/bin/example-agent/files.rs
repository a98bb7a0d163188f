//! File operations, run on a blocking thread with `std::fs`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use runner_api::{RunnerFileKind, RunnerFileReadRequest, RunnerFileStat, read_window};
use runner_example_custom_provider::protocol::{AgentError, Answer, Op};
use runner_kit::archive::MODE_MASK;

use crate::{Agent, error, io_error};

/// Runs one file operation (every [`Op`] except spawn, signal and shutdown).
pub(crate) fn handle(agent: &Agent, op: Op) -> Result<Answer, AgentError> {
    match op {
        Op::ReadFile {
            path,
            offset,
            limit,
        } => read_file(&agent.resolve(&path), offset, limit),
        Op::WriteFile {
            path,
            contents,
            mode,
            offset: None,
        } => write_file(&agent.resolve(&path), &contents, mode).map(|()| Answer::Done),
        Op::WriteFile {
            path,
            contents,
            mode,
            offset: Some(offset),
        } => write_at(&agent.resolve(&path), &contents, mode, offset).map(|()| Answer::Done),
        Op::ListDir { path } => list_dir(&agent.resolve(&path), &path),
        Op::Stat { path } => stat(&agent.resolve(&path), &path).map(|stat| Answer::Stat { stat }),
        Op::Remove { path, recursive } => remove(agent, &agent.resolve(&path), recursive),
        Op::MakeDir { path } => {
            let full = agent.resolve(&path);
            fs::create_dir_all(&full)
                .map(|()| Answer::Done)
                .map_err(|e| io_error("make_dir", &full, e))
        }
        Op::Rename { from, to } => {
            let (from, to) = (agent.resolve(&from), agent.resolve(&to));
            fs::rename(&from, &to)
                .map(|()| Answer::Done)
                .map_err(|e| io_error(&format!("rename to {}", to.display()), &from, e))
        }
        Op::Canonicalize { path } => {
            let full = agent.resolve(&path);
            fs::canonicalize(&full)
                .map(|path| Answer::Path { path })
                .map_err(|e| io_error("canonicalize", &full, e))
        }
        Op::Spawn { .. } | Op::Signal { .. } | Op::Shutdown => {
            Err(error(Errno::EINVAL, "not a file operation"))
        }
    }
}

/// Reads the window of a regular file that `offset` and `limit` ask for
/// (see [`read_window`]), growing the buffer as bytes arrive.
///
/// Errors: `EISDIR` (a directory), `EINVAL` (any other non-regular file, or a
/// window above [`runner_api::MAX_READ_BYTES`]), the errno of open or read.
fn read_file(path: &Path, offset: Option<u64>, limit: Option<u64>) -> Result<Answer, AgentError> {
    let fail = |e| io_error("read_file", path, e);
    // O_NONBLOCK: opening a FIFO does not wait for a writer; it is refused
    // below, by the kind of the handle opened (not of a path stat'd before).
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(error(
            Errno::EISDIR,
            format!("read_file {}: is a directory", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err(error(
            Errno::EINVAL,
            format!("read_file {}: not a regular file", path.display()),
        ));
    }
    let request = RunnerFileReadRequest {
        path: path.into(),
        offset,
        limit,
    };
    let window = read_window("read_file", &request, meta.len())
        .map_err(|e| error(Errno::EINVAL, e.message()))?;
    file.seek(SeekFrom::Start(window.offset)).map_err(fail)?;
    let mut contents = Vec::new();
    file.take(window.len)
        .read_to_end(&mut contents)
        .map_err(fail)?;
    Ok(Answer::File {
        contents,
        size: meta.len(),
    })
}

/// Writes a temp file next to the target and renames it over the target, so a
/// reader sees the old or the new contents, never a mix. The mode (asked for,
/// or the old file's) is masked with [`MODE_MASK`]: no set-id or sticky bits.
fn write_file(path: &Path, contents: &[u8], mode: Option<u32>) -> Result<(), AgentError> {
    let fail = |e| io_error("write_file", path, e);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(error(
            Errno::EISDIR,
            format!("write_file {}: not a file path", path.display()),
        ));
    };
    let existing = fs::metadata(path).ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(error(
            Errno::EISDIR,
            format!("write_file {}: is a directory", path.display()),
        ));
    }
    let mode = mode.or(existing.map(|m| m.mode())).unwrap_or(0o644) & MODE_MASK;
    fs::create_dir_all(parent).map_err(fail)?;
    let temp = parent.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = fs::File::create_new(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(fail(e));
    }
    Ok(())
}

/// `write_file` with an offset: in place, without truncating; offset 0 of
/// a missing file creates it.
///
/// Errors: `EINVAL` for an offset past the end (or a missing file at
/// another offset), `EISDIR` for a directory.
fn write_at(
    path: &Path,
    contents: &[u8],
    mode: Option<u32>,
    offset: u64,
) -> Result<(), AgentError> {
    let fail = |e| io_error("write_file", path, e);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(offset == 0)
        .mode(mode.unwrap_or(0o644) & MODE_MASK)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => error(
                Errno::EINVAL,
                format!(
                    "write_file {}: no file to write at offset {offset}",
                    path.display()
                ),
            ),
            _ => fail(e),
        })?;
    let size = file.metadata().map_err(fail)?.len();
    if offset > size {
        return Err(error(
            Errno::EINVAL,
            format!(
                "write_file {}: offset {offset} lies past the end ({size} bytes)",
                path.display()
            ),
        ));
    }
    if let Some(mode) = mode {
        file.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))
            .map_err(fail)?;
    }
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    file.write_all(contents).map_err(fail)
}

fn list_dir(full: &Path, requested: &Path) -> Result<Answer, AgentError> {
    let fail = |e| io_error("list_dir", full, e);
    let mut entries = Vec::new();
    for entry in fs::read_dir(full).map_err(fail)? {
        let name = entry.map_err(fail)?.file_name();
        entries.push(stat(&full.join(&name), &requested.join(&name))?);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Answer::Entries { entries })
}

/// Metadata of `full`, reported under the `requested` path.
fn stat(full: &Path, requested: &Path) -> Result<RunnerFileStat, AgentError> {
    let meta = fs::symlink_metadata(full).map_err(|e| io_error("stat", full, e))?;
    let kind = if meta.is_symlink() {
        RunnerFileKind::Symlink
    } else if meta.is_dir() {
        RunnerFileKind::Directory
    } else if meta.is_file() {
        RunnerFileKind::File
    } else {
        RunnerFileKind::Other
    };
    Ok(RunnerFileStat {
        path: requested.to_path_buf(),
        name: full
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        modified_ms: meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        symlink_target: fs::read_link(full).ok(),
    })
}

fn remove(agent: &Agent, path: &Path, recursive: bool) -> Result<Answer, AgentError> {
    let fail = |e| io_error("remove", path, e);
    let meta = fs::symlink_metadata(path).map_err(fail)?;
    if !meta.is_symlink() && fs::canonicalize(path).is_ok_and(|p| p == agent.root) {
        return Err(error(
            Errno::EPERM,
            format!("remove {}: is the workspace root", path.display()),
        ));
    }
    let removed = match (meta.is_dir(), recursive) {
        (true, true) => fs::remove_dir_all(path),
        (true, false) => fs::remove_dir(path),
        (false, _) => fs::remove_file(path),
    };
    removed.map(|()| Answer::Done).map_err(fail)
}
