//! The warm pool: ready pods per destination, claimed by `create_session`.
//!
//! A pool pod is a session pod made ahead of time, labelled
//! [`LABEL_POOL`]`=<pool key>` (a hash of the destination's id and config)
//! and [`LABEL_CLAIMED`]: `starting` until its agent is delivered and
//! answers, then `false`. A `create_session` lists the `false` ones and
//! claims one with a replace carrying the pod's `resourceVersion`, setting
//! the label to `true` and the owner to itself: a 409 Conflict means
//! another caller got it first, and it tries the next. After every claim
//! (and the first `create_session` of the destination) the pool refills in
//! the background. Pool pods belong to the provider's owner lease, so
//! `sweep_orphans` leaves them alone while the provider lives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kube::api::{ListParams, Patch, PatchParams, PostParams};
use runner_api::{RemoteRunnerSession, RunnerResult};
use tokio_util::sync::CancellationToken;

use crate::cluster::Target;
use crate::config::KubernetesConfig;
use crate::error::Call;
use crate::session::KubernetesSession;
use crate::snapshot::SnapshotStore;
use crate::{LABEL_CLAIMED, LABEL_MARKER, LABEL_OWNER, LABEL_POOL, MARKER_VALUE};

/// The pool key of a destination: a hash (FNV-1a, 64 bits, hex) of its id
/// and config, so a changed config is a new pool.
pub(crate) fn key(destination_id: &str, config: &KubernetesConfig) -> String {
    let config = serde_json::to_string(config).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in destination_id.bytes().chain([0]).chain(config.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The warm pools of one provider (shared by its clones), by pool key.
#[derive(Clone, Default)]
pub(crate) struct Pools {
    pools: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
}

impl Pools {
    /// The pool of `destination_id` with `config`.
    pub(crate) fn of(&self, destination_id: &str, config: &KubernetesConfig) -> Arc<Pool> {
        let key = key(destination_id, config);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    key,
                    ready: Mutex::default(),
                    filling: tokio::sync::Mutex::new(()),
                    wanted: AtomicBool::new(false),
                })
            })
            .clone()
    }
}

/// What a refill needs to make pool pods.
pub(crate) struct Refill {
    /// The cluster and namespace of the pods.
    pub(crate) target: Target,
    /// The destination's config.
    pub(crate) config: KubernetesConfig,
    /// The destination's id.
    pub(crate) destination_id: String,
    /// The provider's owner id.
    pub(crate) owner: String,
    /// Where the sessions keep their snapshots.
    pub(crate) snapshots: SnapshotStore,
    /// How many ready pods to keep.
    pub(crate) size: usize,
}

/// One destination's pool.
pub(crate) struct Pool {
    key: String,
    /// This provider's ready pods (connected sessions), by pod name.
    ready: Mutex<HashMap<String, KubernetesSession>>,
    /// Held by the one refill running.
    filling: tokio::sync::Mutex<()>,
    /// A refill was asked for since the running one last looked.
    wanted: AtomicBool,
}

impl Pool {
    fn selector(&self, claimed: &str) -> String {
        format!(
            "{LABEL_MARKER}={MARKER_VALUE},{LABEL_POOL}={},{LABEL_CLAIMED}={claimed}",
            self.key
        )
    }

