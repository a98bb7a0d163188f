//! mounts: object-store mounts are materialized at `create_session`, writable
//! ones sync back on `sync_mounts`, `snapshot` and `close`, read-only ones
//! refuse writes and never sync, and a failed mount fails loudly.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use runner_api::{
    RunnerArtifactExportRequest, RunnerDestination, RunnerErrorKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerMount, RunnerMountIntent, RunnerMountKind, RunnerSecretRef,
};
use runner_mounts::object_store::path::Path as StorePath;
use runner_mounts::object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{shell, unique_suffix};
use crate::context::{Cx, Session};
use crate::fixtures::bytes::{all_byte_values, pseudo_random, seed};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};
use crate::store::ObjectStoreTarget;

const FILES: &[crate::catalogue::Capability] = &[FileRead, FileWrite, FileManagement];

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Mounts;
    vec![
        Check::new(
            "mounts_materialize_copies_prefix",
            a,
            FILES,
            "Mounts: \"the provider syncs the bucket prefix into the mount path at session creation\" — every object under the prefix, nothing outside it.",
            |cx| Box::pin(materialize_copies_prefix(cx)),
        ),
        Check::new(
            "mounts_sync_changes_back",
            a,
            FILES,
            "sync_mounts and close: \"Writable mounts sync back\" — changed, new and deleted files reach the bucket.",
            |cx| Box::pin(sync_changes_back(cx)),
        ),
        Check::new(
            "mounts_sync_on_snapshot",
            a,
            &[FileRead, FileWrite, FileManagement, Snapshots],
            "snapshot: writable mounts sync back before the workspace is captured.",
            |cx| Box::pin(sync_on_snapshot(cx)),
        ),
        Check::new(
            "mounts_large_object_streams",
            a,
            FILES,
            "Mounts: a 64 MiB object is materialized and synced back whole (multipart upload).",
            |cx| Box::pin(large_object_streams(cx)),
        ),
        Check::new(
            "mounts_read_only_refuses_writes",
            a,
            FILES,
            "RunnerMount.read_only: \"writes through the file API are refused and nothing syncs back\".",
            |cx| Box::pin(read_only_refuses_writes(cx)),
        ),
        Check::new(
            "mounts_wrong_secret_fails",
            a,
            FILES,
            "create_session: bad credentials fail loudly with PermissionDenied naming the mount.",
            |cx| Box::pin(wrong_secret_fails(cx)),
        ),
        Check::new(
            "mounts_missing_bucket_fails",
            a,
            FILES,
            "create_session: a missing bucket fails with NotFound naming the mount.",
            |cx| Box::pin(missing_bucket_fails(cx)),
        ),
        Check::new(
            "mounts_unreachable_endpoint_fails",
            a,
            FILES,
            "create_session: an unreachable endpoint fails with Unavailable naming the mount.",
            |cx| Box::pin(unreachable_endpoint_fails(cx)),
        ),
        Check::new(
            "mounts_box_storage_refused",
            a,
            &[],
            "validate_destination: box_storage \"rejects it with a clear message\" (no object_store backend).",
            |cx| Box::pin(box_storage_refused(cx)),
        ),
        Check::new(
            "mounts_secrets_never_leak",
            a,
            FILES,
            "Secrets: values never appear in state, Debug, error messages or tracing output during a credentialed mount.",
            |cx| Box::pin(secrets_never_leak(cx)),
        ),
    ]
}

/// A fresh key prefix for one check.
pub(crate) fn unique_prefix(cx: &Cx) -> String {
    format!("conformance/{}-{}", cx.name, unique_suffix())
}

/// A client for `prefix` of the target, with valid credentials.
pub(crate) async fn client(
    target: &ObjectStoreTarget,
    prefix: &str,
) -> CheckResult<(Arc<dyn ObjectStore>, StorePath)> {
    target
        .spec(prefix)
        .open("conformance client", target.resolver.as_ref())
        .await
        .or_fail(format!("opening the object store at {prefix}"))
}

fn key(prefix: &StorePath, rel: &str) -> StorePath {
    rel.split('/')
        .fold(prefix.clone(), |path, part| path.clone().join(part))
}

async fn put(
    store: &Arc<dyn ObjectStore>,
    prefix: &StorePath,
    rel: &str,
    bytes: &[u8],
) -> CheckResult {
    store
        .put(&key(prefix, rel), PutPayload::from(bytes.to_vec()))
        .await
        .map(|_| ())
        .map_err(|e| format!("seeding object {rel}: {e}"))
}

