//! Files through execs run as the session user: contents travel on an exec's
//! stdin and stdout, streamed chunk by chunk in both directions (`dd` reads a
//! window of the file, `cat` writes a temp file renamed into place, `tar`
//! packs and unpacks archives), and operations on names (rename, remove,
//! list, stat, canonicalize) run a short `sh` helper. Memory stays bounded
//! whatever the size: a read forwards Docker's output chunks, a write feeds
//! the body's chunks to the exec's stdin as it takes them, an upload is
//! checked and spooled on this side first, and a directory's archive is
//! rebased entry by entry on a blocking thread.
//!
//! Every path is resolved by the kernel in the container when the helper
//! opens it, with the session user's rights: a symlink to a file the user
//! cannot read fails like it would for a command, and no name is checked by
//! one process and then used by another. Only session setup (the workspace,
//! the state directory and the manifest entries, chosen by the embedder)
//! goes through the archive API, which Docker applies as root.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::UploadToContainerOptionsBuilder;
use futures_util::StreamExt;
use runner_api::{
    RunnerByteStream, RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileStat, RunnerFileStream, RunnerFileWriteRequest, RunnerResult, bytes_stream,
    empty_stream, next_chunk, normalize_lexically, prepend, reject_nul_path,
};
use runner_kit::ReadOnlyPaths;
use runner_kit::archive::{
    CONFINED_PARENTS_SCRIPT, MODE_MASK, UploadPolicy, confined_parents_error,
    sanitize_upload_stream,
};
use runner_kit::bridge::chunk_stream;
use tokio::io::AsyncWriteExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::exec::{ExecContext, Headed, Running, ScriptOutput, absolute, unexpected_output};

/// Exit codes of the helper scripts.
const NOT_FOUND: i64 = 3;
const ALREADY_EXISTS: i64 = 4;
const INVALID: i64 = 5;
const DENIED: i64 = 6;
/// `READ`: not a regular file.
const NOT_REGULAR: i64 = 7;
/// `READ`: the watchdog killed the helper, opening the file blocked.
const OPEN_BLOCKED: i64 = 128 + 9;

/// How long `READ` lets opening a file take (in tenths of a second): a
/// regular file opens at once, a FIFO swapped in after the type check blocks.
const OPEN_TENTHS: u32 = 100;

const STAT: &str = r#"
p=$1
[ -e "$p" ] || [ -L "$p" ] || exit 3
s=$(stat -c '%f %s %Y' -- "$p") || exit 6
l=
[ -L "$p" ] && l=$(readlink -- "$p")
printf '%s\0%s\0' "$s" "$l"
"#;

const LIST: &str = r#"
d=$1
[ -e "$d" ] || [ -L "$d" ] || exit 3
[ -d "$d" ] || exit 5
cd -- "$d" || exit 6
for f in * .[!.]* ..?*; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  s=$(stat -c '%f %s %Y' -- "$f") || continue
  l=
  [ -L "$f" ] && l=$(readlink -- "$f")
  printf '%s\0%s\0%s\0' "$s" "$f" "$l"
done
"#;

const REMOVE: &str = r#"
p=$1
[ -e "$p" ] || [ -L "$p" ] || exit 3
if [ -d "$p" ] && [ ! -L "$p" ]; then
  if [ "$2" = 1 ]; then
    rm -rf -- "$p" || exit 6
  elif ! rmdir -- "$p" 2>/dev/null; then
    [ -n "$(ls -A -- "$p")" ] && exit 4
    exit 6
  fi
else
  rm -f -- "$p" || exit 6
fi
"#;

/// The shell function `make_dir DIR`: creates DIR and its parents; returns 0
/// when DIR is a directory, 4 when it or a directory on its way is something
/// else, 6 when creating failed otherwise.
macro_rules! make_dir_function {
    () => {
        r#"
make_dir() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    [ -d "$1" ] && return 0
    return 4
  fi
  mkdir -p -- "$1" 2>/dev/null && return 0
  q=$1
  while [ "$q" != / ] && [ -n "$q" ]; do
    q=$(dirname -- "$q")
    if [ -e "$q" ] && [ ! -d "$q" ]; then return 4; fi
  done
  return 6
}
"#
    };
}

