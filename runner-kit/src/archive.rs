//! Checks on tar archives that callers upload into a session, shared by every
//! provider that unpacks them somewhere other than a local directory handle.
//!
//! A provider that hands an uploaded tar to a remote unpacker (Docker's archive
//! API, a remote `tar`) cannot stop an entry half way, so it checks the whole
//! archive first and unpacks the clean copy [`sanitize_upload`] writes (masked
//! modes, the session user as owner, nothing but directories, files and
//! links), never the caller's bytes. [`sanitize_upload_stream`] does the same
//! for an archive arriving as a [`RunnerByteStream`], spooling the clean copy
//! to an anonymous temporary file instead of memory. A provider that unpacks
//! entry by entry itself uses [`entry_name`] (or [`entry_path`]) for the name rule and the
//! same [`MODE_MASK`].
//!
//! # Rules
//!
//! Every entry is judged by its name relative to the upload's target directory:
//!
//! - a name with a NUL byte is `InvalidRequest`;
//! - an absolute name, or one with a `..` component, is `PermissionDenied`
//!   (`.` components are dropped; the `./` entry of the directory itself is fine);
//! - a hard link's target is an archive member name, so it obeys the same rule
//!   (absolute or `..`: `PermissionDenied`), and may not pass through a symlink
//!   of the archive either;
//! - an entry beneath a name that the archive itself made a symlink (or a hard
//!   link) is `PermissionDenied`, wherever the symlink points: unpackers follow
//!   such a link, so the entry could land anywhere;
//! - device, FIFO and sparse entries (GNU `S` entries and PAX sparse
//!   records), PAX global headers, entries of an unknown type, and link
//!   entries without a link name are `InvalidRequest`;
//! - an archive whose entries hold more than the upload's bound
//!   ([`UploadPolicy::max_unpacked_bytes`]) is `InvalidRequest`;
//! - an archive that cannot be read is `InvalidRequest` naming the target.
//!
//! Symlinks themselves are kept as they are: where they point is the file API's
//! business ([`RemoteWorkspace`](https://docs.rs/runner-stack) refuses to follow one
//! out of the workspace). What an archive cannot see is a symlink that already
//! exists under the target; [`ArchiveCheck::parents`] lists the directories a
//! provider must check on the runner for that before it unpacks.
//!
//! An unpacker may refuse more than this: unix-local, which unpacks beneath a
//! directory handle, also refuses hard links and symlinks leading out of the
//! target.
//!
//! Every message names the operation, the target and the entry.
//!
//! # Symlinks already on the runner
//!
//! An archive passing [`check_upload`] may still hold `up/x` while the runner
//! has `up -> /etc` under the target, left by an earlier upload or made by a
//! command; a remote unpacker follows it. [`CONFINED_PARENTS_SCRIPT`] is the
//! POSIX `sh` check a provider runs on the runner before unpacking, with the
//! arguments of [`ArchiveCheck::confined_parents_runs`];
//! [`confined_parents_error`] turns its refusals into errors.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use futures_util::StreamExt;
use tar::EntryType;

use runner_api::{RunnerByteStream, RunnerError, RunnerErrorKind, RunnerResult};

/// Why an entry name is refused (see the module docs).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRefusal {
    /// The name is absolute.
    Absolute,
    /// The name has a `..` component.
    ParentDir,
    /// The name contains a NUL byte.
    Nul,
}

impl NameRefusal {
    /// `PermissionDenied` for names leading out of the target, `InvalidRequest`
    /// for a NUL byte.
    pub fn kind(self) -> RunnerErrorKind {
        match self {
            Self::Absolute | Self::ParentDir => RunnerErrorKind::PermissionDenied,
            Self::Nul => RunnerErrorKind::InvalidRequest,
        }
    }
}

impl fmt::Display for NameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Absolute => "absolute paths are refused",
            Self::ParentDir => "`..` would leave the target directory",
            Self::Nul => "the name contains a NUL byte",
        })
    }
}

/// The entry name `name` as a relative path without `.` components (empty for
/// the directory itself), or why it is refused.
///
/// For unpackers that build their own messages; [`entry_path`] builds the
/// usual one.
pub fn entry_name(name: &Path) -> Result<PathBuf, NameRefusal> {
    if name.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(NameRefusal::Nul);
    }
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(NameRefusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(NameRefusal::Absolute),
        }
    }
    Ok(out)
}

/// The entry `name` of an archive unpacked into `target`, as a relative path
/// without `.` components (empty for the directory itself).
///
/// Errors: `PermissionDenied` for an absolute name or a `..` component,
/// `InvalidRequest` for a NUL byte; the message names `operation`, `target` and
/// the entry.
pub fn entry_path(operation: &str, target: &Path, name: &Path) -> RunnerResult<PathBuf> {
    entry_name(name)
        .map_err(|why| RunnerError::new(why.kind(), entry_message(operation, target, name, &why)))
}

fn entry_message(operation: &str, target: &Path, name: &Path, why: &dyn fmt::Display) -> String {
    format!(
        "{operation} {}: entry {:?}: {why}",
        target.display(),
        name.display()
    )
}

/// What [`check_upload`] learned about an archive that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCheck {
    parents: BTreeSet<PathBuf>,
}

impl ArchiveCheck {
    /// Every directory (relative to the target, without `.` components) that
    /// an entry is written beneath, that a hard link's target lies beneath, or
    /// that a directory entry names.
    ///
    /// An unpacker follows a symlink that already exists at one of these
    /// paths (for a directory entry, to set its mode and times), so a provider
    /// unpacking into an existing tree refuses the upload when one of them is
    /// a symlink leading out of the target.
    pub fn parents(&self) -> &BTreeSet<PathBuf> {
        &self.parents
    }

