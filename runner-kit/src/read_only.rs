//! Paths of a session that the file API refuses to change.
//!
//! A provider builds one [`ReadOnlyPaths`] from the read-only manifest entries
//! and mounts of a session, keeps it in its session state (it serializes as a
//! JSON array of paths), and asks it before every file-API write. Commands are
//! not affected: a read-only entry only binds the file API.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use runner_api::{RunnerError, RunnerManifestEntry, RunnerResult, normalize_lexically};

/// Absolute paths (read-only manifest entries and mounts) under which the
/// file API refuses writes.
///
/// Paths are compared lexically, after folding `.` and `..`; pass the absolute
/// runner path an operation is about to touch (the one
/// [`RemoteWorkspace`](https://docs.rs/runner-stack) resolved, so a symlink into a
/// read-only path is seen through). Serialized as a JSON array of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReadOnlyPaths(Vec<PathBuf>);

impl ReadOnlyPaths {
    /// Read-only paths from absolute runner paths (a relative one is taken
    /// from `/`). Duplicates are kept once.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut out = Self::default();
        out.extend(paths);
        out
    }

    /// The targets of the entries with `writable: false`, joined onto the
    /// workspace `root` (an absolute runner path).
    pub fn from_manifest(root: &Path, entries: &[RunnerManifestEntry]) -> Self {
        Self::new(
            entries
                .iter()
                .filter(|entry| !entry.writable)
                .map(|entry| root.join(&entry.target)),
        )
    }

    /// The read-only paths, normalized.
    pub fn paths(&self) -> &[PathBuf] {
        &self.0
    }

    /// Whether no path is read-only.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The read-only path `path` is at or under, if any.
    fn covering(&self, path: &Path) -> Option<&PathBuf> {
        let path = normalize_lexically(path);
        self.0.iter().find(|ro| path.starts_with(ro))
    }

    /// The read-only path at, under or above `path`, if any: what removing or
    /// moving `path` would take along.
    fn touching(&self, path: &Path) -> Option<&PathBuf> {
        let path = normalize_lexically(path);
        self.0
            .iter()
            .find(|ro| path.starts_with(ro) || ro.starts_with(&path))
    }

    fn denied(operation: &str, path: &Path, ro: &Path) -> RunnerError {
        RunnerError::permission_denied(format!(
            "{operation} {}: {} is read-only",
            path.display(),
            ro.display()
        ))
    }

    /// Refuses a write at or under a read-only path (`write_file`,
    /// `make_dir`, the target of `upload_archive`).
    ///
    /// Errors: `PermissionDenied` "{operation} {path}: {read-only path} is
    /// read-only".
    pub fn check(&self, operation: &str, path: &Path) -> RunnerResult<()> {
        match self.covering(path) {
            Some(ro) => Err(Self::denied(operation, path, ro)),
            None => Ok(()),
        }
    }

    /// Refuses removing `path` when it is at, under or above a read-only path
    /// (removing a directory would take the read-only path with it).
    ///
    /// Errors: `PermissionDenied`, as [`check`](Self::check).
    pub fn check_removal(&self, operation: &str, path: &Path) -> RunnerResult<()> {
        match self.touching(path) {
            Some(ro) => Err(Self::denied(operation, path, ro)),
            None => Ok(()),
        }
    }

    /// Refuses a rename when either end is at, under or above a read-only
    /// path: the source would move a read-only path away, the destination
    /// would replace one.
    ///
    /// Errors: `PermissionDenied` "rename {path}: {read-only path} is
    /// read-only", naming the end that is refused.
    pub fn check_rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.check_removal("rename", from)?;
        self.check_removal("rename", to)
    }

    /// Refuses unpacking the tar `archive` into `target` when `target` is at
    /// or under a read-only path, or when an entry of the archive would land
    /// at or under one. The archive is only read when `target` lies above a
    /// read-only path.
    ///
    /// Errors: `PermissionDenied` naming the entry's path; `InvalidRequest`
    /// when the archive must be read and is not a tar archive.
    pub fn check_archive(
        &self,
        operation: &str,
        target: &Path,
        archive: &[u8],
    ) -> RunnerResult<()> {
        self.check(operation, target)?;
        let target = normalize_lexically(target);
        if !self.0.iter().any(|ro| ro.starts_with(&target)) {
            return Ok(());
        }
        let unreadable = |e: std::io::Error| {
            RunnerError::invalid_request(format!(
                "{operation} {}: the archive is not a readable tar archive: {e}",
                target.display()
            ))
        };
        let mut reader = tar::Archive::new(archive);
        for entry in reader.entries().map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let name = entry.path().map_err(unreadable)?;
            self.check(operation, &normalize_lexically(&target.join(&name)))?;
        }
        Ok(())
    }
}

impl Extend<PathBuf> for ReadOnlyPaths {
    fn extend<I: IntoIterator<Item = PathBuf>>(&mut self, paths: I) {
        for path in paths {
            let path = normalize_lexically(&path);
            if !self.0.contains(&path) {
                self.0.push(path);
            }
        }
    }
}

