//! Applying a destination's manifest to a new workspace: `provider_native`
//! mounts (host directories) and entries copied from the host.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerManifest, RunnerManifestEntry, RunnerMount, RunnerResult,
    validate_relative_path,
};

use crate::files::{
    Mount, ReadOnlyPath, Workspace, create_dir_all, mode_bits, normalize_relative, or_dot,
};

/// A `provider_native` mount of the destination, as the provider applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountSpec {
    /// The mount's name.
    pub(crate) name: String,
    /// Where it appears in the workspace (relative).
    pub(crate) path: PathBuf,
    /// Writes through the file API are refused.
    pub(crate) read_only: bool,
    /// The host directory; `None` for a mount without a URI, which is a plain
    /// directory of the workspace.
    pub(crate) host: Option<PathBuf>,
}

/// The host path a `provider_native` URI names: a plain path or a `file://`
/// URL; relative paths resolve against the current directory. Empty: none.
fn host_path(uri: &str) -> io::Result<Option<PathBuf>> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() {
        return Ok(None);
    }
    std::path::absolute(path).map(Some)
}

impl MountSpec {
    /// The spec of a manifest mount (kinds were checked by `validate_manifest`).
    pub(crate) fn from_mount(mount: &RunnerMount) -> RunnerResult<Self> {
        let host = host_path(&mount.intent.uri).map_err(|e| {
            RunnerError::invalid_request(format!(
                "mount {:?}: bad host path {:?}: {e}",
                mount.name, mount.intent.uri
            ))
        })?;
        Ok(Self {
            name: mount.name.clone(),
            path: mount.path.clone(),
            read_only: mount.read_only,
            host,
        })
    }

    /// The host directory, canonical, checked to exist.
    ///
    /// Errors: `NotFound` naming the mount, `InvalidRequest` (not a directory).
    fn checked_host(&self) -> RunnerResult<Option<PathBuf>> {
        let Some(host) = &self.host else {
            return Ok(None);
        };
        let canonical = fs::canonicalize(host).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RunnerError::not_found(format!(
                    "mount {:?}: host path {} not found",
                    self.name,
                    host.display()
                ))
            } else {
                RunnerError::from_io(&format!("mount {:?}", self.name), host.display(), e)
            }
        })?;
        if !canonical.is_dir() {
            return Err(RunnerError::invalid_request(format!(
                "mount {:?}: host path {} is not a directory",
                self.name,
                host.display()
            )));
        }
        Ok(Some(canonical))
    }
}

/// Checks that everything the manifest names on the host exists.
///
/// Errors: `NotFound` naming the entry or mount, `InvalidRequest`.
pub(crate) fn check_sources(manifest: &RunnerManifest) -> RunnerResult<()> {
    for entry in &manifest.entries {
        if let Err(e) = fs::metadata(&entry.source) {
            return Err(source_error(entry, e));
        }
    }
    for mount in &manifest.mounts {
        MountSpec::from_mount(mount)?.checked_host()?;
    }
    Ok(())
}

fn source_error(entry: &RunnerManifestEntry, error: io::Error) -> RunnerError {
    if error.kind() == io::ErrorKind::NotFound {
        RunnerError::not_found(format!(
            "manifest entry {}: source not found",
            entry.source.display()
        ))
        .with_source(error)
    } else {
        RunnerError::from_io("manifest entry", entry.source.display(), error)
    }
}

/// Places every mount in the workspace.
///
/// A mount with a host directory becomes a symlink at its path (so commands
/// see the host directory) and a separate cap-std handle (so file operations
/// under it resolve beneath the host directory). A stale symlink or an empty
/// directory at the path is replaced; anything else is `AlreadyExists`.
pub(crate) fn apply_mounts(ws: &mut Workspace, specs: &[MountSpec]) -> RunnerResult<()> {
    for spec in specs {
        let what = format!("mount {:?}", spec.name);
        validate_relative_path(&what, &spec.path)?;
        let rel = normalize_relative(&spec.path).unwrap_or_default();
        let io = |e| ws.io(&what, &spec.path, e);
        let Some(host) = spec.checked_host()? else {
            create_dir_all(&ws.dir, &rel).map_err(io)?;
            if spec.read_only {
                ws.add_read_only([ReadOnlyPath {
                    rel,
                    reason: what.clone(),
                }]);
            }
            continue;
        };
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
        {
            create_dir_all(&ws.dir, parent).map_err(io)?;
        }
        match ws.dir.symlink_metadata(&rel) {
            Ok(meta) if meta.is_symlink() => ws.dir.remove_file(&rel).map_err(io)?,
            Ok(meta) if meta.is_dir() => ws.dir.remove_dir(&rel).map_err(|e| {
                RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "{what}: {} already exists in the workspace and is not empty",
                        spec.path.display()
                    ),
                )
                .with_source(e)
            })?,
            Ok(_) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "{what}: a file already exists at {} in the workspace",
                        spec.path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        ws.dir.symlink_contents(&host, &rel).map_err(io)?;
        let dir = Dir::open_ambient_dir(&host, cap_std::ambient_authority())
            .map_err(|e| RunnerError::from_io(&what, host.display(), e))?;
        tracing::debug!(mount = %spec.name, path = %rel.display(), "mounted a host directory");
        ws.add_mount(Mount {
            name: spec.name.clone(),
            rel,
            host,
            dir,
            read_only: spec.read_only,
        });
    }
    Ok(())
}

