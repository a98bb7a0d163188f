//! Files through the archive API: contents travel as tar archives
//! (`GET`/`PUT /containers/{id}/archive`); operations on names (rename,
//! remove, list, stat, canonicalize) run a short `sh` helper in the container.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest, RunnerFileReadResult,
    RunnerFileStat, RunnerFileWriteRequest, RunnerResult, reject_nul_path,
};

use crate::exec::{ExecContext, ScriptOutput, absolute};

/// Exit codes of the helper scripts.
const NOT_FOUND: i64 = 3;
const ALREADY_EXISTS: i64 = 4;
const INVALID: i64 = 5;
const DENIED: i64 = 6;

/// Symlinks followed by `read_file` before giving up.
const MAX_LINKS: usize = 40;

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

const MAKE_DIR: &str = r#"
p=$1
if [ -e "$p" ] || [ -L "$p" ]; then
  [ -d "$p" ] && exit 0
  exit 4
fi
mkdir -p -- "$p" 2>/dev/null && exit 0
q=$p
while [ "$q" != / ] && [ -n "$q" ]; do
  q=$(dirname -- "$q")
  if [ -e "$q" ] && [ ! -d "$q" ]; then exit 4; fi
done
exit 6
"#;

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

/// `$1` temp file, `$2` target, `$3` non-empty when the mode was given.
const FINISH_WRITE: &str = r#"
if [ -d "$2" ]; then rm -f -- "$1"; exit 5; fi
if [ -z "$3" ] && [ -e "$2" ]; then
  m=$(stat -L -c %a -- "$2") && chmod "$m" -- "$1"
