//! Faults of the kubernetes provider, through kube against the test API
//! server: an image that does not exist, a pod that never schedules, a
//! forbidden verb, the API server stopped and started mid-session (and
//! under a close), exec streams cut mid-command, and the sweep of pods whose
//! owner is gone; a PVC workspace, created, labelled and deleted with its
//! session or by the sweep; the warm pool (concurrent claims get distinct
//! pods, another owner's sweep leaves the pool alone).

mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Config};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerErrorKind,
    RunnerProcessState,
};
use runner_kubernetes::{
    KubernetesProvider, LABEL_CLAIMED, LABEL_MARKER, LABEL_OWNER, LABEL_POOL, LABEL_SESSION,
    LEASE_PREFIX, MARKER_VALUE,
};
use runner_testkit::async_trial;
use support::Cluster;

type R = Result<(), String>;

async fn kube_api<K>(cluster: &Cluster) -> Result<Api<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    let server = cluster.server()?;
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).map_err(|e| e.to_string())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    Ok(Api::namespaced(client, server.namespace()))
}

/// `create_session` of `destination` fails with `kind` and a message
/// holding every one of `words`.
async fn refused(
    cluster: &Cluster,
    extra: serde_json::Value,
    kind: RunnerErrorKind,
    words: &[&str],
) -> R {
    let provider = KubernetesProvider::new();
    let destination = cluster.destination("faults", extra);
    let error = match provider.create_session(destination).await {
        Ok(session) => {
            let _ = session.close().await;
            return Err("create_session succeeded".into());
        }
        Err(e) => e,
    };
    if error.kind() != kind || !words.iter().all(|w| error.message().contains(w)) {
        return Err(format!("expected {kind:?} naming {words:?}, got {error:?}"));
    }
    Ok(())
}

async fn no_pods_left(cluster: &Cluster) -> R {
    let pods: Api<Pod> = kube_api(cluster).await?;
    for _ in 0..100 {
        let list = pods
            .list(&ListParams::default().labels(&format!("{LABEL_MARKER}={MARKER_VALUE}")))
            .await
            .map_err(|e| e.to_string())?;
        if list.items.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the pod of a failed create_session was not deleted".into())
}

async fn image_missing_is_not_found() -> R {
    let cluster = Cluster::start().await?;
    refused(
        &cluster,
        serde_json::json!({"image": "runners-test-absent:1"}),
        RunnerErrorKind::NotFound,
        &["runners-test-absent:1"],
    )
    .await?;
    no_pods_left(&cluster).await?;
    cluster.shutdown().await;
    Ok(())
}

async fn unschedulable_is_unavailable() -> R {
    let cluster = Cluster::start().await?;
    refused(
        &cluster,
        serde_json::json!({"node_selector": {"gpu": "yes"}}),
        RunnerErrorKind::Unavailable,
        &["cannot be scheduled", "0/1 nodes"],
    )
    .await?;
    no_pods_left(&cluster).await?;
    cluster.shutdown().await;
    Ok(())
}

async fn forbidden_verb_is_permission_denied() -> R {
    let cluster = Cluster::start().await?;
    cluster.server()?.forbid("create", "pods");
    refused(
        &cluster,
        serde_json::json!({}),
        RunnerErrorKind::PermissionDenied,
        &["\"create\"", "\"pods\""],
    )
    .await?;
    cluster.server()?.allow("create", "pods");
    cluster.server()?.forbid("create", "pods/exec");
    refused(
        &cluster,
        serde_json::json!({}),
        RunnerErrorKind::PermissionDenied,
        &["\"create\"", "\"pods/exec\""],
    )
    .await?;
    cluster.shutdown().await;
    Ok(())
}

async fn run(
    session: &Arc<dyn RemoteRunnerSession>,
    id: &str,
    script: &str,
) -> Result<String, runner_api::RunnerError> {
    let result = session
        .run_command(RunnerCommandRequest::shell(id, script))
        .await?;
    Ok(result.stdout)
}

async fn api_server_restart_is_unavailable_then_recovers() -> R {
    let cluster = Cluster::start().await?;
    let provider = runner_stack::stacked(KubernetesProvider::new());
    let session = provider
        .create_session(cluster.destination("faults", serde_json::json!({})))
        .await
        .map_err(|e| e.to_string())?;
    if run(&session, "c1", "echo up")
        .await
        .map_err(|e| e.to_string())?
        != "up\n"
    {
        return Err("the first command gave other output".into());
    }
    let server = cluster.server()?;
    server.stop().await;
    // The agent connection is cut with the server, and no new one can be made.
    match run(&session, "c2", "echo down").await {
        Err(e) if e.kind() == RunnerErrorKind::Unavailable => {}
        other => return Err(format!("with the API server stopped: {other:?}")),
    }
    server.start_again().await.map_err(|e| e.to_string())?;
    let mut back = None;
    for attempt in 0..50 {
        match run(&session, &format!("c3-{attempt}"), "echo again").await {
            Ok(out) => {
                back = Some(out);
                break;
            }
            Err(e) if e.kind() == RunnerErrorKind::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("after the restart: {e}")),
        }
    }
    if back.as_deref() != Some("again\n") {
        return Err(format!("after the restart the session gave {back:?}"));
    }
    session.close().await.map_err(|e| e.to_string())?;
    cluster.shutdown().await;
    Ok(())
}