    /// [`parents`](Self::parents) as the arguments `$2…` of runs of
    /// [`CONFINED_PARENTS_SCRIPT`] (the caller puts the target first).
    ///
    /// `cost` is what one argument costs the caller (its length plus a
    /// separator for an argv, more once quoted into a command line); each run
    /// stays within [`CONFINED_PARENTS_ARGS_BUDGET`], a longer parent runs
    /// alone. There is always at least one run, empty without parents, so the
    /// target is always prepared; most archives need exactly one.
    ///
    /// Errors: `InvalidRequest` when a parent is not UTF-8 (the script gets its
    /// arguments as text), naming `operation`, `target` and the parent.
    pub fn confined_parents_runs(
        &self,
        operation: &str,
        target: &Path,
        cost: impl Fn(&str) -> usize,
    ) -> RunnerResult<Vec<Vec<&str>>> {
        self.runs_within(operation, target, CONFINED_PARENTS_ARGS_BUDGET, cost)
    }

    fn runs_within(
        &self,
        operation: &str,
        target: &Path,
        budget: usize,
        cost: impl Fn(&str) -> usize,
    ) -> RunnerResult<Vec<Vec<&str>>> {
        let mut runs = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        let mut used = 0;
        for parent in &self.parents {
            let text = parent.to_str().ok_or_else(|| {
                RunnerError::invalid_request(format!(
                    "{operation} {}: directory {:?}: names must be UTF-8 to be checked on the \
                     runner",
                    target.display(),
                    parent.display()
                ))
            })?;
            let one = cost(text);
            if !run.is_empty() && used + one > budget {
                runs.push(std::mem::take(&mut run));
                used = 0;
            }
            run.push(text);
            used += one;
        }
        runs.push(run);
        Ok(runs)
    }
}

/// A POSIX `sh` script that prepares the target directory of an upload on the
/// runner and refuses the upload when an entry would be written through a
/// symlink that already exists beneath the target and leads out of it.
///
/// # Arguments
///
/// `$1` is the target directory as the runner names it; `$2…` are directories
/// relative to it: one run of [`ArchiveCheck::confined_parents_runs`]. When
/// there are several runs, the script runs once per run.
///
/// # Behaviour
///
/// 1. Creates the target and its missing parents (`mkdir -p`).
/// 2. Resolves the target with `readlink -f`, then each listed directory that
///    is a symlink the same way; one resolving neither to the target nor
///    beneath it refuses the upload. Symlinks resolving inside the target are
///    fine; a dangling or unresolvable symlink refuses. Directories that are
///    missing or not symlinks are not looked at further (every ancestor of an
///    entry is listed itself).
/// 3. On success it does not exit: it leaves the target as the only
///    positional parameter (`$1`) and falls through, so a command appended to
///    the script runs next in the same shell, e.g.
///    `exec tar -x -f - -C "$1"` (one round trip for check and unpacking; the
///    script does not read stdin, so the archive can be fed there).
///
/// # Exit status
///
/// - [`CONFINED_PARENTS_NOT_A_DIRECTORY`] (4): the target, or a directory on
///   its way, exists and is not a directory;
/// - [`CONFINED_PARENTS_LEADS_OUT`] (6): a listed directory is a symlink
///   leading out of the target; its relative name is printed on stdout;
/// - [`CONFINED_PARENTS_CANNOT_CREATE`] (7): creating or resolving the target
///   failed otherwise (`mkdir`'s message is on stderr).
///
/// Unpackers run after it (`tar` exits 0, 1 or 2) do not use these codes.
/// [`confined_parents_error`] maps them to errors.
///
/// The check and the unpacking are two steps: a command of the session that
/// replaces a checked directory with a symlink in between is not seen.
pub const CONFINED_PARENTS_SCRIPT: &str = r#"
t=$1
shift
if ! mkdir -p -- "$t"; then
  q=$t
  while [ -n "$q" ] && [ "$q" != / ] && [ "$q" != . ]; do
    if [ -e "$q" ] && [ ! -d "$q" ]; then exit 4; fi
    q=$(dirname -- "$q")
  done
  exit 7
