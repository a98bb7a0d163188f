//! The workspace as the file API sees it: every path resolved beneath the root
//! (or beneath a mount's host directory) by cap-std, read-only entries and
//! mounts refused for writes.
//!
//! Paths map as follows: a relative path is folded lexically (`.` and `..`) and
//! must stay inside the root; an absolute path must lie lexically under the root
//! and has that prefix stripped. Anything else is `PermissionDenied`. The
//! remaining relative path goes to cap-std, which resolves it beneath the root
//! directory handle without ever following a symlink out of it (openat2 with
//! `RESOLVE_BENEATH` where the kernel has it). A path under a `provider_native`
//! mount is routed to a separate cap-std handle on the mount's host directory,
//! so it works and stays confined to that directory.
//!
//! Every method here blocks; the session calls them on `spawn_blocking`.

use cap_std::fs::MetadataExt as _;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use cap_std::fs::{Dir, Metadata, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl};
use runner_api::{
    ReadWindow, RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileStat, RunnerFileWriteRequest, RunnerResult, normalize_lexically, reject_nul_path,
};
use runner_kit::archive::{MODE_MASK, SpooledUpload, UploadPolicy};
use runner_kit::bridge::{ChunkWriter, copy_buffered};

use crate::archive::{self, Protect, SymlinkPolicy};
use crate::error::{io_error, is_escape};
use crate::watch::WatchTarget;

/// How many symlinks `write_file` follows at the final component before giving up.
const MAX_SYMLINK_HOPS: usize = 40;

/// A `provider_native` mount backed by a host directory.
pub(crate) struct Mount {
    /// The mount's name, for messages.
    pub(crate) name: String,
    /// Where it appears in the workspace (relative, normalized).
    pub(crate) rel: PathBuf,
    /// The host directory (canonical).
    pub(crate) host: PathBuf,
    /// A handle on the host directory; operations under the mount resolve beneath it.
    pub(crate) dir: Dir,
    /// Writes through the file API are refused.
    pub(crate) read_only: bool,
}

/// A path of the workspace that the file API must not write (a manifest entry
/// with `writable: false`, or a read-only mount without a host path).
#[derive(Debug, Clone)]
pub(crate) struct ReadOnlyPath {
    /// Relative, normalized.
    pub(crate) rel: PathBuf,
    /// What made it read-only, for messages ("manifest entry tools").
    pub(crate) reason: String,
}

/// The confined view of one session's workspace.
pub(crate) struct Workspace {
    /// Absolute, canonical root.
    pub(crate) root: PathBuf,
    /// The root as configured (lexically normalized), also accepted in absolute paths.
    pub(crate) root_alias: PathBuf,
    /// Handle on the root; every root-relative operation goes through it.
    pub(crate) dir: Dir,
    /// Mounts, longest path first.
    pub(crate) mounts: Vec<Mount>,
    /// Read-only paths (more may be added while the session runs, never
    /// removed: see [`manifest::protect_entries`](crate::manifest::protect_entries)).
    pub(crate) read_only: std::sync::RwLock<Vec<ReadOnlyPath>>,
    /// How uploads are rewritten before they are unpacked (the size bound).
    pub(crate) upload_policy: UploadPolicy,
}

/// Which directory handle a resolved path lives under.
#[derive(Clone, Copy)]
pub(crate) enum Base<'a> {
    /// The workspace root.
    Root,
    /// A mount's host directory.
    Mount(&'a Mount),
}

/// A path resolved for the file API.
pub(crate) struct Resolved<'a> {
    /// The handle it resolves under.
    pub(crate) base: Base<'a>,
    /// Relative to `base` (empty: the base itself).
    pub(crate) rel: PathBuf,
    /// Relative to the workspace root (empty: the root).
    pub(crate) ws_rel: PathBuf,
}

/// `"."` for an empty relative path, which cap-std wants for "this directory".
pub(crate) fn or_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// Folds `.` and `..` of a relative path; `None` when it is absolute or climbs
/// above its start.
pub(crate) fn normalize_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What [`open_for_read`] found.
pub(crate) enum Opened {
    /// A regular file, open for blocking reads, with its metadata.
    File(cap_std::fs::File, Metadata),
    /// A directory.
    Directory,
    /// Anything else (a FIFO, a socket, a device).
    Other,
}

/// Opens `rel` beneath `dir` for reading and says what the handle is, from
/// the handle itself (what a check before the open saw may have been swapped
/// since). The open follows no symlink at the last component (`O_NOFOLLOW`:
/// pass a canonical path to read through links) and does not wait for a FIFO
/// writer or a device (`O_NONBLOCK`, cleared again for a regular file).
/// Resolves `rel` (symlinks inside followed, confined) and opens it as
/// [`open_for_read`] does. Resolving names the file by its inode, so a
/// concurrent atomic replace (rename over the name) can make the resolved
/// name vanish before the open (the resolved name then ends in
/// ` (deleted)`): a `NotFound` is tried again, yielding the thread between
/// tries, so a reader sees the old or the new file even while a writer
/// replaces it in a loop on a loaded machine; a file that is really missing
/// stays `NotFound`.
pub(crate) fn resolve_and_open(dir: &Dir, rel: &Path) -> io::Result<Opened> {
    const ATTEMPTS: usize = 8;
    let mut attempt = 1;
    loop {
        let opened = canonical_rel(dir, rel).and_then(|canonical| open_for_read(dir, &canonical));
        match opened {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

pub(crate) fn open_for_read(dir: &Dir, rel: &Path) -> io::Result<Opened> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits());
    let file = dir.open_with(or_dot(rel), &options)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Ok(Opened::Directory);
    }
    if !meta.is_file() {
        return Ok(Opened::Other);
    }
    let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(Opened::File(file, meta))
}

