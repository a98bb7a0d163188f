//! One object-store mount: materializing its prefix into the workspace and
//! syncing changes back, through the session's own file API. Files move as
//! streams both ways (`read_file_stream` into a put or a multipart upload,
//! an object's byte stream into `write_file_stream`), hashed on the way, so
//! no object is held whole in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use super::store::OpenStore;
use runner_api::{
    RemoteRunnerSession, RunnerError, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerResult, next_chunk, validate_relative_path,
};

/// Bytes per multipart part when uploading; an object up to this size is
/// sent with one put.
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;

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
            let reading = format!("{what}: reading object {rel:?}");
            let got = self
                .store
                .store
                .get(&location)
                .await
                .map_err(|e| self.store.error(&reading, e))?;
            let digest = Arc::new(Mutex::new(Digester::default()));
            let (seen, store) = (digest.clone(), self.store.clone());
            let body = got.into_stream().map(move |chunk| {
                let chunk = chunk.map_err(|e| store.error(&reading, e))?;
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .update(&chunk);
                Ok(chunk)
            });
            session
                .write_file_stream(
                    RunnerFileWriteRequest::new(target, Vec::new()),
                    body.boxed(),
                )
                .await
                .map_err(|e| e.context(&what))?;
            let signature =
                std::mem::take(&mut *digest.lock().unwrap_or_else(PoisonError::into_inner))
                    .finish();
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
                    == *old
            {
                continue;
            }
            let signature = upload_file(
                session,
                &self.store,
                &path,
                self.store.key(rel),
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

/// The size and sha256 of bytes as they pass.
#[derive(Default)]
pub(crate) struct Digester {
    hasher: Sha256,
    size: u64,
}

impl Digester {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    pub(crate) fn finish(self) -> Signature {
        Signature {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// How far an upload is.
enum Parts {
    /// The first part, not sent yet: one put when the object ends inside it.
    Pending { chunks: Vec<Bytes>, len: usize },
    /// A multipart upload with at most [`PARTS_IN_FLIGHT`] parts in memory.
    Multipart(WriteMultipart),
}

/// An object being uploaded to `key` of `store`.
struct Upload<'a> {
    store: &'a OpenStore,
    key: object_store::path::Path,
    parts: Parts,
}

impl Upload<'_> {
    async fn put(&mut self, chunk: Bytes, what: &str) -> RunnerResult<()> {
        let store = self.store;
        match &mut self.parts {
            Parts::Multipart(writer) => {
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| store.error(what, e))?;
                writer.put(chunk);
            }
            Parts::Pending { chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                if *len > PART_SIZE {
                    let first = std::mem::take(chunks);
                    let upload = store
                        .store
                        .put_multipart(&self.key)
                        .await
                        .map_err(|e| store.error(what, e))?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    for chunk in first {
                        writer.put(chunk);
                    }
                    self.parts = Parts::Multipart(writer);
                }
            }
        }
        Ok(())
    }

    async fn finish(self, what: &str) -> RunnerResult<()> {
        let store = self.store;
        match self.parts {
            Parts::Pending { chunks, .. } => store
                .store
                .put(&self.key, chunks.into_iter().collect::<PutPayload>())
                .await
                .map(drop),
            Parts::Multipart(writer) => writer.finish().await.map(drop),
        }
        .map_err(|e| store.error(what, e))
    }
}

/// The bytes of one object, fed in order: hashed, and for an upload sent to
/// the store with one put up to [`PART_SIZE`] or a multipart upload above
/// it. Memory holds at most the part being filled and the parts in flight.
/// `what` names the operation in errors.
pub(crate) struct ObjectSink<'a> {
    digest: Digester,
    upload: Option<Upload<'a>>,
    what: &'a str,
}

impl<'a> ObjectSink<'a> {
    /// A sink that only hashes.
    pub(crate) fn digest(what: &'a str) -> Self {
        Self {
            digest: Digester::default(),
            upload: None,
            what,
        }
    }

    /// A sink that hashes and uploads to `key` of `store`.
    pub(crate) fn upload(
        store: &'a OpenStore,
        key: object_store::path::Path,
        what: &'a str,
    ) -> Self {
        Self {
            digest: Digester::default(),
            upload: Some(Upload {
                store,
                key,
                parts: Parts::Pending {
                    chunks: Vec::new(),
                    len: 0,
                },
            }),
            what,
        }
    }

    /// Feeds the next bytes of the object.
    pub(crate) async fn put(&mut self, chunk: Bytes) -> RunnerResult<()> {
        self.digest.update(&chunk);
        match &mut self.upload {
            Some(upload) => upload.put(chunk, self.what).await,
            None => Ok(()),
        }
    }

    /// Completes the upload; returns the size and sha256 of what was fed.
    pub(crate) async fn finish(self) -> RunnerResult<Signature> {
        if let Some(upload) = self.upload {
            upload.finish(self.what).await?;
        }
        Ok(self.digest.finish())
    }

    /// Gives up: a multipart upload begun is aborted, nothing is stored.
    pub(crate) async fn abort(self) {
        if let Some(Upload {
            parts: Parts::Multipart(writer),
            ..
        }) = self.upload
            && let Err(e) = writer.abort().await
        {
            tracing::warn!(what = self.what, error = %e, "aborting a multipart upload failed");
        }
    }
}

/// Feeds every byte of the file `path` of `session` to `sink`, from one
/// `read_file_stream`; returns the bytes fed.
pub(crate) async fn feed_file(
    session: &dyn RemoteRunnerSession,
    path: &Path,
    sink: &mut ObjectSink<'_>,
) -> RunnerResult<u64> {
    let mut file = session
        .read_file_stream(RunnerFileReadRequest::new(path))
        .await?;
    let mut fed = 0;
    while let Some(chunk) = next_chunk(&mut file.bytes).await {
        let chunk = chunk?;
        fed += chunk.len() as u64;
        sink.put(chunk).await?;
    }
    Ok(fed)
}

/// The size and sha256 of a file of the session, read as one stream.
pub(crate) async fn hash_file(
    session: &dyn RemoteRunnerSession,
    path: &Path,
) -> RunnerResult<Signature> {
    let what = format!("hashing {}", path.display());
    let mut sink = ObjectSink::digest(&what);
    feed_file(session, path, &mut sink).await?;
    sink.finish().await
}

/// Streams one file of the session to `key` (see [`ObjectSink`]), reading
/// it once. `what` names the operation in errors.
pub(crate) async fn upload_file(
    session: &dyn RemoteRunnerSession,
    store: &OpenStore,
    path: &Path,
    key: object_store::path::Path,
    what: &str,
) -> RunnerResult<Signature> {
    let mut sink = ObjectSink::upload(store, key, what);
    if let Err(e) = feed_file(session, path, &mut sink).await {
        sink.abort().await;
        return Err(e.context(what));
    }
    sink.finish().await
}

/// The error for a failed materialization, naming the mount.
pub(crate) fn mount_failed(name: &str, error: RunnerError) -> RunnerError {
    error.context(format!(
        "create_session: mount {name:?} failed and was removed"
    ))
}