    /// Claims a ready pod of the pool for `owner`: `None` when none is left.
    ///
    /// Errors: the API's for listing and replacing pods (a 409 Conflict or
    /// 404 is another caller's claim, not an error).
    pub(crate) async fn claim(
        &self,
        target: &Target,
        config: &KubernetesConfig,
        destination_id: &str,
        owner: &str,
        snapshots: &SnapshotStore,
    ) -> RunnerResult<Option<KubernetesSession>> {
        const OP: &str = "create_session";
        let pods = target.pods();
        let listed = pods
            .list(&ListParams::default().labels(&self.selector("false")))
            .await
            .map_err(|e| Call::new(OP, "list", "pods").error(e))?;
        for mut found in listed.items {
            if found.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = found.metadata.name.clone().unwrap_or_default();
            let labels = found.metadata.labels.get_or_insert_default();
            labels.insert(LABEL_CLAIMED.into(), "true".into());
            labels.insert(LABEL_OWNER.into(), owner.into());
            let claimed = match pods.replace(&name, &PostParams::default(), &found).await {
                Ok(claimed) => claimed,
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => continue,
                Err(e) => return Err(Call::new(OP, "update", "pods").named(&name).error(e)),
            };
            let mine = self
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let session = match mine {
                Some(session) => session,
                None => match KubernetesSession::adopt(
                    target,
                    config.clone(),
                    &claimed,
                    destination_id.to_string(),
                    snapshots.clone(),
                )
                .await
                {
                    Ok(session) => session,
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "a claimed pool pod does not answer");
                        if let Err(deleted) = pods.delete(&name, &Default::default()).await {
                            tracing::debug!(pod = %name, error = %deleted, "deleting a pool pod that does not answer");
                        }
                        continue;
                    }
                },
            };
            tracing::debug!(pod = %name, pool = %self.key, "kubernetes pool pod claimed");
            return Ok(Some(session));
        }
        Ok(None)
    }

    /// Brings the pool back to `refill.size` ready pods in the background
    /// (one refill at a time; a refill asked for while one runs makes it
    /// look again), until `stop`.
    pub(crate) fn refill(self: &Arc<Self>, refill: Refill, stop: CancellationToken) {
        self.wanted.store(true, Ordering::SeqCst);
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                {
                    let Ok(_filling) = pool.filling.try_lock() else {
                        return;
                    };
                    while pool.wanted.swap(false, Ordering::SeqCst) {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = pool.fill(&refill) => {}
                        }
                    }
                }
                if !pool.wanted.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    /// Fills the pool now (after a refill that runs) and returns how many
    /// ready pods this provider holds.
    pub(crate) async fn fill_now(&self, refill: &Refill) -> usize {
        let _filling = self.filling.lock().await;
        self.fill(refill).await;
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Makes pool pods until this provider has `refill.size` ready ones.
    async fn fill(&self, refill: &Refill) {
        let pods = refill.target.pods();
        // Forget the ready pods another caller claimed meanwhile.
        match pods
            .list(&ListParams::default().labels(&format!(
                "{},{LABEL_OWNER}={}",
                self.selector("false"),
                refill.owner
            )))
            .await
        {
            Ok(listed) => {
                let names: std::collections::HashSet<String> = listed
                    .items
                    .into_iter()
                    .filter_map(|pod| pod.metadata.name)
                    .collect();
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|name, _| names.contains(name));
            }
            Err(e) => {
                tracing::warn!(pool = %self.key, error = %e, "listing the warm pool");
                return;
            }
        }
        let missing = refill
            .size
            .saturating_sub(self.ready.lock().unwrap_or_else(|p| p.into_inner()).len());
        let mut made = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let target = refill.target.clone();
            let config = refill.config.clone();
            let destination_id = refill.destination_id.clone();
            let owner = refill.owner.clone();
            let snapshots = refill.snapshots.clone();
            let key = self.key.clone();
            made.spawn(async move {
                KubernetesSession::create(
                    target,
                    config,
                    destination_id,
                    &owner,
                    snapshots,
                    Some(&key),
                )
                .await
            });
        }
        while let Some(result) = made.join_next().await {
            match result {
                Ok(Ok(session)) => self.add(&pods, session).await,
                Ok(Err(e)) => {
                    tracing::warn!(pool = %self.key, error = %e, "a warm pool pod did not start");
                }
                Err(e) => tracing::warn!(pool = %self.key, error = %e, "a warm pool task failed"),
            }
        }
    }

    /// Keeps `session` as ready and makes its pod claimable.
    async fn add(
        &self,
        pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
        session: KubernetesSession,
    ) {
        let name = session.pod_name().to_string();
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), session);
        let patch = serde_json::json!({"metadata": {"labels": {LABEL_CLAIMED: "false"}}});
        if let Err(e) = pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %name, error = %e, "a warm pool pod could not be made claimable");
            let session = self
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            if let Some(session) = session
                && let Err(e) = session.close().await
            {
                tracing::debug!(pod = %name, error = %e, "closing a warm pool pod");
            }
        }
    }
}