const MAKE_DIR: &str = concat!(make_dir_function!(), r#"make_dir "$1""#);

const RENAME: &str = r#"
f=$1
t=$2
[ -e "$f" ] || [ -L "$f" ] || exit 3
if [ -d "$t" ] && [ ! -L "$t" ]; then
  if [ ! -d "$f" ] || [ -L "$f" ]; then exit 5; fi
  [ -n "$(ls -A -- "$t")" ] && exit 4
  rmdir -- "$t" || exit 6
elif [ -L "$t" ]; then
  rm -f -- "$t" || exit 6
fi
mv -f -- "$f" "$t" || exit 6
"#;

const CANONICALIZE: &str = r#"
[ -e "$1" ] || exit 3
readlink -f -- "$1"
"#;

/// `$1` the file. Opens it as the session user (so the kernel resolves every
/// symlink with that user's rights), checks that what it opened is a regular
/// file (through `/proc/self/fd`, no second lookup of the name), prints its
/// size, reads `OFFSET LEN` from stdin and copies that window with `dd`.
/// A type check before opening fails FIFOs and devices at once; a FIFO
/// swapped in after it would block `open`, so a watchdog kills the helper
/// when opening takes longer than `OPEN_TENTHS`.
static READ: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
p=$1
[ -e "$p" ] || exit 3
[ -d "$p" ] && exit 5
[ -f "$p" ] || exit 7
( i=0; while [ $i -lt {OPEN_TENTHS} ]; do sleep 0.1; i=$((i+1)); done; kill -KILL $$ ) \
  </dev/null >/dev/null 2>&1 &
w=$!
if ! command exec 3<"$p"; then kill $w; [ -e "$p" ] || exit 3; exit 6; fi 2>/dev/null
kill $w
[ -f /proc/self/fd/3 ] || exit 7
s=$(stat -L -c %s /proc/self/fd/3) || exit 6
echo "$s"
read o n || exit 0
exec dd bs=262144 skip="$o" count="$n" iflag=skip_bytes,count_bytes <&3 2>/dev/null
"#
    )
});

/// The first part of an atomic write (`$2` the target): creates missing
/// parents and refuses a directory or an existing target the session user
/// may not write (the rename would need only the directory's permission),
/// before any contents arrive.
macro_rules! write_prepare {
    () => {
        r#"
p=$2
make_dir "$(dirname -- "$p")" || exit $?
[ -d "$p" ] && exit 5
if [ -e "$p" ]; then [ -w "$p" ] || exit 6; fi
"#
    };
}

/// Stages the contents on stdin in the temp file `$1` (mode 0600 while it
/// is incomplete), removed again when copying fails.
macro_rules! write_stage {
    () => {
        r#"
t=$1
( umask 077 && : > "$t" ) 2>/dev/null || exit 6
if ! cat > "$t"; then rm -f -- "$t"; exit 8; fi
"#
    };
}

