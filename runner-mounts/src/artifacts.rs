//! Artifact export: a file, or a directory as a tar, uploaded to the
//! destination's artifact store through the session's file API, streamed.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::store::OpenStore;
use crate::sync::{ObjectSink, feed_file};
use runner_api::{
    RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerError,
    RunnerFileKind, RunnerFileReadRequest, RunnerResult, next_chunk,
};

/// The size of a tar block: headers and padded contents are multiples of it.
const BLOCK: usize = 512;

/// What an artifact's object holds.
enum Source {
    /// The file's bytes.
    File(PathBuf),
    /// A deterministic tar of the directory's contents.
    Tree(PathBuf),
}

impl Source {
    /// Feeds the object's bytes to `sink`; returns the number of regular
    /// files in it.
    async fn feed(
        &self,
        session: &dyn RemoteRunnerSession,
        sink: &mut ObjectSink<'_>,
    ) -> RunnerResult<u64> {
        match self {
            Self::File(path) => feed_file(session, path, sink).await.map(|_| 1),
            Self::Tree(root) => feed_tar(session, root, sink).await,
        }
    }
}

/// Uploads `request.path` of `session` to `store`.
///
/// A file is stored as it is; a directory (with `recursive`) as a tar of its
/// contents, built deterministically (sorted names, zero times and owners), so
/// the same tree always gives the same bytes. The object key is
/// `<prefix>/<sha256>/<name>` and the id `sha256-<hex>`: both derive from the
/// content, so the object is read twice, as streams: once to hash it, once
/// to upload it (the upload must hash the same, or the export fails). The
/// metadata holds `size`, `sha256`, `file_count`, `key` and `format` (`file`
/// or `tar`).
///
/// Errors: `NotFound` (no such path), `InvalidRequest` (a directory without
/// `recursive`, a symlink), `Provider` (the content changed during the
/// export), the store's kinds.
pub(crate) async fn export(
    session: &dyn RemoteRunnerSession,
    store: &OpenStore,
    request: RunnerArtifactExportRequest,
) -> RunnerResult<RunnerArtifactExportResult> {
    let what = format!("export_artifact {}", request.path.display());
    let stat = session
        .stat(&request.path)
        .await
        .map_err(|e| e.context(&what))?;
    let name = artifact_name(session, &request.path);
    let (source, format, file_name) = match stat.kind {
        RunnerFileKind::File => (Source::File(request.path.clone()), "file", name),
        RunnerFileKind::Directory if request.recursive => (
            Source::Tree(request.path.clone()),
            "tar",
            format!("{name}.tar"),
        ),
        RunnerFileKind::Directory => {
            return Err(RunnerError::invalid_request(format!(
                "{what}: is a directory; set recursive to export it as a tar"
            )));
        }
        RunnerFileKind::Symlink | RunnerFileKind::Other => {
            return Err(RunnerError::invalid_request(format!(
                "{what}: only files and directories can be exported"
            )));
        }
    };
    let mut digest = ObjectSink::digest(&what);
    source
        .feed(session, &mut digest)
        .await
        .map_err(|e| e.context(&what))?;
    let hashed = digest.finish().await?;
    let rel = format!("{}/{file_name}", hashed.sha256);
    let mut upload = ObjectSink::upload(store, store.key(&rel), &what);
    let file_count = match source.feed(session, &mut upload).await {
        Ok(count) => count,
        Err(e) => {
            upload.abort().await;
            return Err(e.context(&what));
        }
    };
    let uploaded = upload.finish().await?;
    if uploaded != hashed {
        return Err(RunnerError::provider(format!(
            "{what}: the content changed while it was exported; export it again"
        )));
    }
    Ok(RunnerArtifactExportResult {
        path: request.path,
        artifact_id: format!("sha256-{}", hashed.sha256),
        url: Some(store.url_of(&rel)),
        metadata: serde_json::json!({
            "size": hashed.size,
            "sha256": hashed.sha256,
            "file_count": file_count,
            "format": format,
            "key": store.key(&rel).to_string(),
        }),
    })
}

