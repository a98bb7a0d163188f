//! `az://` mounts and artifact stores on unix-local against a real Azure Blob
//! endpoint: Azurite, Microsoft's storage emulator, on 127.0.0.1
//! (`scripts/provision/azurite.sh` starts it and exports `RUNNER_TEST_AZURITE=1`
//! with its endpoint, account, key and container).
//!
//! Objects seeded into a prefix are materialized into the session; a changed,
//! an added and a deleted file sync back on `sync_mounts` and on `close`; a
//! read-only mount refuses writes; a wrong key fails the session creation
//! loudly, naming the mount, leaving no workspace and never showing the key; a
//! missing container is `NotFound`; an exported artifact lands in the container
//! with the right bytes.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerArtifactExportRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerManifest, RunnerMount,
    RunnerMountIntent, RunnerMountKind, RunnerSecretRef,
};
use runner_local::LocalProvider;
use runner_mounts::StoreSpec;
use runner_mounts::object_store::path::Path as StorePath;
use runner_mounts::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use runner_mounts::{EnvSecretResolver, SecretResolver};
use runner_testkit::{BackendGate, async_trial};
use sha2::{Digest, Sha256};

type TestResult = Result<(), String>;

/// The secret holding Azurite's account key.
const SECRET_ID: &str = "azurite-good";
/// A secret holding a well-formed key that is not the account's.
const WRONG_SECRET_ID: &str = "azurite-bad";
/// A well-formed (base64) key that Azurite does not know.
const WRONG_KEY: &str =
    "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc=";

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} must be set when RUNNER_TEST_AZURITE=1"))
}

/// The emulator the provisioning script started.
struct Azurite {
    endpoint: String,
    account: String,
    key: String,
    container: String,
}

impl Azurite {
    fn from_env() -> Result<Self, String> {
        Ok(Self {
            endpoint: var("RUNNER_TEST_AZURITE_ENDPOINT")?,
            account: var("RUNNER_TEST_AZURITE_ACCOUNT")?,
            key: var("RUNNER_TEST_AZURITE_KEY")?,
            container: var("RUNNER_TEST_AZURITE_CONTAINER")?,
        })
    }

    /// Resolves [`SECRET_ID`] to the account key and [`WRONG_SECRET_ID`] to
    /// [`WRONG_KEY`].
    fn resolver(&self) -> Arc<dyn SecretResolver> {
        let var = |id: &str| format!("{}ACCESS_KEY", EnvSecretResolver::prefix_for(id));
        Arc::new(EnvSecretResolver::from_vars([
            (var(SECRET_ID), self.key.clone()),
            (var(WRONG_SECRET_ID), WRONG_KEY.to_string()),
        ]))
    }

    /// unix-local through the layer stack, which materializes the mounts and
    /// exports artifacts with this resolver.
    fn provider(&self) -> Arc<dyn RemoteRunnerProvider> {
        runner_stack::Stack::new()
            .with_resolver(self.resolver())
            .provider(Arc::new(LocalProvider::new()))
    }

    /// The mount URI of `prefix`, with the connection options in its query.
    fn uri(&self, prefix: &str) -> String {
        format!(
            "az://{}/{prefix}?account={}&endpoint={}&allow_http=true",
            self.container, self.account, self.endpoint
        )
    }

    /// The store config of `prefix` (the shape of a destination's `artifacts`).
    fn store_config(&self, prefix: &str) -> serde_json::Value {
        serde_json::json!({
            "uri": format!("az://{}/{prefix}", self.container),
            "credentials": { "id": SECRET_ID },
            "options": {
                "account": self.account,
                "endpoint": self.endpoint,
                "allow_http": true,
            },
        })
    }

    /// A client for `prefix`, opened the way mounts open theirs.
    async fn client(&self, prefix: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
        let spec: StoreSpec = serde_json::from_value(self.store_config(prefix))
            .map_err(|e| format!("store spec: {e}"))?;
        spec.open("azurite test client", self.resolver().as_ref())
            .await
            .map_err(|e| format!("opening az://{}/{prefix}: {e}", self.container))
    }
}

/// A prefix no other test or run uses.
fn unique_prefix(test: &str) -> String {
    format!("azure-tests/{test}-{}", uuid::Uuid::new_v4().simple())
}

fn mount(uri: String, secret: &str, read_only: bool) -> RunnerMount {
    RunnerMount {
        name: "data".into(),
        path: "data".into(),
        read_only,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::AzureBlob,
            uri,
            credentials: Some(RunnerSecretRef { id: secret.into() }),
        },
    }
}

/// A temporary directory only its owner may enter: unix-local refuses a
/// workspaces directory that group or others can reach.
fn private_tempdir() -> Result<tempfile::TempDir, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod 700 {}: {e}", dir.path().display()))?;
    Ok(dir)
}

