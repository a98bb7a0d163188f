//! Mounts and artifact stores through every URI form that needs no cloud
//! account: `memory://`, `file://`, and `r2://` against the in-process S3
//! server, with `MemoryProvider` under the stack (which owns mounts and
//! artifacts).

use std::path::Path;
use std::sync::Arc;

use runner_api::{
    RunnerArtifactExportRequest, RunnerDestination, RunnerErrorKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerManifest, RunnerMount, RunnerMountIntent, RunnerMountKind,
    RunnerSecretRef,
};
use runner_mounts::SecretResolver;
use runner_mounts::StoreSpec;
use runner_mounts::object_store::path::Path as StorePath;
use runner_mounts::object_store::{ObjectStoreExt, PutPayload};
use runner_stack::Stack;
use runner_testkit::{MemoryProvider, S3_TEST_SECRET_ID, S3TestServer};

fn destination(
    artifacts: Option<serde_json::Value>,
    mounts: Vec<RunnerMount>,
) -> RunnerDestination {
    RunnerDestination {
        id: "uris".into(),
        provider_id: "memory".into(),
        config: serde_json::Value::Null,
        default_manifest: RunnerManifest {
            entries: vec![],
            mounts,
        },
        artifacts,
    }
}

fn mount(kind: RunnerMountKind, uri: String, credentials: Option<&str>) -> RunnerMount {
    RunnerMount {
        name: "data".into(),
        path: "data".into(),
        read_only: false,
        intent: RunnerMountIntent {
            kind,
            uri,
            credentials: credentials.map(|id| RunnerSecretRef { id: id.into() }),
        },
    }
}

async fn read(session: &Arc<dyn runner_api::RemoteRunnerSession>, path: &str) -> Vec<u8> {
    session
        .read_file(RunnerFileReadRequest::new(path))
        .await
        .expect("read_file")
        .contents
}

#[tokio::test]
async fn memory_uris_share_a_named_store_in_the_process() {
    let name = format!("uris-{}", uuid::Uuid::new_v4().simple());
    let spec = StoreSpec {
        uri: format!("memory://{name}/seed"),
        ..StoreSpec::default()
    };
    let resolver = runner_mounts::EnvSecretResolver::from_vars([]);
    let (store, prefix) = spec.open("test", &resolver).await.expect("open");
    store
        .put(
            &prefix.clone().join("a.txt"),
            PutPayload::from_static(b"alpha"),
        )
        .await
        .expect("seed");
    let provider = runner_stack::stacked(MemoryProvider::new());
    let session = provider
        .create_session(destination(
            None,
            vec![mount(
                RunnerMountKind::S3,
                format!("memory://{name}/seed"),
                None,
            )],
        ))
        .await
        .expect("create_session");
    assert_eq!(read(&session, "data/a.txt").await, b"alpha");
    session
        .write_file(RunnerFileWriteRequest::new("data/b.txt", b"beta".to_vec()))
        .await
        .expect("write_file");
    session.close().await.expect("close syncs");
    let got = store
        .get(&prefix.clone().join("b.txt"))
        .await
        .expect("b.txt synced")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&got[..], b"beta");
}

#[tokio::test]
async fn file_uris_serve_as_artifact_stores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = serde_json::json!({ "uri": format!("file://{}", dir.path().display()) });
    let provider = runner_stack::stacked(MemoryProvider::new());
    let session = provider
        .create_session(destination(Some(store), vec![]))
        .await
        .expect("create_session");
    session
        .write_file(RunnerFileWriteRequest::new("out/r.txt", b"result".to_vec()))
        .await
        .expect("write_file");
    let result = session
        .export_artifact(RunnerArtifactExportRequest {
            path: "out/r.txt".into(),
            recursive: false,
        })
        .await
        .expect("export_artifact");
    let key = result.metadata["key"].as_str().expect("key");
    assert_eq!(
        std::fs::read(dir.path().join(key)).expect("exported file"),
        b"result"
    );
    assert!(result.url.expect("url").starts_with("file:///"));
    session.close().await.expect("close");

    // A missing directory is NotFound, naming the operation.
    let store = serde_json::json!({
        "uri": format!("file://{}", dir.path().join("missing").display())
    });
    let session = provider
        .create_session(destination(Some(store), vec![]))
        .await
        .expect("create_session");
    let err = session
        .export_artifact(RunnerArtifactExportRequest {
            path: Path::new("out").to_path_buf(),
            recursive: true,
        })
        .await
        .expect_err("missing store directory");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    session.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn r2_uris_with_an_endpoint_reach_an_s3_compatible_server() {
    let server = S3TestServer::start().expect("S3 test server");
    let resolver = server.resolver();
    let uri = format!(
        "r2://{}/r2-prefix?endpoint={}&allow_http=true",
        runner_testkit::S3_TEST_BUCKET,
        server.endpoint()
    );
    let spec = StoreSpec {
        uri: uri.clone(),
        credentials: Some(RunnerSecretRef {
            id: S3_TEST_SECRET_ID.into(),
        }),
        ..StoreSpec::default()
    };
    let (store, prefix) = spec
        .open("test", resolver.as_ref() as &dyn SecretResolver)
        .await
        .expect("open");
    store
        .put(
            &StorePath::from(format!("{prefix}/x.txt")),
            PutPayload::from_static(b"x"),
        )
        .await
        .expect("seed");
    let provider = Stack::new()
        .with_resolver(resolver)
        .provider(Arc::new(MemoryProvider::new()));
    let session = provider
        .create_session(destination(
            None,
            vec![mount(RunnerMountKind::R2, uri, Some(S3_TEST_SECRET_ID))],
        ))
        .await
        .expect("create_session with an r2 mount");
    assert_eq!(read(&session, "data/x.txt").await, b"x");
    session.close().await.expect("close");
}

#[tokio::test]
async fn unknown_options_and_credential_keys_are_refused_by_name() {
    let resolver = runner_mounts::EnvSecretResolver::from_vars([(
        "RUNNER_SECRET_ODD_PASSWORD".to_string(),
        "hunter2-hunter2".to_string(),
    )]);
    let spec = StoreSpec {
        uri: "s3://bucket/p?endpoint_url=http://x".into(),
        ..StoreSpec::default()
    };
    let err = spec
        .open("test", &resolver)
        .await
        .map(|_| ())
        .expect_err("unknown option");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    assert!(err.message().contains("endpoint_url"), "{err}");
    let spec = StoreSpec {
        uri: "s3://bucket/p".into(),
        credentials: Some(RunnerSecretRef { id: "odd".into() }),
        ..StoreSpec::default()
    };
    let err = spec
        .open("test", &resolver)
        .await
        .map(|_| ())
        .expect_err("unknown key");
    assert!(err.message().contains("\"password\""), "{err}");
    assert!(!err.message().contains("hunter2"), "{err}");
}