impl IntoIterator for ReadOnlyPaths {
    type Item = PathBuf;
    type IntoIter = std::vec::IntoIter<PathBuf>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<PathBuf> for ReadOnlyPaths {
    fn from_iter<I: IntoIterator<Item = PathBuf>>(paths: I) -> Self {
        Self::new(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;

    fn paths() -> ReadOnlyPaths {
        ReadOnlyPaths::new([PathBuf::from("/ws/ro"), PathBuf::from("/ws/data/./ref.txt")])
    }

    fn entry(target: &str, writable: bool) -> RunnerManifestEntry {
        RunnerManifestEntry {
            source: PathBuf::from("/src").join(target),
            target: PathBuf::from(target),
            writable,
        }
    }

    #[test]
    fn read_only_from_manifest_keeps_only_read_only_entries() {
        let ro = ReadOnlyPaths::from_manifest(
            Path::new("/ws"),
            &[
                entry("a", true),
                entry("b/c.txt", false),
                entry("./d", false),
            ],
        );
        assert_eq!(
            ro.paths(),
            &[PathBuf::from("/ws/b/c.txt"), PathBuf::from("/ws/d")]
        );
        assert!(ReadOnlyPaths::from_manifest(Path::new("/ws"), &[entry("a", true)]).is_empty());
    }

    #[test]
    fn read_only_check_refuses_at_and_under_with_the_path_in_the_message() {
        let ro = paths();
        let err = ro
            .check("write_file", Path::new("/ws/ro/x/y.txt"))
            .expect_err("under a read-only path");
        assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
        assert_eq!(
            err.message(),
            "write_file /ws/ro/x/y.txt: /ws/ro is read-only"
        );
        assert!(ro.check("make_dir", Path::new("/ws/ro")).is_err());
        assert!(
            ro.check("write_file", Path::new("/ws/data/ref.txt"))
                .is_err()
        );
        assert!(ro.check("write_file", Path::new("/ws/x/../ro/z")).is_err());
    }

    #[test]
    fn read_only_check_allows_siblings_prefixes_and_parents() {
        let ro = paths();
        for ok in [
            "/ws/rox",
            "/ws/data/other.txt",
            "/ws/data",
            "/ws",
            "/ws/ro/../w",
        ] {
            assert!(ro.check("write_file", Path::new(ok)).is_ok(), "{ok}");
        }
        assert!(
            ReadOnlyPaths::default()
                .check("write_file", Path::new("/"))
                .is_ok()
        );
    }

    #[test]
    fn read_only_removal_refuses_parents_of_read_only_paths() {
        let ro = paths();
        let err = ro
            .check_removal("remove", Path::new("/ws/data"))
            .expect_err("a parent of a read-only file");
        assert_eq!(
            err.message(),
            "remove /ws/data: /ws/data/ref.txt is read-only"
        );
        assert!(ro.check_removal("remove", Path::new("/ws/ro/a")).is_err());
        assert!(ro.check_removal("remove", Path::new("/ws/other")).is_ok());
    }

    #[test]
    fn read_only_rename_checks_both_ends() {
        let ro = paths();
        let from = ro
            .check_rename(Path::new("/ws/ro/a"), Path::new("/ws/b"))
            .expect_err("source under a read-only path");
        assert_eq!(from.message(), "rename /ws/ro/a: /ws/ro is read-only");
        let to = ro
            .check_rename(Path::new("/ws/b"), Path::new("/ws/data/ref.txt"))
            .expect_err("destination is a read-only file");
        assert_eq!(to.kind(), RunnerErrorKind::PermissionDenied);
        assert!(
            to.message().starts_with("rename /ws/data/ref.txt:"),
            "{}",
            to.message()
        );
        assert!(
            ro.check_rename(Path::new("/ws/data"), Path::new("/ws/e"))
                .is_err()
        );
        assert!(
            ro.check_rename(Path::new("/ws/b"), Path::new("/ws/c"))
                .is_ok()
        );
    }

    fn tar_of(names: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for name in names {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &b"x"[..])
                .expect("append");
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn read_only_archive_entries_are_checked_where_they_land() {
        let ro = paths();
        let into_ro = tar_of(&["ro/new.txt"]);
        let err = ro
            .check_archive("upload_archive", Path::new("/ws"), &into_ro)
            .expect_err("an entry under a read-only path");
        assert_eq!(
            err.message(),
            "upload_archive /ws/ro/new.txt: /ws/ro is read-only"
        );
        let beside = tar_of(&["other/new.txt", "data/other.txt"]);
        assert!(
            ro.check_archive("upload_archive", Path::new("/ws"), &beside)
                .is_ok()
        );
        assert!(
            ro.check_archive("upload_archive", Path::new("/ws/ro"), &beside)
                .is_err()
        );
        // Not read when the target is unrelated to every read-only path.
        assert!(
            ro.check_archive("upload_archive", Path::new("/elsewhere"), b"not a tar")
                .is_ok()
        );
    }

    #[test]
    fn read_only_serializes_as_a_plain_array() {
        let ro = paths();
        let json = serde_json::to_value(&ro).expect("serialize");
        assert_eq!(json, serde_json::json!(["/ws/ro", "/ws/data/ref.txt"]));
        let back: ReadOnlyPaths = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, ro);
    }
}
