//! The stack: what a stacked provider claims and validates, what it hands
//! the provider, how resumed sessions find their destination, the moved
//! artifacts setting, and the registry opening a thread binding.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runner_api::{
    RunnerArtifactExportRequest, RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerManifest, RunnerMount, RunnerMountIntent, RunnerMountKind, ThreadRunnerBinding,
    bytes_stream,
};
use runner_stack::{RunnerRegistry, Stack};
use runner_testkit::MemoryProvider;
use support::{Probe, destination};

/// A destination whose artifact store is the in-process store `name`.
fn with_artifacts(id: &str, name: &str) -> runner_api::RunnerDestination {
    runner_api::RunnerDestination {
        artifacts: Some(serde_json::json!({ "uri": format!("memory://{name}/artifacts") })),
        ..destination(id)
    }
}

fn store_mount(kind: RunnerMountKind) -> RunnerMount {
    RunnerMount {
        name: "data".into(),
        path: "data".into(),
        read_only: false,
        intent: RunnerMountIntent {
            kind,
            uri: "memory://stack-mounts/data".into(),
            credentials: None,
        },
    }
}

#[tokio::test]
async fn stacked_capabilities_add_store_kinds_and_artifact_export() {
    let provider = runner_stack::stacked(MemoryProvider::new());
    let caps = provider.capabilities();
    let kinds = runner_mounts::store_mount_kinds();
    assert!(caps.artifact_export);
    assert_eq!(
        (
            caps.mounts.s3,
            caps.mounts.r2,
            caps.mounts.gcs,
            caps.mounts.azure_blob
        ),
        (kinds.s3, kinds.r2, kinds.gcs, kinds.azure_blob)
    );
    assert!(!MemoryProvider::memory_capabilities().artifact_export);

    // Without file access the stack adds nothing: it could not mount or export.
    let bare = runner_api::RunnerCapabilities::default();
    assert_eq!(
        runner_mounts::mounted_capabilities(bare.clone(), true),
        bare
    );
}

#[tokio::test]
async fn a_session_claims_artifact_export_only_with_a_store_and_exports() {
    let provider = runner_stack::stacked(MemoryProvider::new());
    let plain = provider.create_session(destination("plain")).await.unwrap();
    assert!(!plain.capabilities().artifact_export);
    plain.close().await.unwrap();

    let s = provider
        .create_session(with_artifacts("stored", "stack-export"))
        .await
        .unwrap();
    assert!(s.capabilities().artifact_export);
    s.write_file(RunnerFileWriteRequest::new("out/r.txt", b"report".to_vec()))
        .await
        .unwrap();
    let file = s
        .export_artifact(RunnerArtifactExportRequest {
            path: "out/r.txt".into(),
            recursive: false,
        })
        .await
        .unwrap();
    assert_eq!(file.path, PathBuf::from("out/r.txt"));
    assert_eq!(file.metadata["size"], 6);
    assert_eq!(file.metadata["format"], "file");
    let tree = s
        .export_artifact(RunnerArtifactExportRequest {
            path: "out".into(),
            recursive: true,
        })
        .await
        .unwrap();
    assert_eq!(tree.metadata["format"], "tar");
    assert_eq!(tree.metadata["file_count"], 1);
    s.close().await.unwrap();
}