/// Renames the complete temp file `$1` onto the target `$2` with the mode
/// `$3` in octal (empty: the existing file's permission bits, else 644);
/// `$4` is `1` when the session user is root (an existing file keeps its
/// owner). Checks the target again as [`write_prepare`] did; on any failure
/// the temp file is removed.
macro_rules! write_commit {
    () => {
        r#"
t=$1
p=$2
m=$3
o=
if [ -d "$p" ]; then rm -f -- "$t"; exit 5; fi
if [ -e "$p" ]; then
  if [ ! -w "$p" ] || ! s=$(stat -L -c '%a %u:%g' -- "$p"); then rm -f -- "$t"; exit 6; fi
  [ -n "$m" ] || m=$(printf %o $((0${s%% *} & 0777)))
  [ "$4" = 1 ] && o=${s#* }
fi
[ -n "$m" ] || m=644
if { [ -z "$o" ] || chown -- "$o" "$t"; } && chmod "$m" -- "$t" && mv -f -- "$t" "$p"; then
  exit 0
fi
rm -f -- "$t"
exit 6
"#
    };
}

/// An atomic write whose contents are all on stdin: prepare, stage and
/// commit in one exec, all as the session user. Arguments as
/// [`write_commit`].
const WRITE: &str = concat!(
    make_dir_function!(),
    write_prepare!(),
    write_stage!(),
    write_commit!()
);

/// The first exec of an atomic write from a stream: prepare and stage (the
/// body on stdin); [`COMMIT`] follows once the body ended well.
const WRITE_STAGED: &str = concat!(make_dir_function!(), write_prepare!(), write_stage!());

/// The second exec of an atomic write from a stream.
const COMMIT: &str = write_commit!();

/// Stages the body of a write at an offset in the temp file `$1`.
const STAGE: &str = write_stage!();

/// `WRITE_AT`: the offset lies past the end of the file, whose size (or
/// `missing`) is on stdout.
const PAST_END: i64 = 9;

/// `$1` the file, `$2` the offset, `$3` the mode in octal (empty: an
/// existing file keeps its mode, a new one gets 644); the contents come on
/// stdin. Refuses a directory and a non-regular file, creates a missing file
/// (and its parents) only at offset 0, opens the file read-write as the
/// session user without truncating it (a FIFO swapped in after the type
/// check opens at once, and is refused by the check of what was opened),
/// refuses an offset past its end, and has `dd` write stdin at the offset
/// through the open descriptor.
macro_rules! write_at {
    () => {
        r#"
p=$1
o=$2
m=$3
[ -d "$p" ] && exit 5
if [ -e "$p" ]; then
  [ -f "$p" ] || exit 7
else
  if [ "$o" != 0 ]; then echo missing; exit 9; fi
  make_dir "$(dirname -- "$p")" || exit $?
  [ -n "$m" ] || m=644
fi
command exec 3<>"$p" 2>/dev/null || exit 6
[ -f /proc/self/fd/3 ] || exit 7
s=$(stat -L -c %s /proc/self/fd/3) || exit 6
if [ "$o" -gt "$s" ]; then echo "$s"; exit 9; fi
if [ -n "$m" ]; then chmod -- "$m" /proc/self/fd/3 || exit 6; fi
exec dd of=/proc/self/fd/3 bs=65536 seek="$o" oflag=seek_bytes conv=notrunc
"#
    };
}

/// A write at an offset, the contents on stdin.
const WRITE_AT: &str = concat!(make_dir_function!(), write_at!());

/// A write at an offset whose contents were staged in the temp file `$1`
/// (the other arguments follow, as for [`WRITE_AT`]): opens it as stdin and
/// removes it before [`WRITE_AT`] runs.
const WRITE_AT_STAGED: &str = concat!(
    make_dir_function!(),
    r#"
s=$1
shift
command exec 0<"$s" 2>/dev/null || { rm -f -- "$s"; exit 8; }
rm -f -- "$s"
"#,
    write_at!()
);

/// `$1` a directory (its contents, named `./…`) or any other path (that one
/// entry, a symlink as itself), as a tar on stdout, packed by the session
/// user, after a first line [`DIRECTORY`] or [`SINGLE`].
const DOWNLOAD: &str = r#"
p=$1
[ -e "$p" ] || [ -L "$p" ] || exit 3
if [ -d "$p" ] && [ ! -L "$p" ]; then
  cd -- "$p" || exit 6
  echo d
  tar -c -f - . || exit 6
else
  cd -- "$(dirname -- "$p")" || exit 6
  echo f
  tar -c -f - -- "$(basename -- "$p")" || exit 6
fi
"#;

/// `DOWNLOAD`'s first line for a directory, whose entries are rebased.
const DIRECTORY: &str = "d";
/// `DOWNLOAD`'s first line for a single entry, whose archive is kept as it is.
const SINGLE: &str = "f";

/// `$1` the target; stdin `MODE\0NAME\0…`: gives each entry its mode.
const RESTORE_MODES: &str = r#"cd -- "$1" && exec xargs -0 -n 2 chmod --"#;

/// [`CONFINED_PARENTS_SCRIPT`], then `tar` unpacking stdin into the target as
/// the session user (`-o`: the files belong to whoever unpacks them).
static UNPACK: LazyLock<String> =
    LazyLock::new(|| format!("{CONFINED_PARENTS_SCRIPT}exec tar -x -o -f - -C \"$1\"\n"));

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Maps a helper's exit code to an error naming `operation` and `path`.
fn check(operation: &str, path: &Path, out: ScriptOutput) -> RunnerResult<Vec<u8>> {
    match out.code {
        0 => Ok(out.stdout),
        code => Err(failure(operation, path, code, &out.stderr)),
    }
}

/// The error of a helper that exited with `code` (not 0) and `stderr`.
fn failure(operation: &str, path: &Path, code: i64, stderr: &str) -> RunnerError {
    let path = path.display();
    let kind = match code {
        NOT_FOUND => RunnerErrorKind::NotFound,
        ALREADY_EXISTS => RunnerErrorKind::AlreadyExists,
        INVALID => RunnerErrorKind::InvalidRequest,
        DENIED => RunnerErrorKind::PermissionDenied,
        _ => RunnerErrorKind::Provider,
    };
    let reason = match code {
        NOT_FOUND => "no such file or directory".to_string(),
        ALREADY_EXISTS => "already exists (or is a non-empty directory)".to_string(),
        INVALID => {
            "is a directory, or not a directory, where the operation needs the other".to_string()
        }
        _ if stderr.is_empty() => format!("failed with exit {code}"),
        _ => format!("failed with exit {code}: {stderr}"),
    };
    RunnerError::new(kind, format!("{operation} {path}: {reason}"))
}

/// Why `READ` of `shown` failed with `code`, before it had the file open
/// (`opened` false) or while copying it.
fn read_failed(shown: &str, code: i64, stderr: &str, opened: bool) -> RunnerError {
    const OP: &str = "read_file";
    match code {
        NOT_FOUND => RunnerError::not_found(format!("{OP} {shown}: no such file")),
        INVALID => RunnerError::invalid_request(format!("{OP} {shown}: is a directory")),
        DENIED => RunnerError::permission_denied(format!(
            "{OP} {shown}: the session user may not read it"
        )),
        NOT_REGULAR => RunnerError::invalid_request(format!(
            "{OP} {shown}: not a regular file (a FIFO, socket or device)"
        )),
        OPEN_BLOCKED if !opened => RunnerError::invalid_request(format!(
            "{OP} {shown}: opening it blocked for {} s, so it is not a regular file",
            OPEN_TENTHS / 10
        )),
        _ => RunnerError::provider(format!(
            "{OP} {shown}: the read helper failed with exit {code}: {stderr}"
        )),
    }
}

/// The error of a write at `offset` past the end of a file of `size`.
fn past_end(shown: &Path, offset: u64, size: &str) -> RunnerError {
    RunnerError::invalid_request(format!(
        "write_file {}: offset {offset} lies past the end of the file (size {size}); a write at \
         an offset may patch or append, not leave a hole",
        shown.display()
    ))
}

fn kind_of(mode: u32) -> RunnerFileKind {
    match mode & 0o170000 {
        0o040000 => RunnerFileKind::Directory,
        0o100000 => RunnerFileKind::File,
        0o120000 => RunnerFileKind::Symlink,
        _ => RunnerFileKind::Other,
    }
}

/// `"<hex mode> <size> <mtime>"` and the link target into a stat.
fn parse_stat(path: PathBuf, name: String, line: &[u8], link: &[u8]) -> Option<RunnerFileStat> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let mode = u32::from_str_radix(parts.next()?, 16).ok()?;
    let size = parts.next()?.parse().ok()?;
    let mtime: u64 = parts.next()?.parse().ok()?;
    let kind = kind_of(mode);
    Some(RunnerFileStat {
        path,
        name,
        kind,
        size,
        mode: mode & 0o7777,
        modified_ms: Some(mtime * 1000),
        symlink_target: (kind == RunnerFileKind::Symlink)
            .then(|| PathBuf::from(String::from_utf8_lossy(link).into_owned())),
    })
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string())
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

