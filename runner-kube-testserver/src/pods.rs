//! Pods as Docker containers: admission checks, the fake node's scheduling,
//! the kubelet's status reports, and deletion with a grace period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::claims;
use crate::resource::Kind;
use crate::server::{Shared, lock, now};
use crate::status::{ApiError, Cause};
use crate::{LABEL_INSTANCE, LABEL_POD_UID, NODE_NAME};

/// The labels of the one fake node.
pub(crate) const NODE_LABELS: [(&str, &str); 3] = [
    ("kubernetes.io/os", "linux"),
    ("kubernetes.io/arch", "amd64"),
    ("kubernetes.io/hostname", NODE_NAME),
];

/// Adds the causes that make a pod invalid (for the API server or for this
/// server's subset) to `causes`.
pub(crate) fn validate(object: &mut Value, causes: &mut Vec<Cause>) {
    let containers = object["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    if containers.len() > 1 {
        causes.push(Cause::forbidden(
            "spec.containers",
            "the test API server runs one container per pod",
        ));
    }
    if object["spec"]["initContainers"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        causes.push(Cause::forbidden(
            "spec.initContainers",
            "the test API server runs no init containers",
        ));
    }
    let volumes = object["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut volume_names = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        let name = volume["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(format!("spec.volumes[{i}].name")));
        }
        let claim = volume.get("persistentVolumeClaim");
        if volume.get("emptyDir").is_none() && claim.is_none() {
            causes.push(Cause::forbidden(
                format!("spec.volumes[{i}]"),
                "the test API server supports emptyDir and persistentVolumeClaim volumes only",
            ));
        }
        if claim.is_some_and(|c| c["claimName"].as_str().unwrap_or("").is_empty()) {
            causes.push(Cause::required(format!(
                "spec.volumes[{i}].persistentVolumeClaim.claimName"
            )));
        }
        volume_names.push(name.to_string());
    }
    for (i, container) in containers.iter().enumerate() {
        if container["name"].as_str().unwrap_or("").is_empty() {
            causes.push(Cause::required(format!("spec.containers[{i}].name")));
        }
        if container["image"].as_str().unwrap_or("").is_empty() {
            causes.push(Cause::required(format!("spec.containers[{i}].image")));
        }
        for (j, mount) in container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = mount["name"].as_str().unwrap_or("");
            if !volume_names.iter().any(|v| v == name) {
                causes.push(Cause {
                    reason: "FieldValueNotFound",
                    field: format!("spec.containers[{i}].volumeMounts[{j}].name"),
                    message: format!("Not found: {name:?}"),
                });
            }
            if mount["mountPath"].as_str().unwrap_or("").is_empty() {
                causes.push(Cause::required(format!(
                    "spec.containers[{i}].volumeMounts[{j}].mountPath"
                )));
            }
        }
    }
    if let Some(policy) = object["spec"]["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.restartPolicy".into(),
            message: format!(
                "Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
}

/// Fills the defaults the API server fills.
pub(crate) fn defaults(object: &mut Value) {
    let spec = &mut object["spec"];
    for (key, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
    ] {
        if spec.get(key).is_none_or(Value::is_null) {
            spec[key] = value;
        }
    }
    if let Some(containers) = spec["containers"].as_array_mut() {
        for container in containers {
            if container.get("imagePullPolicy").is_none_or(Value::is_null) {
                let image = container["image"].as_str().unwrap_or("");
                let latest = image.ends_with(":latest")
                    || !image.rsplit('/').next().unwrap_or("").contains(':');
                container["imagePullPolicy"] =
                    json!(if latest { "Always" } else { "IfNotPresent" });
            }
            if container
                .get("terminationMessagePath")
                .is_none_or(Value::is_null)
            {
                container["terminationMessagePath"] = json!("/dev/termination-log");
                container["terminationMessagePolicy"] = json!("File");
            }
        }
    }
}

/// The pod's QoS class from its containers' resources.
pub(crate) fn qos_class(object: &Value) -> &'static str {
    let containers = object["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |c: &Value, k: &str| c["resources"][k].as_object().is_some_and(|m| !m.is_empty());
    if containers
        .iter()
        .all(|c| !has(c, "limits") && !has(c, "requests"))
    {
        "BestEffort"
    } else if containers.iter().all(|c| {
        has(c, "limits")
            && c["resources"]["limits"].get("cpu").is_some()
            && c["resources"]["limits"].get("memory").is_some()
            && (!has(c, "requests") || c["resources"]["requests"] == c["resources"]["limits"])
    }) {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Starts the lifecycle of the stored pod `name`.
pub(crate) fn start(shared: &Arc<Shared>, namespace: &str, name: &str) {
    let task = tokio::spawn(lifecycle(
        shared.clone(),
        namespace.to_string(),
        name.to_string(),
    ));
    lock(&shared.lifecycles).insert(
        (namespace.to_string(), name.to_string()),
        task.abort_handle(),
    );
}

fn set_condition(
    object: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let mut condition =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now()});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    let conditions = &mut object["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Some(list) = conditions.as_array_mut() {
        list.retain(|c| c["type"] != kind);
        list.push(condition);
    }
}

fn container_status(
    object: &Value,
    state: Value,
    ready: bool,
    container_id: Option<&str>,
    image_id: Option<&str>,
) -> Value {
    let container = &object["spec"]["containers"][0];
    let mut status = json!({
        "name": container["name"], "image": container["image"], "imageID": image_id.unwrap_or(""),
        "ready": ready, "started": ready, "restartCount": 0, "state": state,
    });
    if let Some(id) = container_id {
        status["containerID"] = json!(format!("docker://{id}"));
    }
    status
}

/// Pod phases and container states as the kubelet reports them, until the
/// container exits.
async fn lifecycle(shared: Arc<Shared>, namespace: String, name: String) {
    let Some(stored) = lock(&shared.store)
        .get(Kind::Pod, &namespace, &name)
        .cloned()
    else {
        return;
    };
    let Ok(pod) = serde_json::from_value::<Pod>(stored.clone()) else {
        return;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let update = |change: &dyn Fn(&mut Value)| {
        shared.update(Kind::Pod, &namespace, &name, |object| {
            change(object);
            true
        })
    };
    // The scheduler: one node with NODE_LABELS.
    let selector = spec.node_selector.clone().unwrap_or_default();
    let fits = selector
        .iter()
        .all(|(k, v)| NODE_LABELS.iter().any(|(nk, nv)| nk == k && nv == v));
    if !fits || spec.node_name.as_deref().is_some_and(|n| n != NODE_NAME) {
        update(&|object| {
            set_condition(
                object,
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
                ),
            );
        });
        return;
    }
    // The volume binding: every claim the pod names must exist; the
    // scheduler retries until they do.
    let mut reported = String::new();
    loop {
        let missing = {
            let store = lock(&shared.store);
            store
                .get(Kind::Pod, &namespace, &name)
                .map(|object| claims::unschedulable(&store, &namespace, object))
        };
        let Some(missing) = missing else { return };
        let Some(missing) = missing else { break };
        if missing != reported {
            let message = format!(
                "0/1 nodes are available: {missing}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            );
            update(&|object| {
                set_condition(
                    object,
                    "PodScheduled",
                    "False",
                    Some("Unschedulable"),
                    Some(&message),
                );
            });
            reported = missing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    update(&|object| {
        object["spec"]["nodeName"] = json!(NODE_NAME);
        set_condition(object, "PodScheduled", "True", None, None);
        object["status"]["hostIP"] = json!("127.0.0.1");
        object["status"]["startTime"] = json!(now());
    });
    let Some(container) = spec.containers.first().cloned() else {
        return;
    };
    let image = container.image.clone().unwrap_or_default();
    // The image: never pulled (no registry is reachable), so it must be local.
    let image_id = loop {
        match shared.docker.inspect_image(&image).await {
            Ok(inspect) => break inspect.id,
            Err(_) => {
                let message = format!(
                    "Failed to pull image {image:?}: rpc error: code = NotFound desc = failed to pull and unpack image {image:?}: not found (the test API server pulls no images)"
                );
                let waiting = |reason: &str, message: &str, object: &mut Value| {
                    let state = json!({"waiting": {"reason": reason, "message": message}});
                    object["status"]["containerStatuses"] =
                        json!([container_status(object, state, false, None, None)]);
                    set_condition(
                        object,
                        "Ready",
                        "False",
                        Some("ContainersNotReady"),
                        Some(
                            "containers with unready status: [".to_string()
                                + container.name.as_str()
                                + "]",
                        )
                        .as_deref(),
                    );
                };
                if update(&|object| waiting("ErrImagePull", &message, object)).is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let backoff = format!("Back-off pulling image {image:?}");
                if update(&|object| waiting("ImagePullBackOff", &backoff, object)).is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // The container could not be made: it waits for ever with `reason`.
    let never_created = |reason: &str, message: &str| {
        update(&|object| {
            let state = json!({"waiting": {"reason": reason, "message": message}});
            object["status"]["containerStatuses"] = json!([container_status(
                object,
                state,
                false,
                None,
                image_id.as_deref()
            )]);
        });
    };
    let body = match container_body(&shared, &pod, &container, &uid).await {
        Ok(body) => body,
        Err(message) => {
            never_created("CreateContainerConfigError", &message);
            return;
        }
    };
    let container_name = format!(
        "k8s_{}_{}_{}_{}",
        container.name,
        name,
        namespace,
        &uid[..8.min(uid.len())]
    );
    let options = CreateContainerOptionsBuilder::new()
        .name(&container_name)
        .build();
    let created = match shared.docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(e) => {
            never_created("CreateContainerError", &e.to_string());
            return;
        }
    };
    if let Err(e) = shared.docker.start_container(&created, None).await {
        update(&|object| {
            let state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": e.to_string(), "finishedAt": now()}});
            object["status"]["phase"] = json!("Failed");
            object["status"]["containerStatuses"] = json!([container_status(
                object,
                state,
                false,
                Some(&created),
                image_id.as_deref()
            )]);
        });
        return;
    }
    let ip = shared
        .docker
        .inspect_container(&created, None)
        .await
        .ok()
        .and_then(|i| i.network_settings)
        .and_then(|n| n.networks)
        .and_then(|n| {
            n.values()
                .find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
        })
        .unwrap_or_default();
    let started_at = now();
    let running = update(&|object| {
        object["status"]["phase"] = json!("Running");
        object["status"]["podIP"] = json!(ip);
        object["status"]["podIPs"] = json!([{"ip": ip}]);
        for kind in ["Initialized", "Ready", "ContainersReady"] {
            set_condition(object, kind, "True", None, None);
        }
        let state = json!({"running": {"startedAt": started_at}});
        object["status"]["containerStatuses"] = json!([container_status(
            object,
            state,
            true,
            Some(&created),
            image_id.as_deref()
        )]);
    });
    if running.is_none() {
        return;
    }
    let code = match shared.docker.wait_container(&created, None).next().await {
        Some(Ok(response)) => response.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        _ => return,
    };
    record_exit(
        &shared,
        &namespace,
        &name,
        &created,
        code,
        &started_at,
        image_id.as_deref(),
    )
    .await;
}

/// Reports the container's exit: `Succeeded` or `Failed` with the code.
async fn record_exit(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &str,
    code: i64,
    started_at: &str,
    image_id: Option<&str>,
) {
    let oom = shared
        .docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    let reason = match (code, oom) {
        (_, true) => "OOMKilled",
        (0, _) => "Completed",
        _ => "Error",
    };
    let finished = now();
    shared.update(Kind::Pod, namespace, name, |object| {
        if object["status"]["containerStatuses"][0]["state"]
            .get("terminated")
            .is_some()
        {
            return false;
        }
        object["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
        for kind in ["Ready", "ContainersReady"] {
            set_condition(object, kind, "False", Some("PodCompleted"), None);
        }
        let state = json!({"terminated": {
            "exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished,
            "containerID": format!("docker://{container}")
        }});
        object["status"]["containerStatuses"] = json!([container_status(
            object,
            state,
            false,
            Some(container),
            image_id
        )]);
        true
    });
    claims::release(shared, namespace);
}

/// Parses a Kubernetes quantity (`512Mi`, `1G`, `500m`, `2`) into units.
pub(crate) fn quantity(text: &str) -> Option<f64> {
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("m", 1e-3),
        ("", 1.0),
    ];
    suffixes.iter().find_map(|(suffix, factor)| {
        let number = text.strip_suffix(suffix)?;
        number.parse::<f64>().ok().map(|n| n * factor)
    })
}

/// The Docker container of a pod's container.
async fn container_body(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    uid: &str,
) -> Result<ContainerCreateBody, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let run_as_user = security.run_as_user.or(pod_security.run_as_user);
    let run_as_group = security.run_as_group.or(pod_security.run_as_group);
    let non_root = security
        .run_as_non_root
        .or(pod_security.run_as_non_root)
        .unwrap_or(false);
    let image = container.image.clone().unwrap_or_default();
    if non_root && run_as_user.is_none() {
        let image_user = shared
            .docker
            .inspect_image(&image)
            .await
            .ok()
            .and_then(|i| i.config)
            .and_then(|c| c.user)
            .unwrap_or_default();
        let user = image_user.split(':').next().unwrap_or("");
        if user.is_empty() || user == "0" || user == "root" {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
    }
    if non_root && run_as_user == Some(0) {
        return Err("container's runAsUser breaks non-root policy".into());
    }
    let user = match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        _ => None,
    };
    let mut groups: Vec<String> = pod_security
        .supplemental_groups
        .clone()
        .unwrap_or_default()
        .iter()
        .map(i64::to_string)
        .collect();
    if let Some(fs_group) = pod_security.fs_group {
        groups.push(fs_group.to_string());
    }
    let capabilities = security.capabilities.clone().unwrap_or_default();
    let limits = container
        .resources
        .clone()
        .and_then(|r| r.limits)
        .unwrap_or_default();
    let memory = limits
        .get("memory")
        .and_then(|q| quantity(&q.0))
        .map(|m| m as i64);
    let nano_cpus = limits
        .get("cpu")
        .and_then(|q| quantity(&q.0))
        .map(|c| (c * 1e9) as i64);
    let mut binds = Vec::new();
    let mut tmpfs = HashMap::new();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name);
        if let Some(source) = volume.and_then(|v| v.persistent_volume_claim.clone()) {
            let claim_uid = lock(&shared.store)
                .get(
                    Kind::PersistentVolumeClaim,
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    &source.claim_name,
                )
                .and_then(|claim| claim["metadata"]["uid"].as_str().map(str::to_string))
                .ok_or_else(|| {
                    format!("persistentvolumeclaim {:?} not found", source.claim_name)
                })?;
            let read_only = if source.read_only.unwrap_or(false) || mount.read_only.unwrap_or(false)
            {
                ":ro"
            } else {
                ""
            };
            let dir = claims::dir(shared, &claim_uid);
            binds.push(format!("{}:{}{read_only}", dir.display(), mount.mount_path));
            continue;
        }
        let Some(empty_dir) = volume.and_then(|v| v.empty_dir.clone()) else {
            return Err(format!(
                "volume {:?} is neither an emptyDir nor a persistentVolumeClaim",
                mount.name
            ));
        };
        if empty_dir.medium.as_deref() == Some("Memory") {
            tmpfs.insert(mount.mount_path.clone(), "mode=1777".to_string());
            continue;
        }
        let dir = shared.dir.join("pods").join(uid).join(&mount.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("creating the emptyDir {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("opening the emptyDir {}: {e}", dir.display()))?;
        let read_only = if mount.read_only.unwrap_or(false) {
            ":ro"
        } else {
            ""
        };
        binds.push(format!("{}:{}{read_only}", dir.display(), mount.mount_path));
    }
    let env: Vec<String> = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.value_from.is_none())
        .map(|e| format!("{}={}", e.name, e.value.unwrap_or_default()))
        .collect();
    let labels = HashMap::from([
        (LABEL_INSTANCE.to_string(), shared.instance.clone()),
        (LABEL_POD_UID.to_string(), uid.to_string()),
        (
            "io.kubernetes.pod.name".to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "io.kubernetes.pod.namespace".to_string(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
        (
            "io.kubernetes.container.name".to_string(),
            container.name.clone(),
        ),
    ]);
    Ok(ContainerCreateBody {
        image: Some(image),
        entrypoint: container.command.clone(),
        cmd: container.args.clone(),
        env: Some(env),
        working_dir: container.working_dir.clone(),
        user,
        hostname: Some(
            spec.hostname
                .clone()
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_default(),
        ),
        labels: Some(labels),
        tty: container.tty,
        open_stdin: container.stdin,
        host_config: Some(HostConfig {
            memory,
            nano_cpus,
            binds: (!binds.is_empty()).then_some(binds),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            cap_drop: capabilities.drop.clone(),
            cap_add: capabilities.add.clone(),
            security_opt: (security.allow_privilege_escalation == Some(false))
                .then(|| vec!["no-new-privileges".to_string()]),
            privileged: security.privileged,
            readonly_rootfs: security.read_only_root_filesystem,
            group_add: (!groups.is_empty()).then_some(groups),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The containers of the pod with `uid`.
async fn containers_of(shared: &Shared, uid: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_POD_UID}={uid}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    shared
        .docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// The running container of pod `name`, if it has one.
pub(crate) fn container_id(object: &Value) -> Option<String> {
    let status = &object["status"]["containerStatuses"][0];
    status["state"].get("running")?;
    status["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("docker://"))
        .map(str::to_string)
}

/// Deletes pod `name`: marks it terminating, stops its container within the
/// grace period, reports the exit, removes container and volumes, then the
/// object. Returns the object as marked for deletion.
pub(crate) async fn delete(
    shared: &Arc<Shared>,
    namespace: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Value, ApiError> {
    let marked = shared
        .update(Kind::Pod, namespace, name, |object| {
            let grace = grace
                .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            if object["metadata"].get("deletionTimestamp").is_some() {
                return false;
            }
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            true
        })
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let grace = marked["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    if let Some(task) = lock(&shared.lifecycles).remove(&(namespace.to_string(), name.to_string()))
    {
        task.abort();
    }
    let uid = marked["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let started_at = marked["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for container in containers_of(shared, &uid).await {
        let stop = StopContainerOptionsBuilder::new()
            .t(grace.clamp(0, i32::MAX as i64) as i32)
            .build();
        let _ = shared.docker.stop_container(&container, Some(stop)).await;
        let code = shared
            .docker
            .inspect_container(&container, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.exit_code)
            .unwrap_or(137);
        record_exit(shared, namespace, name, &container, code, &started_at, None).await;
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let _ = shared
            .docker
            .remove_container(&container, Some(remove))
            .await;
    }
    let _ = std::fs::remove_dir_all(shared.dir.join("pods").join(&uid));
    lock(&shared.store).remove(Kind::Pod, namespace, name);
    claims::release(shared, namespace);
    Ok(marked)
}

/// Removes every container of the server instance `instance`.
pub(crate) async fn remove_all(docker: &bollard::Docker, instance: &str) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_INSTANCE}={instance}")],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = container.id {
            let remove = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&id, Some(remove)).await;
        }
    }
}