/// The object's bytes, or `None` when it does not exist.
pub(crate) async fn get(
    store: &Arc<dyn ObjectStore>,
    location: &StorePath,
) -> CheckResult<Option<Vec<u8>>> {
    match store.get(location).await {
        Ok(got) => got
            .bytes()
            .await
            .map(|b| Some(b.to_vec()))
            .map_err(|e| format!("reading object {location}: {e}")),
        Err(runner_mounts::object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading object {location}: {e}")),
    }
}

async fn object(
    store: &Arc<dyn ObjectStore>,
    prefix: &StorePath,
    rel: &str,
) -> CheckResult<Option<Vec<u8>>> {
    get(store, &key(prefix, rel)).await
}

/// Every key under `prefix`, relative to it, sorted.
async fn keys(store: &Arc<dyn ObjectStore>, prefix: &StorePath) -> CheckResult<Vec<String>> {
    let mut out = Vec::new();
    let mut listing = store.list(Some(prefix));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| format!("listing {prefix}: {e}"))?;
        if let Some(parts) = meta.location.prefix_match(prefix) {
            out.push(
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    out.sort();
    Ok(out)
}

/// The destination with one mount of `uri` at a fresh path.
fn with_mount(
    cx: &Cx,
    uri: String,
    credentials: Option<RunnerSecretRef>,
    read_only: bool,
) -> (RunnerDestination, RunnerMount) {
    let mount = RunnerMount {
        name: format!("{}-mount", cx.name),
        path: PathBuf::from(format!("conformance-mount-{}", unique_suffix())),
        read_only,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::S3,
            uri,
            credentials,
        },
    };
    let mut destination = cx.destination.clone();
    destination.default_manifest.mounts.push(mount.clone());
    (destination, mount)
}

/// A session for `destination`, closed after the check.
async fn session_for(
    cx: &Cx,
    destination: RunnerDestination,
    mount: &RunnerMount,
) -> CheckResult<Session> {
    let session = cx
        .provider
        .create_session(destination)
        .await
        .or_fail(format!("create_session with mount {:?}", mount.name))?;
    cx.adopt(session.clone());
    Ok(session)
}

async fn read(s: &Session, path: PathBuf) -> CheckResult<Vec<u8>> {
    Ok(s.read_file(RunnerFileReadRequest::new(path.clone()))
        .await
        .or_fail(format!("read_file {}", path.display()))?
        .contents)
}

async fn write(s: &Session, path: PathBuf, bytes: &[u8]) -> CheckResult {
    s.write_file(RunnerFileWriteRequest::new(path.clone(), bytes.to_vec()))
        .await
        .or_fail(format!("write_file {}", path.display()))
}

async fn materialize_copies_prefix(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    let binary = all_byte_values();
    put(&store, &root, "a.txt", b"alpha\n").await?;
    put(&store, &root, "nested/deep/b.bin", &binary).await?;
    put(&store, &root, "empty", b"").await?;
    let (sibling_store, sibling) = client(&target, &format!("{prefix}-sibling")).await?;
    put(&sibling_store, &sibling, "outside.txt", b"not mounted").await?;
    let (destination, mount) =
        with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), false);
    let s = session_for(&cx, destination, &mount).await?;
    same_bytes(
        &read(&s, mount.path.join("a.txt")).await?,
        b"alpha\n",
        "a.txt",
    )?;
    same_bytes(
        &read(&s, mount.path.join("nested/deep/b.bin")).await?,
        &binary,
        "nested/deep/b.bin",
    )?;
    same_bytes(&read(&s, mount.path.join("empty")).await?, b"", "empty")?;
    let names: Vec<String> = s
        .list_dir(&mount.path)
        .await
        .or_fail("list_dir of the mount")?
        .into_iter()
        .map(|e| e.name)
        .collect();
    ensure_eq!(
        names,
        vec!["a.txt", "empty", "nested"],
        "entries of the mount"
    );
    s.close().await.or_fail("close")
}