impl ExecContext {
    fn resolve(&self, operation: &str, path: &Path) -> RunnerResult<PathBuf> {
        reject_nul_path(operation, path)?;
        Ok(absolute(&self.workspace, path))
    }

    /// Unpacks `tar` into the existing directory `dir` through the archive
    /// API, as root: for session setup only, never for a caller's bytes.
    pub(crate) async fn upload(
        &self,
        operation: &str,
        dir: &Path,
        tar: Vec<u8>,
    ) -> RunnerResult<()> {
        let options = UploadToContainerOptionsBuilder::new()
            .path(&arg(dir))
            .no_overwrite_dir_non_dir("true");
        self.daemon
            .docker
            .upload_to_container(
                &self.container,
                Some(options.build()),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(|e| self.daemon.error(operation, &arg(dir), e))
    }

    async fn run_helper(
        &self,
        operation: &str,
        path: &Path,
        script: &str,
        args: &[&str],
    ) -> RunnerResult<Vec<u8>> {
        let out = self.script(operation, script, args).await?;
        check(operation, path, out)
    }

    /// `read_file_stream`: `READ` as the session user; once the helper has
    /// the file open and reported its size it is told the window (from the
    /// offset, up to the limit or the end of the file), and `dd` copies only
    /// that, chunk by chunk as Docker delivers it.
    pub(crate) async fn read_file_stream(
        self: Arc<Self>,
        request: RunnerFileReadRequest,
        running: Running,
    ) -> RunnerResult<RunnerFileStream> {
        const OP: &str = "read_file";
        let path = self.resolve(OP, &request.path)?;
        let shown = request.path.display().to_string();
        let Headed {
            line,
            input: mut pipe,
            rest,
        } = self
            .start_headed(OP, &shown, &READ, &[&arg(&path)], |code, stderr| {
                read_failed(&shown, code, stderr, false)
            })
            .await?;
        let size: u64 = line
            .trim()
            .parse()
            .map_err(|_| unexpected_output(OP, &shown, line.as_bytes()))?;
        let offset = request.offset.unwrap_or(0).min(size);
        let len = request
            .limit
            .map_or(size - offset, |limit| limit.min(size - offset));
        // On an error the output is dropped: the helper's `read` ends.
        pipe.write_all(format!("{offset} {len}\n").as_bytes())
            .await
            .and(pipe.shutdown().await)
            .map_err(|e| RunnerError::from_io(OP, &shown, e))?;
        let bytes = self.stdout_stream(
            OP,
            rest,
            len,
            move |code, stderr| read_failed(&shown, code, stderr, true),
            running,
        );
        Ok(RunnerFileStream {
            path: request.path,
            size,
            bytes,
        })
    }

    /// `write_file_stream`, as the session user. With an empty body the
    /// contents go on the stdin of one exec: `WRITE`, or `WRITE_AT` for a
    /// write at an offset. Otherwise the contents and the body are staged
    /// chunk by chunk in a temp file (`WRITE_STAGED` beside the target,
    /// `STAGE` in the state directory for a write at an offset); only once
    /// the body ended well and that exec exited 0 does a second exec apply
    /// it (`COMMIT` renames it into place, `WRITE_AT_STAGED` copies it in at
    /// the offset). A failed body or exec removes the temp file, so the
    /// target stays as it was.
    pub(crate) async fn write_file_stream(
        self: Arc<Self>,
        request: RunnerFileWriteRequest,
        mut body: RunnerByteStream,
    ) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let path = self.resolve(OP, &request.path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(RunnerError::invalid_request(format!(
                "{OP} {}: not a file path",
                request.path.display()
            )));
        };
        // No file is larger, and the helper's shell compares signed numbers.
        if let Some(offset) = request.offset
            && i64::try_from(offset).is_err()
        {
            return Err(past_end(
                &request.path,
                offset,
                &format!("at most {}", i64::MAX),
            ));
        }
        let mode = request
            .mode
            .map(|mode| format!("{:o}", mode & MODE_MASK))
            .unwrap_or_default();
        let root = if self.file_owner().0 == 0 { "1" } else { "0" };
        let first = match next_chunk(&mut body).await {
            None => None,
            Some(chunk) => Some(chunk?),
        };
        let RunnerFileWriteRequest {
            path: shown,
            contents,
            offset,
            ..
        } = request;
        let target = arg(&path);
        let Some(first) = first else {
            let contents = bytes_stream(contents);
            return match offset {
                Some(offset) => {
                    self.write_at(&shown, WRITE_AT, &[&target], offset, &mode, contents)
                        .await
                }
                None => {
                    let temp = arg(&temp_beside(parent, name));
                    let args = [temp.as_str(), &target, &mode, root];
                    let out = self.script_with_input(OP, WRITE, &args, contents).await?;
                    check(OP, &shown, out).map(|_| ())
                }
            };
        };
        let body = prepend(contents, prepend(first, body));
        let (script, temp) = match offset {
            Some(_) => (
                STAGE,
                format!("{}/{}.stage", self.state_dir, uuid::Uuid::new_v4().simple()),
            ),
            None => (WRITE_STAGED, arg(&temp_beside(parent, name))),
        };
        let staged = Staged {
            ctx: self.clone(),
            path: Some(temp.clone()),
        };
        let staged = self
            .stage(&shown, script, &[&temp, &target], body, staged)
            .await?;
        let applied = match offset {
            Some(offset) => {
                let args = [temp.as_str(), &target];
                self.write_at(
                    &shown,
                    WRITE_AT_STAGED,
                    &args,
                    offset,
                    &mode,
                    empty_stream(),
                )
                .await
            }
            None => {
                let args = [temp.as_str(), &target, &mode, root];
                let out = self.script(OP, COMMIT, &args).await;
                out.and_then(|out| check(OP, &shown, out).map(|_| ()))
            }
        };
        match applied {
            // The exec renamed the temp file, or read and removed it.
            Ok(()) => staged.taken(),
            // It removes it on its failures too; not when it did not run.
            Err(_) => staged.remove().await,
        }
        applied
    }