async fn close_without_api_server_tries_again() -> R {
    let cluster = Cluster::start().await?;
    let provider = KubernetesProvider::new();
    let session = provider
        .create_session(cluster.destination("faults", serde_json::json!({})))
        .await
        .map_err(|e| e.to_string())?;
    let pod = format!("runner-{}", session.state().session_id);
    let server = cluster.server()?;
    server.stop().await;
    match session.close().await {
        Err(e) if e.kind() == RunnerErrorKind::Unavailable => {}
        other => return Err(format!("close with the API server stopped: {other:?}")),
    }
    server.start_again().await.map_err(|e| e.to_string())?;
    session
        .close()
        .await
        .map_err(|e| format!("close after the restart: {e}"))?;
    let pods: Api<Pod> = kube_api(&cluster).await?;
    for _ in 0..100 {
        if pods
            .get_opt(&pod)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            cluster.shutdown().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the pod {pod} was not deleted by the second close"))
}

async fn exec_stream_dropped_output_resumes() -> R {
    let cluster = Cluster::start().await?;
    let provider = runner_stack::stacked(KubernetesProvider::new());
    let session = provider
        .create_session(cluster.destination("faults", serde_json::json!({})))
        .await
        .map_err(|e| e.to_string())?;
    session
        .start_command(RunnerCommandRequest::shell(
            "long",
            "echo one; sleep 2; echo two",
        ))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.server()?.drop_exec_streams();
    let mut output = Vec::new();
    let mut seq = 0;
    for _ in 0..100 {
        match session.command_output(&"long".to_string(), seq).await {
            Ok(out) => {
                for chunk in &out.chunks {
                    output.extend_from_slice(&chunk.bytes);
                }
                seq = out.next_after_seq;
                if out.state != RunnerProcessState::Running {
                    break;
                }
            }
            Err(e) if e.kind() == RunnerErrorKind::Unavailable => {}
            Err(e) => return Err(format!("command_output after the cut: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if output != b"one\ntwo\n" {
        return Err(format!(
            "the output after the cut was {:?}",
            String::from_utf8_lossy(&output)
        ));
    }
    session.close().await.map_err(|e| e.to_string())?;
    cluster.shutdown().await;
    Ok(())
}

async fn sweep_deletes_only_pods_whose_owner_is_gone() -> R {
    let cluster = Cluster::start().await?;
    let gone = KubernetesProvider::new();
    let alive = KubernetesProvider::new();
    let destination = cluster.destination("faults", serde_json::json!({}));
    let orphan = gone
        .create_session(destination.clone())
        .await
        .map_err(|e| e.to_string())?;
    let detached = gone
        .create_session(destination.clone())
        .await
        .map_err(|e| e.to_string())?;
    detached.detach().await.map_err(|e| e.to_string())?;
    let kept = alive
        .create_session(destination.clone())
        .await
        .map_err(|e| e.to_string())?;
    // The owner dies: its lease is no longer renewed (here: it is gone).
    let leases: Api<Lease> = kube_api(&cluster).await?;
    leases
        .delete(
            &format!("{LEASE_PREFIX}{}", gone.owner()),
            &DeleteParams::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    drop(gone);
    let report = alive.sweep_orphans().await.map_err(|e| e.to_string())?;
    let orphan_pod = format!("runner-{}", orphan.state().session_id);
    if report.removed.len() != 1 || !report.removed[0].ends_with(&orphan_pod) {
        return Err(format!(
            "the sweep removed {:?}, not {orphan_pod}",
            report.removed
        ));
    }
    if run(&kept, "k", "echo kept")
        .await
        .map_err(|e| e.to_string())?
        != "kept\n"
    {
        return Err("the live owner's session no longer works".into());
    }
    let pods: Api<Pod> = kube_api(&cluster).await?;
    pods.get(&format!("runner-{}", detached.state().session_id))
        .await
        .map_err(|e| format!("the detached pod was swept: {e}"))?;
    kept.close().await.map_err(|e| e.to_string())?;
    cluster.shutdown().await;
    Ok(())
}

/// Waits until `name` is gone from `api` (a claim goes once no pod uses it).
async fn gone<K>(api: &Api<K>, name: &str) -> R
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..200 {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => return Ok(()),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Err(format!("{name} was not deleted"))
}

async fn pvc_workspace_is_the_sessions_and_goes_with_it() -> R {
    let cluster = Cluster::start().await?;
    let provider = KubernetesProvider::new();
    let destination = cluster.destination(
        "faults",
        serde_json::json!({"workspace_volume": {"pvc": {"size": "1Gi"}}}),
    );
    let session = provider
        .create_session(destination.clone())
        .await
        .map_err(|e| e.to_string())?;
    let session_id = session.state().session_id;
    let name = format!("runner-{session_id}");
    if run(&session, "w", "echo kept > file && cat file")
        .await
        .map_err(|e| e.to_string())?
        != "kept\n"
    {
        return Err("the PVC workspace did not hold the file".into());
    }
    let claims: Api<PersistentVolumeClaim> = kube_api(&cluster).await?;
    let claim = claims
        .get(&name)
        .await
        .map_err(|e| format!("the session's claim: {e}"))?;
    let labels = claim.metadata.labels.clone().unwrap_or_default();
    if labels.get(LABEL_MARKER).map(String::as_str) != Some(MARKER_VALUE)
        || labels.get(LABEL_SESSION) != Some(&session_id)
        || labels.get(LABEL_OWNER).map(String::as_str) != Some(provider.owner())
    {
        return Err(format!("the claim's labels are {labels:?}"));
    }
    let storage = claim
        .spec
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned());
    if storage.map(|q| q.0).as_deref() != Some("1Gi") {
        return Err("the claim does not request 1Gi".into());
    }
    let mounted = run(&session, "m", "grep -c ' /workspace ' /proc/mounts")
        .await
        .map_err(|e| e.to_string())?;
    if mounted.trim() == "0" {
        return Err("the workspace is not a mount".into());
    }
    session.close().await.map_err(|e| e.to_string())?;
    let pods: Api<Pod> = kube_api(&cluster).await?;
    gone(&pods, &name).await?;
    gone(&claims, &name).await?;

    // A claim whose owner is gone goes with the sweep, with its pod.
    let owner = KubernetesProvider::new();
    let orphan = owner
        .create_session(destination)
        .await
        .map_err(|e| e.to_string())?;
    let orphan_name = format!("runner-{}", orphan.state().session_id);
    let leases: Api<Lease> = kube_api(&cluster).await?;
    leases
        .delete(
            &format!("{LEASE_PREFIX}{}", owner.owner()),
            &DeleteParams::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    drop(owner);
    let report = provider.sweep_orphans().await.map_err(|e| e.to_string())?;
    let claim_removed = format!(
        "persistentvolumeclaim {}/{orphan_name}",
        cluster.server()?.namespace()
    );
    if !report.removed.contains(&claim_removed) {
        return Err(format!(
            "the sweep removed {:?}, not the claim",
            report.removed
        ));
    }
    gone(&pods, &orphan_name).await?;
    gone(&claims, &orphan_name).await?;
    cluster.shutdown().await;
    Ok(())
}

async fn warm_pool_claims_are_distinct() -> R {
    let cluster = Cluster::start().await?;
    let provider = KubernetesProvider::new();
    let destination = cluster.destination("faults", serde_json::json!({"warm_pool": {"size": 4}}));
    let ready = provider
        .fill_warm_pool(&destination)
        .await
        .map_err(|e| e.to_string())?;
    if ready != 4 {
        return Err(format!("the pool holds {ready} ready pods, not 4"));
    }
    // Another owner's sweep leaves the pool alone.
    let other = KubernetesProvider::new()
        .with_destination(&destination)
        .map_err(|e| e.to_string())?;
    let report = other.sweep_orphans().await.map_err(|e| e.to_string())?;
    if !report.removed.is_empty() {
        return Err(format!(
            "another owner's sweep removed {:?}",
            report.removed
        ));
    }
    let mut creating = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let provider = provider.clone();
        let destination = destination.clone();
        creating.spawn(async move { provider.create_session(destination).await });
    }
    let mut sessions = Vec::new();
    while let Some(created) = creating.join_next().await {
        sessions.push(
            created
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("a concurrent create_session: {e}"))?,
        );
    }
    let ids: std::collections::HashSet<String> =
        sessions.iter().map(|s| s.state().session_id).collect();
    if ids.len() != 8 {
        return Err(format!("8 creates got {} distinct sessions", ids.len()));
    }
    let pods: Api<Pod> = kube_api(&cluster).await?;
    let claimed = pods
        .list(&ListParams::default().labels(&format!("{LABEL_POOL},{LABEL_CLAIMED}=true")))
        .await
        .map_err(|e| e.to_string())?;
    let from_pool = claimed
        .items
        .iter()
        .filter(|pod| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SESSION))
                .is_some_and(|id| ids.contains(id))
        })
        .count();
    if from_pool < 4 {
        return Err(format!("only {from_pool} sessions came from the pool"));
    }
    for (i, session) in sessions.iter().enumerate() {
        if run(session, &format!("p{i}"), "echo pooled")
            .await
            .map_err(|e| e.to_string())?
            != "pooled\n"
        {
            return Err(format!("session {i} gave other output"));
        }
    }
    for session in sessions {
        session.close().await.map_err(|e| e.to_string())?;
    }
    cluster.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gate = runner_testkit::BackendGate::new(
        support::DOCKER_GATE,
        "scripts/test.sh starts dockerd and builds the test image; the test API server runs its pods as containers",
    );
    gate.run(vec![
        async_trial(
            "faults_image_missing_is_not_found",
            image_missing_is_not_found,
        ),
        async_trial(
            "faults_unschedulable_is_unavailable",
            unschedulable_is_unavailable,
        ),
        async_trial(
            "faults_forbidden_verb_is_permission_denied",
            forbidden_verb_is_permission_denied,
        ),
        async_trial(
            "faults_api_server_restart_is_unavailable_then_recovers",
            api_server_restart_is_unavailable_then_recovers,
        ),
        async_trial(
            "faults_close_without_api_server_tries_again",
            close_without_api_server_tries_again,
        ),
        async_trial(
            "faults_exec_stream_dropped_output_resumes",
            exec_stream_dropped_output_resumes,
        ),
        async_trial(
            "faults_sweep_deletes_only_pods_whose_owner_is_gone",
            sweep_deletes_only_pods_whose_owner_is_gone,
        ),
        async_trial(
            "faults_pvc_workspace_is_the_sessions_and_goes_with_it",
            pvc_workspace_is_the_sessions_and_goes_with_it,
        ),
        async_trial(
            "faults_warm_pool_claims_are_distinct",
            warm_pool_claims_are_distinct,
        ),
    ])
}
