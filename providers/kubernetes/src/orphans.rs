//! Owners and orphans across machines: each provider (owner) holds a
//! `coordination.k8s.io/v1` Lease `runners-owner-<owner id>` in every
//! namespace it creates pods in, renewed every [`RENEW_EVERY`]; a pod
//! carrying the marker is an orphan when its owner's lease is missing or
//! has not been renewed for [`LEASE_SECONDS`]. A workspace claim carrying
//! the marker is an orphan when its owner is gone and no pod of its session
//! is kept.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use runner_api::{RunnerErrorKind, RunnerResult, RunnerSweepReport};
use tokio_util::sync::CancellationToken;

use crate::cluster::Clusters;
use crate::error::Call;
use crate::{LABEL_DETACHED, LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, LEASE_PREFIX, MARKER_VALUE};

/// How long a lease holds without a renewal.
pub(crate) const LEASE_SECONDS: i32 = 60;
/// How often a lease is renewed.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(15);

/// The lease name of `owner`.
pub(crate) fn lease_name(owner: &str) -> String {
    format!("{LEASE_PREFIX}{owner}")
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn lease(owner: &str, resource_version: Option<String>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(owner)),
            labels: Some(BTreeMap::from([
                (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
                (LABEL_OWNER.to_string(), owner.to_string()),
            ])),
            resource_version,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(owner.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            ..Default::default()
        }),
    }
}

/// Creates (or renews, when it exists) the lease of `owner`.
///
/// Errors: the API's (`PermissionDenied` naming the verb on `leases`).
pub(crate) async fn acquire(operation: &str, leases: &Api<Lease>, owner: &str) -> RunnerResult<()> {
    let name = lease_name(owner);
    let create = Call::new(operation, "create", "leases").named(&name);
    match leases
        .create(&PostParams::default(), &lease(owner, None))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => match create.error(e) {
            e if e.kind() == RunnerErrorKind::AlreadyExists => {
                renew(operation, leases, owner).await
            }
            e => Err(e),
        },
    }
}

/// Sets the lease's renew time to now (replace with its resourceVersion).
async fn renew(operation: &str, leases: &Api<Lease>, owner: &str) -> RunnerResult<()> {
    let name = lease_name(owner);
    let current = leases
        .get(&name)
        .await
        .map_err(|e| Call::new(operation, "get", "leases").named(&name).error(e))?;
    let mut renewed = lease(owner, current.metadata.resource_version.clone());
    if let (Some(spec), Some(old)) = (renewed.spec.as_mut(), current.spec) {
        spec.acquire_time = old.acquire_time.or_else(|| Some(now()));
    }
    leases
        .replace(&name, &PostParams::default(), &renewed)
        .await
        .map(|_| ())
        .map_err(|e| {
            Call::new(operation, "update", "leases")
                .named(&name)
                .error(e)
        })
}

/// Renews the lease every [`RENEW_EVERY`] until `stop` (a failed renewal is
/// logged and tried again at the next tick; a lease deleted meanwhile is
/// created again).
pub(crate) fn keep_renewing(leases: Api<Lease>, owner: String, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = acquire("renewing the owner lease", &leases, &owner).await {
                tracing::warn!(owner = %owner, error = %e, "kubernetes owner lease not renewed");
            }
        }
    });
}

/// Whether `lease` is held: renewed within its duration.
fn held(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (
        spec.renew_time.as_ref().or(spec.acquire_time.as_ref()),
        spec.lease_duration_seconds,
    ) else {
        return false;
    };
    renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .is_ok_and(|until| until > now)
}

