//! The cluster the kubernetes tests run against: the test API server of
//! `runner-kube-testserver` (pods as containers of the local dockerd, with
//! the busybox test image) when `RUNNER_TEST_DOCKER=1`, or the cluster of
//! `KUBECONFIG` when `RUNNER_TEST_KUBERNETES=1`.

// Each test target uses part of this module.
#![allow(dead_code)]

use std::path::PathBuf;

use runner_api::RunnerDestination;
use runner_kube_testserver::{KubeTestServer, KubeTestServerOptions};
use runner_testkit::BackendGate;

/// The variable asking for a real cluster.
pub(crate) const KUBERNETES_GATE: &str = "RUNNER_TEST_KUBERNETES";
/// The variable asking for the runs that need dockerd (the test API server).
pub(crate) const DOCKER_GATE: &str = "RUNNER_TEST_DOCKER";

/// The image of the test pods.
pub(crate) fn image() -> String {
    std::env::var("RUNNER_TEST_KUBERNETES_IMAGE")
        .or_else(|_| std::env::var("RUNNER_TEST_DOCKER_IMAGE"))
        .unwrap_or_else(|_| "runners-test-busybox:latest".into())
}

/// Whether a real cluster was asked for.
pub(crate) fn real_cluster() -> bool {
    BackendGate::new(KUBERNETES_GATE, "").requested()
}

/// The gate of the run: a real cluster's when one is asked for, the test
/// server's (dockerd) otherwise.
pub(crate) fn gate() -> BackendGate {
    if real_cluster() {
        BackendGate::new(
            KUBERNETES_GATE,
            "KUBECONFIG names the cluster (kind or k3d on a laptop)",
        )
    } else {
        BackendGate::new(
            DOCKER_GATE,
            "scripts/test.sh starts dockerd and builds the test image; the test API server runs its pods as containers",
        )
    }
}

/// The cluster of a run: the test server (kept alive while this lives) or
/// the real cluster's kubeconfig.
pub(crate) struct Cluster {
    /// The test server, when the run uses it.
    pub(crate) server: Option<KubeTestServer>,
    kubeconfig: PathBuf,
    namespace: Option<String>,
}

impl Cluster {
    /// Starts the test server (inside a tokio runtime), or names the real
    /// cluster of `KUBECONFIG`.
    pub(crate) async fn start() -> Result<Self, String> {
        if real_cluster() {
            let kubeconfig = std::env::var("KUBECONFIG")
                .map_err(|_| format!("{KUBERNETES_GATE}=1 needs KUBECONFIG"))?;
            return Ok(Self {
                server: None,
                kubeconfig: PathBuf::from(kubeconfig),
                namespace: std::env::var("RUNNER_TEST_KUBERNETES_NAMESPACE").ok(),
            });
        }
        let server = KubeTestServer::start(KubeTestServerOptions::default())
            .await
            .map_err(|e| format!("starting the test API server: {e}"))?;
        Ok(Self {
            kubeconfig: server.kubeconfig_path().to_path_buf(),
            namespace: Some(server.namespace().to_string()),
            server: Some(server),
        })
    }

    /// A destination on this cluster, with `extra` config keys.
    pub(crate) fn destination(&self, id: &str, extra: serde_json::Value) -> RunnerDestination {
        let mut config = serde_json::json!({
            "image": image(),
            "kubeconfig": self.kubeconfig,
            "namespace": self.namespace,
            "startup_timeout_s": 60,
        });
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        RunnerDestination {
            id: id.into(),
            provider_id: "kubernetes".into(),
            config,
            default_manifest: Default::default(),
            artifacts: None,
        }
    }

    /// The test server, or the error saying this test needs it.
    pub(crate) fn server(&self) -> Result<&KubeTestServer, String> {
        self.server
            .as_ref()
            .ok_or_else(|| "this test needs the test API server (its fault hooks)".into())
    }

    /// Removes what the test server created.
    pub(crate) async fn shutdown(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}
