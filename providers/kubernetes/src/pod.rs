//! The session pod: its spec (labels, the bootstrap, the restrictive
//! security context, the volumes) and the wait until it runs.
//!
//! The pod has one container, [`CONTAINER_NAME`], whose command is the
//! bootstrap ([`BOOTSTRAP`], run by the image's `sh`): it waits until the
//! agent binary appears in the `/.runner` emptyDir volume, then execs
//! `runner-agent init -- serve …` with the agent's status line going to
//! `/.runner/status`. The workspace is a second volume: an emptyDir, or
//! the session's PersistentVolumeClaim ([`claim`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, LocalObjectReference, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::ObjectMeta;
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

use crate::config::{KubernetesConfig, ResourceAmounts, WorkspaceVolume};
use crate::delivery::{STATE_DIR, socket_path};
use crate::error::Call;
use crate::{
    ANNOTATION_DESTINATION, CONTAINER_NAME, LABEL_CLAIMED, LABEL_DETACHED, LABEL_MARKER,
    LABEL_OWNER, LABEL_POOL, LABEL_SESSION, MARKER_VALUE, POD_PREFIX, RUNNER_DIR,
};

/// The bootstrap the container's `sh -c` runs, with the agent's `serve`
/// arguments as its positional parameters: wait for the delivered binary
/// (an executable file at [`AGENT_PATH`]), then exec it as the container's
/// PID 1 (`init -- serve "$@"`), its stdout (the status line) in
/// `/.runner/status`.
pub(crate) const BOOTSTRAP: &str = "while [ ! -x /.runner/bin/runner-agent ]; do sleep 0.1; done; \
     exec /.runner/bin/runner-agent init -- serve \"$@\" > /.runner/status";

/// Waiting reasons of a container whose image cannot be had.
const IMAGE_REASONS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// The name of the pod of session `session_id`.
pub(crate) fn pod_name(session_id: &str) -> String {
    format!("{POD_PREFIX}{session_id}")
}

/// The name of the workspace claim of session `session_id` (the pod's
/// name).
pub(crate) fn claim_name(session_id: &str) -> String {
    pod_name(session_id)
}

/// The marker, session and owner labels (and the configured ones) of a
/// session's objects.
fn session_labels(
    config: &KubernetesConfig,
    session_id: &str,
    owner: &str,
) -> BTreeMap<String, String> {
    let mut labels = config.labels.clone();
    labels.extend([
        (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
        (LABEL_SESSION.to_string(), session_id.to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
    ]);
    labels
}

/// The workspace claim of a new session, when its workspace volume is a
/// PVC.
pub(crate) fn claim(
    config: &KubernetesConfig,
    session_id: &str,
    destination_id: &str,
    owner: &str,
) -> Option<PersistentVolumeClaim> {
    let WorkspaceVolume::Pvc {
        size,
        storage_class,
        access_modes,
    } = &config.workspace_volume
    else {
        return None;
    };
    let mut annotations = config.annotations.clone();
    annotations.insert(
        ANNOTATION_DESTINATION.to_string(),
        destination_id.to_string(),
    );
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(session_id)),
            labels: Some(session_labels(config, session_id, owner)),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes.clone()),
            storage_class_name: storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.clone()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The pod's workspace volume.
fn workspace_volume(config: &KubernetesConfig, session_id: &str) -> Volume {
    match &config.workspace_volume {
        WorkspaceVolume::EmptyDir { medium, size_limit } => Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: medium.clone().filter(|m| !m.is_empty()),
                size_limit: size_limit.clone().map(Quantity),
            }),
            ..Default::default()
        },
        WorkspaceVolume::Pvc { .. } => Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(session_id),
                read_only: None,
            }),
            ..Default::default()
        },
    }
}

/// The agent's `serve` arguments: unix-local over the workspace, listening
/// on the session's socket.
fn serve_args(config: &KubernetesConfig, session_id: &str, destination_id: &str) -> Vec<String> {
    let local = serde_json::json!({
        "root": config.workspace_dir,
        "env": config.env,
        "workspaces_dir": format!("{STATE_DIR}/workspaces"),
        "snapshot_dir": format!("{STATE_DIR}/snapshots"),
    });
    vec![
        "--socket".into(),
        socket_path(session_id),
        "--config".into(),
        local.to_string(),
        "--destination-id".into(),
        destination_id.into(),
    ]
}