fn destination(workspaces: &Path, mounts: Vec<RunnerMount>) -> RunnerDestination {
    RunnerDestination {
        id: "azure".into(),
        provider_id: "unix-local".into(),
        config: serde_json::json!({ "workspaces_dir": workspaces }),
        default_manifest: RunnerManifest {
            entries: vec![],
            mounts,
        },
        artifacts: None,
    }
}

fn key(prefix: &StorePath, rel: &str) -> StorePath {
    rel.split('/')
        .fold(prefix.clone(), |path, part| path.clone().join(part))
}

async fn put(store: &Arc<dyn ObjectStore>, location: &StorePath, bytes: &[u8]) -> TestResult {
    store
        .put(location, PutPayload::from(bytes.to_vec()))
        .await
        .map(|_| ())
        .map_err(|e| format!("seeding {location}: {e}"))
}

/// Every object under `prefix`, by key relative to it.
async fn objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &StorePath,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut listing = store.list(Some(prefix));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| format!("listing {prefix}: {e}"))?;
        let Some(parts) = meta.location.prefix_match(prefix) else {
            continue;
        };
        let rel = parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        let bytes = store
            .get(&meta.location)
            .await
            .map_err(|e| format!("reading {}: {e}", meta.location))?
            .bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", meta.location))?;
        out.insert(rel, bytes.to_vec());
    }
    Ok(out)
}

fn expect_objects(
    got: &BTreeMap<String, Vec<u8>>,
    want: &[(&str, &[u8])],
    when: &str,
) -> TestResult {
    let want: BTreeMap<String, Vec<u8>> = want
        .iter()
        .map(|(rel, bytes)| (rel.to_string(), bytes.to_vec()))
        .collect();
    if *got != want {
        let show = |map: &BTreeMap<String, Vec<u8>>| {
            map.iter()
                .map(|(rel, bytes)| format!("{rel} ({} bytes)", bytes.len()))
                .collect::<Vec<_>>()
        };
        return Err(format!(
            "{when}: the container holds {:?}, expected {:?}",
            show(got),
            show(&want)
        ));
    }
    Ok(())
}

async fn read(session: &dyn RemoteRunnerSession, path: &str) -> Result<Vec<u8>, String> {
    session
        .read_file(RunnerFileReadRequest::new(path))
        .await
        .map(|read| read.contents)
        .map_err(|e| format!("read_file {path}: {e}"))
}

async fn write(session: &dyn RemoteRunnerSession, path: &str, bytes: &[u8]) -> TestResult {
    session
        .write_file(RunnerFileWriteRequest::new(path, bytes.to_vec()))
        .await
        .map_err(|e| format!("write_file {path}: {e}"))
}

/// Bytes 0..=255 twice: every byte value, NUL included.
fn binary() -> Vec<u8> {
    (0..=255u8).chain(0..=255u8).collect()
}