async fn sync_changes_back(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    put(&store, &root, "keep.txt", b"keep").await?;
    put(&store, &root, "change.txt", b"old").await?;
    put(&store, &root, "gone.txt", b"bye").await?;
    put(&store, &root, "dir/gone-too.txt", b"bye").await?;
    let (destination, mount) =
        with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), false);
    let s = session_for(&cx, destination, &mount).await?;
    write(&s, mount.path.join("change.txt"), b"new contents").await?;
    write(&s, mount.path.join("new/file.txt"), b"fresh").await?;
    s.remove(&mount.path.join("gone.txt"), false)
        .await
        .or_fail("remove gone.txt")?;
    s.remove(&mount.path.join("dir"), true)
        .await
        .or_fail("remove dir")?;
    s.sync_mounts().await.or_fail("sync_mounts")?;
    ensure_eq!(
        object(&store, &root, "keep.txt").await?,
        Some(b"keep".to_vec()),
        "keep.txt after sync_mounts"
    );
    ensure_eq!(
        object(&store, &root, "change.txt").await?,
        Some(b"new contents".to_vec()),
        "change.txt after sync_mounts"
    );
    ensure_eq!(
        object(&store, &root, "new/file.txt").await?,
        Some(b"fresh".to_vec()),
        "new/file.txt after sync_mounts"
    );
    ensure_eq!(
        object(&store, &root, "gone.txt").await?,
        None,
        "gone.txt after sync_mounts (deleted in the workspace)"
    );
    ensure_eq!(
        keys(&store, &root).await?,
        vec!["change.txt", "keep.txt", "new/file.txt"],
        "objects under the prefix after sync_mounts"
    );
    write(&s, mount.path.join("on-close.txt"), b"closing").await?;
    s.close().await.or_fail("close")?;
    ensure_eq!(
        object(&store, &root, "on-close.txt").await?,
        Some(b"closing".to_vec()),
        "on-close.txt after close (writable mounts sync back first)"
    );
    Ok(())
}

async fn sync_on_snapshot(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    let (destination, mount) =
        with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), false);
    let s = session_for(&cx, destination, &mount).await?;
    write(&s, mount.path.join("snap.txt"), b"before snapshot").await?;
    s.snapshot().await.or_fail("snapshot")?;
    ensure_eq!(
        object(&store, &root, "snap.txt").await?,
        Some(b"before snapshot".to_vec()),
        "snap.txt after snapshot"
    );
    s.close().await.or_fail("close")
}

const LARGE: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

async fn large_object_streams(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    // Seed 64 MiB with a multipart upload, one chunk in memory at a time.
    let base = seed();
    let upload = store
        .put_multipart(&key(&root, "big.bin"))
        .await
        .map_err(|e| format!("seeding big.bin: {e}"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * CHUNK);
    let mut hasher = Sha256::new();
    for i in 0..(LARGE as usize / CHUNK) {
        writer
            .wait_for_capacity(2)
            .await
            .map_err(|e| format!("seeding big.bin: {e}"))?;
        let chunk = pseudo_random(CHUNK, base.wrapping_add(i as u64));
        hasher.update(&chunk);
        writer.write(&chunk);
    }
    writer
        .finish()
        .await
        .map_err(|e| format!("seeding big.bin: {e}"))?;
    let expected = hex::encode(hasher.finalize());
    let (destination, mount) =
        with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), false);
    let s = session_for(&cx, destination, &mount).await?;
    let stat = s
        .stat(&mount.path.join("big.bin"))
        .await
        .or_fail("stat big.bin")?;
    ensure_eq!(stat.size, LARGE, "size of the materialized big.bin");
    let at = 40 * CHUNK as u64 + 17;
    let sample = s
        .read_file(RunnerFileReadRequest {
            path: mount.path.join("big.bin"),
            offset: Some(at),
            limit: Some(64),
        })
        .await
        .or_fail("read_file big.bin at 40 MiB")?;
    let chunk = pseudo_random(CHUNK, base.wrapping_add(40));
    same_bytes(
        &sample.contents,
        &chunk[17..17 + 64],
        "64 bytes of big.bin at 40 MiB + 17",
    )?;
    s.make_dir(&mount.path.join("moved"))
        .await
        .or_fail("make_dir moved")?;
    s.rename(
        &mount.path.join("big.bin"),
        &mount.path.join("moved/big.bin"),
    )
    .await
    .or_fail("rename big.bin to moved/big.bin")?;
    s.sync_mounts()
        .await
        .or_fail("sync_mounts of a 64 MiB file")?;
    ensure_eq!(
        object(&store, &root, "big.bin").await?.map(|b| b.len()),
        None,
        "big.bin after the rename was synced"
    );
    let got = store
        .get(&key(&root, "moved/big.bin"))
        .await
        .map_err(|e| format!("reading moved/big.bin back: {e}"))?;
    ensure_eq!(got.meta.size, LARGE, "size of the synced moved/big.bin");
    let mut stream = got.into_stream();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk.map_err(|e| format!("reading moved/big.bin back: {e}"))?);
    }
    ensure_eq!(
        hex::encode(hasher.finalize()),
        expected,
        "sha256 of the synced moved/big.bin"
    );
    s.close().await.or_fail("close")
}