fn quantities(amounts: &ResourceAmounts) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<String, Quantity> = amounts
        .entries()
        .map(|(name, value)| (name.to_string(), Quantity(value.to_string())))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The pod of a new session; with `pool`, a pod of that warm pool (not yet
/// claimable: [`LABEL_CLAIMED`] `starting`).
pub(crate) fn spec(
    config: &KubernetesConfig,
    session_id: &str,
    destination_id: &str,
    owner: &str,
    pool: Option<&str>,
) -> Pod {
    let mut labels = session_labels(config, session_id, owner);
    labels.insert(LABEL_DETACHED.to_string(), "false".to_string());
    if let Some(pool) = pool {
        labels.insert(LABEL_POOL.to_string(), pool.to_string());
        labels.insert(LABEL_CLAIMED.to_string(), "starting".to_string());
    }
    let mut annotations = config.annotations.clone();
    annotations.insert(
        ANNOTATION_DESTINATION.to_string(),
        destination_id.to_string(),
    );
    let mut command = vec!["sh".to_string(), "-c".into(), BOOTSTRAP.into()];
    command.push("runner-bootstrap".into());
    command.extend(serve_args(config, session_id, destination_id));
    let non_root = config.non_root().then_some(true);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(command),
        working_dir: Some(config.workspace_dir.display().to_string()),
        resources: Some(ResourceRequirements {
            requests: quantities(&config.resources.requests),
            limits: quantities(&config.resources.limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            run_as_non_root: non_root,
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "runner".into(),
                mount_path: RUNNER_DIR.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "workspace".into(),
                mount_path: config.workspace_dir.display().to_string(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let runner_volume = Volume {
        name: "runner".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(session_id)),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![container],
            volumes: Some(vec![runner_volume, workspace_volume(config, session_id)]),
            // The service account's token only when one is asked for.
            automount_service_account_token: Some(config.service_account.is_some()),
            service_account_name: config.service_account.clone(),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(5),
            active_deadline_seconds: config.active_deadline_s,
            node_selector: (!config.node_selector.is_empty()).then(|| config.node_selector.clone()),
            tolerations: (!config.tolerations.is_empty()).then(|| config.tolerations.clone()),
            runtime_class_name: config.runtime_class.clone(),
            image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
                config
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            security_context: Some(PodSecurityContext {
                run_as_user: config.run_as_user,
                run_as_group: config.run_as_group,
                run_as_non_root: non_root,
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What a pod's status says about its start: `None` while it is on its way,
/// `Ok` when it runs, the error otherwise.
///
/// Errors: `NotFound` naming the image when it cannot be pulled,
/// `Unavailable` with the scheduler's message when no node fits,
/// `InvalidRequest` when the kubelet cannot make the container, `Provider`
/// when it ended, `NotFound` when it was deleted.
pub(crate) fn judge(operation: &str, pod: Option<&Pod>, image: &str) -> Option<RunnerResult<()>> {
    let Some(pod) = pod else {
        return Some(Err(RunnerError::not_found(format!(
            "{operation}: the pod was deleted while it started"
        ))));
    };
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Running") => return Some(Ok(())),
        Some(phase @ ("Succeeded" | "Failed")) => {
            let terminated = status
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.terminated.clone());
            let detail = match terminated {
                Some(t) => format!(
                    "exit code {}, {} {}",
                    t.exit_code,
                    t.reason.unwrap_or_default(),
                    t.message.unwrap_or_default()
                ),
                None => format!(
                    "{} {}",
                    status.reason.unwrap_or_default(),
                    status.message.unwrap_or_default()
                ),
            };
            return Some(Err(RunnerError::provider(format!(
                "{operation}: pod {name} ended ({phase}) before its agent started: {}",
                detail.trim()
            ))));
        }
        _ => {}
    }
    for waiting in status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
    {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let message = waiting.message.as_deref().unwrap_or_default();
        if IMAGE_REASONS.contains(&reason) {
            return Some(Err(RunnerError::not_found(format!(
                "{operation}: pod {name}: the image {image:?} cannot be pulled ({reason}): \
                 {message}"
            ))));
        }
        if matches!(
            reason,
            "CreateContainerConfigError" | "CreateContainerError"
        ) {
            return Some(Err(RunnerError::invalid_request(format!(
                "{operation}: pod {name}: the container cannot be created ({reason}): {message}"
            ))));
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(Err(RunnerError::new(
            RunnerErrorKind::Unavailable,
            format!(
                "{operation}: pod {name} cannot be scheduled: {}",
                condition.message.as_deref().unwrap_or("Unschedulable")
            ),
        )));
    }
    None
}

/// Waits (with a watch) until the pod runs, fails, or `timeout` passes.
///
/// Errors: those of [`judge`], `Timeout` naming the pod's phase, the API's.
pub(crate) async fn wait_running(
    operation: &str,
    pods: &Api<Pod>,
    name: &str,
    image: &str,
    timeout: Duration,
) -> RunnerResult<()> {
    let condition = |pod: Option<&Pod>| judge(operation, pod, image).is_some();
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(pods.clone(), name, condition),
    )
    .await;
    match waited {
        Ok(Ok(pod)) => judge(operation, pod.as_ref(), image).unwrap_or(Ok(())),
        Ok(Err(kube::runtime::wait::Error::ProbeFailed(e))) => {
            Err(Call::new(operation, "watch", "pods")
                .named(name)
                .watch_error(e))
        }
        Err(_) => {
            let phase = pods
                .get(name)
                .await
                .ok()
                .and_then(|p| p.status?.phase)
                .unwrap_or_else(|| "unknown".into());
            Err(RunnerError::new(
                RunnerErrorKind::Timeout,
                format!(
                    "{operation}: pod {name} did not run within {} s (phase {phase}); raise \
                     `startup_timeout_s` for slow image pulls",
                    timeout.as_secs()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::AGENT_PATH;

    fn config() -> KubernetesConfig {
        KubernetesConfig::from_value(&serde_json::json!({
            "image": "busybox", "run_as_user": 1000, "labels": {"team": "a"},
            "resources": {"limits": {"memory": "64Mi"}},
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_is_marked_restricted_and_bootstrapped() {
        let pod = spec(&config(), "s1", "d1", "o1", None);
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_MARKER], MARKER_VALUE);
        assert_eq!(labels[LABEL_SESSION], "s1");
        assert_eq!(labels[LABEL_OWNER], "o1");
        assert_eq!(labels["team"], "a");
        assert_eq!(
            pod.metadata.annotations.unwrap()[ANNOTATION_DESTINATION],
            "d1"
        );
        let spec = pod.spec.unwrap();
        let container = &spec.containers[0];
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(security.run_as_non_root, Some(true));
        let command = container.command.clone().unwrap();
        assert_eq!(&command[..3], ["sh", "-c", BOOTSTRAP]);
        assert!(command.contains(&socket_path("s1")));
        assert!(BOOTSTRAP.contains(AGENT_PATH) && BOOTSTRAP.contains("/.runner/status"));
        let limits = container.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["memory"], Quantity("64Mi".into()));
        let root = KubernetesConfig::from_value(&serde_json::json!({"image": "b"})).unwrap();
        let root = super::spec(&root, "s", "d", "o", None).spec.unwrap();
        assert_eq!(root.security_context.unwrap().run_as_non_root, None);
    }

    #[test]
    fn failures_are_judged() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "runner", "image": "nope:1", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no nope:1"}}}]}
        }))
        .unwrap();
        let error = judge("op", Some(&pod), "nope:1").unwrap().unwrap_err();
        assert_eq!(error.kind(), RunnerErrorKind::NotFound);
        assert!(error.message().contains("nope:1"));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available"}]}
        }))
        .unwrap();
        let error = judge("op", Some(&pod), "i").unwrap().unwrap_err();
        assert_eq!(error.kind(), RunnerErrorKind::Unavailable);
        assert!(error.message().contains("0/1 nodes"));
        let pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert!(judge("op", Some(&pending), "i").is_none());
    }
}