/// Copies the manifest's entries into the workspace; entries with
/// `writable: false` are made read-only on disk and refused by the file API.
///
/// Errors: `NotFound` (a source is missing), I/O errors by kind.
pub(crate) fn copy_entries(ws: &Workspace, entries: &[RunnerManifestEntry]) -> RunnerResult<()> {
    for entry in entries {
        let what = format!("manifest entry {}", entry.source.display());
        validate_relative_path(&what, &entry.target)?;
        let meta = fs::metadata(&entry.source).map_err(|e| source_error(entry, e))?;
        let resolved = ws.resolve(&what, &entry.target)?;
        let dir = resolved.dir(ws);
        let io = |e| ws.io(&what, &entry.target, e);
        if let Some(parent) = resolved.rel.parent()
            && !parent.as_os_str().is_empty()
        {
            create_dir_all(dir, parent).map_err(io)?;
        }
        copy_host(&entry.source, &meta, dir, &resolved.rel).map_err(io)?;
    }
    protect_entries(ws, entries)
}

/// Makes the entries with `writable: false`, already in the workspace,
/// read-only: on disk (write bits cleared) and in the file API, which from
/// now on refuses writes at, under and above them, resolved at the point of
/// use (a symlink made later does not lead around them). Entries placed by
/// someone else (a provider that copied them through the file API) get the
/// same protection as copied ones.
///
/// Errors: `InvalidRequest` for a target outside the workspace, `NotFound`
/// for a target that is missing, I/O errors by kind.
pub(crate) fn protect_entries(ws: &Workspace, entries: &[RunnerManifestEntry]) -> RunnerResult<()> {
    let mut read_only = Vec::new();
    for entry in entries.iter().filter(|entry| !entry.writable) {
        let what = format!("manifest entry {}", entry.target.display());
        validate_relative_path(&what, &entry.target)?;
        let resolved = ws.resolve(&what, &entry.target)?;
        let dir = resolved.dir(ws);
        make_read_only(dir, &resolved.rel).map_err(|e| ws.io(&what, &entry.target, e))?;
        read_only.push(read_only_entry(entry, resolved.ws_rel.clone()));
    }
    ws.add_read_only(read_only);
    Ok(())
}

/// The read-only path that `entry` (with `writable: false`) makes at `rel`.
fn read_only_entry(entry: &RunnerManifestEntry, rel: PathBuf) -> ReadOnlyPath {
    ReadOnlyPath {
        rel,
        reason: format!("manifest entry {}", entry.target.display()),
    }
}

/// The read-only paths of the entries with `writable: false`, as
/// [`copy_entries`] records them: a resumed session, which does not copy the
/// entries again, keeps them read-only.
pub(crate) fn read_only_entries(entries: &[RunnerManifestEntry]) -> Vec<ReadOnlyPath> {
    entries
        .iter()
        .filter(|entry| !entry.writable)
        .filter_map(|entry| Some(read_only_entry(entry, normalize_relative(&entry.target)?)))
        .collect()
}

/// Removes a non-directory at `rel` so a new entry replaces it.
fn clear(dir: &Dir, rel: &Path) -> io::Result<()> {
    match dir.symlink_metadata(rel) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "a directory is in the way",
        )),
        Ok(_) => dir.remove_file(rel),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a host file, symlink (verbatim, as `cp -a`) or directory tree to
/// `rel` beneath `dir`, keeping permission bits.
fn copy_host(source: &Path, meta: &fs::Metadata, dir: &Dir, rel: &Path) -> io::Result<()> {
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        if !rel.as_os_str().is_empty() {
            match dir.symlink_metadata(rel) {
                Ok(existing) if existing.is_dir() => {
                    // A read-only copy from an earlier session must take new files.
                    dir.set_permissions(rel, Permissions::from_mode(mode_bits(&existing) | 0o700))?;
                }
                Ok(_) => dir.remove_file(rel)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            create_dir_all(dir, rel)?;
        }
        let mut children = fs::read_dir(source)?.collect::<io::Result<Vec<_>>>()?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let child_meta = fs::symlink_metadata(child.path())?;
            copy_host(
                &child.path(),
                &child_meta,
                dir,
                &rel.join(child.file_name()),
            )?;
        }
        if !rel.as_os_str().is_empty() {
            dir.set_permissions(rel, Permissions::from_mode(mode))?;
        }
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(source)?;
        clear(dir, rel)?;
        dir.symlink_contents(&target, rel)?;
    } else if meta.is_file() {
        clear(dir, rel)?;
        let mut from = fs::File::open(source)?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        let mut to = dir.open_with(rel, &options)?;
        io::copy(&mut from, &mut to)?;
        to.set_permissions(Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Removes the write bits of a tree (symlinks are left alone).
fn make_read_only(dir: &Dir, rel: &Path) -> io::Result<()> {
    let meta = dir.symlink_metadata(or_dot(rel))?;
    if meta.is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        let sub = dir.open_dir(or_dot(rel))?;
        for entry in sub.entries()? {
            make_read_only(&sub, Path::new(&entry?.file_name()))?;
        }
    }
    dir.set_permissions(
        or_dot(rel),
        Permissions::from_mode(mode_bits(&meta) & !0o222),
    )
}