/// cap-std's canonical form of `rel` under `dir`, without `.` components.
///
/// The form is read back from the kernel for the opened file: when a
/// concurrent atomic replace renames another file over the name in between,
/// the kernel names the old, unlinked file `<name> (deleted)`. Such a name
/// that does not exist is resolved again (a few dozen times, yielding in
/// between), so a caller gets the name of the file there now.
fn canonical_rel(dir: &Dir, rel: &Path) -> io::Result<PathBuf> {
    const ATTEMPTS: usize = 64;
    let mut attempt = 1;
    loop {
        let canonical: PathBuf = dir
            .canonicalize(or_dot(rel))?
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let replaced = canonical
            .file_name()
            .is_some_and(|name| name.as_encoded_bytes().ends_with(b" (deleted)"))
            && matches!(dir.symlink_metadata(&canonical), Err(e) if e.kind() == io::ErrorKind::NotFound);
        if !replaced || attempt >= ATTEMPTS {
            return Ok(canonical);
        }
        attempt += 1;
        std::thread::yield_now();
    }
}

fn split(rel: &Path) -> (PathBuf, Option<std::ffi::OsString>) {
    match rel.file_name() {
        Some(name) => (
            rel.parent().map(Path::to_path_buf).unwrap_or_default(),
            Some(name.to_os_string()),
        ),
        None => (PathBuf::new(), None),
    }
}

