//! The file API over sftp, on absolute remote paths (confinement to the
//! workspace is done by the layer stack in front of the session), plus tar
//! archives in and out. Files and archives move as byte streams: a transfer
//! holds a few pieces in memory at a time, whatever its size.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, FuturesUnordered};
use futures_util::{StreamExt, future};
use openssh_sftp_client::file::{File, OpenOptions};
use openssh_sftp_client::fs::Fs;
use openssh_sftp_client::metadata::{MetaData, Permissions};
use runner_api::{
    ReadWindow, RunnerByteStream, RunnerError, RunnerErrorKind, RunnerFileKind,
    RunnerFileReadRequest, RunnerFileStat, RunnerResult, bytes_stream, next_chunk,
    normalize_lexically,
};
use runner_kit::ReadOnlyPaths;
use runner_kit::archive::{
    CONFINED_PARENTS_SCRIPT, MODE_MASK, SpooledUpload, confined_parents_error,
};
use tokio::io::AsyncSeek;

use crate::connection::{Connection, Link};
use crate::script::{Feed, quote, quote_path, run_checked, run_script_fed, script_stdout};

/// Bytes one sftp read or write request carries at most. OpenSSH's
/// `sftp-server` takes and answers at most 255 KiB per request (its
/// `limits@openssh.com` read and write lengths); the client would split a
/// larger one anyway.
const PIECE: usize = 255 * 1024;

/// Largest single sftp read request.
const READ_CHUNK: u32 = PIECE as u32;

/// Requests one streamed read or write keeps in flight: enough to hide the
/// round trips, few enough that a transfer holds about 2 MiB at most.
const IN_FLIGHT: usize = 8;

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Positions `file` at `offset` (sftp reads carry their offset).
pub(crate) fn seek(file: &mut File, offset: u64) -> RunnerResult<()> {
    Pin::new(file)
        .start_seek(SeekFrom::Start(offset))
        .map_err(|e| RunnerError::provider(format!("seek: {e}")))
}