    /// Runs `script`, which stages its stdin in `staged`, with `body` on its
    /// stdin.
    ///
    /// Errors: the body's, or the script's failure; `staged` is removed
    /// first.
    async fn stage(
        &self,
        shown: &Path,
        script: &str,
        args: &[&str],
        body: RunnerByteStream,
        staged: Staged,
    ) -> RunnerResult<Staged> {
        let staging = self
            .script_with_input("write_file", script, args, body)
            .await
            .and_then(|out| check("write_file", shown, out));
        match staging {
            Ok(_) => Ok(staged),
            Err(e) => {
                staged.remove().await;
                Err(e)
            }
        }
    }

    /// A write at `offset`: `script` (`WRITE_AT` or `WRITE_AT_STAGED`) with
    /// `args`, the offset and the mode, `input` on its stdin.
    async fn write_at(
        &self,
        shown: &Path,
        script: &str,
        args: &[&str],
        offset: u64,
        mode: &str,
        input: RunnerByteStream,
    ) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let offset_arg = offset.to_string();
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain([offset_arg.as_str(), mode])
            .collect();
        let out = self.script_with_input(OP, script, &args, input).await?;
        let what = shown.display();
        match out.code {
            PAST_END => {
                let size = String::from_utf8_lossy(&out.stdout);
                Err(match size.trim() {
                    "missing" => RunnerError::invalid_request(format!(
                        "{OP} {what}: offset {offset} of a missing file (size 0); only offset \
                         0 creates a file"
                    )),
                    size => past_end(shown, offset, size),
                })
            }
            NOT_REGULAR => Err(RunnerError::invalid_request(format!(
                "{OP} {what}: not a regular file (a FIFO, socket or device)"
            ))),
            DENIED => Err(RunnerError::permission_denied(format!(
                "{OP} {what}: the session user may not create it, open it for reading and \
                 writing, or set its mode"
            ))),
            _ => check(OP, shown, out).map(|_| ()),
        }
    }

    /// `stat` (the link itself for a symlink).
    pub(crate) async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        const OP: &str = "stat";
        let abs = self.resolve(OP, path)?;
        let out = self.run_helper(OP, path, STAT, &[&arg(&abs)]).await?;
        let mut fields = out.split(|b| *b == 0);
        let line = fields.next().unwrap_or_default();
        let link = fields.next().unwrap_or_default();
        parse_stat(path.to_path_buf(), name_of(&abs), line, link)
            .ok_or_else(|| unexpected_output(OP, &path.display().to_string(), &out))
    }

    /// `list_dir`, sorted by name.
    pub(crate) async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        const OP: &str = "list_dir";
        let abs = self.resolve(OP, path)?;
        let out = self.run_helper(OP, path, LIST, &[&arg(&abs)]).await?;
        let fields: Vec<&[u8]> = out.split(|b| *b == 0).collect();
        let mut entries = Vec::new();
        for triple in fields.chunks_exact(3) {
            let name = String::from_utf8_lossy(triple[1]).into_owned();
            if let Some(stat) = parse_stat(path.join(&name), name, triple[0], triple[2]) {
                entries.push(stat);
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// `remove`.
    pub(crate) async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        const OP: &str = "remove";
        let abs = self.resolve(OP, path)?;
        if abs == self.workspace || abs == Path::new("/") {
            return Err(RunnerError::permission_denied(format!(
                "{OP} {}: refusing to remove the workspace root",
                path.display()
            )));
        }
        let flag = if recursive { "1" } else { "0" };
        self.run_helper(OP, path, REMOVE, &[&arg(&abs), flag])
            .await
            .map(|_| ())
    }

    /// `make_dir` with parents.
    pub(crate) async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        const OP: &str = "make_dir";
        let abs = self.resolve(OP, path)?;
        self.run_helper(OP, path, MAKE_DIR, &[&arg(&abs)])
            .await
            .map(|_| ())
    }

    /// `rename`, as POSIX rename.
    pub(crate) async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        const OP: &str = "rename";
        let (abs_from, abs_to) = (self.resolve(OP, from)?, self.resolve(OP, to)?);
        self.run_helper(OP, from, RENAME, &[&arg(&abs_from), &arg(&abs_to)])
            .await
            .map(|_| ())
    }

    /// `canonicalize`: every symlink resolved; the path must exist.
    pub(crate) async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        const OP: &str = "canonicalize";
        let abs = self.resolve(OP, path)?;
        let out = self
            .run_helper(OP, path, CANONICALIZE, &[&arg(&abs)])
            .await?;
        let text = String::from_utf8_lossy(&out);
        Ok(PathBuf::from(text.strip_suffix('\n').unwrap_or(&text)))
    }

    /// `upload_archive_stream`: checks and rewrites the archive with
    /// [`sanitize_upload_stream`] (modes masked, the session user as owner,
    /// at most `max_upload_bytes`), spooled on this side; refuses an entry at
    /// or under a path of `read_only`; prepares the target and checks that
    /// none of the directories its entries are written beneath is a symlink
    /// of the container leading out of `target` ([`CONFINED_PARENTS_SCRIPT`]),
    /// and unpacks the rewritten archive, streamed from the spool, with
    /// `tar` as the session user in the same exec as the last check.
    pub(crate) async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
        read_only: &ReadOnlyPaths,
    ) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        let abs = self.resolve(OP, target)?;
        read_only.check(OP, &abs)?;
        let target_arg = arg(&abs);
        let policy = UploadPolicy {
            owner: Some(self.file_owner()),
            max_unpacked_bytes: self.max_upload_bytes,
        };
        let inspection = Inspection {
            target: abs.clone(),
            read_only: read_only.clone(),
            umask: if self.file_owner().0 == 0 {
                0
            } else {
                self.umask()
            },
        };
        // A refused archive still has its target prepared (and a target in
        // the way reported first), as when it passes.
        let (check, mut file, cut, refused) =
            match sanitize_upload_stream(OP, target, archive, &policy).await {
                Ok(spooled) => {
                    let check = spooled.check.clone();
                    let (file, cut) = inspection.run(spooled.into_file()).await?;
                    (Some(check), Some(file), cut, None)
                }
                Err(refused) => (None, None, Vec::new(), Some(refused)),
            };
        let runs = match &check {
            Some(check) => check.confined_parents_runs(OP, target, |p| p.len() + 1)?,
            None => vec![Vec::new()],
        };
        let last = runs.len() - 1;
        for (i, run) in runs.into_iter().enumerate() {
            let args: Vec<&str> = std::iter::once(target_arg.as_str()).chain(run).collect();
            let out = match file.take() {
                Some(mut file) if i == last => {
                    let archive = chunk_stream(OP, move |writer| {
                        writer
                            .copy_from(&mut file)
                            .map(drop)
                            .map_err(|e| RunnerError::from_io(OP, "the spooled archive", e))
                    });
                    self.script_with_input(OP, &UNPACK, &args, archive).await?
                }
                kept => {
                    file = kept;
                    self.script(OP, CONFINED_PARENTS_SCRIPT, &args).await?
                }
            };
            if let Some(refused) = confined_parents_error(
                OP,
                target,
                i32::try_from(out.code).unwrap_or(-1),
                &out.stdout,
                out.stderr.as_bytes(),
            ) {
                return Err(refused);
            }
            if out.code != 0 {
                let kind = if out.stderr.contains("Permission denied") {
                    RunnerErrorKind::PermissionDenied
                } else {
                    RunnerErrorKind::Provider
                };
                return Err(RunnerError::new(
                    kind,
                    format!(
                        "{OP} {}: unpacking as the session user failed with exit {}: {}",
                        target.display(),
                        out.code,
                        out.stderr
                    ),
                ));
            }
        }
        if let Some(refused) = refused {
            return Err(refused);
        }
        self.restore_modes(target, &target_arg, cut).await
    }

    /// A `tar` run by a user other than root creates entries with their
    /// modes less the umask (busybox has no `--same-permissions`): the
    /// entries whose masked mode the umask cut (`list`, from
    /// [`Inspection`]) get it back, as the session user, in one more exec
    /// (only then).
    async fn restore_modes(
        &self,
        target: &Path,
        target_arg: &str,
        list: Vec<u8>,
    ) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        if list.is_empty() {
            return Ok(());
        }
        let out = self
            .script_with_input(OP, RESTORE_MODES, &[target_arg], bytes_stream(list))
            .await?;
        if out.code != 0 {
            return Err(RunnerError::provider(format!(
                "{OP} {}: setting the modes of the unpacked entries failed with exit {}: {}",
                target.display(),
                out.code,
                out.stderr
            )));
        }
        Ok(())
    }

    /// `download_archive_stream`: a tar of a directory's contents (names
    /// relative to it) or of a single file, packed by `tar` as the session
    /// user and forwarded chunk by chunk; a directory's archive is rebased
    /// on the way ([`rebased`]).
    pub(crate) async fn download_archive_stream(
        self: Arc<Self>,
        path: &Path,
        running: Running,
    ) -> RunnerResult<RunnerByteStream> {
        const OP: &str = "download_archive";
        let abs = self.resolve(OP, path)?;
        let shown = path.display().to_string();
        let Headed { line, rest, .. } = self
            .start_headed(OP, &shown, DOWNLOAD, &[&arg(&abs)], |code, stderr| {
                failure(OP, path, code, stderr)
            })
            .await?;
        let directory = match line.as_str() {
            DIRECTORY => true,
            SINGLE => false,
            other => return Err(unexpected_output(OP, &shown, other.as_bytes())),
        };
        let owned = path.to_path_buf();
        let archive = self.stdout_stream(
            OP,
            rest,
            u64::MAX,
            move |code, stderr| failure(OP, &owned, code, stderr),
            running,
        );
        Ok(if directory {
            rebased(OP, shown, archive)
        } else {
            archive
        })
    }
}

