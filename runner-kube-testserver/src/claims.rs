//! Persistent volume claims: admission checks, binding at once to a host
//! directory the server owns, and deletion under the
//! `kubernetes.io/pvc-protection` finalizer (kept while a pod uses it).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::pods;
use crate::resource::Kind;
use crate::server::{Shared, lock, now};
use crate::status::{ApiError, Cause};
use crate::store::Store;

/// The finalizer that keeps a claim a pod still uses.
const PROTECTION: &str = "kubernetes.io/pvc-protection";

const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// Adds the causes that make a claim invalid to `causes`.
pub(crate) fn validate(object: &Value, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    let modes = spec["accessModes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "spec.accessModes".into(),
            message: "Required value: at least 1 access mode is required".into(),
        });
    }
    for mode in modes.iter().filter_map(Value::as_str) {
        if !ACCESS_MODES.contains(&mode) {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: "spec.accessModes".into(),
                message: format!(
                    "Unsupported value: {mode:?}: supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""
                ),
            });
        }
    }
    match spec["resources"]["requests"]["storage"].as_str() {
        None => causes.push(Cause::required("spec.resources[storage]")),
        Some(storage) => {
            if !pods::quantity(storage).is_some_and(|q| q > 0.0) {
                causes.push(Cause::invalid(
                    "spec.resources[storage]",
                    storage,
                    "must be greater than zero",
                ));
            }
        }
    }
}

/// The host directory that backs the claim with `uid`.
pub(crate) fn dir(shared: &Shared, uid: &str) -> PathBuf {
    shared.dir.join("claims").join(uid)
}

/// Binds a new claim as a provisioner would at once: defaults, the
/// protection finalizer, a volume name, `status.phase: Bound`, and its host
/// directory (0777, as an emptyDir's).
pub(crate) fn bind(shared: &Shared, object: &mut Value) -> Result<(), ApiError> {
    let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let path = dir(shared, &uid);
    let made = std::fs::create_dir_all(&path).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
    });
    if let Err(e) = made {
        return Err(ApiError::new(
            500,
            "InternalError",
            format!("provisioning {}: {e}", path.display()),
        ));
    }
    let spec = &mut object["spec"];
    if spec.get("volumeMode").is_none_or(Value::is_null) {
        spec["volumeMode"] = json!("Filesystem");
    }
    if spec.get("storageClassName").is_none_or(Value::is_null) {
        spec["storageClassName"] = json!("standard");
    }
    spec["volumeName"] = json!(format!("pvc-{uid}"));
    let metadata = &mut object["metadata"];
    if !metadata["finalizers"].is_array() {
        metadata["finalizers"] = json!([]);
    }
    if let Some(finalizers) = metadata["finalizers"].as_array_mut()
        && !finalizers.iter().any(|f| f == PROTECTION)
    {
        finalizers.push(json!(PROTECTION));
    }
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = json!({});
    }
    for key in [
        "pv.kubernetes.io/bind-completed",
        "pv.kubernetes.io/bound-by-controller",
    ] {
        metadata["annotations"][key] = json!("yes");
    }
    object["status"] = json!({
        "phase": "Bound",
        "accessModes": object["spec"]["accessModes"],
        "capacity": {"storage": object["spec"]["resources"]["requests"]["storage"]},
    });
    Ok(())
}

/// The claims a pod's volumes name, in order.
pub(crate) fn claim_names(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .map(str::to_string)
        .collect()
}

/// Why the scheduler cannot place a pod for its claims: the first claim
/// that does not exist or is being deleted.
pub(crate) fn unschedulable(store: &Store, namespace: &str, pod: &Value) -> Option<String> {
    claim_names(pod).into_iter().find_map(|name| {
        match store.get(Kind::PersistentVolumeClaim, namespace, &name) {
            None => Some(format!("persistentvolumeclaim {name:?} not found")),
            Some(claim) if claim["metadata"].get("deletionTimestamp").is_some() => {
                Some(format!("persistentvolumeclaim {name:?} is being deleted"))
            }
            Some(_) => None,
        }
    })
}

/// Whether a pod that has not finished names claim `name`.
fn in_use(store: &Store, namespace: &str, name: &str) -> bool {
    store.list(Kind::Pod, Some(namespace)).iter().any(|pod| {
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        phase != "Succeeded" && phase != "Failed" && claim_names(pod).iter().any(|c| c == name)
    })
}

/// Deletes claim `name`: marks it (deletionTimestamp), then removes it and
/// its directory unless a pod still uses it. Returns the marked object.
pub(crate) fn delete(shared: &Shared, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let marked = shared
        .update(Kind::PersistentVolumeClaim, namespace, name, |object| {
            if object["metadata"].get("deletionTimestamp").is_some() {
                return false;
            }
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            true
        })
        .ok_or_else(|| ApiError::not_found(Kind::PersistentVolumeClaim, name))?;
    release(shared, namespace);
    Ok(marked)
}

/// Removes the claims of `namespace` being deleted that no pod uses any
/// more, with their directories (the protection controller's work).
pub(crate) fn release(shared: &Shared, namespace: &str) {
    let removed: Vec<Value> = {
        let mut store = lock(&shared.store);
        let free: Vec<String> = store
            .list(Kind::PersistentVolumeClaim, Some(namespace))
            .iter()
            .filter(|claim| claim["metadata"].get("deletionTimestamp").is_some())
            .filter_map(|claim| claim["metadata"]["name"].as_str().map(str::to_string))
            .filter(|name| !in_use(&store, namespace, name))
            .collect();
        free.iter()
            .filter_map(|name| store.remove(Kind::PersistentVolumeClaim, namespace, name))
            .collect()
    };
    for claim in removed {
        let uid = claim["metadata"]["uid"].as_str().unwrap_or("");
        let _ = std::fs::remove_dir_all(dir(shared, uid));
    }
}