/// Seeded objects are materialized; a changed, an added and a deleted file
/// reach the container on `sync_mounts`, and later changes on `close`.
async fn mount_materializes_and_syncs_back() -> TestResult {
    let azurite = Azurite::from_env()?;
    let prefix = unique_prefix("sync");
    let (store, root) = azurite.client(&prefix).await?;
    let binary = binary();
    put(&store, &key(&root, "keep.txt"), b"unchanged\n").await?;
    put(&store, &key(&root, "change.txt"), b"before\n").await?;
    put(&store, &key(&root, "gone.txt"), b"delete me\n").await?;
    put(&store, &key(&root, "sub/deeper/blob.bin"), &binary).await?;
    // A sibling prefix that starts with the same characters stays outside.
    let (_, sibling) = azurite.client(&format!("{prefix}-sibling")).await?;
    put(&store, &key(&sibling, "outside.txt"), b"not mounted").await?;

    let dir = private_tempdir()?;
    let provider = azurite.provider();
    if !provider.capabilities().mounts.azure_blob {
        return Err("unix-local does not declare azure_blob mounts".into());
    }
    let session = provider
        .create_session(destination(
            dir.path(),
            vec![mount(azurite.uri(&prefix), SECRET_ID, false)],
        ))
        .await
        .map_err(|e| format!("create_session with an az:// mount: {e}"))?;
    let s = session.as_ref();

    let mut listed = s
        .list_dir(Path::new("data"))
        .await
        .map_err(|e| format!("list_dir data: {e}"))?
        .into_iter()
        .map(|stat| stat.name)
        .collect::<Vec<_>>();
    listed.sort();
    let expected = ["change.txt", "gone.txt", "keep.txt", "sub"];
    if listed != expected {
        return Err(format!(
            "the mount directory holds {listed:?}, expected {expected:?}"
        ));
    }
    if read(s, "data/change.txt").await? != b"before\n" {
        return Err("data/change.txt was not materialized with its object's bytes".into());
    }
    if read(s, "data/sub/deeper/blob.bin").await? != binary {
        return Err("data/sub/deeper/blob.bin did not round-trip byte for byte".into());
    }

    // Over the 8 MiB part size, so it goes up as a multipart (block list) upload.
    let big: Vec<u8> = binary
        .iter()
        .copied()
        .cycle()
        .take(8 * 1024 * 1024 + 4099)
        .collect();
    write(s, "data/change.txt", b"after\n").await?;
    write(s, "data/new/added.txt", b"added in the session\n").await?;
    write(s, "data/big.bin", &big).await?;
    s.remove(Path::new("data/gone.txt"), false)
        .await
        .map_err(|e| format!("remove data/gone.txt: {e}"))?;
    s.sync_mounts()
        .await
        .map_err(|e| format!("sync_mounts: {e}"))?;
    expect_objects(
        &objects(&store, &root).await?,
        &[
            ("big.bin", &big),
            ("change.txt", b"after\n"),
            ("keep.txt", b"unchanged\n"),
            ("new/added.txt", b"added in the session\n"),
            ("sub/deeper/blob.bin", &binary),
        ],
        "after sync_mounts",
    )?;

    write(s, "data/keep.txt", b"changed before close\n").await?;
    write(s, "data/late.txt", b"written last").await?;
    s.remove(Path::new("data/new"), true)
        .await
        .map_err(|e| format!("remove data/new: {e}"))?;
    s.close().await.map_err(|e| format!("close: {e}"))?;
    expect_objects(
        &objects(&store, &root).await?,
        &[
            ("big.bin", &big),
            ("change.txt", b"after\n"),
            ("keep.txt", b"changed before close\n"),
            ("late.txt", b"written last"),
            ("sub/deeper/blob.bin", &binary),
        ],
        "after close",
    )?;
    expect_objects(
        &objects(&store, &sibling).await?,
        &[("outside.txt", b"not mounted")],
        "the sibling prefix",
    )
}

/// A read-only mount is materialized, refuses writes through the file API
/// with `PermissionDenied`, and never syncs back.
async fn read_only_mount_refuses_writes() -> TestResult {
    let azurite = Azurite::from_env()?;
    let prefix = unique_prefix("read-only");
    let (store, root) = azurite.client(&prefix).await?;
    put(&store, &key(&root, "fixed.txt"), b"read only\n").await?;

    let dir = private_tempdir()?;
    let session = azurite
        .provider()
        .create_session(destination(
            dir.path(),
            vec![mount(azurite.uri(&prefix), SECRET_ID, true)],
        ))
        .await
        .map_err(|e| format!("create_session with a read-only az:// mount: {e}"))?;
    let s = session.as_ref();
    if read(s, "data/fixed.txt").await? != b"read only\n" {
        return Err("data/fixed.txt was not materialized".into());
    }
    let refused = [
        (
            "write_file data/fixed.txt",
            s.write_file(RunnerFileWriteRequest::new("data/fixed.txt", b"x".to_vec()))
                .await,
        ),
        (
            "write_file data/new.txt",
            s.write_file(RunnerFileWriteRequest::new("data/new.txt", b"x".to_vec()))
                .await,
        ),
        (
            "remove data/fixed.txt",
            s.remove(Path::new("data/fixed.txt"), false).await,
        ),
    ];
    for (what, outcome) in refused {
        match outcome {
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
            Err(e) => return Err(format!("{what}: expected PermissionDenied, got {e}")),
            Ok(()) => return Err(format!("{what} succeeded on a read-only mount")),
        }
    }
    if read(s, "data/fixed.txt").await? != b"read only\n" {
        return Err("a refused write changed data/fixed.txt".into());
    }
    s.close().await.map_err(|e| format!("close: {e}"))?;
    expect_objects(
        &objects(&store, &root).await?,
        &[("fixed.txt", b"read only\n")],
        "after closing a read-only mount",
    )
}

