//! Tar archives in and out of a directory handle, entry by entry through cap-std.
//!
//! Packing walks the tree without following symlinks (they are stored as
//! symlinks) and keeps permission bits and modification times; files are
//! opened without blocking and checked from the handle, so a FIFO swapped in
//! is left out instead of blocking. Unpacking refuses absolute entry paths,
//! `..` components and NUL bytes (the name rule of [`runner_kit::archive`]),
//! hard links, sparse entries and devices, masks modes with
//! [`MODE_MASK`] (no set-id or sticky bits, for uploads and snapshot restores
//! alike), creates every entry beneath the directory handle (so a symlink can
//! never carry a write outside it), and sets directory modes last so a
//! read-only directory can still be filled.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use runner_api::{RunnerError, RunnerResult};
use runner_kit::archive::{MODE_MASK, entry_name};
use tar::{EntryType, Header};

use crate::error::{io_error, is_escape};
use crate::files::{
    Opened, create_dir_all, mode_bits, modified_ms, normalize_relative, open_for_read, or_dot,
};

/// Which symlink targets an unpack accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SymlinkPolicy {
    /// Only relative targets that stay beneath the directory (archives from callers).
    Confined,
    /// Any target, as stored (the provider's own snapshots: a workspace may hold
    /// links such as a virtualenv's `python -> /usr/bin/python3`; the file API
    /// still never follows them out).
    Verbatim,
}

/// Names the protected path an entry would write, if any.
pub(crate) struct Protect<'a>(pub(crate) &'a dyn Fn(&Path) -> Option<String>);

/// Nothing is protected.
pub(crate) fn unprotected(_: &Path) -> Option<String> {
    None
}

fn entry_error(path: &Path, what: &str) -> RunnerError {
    RunnerError::invalid_request(format!("archive entry {}: {what}", path.display()))
}

fn entry_denied(path: &Path, what: &str) -> RunnerError {
    RunnerError::permission_denied(format!("archive entry {}: {what}", path.display()))
}

fn entry_io(path: &Path, error: io::Error) -> RunnerError {
    if is_escape(&error) {
        return entry_denied(path, "leads outside the target directory through a symlink")
            .with_source(error);
    }
    io_error("archive entry", path.display(), "", error)
}

fn bad_archive(error: io::Error) -> RunnerError {
    RunnerError::invalid_request(format!("reading the tar archive failed: {error}"))
        .with_source(error)
}