/// The temp file of an atomic write of `name`, beside it in `parent`.
fn temp_beside(parent: &Path, name: &std::ffi::OsStr) -> PathBuf {
    parent.join(format!(
        ".{}.runner-{}.tmp",
        name.to_string_lossy(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
}

/// A temp file a streamed write staged in the container, removed unless the
/// exec that applies it took it over (when dropped half way, by a task).
struct Staged {
    ctx: Arc<ExecContext>,
    path: Option<String>,
}

impl Staged {
    /// The exec applying it removed or renamed it.
    fn taken(mut self) {
        self.path = None;
    }

    /// Removes it, as the session user; a failure leaves only a hidden temp
    /// file, so it is not an error of the write.
    async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            remove_staged(&self.ctx, &path).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ctx = self.ctx.clone();
            runtime.spawn(async move { remove_staged(&ctx, &path).await });
        }
    }
}

async fn remove_staged(ctx: &ExecContext, path: &str) {
    if let Err(e) = ctx.script("write_file", r#"rm -f -- "$1""#, &[path]).await {
        tracing::warn!(error = %e, "removing a staged temp file failed");
    }
}

/// What an upload needs to know of its rewritten archive before it is
/// unpacked, learned in one walk of the spool file on a blocking thread (and
/// only when there is something to learn).
struct Inspection {
    /// The absolute target.
    target: PathBuf,
    /// The session's read-only paths: no entry may land at or under one.
    read_only: ReadOnlyPaths,
    /// The session user's umask (0 for root, whose `tar` keeps modes).
    umask: u32,
}

impl Inspection {
    /// Walks `file` (rewound afterwards) and returns it with the list
    /// `MODE\0NAME\0` of every directory and regular file whose mode has
    /// bits the umask clears.
    ///
    /// Errors: `PermissionDenied` naming the entry that would land at or
    /// under a read-only path; `Provider` when the spool cannot be read.
    async fn run(self, file: std::fs::File) -> RunnerResult<(std::fs::File, Vec<u8>)> {
        const OP: &str = "upload_archive";
        let beneath = self
            .read_only
            .paths()
            .iter()
            .any(|ro| ro.starts_with(&self.target));
        if !beneath && self.umask == 0 {
            return Ok((file, Vec::new()));
        }
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            let unreadable = |e: std::io::Error| RunnerError::from_io(OP, "the spooled archive", e);
            let list = self.walk(&mut file, beneath).map_err(|e| match e {
                WalkError::Refused(e) => e,
                WalkError::Io(e) => unreadable(e),
            })?;
            file.rewind().map_err(unreadable)?;
            Ok((file, list))
        })
        .await
        .map_err(|e| crate::error::join_error(OP, e))?
    }

    fn walk(&self, file: &mut std::fs::File, beneath: bool) -> Result<Vec<u8>, WalkError> {
        let mut list = Vec::new();
        for entry in tar::Archive::new(file).entries()? {
            let entry = entry?;
            let header = entry.header();
            if beneath {
                let landing = normalize_lexically(&self.target.join(entry.path()?));
                self.read_only
                    .check("upload_archive", &landing)
                    .map_err(WalkError::Refused)?;
            }
            let mode = header.mode()? & MODE_MASK;
            let kind = header.entry_type();
            if (kind.is_dir() || kind.is_file()) && mode & self.umask != 0 {
                list.extend_from_slice(format!("{mode:o}\0").as_bytes());
                list.extend_from_slice(&entry.path_bytes());
                list.push(0);
            }
        }
        Ok(list)
    }
}

