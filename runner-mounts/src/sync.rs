//! One object-store mount: materializing its prefix into the workspace and
//! syncing changes back, through the session's own file API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use super::store::OpenStore;
use runner_api::{
    RemoteRunnerSession, RunnerError, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerResult, validate_relative_path,
};

/// Bytes read per `read_file` call and sent per multipart part when syncing back.
pub(crate) const PART_SIZE: u64 = 8 * 1024 * 1024;

/// Multipart parts in flight at once while syncing back one file.
const PARTS_IN_FLIGHT: usize = 2;

/// What a synced file looked like: its size and sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// What one sync did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    /// Objects written (new or changed files).
    pub(crate) uploaded: Vec<String>,
    /// Objects deleted (files removed in the workspace).
    pub(crate) deleted: Vec<String>,
}

/// A materialized mount: where it is, where it comes from, and what each file
/// looked like at the last materialization or sync.
pub(crate) struct ObjectMount {
    pub(crate) name: String,
    /// Relative to the workspace root.
    pub(crate) path: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) store: OpenStore,
    known: tokio::sync::Mutex<BTreeMap<String, Signature>>,
}

impl std::fmt::Debug for ObjectMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectMount")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("uri", &self.store.display)
            .finish_non_exhaustive()
    }
}

pub(crate) fn hex_digest(hasher: Sha256) -> String {
    hex::encode(hasher.finalize())
}

impl ObjectMount {
    pub(crate) fn new(name: String, path: PathBuf, read_only: bool, store: OpenStore) -> Self {
        Self {
            name,
            path,
            read_only,
            store,
            known: tokio::sync::Mutex::default(),
        }
    }

    fn what(&self) -> String {
        format!("mount {:?} ({})", self.name, self.store.display)
    }

    /// Copies every object under the prefix into the mount path.
    ///
    /// Errors: the store's kind (`PermissionDenied` for bad credentials,
    /// `NotFound` for a missing bucket, `Unavailable` for an unreachable
    /// endpoint) or the session's, with a message naming the mount.
    pub(crate) async fn materialize(&self, session: &dyn RemoteRunnerSession) -> RunnerResult<()> {
        let what = self.what();
        let mut listing = self.store.store.list(Some(&self.store.prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta =
                meta.map_err(|e| self.store.error(&format!("{what}: listing objects"), e))?;
            let rel: Vec<String> = match meta.location.prefix_match(&self.store.prefix) {
                Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                None => continue,
            };
            if rel.is_empty() {
                continue;
            }
            objects.push((meta.location, rel.join("/")));
        }
        session
            .make_dir(&self.path)
            .await
            .map_err(|e| e.context(&what))?;
        let mut known = self.known.lock().await;
        for (location, rel) in objects {
            let target = self.path.join(&rel);
            validate_relative_path(&format!("{what}: object {rel:?}"), &target)?;
            let got = self.store.store.get(&location).await.map_err(|e| {
                self.store
                    .error(&format!("{what}: reading object {rel:?}"), e)
            })?;
            let mut contents = Vec::with_capacity(usize::try_from(got.meta.size).unwrap_or(0));
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    self.store
                        .error(&format!("{what}: reading object {rel:?}"), e)
                })?;
                contents.extend_from_slice(&chunk);
            }
            let mut hasher = Sha256::new();
            hasher.update(&contents);
            let signature = Signature {
                size: contents.len() as u64,
                sha256: hex_digest(hasher),
            };
            session
                .write_file(RunnerFileWriteRequest::new(target, contents))
                .await
                .map_err(|e| e.context(&what))?;
            known.insert(rel, signature);
        }
        Ok(())
    }

    /// Uploads new and changed files and deletes objects whose files were
    /// removed. Read-only mounts never sync.
    pub(crate) async fn sync(&self, session: &dyn RemoteRunnerSession) -> RunnerResult<SyncReport> {
        let mut report = SyncReport::default();
        if self.read_only {
            return Ok(report);
        }
        let what = self.what();
        let mut known = self.known.lock().await;
        let mut present = BTreeMap::new();
        let exists = match session.stat(&self.path).await {
            Ok(stat) => stat.kind == RunnerFileKind::Directory,
            Err(e) if e.kind() == runner_api::RunnerErrorKind::NotFound => false,
            Err(e) => return Err(e.context(&what)),
        };
        if exists {
            self.walk(session, &mut present)
                .await
                .map_err(|e| e.context(&what))?;
        }
        for (rel, size) in &present {
            let path = self.path.join(rel);
            if let Some(old) = known.get(rel)
                && old.size == *size
                && hash_file(session, &path)
                    .await
                    .map_err(|e| e.context(&what))?
                    == old.sha256
            {
                continue;
            }
            let signature = upload_file(
                session,
                &self.store,
                &path,
                &self.store.key(rel),
                *size,
                &format!("{what}: uploading {rel:?}"),
            )
            .await?;
            known.insert(rel.clone(), signature);
            report.uploaded.push(rel.clone());
        }
        let removed: Vec<String> = known
            .keys()
            .filter(|rel| !present.contains_key(*rel))
            .cloned()
            .collect();
        for rel in removed {
            match self.store.store.delete(&self.store.key(&rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(self
                        .store
                        .error(&format!("{what}: deleting object {rel:?}"), e));
                }
            }
            known.remove(&rel);
            report.deleted.push(rel);
        }
        tracing::debug!(
            mount = %self.name,
            uploaded = report.uploaded.len(),
            deleted = report.deleted.len(),
            "synced mount"
        );
        Ok(report)
    }

    /// Regular files under the mount path (symlinks and other kinds are
    /// skipped), as `/`-separated paths relative to the mount with their sizes.
    async fn walk(
        &self,
        session: &dyn RemoteRunnerSession,
        out: &mut BTreeMap<String, u64>,
    ) -> RunnerResult<()> {
        let mut pending = vec![(self.path.clone(), String::new())];
        while let Some((dir, rel)) = pending.pop() {
            for entry in session.list_dir(&dir).await? {
                let child_rel = if rel.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{rel}/{}", entry.name)
                };
                match entry.kind {
                    RunnerFileKind::File => {
                        out.insert(child_rel, entry.size);
                    }
                    RunnerFileKind::Directory => pending.push((dir.join(&entry.name), child_rel)),
                    RunnerFileKind::Symlink | RunnerFileKind::Other => {}
                }
            }
        }
        Ok(())
    }
}