fi
mv -f -- "$1" "$2" || { rm -f -- "$1"; exit 6; }
"#;

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

    /// Downloads `path` as a tar archive (Docker names entries after the last
    /// component of `path`).
    async fn download(&self, operation: &str, path: &Path) -> RunnerResult<Vec<u8>> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(&arg(path))
            .build();
        let mut stream = self
            .daemon
            .docker
            .download_from_container(&self.container, Some(options));
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.daemon.error(operation, &arg(path), e))?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Unpacks `tar` into the existing directory `dir`.
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

    /// `read_file`: downloads the file (following symlinks) and cuts the range.
    pub(crate) async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        const OP: &str = "read_file";
        let mut path = self.resolve(OP, &request.path)?;
        for _ in 0..MAX_LINKS {
            let archive = self.download(OP, &path).await?;
            let mut reader = tar::Archive::new(archive.as_slice());
            let entries = reader
                .entries()
                .map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
            let Some(entry) = entries.into_iter().next() else {
                return Err(RunnerError::not_found(format!(
                    "{OP} {}: the archive is empty",
                    path.display()
                )));
            };
            let mut entry = entry.map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    return Err(RunnerError::invalid_request(format!(
                        "{OP} {}: is a directory",
                        request.path.display()
                    )));
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| RunnerError::from_io(OP, path.display(), e))?
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                    path = runner_api::normalize_lexically(&parent.join(target));
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut contents = Vec::new();
                    entry
                        .read_to_end(&mut contents)
                        .map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
                    let size = contents.len() as u64;
                    let start = request.offset.unwrap_or(0).min(size) as usize;
                    let end = match request.limit {
                        Some(limit) => start.saturating_add(limit as usize).min(contents.len()),
                        None => contents.len(),
                    };
                    let contents = contents[start..end].to_vec();
                    return Ok(RunnerFileReadResult {
                        path: request.path,
                        contents,
                        size,
                    });
                }
                other => {
                    return Err(RunnerError::invalid_request(format!(
                        "{OP} {}: not a regular file ({other:?})",
                        request.path.display()
                    )));
                }
            }
        }
        Err(RunnerError::invalid_request(format!(
            "{OP} {}: too many levels of symbolic links",
            request.path.display()
        )))
    }

    /// `write_file`: uploads a temp file next to the target and renames it
    /// into place. While the container is paused no helper can run, so the
    /// file is unpacked in place (no process can observe it until resume).
    pub(crate) async fn write_file(
        &self,
        request: RunnerFileWriteRequest,
        paused: bool,
    ) -> RunnerResult<()> {
        const OP: &str = "write_file";
        let path = self.resolve(OP, &request.path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(RunnerError::invalid_request(format!(
                "{OP} {}: not a file path",
                request.path.display()
            )));
        };
        let name = name.to_string_lossy().into_owned();
        // Paused: unpacked from / so that Docker creates missing parents.
        let (upload_dir, entry_name) = if paused {
            let relative = path.strip_prefix("/").unwrap_or(&path);
            (Path::new("/"), relative.display().to_string())
        } else {
            let temp = format!(
                ".{name}.runner-{}.tmp",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            (parent, temp)
        };
        let mode = match (request.mode, paused) {
            (Some(mode), _) => mode & 0o7777,
            (None, true) => self.existing_mode(&path).await.unwrap_or(0o644),
            (None, false) => 0o644,
        };
        // Built again for the rare retry rather than copied for every write.
        let tar = || {
            single_file_tar(&entry_name, &request.contents, mode, self.file_owner())
                .map_err(|e| RunnerError::from_io(OP, path.display(), e))
        };
        match self.upload(OP, upload_dir, tar()?).await {
            Ok(()) => {}
            Err(e) if e.kind() == RunnerErrorKind::NotFound && !paused => {
                self.run_helper(OP, parent, MAKE_DIR, &[&arg(parent)])
                    .await?;
                self.upload(OP, upload_dir, tar()?).await?;
            }
            Err(e) => return Err(e),
        }
        if paused {
            return Ok(());
        }
        let temp = parent.join(&entry_name);
        let mode_given = if request.mode.is_some() { "1" } else { "" };
        self.run_helper(
            OP,
            &request.path,
            FINISH_WRITE,
            &[&arg(&temp), &arg(&path), mode_given],
        )
        .await
        .map(|_| ())
    }

    /// The permission bits of an existing file, through the archive stat.
    async fn existing_mode(&self, path: &Path) -> Option<u32> {
        let options = bollard::query_parameters::ContainerArchiveInfoOptionsBuilder::new()
            .path(&arg(path))
            .build();
        let info = self
            .daemon
            .docker
            .get_container_archive_info(&self.container, Some(options))
            .await
            .ok()?;
        Some(info.file_mode & 0o777)
    }

    /// `stat` (the link itself for a symlink).
    pub(crate) async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        const OP: &str = "stat";
        let abs = self.resolve(OP, path)?;
        let out = self.run_helper(OP, path, STAT, &[&arg(&abs)]).await?;
        let mut fields = out.split(|b| *b == 0);
        let line = fields.next().unwrap_or_default();
        let link = fields.next().unwrap_or_default();
        parse_stat(path.to_path_buf(), name_of(&abs), line, link).ok_or_else(|| {
            RunnerError::provider(format!(
                "{OP} {}: unexpected helper output {:?}",
                path.display(),
                String::from_utf8_lossy(&out)
            ))
        })
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

    /// `upload_archive`: checks the archive with
    /// [`runner_api::archive::check_upload`], prepares the target and checks
    /// that none of the directories its entries are written beneath is a
    /// symlink of the container leading out of `target`
    /// ([`runner_api::archive::CONFINED_PARENTS_SCRIPT`]), then unpacks it
    /// there.
    pub(crate) async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        const OP: &str = "upload_archive";
        let abs = self.resolve(OP, target)?;
        let target_arg = arg(&abs);
        // The target is created even when the archive is refused.
        let checked = runner_api::archive::check_upload(OP, target, &archive);
        let runs = match &checked {
            Ok(checked) => checked.confined_parents_runs(OP, target, |p| p.len() + 1)?,
            Err(_) => vec![Vec::new()],
        };
        for run in runs {
            let args: Vec<&str> = std::iter::once(target_arg.as_str()).chain(run).collect();
            let out = self
                .script(OP, runner_api::archive::CONFINED_PARENTS_SCRIPT, &args)
                .await?;
            if let Some(refused) = runner_api::archive::confined_parents_error(
                OP,
                target,
                i32::try_from(out.code).unwrap_or(-1),
                &out.stdout,
                out.stderr.as_bytes(),
            ) {
                return Err(refused);
            }
            check(OP, target, out)?;
        }
        checked?;
        self.upload(OP, &abs, archive).await
    }

    /// `download_archive`: a tar of a directory's contents (names relative to
    /// it) or of a single file.
    pub(crate) async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        const OP: &str = "download_archive";
        let abs = self.resolve(OP, path)?;
        let archive = self.download(OP, &abs).await?;
        rebase(&archive).map_err(|e| RunnerError::from_io(OP, path.display(), e))
    }
}

/// A tar holding one regular file.
pub(crate) fn single_file_tar(
    name: &str,
    contents: &[u8],
    mode: u32,
    (uid, gid): (u64, u64),
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_mtime(now_secs());
    header.set_uid(uid);
    header.set_gid(gid);
    builder.append_data(&mut header, name, contents)?;
    builder.into_inner()
}

/// A tar of directories (mode, path), for creating the workspace and state dirs.
pub(crate) fn directories_tar(
    dirs: &[(&str, u32)],
    (uid, gid): (u64, u64),
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode) in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(*mode);
        header.set_mtime(now_secs());
        header.set_uid(uid);
        header.set_gid(gid);
        builder.append_data(&mut header, path, std::io::empty())?;
    }
    builder.into_inner()
}

/// Rewrites Docker's archive of `path` (entries named `<base>/…`) so that a
/// directory's entries are relative to it; a single file keeps its name.
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