async fn read_only_refuses_writes(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    put(&store, &root, "ro.txt", b"read only").await?;
    let (destination, mount) =
        with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), true);
    let s = session_for(&cx, destination, &mount).await?;
    same_bytes(
        &read(&s, mount.path.join("ro.txt")).await?,
        b"read only",
        "ro.txt",
    )?;
    s.write_file(RunnerFileWriteRequest::new(
        mount.path.join("ro.txt"),
        b"changed".to_vec(),
    ))
    .await
    .fails_with(
        RunnerErrorKind::PermissionDenied,
        "write_file over ro.txt in a read-only mount",
    )?;
    s.write_file(RunnerFileWriteRequest::new(
        mount.path.join("new.txt"),
        b"new".to_vec(),
    ))
    .await
    .fails_with(
        RunnerErrorKind::PermissionDenied,
        "write_file of new.txt in a read-only mount",
    )?;
    s.remove(&mount.path.join("ro.txt"), false)
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            "remove of ro.txt in a read-only mount",
        )?;
    if cx.caps.command_exec {
        // Commands are not confined by the file API; whatever they change stays local.
        let script = format!(
            "echo cmd > {}/cmd.txt 2>/dev/null; true",
            mount.path.display()
        );
        let request = shell(s.as_ref(), "ro-mount-write", &script);
        s.run_command(request)
            .await
            .or_fail("run_command writing into the mount")?;
    }
    s.sync_mounts()
        .await
        .or_fail("sync_mounts with a read-only mount")?;
    s.close().await.or_fail("close")?;
    ensure_eq!(
        keys(&store, &root).await?,
        vec!["ro.txt"],
        "objects under a read-only mount's prefix after sync and close"
    );
    ensure_eq!(
        object(&store, &root, "ro.txt").await?,
        Some(b"read only".to_vec()),
        "ro.txt after close"
    );
    Ok(())
}

/// Checks a failed `create_session`: `kind`, the mount named, no secret value.
async fn fails_naming_mount(
    cx: &Cx,
    destination: RunnerDestination,
    mount: &RunnerMount,
    kind: RunnerErrorKind,
    what: &str,
) -> CheckResult<String> {
    let result = cx.provider.create_session(destination).await;
    if let Ok(session) = &result {
        cx.adopt(session.clone());
    }
    let error = result
        .map(|_| ())
        .fails_with(kind, format!("create_session with {what}"))?;
    ensure!(
        error.message().contains(&mount.name),
        "create_session with {what}: the error does not name mount {:?}: {}",
        mount.name,
        error.message()
    );
    Ok(format!("{error:?} {error}"))
}

async fn wrong_secret_fails(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let prefix = unique_prefix(&cx);
    let (store, root) = client(&target, &prefix).await?;
    put(&store, &root, "x.txt", b"x").await?;
    let (destination, mount) = with_mount(
        &cx,
        target.uri(&prefix),
        Some(target.wrong_secret.clone()),
        false,
    );
    cx.provider
        .validate_destination(&destination)
        .await
        .or_fail("validate_destination (contacts no store)")?;
    let shown = fails_naming_mount(
        &cx,
        destination,
        &mount,
        RunnerErrorKind::PermissionDenied,
        "a wrong secret key",
    )
    .await?;
    no_secret_in(&target, &shown, "the error").await?;
    ensure_eq!(
        keys(&store, &root).await?,
        vec!["x.txt"],
        "objects after a failed mount"
    );
    Ok(())
}

async fn missing_bucket_fails(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let bucket = format!("conformance-missing-{}", unique_suffix());
    let uri = target.uri_in(&bucket, &target.endpoint, "data");
    let (destination, mount) = with_mount(&cx, uri, Some(target.secret.clone()), false);
    fails_naming_mount(
        &cx,
        destination,
        &mount,
        RunnerErrorKind::NotFound,
        "a missing bucket",
    )
    .await?;
    Ok(())
}