/// Reads `n` bytes of `file` at `offset`, fewer only at the end of the file:
/// one timed sftp request per [`READ_CHUNK`], repeated while the server
/// answers short of `n` (its own request limit may be smaller).
pub(crate) async fn read_at(
    link: &Link,
    file: &mut File,
    path: &Path,
    offset: u64,
    n: u64,
) -> RunnerResult<Bytes> {
    let mut out = BytesMut::new();
    while (out.len() as u64) < n {
        seek(file, offset + out.len() as u64)?;
        let want = (n - out.len() as u64).min(u64::from(READ_CHUNK)) as u32;
        match link
            .sftp_call(
                "read",
                display(path),
                file.read(want, BytesMut::with_capacity(want as usize)),
            )
            .await?
        {
            Some(bytes) if !bytes.is_empty() => {
                if out.is_empty() {
                    out = bytes;
                } else {
                    out.extend_from_slice(&bytes);
                }
            }
            _ => break,
        }
    }
    Ok(out.freeze())
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

/// The window a streamed read of `request` covers in a file of `size`
/// bytes: from the offset (clamped to the size) for `limit` bytes or to the
/// end, with no maximum.
fn stream_window(request: &RunnerFileReadRequest, size: u64) -> ReadWindow {
    let offset = request.offset.unwrap_or(0).min(size);
    let rest = size - offset;
    ReadWindow {
        offset,
        len: request.limit.map_or(rest, |limit| limit.min(rest)),
    }
}

/// Opens the regular file `path` for a read of `request` ([`open_regular`]):
/// the handle, the file's size and the window the read covers (no maximum:
/// a caller holding the bytes whole checks [`runner_api::read_window`]).
pub(crate) async fn open_read(
    link: &Link,
    operation: &str,
    path: &Path,
    request: &RunnerFileReadRequest,
) -> RunnerResult<(File, u64, ReadWindow)> {
    let (file, size) = open_regular(link, operation, path, None).await?;
    Ok((file, size, stream_window(request, size)))
}

/// The bytes of `window` of the open `file`, read as the caller pulls: the
/// window is cut into pieces of [`PIECE`] bytes, each read by its own timed
/// request ([`read_at`]) on a clone of the handle, at most [`IN_FLIGHT`] at a
/// time, and yielded in order. A file that shrank since it was opened ends
/// the stream at its new end; one that grew is still cut at the window. A
/// failed request ends the stream with its error. The handle is closed in
/// the background once the stream is dropped.
pub(crate) fn read_stream(
    link: Arc<Link>,
    file: File,
    path: PathBuf,
    window: ReadWindow,
) -> RunnerByteStream {
    let end = window.end();
    let pieces = (window.offset..end)
        .step_by(PIECE)
        .map(move |at| (at, (end - at).min(PIECE as u64)));
    let reads = stream::iter(pieces)
        .map(move |(at, n)| {
            let (link, mut file, path) = (link.clone(), file.clone(), path.clone());
            async move {
                let bytes = read_at(&link, &mut file, &path, at, n).await?;
                Ok::<_, RunnerError>((bytes, n))
            }
        })
        .buffered(IN_FLIGHT)
        .scan(false, |ended, read| {
            let item = match read {
                _ if *ended => None,
                Ok((bytes, wanted)) => {
                    // A short piece is the end of the file.
                    *ended = (bytes.len() as u64) < wanted;
                    (!bytes.is_empty()).then_some(Ok(bytes))
                }
                Err(e) => {
                    *ended = true;
                    Some(Err(e))
                }
            };
            future::ready(item)
        });
    Box::pin(reads)
}

/// Reads the window `request` asks of the regular file `path` whole (at most
/// [`runner_api::MAX_READ_BYTES`], see [`runner_api::read_window`]): for the
/// provider's own small files (command metadata, status and output index).
pub(crate) async fn read_small_file(
    link: &Link,
    path: &Path,
    request: &RunnerFileReadRequest,
) -> RunnerResult<Bytes> {
    const OP: &str = "read_file";
    runner_api::check_read_request(OP, request)?;
    let (mut file, size, _) = open_read(link, OP, path, request).await?;
    let window = runner_api::read_window(OP, request, size)?;
    read_at(link, &mut file, path, window.offset, window.len).await
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

/// Writes every chunk of `body` into `file` from byte `offset`, as the body
/// yields them: each chunk is cut into pieces of [`PIECE`] bytes, each
/// written by its own timed request on a clone of the handle, at most
/// [`IN_FLIGHT`] at a time (the next chunk is pulled while they are
/// answered). Returns the number of bytes written.
///
/// Errors: the body's own error, or the first failed request's; requests
/// still in flight are then abandoned.
pub(crate) async fn write_body(
    link: &Link,
    operation: &str,
    path: &Path,
    file: &File,
    offset: u64,
    mut body: RunnerByteStream,
) -> RunnerResult<u64> {
    let what = display(path);
    let mut pending = FuturesUnordered::new();
    let mut current = Bytes::new();
    let mut body_done = false;
    let mut at = offset;
    loop {
        while pending.len() < IN_FLIGHT && !current.is_empty() {
            let piece = current.split_to(current.len().min(PIECE));
            let (mut file, piece_at, what) = (file.clone(), at, &what);
            at += piece.len() as u64;
            pending.push(async move {
                seek(&mut file, piece_at)?;
                // Sent as it is, not copied into the request buffer.
                let mut piece = [piece];
                link.sftp_call(operation, what, file.write_all_zero_copy(&mut piece))
                    .await
            });
        }
        if pending.is_empty() && current.is_empty() && body_done {
            return Ok(at - offset);
        }
        tokio::select! {
            Some(written) = pending.next(), if !pending.is_empty() => written?,
            chunk = next_chunk(&mut body), if current.is_empty() && !body_done => match chunk {
                Some(chunk) => current = chunk?,
                None => body_done = true,
            },
        }
    }
}

/// A file a write created, removed unless the write succeeds: at once by
/// [`remove`](Self::remove) when the write fails, in the background when the
/// write is dropped half way.
struct Leftover {
    fs: Fs,
    timeout: std::time::Duration,
    path: Option<PathBuf>,
}

impl Leftover {
    fn new(link: &Link, path: Option<PathBuf>) -> Self {
        Self {
            fs: link.sftp.fs(),
            timeout: link.sftp_timeout(),
            path,
        }
    }

    /// The write succeeded: the file stays.
    fn keep(mut self) {
        self.path = None;
    }

    /// The write failed: removes the file now (a failure is only logged).
    async fn remove(mut self, link: &Link) {
        if let Some(path) = self.path.take() {
            let what = display(&path);
            if let Err(e) = link
                .sftp_call(
                    "write_file: remove",
                    &what,
                    link.sftp.fs().remove_file(&path),
                )
                .await
            {
                tracing::warn!(path = %what, error = %e, "removing the file of a failed write failed");
            }
        }
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (mut fs, timeout) = (self.fs.clone(), self.timeout);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, fs.remove_file(&path)).await;
        });
    }
}

