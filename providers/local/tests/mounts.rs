//! Object-store mounts on unix-local (through the layer stack, which
//! materializes them): a failed mount leaves nothing behind.

mod support;

use std::sync::Arc;

use runner_api::{
    RunnerDestination, RunnerErrorKind, RunnerManifest, RunnerMount, RunnerMountIntent,
    RunnerMountKind,
};
use runner_local::LocalProvider;
use runner_testkit::S3TestServer;

fn destination(config: serde_json::Value, mount: RunnerMount) -> RunnerDestination {
    RunnerDestination {
        id: "mounts".into(),
        provider_id: "unix-local".into(),
        config,
        default_manifest: RunnerManifest {
            entries: vec![],
            mounts: vec![mount],
        },
        artifacts: None,
    }
}

fn data_mount(server: &S3TestServer, secret: &str) -> RunnerMount {
    let target = server.target();
    RunnerMount {
        name: "data".into(),
        path: "data".into(),
        read_only: false,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::S3,
            uri: target.uri("prefix"),
            credentials: Some(runner_api::RunnerSecretRef { id: secret.into() }),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_mount_leaves_no_workspace_and_no_mount_directory() {
    let server = S3TestServer::start().expect("S3 test server");
    let provider = runner_stack::Stack::new()
        .with_resolver(server.resolver())
        .provider(Arc::new(LocalProvider::new()));
    let dir = tempfile::tempdir().expect("temp dir");
    let workspaces = dir.path().join("workspaces");

    // A fresh owned workspace is removed again.
    let config = serde_json::json!({ "workspaces_dir": workspaces });
    let err = provider
        .create_session(destination(
            config,
            data_mount(&server, runner_testkit::S3_TEST_WRONG_SECRET_ID),
        ))
        .await
        .map(|_| ())
        .expect_err("wrong secret");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("\"data\""), "{err}");
    let left = support::workspaces_in(&workspaces);
    assert!(left.is_empty(), "workspaces left behind: {left:?}");

    // A caller-chosen root stays, without the mount directory.
    let root = dir.path().join("root");
    let config = serde_json::json!({ "root": root });
    let err = provider
        .create_session(destination(config, data_mount(&server, "no-such-secret")))
        .await
        .map(|_| ())
        .expect_err("missing secret");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    assert!(
        !root.join("data").exists(),
        "the mount directory was left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_destination_checks_store_uris_without_contacting_them() {
    let provider = runner_stack::stacked(LocalProvider::new());
    let mut mount = RunnerMount {
        name: "data".into(),
        path: "data".into(),
        read_only: true,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::S3,
            uri: "gs://bucket/prefix".into(),
            credentials: None,
        },
    };
    let err = provider
        .validate_destination(&destination(serde_json::Value::Null, mount.clone()))
        .await
        .expect_err("scheme of another kind");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    mount.intent.uri = "s3://bucket/prefix?endpoint=http://127.0.0.1:1".into();
    provider
        .validate_destination(&destination(serde_json::Value::Null, mount))
        .await
        .expect("valid s3 mount");
}
