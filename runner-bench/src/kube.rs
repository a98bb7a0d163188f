//! kubernetes against the docker provider: the kubernetes provider through
//! kube against `runner-kube-testserver` (whose pods are containers of the
//! same dockerd), next to the docker provider's same figure in the same run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use runner_api::{RemoteRunnerProvider, RunnerDestination};
use runner_kube_testserver::{KubeTestServer, KubeTestServerOptions};
use runner_kubernetes::KubernetesProvider;

use crate::docker::target_image;
use crate::generic::{Target, concurrent_commands, round_trip};
use crate::stats::{Better, Group, Samples, Spec};
use crate::{CONCURRENT_COMMANDS, Figures, Plan};

/// Ready pods of the warm-pool destination.
const POOL_SIZE: usize = 4;

/// `create_session` of `target`, `reps` times: the time to a ready session
/// (each closed after, untimed).
async fn creates(target: &Target, reps: usize) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..reps {
        let start = Instant::now();
        let session = target.session().await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        session.close().await?;
    }
    Ok(samples)
}

/// `create_session` from a full warm pool, `reps` times (the pool filled
/// again before each, untimed).
async fn warm_creates(
    provider: &KubernetesProvider,
    target: &Target,
    reps: usize,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..reps {
        let ready = provider.fill_warm_pool(&target.destination).await?;
        anyhow::ensure!(
            ready == POOL_SIZE,
            "the warm pool holds {ready} of {POOL_SIZE} pods"
        );
        let start = Instant::now();
        let session = target.session().await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        session.close().await?;
    }
    Ok(samples)
}

fn kube_target(
    label: &str,
    provider: Arc<dyn RemoteRunnerProvider>,
    server: &KubeTestServer,
    image: &str,
    extra: serde_json::Value,
) -> Target {
    let mut config = serde_json::json!({
        "image": image,
        "kubeconfig": server.kubeconfig_path(),
        "namespace": server.namespace(),
    });
    if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    Target {
        label: label.into(),
        provider,
        destination: RunnerDestination {
            id: format!("bench-{label}"),
            provider_id: "kubernetes".into(),
            config,
            default_manifest: Default::default(),
            artifacts: None,
        },
    }
}

/// The kubernetes figures, each against `docker`'s same figure.
pub(crate) async fn run(plan: &Plan, docker: &Target) -> Figures {
    let image = target_image(docker)?;
    let server = KubeTestServer::start(KubeTestServerOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("starting the test API server: {e}"))?;
    let figures = measure(plan, docker, &server, &image).await;
    server.shutdown().await;
    figures
}

async fn measure(plan: &Plan, docker: &Target, server: &KubeTestServer, image: &str) -> Figures {
    let cold = kube_target(
        "kubernetes",
        Arc::new(KubernetesProvider::new()),
        server,
        image,
        serde_json::json!({}),
    );
    let pooled_provider = KubernetesProvider::new();
    let pooled = kube_target(
        "kubernetes-pool",
        Arc::new(pooled_provider.clone()),
        server,
        image,
        serde_json::json!({"warm_pool": {"size": POOL_SIZE}}),
    );
    let mut group = Group::new("kubernetes");
    let docker_creates = creates(docker, plan.session_reps).await?;
    let kube_creates = creates(&cold, plan.session_reps)
        .await
        .context("kubernetes create_session")?;
    let create_spec = |name| Spec {
        name,
        unit: "ms",
        better: Better::Lower,
        baseline: "docker provider create_session",
    };
    group.add(
        create_spec("kubernetes: create_session (cold)"),
        &kube_creates,
        &docker_creates,
        0,
    );
    let warm = warm_creates(&pooled_provider, &pooled, plan.session_reps)
        .await
        .context("kubernetes create_session from the warm pool")?;
    group.add(
        create_spec("kubernetes: create_session (warm pool)"),
        &warm,
        &docker_creates,
        0,
    );

    let docker_session = docker.session().await?;
    let kube_session = cold.session().await?;
    let docker_trips = round_trip(&docker_session, plan.round_trips).await?;
    let kube_trips = round_trip(&kube_session, plan.round_trips).await?;
    group.add(
        Spec {
            name: "kubernetes: run_command(true) round trip",
            unit: "ms",
            better: Better::Lower,
            baseline: "docker provider run_command(true)",
        },
        &kube_trips,
        &docker_trips,
        0,
    );
    let (docker_concurrent, docker_errors) =
        concurrent_commands(&docker_session, CONCURRENT_COMMANDS).await;
    let (kube_concurrent, kube_errors) =
        concurrent_commands(&kube_session, CONCURRENT_COMMANDS).await;
    group.add(
        Spec {
            name: "kubernetes: 64 concurrent commands, latency",
            unit: "ms",
            better: Better::Lower,
            baseline: "docker provider, 64 concurrent commands",
        },
        &kube_concurrent,
        &docker_concurrent,
        docker_errors + kube_errors,
    );
    docker_session.close().await?;
    kube_session.close().await?;
    // Pool pods not claimed go with the test server's containers.
    drop(pooled_provider);
    Ok(group.into_figures())
}