/// Why [`Inspection::walk`] stopped.
enum WalkError {
    Refused(RunnerError),
    Io(std::io::Error),
}

impl From<std::io::Error> for WalkError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// A tar of directories (mode, path), for creating the workspace and state dirs.
pub(crate) fn directories_tar(
    dirs: &[(&str, u32)],
    (uid, gid): (u32, u32),
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode) in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(*mode);
        header.set_mtime(now_secs());
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        builder.append_data(&mut header, path, std::io::empty())?;
    }
    builder.into_inner()
}

/// `archive`, a directory's (entries named `./…`), with its entries named
/// relative to the directory: rewritten entry by entry on a blocking thread
/// as the chunks arrive ([`chunk_stream`]), so memory stays bounded whatever
/// the archive's size. Dropping the stream stops the rewrite at its next
/// chunk.
fn rebased(
    operation: &'static str,
    subject: String,
    archive: RunnerByteStream,
) -> RunnerByteStream {
    // The stream's own error, kept whole (the rewrite sees an I/O error).
    let failed: Arc<Mutex<Option<RunnerError>>> = Arc::default();
    let slot = failed.clone();
    let chunks = archive.map(move |chunk| {
        chunk.map_err(|error| {
            let io = std::io::Error::other(error.message().to_owned());
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            io
        })
    });
    let mut reader = SyncIoBridge::new(StreamReader::new(chunks));
    chunk_stream(operation, move |writer| {
        rebase(&mut reader, writer).map_err(|e| {
            failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| RunnerError::from_io(operation, &subject, e))
        })
    })
}