async fn unreachable_endpoint_fails(cx: Cx) -> CheckResult {
    let target = cx.store()?;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("binding a port: {e}"))?;
        listener
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
            .port()
    };
    let uri = target.uri_in(
        &target.bucket,
        &format!("http://127.0.0.1:{closed}"),
        "data",
    );
    let (destination, mount) = with_mount(&cx, uri, Some(target.secret.clone()), false);
    fails_naming_mount(
        &cx,
        destination,
        &mount,
        RunnerErrorKind::Unavailable,
        "a closed endpoint port",
    )
    .await?;
    Ok(())
}

async fn box_storage_refused(cx: Cx) -> CheckResult {
    let mut destination = cx.destination.clone();
    destination.default_manifest.mounts.push(RunnerMount {
        name: "box".into(),
        path: PathBuf::from("box"),
        read_only: false,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::BoxStorage,
            uri: "box://folder".into(),
            credentials: None,
        },
    });
    let error = cx
        .provider
        .validate_destination(&destination)
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "validate_destination with a box_storage mount",
        )?;
    ensure!(
        error.message().contains("box_storage") && error.message().contains("object_store"),
        "validate_destination with a box_storage mount: the message does not say why (box_storage has no \
         object_store backend): {}",
        error.message()
    );
    Ok(())
}

/// Fails when any value of the target's secrets appears in `text`.
async fn no_secret_in(target: &ObjectStoreTarget, text: &str, what: &str) -> CheckResult {
    for secret in [&target.secret, &target.wrong_secret] {
        let values = target
            .resolver
            .resolve(secret)
            .await
            .or_fail(format!("resolving secret {:?}", secret.id))?;
        for key in values.keys() {
            if let Some(value) = values.expose(key) {
                ensure!(
                    !text.contains(value),
                    "{what} contains the value of key {key:?} of secret {:?}",
                    secret.id
                );
            }
        }
    }
    Ok(())
}

async fn secrets_never_leak(cx: Cx) -> CheckResult {
    use tracing::instrument::WithSubscriber;
    let target = cx.store()?;
    let capture = Capture::default();
    let log = capture.log.clone();
    let shown = async {
        let mut shown = String::new();
        let prefix = unique_prefix(&cx);
        let (store, root) = client(&target, &prefix).await?;
        put(&store, &root, "in.txt", b"in").await?;
        let (destination, mount) =
            with_mount(&cx, target.uri(&prefix), Some(target.secret.clone()), false);
        let s = session_for(&cx, destination.clone(), &mount).await?;
        write(&s, mount.path.join("out.txt"), b"out").await?;
        s.sync_mounts().await.or_fail("sync_mounts")?;
        let state = s.state();
        let _ = write!(
            shown,
            "{state:?} {}",
            serde_json::to_string(&state).unwrap_or_default()
        );
        let _ = write!(shown, "{:?}", s.capabilities());
        match s
            .export_artifact(RunnerArtifactExportRequest {
                path: mount.path.join("out.txt"),
                recursive: false,
            })
            .await
        {
            Ok(result) => {
                let _ = write!(shown, "{result:?}");
            }
            Err(e) => {
                let _ = write!(shown, "{e:?} {e}");
            }
        }
        s.close().await.or_fail("close")?;
        let (wrong, wrong_mount) = with_mount(
            &cx,
            target.uri(&prefix),
            Some(target.wrong_secret.clone()),
            false,
        );
        shown += &fails_naming_mount(
            &cx,
            wrong,
            &wrong_mount,
            RunnerErrorKind::PermissionDenied,
            "a wrong secret key",
        )
        .await?;
        if let Err(e) = cx.provider.validate_destination(&destination).await {
            let _ = write!(shown, "{e:?} {e}");
        }
        Ok::<_, String>(shown)
    }
    .with_subscriber(capture)
    .await?;
    let logged = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    no_secret_in(&target, &shown, "state, Debug output, results or errors").await?;
    no_secret_in(&target, &logged, "tracing output").await?;
    Ok(())
}

/// A tracing subscriber that records every span and event field, at every level.
#[derive(Default, Clone)]
struct Capture {
    log: Arc<Mutex<String>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Capture {
    fn append(&self, f: impl FnOnce(&mut Fields<'_>)) {
        let mut line = String::new();
        f(&mut Fields(&mut line));
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push_str(&line);
        log.push('\n');
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.append(|fields| span.record(fields));
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.append(|fields| values.record(fields));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        self.append(|fields| event.record(fields));
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
