//! The docker provider against the whole conformance kit, on a real dockerd
//! with the busybox test image (`scripts/provision/docker.sh` builds it).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use runner_api::{RemoteRunnerProvider, RunnerDestination};
use runner_docker::{DockerProvider, LABEL_MARKER, LABEL_OWNER, MARKER_VALUE};
use runner_testkit::{BackendGate, Conformance, S3TestServer};

fn main() -> ExitCode {
    let gate = BackendGate::new(
        "RUNNER_TEST_DOCKER",
        "scripts/test.sh starts dockerd and builds the test image",
    );
    // The mounts and artifacts areas run against an in-process S3 server; their
    // data passes through the file API, so network `none` is fine.
    let server = gate
        .requested()
        .then(|| S3TestServer::start().expect("start the in-process S3 test server"));
    let code = gate.conformance("docker", || {
        let image = std::env::var("RUNNER_TEST_DOCKER_IMAGE")
            .unwrap_or_else(|_| "runners-test-busybox:latest".to_string());
        let destination = RunnerDestination {
            id: "conformance".into(),
            provider_id: "docker".into(),
            config: serde_json::json!({ "image": image, "network": "none" }),
            default_manifest: Default::default(),
        };
        let server = server
            .as_ref()
            .expect("the S3 server is started whenever the suite runs");
        let provider = DockerProvider::new().with_secret_resolver(server.resolver());
        Conformance::new(Arc::new(provider), destination).with_object_store(server.target())
    });
    drop(server);
    if gate.requested() {
        remove_leftovers();
    }
    code
}

/// Snapshots outlive their sessions by design: remove the ones this run took,
/// and whatever earlier runs that died left behind.
fn remove_leftovers() {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    runtime.block_on(async {
        let provider = DockerProvider::new().with_orphan_grace(Duration::ZERO);
        if let Err(e) = provider.sweep_orphans().await {
            eprintln!("sweep_orphans after the conformance run: {e}");
        }
        let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
            return;
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_MARKER}={MARKER_VALUE}")],
        )]);
        let options = ListImagesOptionsBuilder::new().filters(&filters).build();
        let pid = std::process::id().to_string();
        for image in docker.list_images(Some(options)).await.unwrap_or_default() {
            let ours = image
                .labels
                .get(LABEL_OWNER)
                .is_some_and(|owner| owner.split('/').nth(2) == Some(pid.as_str()));
            if ours {
                let remove = RemoveImageOptionsBuilder::new().force(true).build();
                let _ = docker.remove_image(&image.id, Some(remove), None).await;
            }
        }
    });
}