/// Copies the archive of a directory (entries named `./…`) from `input` to
/// `output` with its entries relative to it (the `./` entry left out),
/// entry by entry.
fn rebase(input: impl Read, output: impl Write) -> std::io::Result<()> {
    let mut reader = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    builder.follow_symlinks(false);
    let strip = |path: &Path| -> PathBuf { path.components().skip(1).collect() };
    for entry in reader.entries()? {
        let mut entry = entry?;
        let path = strip(&entry.path()?);
        if path.as_os_str().is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        match header.entry_type() {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                builder.append_link(&mut header, &path, &target)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.map(|t| strip(&t)).unwrap_or_default();
                builder.append_link(&mut header, &path, &target)?;
            }
            _ => builder.append_data(&mut header, &path, &mut entry)?,
        }
    }
    builder.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_archives_are_rebased() {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind) in [
            ("d/", tar::EntryType::Directory),
            ("d/f", tar::EntryType::Regular),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(0);
            builder
                .append_data(&mut header, name, std::io::empty())
                .expect("entry");
        }
        let archive = builder.into_inner().expect("tar");
        let mut rebased = Vec::new();
        rebase(archive.as_slice(), &mut rebased).expect("rebase");
        let mut reader = tar::Archive::new(rebased.as_slice());
        let names: Vec<String> = reader
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["f".to_string()]);
    }

    #[test]
    fn stat_lines_parse() {
        let stat =
            parse_stat(PathBuf::from("a"), "a".into(), b"a1ff 7 1700000000", b"b").expect("stat");
        assert_eq!(stat.kind, RunnerFileKind::Symlink);
        assert_eq!(stat.symlink_target, Some(PathBuf::from("b")));
        assert_eq!(stat.mode, 0o777);
    }
}