/// Sweeps every namespace the provider knows (see
/// [`KubernetesProvider::sweep_orphans`](crate::KubernetesProvider)).
///
/// Errors: the API's (`PermissionDenied` naming the verb and resource,
/// `Unavailable`).
pub(crate) async fn sweep(clusters: &Clusters) -> RunnerResult<RunnerSweepReport> {
    const OP: &str = "sweep_orphans";
    let mut report = RunnerSweepReport::default();
    for target in clusters.known_targets(OP).await? {
        let pods: Api<Pod> = target.pods();
        let leases: Api<Lease> = target.leases();
        let marker = format!("{LABEL_MARKER}={MARKER_VALUE}");
        let leases_list = leases
            .list(&ListParams::default().labels(&marker))
            .await
            .map_err(|e| Call::new(OP, "list", "leases").error(e))?;
        let now = Timestamp::now();
        let alive: HashSet<String> = leases_list
            .items
            .iter()
            .filter(|lease| held(lease, now))
            .filter_map(|lease| lease.spec.as_ref()?.holder_identity.clone())
            .collect();
        let pod_list = pods
            .list(&ListParams::default().labels(&marker))
            .await
            .map_err(|e| Call::new(OP, "list", "pods").error(e))?;
        let mut owners_with_pods = HashSet::new();
        let mut kept_sessions = HashSet::new();
        for pod in pod_list.items {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let owner = labels.get(LABEL_OWNER).cloned().unwrap_or_default();
            let detached = labels.get(LABEL_DETACHED).is_some_and(|v| v == "true");
            if detached || alive.contains(&owner) || pod.metadata.deletion_timestamp.is_some() {
                owners_with_pods.insert(owner);
                kept_sessions.extend(labels.get(LABEL_SESSION).cloned());
                continue;
            }
            match pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => report
                    .removed
                    .push(format!("pod {}/{name}", target.namespace)),
                Err(e) => match Call::new(OP, "delete", "pods").named(&name).error(e) {
                    e if e.kind() == RunnerErrorKind::NotFound => {}
                    e => return Err(e),
                },
            }
        }
        let claims: Api<PersistentVolumeClaim> = target.claims();
        let claim_list = claims
            .list(&ListParams::default().labels(&marker))
            .await
            .map_err(|e| Call::new(OP, "list", "persistentvolumeclaims").error(e))?;
        for claim in claim_list.items {
            let labels = claim.metadata.labels.clone().unwrap_or_default();
            let name = claim.metadata.name.clone().unwrap_or_default();
            let owner = labels.get(LABEL_OWNER).cloned().unwrap_or_default();
            let session_kept = labels
                .get(LABEL_SESSION)
                .is_some_and(|session| kept_sessions.contains(session));
            if session_kept || alive.contains(&owner) || claim.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match claims.delete(&name, &DeleteParams::default()).await {
                Ok(_) => report
                    .removed
                    .push(format!("persistentvolumeclaim {}/{name}", target.namespace)),
                Err(e) => match Call::new(OP, "delete", "persistentvolumeclaims")
                    .named(&name)
                    .error(e)
                {
                    e if e.kind() == RunnerErrorKind::NotFound => {}
                    e => return Err(e),
                },
            }
        }
        for lease in leases_list.items {
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            let name = lease.metadata.name.clone().unwrap_or_default();
            if held(&lease, now) || owners_with_pods.contains(&holder) {
                continue;
            }
            match leases.delete(&name, &DeleteParams::default()).await {
                Ok(_) => report
                    .removed
                    .push(format!("lease {}/{name}", target.namespace)),
                Err(e) => match Call::new(OP, "delete", "leases").named(&name).error(e) {
                    e if e.kind() == RunnerErrorKind::NotFound => {}
                    e => return Err(e),
                },
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_its_duration() {
        let now = Timestamp::now();
        let mut fresh = lease("o", None);
        assert!(held(&fresh, now));
        let spec = fresh.spec.as_mut().unwrap();
        spec.renew_time = Some(MicroTime(
            now.checked_sub(SignedDuration::from_secs(61)).unwrap(),
        ));
        assert!(!held(&fresh, now));
        assert!(!held(&Lease::default(), now));
    }
}