fi
[ -d "$t" ] || exit 4
c=$(readlink -f -- "$t") && [ -n "$c" ] || exit 7
for p do
  if [ -L "$t/$p" ]; then
    r=$(readlink -f -- "$t/$p")
    case $r in
      "$c"|"${c%/}"/*) ;;
      *) printf '%s\n' "$p"; exit 6 ;;
    esac
  fi
done
set -- "$t"
"#;

/// Exit status of [`CONFINED_PARENTS_SCRIPT`]: the target, or a directory on
/// its way, is not a directory.
pub const CONFINED_PARENTS_NOT_A_DIRECTORY: i32 = 4;

/// Exit status of [`CONFINED_PARENTS_SCRIPT`]: a listed directory is a
/// symlink leading out of the target (named on stdout).
pub const CONFINED_PARENTS_LEADS_OUT: i32 = 6;

/// Exit status of [`CONFINED_PARENTS_SCRIPT`]: the target could not be
/// created or resolved.
pub const CONFINED_PARENTS_CANNOT_CREATE: i32 = 7;

/// Bytes of parent arguments one run of [`CONFINED_PARENTS_SCRIPT`] takes at
/// most (as the caller counts them): well below Linux's smallest limits on
/// arguments (128 KiB for all of them on old kernels, and for any single
/// argument, such as the command line `sshd` hands to `sh -c`).
pub const CONFINED_PARENTS_ARGS_BUDGET: usize = 64 * 1024;

/// The error for a run of [`CONFINED_PARENTS_SCRIPT`] (or of a script it
/// starts) that exited with `code`, or `None` when `code` is not one of the
/// script's refusals: 0, or the status of a command appended to it.
///
/// - not a directory: `AlreadyExists`;
/// - a directory leading out through a symlink: `PermissionDenied` naming the
///   directory (from `stdout`);
/// - the target cannot be created: `PermissionDenied` with `stderr`.
///
/// Every message names `operation` and `target`.
pub fn confined_parents_error(
    operation: &str,
    target: &Path,
    code: i32,
    stdout: &[u8],
    stderr: &[u8],
) -> Option<RunnerError> {
    let target = target.display();
    match code {
        CONFINED_PARENTS_NOT_A_DIRECTORY => Some(RunnerError::new(
            RunnerErrorKind::AlreadyExists,
            format!("{operation} {target}: exists and is not a directory, or lies beneath a file"),
        )),
        CONFINED_PARENTS_LEADS_OUT => {
            let parent = String::from_utf8_lossy(stdout);
            let parent = parent.strip_suffix('\n').unwrap_or(&parent);
            Some(RunnerError::permission_denied(format!(
                "{operation} {target}: entries under {parent} would be written through a \
                 symlink leading outside the target"
            )))
        }
        CONFINED_PARENTS_CANNOT_CREATE => Some(RunnerError::permission_denied(format!(
            "{operation} {target}: creating the target directory failed: {}",
            String::from_utf8_lossy(stderr).trim()
        ))),
        _ => None,
    }
}

/// Default bound on the bytes one upload unpacks (the sum of its entries'
/// sizes): 4 GiB. A destination sets its own with `max_upload_bytes`.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Permission bits kept from any mode a caller gives, in an archive entry or a
/// `write_file` request: set-user-id, set-group-id and sticky bits are dropped.
pub const MODE_MASK: u32 = 0o777;

/// How [`sanitize_upload`] rewrites an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPolicy {
    /// The uid and gid every entry is given (the session user's); `None`
    /// writes 0 and leaves ownership to an unpacker that does not keep it.
    pub owner: Option<(u32, u32)>,
    /// Most bytes the entries may hold together.
    pub max_unpacked_bytes: u64,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        Self {
            owner: None,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
        }
    }
}

/// An upload that passed the checks, rewritten by [`sanitize_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizedUpload {
    /// The tar to unpack in place of the caller's.
    pub archive: Vec<u8>,
    /// What the check learned (the parents to check on the runner).
    pub check: ArchiveCheck,
}

/// Walks every entry of `archive` once and refuses it when an entry would
/// land outside `target` or is of a kind that cannot be unpacked (the rules
/// are in the module docs). Nothing is unpacked; the size bound is
/// [`DEFAULT_MAX_UNPACKED_BYTES`].
///
/// Errors: `PermissionDenied` for an entry leading out of the target,
/// `InvalidRequest` for a corrupt archive, a NUL byte, a device, FIFO or
/// sparse entry, a PAX global header, or too many bytes; each message names
/// `operation`, `target` and (except for a corrupt archive) the entry.
pub fn check_upload(operation: &str, target: &Path, archive: &[u8]) -> RunnerResult<ArchiveCheck> {
    walk::<std::io::Sink>(operation, target, archive, &UploadPolicy::default(), None)
}

/// Checks `archive` as [`check_upload`] does, against `policy`'s size bound,
/// and writes a new tar of the same entries that an unpacker may apply as it
/// is, whoever runs it:
///
/// - only directories, regular files, symlinks and hard links, with the same
///   names, link targets, contents and modification times;
/// - modes masked with [`MODE_MASK`] (no set-id or sticky bits);
/// - uid and gid from `policy.owner` (0 without one), no user or group names;
/// - no PAX records beyond the long names the writer needs (a PAX global
///   header, which GNU tar applies to every later entry, is refused);
/// - the entry of the target directory itself (`./`) is left out, so an
///   upload never changes the target's own mode.
///
/// Errors: those of [`check_upload`]; `InvalidRequest` naming the entry when
/// the entries hold more than `policy.max_unpacked_bytes` together.
pub fn sanitize_upload(
    operation: &str,
    target: &Path,
    archive: &[u8],
    policy: &UploadPolicy,
) -> RunnerResult<SanitizedUpload> {
    let mut builder = tar::Builder::new(Vec::new());
    let check = walk(operation, target, archive, policy, Some(&mut builder))?;
    let archive = builder
        .into_inner()
        .map_err(|e| finish_failed(operation, target, e))?;
    Ok(SanitizedUpload { archive, check })
}

/// Bytes one chunk of [`SpooledUpload::into_stream`] holds at most.
const SPOOL_CHUNK: usize = crate::bridge::CHUNK_BYTES;

/// An upload checked and rewritten as [`sanitize_upload`] does, spooled to an
/// anonymous temporary file on the caller's side, in
/// [`std::env::temp_dir`] (bounded memory, whatever the archive's size; the
/// disk there must hold the rewritten archive). The file has no name, so
/// nothing is left behind when the upload is dropped.
#[derive(Debug)]
pub struct SpooledUpload {
    file: std::fs::File,
    len: u64,
    /// `"{operation} {target}"`, for the messages of [`Self::into_stream`].
    label: String,
    /// What the check learned (the parents to check on the runner).
    pub check: ArchiveCheck,
}

impl SpooledUpload {
    /// The size in bytes of the rewritten archive.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the rewritten archive has no bytes (never the case for a
    /// finished tar, which ends with two zero blocks).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rewritten archive as the spool file, positioned at its start, for
    /// an unpacker that reads it on a blocking thread.
    pub fn into_file(self) -> std::fs::File {
        self.file
    }

    /// The rewritten archive as a stream of chunks (at most 256 KiB each)
    /// read from the spool file.
    ///
    /// Errors (as a stream item): `Provider` when reading the spool file
    /// fails, naming the operation and the target.
    pub fn into_stream(self) -> RunnerByteStream {
        let label = self.label;
        let file = tokio::fs::File::from_std(self.file);
        Box::pin(
            tokio_util::io::ReaderStream::with_capacity(file, SPOOL_CHUNK).map(move |chunk| {
                chunk.map_err(|e| {
                    RunnerError::provider(format!(
                        "{label}: reading the spooled archive failed: {e}"
                    ))
                    .with_source(e)
                })
            }),
        )
    }
}

/// [`sanitize_upload`] for an archive arriving as a stream: the same walk
/// reads the chunks as they come (on a blocking thread) and writes the clean
/// tar into an anonymous temporary file, so neither the caller's archive nor
/// the rewritten one is ever held in memory.
///
/// Dropping the returned future stops the walk at the next chunk (see
/// [`with_body_reader`](crate::bridge::with_body_reader)).
///
/// Errors: those of [`sanitize_upload`]; an error the stream yields is
/// returned as it is (its kind and message kept); `Provider` naming the
/// operation and the target when the spool file cannot be written.
pub async fn sanitize_upload_stream(
    operation: &str,
    target: &Path,
    archive: RunnerByteStream,
    policy: &UploadPolicy,
) -> RunnerResult<SpooledUpload> {
    let (op, path, policy) = (operation.to_owned(), target.to_owned(), *policy);
    crate::bridge::with_body_reader(operation, archive, move |reader| {
        spool(&op, &path, reader, &policy)
    })
    .await
}

/// The blocking half of [`sanitize_upload_stream`]: the walk over `archive`
/// into an anonymous temporary file, rewound for reading.
fn spool(
    operation: &str,
    target: &Path,
    archive: impl Read,
    policy: &UploadPolicy,
) -> RunnerResult<SpooledUpload> {
    let spool_failed = |e: std::io::Error| {
        RunnerError::provider(format!(
            "{operation} {}: spooling the checked archive failed: {e}",
            target.display()
        ))
        .with_source(e)
    };
    let file = tempfile::tempfile().map_err(spool_failed)?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(SPOOL_CHUNK, file));
    let check = walk(operation, target, archive, policy, Some(&mut builder))?;
    let mut file = builder
        .into_inner()
        .and_then(|writer| writer.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| finish_failed(operation, target, e))?;
    let len = file.stream_position().map_err(spool_failed)?;
    file.rewind().map_err(spool_failed)?;
    Ok(SpooledUpload {
        file,
        len,
        label: format!("{operation} {}", target.display()),
        check,
    })
}

/// The error for a clean archive that could not be finished.
fn finish_failed(operation: &str, target: &Path, error: std::io::Error) -> RunnerError {
    RunnerError::provider(format!(
        "{operation} {}: writing the checked archive failed: {error}",
        target.display()
    ))
    .with_source(error)
}

/// The header of a rewritten entry.
fn clean_header(
    kind: EntryType,
    mode: u32,
    mtime: u64,
    size: u64,
    policy: &UploadPolicy,
) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & MODE_MASK);
    let (uid, gid) = policy.owner.unwrap_or((0, 0));
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

/// Whether a PAX record of the entry describes a GNU sparse file (formats
/// 0.x and 1.0 store sparse files as regular entries with these keys).
fn is_pax_sparse<R: std::io::Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<bool> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(false);
    };
    for extension in extensions {
        if extension?.key_bytes().starts_with(b"GNU.sparse.") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The one walk behind [`check_upload`], [`sanitize_upload`] and
/// [`sanitize_upload_stream`]: reads the archive once, in order, checks every
/// entry and, given a builder, appends its clean copy.
fn walk<W: Write>(
    operation: &str,
    target: &Path,
    archive: impl Read,
    policy: &UploadPolicy,
    mut out: Option<&mut tar::Builder<W>>,
) -> RunnerResult<ArchiveCheck> {
    let corrupt = |error: std::io::Error| {
        RunnerError::invalid_request(format!(
            "{operation} {}: reading the tar archive failed: {error}",
            target.display()
        ))
        .with_source(error)
    };
    let refuse = |kind: RunnerErrorKind, name: &Path, why: &dyn fmt::Display| {
        RunnerError::new(kind, entry_message(operation, target, name, why))
    };
    let write_failed = |name: &Path, error: std::io::Error| {
        RunnerError::provider(entry_message(
            operation,
            target,
            name,
            &format_args!("writing the checked archive failed: {error}"),
        ))
        .with_source(error)
    };
    // Names the archive made symlinks or hard links.
    let mut links: BTreeSet<PathBuf> = BTreeSet::new();
    let mut parents: BTreeSet<PathBuf> = BTreeSet::new();
    let mut total: u64 = 0;
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Err(RunnerError::invalid_request(format!(
                "{operation} {}: the archive has a PAX global header, which unpackers apply to \
                 every later entry; global headers are refused",
                target.display()
            )));
        }
        if is_metadata_entry(kind) {
            continue;
        }
        let name = entry.path().map_err(corrupt)?.into_owned();
        let clean = entry_path(operation, target, &name)?;
        if let Some(link) = through_link(&clean, &links) {
            return Err(refuse(
                RunnerErrorKind::PermissionDenied,
                &name,
                &format_args!(
                    "would be written through the archive's link {:?}",
                    link.display()
                ),
            ));
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mtime = entry.header().mtime().unwrap_or(0);
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                if is_pax_sparse(&mut entry).map_err(corrupt)? {
                    return Err(refuse(
                        RunnerErrorKind::InvalidRequest,
                        &name,
                        &"sparse entries are not supported",
                    ));
                }
                let size = entry.size();
                total = total.saturating_add(size);
                if total > policy.max_unpacked_bytes {
                    return Err(refuse(
                        RunnerErrorKind::InvalidRequest,
                        &name,
                        &format_args!(
                            "the archive unpacks to more than the limit of {} bytes \
                             (max_upload_bytes)",
                            policy.max_unpacked_bytes
                        ),
                    ));
                }
                if let Some(builder) = out.as_deref_mut() {
                    let mut header = clean_header(EntryType::Regular, mode, mtime, size, policy);
                    builder
                        .append_data(&mut header, &clean, &mut entry)
                        .map_err(|e| write_failed(&name, e))?;
                }
            }
            EntryType::Directory => {
                if let Some(builder) = out.as_deref_mut()
                    && !clean.as_os_str().is_empty()
                {
                    let mut header = clean_header(kind, mode, mtime, 0, policy);
                    builder
                        .append_data(&mut header, &clean, std::io::empty())
                        .map_err(|e| write_failed(&name, e))?;
                }
            }
            EntryType::Symlink | EntryType::Link => {
                let Some(link_name) = entry.link_name().map_err(corrupt)? else {
                    return Err(refuse(
                        RunnerErrorKind::InvalidRequest,
                        &name,
                        &"a link without a link name",
                    ));
                };
                let link_name = link_name.into_owned();
                let written = if kind == EntryType::Link {
                    let linked = entry_name(&link_name).map_err(|why| {
                        refuse(
                            why.kind(),
                            &name,
                            &format_args!("hard link to {:?}: {why}", link_name.display()),
                        )
                    })?;
                    if let Some(link) = through_link(&linked, &links) {
                        return Err(refuse(
                            RunnerErrorKind::PermissionDenied,
                            &name,
                            &format_args!(
                                "hard link to {:?} passes through the archive's link {:?}",
                                link_name.display(),
                                link.display()
                            ),
                        ));
                    }
                    parents.extend(ancestors(&linked));
                    linked
                } else {
                    if link_name.as_os_str().as_encoded_bytes().contains(&0) {
                        return Err(refuse(
                            RunnerErrorKind::InvalidRequest,
                            &name,
                            &"the link target contains a NUL byte",
                        ));
                    }
                    link_name
                };
                if let Some(builder) = out.as_deref_mut() {
                    let mut header = clean_header(kind, mode, mtime, 0, policy);
                    builder
                        .append_link(&mut header, &clean, &written)
                        .map_err(|e| write_failed(&name, e))?;
                }
                links.insert(clean.clone());
            }
            EntryType::GNUSparse => {
                return Err(refuse(
                    RunnerErrorKind::InvalidRequest,
                    &name,
                    &"sparse entries are not supported",
                ));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(
                    RunnerErrorKind::InvalidRequest,
                    &name,
                    &"device and FIFO entries are not supported",
                ));
            }
            other => {
                return Err(refuse(
                    RunnerErrorKind::InvalidRequest,
                    &name,
                    &format_args!("unsupported entry type {other:?}"),
                ));
            }
        }
        parents.extend(ancestors(&clean));
        if kind == EntryType::Directory && !clean.as_os_str().is_empty() {
            parents.insert(clean);
        }
    }
    Ok(ArchiveCheck { parents })
}

/// Whether an entry of this type only carries metadata for the entries after
/// it (pax extensions, GNU long names and link names) and is not unpacked.
pub fn is_metadata_entry(kind: EntryType) -> bool {
    kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
}

/// The proper ancestors of a clean relative path, shortest first.
fn ancestors(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    let count = path.components().count().saturating_sub(1);
    path.components()
        .take(count)
        .scan(PathBuf::new(), |prefix, part| {
            prefix.push(part);
            Some(prefix.clone())
        })
}

/// The archive link that `path` lies beneath, if any.
fn through_link<'a>(path: &Path, links: &'a BTreeSet<PathBuf>) -> Option<&'a PathBuf> {
    ancestors(path).find_map(|prefix| links.get(&prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry: name, type, link name.
    type Spec<'a> = (&'a str, EntryType, Option<&'a str>);

    /// A tar of `entries`, names written raw into the header (so `..` and
    /// absolute names survive; the `tar` builder refuses them).
    fn tar_of(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            let data: &[u8] = if *kind == EntryType::Regular {
                b"x"
            } else {
                b""
            };
            header.set_size(data.len() as u64);
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                header.set_link_name(link).expect("link name");
            }
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("finish tar")
    }

    fn kind_of(entries: &[Spec<'_>]) -> RunnerErrorKind {
        let err =
            check_upload("upload_archive", Path::new("t"), &tar_of(entries)).expect_err("refused");
        assert!(err.message().starts_with("upload_archive t: "), "{err}");
        err.kind()
    }

    use EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};
    use RunnerErrorKind::{InvalidRequest, PermissionDenied};

    #[test]
    fn archive_normal_tree_passes_with_its_parents() {
        let archive = tar_of(&[
            ("./", Directory, None),
            ("./a/", Directory, None),
            ("./a/b/c.txt", Regular, None),
            ("a/rel", Symlink, Some("b/c.txt")),
            ("out", Symlink, Some("/usr/bin/python3")),
            ("a/hard", Link, Some("a/b/c.txt")),
            ("top.txt", Regular, None),
            ("empty/", Directory, None),
        ]);
        let check = check_upload("upload_archive", Path::new("t"), &archive).expect("passes");
        let parents: Vec<&Path> = check.parents().iter().map(PathBuf::as_path).collect();
        assert_eq!(
            parents,
            vec![Path::new("a"), Path::new("a/b"), Path::new("empty")]
        );
        let empty = check_upload("upload_archive", Path::new("t"), &[]).expect("empty");
        assert!(empty.parents().is_empty());
    }

    #[test]
    fn archive_absolute_and_dotdot_names_are_denied() {
        assert_eq!(kind_of(&[("/etc/x", Regular, None)]), PermissionDenied);
        assert_eq!(kind_of(&[("../x", Regular, None)]), PermissionDenied);
        assert_eq!(kind_of(&[("a/../../x", Regular, None)]), PermissionDenied);
        assert_eq!(kind_of(&[("a/../x", Regular, None)]), PermissionDenied);
    }

    #[test]
    fn archive_entries_through_its_links_are_denied() {
        let up = kind_of(&[("up", Symlink, Some("..")), ("up/x", Regular, None)]);
        assert_eq!(up, PermissionDenied);
        // Even a link pointing inside: the unpacker would follow it.
        let inside = kind_of(&[
            ("d/", Directory, None),
            ("l", Symlink, Some("d")),
            ("l/x", Regular, None),
        ]);
        assert_eq!(inside, PermissionDenied);
        let deep = kind_of(&[("a/l", Symlink, Some("/")), ("a/l/b/c", Directory, None)]);
        assert_eq!(deep, PermissionDenied);
    }

    #[test]
    fn archive_hard_links_out_are_denied() {
        assert_eq!(
            kind_of(&[("h", Link, Some("/etc/passwd"))]),
            PermissionDenied
        );
        assert_eq!(kind_of(&[("h", Link, Some("../x"))]), PermissionDenied);
        let through = kind_of(&[("l", Symlink, Some("/etc")), ("h", Link, Some("l/passwd"))]);
        assert_eq!(through, PermissionDenied);
    }

    #[test]
    fn archive_devices_fifos_and_bad_links_are_invalid() {
        assert_eq!(kind_of(&[("c", Char, None)]), InvalidRequest);
        assert_eq!(kind_of(&[("b", Block, None)]), InvalidRequest);
        assert_eq!(kind_of(&[("f", Fifo, None)]), InvalidRequest);
        assert_eq!(kind_of(&[("s", Symlink, None)]), InvalidRequest);
    }

    #[test]
    fn archive_corrupt_tar_is_invalid_and_names_the_target() {
        let mut archive = tar_of(&[("a.txt", Regular, None)]);
        archive[148..156].copy_from_slice(b"0000000\0");
        let err =
            check_upload("upload_archive", Path::new("dir/t"), &archive).expect_err("bad checksum");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(err.message().contains("dir/t"), "{err}");
        let err = check_upload("upload_archive", Path::new("t"), &[1; 100])
            .expect_err("truncated header");
        assert_eq!(err.kind(), InvalidRequest);
    }

    /// The entries of a tar: name, type, mode, uid, gid, contents, link name.
    type Seen = (String, EntryType, u32, u64, u64, Vec<u8>, Option<String>);

    fn entries_of(archive: &[u8]) -> Vec<Seen> {
        let mut reader = tar::Archive::new(archive);
        reader
            .entries()
            .expect("entries")
            .map(|entry| {
                let mut entry = entry.expect("entry");
                let header = entry.header().clone();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
                (
                    entry.path().expect("path").display().to_string(),
                    header.entry_type(),
                    header.mode().expect("mode"),
                    header.uid().expect("uid"),
                    header.gid().expect("gid"),
                    data,
                    entry
                        .link_name()
                        .expect("link")
                        .map(|l| l.display().to_string()),
                )
            })
            .collect()
    }

    /// A tar built with the `tar` builder: (name, mode, uid, contents).
    fn owned_tar(files: &[(&str, u32, u64, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, mode, uid, data) in files {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(Regular);
            header.set_mode(*mode);
            header.set_uid(*uid);
            header.set_gid(*uid);
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, name, *data)
                .expect("append");
        }
        builder.into_inner().expect("finish")
    }

    #[test]
    fn sanitize_masks_modes_and_sets_the_owner() {
        let long = format!("{}/deep.txt", "d".repeat(150));
        let archive = owned_tar(&[
            ("suid", 0o4755, 0, b"#!/bin/sh\n"),
            ("sgid", 0o2755, 0, b""),
            ("sticky", 0o1777, 4242, b"s"),
            (&long, 0o644, 0, b"long"),
        ]);
        let policy = UploadPolicy {
            owner: Some((1000, 1001)),
            ..UploadPolicy::default()
        };
        let clean =
            sanitize_upload("upload_archive", Path::new("t"), &archive, &policy).expect("passes");
        let seen = entries_of(&clean.archive);
        let modes: Vec<(&str, u32)> = seen.iter().map(|e| (e.0.as_str(), e.2)).collect();
        assert_eq!(
            modes,
            vec![
                ("suid", 0o755),
                ("sgid", 0o755),
                ("sticky", 0o777),
                (long.as_str(), 0o644)
            ]
        );
        assert!(seen.iter().all(|e| e.3 == 1000 && e.4 == 1001), "{seen:?}");
        assert_eq!(seen[0].5, b"#!/bin/sh\n");
        assert_eq!(seen[3].5, b"long");
        let unowned = sanitize_upload(
            "upload_archive",
            Path::new("t"),
            &archive,
            &UploadPolicy::default(),
        )
        .expect("passes");
        assert!(
            entries_of(&unowned.archive)
                .iter()
                .all(|e| e.3 == 0 && e.4 == 0)
        );
    }

    #[test]
    fn sanitize_keeps_links_and_drops_the_target_entry() {
        let archive = tar_of(&[
            ("./", Directory, None),
            ("a/", Directory, None),
            ("a/f", Regular, None),
            ("a/s", Symlink, Some("f")),
            ("h", Link, Some("a/f")),
        ]);
        let clean = sanitize_upload(
            "upload_archive",
            Path::new("t"),
            &archive,
            &UploadPolicy::default(),
        )
        .expect("passes");
        let seen: Vec<(String, EntryType, Option<String>)> = entries_of(&clean.archive)
            .into_iter()
            .map(|e| (e.0, e.1, e.6))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a".into(), Directory, None),
                ("a/f".into(), Regular, None),
                ("a/s".into(), Symlink, Some("f".into())),
                ("h".into(), Link, Some("a/f".into())),
            ]
        );
    }

    /// A PAX global header ahead of a plain entry.
    fn global_header_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut global = tar::Header::new_ustar();
        global.set_entry_type(EntryType::XGlobalHeader);
        let record = b"30 path=../../etc/cron.d/evil\n";
        global.set_size(record.len() as u64);
        builder
            .append_data(&mut global, "pax_global_header", &record[..])
            .expect("global");
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        builder.append_data(&mut header, "x", &b"x"[..]).expect("x");
        builder.into_inner().expect("finish")
    }

    #[test]
    fn sanitize_refuses_sparse_global_headers_and_too_many_bytes() {
        let sparse = kind_of(&[("s", EntryType::GNUSparse, None)]);
        assert_eq!(sparse, InvalidRequest);
        let err = sanitize_upload(
            "upload_archive",
            Path::new("t"),
            &global_header_tar(),
            &UploadPolicy::default(),
        )
        .expect_err("global header");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(err.message().contains("PAX global header"), "{err}");
        // PAX sparse records on a regular entry.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([
                ("GNU.sparse.major", &b"1"[..]),
                ("GNU.sparse.minor", &b"0"[..]),
            ])
            .expect("pax");
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        builder
            .append_data(&mut header, "GNUSparseFile.0/big", &b"x"[..])
            .expect("entry");
        let archive = builder.into_inner().expect("finish");
        let err = check_upload("upload_archive", Path::new("t"), &archive).expect_err("pax sparse");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(err.message().contains("sparse"), "{err}");
        // The size bound counts every entry.
        let archive = owned_tar(&[("a", 0o644, 0, &[7; 600]), ("b", 0o644, 0, &[7; 600])]);
        let policy = UploadPolicy {
            max_unpacked_bytes: 1000,
            ..UploadPolicy::default()
        };
        let err = sanitize_upload("upload_archive", Path::new("t"), &archive, &policy)
            .expect_err("too big");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(
            err.message().contains("\"b\"") && err.message().contains("1000"),
            "{err}"
        );
    }

    /// `archive` as a stream of 7-byte chunks (headers and data split across
    /// chunk boundaries).
    fn stream_of(archive: &[u8]) -> RunnerByteStream {
        let chunks: Vec<RunnerResult<bytes::Bytes>> = archive
            .chunks(7)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    async fn spooled(archive: &[u8], policy: &UploadPolicy) -> RunnerResult<SpooledUpload> {
        sanitize_upload_stream("upload_archive", Path::new("t"), stream_of(archive), policy).await
    }

    async fn spooled_bytes(upload: SpooledUpload) -> Vec<u8> {
        let len = upload.len();
        let bytes = runner_api::collect_stream("read", "spool", upload.into_stream(), len)
            .await
            .expect("spool reads back");
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    #[tokio::test]
    async fn stream_sanitize_writes_what_the_slice_form_writes() {
        let archive = tar_of(&[
            ("./", Directory, None),
            ("a/", Directory, None),
            ("a/f", Regular, None),
            ("a/s", Symlink, Some("f")),
            ("h", Link, Some("a/f")),
        ]);
        let policy = UploadPolicy {
            owner: Some((1000, 1000)),
            ..UploadPolicy::default()
        };
        let whole = sanitize_upload("upload_archive", Path::new("t"), &archive, &policy)
            .expect("slice passes");
        let upload = spooled(&archive, &policy).await.expect("stream passes");
        assert_eq!(upload.check, whole.check);
        assert!(!upload.is_empty());
        assert_eq!(spooled_bytes(upload).await, whole.archive);
        let empty = spooled(&[], &policy).await.expect("empty passes");
        assert!(empty.check.parents().is_empty());
    }

    #[tokio::test]
    async fn stream_sanitize_refuses_what_the_slice_form_refuses() {
        let policy = UploadPolicy::default();
        let err = spooled(&global_header_tar(), &policy)
            .await
            .expect_err("global header");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(err.message().contains("PAX global header"), "{err}");
        let cases: [(&[Spec<'_>], RunnerErrorKind); 4] = [
            (&[("c", Char, None)], InvalidRequest),
            (&[("ok", Regular, None), ("b", Block, None)], InvalidRequest),
            (&[("a/../../x", Regular, None)], PermissionDenied),
            (
                &[("up", Symlink, Some("..")), ("up/x", Regular, None)],
                PermissionDenied,
            ),
        ];
        for (entries, kind) in cases {
            let err = spooled(&tar_of(entries), &policy)
                .await
                .expect_err("refused");
            assert_eq!(err.kind(), kind, "{entries:?}: {err}");
            assert!(err.message().starts_with("upload_archive t: "), "{err}");
        }
        let mut corrupt = tar_of(&[("a.txt", Regular, None)]);
        corrupt[148..156].copy_from_slice(b"0000000\0");
        let err = spooled(&corrupt, &policy).await.expect_err("bad checksum");
        assert_eq!(err.kind(), InvalidRequest);
    }

    #[tokio::test]
    async fn stream_sanitize_keeps_the_body_error() {
        let archive = tar_of(&[("a", Regular, None), ("b", Regular, None)]);
        let chunks = vec![
            Ok(bytes::Bytes::copy_from_slice(&archive[..600])),
            Err(RunnerError::new(
                RunnerErrorKind::Unavailable,
                "body: connection lost",
            )),
        ];
        let body: RunnerByteStream = Box::pin(futures_util::stream::iter(chunks));
        let err = sanitize_upload_stream(
            "upload_archive",
            Path::new("t"),
            body,
            &UploadPolicy::default(),
        )
        .await
        .expect_err("body failed");
        assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
        assert_eq!(err.message(), "body: connection lost");
    }

    /// Tells `dropped` when the stream holding it is dropped.
    struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn stream_sanitize_stops_when_the_future_is_dropped() {
        let (tx, dropped) = tokio::sync::oneshot::channel();
        let signal = DropSignal(Some(tx));
        let first = tar_of(&[("a", Regular, None)]);
        // One entry's header, then a body that never ends.
        let body: RunnerByteStream = Box::pin(
            futures_util::stream::iter([Ok(bytes::Bytes::copy_from_slice(&first[..512]))])
                .chain(futures_util::stream::pending())
                .map(move |chunk| {
                    let _held = &signal;
                    chunk
                }),
        );
        let policy = UploadPolicy::default();
        let upload = sanitize_upload_stream("upload_archive", Path::new("t"), body, &policy);
        tokio::select! {
            _ = upload => panic!("a body that never ends cannot finish"),
            _ = tokio::task::yield_now() => {}
        }
        dropped.await.expect("the walk dropped the body");
    }

    fn parents_of(names: &[&str]) -> ArchiveCheck {
        ArchiveCheck {
            parents: names.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn archive_confined_parents_runs_split_by_cost() {
        let t = Path::new("t");
        let none = parents_of(&[]);
        let runs = none
            .confined_parents_runs("upload_archive", t, str::len)
            .expect("runs");
        assert_eq!(runs, vec![Vec::<&str>::new()]);
        let some = parents_of(&["a", "a/b", "c"]);
        let one = some
            .confined_parents_runs("upload_archive", t, str::len)
            .expect("runs");
        assert_eq!(one, vec![vec!["a", "a/b", "c"]]);
        let cost = |p: &str| p.len() + 1;
        let split = some
            .runs_within("upload_archive", t, 6, cost)
            .expect("runs");
        assert_eq!(split, vec![vec!["a", "a/b"], vec!["c"]]);
        let alone = parents_of(&["long-name", "x"]);
        let split = alone
            .runs_within("upload_archive", t, 4, cost)
            .expect("runs");
        assert_eq!(split, vec![vec!["long-name"], vec!["x"]]);
    }

    #[test]
    fn archive_confined_parents_need_utf8_names() {
        let raw =
            PathBuf::from(std::os::unix::ffi::OsStrExt::from_bytes(b"a\xff") as &std::ffi::OsStr);
        let check = ArchiveCheck {
            parents: BTreeSet::from([raw]),
        };
        let err = check
            .confined_parents_runs("upload_archive", Path::new("t"), str::len)
            .expect_err("not UTF-8");
        assert_eq!(err.kind(), InvalidRequest);
        assert!(err.message().starts_with("upload_archive t: "), "{err}");
    }

    #[test]
    fn archive_confined_parents_errors_name_the_parent() {
        let t = Path::new("/ws/t");
        let err = confined_parents_error("upload_archive", t, 6, b"up\n", b"").expect("refused");
        assert_eq!(err.kind(), PermissionDenied);
        assert_eq!(
            err.message(),
            "upload_archive /ws/t: entries under up would be written through a symlink leading \
             outside the target"
        );
        let err = confined_parents_error("upload_archive", t, 4, b"", b"").expect("file");
        assert_eq!(err.kind(), RunnerErrorKind::AlreadyExists);
        let err =
            confined_parents_error("upload_archive", t, 7, b"", b"mkdir: denied\n").expect("7");
        assert_eq!(err.kind(), PermissionDenied);
        assert!(err.message().ends_with("failed: mkdir: denied"), "{err}");
        for other in [0, 1, 2, 127] {
            assert!(confined_parents_error("upload_archive", t, other, b"", b"").is_none());
        }
    }

    /// Runs the script with the system `sh` and `command` appended.
    fn run_script(args: &[&Path], command: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{CONFINED_PARENTS_SCRIPT}{command}"))
            .arg("sh")
            .args(args)
            .output()
            .expect("run sh")
    }

    #[test]
    fn archive_confined_parents_script_refuses_links_leading_out() {
        let base = std::env::temp_dir().join(format!(
            "runner-api-confined-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let (target, outside) = (base.join("ws/t"), base.join("outside"));
        std::fs::create_dir_all(&outside).expect("outside dir");
        let p = Path::new;
        // A missing target is created; the appended command gets it as $1.
        let out = run_script(&[&target, p("a"), p("a/b")], r#"printf '%s' "$#:$1""#);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, format!("1:{}", target.display()).into_bytes());
        assert!(target.is_dir());
        std::fs::create_dir(target.join("d")).expect("d");
        std::os::unix::fs::symlink(&outside, target.join("up")).expect("up");
        std::os::unix::fs::symlink("d", target.join("in")).expect("in");
        std::os::unix::fs::symlink("../d", target.join("d/again")).expect("again");
        std::os::unix::fs::symlink("/", target.join("d/root")).expect("root");
        std::os::unix::fs::symlink(base.join("missing/x"), target.join("gone")).expect("gone");
        // Links resolving inside, plain and missing directories pass.
        let out = run_script(&[&target, p("in"), p("in/again"), p("d"), p("new")], "");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        for (parent, shown) in [("up", "up"), ("in/root", "in/root"), ("gone", "gone")] {
            let out = run_script(&[&target, p("in"), p(parent)], "exit 0");
            assert_eq!(
                out.status.code(),
                Some(CONFINED_PARENTS_LEADS_OUT),
                "{parent}: {out:?}"
            );
            assert_eq!(out.stdout, format!("{shown}\n").into_bytes());
        }
        // The target itself or a directory on its way is a file.
        std::fs::write(base.join("file"), b"x").expect("file");
        for bad in [base.join("file"), base.join("file/t")] {
            let out = run_script(&[&bad], "");
            assert_eq!(
                out.status.code(),
                Some(CONFINED_PARENTS_NOT_A_DIRECTORY),
                "{out:?}"
            );
        }
        std::fs::remove_dir_all(&base).expect("clean up");
    }

    #[test]
    fn archive_entry_path_cleans_and_names_everything() {
        let op = "upload_archive";
        let target = Path::new("t");
        let clean = entry_path(op, target, Path::new("./a/./b")).expect("clean");
        assert_eq!(clean, Path::new("a/b"));
        assert_eq!(
            entry_path(op, target, Path::new("./")).expect("dot"),
            Path::new("")
        );
        let err = entry_path(op, target, Path::new("/abs")).expect_err("absolute");
        assert_eq!(err.kind(), PermissionDenied);
        assert_eq!(
            err.message(),
            "upload_archive t: entry \"/abs\": absolute paths are refused"
        );
        let err = entry_path(op, target, Path::new("a/../b")).expect_err("dotdot");
        assert_eq!(err.kind(), PermissionDenied);
        let nul =
            PathBuf::from(std::os::unix::ffi::OsStrExt::from_bytes(b"a\0b") as &std::ffi::OsStr);
        let err = entry_path(op, target, &nul).expect_err("nul");
        assert_eq!(err.kind(), InvalidRequest);
        assert_eq!(entry_name(&nul), Err(NameRefusal::Nul));
    }
}