/// A wrong account key fails `create_session` with `PermissionDenied` naming
/// the mount, leaves no workspace behind, and shows neither key.
async fn wrong_key_fails_loudly() -> TestResult {
    let azurite = Azurite::from_env()?;
    let prefix = unique_prefix("wrong-key");
    let (store, root) = azurite.client(&prefix).await?;
    put(&store, &key(&root, "secret-data.txt"), b"not for you").await?;

    let dir = private_tempdir()?;
    let workspaces = dir.path().join("workspaces");
    let err = match azurite
        .provider()
        .create_session(destination(
            &workspaces,
            vec![mount(azurite.uri(&prefix), WRONG_SECRET_ID, false)],
        ))
        .await
    {
        Ok(session) => {
            let _ = session.close().await;
            return Err("create_session succeeded with a wrong account key".into());
        }
        Err(err) => err,
    };
    if err.kind() != RunnerErrorKind::PermissionDenied {
        return Err(format!(
            "expected PermissionDenied, got {:?}: {err}",
            err.kind()
        ));
    }
    if !err.message().contains("\"data\"") {
        return Err(format!("the error does not name the mount \"data\": {err}"));
    }
    let shown = format!("{err} {err:?}");
    for (name, value) in [
        ("the wrong key", WRONG_KEY),
        ("the account key", &azurite.key),
    ] {
        if shown.contains(value) {
            return Err(format!("{name} appears in the error or its Debug output"));
        }
    }
    let left = support::workspaces_in(&workspaces);
    if !left.is_empty() {
        return Err(format!("workspaces left behind: {left:?}"));
    }
    Ok(())
}

/// A container that does not exist fails `create_session` with `NotFound`
/// naming the mount.
async fn missing_container_fails() -> TestResult {
    let missing = Azurite {
        container: format!("missing-{}", uuid::Uuid::new_v4().simple()),
        ..Azurite::from_env()?
    };
    let dir = private_tempdir()?;
    match missing
        .provider()
        .create_session(destination(
            dir.path(),
            vec![mount(missing.uri("prefix"), SECRET_ID, true)],
        ))
        .await
    {
        Ok(session) => {
            let _ = session.close().await;
            Err(format!(
                "create_session succeeded with the missing container {}",
                missing.container
            ))
        }
        Err(err)
            if err.kind() == RunnerErrorKind::NotFound && err.message().contains("\"data\"") =>
        {
            Ok(())
        }
        Err(err) => Err(format!(
            "expected NotFound naming the mount \"data\", got {:?}: {err}",
            err.kind()
        )),
    }
}

/// `export_artifact` to an `az://` store: the object holds the file's bytes,
/// and the id, URL and metadata describe it.
async fn artifact_export_lands_in_container() -> TestResult {
    let azurite = Azurite::from_env()?;
    let prefix = unique_prefix("artifacts");
    let dir = private_tempdir()?;
    let mut destination = destination(dir.path(), vec![]);
    destination.artifacts = Some(azurite.store_config(&prefix));
    let session = azurite
        .provider()
        .create_session(destination)
        .await
        .map_err(|e| format!("create_session with an az:// artifact store: {e}"))?;
    let s = session.as_ref();
    let contents: Vec<u8> = binary().into_iter().cycle().take(200 * 1024 + 7).collect();
    write(s, "out/report.bin", &contents).await?;
    let result = s
        .export_artifact(RunnerArtifactExportRequest {
            path: PathBuf::from("out/report.bin"),
            recursive: false,
        })
        .await
        .map_err(|e| format!("export_artifact out/report.bin: {e}"))?;
    s.close().await.map_err(|e| format!("close: {e}"))?;

    let sha = hex::encode(Sha256::digest(&contents));
    let meta = &result.metadata;
    if meta["sha256"].as_str() != Some(sha.as_str())
        || result.artifact_id != format!("sha256-{sha}")
        || meta["size"].as_u64() != Some(contents.len() as u64)
    {
        return Err(format!(
            "export result does not describe the file (sha256 {sha}, {} bytes): {result:?}",
            contents.len()
        ));
    }
    let key = meta["key"]
        .as_str()
        .ok_or_else(|| format!("export metadata has no key: {meta}"))?;
    let url = result.url.clone().unwrap_or_default();
    if url != format!("az://{}/{key}", azurite.container) {
        return Err(format!("export url {url:?} does not name the object {key}"));
    }
    let (store, _) = azurite.client("").await?;
    let back = store
        .get(&StorePath::from(key))
        .await
        .map_err(|e| format!("reading the artifact {key}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("reading the artifact {key}: {e}"))?;
    if back.as_ref() != contents.as_slice() {
        return Err(format!(
            "the artifact {key} holds {} bytes that differ from the {} bytes exported",
            back.len(),
            contents.len()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    BackendGate::new(
        "RUNNER_TEST_AZURITE",
        "scripts/provision/azurite.sh starts Azurite on 127.0.0.1",
    )
    .run(vec![
        async_trial(
            "azure_mount_materializes_and_syncs_back",
            mount_materializes_and_syncs_back,
        ),
        async_trial(
            "azure_read_only_mount_refuses_writes",
            read_only_mount_refuses_writes,
        ),
        async_trial("azure_wrong_key_fails_loudly", wrong_key_fails_loudly),
        async_trial("azure_missing_container_fails", missing_container_fails),
        async_trial(
            "azure_artifact_export_lands_in_container",
            artifact_export_lands_in_container,
        ),
    ])
}