/// Milliseconds since the epoch of a cap-std metadata's modification time.
pub(crate) fn modified_ms(meta: &Metadata) -> Option<u64> {
    let modified = meta.modified().ok()?.into_std();
    modified
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// Permission bits (without the file type).
pub(crate) fn mode_bits(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

fn kind_of(meta: &Metadata) -> RunnerFileKind {
    if meta.is_symlink() {
        RunnerFileKind::Symlink
    } else if meta.is_dir() {
        RunnerFileKind::Directory
    } else if meta.is_file() {
        RunnerFileKind::File
    } else {
        RunnerFileKind::Other
    }
}

fn file_stat(
    path: PathBuf,
    name: String,
    meta: &Metadata,
    target: Option<PathBuf>,
) -> RunnerFileStat {
    RunnerFileStat {
        path,
        name,
        kind: kind_of(meta),
        size: meta.len(),
        mode: mode_bits(meta),
        modified_ms: modified_ms(meta),
        symlink_target: target,
    }
}

impl<'a> Resolved<'a> {
    /// The directory handle this path resolves under.
    pub(crate) fn dir(&self, ws: &'a Workspace) -> &'a Dir {
        match self.base {
            Base::Root => &ws.dir,
            Base::Mount(mount) => &mount.dir,
        }
    }

    /// Whether this is the base directory itself (the root or a mount point).
    pub(crate) fn is_base(&self) -> bool {
        self.rel.as_os_str().is_empty()
    }
}

impl Workspace {
    /// Opens the workspace at `root` (which must exist). `root_alias` is the root
    /// as configured; both spellings are accepted in absolute paths.
    pub(crate) fn open(root: &Path, root_alias: &Path) -> io::Result<Self> {
        let canonical = std::fs::canonicalize(root)?;
        let dir = Dir::open_ambient_dir(&canonical, cap_std::ambient_authority())?;
        Ok(Self {
            root: canonical,
            root_alias: normalize_lexically(&std::path::absolute(root_alias)?),
            dir,
            mounts: Vec::new(),
            read_only: std::sync::RwLock::default(),
            upload_policy: UploadPolicy::default(),
        })
    }

    /// Adds a mount; mounts are kept longest path first so the innermost wins.
    pub(crate) fn add_mount(&mut self, mount: Mount) {
        self.mounts.push(mount);
        self.mounts
            .sort_by_key(|m| std::cmp::Reverse(m.rel.components().count()));
    }

    fn outside(&self, operation: &str, path: &Path) -> RunnerError {
        RunnerError::permission_denied(format!(
            "{operation} {}: outside the workspace {}",
            path.display(),
            self.root.display()
        ))
    }

    pub(crate) fn io(&self, operation: &str, path: &Path, error: io::Error) -> RunnerError {
        io_error(operation, path.display(), self.root.display(), error)
    }

    /// Maps a caller's path onto a base handle and a relative path.
    ///
    /// Errors: `InvalidRequest` (NUL byte), `PermissionDenied` (outside the root).
    pub(crate) fn resolve(&self, operation: &str, path: &Path) -> RunnerResult<Resolved<'_>> {
        reject_nul_path(operation, path)?;
        let ws_rel = if path.is_absolute() {
            let lexical = normalize_lexically(path);
            if let Ok(rest) = lexical.strip_prefix(&self.root) {
                rest.to_path_buf()
            } else if let Ok(rest) = lexical.strip_prefix(&self.root_alias) {
                rest.to_path_buf()
            } else {
                return Err(self.outside(operation, path));
            }
        } else {
            normalize_relative(path).ok_or_else(|| self.outside(operation, path))?
        };
        for mount in &self.mounts {
            if let Ok(rest) = ws_rel.strip_prefix(&mount.rel) {
                return Ok(Resolved {
                    base: Base::Mount(mount),
                    rel: rest.to_path_buf(),
                    ws_rel,
                });
            }
        }
        Ok(Resolved {
            base: Base::Root,
            rel: ws_rel.clone(),
            ws_rel,
        })
    }

    /// The read-only paths, readable whatever a panicking writer left.
    pub(crate) fn read_only(&self) -> std::sync::RwLockReadGuard<'_, Vec<ReadOnlyPath>> {
        self.read_only
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `paths` to the read-only paths (each once).
    pub(crate) fn add_read_only(&self, paths: impl IntoIterator<Item = ReadOnlyPath>) {
        let mut known = self
            .read_only
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for path in paths {
            if !known.iter().any(|ro| ro.rel == path.rel) {
                known.push(path);
            }
        }
    }

    fn read_only_reason(&self, ws_rel: &Path) -> Option<String> {
        self.read_only()
            .iter()
            .find(|ro| ws_rel.starts_with(&ro.rel))
            .map(|ro| ro.reason.clone())
    }

    /// Refuses writes under a read-only mount or entry.
    pub(crate) fn check_writable(
        &self,
        operation: &str,
        path: &Path,
        resolved: &Resolved<'_>,
    ) -> RunnerResult<()> {
        if let Base::Mount(mount) = resolved.base
            && mount.read_only
        {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: mount {:?} is read-only",
                path.display(),
                mount.name
            )));
        }
        if let Some(reason) = self.read_only_reason(&resolved.ws_rel) {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: {reason} is read-only",
                path.display()
            )));
        }
        Ok(())
    }

    /// Refuses removing or moving the root, a mount point, or a directory that
    /// holds a mount point or a read-only entry.
    fn check_movable(
        &self,
        operation: &str,
        path: &Path,
        resolved: &Resolved<'_>,
    ) -> RunnerResult<()> {
        if resolved.ws_rel.as_os_str().is_empty() {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: refusing to touch the workspace root itself",
                path.display()
            )));
        }
        if let Base::Mount(mount) = resolved.base
            && resolved.is_base()
        {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: is the mount point of mount {:?}",
                path.display(),
                mount.name
            )));
        }
        let ws_rel = &resolved.ws_rel;
        if let Some(mount) = self.mounts.iter().find(|m| m.rel.starts_with(ws_rel)) {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: contains the mount point of mount {:?}",
                path.display(),
                mount.name
            )));
        }
        if let Some(ro) = self
            .read_only()
            .iter()
            .find(|ro| ro.rel.starts_with(ws_rel))
        {
            return Err(RunnerError::permission_denied(format!(
                "{operation} {}: contains {}, which is read-only",
                path.display(),
                ro.reason
            )));
        }
        Ok(())
    }

    fn mount_at(&self, ws_rel: &Path) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.rel == ws_rel)
    }

    /// The absolute path of a base directory as the workspace shows it.
    fn base_path(&self, base: Base<'_>) -> PathBuf {
        match base {
            Base::Root => self.root.clone(),
            Base::Mount(mount) => self.root.join(&mount.rel),
        }
    }

    fn display_name(&self, resolved: &Resolved<'_>) -> String {
        resolved
            .ws_rel
            .file_name()
            .or_else(|| self.root.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_string())
    }

    // ----- commands -----

    /// The absolute working directory for a command: `root` when `cwd` is
    /// `None`, else `cwd` resolved like any file path and checked to exist.
    ///
    /// Errors: `PermissionDenied` (outside), `NotFound` naming the cwd,
    /// `InvalidRequest` (not a directory).
    pub(crate) fn command_cwd(&self, operation: &str, cwd: Option<&Path>) -> RunnerResult<PathBuf> {
        let Some(cwd) = cwd else {
            return Ok(self.root.clone());
        };
        let what = format!("{operation}: cwd");
        let resolved = self.resolve(&what, cwd)?;
        let dir = resolved.dir(self);
        match dir.metadata(or_dot(&resolved.rel)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(RunnerError::invalid_request(format!(
                    "{operation}: cwd {} is not a directory",
                    cwd.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RunnerError::not_found(format!(
                    "{operation}: cwd {} not found",
                    cwd.display()
                )));
            }
            Err(e) => return Err(self.io(&what, cwd, e)),
        }
        let canonical = canonical_rel(dir, &resolved.rel).map_err(|e| self.io(&what, cwd, e))?;
        Ok(self.base_path(resolved.base).join(canonical))
    }

    // ----- files -----

    /// Opens the file of a read (`read_file` and its stream form): resolved
    /// and opened as [`resolve_and_open`] does, positioned at the window's
    /// offset. The window runs from `offset` (clamped to the size) for
    /// `limit` bytes or to the end; it has no maximum (the whole-buffer
    /// `read_file` applies its own).
    ///
    /// Errors: `InvalidRequest` (a directory, not a regular file, a NUL
    /// byte), `PermissionDenied` (outside), `NotFound`, each naming the path.
    pub(crate) fn open_read(&self, request: &RunnerFileReadRequest) -> RunnerResult<OpenRead> {
        let op = "read_file";
        let path = &request.path;
        let resolved = self.resolve(op, path)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        // Symlinks inside are followed (confined) here; the open then follows none.
        let (mut file, meta) = match resolve_and_open(dir, &resolved.rel).map_err(io)? {
            Opened::File(file, meta) => (file, meta),
            Opened::Directory => {
                return Err(RunnerError::invalid_request(format!(
                    "{op} {}: is a directory",
                    path.display()
                )));
            }
            Opened::Other => {
                return Err(RunnerError::invalid_request(format!(
                    "{op} {}: not a regular file",
                    path.display()
                )));
            }
        };
        let size = meta.len();
        let offset = request.offset.unwrap_or(0).min(size);
        let rest = size - offset;
        let window = ReadWindow {
            offset,
            len: request.limit.map_or(rest, |limit| limit.min(rest)),
        };
        if window.offset > 0 {
            file.seek(SeekFrom::Start(window.offset)).map_err(io)?;
        }
        Ok(OpenRead { file, size, window })
    }

    /// `write_file`: without an offset an atomic replace through a temp file
    /// in the same directory, which keeps an existing file's mode (and, when
    /// this process is root, its owner); with one, in place (see
    /// [`write_at`]). Either way POSIX permissions of this process's user
    /// apply: an existing file it may not write, or a new file in a directory
    /// it may not write, is `PermissionDenied` and nothing changes.
    ///
    /// The file's bytes are `body` (the caller puts `request.contents` at its
    /// front; `request.contents` itself is not read), consumed chunk by
    /// chunk after every check passed. A body that fails leaves no temp file
    /// and the target as it was.
    pub(crate) fn write_file(
        &self,
        request: &RunnerFileWriteRequest,
        body: &mut impl BufRead,
    ) -> RunnerResult<()> {
        self.write_contents(request, Contents::Body(body))
    }

    /// `write_file` whose bytes are the regular file `source` of this host
    /// (a path the caller vouches for, not resolved in the workspace), which
    /// the call consumes: with every check of [`write_file`](Self::write_file)
    /// passed, the file itself is moved into place when it is on the
    /// target's filesystem (no copy), and copied otherwise; the moved file
    /// gets the mode (and owner) a written one would.
    ///
    /// Errors: `write_file`'s; `InvalidRequest` when `source` is not a
    /// regular file (no symlink is followed).
    pub(crate) fn install_file(
        &self,
        request: &RunnerFileWriteRequest,
        source: &Path,
    ) -> RunnerResult<()> {
        let op = "write_file";
        let io = |e| self.io(op, &request.path, e);
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut options,
            (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits(),
        );
        let file = options.open(source).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(RunnerError::invalid_request(format!(
                "{op} {}: the staged source {} is not a regular file",
                request.path.display(),
                source.display()
            )));
        }
        self.write_contents::<io::Empty>(request, Contents::Staged { path: source, file })
    }

    fn write_contents<B: BufRead>(
        &self,
        request: &RunnerFileWriteRequest,
        contents: Contents<'_, B>,
    ) -> RunnerResult<()> {
        let op = "write_file";
        let path = &request.path;
        let resolved = self.resolve(op, path)?;
        self.check_writable(op, path, &resolved)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        let (parent, name) = split(&resolved.rel);
        let Some(name) = name else {
            return Err(is_dir(op, path));
        };
        // Only a write that may create the file creates its directories.
        let appends_only = request.offset.is_some_and(|offset| offset > 0);
        if !parent.as_os_str().is_empty() && !appends_only {
            create_dir_all(dir, &parent).map_err(io)?;
        }
        let target = match self.write_target(op, path, &resolved, parent, name) {
            Err(e) if appends_only && e.kind() == RunnerErrorKind::NotFound => {
                return Err(past_end(op, path, request.offset.unwrap_or_default(), None));
            }
            other => other?,
        };
        let parent_dir = dir.open_dir(or_dot(&target.parent)).map_err(io)?;
        let name = Path::new(&target.name);
        if let Some(offset) = request.offset {
            if target.existing.as_ref().is_some_and(|meta| !meta.is_file()) {
                return Err(not_regular(op, path));
            }
            return match contents {
                Contents::Body(body) => self.write_at(&parent_dir, name, offset, request, body),
                Contents::Staged { file, .. } => {
                    let mut body = std::io::BufReader::with_capacity(STAGED_COPY_BYTES, file);
                    self.write_at(&parent_dir, name, offset, request, &mut body)
                }
            };
        }
        if target.existing.is_some() {
            check_may_write(&parent_dir, name).map_err(io)?;
        }
        let existing_mode = target.existing.as_ref().map(mode_bits);
        let mode = request.mode.or(existing_mode).unwrap_or(0o644) & MODE_MASK;
        // Root writes as anyone: the replacement keeps the owner. Any other
        // user's replacement is its own, as with every POSIX atomic replace.
        let owner = target
            .existing
            .as_ref()
            .filter(|_| nix::unistd::geteuid().is_root())
            .map(|meta| (meta.uid(), meta.gid()));
        match contents {
            Contents::Body(body) => replace_atomically(&parent_dir, name, mode, owner, |file| {
                copy_buffered(body, file).map(drop)
            }),
            Contents::Staged { path, file } => {
                replace_by_moving(&parent_dir, name, mode, owner, path, file)
            }
        }
        .map_err(io)
    }

    /// `write_file` with an offset: `body` written at `offset` of the
    /// regular file `name` in `parent_dir`, which is opened for writing
    /// without truncation (no symlink followed, no wait for a FIFO reader);
    /// offset 0 of a missing file creates it (the request's mode, else
    /// 0o644, masked). In place, not atomic: the body is first spooled to an
    /// anonymous temporary file, so a body that fails changes nothing (a file
    /// this call created is removed again); then the mode in the request is
    /// applied and the bytes are copied in.
    ///
    /// Errors: `InvalidRequest` naming the path, the offset and the size when
    /// the offset lies past the end (or the file is missing and the offset is
    /// not 0), or the file is not a regular one; `PermissionDenied` when this
    /// user may not write it (or create it in its directory). Nothing changes
    /// on any of these.
    fn write_at(
        &self,
        parent_dir: &Dir,
        name: &Path,
        offset: u64,
        request: &RunnerFileWriteRequest,
        body: &mut impl BufRead,
    ) -> RunnerResult<()> {
        let op = "write_file";
        let path = &request.path;
        let explicit = request.mode.map(|mode| mode & MODE_MASK);
        let io = |e| self.io(op, path, e);
        let mut options = OpenOptions::new();
        options
            .write(true)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits());
        let (file, created) = match parent_dir.open_with(name, &options) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
                let mut create = OpenOptions::new();
                create.write(true).create_new(true).mode(0o600);
                (parent_dir.open_with(name, &create).map_err(io)?, true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(past_end(op, path, offset, None));
            }
            Err(e) => return Err(io(e)),
        };
        let result = (|| {
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() {
                return Err(not_regular(op, path));
            }
            if offset > meta.len() {
                return Err(past_end(op, path, offset, Some(meta.len())));
            }
            let mut spool = tempfile::tempfile().map_err(io)?;
            copy_buffered(body, &mut spool).map_err(io)?;
            spool.rewind().map_err(io)?;
            let mode = if created {
                Some(explicit.unwrap_or(0o644))
            } else {
                explicit
            };
            if let Some(mode) = mode {
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(io)?;
            }
            let mut file = file.into_std();
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            io::copy(&mut spool, &mut file).map(drop).map_err(io)
        })();
        if result.is_err() && created {
            let _ = parent_dir.remove_file(name);
        }
        result
    }

    /// Where `write_file` of `path` lands: symlinks at the final component
    /// are followed, confined (the new contents go where the link points, and
    /// the link stays), and a link into a read-only entry is refused.
    fn write_target(
        &self,
        op: &str,
        path: &Path,
        resolved: &Resolved<'_>,
        parent: PathBuf,
        mut name: std::ffi::OsString,
    ) -> RunnerResult<WriteTarget> {
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        let mut parent = canonical_rel(dir, &parent).map_err(io)?;
        let mut existing = None;
        let mut hops = 0;
        loop {
            let at = parent.join(&name);
            match dir.symlink_metadata(&at) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io(e)),
                Ok(meta) if meta.is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(RunnerError::invalid_request(format!(
                            "{op} {}: too many levels of symbolic links",
                            path.display()
                        )));
                    }
                    let target = dir.read_link_contents(&at).map_err(io)?;
                    let next = if target.is_absolute() {
                        None
                    } else {
                        normalize_relative(&parent.join(&target))
                    };
                    let Some(next) = next else {
                        return Err(RunnerError::permission_denied(format!(
                            "{op} {}: is a symlink to {} outside the workspace {}",
                            path.display(),
                            target.display(),
                            self.root.display()
                        )));
                    };
                    let (next_parent, next_name) = split(&next);
                    let Some(next_name) = next_name else {
                        return Err(is_dir(op, path));
                    };
                    parent = canonical_rel(dir, &next_parent).map_err(io)?;
                    name = next_name;
                }
                Ok(meta) if meta.is_dir() => return Err(is_dir(op, path)),
                Ok(meta) => {
                    existing = Some(meta);
                    break;
                }
            }
        }
        if matches!(resolved.base, Base::Root) && hops > 0 {
            // A link may lead into a read-only entry or onto a mount point.
            let final_rel = parent.join(&name);
            if let Some(reason) = self.read_only_reason(&final_rel) {
                return Err(RunnerError::permission_denied(format!(
                    "{op} {}: leads into {reason}, which is read-only",
                    path.display()
                )));
            }
        }
        Ok(WriteTarget {
            parent,
            name,
            existing,
        })
    }

    /// `list_dir`: entries sorted by name, lstat semantics; mount points appear
    /// as directories.
    pub(crate) fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let op = "list_dir";
        let resolved = self.resolve(op, path)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved
            .dir(self)
            .open_dir(or_dot(&resolved.rel))
            .map_err(io)?;
        let mut out = Vec::new();
        for entry in dir.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let display = name.to_string_lossy().into_owned();
            let entry_path = path.join(&name);
            if matches!(resolved.base, Base::Root)
                && let Some(mount) = self.mount_at(&resolved.ws_rel.join(&name))
            {
                let meta = mount.dir.dir_metadata().map_err(io)?;
                out.push(file_stat(entry_path, display, &meta, None));
                continue;
            }
            let meta = match dir.symlink_metadata(&name) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            let target = if meta.is_symlink() {
                dir.read_link_contents(&name).ok()
            } else {
                None
            };
            out.push(file_stat(entry_path, display, &meta, target));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `stat`: lstat semantics; the root and mount points are directories.
    pub(crate) fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let op = "stat";
        let resolved = self.resolve(op, path)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        let name = self.display_name(&resolved);
        if resolved.is_base() {
            let meta = dir.dir_metadata().map_err(io)?;
            return Ok(file_stat(path.to_path_buf(), name, &meta, None));
        }
        let meta = dir.symlink_metadata(&resolved.rel).map_err(io)?;
        let target = if meta.is_symlink() {
            Some(dir.read_link_contents(&resolved.rel).map_err(io)?)
        } else {
            None
        };
        Ok(file_stat(path.to_path_buf(), name, &meta, target))
    }

    /// `remove`: a file or symlink, or a directory (non-empty only when recursive).
    pub(crate) fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        let op = "remove";
        let resolved = self.resolve(op, path)?;
        self.check_movable(op, path, &resolved)?;
        self.check_writable(op, path, &resolved)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        let meta = dir.symlink_metadata(&resolved.rel).map_err(io)?;
        if !meta.is_dir() {
            return dir.remove_file(&resolved.rel).map_err(io);
        }
        if recursive {
            return dir.remove_dir_all(&resolved.rel).map_err(io);
        }
        dir.remove_dir(&resolved.rel).map_err(|e| {
            if e.kind() == io::ErrorKind::DirectoryNotEmpty {
                RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "{op} {}: directory not empty (pass recursive to remove it)",
                        path.display()
                    ),
                )
                .with_source(e)
            } else {
                io(e)
            }
        })
    }

    /// `make_dir`: `mkdir -p`; an existing directory is fine, a file is not.
    pub(crate) fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        let op = "make_dir";
        let resolved = self.resolve(op, path)?;
        self.check_writable(op, path, &resolved)?;
        if resolved.is_base() {
            return Ok(());
        }
        create_dir_all(resolved.dir(self), &resolved.rel).map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory
            ) && !is_escape(&e)
            {
                RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "{op} {}: a file (not a directory) is in the way",
                        path.display()
                    ),
                )
                .with_source(e)
            } else {
                self.io(op, path, e)
            }
        })
    }

    /// `rename`: POSIX `rename(2)` semantics, also between the root and a mount.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        let op = "rename";
        let source = self.resolve(op, from)?;
        let target = self.resolve(op, to)?;
        for (path, resolved) in [(from, &source), (to, &target)] {
            self.check_movable(op, path, resolved)?;
            self.check_writable(op, path, resolved)?;
        }
        source
            .dir(self)
            .rename(&source.rel, target.dir(self), &target.rel)
            .map_err(|e| {
                io_error(
                    op,
                    format!("{} -> {}", from.display(), to.display()),
                    self.root.display(),
                    e,
                )
            })
    }

    /// `canonicalize`: the absolute path with every symlink resolved, as the
    /// workspace shows it (paths under a mount stay under the mount point).
    pub(crate) fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let op = "canonicalize";
        let resolved = self.resolve(op, path)?;
        let canonical =
            canonical_rel(resolved.dir(self), &resolved.rel).map_err(|e| self.io(op, path, e))?;
        Ok(self.base_path(resolved.base).join(canonical))
    }

    /// `watch`: the path on this machine to watch, every symlink resolved
    /// and still inside the workspace (or the mount it lies under).
    ///
    /// Errors: `InvalidRequest` (NUL byte), `PermissionDenied` (outside),
    /// `NotFound`.
    pub(crate) fn watch_target(&self, path: &Path) -> RunnerResult<WatchTarget> {
        let op = "watch";
        let resolved = self.resolve(op, path)?;
        let canonical =
            canonical_rel(resolved.dir(self), &resolved.rel).map_err(|e| self.io(op, path, e))?;
        let (host_base, ws_base) = match resolved.base {
            Base::Root => (self.root.clone(), PathBuf::new()),
            Base::Mount(mount) => (mount.host.clone(), mount.rel.clone()),
        };
        Ok(WatchTarget {
            host: host_base.join(canonical),
            host_base,
            ws_base,
        })
    }

    // ----- archives -----

    /// Where `upload_archive` unpacks: `target` resolved and writable.
    ///
    /// Errors: `InvalidRequest` (NUL byte), `PermissionDenied` (outside, or a
    /// read-only mount or entry).
    pub(crate) fn upload_target(&self, target: &Path) -> RunnerResult<Resolved<'_>> {
        let op = "upload_archive";
        let resolved = self.resolve(op, target)?;
        self.check_writable(op, target, &resolved)?;
        Ok(resolved)
    }

    /// `upload_archive` of an archive that
    /// [`sanitize_upload_stream`](runner_kit::archive::sanitize_upload_stream)
    /// checked and spooled (modes masked, no sparse, special or PAX global
    /// entries, at most `upload_policy.max_unpacked_bytes`): creates `target`
    /// if missing and unpacks the spool into it entry by entry, refusing
    /// anything that would land outside it or on a read-only path. Since the
    /// whole archive was checked first, a refused archive writes no entry.
    pub(crate) fn unpack_upload(&self, target: &Path, upload: SpooledUpload) -> RunnerResult<()> {
        let op = "upload_archive";
        let resolved = self.upload_target(target)?;
        let io = |e| self.io(op, target, e);
        let base = resolved.dir(self);
        if !resolved.is_base() {
            create_dir_all(base, &resolved.rel).map_err(io)?;
        }
        let dir = base.open_dir(or_dot(&resolved.rel)).map_err(io)?;
        let protect = |entry: &Path| -> Option<String> {
            if !matches!(resolved.base, Base::Root) {
                return None;
            }
            let ws_rel = resolved.ws_rel.join(entry);
            if let Some(mount) = self.mounts.iter().find(|m| ws_rel.starts_with(&m.rel)) {
                return Some(format!("mount {:?}", mount.name));
            }
            self.read_only_reason(&ws_rel)
                .map(|reason| format!("{reason} (read-only)"))
        };
        archive::unpack(
            &dir,
            io::BufReader::with_capacity(runner_kit::bridge::CHUNK_BYTES, upload.into_file()),
            SymlinkPolicy::Confined,
            &Protect(&protect),
        )
        .map_err(|e| e.context(format!("{op} {}", target.display())))
    }

    /// What `download_archive` of `path` packs: a directory's contents or one
    /// file, opened now (so a missing path is an error before any byte).
    ///
    /// Errors: `NotFound`, `PermissionDenied` (outside), `InvalidRequest`
    /// (neither a regular file nor a directory), each naming the path.
    pub(crate) fn open_download(&self, path: &Path) -> RunnerResult<Download> {
        let op = "download_archive";
        let resolved = self.resolve(op, path)?;
        let io = |e| self.io(op, path, e);
        let dir = resolved.dir(self);
        match resolve_and_open(dir, &resolved.rel).map_err(io)? {
            Opened::Directory => {
                let sub = dir.open_dir(or_dot(&resolved.rel)).map_err(io)?;
                // Mount points beneath the directory are left out.
                let mounts = match resolved.base {
                    Base::Root => self
                        .mounts
                        .iter()
                        .filter_map(|m| m.rel.strip_prefix(&resolved.ws_rel).ok())
                        .filter(|rest| !rest.as_os_str().is_empty())
                        .map(Path::to_path_buf)
                        .collect(),
                    Base::Mount(_) => Vec::new(),
                };
                Ok(Download::Tree { dir: sub, mounts })
            }
            Opened::File(file, meta) => {
                let name = resolved
                    .ws_rel
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("file"));
                Ok(Download::File { file, meta, name })
            }
            Opened::Other => Err(RunnerError::invalid_request(format!(
                "{op} {}: not a regular file or a directory",
                path.display()
            ))),
        }
    }
}

