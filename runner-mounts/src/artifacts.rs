//! Artifact export: a file, or a directory as a tar, uploaded to the artifact
//! store named in the destination config, through the session's file API.

use std::path::{Path, PathBuf};

use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::store::OpenStore;
use crate::sync::{hash_file, hex_digest, read_parts, upload_file};
use runner_api::{
    RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerError,
    RunnerFileKind, RunnerResult,
};

/// Uploads `request.path` of `session` to `store`.
///
/// A file is stored as it is; a directory (with `recursive`) as a tar of its
/// contents, built deterministically (sorted names, zero times and owners), so
/// the same tree always gives the same bytes. The object key is
/// `<prefix>/<sha256>/<name>` and the id `sha256-<hex>`: both derive from the
/// content. The metadata holds `size`, `sha256`, `file_count`, `key` and `format`
/// (`file` or `tar`).
///
/// Errors: `NotFound` (no such path), `InvalidRequest` (a directory without
/// `recursive`, a symlink), the store's kinds.
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
    let (sha256, size, file_count, format, file_name) = match stat.kind {
        RunnerFileKind::File => {
            let sha256 = hash_file(session, &request.path)
                .await
                .map_err(|e| e.context(&what))?;
            let key = store.key(&format!("{sha256}/{name}"));
            let signature =
                upload_file(session, store, &request.path, &key, stat.size, &what).await?;
            if signature.sha256 != sha256 {
                return Err(RunnerError::provider(format!(
                    "{what}: the file changed while it was exported; export it again"
                )));
            }
            (sha256, signature.size, 1_u64, "file", name)
        }
        RunnerFileKind::Directory if request.recursive => {
            let (tar, file_count) = build_tar(session, &request.path)
                .await
                .map_err(|e| e.context(&what))?;
            let mut hasher = Sha256::new();
            hasher.update(&tar);
            let sha256 = hex_digest(hasher);
            let file_name = format!("{name}.tar");
            let key = store.key(&format!("{sha256}/{file_name}"));
            let size = tar.len() as u64;
            store
                .store
                .put(&key, PutPayload::from(tar))
                .await
                .map_err(|e| store.error(&what, e))?;
            (sha256, size, file_count, "tar", file_name)
        }
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
    let rel = format!("{sha256}/{file_name}");
    Ok(RunnerArtifactExportResult {
        path: request.path,
        artifact_id: format!("sha256-{sha256}"),
        url: Some(store.url_of(&rel)),
        metadata: serde_json::json!({
            "size": size,
            "sha256": sha256,
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

/// A deterministic tar of the directory `root`: entries sorted by path,
/// modes kept, times and owners zero; symlinks kept as symlinks. Returns the
/// bytes and the number of regular files.
async fn build_tar(session: &dyn RemoteRunnerSession, root: &Path) -> RunnerResult<(Vec<u8>, u64)> {
    let mut builder = tar::Builder::new(Vec::new());
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
                    let mut contents = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0));
                    read_parts(session, &path, |part| contents.extend_from_slice(&part)).await?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(contents.len() as u64);
                    builder
                        .append_data(&mut header, &entry_rel, contents.as_slice())
                        .map_err(io)?;
                    files += 1;
                }
                RunnerFileKind::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, &entry_rel, std::io::empty())
                        .map_err(io)?;
                    subdirs.push((path, entry_rel));
                }
                RunnerFileKind::Symlink => {
                    let target = entry.symlink_target.clone().unwrap_or_default();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &entry_rel, &target)
                        .map_err(io)?;
                }
                RunnerFileKind::Other => {}
            }
        }
        subdirs.reverse();
        pending.extend(subdirs);
    }
    let tar = builder.into_inner().map_err(io)?;
    Ok((tar, files))
}
