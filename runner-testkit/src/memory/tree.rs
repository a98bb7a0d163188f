//! The in-memory filesystem: directories and files with modes and mtimes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use runner_api::{
    RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileStat, RunnerResult, normalize_lexically,
};

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A path split into components below `/`.
pub(super) type Parts = Vec<String>;

/// A directory or a file.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Dir(Dir),
    File(File),
}

/// A directory: entries by name.
#[derive(Debug, Clone)]
pub(super) struct Dir {
    entries: BTreeMap<String, Node>,
    mode: u32,
    modified_ms: u64,
}

/// A regular file.
#[derive(Debug, Clone)]
pub(super) struct File {
    contents: Vec<u8>,
    mode: u32,
    modified_ms: u64,
}

impl Dir {
    fn new(mode: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            mode,
            modified_ms: now_ms(),
        }
    }

    fn touch(&mut self) {
        self.modified_ms = now_ms();
    }
}

impl Node {
    fn kind(&self) -> RunnerFileKind {
        match self {
            Node::Dir(_) => RunnerFileKind::Directory,
            Node::File(_) => RunnerFileKind::File,
        }
    }

    /// Metadata of this node as `path` with final component `name`.
    pub(super) fn stat(&self, path: &Path, name: &str) -> RunnerFileStat {
        let (size, mode, modified_ms) = match self {
            Node::Dir(d) => (0, d.mode, d.modified_ms),
            Node::File(f) => (f.contents.len() as u64, f.mode, f.modified_ms),
        };
        RunnerFileStat {
            path: path.to_path_buf(),
            name: name.to_string(),
            kind: self.kind(),
            size,
            mode,
            modified_ms: Some(modified_ms),
            symlink_target: None,
        }
    }

    /// A file node with `contents` and `mode`.
    pub(super) fn file(contents: Vec<u8>, mode: u32) -> Self {
        Node::File(File {
            contents,
            mode,
            modified_ms: now_ms(),
        })
    }

    /// An empty directory node.
    pub(super) fn dir(mode: u32) -> Self {
        Node::Dir(Dir::new(mode))
    }

    /// Adds `child` under `name` when this is a directory (manifest loading).
    pub(super) fn insert_child(&mut self, name: String, child: Node) {
        if let Node::Dir(d) = self {
            d.entries.insert(name, child);
        }
    }
}

/// Why a walk down the tree stopped.
enum Walk {
    Missing,
    NotDir,
}

fn walk_mut<'a>(
    mut current: &'a mut Dir,
    parts: &[String],
    create: bool,
) -> Result<&'a mut Dir, Walk> {
    for part in parts {
        if create && !current.entries.contains_key(part) {
            current
                .entries
                .insert(part.clone(), Node::Dir(Dir::new(0o755)));
            current.touch();
        }
        current = match current.entries.get_mut(part) {
            Some(Node::Dir(d)) => d,
            Some(Node::File(_)) => return Err(Walk::NotDir),
            None => return Err(Walk::Missing),
        };
    }
    Ok(current)
}

/// A whole filesystem, plus the paths that manifest entries made read-only.
#[derive(Debug, Clone)]
pub(super) struct Tree {
    root: Dir,
    read_only: Vec<Parts>,
}

fn err(kind: RunnerErrorKind, op: &str, path: &Path, what: &str) -> RunnerError {
    RunnerError::new(kind, format!("{op} {}: {what}", path.display()))
}

/// Splits `path` (absolute, or relative to `root`) into normalized components.
pub(super) fn split(op: &str, root: &Path, path: &Path) -> RunnerResult<Parts> {
    runner_api::reject_nul_path(op, path)?;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    normalize_lexically(&joined)
        .components()
        .skip(1)
        .map(|c| {
            c.as_os_str().to_str().map(str::to_string).ok_or_else(|| {
                RunnerError::invalid_request(format!(
                    "{op} {}: the path is not valid UTF-8",
                    path.display()
                ))
            })
        })
        .collect()
}

impl Tree {
    /// A filesystem holding the directory `workspace` (and its parents).
    pub(super) fn with_workspace(workspace: &[String]) -> Self {
        let mut root = Dir::new(0o755);
        let _ = walk_mut(&mut root, workspace, true);
        Self {
            root,
            read_only: Vec::new(),
        }
    }

    /// Marks `parts` (and everything below) read-only for the file API.
    pub(super) fn mark_read_only(&mut self, parts: Parts) {
        self.read_only.push(parts);
    }

    fn refuse_read_only(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
        ancestors_too: bool,
    ) -> RunnerResult<()> {
        let hit = self
            .read_only
            .iter()
            .any(|ro| parts.starts_with(ro) || (ancestors_too && ro.starts_with(parts)));
        if hit {
            return Err(err(
                RunnerErrorKind::PermissionDenied,
                op,
                path,
                "read-only manifest entry",
            ));
        }
        Ok(())
    }

