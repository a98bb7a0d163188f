//! The in-memory filesystem: directories, files and symlinks with modes and
//! mtimes. File contents are [`Bytes`], so snapshots and reads share them.
//!
//! Symlinks are resolved as POSIX does (see [`Tree::resolve`]): every
//! component but the last is always followed, the last one when the operation
//! follows links (`read_file`, `write_file`, `list_dir`, `canonicalize`) and
//! not when it acts on the link itself (`stat`, `remove`, `rename`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerFileKind, RunnerFileStat, RunnerResult, normalize_lexically,
};

/// Symlinks one resolution follows at most (Linux's `MAXSYMLINKS`).
const MAX_LINK_HOPS: usize = 40;

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A path split into components below `/`.
pub(super) type Parts = Vec<String>;

/// A directory, a file or a symlink.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Dir(Dir),
    File(File),
    Symlink(Link),
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
    pub(super) contents: Bytes,
    pub(super) mode: u32,
    modified_ms: u64,
}

/// A symbolic link: its stored target, as given.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) target: PathBuf,
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
            Node::Symlink(_) => RunnerFileKind::Symlink,
        }
    }

    /// Seconds since the epoch of the last change, for archives.
    pub(super) fn mtime_secs(&self) -> u64 {
        let ms = match self {
            Node::Dir(d) => d.modified_ms,
            Node::File(f) => f.modified_ms,
            Node::Symlink(l) => l.modified_ms,
        };
        ms / 1000
    }

    /// Metadata of this node as `path` with final component `name`.
    pub(super) fn stat(&self, path: &Path, name: &str) -> RunnerFileStat {
        let (size, mode, modified_ms, symlink_target) = match self {
            Node::Dir(d) => (0, d.mode, d.modified_ms, None),
            Node::File(f) => (f.contents.len() as u64, f.mode, f.modified_ms, None),
            Node::Symlink(l) => (
                l.target.as_os_str().len() as u64,
                0o777,
                l.modified_ms,
                Some(l.target.clone()),
            ),
        };
        RunnerFileStat {
            path: path.to_path_buf(),
            name: name.to_string(),
            kind: self.kind(),
            size,
            mode,
            modified_ms: Some(modified_ms),
            symlink_target,
        }
    }

    /// A file node with `contents` and `mode`.
    pub(super) fn file(contents: impl Into<Bytes>, mode: u32) -> Self {
        Node::File(File {
            contents: contents.into(),
            mode,
            modified_ms: now_ms(),
        })
    }

    /// An empty directory node.
    pub(super) fn dir(mode: u32) -> Self {
        Node::Dir(Dir::new(mode))
    }

    /// A symlink node to `target`.
    pub(super) fn symlink(target: PathBuf) -> Self {
        Node::Symlink(Link {
            target,
            modified_ms: now_ms(),
        })
    }

    /// Adds `child` under `name` when this is a directory (manifest loading).
    pub(super) fn insert_child(&mut self, name: String, child: Node) {
        if let Node::Dir(d) = self {
            d.entries.insert(name, child);
        }
    }

    /// The entries of a directory by name (none for a file or a link).
    pub(super) fn children(&self) -> impl Iterator<Item = (&String, &Node)> {
        let entries = match self {
            Node::Dir(d) => Some(&d.entries),
            _ => None,
        };
        entries.into_iter().flatten()
    }

    /// The permission bits of a directory or file (0o777 for a link).
    pub(super) fn mode(&self) -> u32 {
        match self {
            Node::Dir(d) => d.mode,
            Node::File(f) => f.mode,
            Node::Symlink(_) => 0o777,
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
            Some(Node::File(_) | Node::Symlink(_)) => return Err(Walk::NotDir),
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

    /// `parts` with every symlink on the way replaced by where it leads, the
    /// last component included when `follow_last`. Components past a missing
    /// one are kept as they are, so the result names where a new entry would
    /// be made.
    ///
    /// Errors: `InvalidRequest` naming `op` and `path` after more than 40 links.
    pub(super) fn resolve(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
        follow_last: bool,
    ) -> RunnerResult<Parts> {
        let mut pending: VecDeque<String> = parts.iter().cloned().collect();
        let mut done: Parts = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(part),
            }
            if pending.is_empty() && !follow_last {
                break;
            }
            let Some(Node::Symlink(link)) = self.get(&done) else {
                continue;
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    path,
                    "too many levels of symbolic links",
                ));
            }
            done.pop();
            if link.target.is_absolute() {
                done.clear();
            }
            for component in link.target.components().rev() {
                let name = match component {
                    Component::Normal(name) => name.to_string_lossy().into_owned(),
                    Component::ParentDir => "..".to_string(),
                    Component::CurDir | Component::RootDir | Component::Prefix(_) => continue,
                };
                pending.push_front(name);
            }
        }
        Ok(done)
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

    /// The contents of the file at `parts` (resolved).
    ///
    /// Errors: `InvalidRequest` for a directory or a path through a file,
    /// `NotFound` for a missing path (a dangling link included).
    pub(super) fn contents(&self, op: &str, path: &Path, parts: &[String]) -> RunnerResult<Bytes> {
        match self.get(parts) {
            Some(Node::File(f)) => Ok(f.contents.clone()),
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
            Some(Node::Symlink(_)) | None => Err(self.missing_or_not_dir(op, path, parts)),
        }
    }

    /// Refuses a write of the file at `parts` (resolved) before its body is
    /// read: a read-only entry, a directory, a file in the way of a parent,
    /// an offset past the end.
    pub(super) fn check_write(
        &self,
        op: &str,
        path: &Path,
        parts: &[String],
        offset: Option<u64>,
    ) -> RunnerResult<()> {
        self.refuse_read_only(op, path, parts, false)?;
        let Some((_, dirs)) = parts.split_last() else {
            return Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "is a directory",
            ));
        };
        for n in 1..=dirs.len() {
            match self.get(&dirs[..n]) {
                Some(Node::Dir(_)) => {}
                None => break,
                Some(_) => {
                    return Err(err(
                        RunnerErrorKind::InvalidRequest,
                        op,
                        path,
                        "a component of the path is not a directory",
                    ));
                }
            }
        }
        let size = match self.get(parts) {
            Some(Node::Dir(_)) => {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    path,
                    "is a directory",
                ));
            }
            Some(Node::File(f)) => f.contents.len() as u64,
            _ => 0,
        };
        match offset {
            Some(offset) if offset > size => Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                &format!("offset {offset} lies past the end ({size} bytes)"),
            )),
            _ => Ok(()),
        }
    }

    /// Replaces (or creates) the file at `parts`, creating parent directories.
    pub(super) fn write(
        &mut self,
        op: &str,
        path: &Path,
        parts: &[String],
        contents: Bytes,
        mode: Option<u32>,
        offset: Option<u64>,
    ) -> RunnerResult<()> {
        self.check_write(op, path, parts, offset)?;
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
        // check_write refused a directory here.
        let mode = match parent.entries.get(name) {
            Some(Node::File(f)) => mode.unwrap_or(f.mode),
            _ => mode.unwrap_or(0o644),
        };
        let contents = match offset {
            None => contents,
            Some(offset) => {
                let mut old = match parent.entries.get(name) {
                    Some(Node::File(f)) => f.contents.to_vec(),
                    _ => Vec::new(),
                };
                // check_write refused an offset past the end.
                let at = usize::try_from(offset).unwrap_or(old.len()).min(old.len());
                let end = at + contents.len();
                if end > old.len() {
                    old.resize(end, 0);
                }
                old[at..end].copy_from_slice(&contents);
                Bytes::from(old)
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
                Some(Node::Symlink(_)) | None => {
                    return Err(self.missing_or_not_dir(op, path, parts));
                }
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
            (true, Some(Node::File(_) | Node::Symlink(_))) => {
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

    /// Places an unpacked archive entry at `parts` (resolved), creating
    /// parents: a directory is made (or kept) with `node`'s mode, a file or
    /// a link replaces what is there unless that is a directory.
    ///
    /// Errors: `PermissionDenied` under a read-only entry, `InvalidRequest`
    /// for a directory in the way of a file or a file in the way of a parent.
    pub(super) fn place(
        &mut self,
        op: &str,
        path: &Path,
        parts: &[String],
        node: Node,
    ) -> RunnerResult<()> {
        self.refuse_read_only(op, path, parts, false)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(err(
                RunnerErrorKind::InvalidRequest,
                op,
                path,
                "is the filesystem root",
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
        match (parent.entries.get_mut(name), node) {
            (Some(Node::Dir(existing)), Node::Dir(new)) => existing.mode = new.mode,
            (Some(Node::Dir(_)), _) => {
                return Err(err(
                    RunnerErrorKind::InvalidRequest,
                    op,
                    path,
                    "a directory is in the way",
                ));
            }
            (_, node) => drop(parent.entries.insert(name.clone(), node)),
        }
        parent.touch();
        Ok(())
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

    /// A copy of the node at `parts` (the root directory for no parts).
    pub(super) fn node(&self, parts: &[String]) -> Option<Node> {
        if parts.is_empty() {
            return Some(Node::Dir(self.root.clone()));
        }
        self.get(parts).cloned()
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
