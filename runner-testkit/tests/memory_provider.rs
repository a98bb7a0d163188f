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

/// A tar of `(name, type, data or link target)` entries.
fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            header.set_size(0);
            let target = std::str::from_utf8(data).expect("utf-8 link");
            builder
                .append_link(&mut header, name, target)
                .expect("append link");
        } else {
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, name, *data)
                .expect("append");
        }
    }
    builder.into_inner().expect("finish tar")
}

#[tokio::test]
async fn archives_make_symlinks_that_paths_follow() {
    let provider = MemoryProvider::new();
    let s = provider
        .create_session(destination(RunnerManifest::default()))
        .await
        .expect("session");
    let archive = tar_of(&[
        (
            "real/file.txt",
            tar::EntryType::Regular,
            b"through the link",
        ),
        ("link", tar::EntryType::Symlink, b"real"),
        ("out", tar::EntryType::Symlink, b"/etc"),
    ]);
    s.upload_archive(Path::new("t"), archive)
        .await
        .expect("upload");
    assert_eq!(
        read(s.as_ref(), "t/link/file.txt").await,
        b"through the link"
    );
    let stat = s.stat(Path::new("t/link")).await.expect("stat");
    assert_eq!(stat.kind, runner_api::RunnerFileKind::Symlink);
    assert_eq!(stat.symlink_target, Some(PathBuf::from("real")));
    assert_eq!(
        s.canonicalize(Path::new("t/link/file.txt"))
            .await
            .expect("canonicalize"),
        PathBuf::from("/workspace/t/real/file.txt")
    );
    // An entry below a link already in the tree that leads out of the target
    // is refused, and nothing of that upload lands.
    let escaping = tar_of(&[
        ("fine.txt", tar::EntryType::Regular, b"x"),
        ("out/passwd", tar::EntryType::Regular, b"x"),
    ]);
    let err = s
        .upload_archive(Path::new("t"), escaping)
        .await
        .expect_err("through a link out of the target");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    let err = s
        .stat(Path::new("t/fine.txt"))
        .await
        .expect_err("nothing of a refused upload lands");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    // Removing the link leaves its target.
    s.remove(Path::new("t/link"), true).await.expect("remove");
    assert_eq!(
        read(s.as_ref(), "t/real/file.txt").await,
        b"through the link"
    );
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_failing_body_keeps_the_old_file() {
    let provider = MemoryProvider::new();
    let s = provider
        .create_session(destination(RunnerManifest::default()))
        .await
        .expect("session");
    s.write_file(RunnerFileWriteRequest::new("f.txt", b"old".to_vec()))
        .await
        .expect("write");
    let body: runner_api::RunnerByteStream = Box::pin(futures_util::stream::iter([
        Ok(bytes::Bytes::from_static(b"new ")),
        Err(runner_api::RunnerError::new(
            RunnerErrorKind::Cancelled,
            "body failed",
        )),
    ]));
    let err = s
        .write_file_stream(RunnerFileWriteRequest::new("f.txt", b"x".to_vec()), body)
        .await
        .expect_err("the body failed");
    assert_eq!(err.kind(), RunnerErrorKind::Cancelled);
    assert_eq!(read(s.as_ref(), "f.txt").await, b"old");
    s.close().await.expect("close");
}

#[tokio::test]
async fn resumes_trust_only_known_destinations() {
    let provider = MemoryProvider::new();
    let s = provider
        .create_session(destination(RunnerManifest::default()))
        .await
        .expect("session");
    let mut state = s.state();
    state.snapshot = Some(s.snapshot().await.expect("snapshot"));
    state.destination_id = "elsewhere".into();
    let err = provider
        .resume_session(state.clone())
        .await
        .err()
        .expect("an unknown destination");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("\"elsewhere\""), "{err}");
    let mut elsewhere = destination(RunnerManifest::default());
    elsewhere.id = "elsewhere".into();
    provider.trust_destination(&elsewhere);
    let forked = provider.resume_session(state).await.expect("trusted");
    assert_eq!(forked.state().destination_id, "elsewhere");
    forked.close().await.expect("close");
    s.close().await.expect("close");
}