/// A file opened by [`Workspace::open_read`], positioned at its window.
pub(crate) struct OpenRead {
    file: cap_std::fs::File,
    /// The file's whole size when it was opened.
    pub(crate) size: u64,
    window: ReadWindow,
}

impl OpenRead {
    /// Sends the window's bytes (fewer when the file shrank since) into `out`.
    /// Blocking.
    pub(crate) fn send(self, out: &mut ChunkWriter) -> io::Result<()> {
        out.copy_from(&mut self.file.take(self.window.len))
            .map(drop)
    }
}

/// What [`Workspace::open_download`] opened.
pub(crate) enum Download {
    /// A directory's contents.
    Tree {
        /// The directory.
        dir: Dir,
        /// Paths beneath it (relative) that are mount points, left out.
        mounts: Vec<PathBuf>,
    },
    /// One regular file, stored under its name.
    File {
        file: cap_std::fs::File,
        meta: Metadata,
        name: PathBuf,
    },
}

impl Download {
    /// Packs the tar into `out` as the entries are read. Blocking.
    pub(crate) fn pack(self, out: impl Write) -> io::Result<()> {
        let mut builder = tar::Builder::new(out);
        match self {
            Self::Tree { dir, mounts } => {
                archive::pack_dir(&mut builder, &dir, &|entry| {
                    mounts.iter().any(|m| m == entry)
                })?;
            }
            Self::File { file, meta, name } => {
                archive::append_file(&mut builder, &meta, file, &name)?;
            }
        }
        builder.into_inner()?.flush()
    }
}