#[tokio::test]
async fn validation_checks_stores_and_manifest_then_hands_over_the_native_destination() {
    let probe = Probe::default();
    let provider = runner_stack::stacked(probe.clone());

    let mut d = with_artifacts("d", "stack-validate");
    d.default_manifest = RunnerManifest {
        entries: vec![],
        mounts: vec![store_mount(RunnerMountKind::S3)],
    };
    let result = provider.validate_destination(&d).await;
    if runner_mounts::store_mount_kinds().s3 {
        result.expect("an s3 mount validates");
        let seen = probe.seen.destinations();
        let native = seen.last().expect("the provider validated");
        assert!(native.default_manifest.mounts.is_empty(), "{native:?}");
        assert_eq!(native.artifacts, None);
    } else {
        assert_eq!(result.unwrap_err().kind(), RunnerErrorKind::Unsupported);
        assert!(
            probe.seen.destinations().is_empty(),
            "refused before the provider"
        );
    }

    let mut wrong_scheme = destination("w");
    wrong_scheme.default_manifest.mounts = vec![RunnerMount {
        intent: RunnerMountIntent {
            uri: "s3://bucket/p".into(),
            ..store_mount(RunnerMountKind::Gcs).intent
        },
        ..store_mount(RunnerMountKind::Gcs)
    }];
    let err = provider
        .validate_destination(&wrong_scheme)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    assert!(err.message().contains("\"data\""), "{err}");

    let mut boxed = destination("b");
    boxed.default_manifest.mounts = vec![store_mount(RunnerMountKind::BoxStorage)];
    let err = provider.validate_destination(&boxed).await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);

    let bad_store = runner_api::RunnerDestination {
        artifacts: Some(serde_json::json!({ "uri": 7 })),
        ..destination("bad")
    };
    let err = provider.validate_destination(&bad_store).await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    assert!(
        err.message().contains("artifacts") && err.message().contains("\"bad\""),
        "{err}"
    );

    // create_session hands over the same native destination.
    let s = provider
        .create_session(with_artifacts("c", "stack-validate"))
        .await
        .unwrap();
    let created = probe.seen.destinations().pop().unwrap();
    assert_eq!(
        (created.id.as_str(), created.artifacts.clone()),
        ("c", None)
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn the_artifact_store_in_config_is_refused_saying_where_it_moved() {
    let probe = Probe::default();
    let provider = runner_stack::stacked(probe.clone());
    let old = runner_api::RunnerDestination {
        config: serde_json::json!({ "artifacts": { "uri": "memory://old/a" } }),
        ..destination("old")
    };
    for err in [
        provider.validate_destination(&old).await.unwrap_err(),
        provider
            .create_session(old.clone())
            .await
            .err()
            .expect("refused"),
    ] {
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        let message = err.message();
        assert!(
            message.contains("config.artifacts")
                && message.contains("`artifacts` field")
                && message.contains("\"old\""),
            "{message}"
        );
    }
    assert!(
        probe.seen.destinations().is_empty(),
        "refused before the provider"
    );
}

#[tokio::test]
async fn resume_finds_the_destination_for_its_artifact_store() {
    let memory = MemoryProvider::new();
    let provider = runner_stack::stacked(memory.clone());
    let s = provider
        .create_session(with_artifacts("r", "stack-resume"))
        .await
        .unwrap();
    s.write_file(RunnerFileWriteRequest::new("f.txt", b"kept".to_vec()))
        .await
        .unwrap();
    let state = s.state();

    let resumed = provider.resume_session(state.clone()).await.unwrap();
    assert!(resumed.capabilities().artifact_export);
    let exported = resumed
        .export_artifact(RunnerArtifactExportRequest {
            path: "f.txt".into(),
            recursive: false,
        })
        .await
        .unwrap();
    assert_eq!(exported.metadata["size"], 4);

    // Another stack over the same provider was never given the destination:
    // its resumed session names no artifact store, until it is trusted.
    let other = Stack::new().provider(Arc::new(memory.clone()));
    let stranger = other.resume_session(state.clone()).await.unwrap();
    assert!(!stranger.capabilities().artifact_export);
    other.trust_destination(&with_artifacts("r", "stack-resume"));
    let trusted = other.resume_session(state).await.unwrap();
    assert!(trusted.capabilities().artifact_export);
    s.close().await.unwrap();
}

#[tokio::test]
async fn the_workspace_layer_confines_the_stream_methods() {
    let provider = runner_stack::stacked(MemoryProvider::new());
    let s = provider.create_session(destination("w")).await.unwrap();
    let outside = RunnerFileWriteRequest::new("../escape.txt", Vec::new());
    let err = s
        .write_file_stream(outside, bytes_stream(b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
    assert!(err.message().contains("write_file_stream"), "{err}");
    let err = s
        .read_file_stream(RunnerFileReadRequest::new("/etc/passwd"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
    let err = s
        .upload_archive_stream(Path::new("/elsewhere"), bytes_stream(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
    let err = s
        .download_archive_stream(Path::new("../.."))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);

    s.write_file_stream(
        RunnerFileWriteRequest::new("in.txt", b"ab".to_vec()),
        bytes_stream(b"cd".to_vec()),
    )
    .await
    .unwrap();
    let file = s
        .read_file_stream(RunnerFileReadRequest::new("in.txt"))
        .await
        .unwrap();
    assert_eq!(file.path, PathBuf::from("in.txt"));
    let bytes = runner_api::collect_stream("read", "in.txt", file.bytes, 16)
        .await
        .unwrap();
    assert_eq!(bytes, b"abcd");
    s.close().await.unwrap();
}

#[tokio::test]
async fn registry_open_confines_to_the_binding_workspace_with_read_roots() {
    let mut registry = RunnerRegistry::new();
    registry.register(Arc::new(MemoryProvider::new())).unwrap();
    let bound = registry
        .open(ThreadRunnerBinding {
            destination: destination("bind"),
            workspace: "/workspace/thread".into(),
            read_roots: vec!["/workspace/shared".into()],
        })
        .await
        .unwrap();
    assert_eq!(bound.workspace_root(), PathBuf::from("/workspace/thread"));

    // Another handle on the same session, at the session's own root.
    let whole = registry.resume_session(bound.state()).await.unwrap();
    whole
        .write_file(RunnerFileWriteRequest::new(
            "shared/doc.txt",
            b"doc".to_vec(),
        ))
        .await
        .unwrap();

    let read = bound
        .read_file(RunnerFileReadRequest::new("/workspace/shared/doc.txt"))
        .await
        .unwrap();
    assert_eq!(read.contents, b"doc");
    let relative = bound
        .read_file(RunnerFileReadRequest::new("../shared/doc.txt"))
        .await
        .unwrap();
    assert_eq!(relative.contents, b"doc");
    let err = bound
        .write_file(RunnerFileWriteRequest::new(
            "/workspace/shared/x.txt",
            b"x".to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
    let err = bound
        .read_file(RunnerFileReadRequest::new("/workspace/other.txt"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);

    bound
        .write_file(RunnerFileWriteRequest::new("mine.txt", b"m".to_vec()))
        .await
        .unwrap();
    let seen = whole
        .read_file(RunnerFileReadRequest::new("thread/mine.txt"))
        .await
        .unwrap();
    assert_eq!(seen.contents, b"m");

    // A relative workspace (the empty path included) is under the session root.
    let nested = registry
        .open(ThreadRunnerBinding {
            destination: destination("bind2"),
            workspace: "sub".into(),
            read_roots: vec![],
        })
        .await
        .unwrap();
    assert_eq!(nested.workspace_root(), PathBuf::from("/workspace/sub"));
    let own = registry
        .open(ThreadRunnerBinding {
            destination: destination("bind3"),
            workspace: PathBuf::new(),
            read_roots: vec![],
        })
        .await
        .unwrap();
    assert_eq!(own.workspace_root(), PathBuf::from("/workspace"));

    let err = registry
        .open(ThreadRunnerBinding {
            destination: runner_api::RunnerDestination {
                provider_id: "nope".into(),
                ..destination("x")
            },
            workspace: PathBuf::new(),
            read_roots: vec![],
        })
        .await
        .err()
        .expect("no such provider");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    for s in [bound, whole, nested, own] {
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_registry_lists_stacked_capabilities() {
    let mut registry = RunnerRegistry::with_stack(Stack::new());
    registry.register(Arc::new(MemoryProvider::new())).unwrap();
    let listed = registry.providers();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].capabilities.artifact_export);
    let err = registry
        .register(Arc::new(MemoryProvider::new()))
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::AlreadyExists);
}