/// The final component of `path` (the workspace root's name for `.`).
fn artifact_name(session: &dyn RemoteRunnerSession, path: &Path) -> String {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        runner_api::normalize_lexically(&session.workspace_root().join(path))
    };
    full.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "artifact".to_string())
}

/// Feeds a deterministic tar of the directory `root` to `sink`: entries
/// sorted by path, depth first, modes kept, times and owners zero; symlinks
/// kept as symlinks. Each file's contents stream from the session between
/// its header and its padding. Returns the number of regular files.
///
/// Errors: the session's, and `Provider` when a file's size changed between
/// the listing and the read.
async fn feed_tar(
    session: &dyn RemoteRunnerSession,
    root: &Path,
    sink: &mut ObjectSink<'_>,
) -> RunnerResult<u64> {
    // The builder writes headers (with GNU long-name entries where needed)
    // into its buffer, which is handed to the sink after each entry.
    let mut headers = tar::Builder::new(Vec::new());
    let mut files = 0;
    let mut pending: Vec<(PathBuf, PathBuf)> = vec![(root.to_path_buf(), PathBuf::new())];
    let io = |e: std::io::Error| RunnerError::provider(format!("building the tar: {e}"));
    while let Some((dir, rel)) = pending.pop() {
        let entries = session.list_dir(&dir).await?;
        // Depth-first in name order: push directories in reverse.
        let mut subdirs = Vec::new();
        for entry in entries {
            let path = dir.join(&entry.name);
            let entry_rel = rel.join(&entry.name);
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode & 0o7777);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry.kind {
                RunnerFileKind::File => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(entry.size);
                    headers
                        .append_data(&mut header, &entry_rel, std::io::empty())
                        .map_err(io)?;
                    sink.put(Bytes::from(std::mem::take(headers.get_mut())))
                        .await?;
                    feed_exactly(session, &path, entry.size, sink).await?;
                    files += 1;
                }
                RunnerFileKind::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    headers
                        .append_data(&mut header, &entry_rel, std::io::empty())
                        .map_err(io)?;
                    subdirs.push((path, entry_rel));
                }
                RunnerFileKind::Symlink => {
                    let target = entry.symlink_target.clone().unwrap_or_default();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    headers
                        .append_link(&mut header, &entry_rel, &target)
                        .map_err(io)?;
                }
                RunnerFileKind::Other => {}
            }
        }
        subdirs.reverse();
        pending.extend(subdirs);
    }
    // What is left: the last headers and the two zero blocks that end a tar.
    let end = headers.into_inner().map_err(io)?;
    sink.put(Bytes::from(end)).await?;
    Ok(files)
}

/// Feeds the `size` bytes of the file `path`, then the zeros that pad them
/// to a whole block.
async fn feed_exactly(
    session: &dyn RemoteRunnerSession,
    path: &Path,
    size: u64,
    sink: &mut ObjectSink<'_>,
) -> RunnerResult<()> {
    let changed = || {
        RunnerError::provider(format!(
            "{}: the file changed size while it was exported",
            path.display()
        ))
    };
    let mut fed = 0;
    if size > 0 {
        let mut file = session
            .read_file_stream(RunnerFileReadRequest::new(path))
            .await?;
        while let Some(chunk) = next_chunk(&mut file.bytes).await {
            let chunk = chunk?;
            fed += chunk.len() as u64;
            if fed > size {
                return Err(changed());
            }
            sink.put(chunk).await?;
        }
    }
    if fed != size {
        return Err(changed());
    }
    let rest = (size % BLOCK as u64) as usize;
    if rest != 0 {
        sink.put(Bytes::from(vec![0; BLOCK - rest])).await?;
    }
    Ok(())
}