/// How a write ends once its body is in.
enum WriteEnd {
    /// The body went to a temporary file: give it `mode`, rename it over
    /// the target.
    Replace { temp: PathBuf, mode: u32 },
    /// The body went into the target itself: apply `mode` when given.
    InPlace { mode: Option<u32> },
}

/// A write whose file is open, waiting for its body ([`open_write`]).
pub(crate) struct OpenWrite {
    path: PathBuf,
    file: File,
    offset: u64,
    end: WriteEnd,
    leftover: Leftover,
}

/// Opens what a write of `path` writes into, checking everything that can be
/// checked before the body: with `offset`, the file itself
/// ([`open_in_place`]); without, a temporary file next to it
/// ([`open_replace`]).
pub(crate) async fn open_write(
    link: &Link,
    path: &Path,
    mode: Option<u32>,
    offset: Option<u64>,
) -> RunnerResult<OpenWrite> {
    match offset {
        Some(offset) => open_in_place(link, path, mode, offset).await,
        None => open_replace(link, path, mode).await,
    }
}

impl OpenWrite {
    /// Writes `body` ([`write_body`]) and ends the write: the temporary file
    /// gets its mode and is renamed over the target, or the target gets the
    /// given mode. On any failure, the body's own error included, a file
    /// the write created (the temporary file, or a target that did not
    /// exist) is removed before the error returns.
    pub(crate) async fn finish(self, link: &Link, body: RunnerByteStream) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let Self {
            path,
            file,
            offset,
            end,
            leftover,
        } = self;
        let what = display(&path);
        let result = async {
            write_body(link, OP, &path, &file, offset, body).await?;
            let mut file = file;
            let mode = match &end {
                WriteEnd::Replace { mode, .. } => Some(*mode),
                WriteEnd::InPlace { mode } => *mode,
            };
            if let Some(mode) = mode {
                link.sftp_call(
                    "write_file: set mode of",
                    &what,
                    file.set_permissions(Permissions::from((mode & MODE_MASK) as u16)),
                )
                .await?;
            }
            link.sftp_call(OP, &what, file.close()).await?;
            if let WriteEnd::Replace { temp, .. } = &end {
                link.sftp_call(
                    "write_file: rename into",
                    &what,
                    link.sftp.fs().rename(temp, &path),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => leftover.keep(),
            Err(_) => leftover.remove(link).await,
        }
        result
    }
}

/// Writes `contents` as the whole file `path` ([`open_replace`]): for the
/// provider's own small files (command metadata, owner markers).
pub(crate) async fn write_small_file(
    link: &Link,
    path: &Path,
    contents: &[u8],
    mode: Option<u32>,
) -> RunnerResult<()> {
    open_replace(link, path, mode)
        .await?
        .finish(link, bytes_stream(contents.to_vec()))
        .await
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

/// Opens the regular file `path` for a write at byte `offset`, in place:
/// the file is not truncated and bytes past the written ones stay
/// ([`RunnerFileWriteRequest::offset`](runner_api::RunnerFileWriteRequest)).
/// Offset 0 of a missing file creates it (and its missing parents) with
/// `mode` or `0o644`; a given `mode` is also applied to an existing file.
/// Modes are masked with [`MODE_MASK`]. The open handle's `fstat` gives the
/// size the offset is checked against. Not atomic: bytes written before a
/// failure stay, except in a file the write created (it is removed).
///
/// Errors: `InvalidRequest` naming the path, the offset and the size when the
/// offset lies past the end of the file, or the file is missing and the
/// offset is not 0 (nothing changes); `InvalidRequest` for a directory or
/// anything but a regular file; `PermissionDenied` when the login user may
/// not read and write the file (the handle is opened for both: sftp stats
/// only readable handles).
async fn open_in_place(
    link: &Link,
    path: &Path,
    mode: Option<u32>,
    offset: u64,
) -> RunnerResult<OpenWrite> {
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
        file,
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
    // No partial file of a write that created it.
    let leftover = Leftover::new(link, (!existed).then(|| path.to_path_buf()));
    if offset > size {
        leftover.remove(link).await;
        return Err(RunnerError::invalid_request(format!(
            "{OP} {what}: offset {offset} lies past the end of the file (size {size}); \
             writes may not leave holes"
        )));
    }
    Ok(OpenWrite {
        path: path.to_path_buf(),
        file,
        offset,
        end: WriteEnd::InPlace {
            mode: mode.or((!existed).then_some(0o644)),
        },
        leftover,
    })
}

/// Opens a temporary file next to `path` for a write of the whole file,
/// renamed over it once the body is in: readers see the old or the new
/// file, never a mix. The mode (the given one, or the existing file's) is
/// masked with [`MODE_MASK`]: no set-id or sticky bits. An existing regular
/// file the login user may not write is refused first ([`check_writable`]);
/// missing parents are created.
///
/// Errors: `InvalidRequest` for a directory or a path without a file name,
/// `PermissionDenied` ([`check_writable`]).
async fn open_replace(link: &Link, path: &Path, mode: Option<u32>) -> RunnerResult<OpenWrite> {
    const OP: &str = "write_file";
    let what = display(path);
    let existing = stat_follow(link, path).await?;
    if existing.as_ref().is_some_and(is_dir) {
        return Err(RunnerError::invalid_request(format!(
            "{OP} {what}: is a directory"
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
            "{OP} {what}: not a file path"
        )));
    };
    make_dirs(link, parent).await?;
    let temp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = link.sftp.options();
    options.write(true).create_new(true);
    let file = link.sftp_call(OP, &what, options.open(&temp)).await?;
    Ok(OpenWrite {
        path: path.to_path_buf(),
        file,
        offset: 0,
        leftover: Leftover::new(link, Some(temp.clone())),
        end: WriteEnd::Replace { temp, mode },
    })
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

/// Unpacks an upload that [`runner_kit::archive::sanitize_upload_stream`]
/// checked and rewrote into `target` (created if missing) with the remote
/// `tar`, which reads the spooled archive from stdin chunk by chunk. The
/// rewritten entries carry no set-id bits, so `tar` applies their modes as
/// they are (`--same-permissions`, no umask); it keeps no owner
/// (`--no-same-owner`: the login user owns what it unpacks).
///
/// One remote `sh` runs [`CONFINED_PARENTS_SCRIPT`] (it creates the target
/// and refuses directories of the entries that are symlinks leading out of
/// it) and then `exec`s `tar`: one round trip. The directories travel on the
/// command line; when they do not fit one
/// ([`runner_kit::archive::CONFINED_PARENTS_ARGS_BUDGET`]), the check runs
/// alone on all but the last share of them, and the last comes with `tar`.
/// A run whose master is lost before it starts is repeated once on a new
/// master ([`Connection::with_link`]); the archive is never sent twice.
/// Entries landing at or under a read-only path are refused before anything
/// runs ([`spooled_archive`]).
pub(crate) async fn upload_archive(
    conn: &Connection,
    target: &Path,
    upload: SpooledUpload,
    read_only: &ReadOnlyPaths,
) -> RunnerResult<()> {
    const OP: &str = "upload_archive";
    let target_arg = quote_path(OP, target)?;
    let mut runs: Vec<Vec<String>> = upload
        .check
        .confined_parents_runs(OP, target, |p| quote(p).len() + 1)?
        .into_iter()
        .map(|run| run.into_iter().map(str::to_owned).collect())
        .collect();
    let last = runs.pop().unwrap_or_default();
    for run in runs {
        conn.with_link(|link| {
            let (target_arg, run) = (&target_arg, &run);
            async move { confined_run(&link, target, target_arg, run, None).await }
        })
        .await?;
    }
    let feed = Feed::new(spooled_archive(read_only, target, upload).await?);
    conn.with_link(|link| {
        let (target_arg, last, feed) = (&target_arg, &last, &feed);
        async move { confined_run(&link, target, target_arg, last, Some(feed)).await }
    })
    .await
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
/// unpacking `tar` reading `archive` when it is given.
async fn confined_run(
    link: &Link,
    target: &Path,
    target_arg: &str,
    parents: &[String],
    archive: Option<&Feed>,
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
    let out = run_script_fed(link, OP, &command, archive).await?;
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

/// The spooled upload into `target` as a stream for the remote `tar`. When
/// `target` lies above a read-only path, the spool file is walked first (on
/// a blocking thread) and the upload refused when an entry would land at or
/// under one ([`ReadOnlyPaths::check`]); the file is then read from its
/// start again.
///
/// Errors: `PermissionDenied` naming the entry's path; `Provider` when the
/// spool file cannot be read.
async fn spooled_archive(
    read_only: &ReadOnlyPaths,
    target: &Path,
    upload: SpooledUpload,
) -> RunnerResult<RunnerByteStream> {
    const OP: &str = "upload_archive";
    let target = normalize_lexically(target);
    if !read_only.paths().iter().any(|ro| ro.starts_with(&target)) {
        return Ok(upload.into_stream());
    }
    let label = target.display().to_string();
    let unreadable = move |e: std::io::Error| {
        RunnerError::provider(format!(
            "{OP} {label}: reading the spooled archive failed: {e}"
        ))
        .with_source(e)
    };
    let (read_only, walked, failed) = (read_only.clone(), target.clone(), unreadable.clone());
    let mut spool = tokio::task::spawn_blocking(move || {
        let mut spool = upload.into_file();
        for entry in tar::Archive::new(&spool).entries().map_err(&failed)? {
            let entry = entry.map_err(&failed)?;
            let name = entry.path().map_err(&failed)?;
            read_only.check(OP, &normalize_lexically(&walked.join(name)))?;
        }
        spool.rewind().map_err(&failed)?;
        Ok::<_, RunnerError>(spool)
    })
    .await
    .map_err(|e| RunnerError::provider(format!("{OP}: the read-only check stopped: {e}")))??;
    Ok(runner_kit::bridge::chunk_stream(OP, move |out| {
        out.copy_from(&mut spool).map(drop).map_err(unreadable)
    }))
}

/// A tar of a directory's contents, or of one file, streamed from the remote
/// `tar`'s stdout as the caller pulls it ([`script_stdout`]).
///
/// Errors: `NotFound` before the first chunk; a failing remote `tar` ends
/// the stream with `Provider` and its stderr.
pub(crate) async fn download_archive(link: &Link, path: &Path) -> RunnerResult<RunnerByteStream> {
    const OP: &str = "download_archive";
    let what = display(path);
    let meta = stat_follow(link, path)
        .await?
        .ok_or_else(|| RunnerError::not_found(format!("{OP} {what}: no such file")))?;
    let script = if is_dir(&meta) {
        format!("tar -c -f - -C {} .", quote_path(OP, path)?)
    } else {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "tar -c -f - -C {} -- {}",
            quote_path(OP, parent)?,
            quote(&name)
        )
    };
    script_stdout(link, OP, &what, &script).await
}
