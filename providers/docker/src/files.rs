//! Files through execs run as the session user: contents travel on an exec's
//! stdin and stdout (`dd` reads a window of the file, `cat` writes a temp file
//! renamed into place, `tar` packs and unpacks archives), and operations on
//! names (rename, remove, list, stat, canonicalize) run a short `sh` helper.
//!
//! Every path is resolved by the kernel in the container when the helper
//! opens it, with the session user's rights: a symlink to a file the user
//! cannot read fails like it would for a command, and no name is checked by
//! one process and then used by another. Only session setup (the workspace,
//! the state directory and the manifest entries, chosen by the embedder)
//! goes through the archive API, which Docker applies as root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use futures_util::StreamExt;
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest, RunnerFileReadResult,
    RunnerFileStat, RunnerFileWriteRequest, RunnerResult, reject_nul_path,
};
use runner_kit::archive::{
    CONFINED_PARENTS_SCRIPT, MODE_MASK, UploadPolicy, confined_parents_error, sanitize_upload,
};
use tokio::io::AsyncWriteExt;

use crate::exec::{ExecContext, ScriptOutput, Started, absolute, keep_stderr};

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

/// `$1` temp file, `$2` target, `$3` the mode in octal (empty: the existing
/// file's permission bits, else 644), `$4` `1` when the session user is root
/// (an existing file keeps its owner); the contents come on stdin. Creates
/// missing parents, refuses an existing target the session user may not
/// write (the rename would need only the directory's permission), writes the
/// temp file (mode 0600 until it is complete) next to the target and renames
/// it into place, all as the session user.
const WRITE: &str = concat!(
    make_dir_function!(),
    r#"
t=$1
p=$2
m=$3
make_dir "$(dirname -- "$p")" || exit $?
[ -d "$p" ] && exit 5
o=
if [ -e "$p" ]; then
  [ -w "$p" ] || exit 6
  s=$(stat -L -c '%a %u:%g' -- "$p") || exit 6
  [ -n "$m" ] || m=$(printf %o $((0${s%% *} & 0777)))
  [ "$4" = 1 ] && o=${s#* }
fi
[ -n "$m" ] || m=644
( umask 077 && : > "$t" ) 2>/dev/null || exit 6
if ! cat > "$t"; then rm -f -- "$t"; exit 8; fi
if { [ -z "$o" ] || chown -- "$o" "$t"; } && chmod "$m" -- "$t" && mv -f -- "$t" "$p"; then
  exit 0
fi
rm -f -- "$t"
exit 6
"#
);

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
const WRITE_AT: &str = concat!(
    make_dir_function!(),
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
);

/// `$1` a directory (its contents, named `./…`) or any other path (that one
/// entry, a symlink as itself), as a tar on stdout, packed by the session user.
const DOWNLOAD: &str = r#"
p=$1
[ -e "$p" ] || [ -L "$p" ] || exit 3
if [ -d "$p" ] && [ ! -L "$p" ]; then
  cd -- "$p" || exit 6
  tar -c -f - . || exit 6
else
  cd -- "$(dirname -- "$p")" || exit 6
  tar -c -f - -- "$(basename -- "$p")" || exit 6
fi
"#;

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
    let path = path.display();
    let kind = match out.code {
        0 => return Ok(out.stdout),
        NOT_FOUND => RunnerErrorKind::NotFound,
        ALREADY_EXISTS => RunnerErrorKind::AlreadyExists,
        INVALID => RunnerErrorKind::InvalidRequest,
        DENIED => RunnerErrorKind::PermissionDenied,
        _ => RunnerErrorKind::Provider,
    };
    let reason = match out.code {
        NOT_FOUND => "no such file or directory".to_string(),
        ALREADY_EXISTS => "already exists (or is a non-empty directory)".to_string(),
        INVALID => {
            "is a directory, or not a directory, where the operation needs the other".to_string()
        }
        _ if out.stderr.is_empty() => format!("failed with exit {}", out.code),
        _ => format!("failed with exit {}: {}", out.code, out.stderr),
    };
    Err(RunnerError::new(
        kind,
        format!("{operation} {path}: {reason}"),
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

    /// `read_file`: `READ` as the session user; the window comes from
    /// [`runner_api::read_window`] once the helper has the file open and
    /// reported its size, and `dd` copies only that window.
    pub(crate) async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        const OP: &str = "read_file";
        runner_api::check_read_request(OP, &request)?;
        let path = self.resolve(OP, &request.path)?;
        let shown = request.path.display().to_string();
        let Started {
            id,
            mut output,
            input: mut pipe,
        } = self.start_script(OP, &READ, &[&arg(&path)], true).await?;
        // Before the window is known: the bytes of the size line so far.
        let mut header = Vec::new();
        let mut opened: Option<(u64, u64)> = None;
        let mut contents = Vec::new();
        let mut stderr = Vec::new();
        while let Some(item) = output.next().await {
            let message = match item.map_err(|e| self.daemon.error(OP, &shown, e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => message,
                LogOutput::StdErr { message } => {
                    keep_stderr(&mut stderr, &message);
                    continue;
                }
                LogOutput::StdIn { .. } => continue,
            };
            let data = match opened {
                Some(_) => &message[..],
                None => {
                    header.extend_from_slice(&message);
                    let Some(newline) = header.iter().position(|b| *b == b'\n') else {
                        if header.len() > 32 {
                            return Err(unexpected(OP, &shown, &header));
                        }
                        continue;
                    };
                    let size: u64 = std::str::from_utf8(&header[..newline])
                        .ok()
                        .and_then(|text| text.trim().parse().ok())
                        .ok_or_else(|| unexpected(OP, &shown, &header))?;
                    // On an error the stream is dropped: the helper's `read` ends.
                    let window = runner_api::read_window(OP, &request, size)?;
                    let ask = format!("{} {}\n", window.offset, window.len);
                    pipe.write_all(ask.as_bytes())
                        .await
                        .and(pipe.shutdown().await)
                        .map_err(|e| RunnerError::from_io(OP, &shown, e))?;
                    opened = Some((size, window.len));
                    &header[newline + 1..]
                }
            };
            if let Some((_, len)) = opened {
                let room = usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(contents.len());
                contents.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        let code = self.exit_code(OP, &id).await?;
        let stderr = String::from_utf8_lossy(&stderr);
        match (code, opened) {
            (0, Some((size, _))) => Ok(RunnerFileReadResult {
                path: request.path,
                contents,
                size,
            }),
            (NOT_FOUND, _) => Err(RunnerError::not_found(format!(
                "{OP} {shown}: no such file"
            ))),
            (INVALID, _) => Err(RunnerError::invalid_request(format!(
                "{OP} {shown}: is a directory"
            ))),
            (DENIED, _) => Err(RunnerError::permission_denied(format!(
                "{OP} {shown}: the session user may not read it"
            ))),
            (NOT_REGULAR, _) => Err(RunnerError::invalid_request(format!(
                "{OP} {shown}: not a regular file (a FIFO, socket or device)"
            ))),
            (OPEN_BLOCKED, None) => Err(RunnerError::invalid_request(format!(
                "{OP} {shown}: opening it blocked for {} s, so it is not a regular file",
                OPEN_TENTHS / 10
            ))),
            _ => Err(RunnerError::provider(format!(
                "{OP} {shown}: the read helper failed with exit {code}: {}",
                stderr.trim()
            ))),
        }
    }

    /// `write_file`: `WRITE` (or `WRITE_AT` for a write at an offset) as
    /// the session user, the contents on its stdin.
    pub(crate) async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let path = self.resolve(OP, &request.path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(RunnerError::invalid_request(format!(
                "{OP} {}: not a file path",
                request.path.display()
            )));
        };
        let mode = request
            .mode
            .map(|mode| format!("{:o}", mode & MODE_MASK))
            .unwrap_or_default();
        if let Some(offset) = request.offset {
            return self.write_at(&request, &path, offset, &mode).await;
        }
        let temp = parent.join(format!(
            ".{}.runner-{}.tmp",
            name.to_string_lossy(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let root = if self.file_owner().0 == 0 { "1" } else { "0" };
        let out = self
            .script_with_input(
                OP,
                WRITE,
                &[&arg(&temp), &arg(&path), &mode, root],
                &request.contents,
            )
            .await?;
        check(OP, &request.path, out).map(|_| ())
    }

    /// `write_file` at `offset`: `WRITE_AT`.
    async fn write_at(
        &self,
        request: &RunnerFileWriteRequest,
        path: &Path,
        offset: u64,
        mode: &str,
    ) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let shown = request.path.display();
        let past_end = |size: &str| {
            RunnerError::invalid_request(format!(
                "{OP} {shown}: offset {offset} lies past the end of the file (size {size}); \
                 a write at an offset may patch or append, not leave a hole"
            ))
        };
        // No file is larger, and the helper's shell compares signed numbers.
        if i64::try_from(offset).is_err() {
            return Err(past_end(&format!("at most {}", i64::MAX)));
        }
        let out = self
            .script_with_input(
                OP,
                WRITE_AT,
                &[&arg(path), &offset.to_string(), mode],
                &request.contents,
            )
            .await?;
        match out.code {
            PAST_END => {
                let size = String::from_utf8_lossy(&out.stdout);
                Err(match size.trim() {
                    "missing" => RunnerError::invalid_request(format!(
                        "{OP} {shown}: offset {offset} of a missing file (size 0); only offset \
                         0 creates a file"
                    )),
                    size => past_end(size),
                })
            }
            NOT_REGULAR => Err(RunnerError::invalid_request(format!(
                "{OP} {shown}: not a regular file (a FIFO, socket or device)"
            ))),
            DENIED => Err(RunnerError::permission_denied(format!(
                "{OP} {shown}: the session user may not create it, open it for reading and \
                 writing, or set its mode"
            ))),
            _ => check(OP, &request.path, out).map(|_| ()),
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
            .ok_or_else(|| unexpected(OP, &path.display().to_string(), &out))
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

    /// `upload_archive`: rewrites the archive with
    /// [`runner_kit::archive::sanitize_upload`] (modes masked, the session
    /// user as owner, at most `max_upload_bytes`), prepares the target and
    /// checks that none of the directories its entries are written beneath is
    /// a symlink of the container leading out of `target`
    /// ([`CONFINED_PARENTS_SCRIPT`]), and unpacks the rewritten archive with
    /// `tar` as the session user in the same exec as the last check.
    pub(crate) async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        let abs = self.resolve(OP, target)?;
        let target_arg = arg(&abs);
        let policy = UploadPolicy {
            owner: Some(self.file_owner()),
            max_unpacked_bytes: self.max_upload_bytes,
        };
        // The target is created even when the archive is refused.
        let sanitized = sanitize_upload(OP, target, &archive, &policy);
        drop(archive);
        let runs = match &sanitized {
            Ok(clean) => clean
                .check
                .confined_parents_runs(OP, target, |p| p.len() + 1)?,
            Err(_) => vec![Vec::new()],
        };
        let last = runs.len() - 1;
        for (i, run) in runs.into_iter().enumerate() {
            let args: Vec<&str> = std::iter::once(target_arg.as_str()).chain(run).collect();
            let out = match &sanitized {
                Ok(clean) if i == last => {
                    self.script_with_input(OP, &UNPACK, &args, &clean.archive)
                        .await?
                }
                _ => self.script(OP, CONFINED_PARENTS_SCRIPT, &args).await?,
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
        self.restore_modes(target, &target_arg, &sanitized?.archive)
            .await
    }

    /// A `tar` run by a user other than root creates entries with their
    /// modes less the umask (busybox has no `--same-permissions`): the
    /// entries whose masked mode the umask cut get it back, as the session
    /// user, in one more exec (only then).
    async fn restore_modes(
        &self,
        target: &Path,
        target_arg: &str,
        archive: &[u8],
    ) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        let umask = self.umask();
        if self.file_owner().0 == 0 || umask == 0 {
            return Ok(());
        }
        let list =
            cut_modes(archive, umask).map_err(|e| RunnerError::from_io(OP, target.display(), e))?;
        if list.is_empty() {
            return Ok(());
        }
        let out = self
            .script_with_input(OP, RESTORE_MODES, &[target_arg], &list)
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

    /// `download_archive`: a tar of a directory's contents (names relative to
    /// it) or of a single file, packed by `tar` as the session user.
    pub(crate) async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        const OP: &str = "download_archive";
        let abs = self.resolve(OP, path)?;
        let archive = self.run_helper(OP, path, DOWNLOAD, &[&arg(&abs)]).await?;
        rebase(&archive).map_err(|e| RunnerError::from_io(OP, path.display(), e))
    }
}

/// `MODE\0NAME\0` for every directory and regular file of `archive` whose
/// mode has bits `umask` clears.
fn cut_modes(archive: &[u8], umask: u32) -> std::io::Result<Vec<u8>> {
    let mut list = Vec::new();
    for entry in tar::Archive::new(archive).entries()? {
        let entry = entry?;
        let header = entry.header();
        let mode = header.mode()? & MODE_MASK;
        let kind = header.entry_type();
        if (kind.is_dir() || kind.is_file()) && mode & umask != 0 {
            list.extend_from_slice(format!("{mode:o}\0").as_bytes());
            list.extend_from_slice(&entry.path_bytes());
            list.push(0);
        }
    }
    Ok(list)
}

/// A helper printed something this provider does not understand.
fn unexpected(operation: &str, path: &str, out: &[u8]) -> RunnerError {
    RunnerError::provider(format!(
        "{operation} {path}: unexpected helper output {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    ))
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

/// Rewrites the archive of a directory (entries named `./…`) so that its
/// entries are relative to it; a single file's archive keeps its name.
fn rebase(archive: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut reader = tar::Archive::new(archive);
    let mut entries = reader.entries()?.peekable();
    let first_is_dir = match entries.peek() {
        Some(Ok(entry)) => entry.header().entry_type() == tar::EntryType::Directory,
        _ => false,
    };
    if !first_is_dir {
        return Ok(archive.to_vec());
    }
    let strip = |path: &Path| -> PathBuf { path.components().skip(1).collect() };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for entry in entries {
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
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                builder.append_data(&mut header, &path, data.as_slice())?;
            }
        }
    }
    builder.into_inner()
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
        let rebased = rebase(&builder.into_inner().expect("tar")).expect("rebase");
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
