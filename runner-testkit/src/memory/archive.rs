//! Tar archives in and out of the in-memory tree.
//!
//! An upload is checked and rewritten by runner-kit's
//! [`sanitize_upload_stream`](runner_kit::archive::sanitize_upload_stream)
//! (the rules every provider shares), then its clean entries are read into
//! nodes and placed on a copy of the tree, which replaces the tree only when
//! every entry landed: a refused upload changes nothing. A download packs a
//! copy of the node on a blocking thread into a bounded channel.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use runner_api::{RunnerByteStream, RunnerError, RunnerErrorKind, RunnerResult};
use runner_kit::archive::{MODE_MASK, UploadPolicy, sanitize_upload_stream};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::tree::{Node, Parts, Tree};

/// Bytes one chunk of a downloaded archive holds at most.
const CHUNK: usize = 256 * 1024;

/// Chunks a download keeps in flight.
const IN_FLIGHT: usize = 4;

/// One entry of a clean archive, relative to the upload's target.
pub(super) enum Entry {
    /// A directory, file or symlink, as it will be placed.
    Node(PathBuf, Node),
    /// A hard link to an earlier member (a copy of it, in memory).
    HardLink(PathBuf, PathBuf),
}

/// Checks `archive` for an upload into `target` and reads its entries.
///
/// Errors: the refusals of `sanitize_upload_stream` (`PermissionDenied`,
/// `InvalidRequest`), the stream's own error, `Provider` for a failure to read
/// the clean archive back; each names `op` and `target`.
pub(super) async fn read_upload(
    op: &'static str,
    target: &Path,
    archive: RunnerByteStream,
) -> RunnerResult<Vec<Entry>> {
    let spooled = sanitize_upload_stream(op, target, archive, &UploadPolicy::default()).await?;
    let chunks = spooled.into_stream().map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(chunks));
    let shown = target.to_path_buf();
    tokio::task::spawn_blocking(move || entries(reader))
        .await
        .map_err(|e| failed(op, &shown, &e))?
        .map_err(|e| failed(op, target, &e))
}

fn failed(op: &str, target: &Path, error: &dyn std::fmt::Display) -> RunnerError {
    RunnerError::provider(format!(
        "{op} {}: reading the checked archive failed: {error}",
        target.display()
    ))
}

/// The entries of a clean archive (directories, files, symlinks, hard links).
fn entries(reader: impl Read) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mode = entry.header().mode()? & MODE_MASK;
        let kind = entry.header().entry_type();
        let link = || -> std::io::Result<PathBuf> {
            Ok(entry.link_name()?.unwrap_or_default().into_owned())
        };
        out.push(match kind {
            tar::EntryType::Directory => Entry::Node(path, Node::dir(mode)),
            tar::EntryType::Symlink => Entry::Node(path, Node::symlink(link()?)),
            tar::EntryType::Link => Entry::HardLink(path, link()?),
            _ => {
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents)?;
                Entry::Node(path, Node::file(contents, mode))
            }
        });
    }
    Ok(out)
}

/// `base` with the components of the relative `rel` appended.
fn join(base: &[String], rel: &Path) -> Parts {
    let mut parts = base.to_vec();
    parts.extend(
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts
}

/// Places `entries` under `target` (the lexical parts of `shown`) on `tree`.
/// An entry whose parent leads out of the target through a symlink already
/// in the tree is refused.
///
/// Errors: `PermissionDenied` (through a symlink out of the target, a
/// read-only entry), `InvalidRequest` (a directory in the way, a hard link to
/// something that is not a file), `AlreadyExists` (a file at the target).
pub(super) fn unpack(
    tree: &mut Tree,
    op: &str,
    shown: &Path,
    target: &[String],
    entries: Vec<Entry>,
) -> RunnerResult<()> {
    let target = tree.resolve(op, shown, target, true)?;
    tree.make_dir(op, shown, &target)?;
    for entry in entries {
        let (rel, node) = match entry {
            Entry::Node(rel, node) => (rel, node),
            Entry::HardLink(rel, linked) => {
                let source = tree.resolve(op, shown, &join(&target, &linked), true)?;
                match tree.get(&source) {
                    Some(node @ Node::File(_)) => (rel, node.clone()),
                    _ => {
                        return Err(RunnerError::invalid_request(format!(
                            "{op} {}: entry {}: hard link to {}, which is not a file",
                            shown.display(),
                            rel.display(),
                            linked.display()
                        )));
                    }
                }
            }
        };
        let entry_shown = shown.join(&rel);
        let lexical = join(&target, &rel);
        let Some((name, dirs)) = lexical.split_last() else {
            continue;
        };
        let mut parts = tree.resolve(op, &entry_shown, dirs, true)?;
        if !parts.starts_with(&target) {
            return Err(RunnerError::new(
                RunnerErrorKind::PermissionDenied,
                format!(
                    "{op} {}: entry {}: would be written through a symlink leading out of the \
                     target",
                    shown.display(),
                    rel.display()
                ),
            ));
        }
        parts.push(name.clone());
        tree.place(op, &entry_shown, &parts, node)?;
    }
    Ok(())
}

/// A tar of `node` as a stream: a directory's contents relative to it, or a
/// file (or link) under `name`.
pub(super) fn pack(op: &'static str, shown: PathBuf, name: String, node: Node) -> RunnerByteStream {
    let (sender, receiver) = mpsc::channel::<RunnerResult<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(ChannelWriter::new(sender.clone()));
        builder.follow_symlinks(false);
        let written = match &node {
            Node::Dir(_) => append_children(&mut builder, Path::new(""), &node),
            _ => append(&mut builder, Path::new(&name), &node),
        }
        .and_then(|()| builder.into_inner())
        .and_then(|mut writer| writer.flush_chunk());
        if let Err(e) = written {
            // The receiver is gone when the caller dropped the stream.
            let _ = sender.blocking_send(Err(RunnerError::provider(format!(
                "{op} {}: packing the archive failed: {e}",
                shown.display()
            ))));
        }
    });
    Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

fn append_children<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    prefix: &Path,
    dir: &Node,
) -> std::io::Result<()> {
    for (name, child) in dir.children() {
        append(builder, &prefix.join(name), child)?;
    }
    Ok(())
}

fn append<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    node: &Node,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode());
    header.set_mtime(node.mtime_secs());
    match node {
        Node::Dir(_) => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, path, std::io::empty())?;
            append_children(builder, path, node)
        }
        Node::File(file) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(file.contents.len() as u64);
            builder.append_data(&mut header, path, &file.contents[..])
        }
        Node::Symlink(link) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, path, &link.target)
        }
    }
}

/// Collects written bytes into chunks of [`CHUNK`] and sends each, waiting
/// while the channel is full.
struct ChannelWriter {
    sender: mpsc::Sender<RunnerResult<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn new(sender: mpsc::Sender<RunnerResult<Bytes>>) -> Self {
        Self {
            sender,
            buffer: Vec::with_capacity(CHUNK),
        }
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream dropped"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