/// Where `write_file` writes: a directory (relative to the base handle), a
/// name in it, and what is there now (not a symlink, not a directory).
struct WriteTarget {
    parent: PathBuf,
    name: std::ffi::OsString,
    existing: Option<Metadata>,
}

fn is_dir(op: &str, path: &Path) -> RunnerError {
    RunnerError::invalid_request(format!("{op} {}: is a directory", path.display()))
}

fn not_regular(op: &str, path: &Path) -> RunnerError {
    RunnerError::invalid_request(format!(
        "{op} {}: not a regular file (a write at an offset needs one)",
        path.display()
    ))
}

/// A write at `offset` past the end of a file of `size` bytes (`None`: missing).
fn past_end(op: &str, path: &Path, offset: u64, size: Option<u64>) -> RunnerError {
    let size = match size {
        Some(size) => format!("{size} bytes"),
        None => "missing, 0 bytes".to_string(),
    };
    RunnerError::invalid_request(format!(
        "{op} {}: offset {offset} lies past the end of the file ({size}); \
         an offset may be at most the size",
        path.display()
    ))
}

/// Whether this process may write the existing `name` in `dir` (its
/// effective uid and groups, POSIX permissions and ACLs): a replace by rename
/// needs only the directory's permission, so the file's is checked first. A
/// running executable (`ETXTBSY`) may be replaced.
fn check_may_write(dir: &Dir, name: &Path) -> io::Result<()> {
    use nix::unistd::{AccessFlags, faccessat};
    match faccessat(dir, name, AccessFlags::W_OK, AtFlags::AT_EACCESS) {
        Ok(()) | Err(nix::errno::Errno::ETXTBSY) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// `mkdir -p` beneath `dir`. When it fails, the error says why: cap-std's
/// escape error when a component leads outside (a symlink out of the
/// directory), `AlreadyExists` when a component is not a directory.
pub(crate) fn create_dir_all(dir: &Dir, rel: &Path) -> io::Result<()> {
    let Err(error) = dir.create_dir_all(or_dot(rel)) else {
        return Ok(());
    };
    let mut prefix = PathBuf::new();
    for component in rel.components() {
        prefix.push(component);
        match dir.metadata(&prefix) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is not a directory", prefix.display()),
                ));
            }
            Err(e) if is_escape(&e) => return Err(e),
            Err(_) => break,
        }
    }
    Err(error)
}