/// Reads `path` in parts of [`PART_SIZE`], handing each to `sink`; returns
/// the bytes read.
pub(crate) async fn read_parts(
    session: &dyn RemoteRunnerSession,
    path: &Path,
    mut sink: impl FnMut(Vec<u8>),
) -> RunnerResult<u64> {
    let mut offset = 0;
    loop {
        let part = session
            .read_file(RunnerFileReadRequest {
                path: path.to_path_buf(),
                offset: Some(offset),
                limit: Some(PART_SIZE),
            })
            .await?;
        let len = part.contents.len() as u64;
        offset += len;
        if len > 0 {
            sink(part.contents);
        }
        if len < PART_SIZE {
            return Ok(offset);
        }
    }
}

/// The sha256 (hex) of a file of the session, read in parts.
pub(crate) async fn hash_file(
    session: &dyn RemoteRunnerSession,
    path: &Path,
) -> RunnerResult<String> {
    let mut hasher = Sha256::new();
    read_parts(session, path, |part| hasher.update(&part)).await?;
    Ok(hex_digest(hasher))
}

/// Streams one file of the session to `key`: one put up to [`PART_SIZE`], a
/// multipart upload with at most [`PARTS_IN_FLIGHT`] parts in memory above it.
/// `what` names the operation in errors.
pub(crate) async fn upload_file(
    session: &dyn RemoteRunnerSession,
    store: &OpenStore,
    path: &Path,
    key: &object_store::path::Path,
    size: u64,
    what: &str,
) -> RunnerResult<Signature> {
    let mut hasher = Sha256::new();
    if size <= PART_SIZE {
        let mut contents = Vec::new();
        read_parts(session, path, |part| contents.extend_from_slice(&part))
            .await
            .map_err(|e| e.context(what))?;
        hasher.update(&contents);
        let len = contents.len() as u64;
        store
            .store
            .put(key, PutPayload::from(contents))
            .await
            .map_err(|e| store.error(what, e))?;
        return Ok(Signature {
            size: len,
            sha256: hex_digest(hasher),
        });
    }
    let upload = store
        .store
        .put_multipart(key)
        .await
        .map_err(|e| store.error(what, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE as usize);
    let mut offset = 0;
    let result: RunnerResult<()> = async {
        loop {
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| store.error(what, e))?;
            let part = session
                .read_file(RunnerFileReadRequest {
                    path: path.to_path_buf(),
                    offset: Some(offset),
                    limit: Some(PART_SIZE),
                })
                .await
                .map_err(|e| e.context(what))?;
            let len = part.contents.len() as u64;
            offset += len;
            hasher.update(&part.contents);
            writer.put(part.contents.into());
            if len < PART_SIZE {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await.map_err(|e| store.error(what, e))?;
    Ok(Signature {
        size: offset,
        sha256: hex_digest(hasher),
    })
}

/// The error for a failed materialization, naming the mount.
pub(crate) fn mount_failed(name: &str, error: RunnerError) -> RunnerError {
    error.context(format!(
        "create_session: mount {name:?} failed and was removed"
    ))
}