    /// The node at `parts`.
    pub(super) fn get(&self, parts: &[String]) -> Option<&Node> {
        let mut current = &self.root;
        let (last, dirs) = parts.split_last()?;
        for part in dirs {
            match current.entries.get(part) {
                Some(Node::Dir(d)) => current = d,
                _ => return None,
            }
        }
        current.entries.get(last)
    }

    fn is_dir(&self, parts: &[String]) -> bool {
        parts.is_empty() || matches!(self.get(parts), Some(Node::Dir(_)))
    }

    fn missing_or_not_dir(&self, op: &str, path: &Path, parts: &[String]) -> RunnerError {
        // Distinguish a missing component from a file in the way.
        for n in 1..parts.len() {
            if let Some(Node::File(_)) = self.get(&parts[..n]) {
                return err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    path,
                    "a component of the path is not a directory",
                );
            }
        }
        err(
            RunnerErrorKind::NotFound,
            op,
            path,
            "no such file or directory",
        )
    }

    /// Reads `limit` bytes from `offset`; returns the bytes and the whole size.
    pub(super) fn read(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> RunnerResult<(Vec<u8>, u64)> {
        match self.get(parts) {
            Some(Node::File(f)) => {
                let size = f.contents.len() as u64;
                let start = offset.unwrap_or(0).min(size) as usize;
                let end = match limit {
                    Some(limit) => (start as u64).saturating_add(limit).min(size) as usize,
                    None => size as usize,
                };
                Ok((f.contents[start..end].to_vec(), size))
            }
            Some(Node::Dir(_)) => Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "is a directory",
            )),
            None if parts.is_empty() => Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "is a directory",
            )),
            None => Err(self.missing_or_not_dir(op, path, parts)),
        }
    }

    /// Replaces (or creates) the file at `parts`, creating parent directories.
    pub(super) fn write(
        &mut self,
        op: &str,
        path: &Path,
        parts: &[String],
        contents: Vec<u8>,
        mode: Option<u32>,
        offset: Option<u64>,
    ) -> RunnerResult<()> {
        self.refuse_read_only(op, path, parts, false)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "is a directory",
            ));
        };
        let parent = walk_mut(&mut self.root, dirs, true).map_err(|_| {
            err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "a component of the path is not a directory",
            )
        })?;
        let mode = match parent.entries.get(name) {
            Some(Node::Dir(_)) => {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    path,
                    "is a directory",
                ));
            }
            Some(Node::File(f)) => mode.unwrap_or(f.mode),
            None => mode.unwrap_or(0o644),
        };
        let contents = match offset {
            None => contents,
            Some(offset) => {
                let mut old = match parent.entries.get(name) {
                    Some(Node::File(f)) => f.contents.clone(),
                    _ => Vec::new(),
                };
                let at = usize::try_from(offset)
                    .ok()
                    .filter(|at| *at <= old.len())
                    .ok_or_else(|| {
                        err(
                            RunnerErrorKind::InvalidRequest,
                            op,
                            path,
                            &format!("offset {offset} lies past the end ({} bytes)", old.len()),
                        )
                    })?;
                let end = at + contents.len();
                if end > old.len() {
                    old.resize(end, 0);
                }
                old[at..end].copy_from_slice(&contents);
                old
            }
        };
        parent
            .entries
            .insert(name.clone(), Node::file(contents, mode & 0o7777));
        parent.touch();
        Ok(())
    }

    /// The entries of the directory at `parts`, sorted by name.
    pub(super) fn list(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
    ) -> RunnerResult<Vec<RunnerFileStat>> {
        let dir = if parts.is_empty() {
            &self.root
        } else {
            match self.get(parts) {
                Some(Node::Dir(d)) => d,
                Some(Node::File(_)) => {
                    return Err(err(
                        RunnerErrorKind::InvalidRequest,
                        op,
                        path,
                        "not a directory",
                    ));
                }
                None => return Err(self.missing_or_not_dir(op, path, parts)),
            }
        };
        Ok(dir
            .entries
            .iter()
            .map(|(name, node)| node.stat(&path.join(name), name))
            .collect())
    }

    /// Metadata of the node at `parts`.
    pub(super) fn stat(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
    ) -> RunnerResult<RunnerFileStat> {
        let name = parts.last().map_or("", String::as_str);
        if parts.is_empty() {
            return Ok(Node::Dir(self.root.clone_shallow()).stat(path, name));
        }
        match self.get(parts) {
            Some(node) => Ok(node.stat(path, name)),
            None => Err(self.missing_or_not_dir(op, path, parts)),
        }
    }

    /// Creates the directory at `parts` and its parents; an existing directory is fine.
    pub(super) fn make_dir(&mut self, op: &str, path: &Path, parts: &[String]) -> RunnerResult<()> {
        if self.is_dir(parts) {
            return Ok(());
        }
        self.refuse_read_only(op, path, parts, false)?;
        walk_mut(&mut self.root, parts, true)
            .map(|_| ())
            .map_err(|_| {
                err(
                    RunnerErrorKind::AlreadyExists,
                    op,
                    path,
                    "a file is in the way",
                )
            })
    }

    /// Removes the node at `parts`; a non-empty directory only when `recursive`.
    /// `protected` (the workspace root) and its ancestors are refused.
    pub(super) fn remove(
        &mut self,
        op: &str,
        path: &Path,
        parts: &[String],
        recursive: bool,
        protected: &[String],
    ) -> RunnerResult<()> {
        if protected.starts_with(parts) {
            return Err(err(
                RunnerErrorKind::PermissionDenied,
                op,
                path,
                "refusing to remove the workspace root or one of its parents",
            ));
        }
        self.refuse_read_only(op, path, parts, true)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(err(
                RunnerErrorKind::PermissionDenied,
                op,
                path,
                "the filesystem root",
            ));
        };
        let missing = self.missing_or_not_dir(op, path, parts);
        let parent = walk_mut(&mut self.root, dirs, false).map_err(|_| missing)?;
        match parent.entries.get(name) {
            None => {
                return Err(err(
                    RunnerErrorKind::NotFound,
                    op,
                    path,
                    "no such file or directory",
                ));
            }
            Some(Node::Dir(d)) if !recursive && !d.entries.is_empty() => {
                return Err(err(
                    RunnerErrorKind::AlreadyExists,
                    op,
                    path,
                    "directory not empty (pass recursive)",
                ));
            }
            Some(_) => {}
        }
        parent.entries.remove(name);
        parent.touch();
        Ok(())
    }

    /// Renames `from` to `to` with POSIX `rename` semantics.
    pub(super) fn rename(
        &mut self,
        op: &str,
        (from_path, from): (&Path, &[String]),
        (to_path, to): (&Path, &[String]),
        protected: &[String],
    ) -> RunnerResult<()> {
        if protected.starts_with(from) || protected.starts_with(to) {
            return Err(err(
                RunnerErrorKind::PermissionDenied,
                op,
                from_path,
                "refusing to move the workspace root or one of its parents",
            ));
        }
        self.refuse_read_only(op, from_path, from, true)?;
        self.refuse_read_only(op, to_path, to, true)?;
        let Some(source) = self.get(from) else {
            return Err(self.missing_or_not_dir(op, from_path, from));
        };
        if from == to {
            return Ok(());
        }
        let source_is_dir = matches!(source, Node::Dir(_));
        if to.starts_with(from) {
            return Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                to_path,
                "cannot move a directory into itself",
            ));
        }
        let Some((to_name, to_dirs)) = to.split_last() else {
            return Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                to_path,
                "is the filesystem root",
            ));
        };
        if !self.is_dir(to_dirs) {
            return Err(self.missing_or_not_dir(op, to_path, to));
        }
        match (source_is_dir, self.get(to)) {
            (_, None) => {}
            (true, Some(Node::Dir(d))) if !d.entries.is_empty() => {
                return Err(err(
                    RunnerErrorKind::AlreadyExists,
                    op,
                    to_path,
                    "directory not empty",
                ));
            }
            (true, Some(Node::File(_))) => {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    to_path,
                    "not a directory",
                ));
            }
            (false, Some(Node::Dir(_))) => {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    to_path,
                    "is a directory",
                ));
            }
            _ => {}
        }
        let Some((from_name, from_dirs)) = from.split_last() else {
            return Err(err(
                RunnerErrorKind::PermissionDenied,
                op,
                from_path,
                "the filesystem root",
            ));
        };
        let node = match walk_mut(&mut self.root, from_dirs, false) {
            Ok(parent) => {
                parent.touch();
                parent.entries.remove(from_name)
            }
            Err(_) => None,
        };
        let Some(node) = node else {
            return Err(err(
                RunnerErrorKind::NotFound,
                op,
                from_path,
                "no such file or directory",
            ));
        };
        match walk_mut(&mut self.root, to_dirs, false) {
            Ok(parent) => {
                parent.entries.insert(to_name.clone(), node);
                parent.touch();
                Ok(())
            }
            Err(Walk::Missing | Walk::NotDir) => Err(err(
                RunnerErrorKind::Provider,
                op,
                to_path,
                "the target directory vanished",
            )),
        }
    }

    /// Inserts `node` at `parts`, creating parents (manifest loading).
    pub(super) fn insert(&mut self, parts: &[String], node: Node) -> Result<(), String> {
        let Some((name, dirs)) = parts.split_last() else {
            return Err("cannot replace the filesystem root".into());
        };
        let parent = walk_mut(&mut self.root, dirs, true)
            .map_err(|_| "a file is in the way of the target".to_string())?;
        parent.entries.insert(name.clone(), node);
        Ok(())
    }

    /// Whether something is at `parts`.
    pub(super) fn exists(&self, parts: &[String]) -> bool {
        parts.is_empty() || self.get(parts).is_some()
    }
}

impl Dir {
    fn clone_shallow(&self) -> Dir {
        Dir {
            entries: BTreeMap::new(),
            mode: self.mode,
            modified_ms: self.modified_ms,
        }
    }
}