/// Writes a new file next to `name` in `dir` with `write`, gives it `owner`
/// (uid, gid; root only) and `mode`, and renames it over `name`. On any
/// failure the temp file is removed and `name` is untouched.
/// Where the bytes of a write come from.
enum Contents<'a, B> {
    /// A caller's body.
    Body(&'a mut B),
    /// A regular file of this host, opened, that the write consumes.
    Staged { path: &'a Path, file: std::fs::File },
}

/// Buffer of a staged file copied rather than moved: 1 MiB.
const STAGED_COPY_BYTES: usize = 1024 * 1024;

/// [`replace_atomically`] with the staged file `source` (opened as `file`)
/// as the new contents: moved to a temp name in `dir` (no copy), given
/// `mode` and `owner` through the open file, then renamed over `name`. On
/// another filesystem it is copied instead.
fn replace_by_moving(
    dir: &Dir,
    name: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    source: &Path,
    file: std::fs::File,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let temp = temp_name();
    match nix::fcntl::renameat(nix::fcntl::AT_FDCWD, source, dir.as_fd(), &temp) {
        Ok(()) => {}
        Err(nix::errno::Errno::EXDEV) => {
            let mut body = std::io::BufReader::with_capacity(STAGED_COPY_BYTES, file);
            return replace_atomically(dir, name, mode, owner, |out| {
                copy_buffered(&mut body, out).map(drop)
            });
        }
        Err(e) => return Err(e.into()),
    }
    // `file` is the moved inode: owner and mode go through it, not the name.
    let result = match owner {
        Some((uid, gid)) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
        None => Ok(()),
    }
    .and_then(|()| {
        file.set_permissions(
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode),
        )
    })
    .and_then(|()| dir.rename(&temp, dir, name));
    if result.is_err() {
        let _ = dir.remove_file(&temp);
    }
    result
}

