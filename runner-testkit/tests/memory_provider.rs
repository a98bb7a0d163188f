//! `MemoryProvider` behaviour beyond the conformance checks: manifests,
//! read-only entries, destinations, handles.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerDestination, RunnerErrorKind,
    RunnerFileReadRequest, RunnerFileWriteRequest, RunnerManifest, RunnerManifestEntry,
    RunnerMount, RunnerMountIntent, RunnerMountKind,
};
use runner_stack::{RemoteWorkspace, RunnerRegistry};
use runner_testkit::{MEMORY_WORKSPACE_ROOT, MemoryProvider};

fn destination(manifest: RunnerManifest) -> RunnerDestination {
    RunnerDestination {
        id: "unit".into(),
        provider_id: "memory".into(),
        config: serde_json::Value::Null,
        default_manifest: manifest,
        artifacts: None,
    }
}

/// A host directory with `src/lib.rs` and `README.md`, removed on drop.
struct HostDir(PathBuf);

impl HostDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("memory-provider-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::write(dir.join("src/lib.rs"), b"pub fn f() {}\n").expect("write");
        std::fs::write(dir.join("README.md"), b"# readme\n").expect("write");
        Self(dir)
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn read(s: &dyn RemoteRunnerSession, path: &str) -> Vec<u8> {
    s.read_file(RunnerFileReadRequest::new(path))
        .await
        .expect("read_file")
        .contents
}

#[tokio::test]
async fn manifest_entries_are_copied_and_read_only_ones_refuse_writes() {
    let host = HostDir::new();
    let manifest = RunnerManifest {
        entries: vec![
            RunnerManifestEntry {
                source: host.0.join("src"),
                target: "code/src".into(),
                writable: true,
            },
            RunnerManifestEntry {
                source: host.0.join("README.md"),
                target: "docs/README.md".into(),
                writable: false,
            },
        ],
        mounts: vec![],
    };
    let provider = MemoryProvider::new();
    let s = provider
        .create_session(destination(manifest))
        .await
        .expect("session");
    assert_eq!(
        read(s.as_ref(), "code/src/lib.rs").await,
        b"pub fn f() {}\n"
    );
    assert_eq!(read(s.as_ref(), "docs/README.md").await, b"# readme\n");
    s.write_file(RunnerFileWriteRequest::new(
        "code/src/new.rs",
        b"x".to_vec(),
    ))
    .await
    .expect("writable entry");
    let refused = s
        .write_file(RunnerFileWriteRequest::new("docs/README.md", b"x".to_vec()))
        .await
        .expect_err("read-only entry");
    assert_eq!(refused.kind(), RunnerErrorKind::PermissionDenied);
    let refused = s
        .remove(Path::new("docs"), true)
        .await
        .expect_err("parent of a read-only entry");
    assert_eq!(refused.kind(), RunnerErrorKind::PermissionDenied);
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_missing_manifest_source_is_not_found() {
    let manifest = RunnerManifest {
        entries: vec![RunnerManifestEntry {
            source: "/nonexistent/conformance-source".into(),
            target: "x".into(),
            writable: true,
        }],
        mounts: vec![],
    };
    let err = MemoryProvider::new()
        .create_session(destination(manifest))
        .await
        .err()
        .expect("missing source");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
}

#[tokio::test]
async fn destinations_are_validated() {
    let provider = MemoryProvider::new();
    let mut other = destination(RunnerManifest::default());
    other.provider_id = "docker".into();
    let err = provider
        .create_session(other)
        .await
        .err()
        .expect("wrong provider");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    let mut bad_config = destination(RunnerManifest::default());
    bad_config.config = serde_json::json!("not an object");
    let err = provider
        .validate_destination(&bad_config)
        .await
        .expect_err("bad config");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    let mounted = destination(RunnerManifest {
        entries: vec![],
        mounts: vec![RunnerMount {
            name: "data".into(),
            path: "data".into(),
            read_only: true,
            intent: RunnerMountIntent {
                kind: RunnerMountKind::ProviderNative,
                uri: "/srv/data".into(),
                credentials: None,
            },
        }],
    });
    let err = provider
        .validate_destination(&mounted)
        .await
        .expect_err("provider_native mount");
    assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
}

#[tokio::test]
async fn works_through_the_registry_and_a_workspace() {
    let mut registry = RunnerRegistry::new();
    registry
        .register(Arc::new(MemoryProvider::new()))
        .expect("register");
    let s = registry
        .create_session(destination(RunnerManifest::default()))
        .await
        .expect("session");
    assert_eq!(s.workspace_root(), PathBuf::from(MEMORY_WORKSPACE_ROOT));
    let ws = RemoteWorkspace::for_session(s.clone());
    ws.write_file(RunnerFileWriteRequest::new("a/b.txt", b"b".to_vec()))
        .await
        .expect("write");
    assert_eq!(read(&ws, "/workspace/a/b.txt").await, b"b");
    let err = ws
        .write_file(RunnerFileWriteRequest::new("/etc/passwd", b"x".to_vec()))
        .await
        .expect_err("outside");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
    ws.close().await.expect("close");
}

#[tokio::test]
async fn resume_without_snapshot_shares_an_open_session() {
    let provider = MemoryProvider::new();
    let s = provider
        .create_session(destination(RunnerManifest::default()))
        .await
        .expect("session");
    s.write_file(RunnerFileWriteRequest::new("shared.txt", b"1".to_vec()))
        .await
        .expect("write");
    let again = provider.resume_session(s.state()).await.expect("resume");
    assert_eq!(read(again.as_ref(), "shared.txt").await, b"1");
    again.close().await.expect("close");
    let err = provider
        .resume_session(s.state())
        .await
        .err()
        .expect("closed");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    let err = s
        .read_file(RunnerFileReadRequest::new("shared.txt"))
        .await
        .expect_err("closed through the other handle");
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
    s.close().await.expect("close is idempotent");
    assert!(
        provider
            .sweep_orphans()
            .await
            .expect("sweep")
            .removed
            .is_empty()
    );
}