/// Removes whatever non-directory sits at `rel`, so a new entry replaces it
/// instead of writing through it.
fn clear_non_dir(dir: &Dir, rel: &Path, shown: &Path) -> RunnerResult<()> {
    match dir.symlink_metadata(rel) {
        Ok(meta) if meta.is_dir() => Err(entry_error(shown, "a directory is in the way")),
        Ok(_) => dir.remove_file(rel).map_err(|e| entry_io(shown, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(entry_io(shown, e)),
    }
}

fn system_time(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Unpacks a tar stream beneath `dir`.
///
/// Errors: `PermissionDenied` (absolute or `..` paths, escaping symlinks, a
/// protected path), `InvalidRequest` (a NUL byte in a name, hard links,
/// devices, FIFOs, a corrupt archive), and I/O errors by kind. Each names the
/// entry.
pub(crate) fn unpack<R: Read>(
    dir: &Dir,
    reader: R,
    policy: SymlinkPolicy,
    protect: &Protect<'_>,
) -> RunnerResult<()> {
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(PathBuf, u32, Option<u64>)> = Vec::new();
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let shown = entry.path().map_err(bad_archive)?.into_owned();
        let kind = entry.header().entry_type();
        if runner_kit::archive::is_metadata_entry(kind) {
            continue;
        }
        // The shared name rule: no absolute paths, no `..`, no NUL.
        let rel = entry_name(&shown).map_err(|why| {
            RunnerError::new(
                why.kind(),
                format!("archive entry {}: {why}", shown.display()),
            )
        })?;
        let mode = entry.header().mode().unwrap_or(0o644) & MODE_MASK;
        let mtime = entry.header().mtime().ok();
        if rel.as_os_str().is_empty() {
            // The `./` entry of the directory itself: keep the target's own mode.
            continue;
        }
        if let Some(reason) = (protect.0)(&rel) {
            return Err(entry_denied(&shown, &format!("would write into {reason}")));
        }
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
        {
            create_dir_all(dir, parent).map_err(|e| entry_io(&shown, e))?;
        }
        match kind {
            EntryType::Directory => {
                create_dir_all(dir, &rel).map_err(|e| entry_io(&shown, e))?;
                dirs.push((rel, mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                clear_non_dir(dir, &rel, &shown)?;
                let mut options = OpenOptions::new();
                options.write(true).create_new(true).mode(0o600);
                let mut file = dir
                    .open_with(&rel, &options)
                    .map_err(|e| entry_io(&shown, e))?;
                io::copy(&mut entry, &mut file).map_err(|e| entry_io(&shown, e))?;
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(|e| entry_io(&shown, e))?;
                if let Some(mtime) = mtime {
                    let _ = file.into_std().set_modified(system_time(mtime));
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad_archive)?
                    .ok_or_else(|| entry_error(&shown, "symlink without a target"))?
                    .into_owned();
                if policy == SymlinkPolicy::Confined {
                    check_confined_link(dir, &rel, &target, &shown)?;
                }
                clear_non_dir(dir, &rel, &shown)?;
                dir.symlink_contents(&target, &rel)
                    .map_err(|e| entry_io(&shown, e))?;
            }
            EntryType::Link => {
                return Err(entry_error(&shown, "hard links are not supported"));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(entry_error(
                    &shown,
                    "device and FIFO entries are not supported",
                ));
            }
            other => {
                return Err(entry_error(
                    &shown,
                    &format!("unsupported entry type {other:?}"),
                ));
            }
        }
    }
    // Deepest first, so a read-only parent does not block its children.
    for (rel, mode, mtime) in dirs.iter().rev() {
        dir.set_permissions(rel, Permissions::from_mode(*mode))
            .map_err(|e| entry_io(rel, e))?;
        if let Some(mtime) = mtime
            && let Ok(sub) = dir.open_dir(rel)
        {
            let _ = sub.into_std_file().set_modified(system_time(*mtime));
        }
    }
    Ok(())
}

/// A caller's symlink must be relative and resolve beneath `dir`, judged from
/// the link's real (canonical) parent directory.
fn check_confined_link(dir: &Dir, rel: &Path, target: &Path, shown: &Path) -> RunnerResult<()> {
    let escapes = || {
        entry_denied(
            shown,
            &format!(
                "symlink target {} leads outside the target directory",
                target.display()
            ),
        )
    };
    if target.is_absolute() {
        return Err(escapes());
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    let canonical = dir
        .canonicalize(or_dot(parent))
        .map_err(|e| entry_io(shown, e))?;
    match normalize_relative(&canonical.join(target)) {
        Some(_) => Ok(()),
        None => Err(escapes()),
    }
}

fn header_for(meta: &cap_std::fs::Metadata, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode_bits(meta));
    header.set_mtime(modified_ms(meta).map_or(0, |ms| ms / 1000));
    header.set_size(size);
    header
}

/// Appends the contents of `dir` (paths relative to it) to `builder`, without
/// following symlinks. `skip` leaves out paths (relative to `dir`), and
/// sockets, FIFOs and devices are left out.
pub(crate) fn pack_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Dir,
    skip: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    walk(builder, dir, Path::new(""), skip)
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Dir,
    prefix: &Path,
    skip: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    let mut names = dir
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    for name in names {
        let rel = prefix.join(&name);
        if skip(&rel) {
            continue;
        }
        let meta = match dir.symlink_metadata(&name) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_symlink() {
            let target = dir.read_link_contents(&name)?;
            let mut header = header_for(&meta, EntryType::Symlink, 0);
            builder.append_link(&mut header, &rel, &target)?;
        } else if meta.is_dir() {
            let mut header = header_for(&meta, EntryType::Directory, 0);
            builder.append_data(&mut header, &rel, io::empty())?;
            let sub = dir.open_dir(&name)?;
            walk(builder, &sub, &rel, skip)?;
        } else if meta.is_file() {
            // Opened without blocking and checked again: a FIFO swapped in
            // since the lstat is left out like any other.
            if let Opened::File(file, meta) = open_for_read(dir, Path::new(&name))? {
                append_file(builder, &meta, file, &rel)?;
            }
        }
    }
    Ok(())
}

/// Appends the open regular file `file` (whose metadata is `meta`) as `name`.
pub(crate) fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    meta: &cap_std::fs::Metadata,
    file: cap_std::fs::File,
    name: &Path,
) -> io::Result<()> {
    let size = meta.len();
    let mut header = header_for(meta, EntryType::Regular, size);
    // Exactly `size` bytes even if the file changes while it is read, so the
    // archive stays well-formed.
    let data = file.take(size).chain(io::repeat(0)).take(size);
    builder.append_data(&mut header, name, data)
}