/// The prefix and suffix of [`temp_name`]s.
const TEMP_PREFIX: &str = ".runner-write-";
const TEMP_SUFFIX: &str = ".tmp";

/// A fresh temp file name for an atomic replace.
fn temp_name() -> PathBuf {
    PathBuf::from(format!(
        "{TEMP_PREFIX}{}{TEMP_SUFFIX}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Whether the last component of `path` is a [`temp_name`] (a watch hides them).
pub(crate) fn is_temp_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_PREFIX) && n.ends_with(TEMP_SUFFIX))
}

pub(crate) fn replace_atomically(
    dir: &Dir,
    name: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    write: impl FnOnce(&mut cap_std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = temp_name();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let mut file = dir.open_with(&temp, &options)?;
    let result = write(&mut file)
        .and_then(|()| match owner {
            Some((uid, gid)) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
            None => Ok(()),
        })
        .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
        .and_then(|()| {
            drop(file);
            dir.rename(&temp, dir, name)
        });
    if result.is_err() {
        let _ = dir.remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_relative_refuses_escapes() {
        assert_eq!(
            normalize_relative(Path::new("a/./b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(normalize_relative(Path::new("a/../..")), None);
        assert_eq!(normalize_relative(Path::new("/etc")), None);
        assert_eq!(normalize_relative(Path::new(".")), Some(PathBuf::new()));
    }

    #[test]
    fn failed_atomic_write_leaves_no_temp_file_and_keeps_the_target() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("t.txt"), b"old").expect("seed");
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).expect("dir");
        let err = replace_atomically(&dir, Path::new("t.txt"), 0o644, None, |file| {
            file.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .expect_err("the write fails");
        assert_eq!(err.to_string(), "disk full");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.txt")]);
        assert_eq!(
            std::fs::read(tmp.path().join("t.txt")).expect("read"),
            b"old"
        );
    }
}
