//! `KubernetesSession`: one pod whose PID 1 is the runner agent, and the
//! agent's session over pod exec connections.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use runner_agent::AgentSession;
use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerCapabilities, RunnerError, RunnerErrorKind,
    RunnerResult, RunnerSessionState, RunnerSnapshotRef,
};
use serde::{Deserialize, Serialize};

use crate::cluster::Target;
use crate::config::KubernetesConfig;
use crate::error::Call;
use crate::snapshot::SnapshotStore;
use crate::transport::Endpoint;
use crate::{
    ANNOTATION_DESTINATION, LABEL_DETACHED, LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, MARKER_VALUE,
    PROVIDER_ID, delivery, pod,
};

/// `RunnerSessionState.metadata` of a kubernetes session. `rejoin_session`
/// uses only `pod` and `namespace`, checked against the destination and the
/// pod's own labels (the socket follows from the session id); the image and
/// the socket are for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// The pod's name.
    pub(crate) pod: String,
    /// The pod's namespace.
    pub(crate) namespace: String,
    /// The image the pod runs.
    #[serde(default)]
    pub(crate) image: String,
    /// The agent's socket in the pod.
    #[serde(default)]
    pub(crate) socket: String,
    /// The workspace's PersistentVolumeClaim, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) claim: Option<String>,
}

/// A kubernetes session: a pod whose PID 1 is the runner agent serving
/// unix-local's session, reached through one pod exec of `runner-agent
/// connect` per connection (a lost one is made again).
///
/// Every call but the lifecycle goes to the agent: commands, files,
/// archives, ports, leases, and the workspace tar of a snapshot.
/// Kubernetes' own part is the pod: `detach` marks it detached and
/// `rejoin_session` reconnects to it, `close` deletes it (and the
/// workspace's claim, when the workspace volume is a PVC).
///
/// Created by [`KubernetesProvider`](crate::KubernetesProvider) bare:
/// refusing calls after `close` or `detach`, and calls of capabilities it
/// does not claim, is the stack's correctness layer (`runner_stack::stacked`).
/// A session dropped without `close` leaves its pod running, for
/// `rejoin_session` or `sweep_orphans` (once its owner is gone).
pub struct KubernetesSession {
    inner: Arc<dyn RemoteRunnerSession>,
    agent: AgentSession,
    session_id: String,
    destination_id: String,
    config: KubernetesConfig,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    meta: SessionMeta,
    snapshots: SnapshotStore,
    closed: AtomicBool,
}

impl std::fmt::Debug for KubernetesSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSession")
            .field("session_id", &self.session_id)
            .field("namespace", &self.meta.namespace)
            .field("pod", &self.meta.pod)
            .finish_non_exhaustive()
    }
}

/// The time left of `timeout` since `start` (at least a second).
fn left(start: Instant, timeout: Duration) -> Duration {
    timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(1))
}

/// Deletes the claim `name` (one already gone is fine).
async fn delete_claim(
    operation: &str,
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
) -> RunnerResult<()> {
    match claims.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) => match Call::new(operation, "delete", "persistentvolumeclaims")
            .named(name)
            .error(e)
        {
            e if e.kind() == RunnerErrorKind::NotFound => Ok(()),
            e => Err(e),
        },
    }
}

/// The claim the workspace volume of `pod` names, if any.
fn workspace_claim(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|volume| volume.name == "workspace")?
        .persistent_volume_claim
        .as_ref()
        .map(|claim| claim.claim_name.clone())
}

/// Sets the owner and detached labels of `pod`.
async fn label(
    operation: &str,
    pods: &Api<Pod>,
    pod: &str,
    owner: Option<&str>,
    detached: bool,
) -> RunnerResult<()> {
    let mut labels = serde_json::Map::new();
    labels.insert(LABEL_DETACHED.into(), detached.to_string().into());
    if let Some(owner) = owner {
        labels.insert(LABEL_OWNER.into(), owner.into());
    }
    let patch = serde_json::json!({ "metadata": { "labels": labels } });
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| Call::new(operation, "patch", "pods").named(pod).error(e))
}

impl KubernetesSession {
    /// Creates the pod of a new session (with `pool`, a pod of that warm
    /// pool), waits until it runs, delivers the agent into it and connects.
    ///
    /// Errors: `PermissionDenied` naming the verb and resource, `NotFound`
    /// naming an image that cannot be pulled, `Unavailable` with the
    /// scheduler's message, `Unsupported` when no agent binary is for the
    /// node's platform, `Timeout` after `startup_timeout_s`, the agent's
    /// error when it failed to open its session. The pod (and the
    /// workspace's claim) is deleted on any of them.
    pub(crate) async fn create(
        target: Target,
        config: KubernetesConfig,
        destination_id: String,
        owner: &str,
        snapshots: SnapshotStore,
        pool: Option<&str>,
    ) -> RunnerResult<Self> {
        const OP: &str = "create_session";
        let start = Instant::now();
        let timeout = Duration::from_secs(config.startup_timeout_s);
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let spec = pod::spec(&config, &session_id, &destination_id, owner, pool);
        let name = pod::pod_name(&session_id);
        let pods = target.pods();
        let claims = target.claims();
        let claim = pod::claim(&config, &session_id, &destination_id, owner);
        let claim_name = claim.as_ref().map(|_| pod::claim_name(&session_id));
        if let (Some(claim), Some(claim_name)) = (&claim, &claim_name) {
            claims
                .create(&PostParams::default(), claim)
                .await
                .map_err(|e| {
                    Call::new(OP, "create", "persistentvolumeclaims")
                        .named(claim_name)
                        .error(e)
                })?;
        }
        let undo_claim = async |claims: &Api<PersistentVolumeClaim>| {
            if let Some(claim_name) = &claim_name
                && let Err(deleted) = delete_claim(OP, claims, claim_name).await
            {
                tracing::debug!(claim = %claim_name, error = %deleted, "deleting the claim of a session that did not start");
            }
        };
        if let Err(e) = pods.create(&PostParams::default(), &spec).await {
            undo_claim(&claims).await;
            return Err(Call::new(OP, "create", "pods").named(&name).error(e));
        }
        let started = async {
            pod::wait_running(OP, &pods, &name, &config.image, left(start, timeout)).await?;
            let platform = delivery::platform(OP, &pods, &name, left(start, timeout)).await?;
            let binary = delivery::agent_binary(&config, OP, &platform)?;
            delivery::deliver(OP, &pods, &name, &binary, left(start, timeout)).await?;
            let endpoint = Endpoint {
                pods: pods.clone(),
                pod: name.clone(),
                socket: delivery::socket_path(&session_id),
            };
            AgentSession::connect(endpoint.connector()).await
        }
        .await;
        let agent = match started {
            Ok(agent) => agent,
            Err(e) => {
                if let Err(deleted) = pods.delete(&name, &DeleteParams::default()).await {
                    tracing::debug!(pod = %name, error = %deleted, "deleting a pod that did not start");
                }
                undo_claim(&claims).await;
                return Err(e);
            }
        };
        tracing::info!(session_id = %session_id, pod = %name, namespace = %target.namespace, "kubernetes session started");
        let meta = SessionMeta {
            pod: name,
            namespace: target.namespace.clone(),
            image: config.image.clone(),
            socket: delivery::socket_path(&session_id),
            claim: claim_name,
        };
        Ok(Self::assemble(
            agent,
            session_id,
            destination_id,
            config,
            (pods, claims),
            meta,
            snapshots,
        ))
    }

    /// A handle on `found`, a running pod of this library (a warm pool pod
    /// just claimed) whose agent is already there: connects to it.
    ///
    /// Errors: `InvalidRequest` for a pod without a session label,
    /// `Unavailable` when its agent does not answer.
    pub(crate) async fn adopt(
        target: &Target,
        config: KubernetesConfig,
        found: &Pod,
        destination_id: String,
        snapshots: SnapshotStore,
    ) -> RunnerResult<Self> {
        let name = found.metadata.name.clone().unwrap_or_default();
        let Some(session_id) = found
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_SESSION).cloned())
        else {
            return Err(RunnerError::invalid_request(format!(
                "create_session: pool pod {name} has no {LABEL_SESSION} label"
            )));
        };
        let pods = target.pods();
        let endpoint = Endpoint {
            pods: pods.clone(),
            pod: name.clone(),
            socket: delivery::socket_path(&session_id),
        };
        let agent = AgentSession::connect(endpoint.connector()).await?;
        let meta = SessionMeta {
            pod: name,
            namespace: target.namespace.clone(),
            image: config.image.clone(),
            socket: delivery::socket_path(&session_id),
            claim: workspace_claim(found),
        };
        Ok(Self::assemble(
            agent,
            session_id,
            destination_id,
            config,
            (pods, target.claims()),
            meta,
            snapshots,
        ))
    }

    fn assemble(
        agent: AgentSession,
        session_id: String,
        destination_id: String,
        config: KubernetesConfig,
        (pods, claims): (Api<Pod>, Api<PersistentVolumeClaim>),
        meta: SessionMeta,
        snapshots: SnapshotStore,
    ) -> Self {
        Self {
            inner: Arc::new(agent.clone()),
            agent,
            session_id,
            destination_id,
            config,
            pods,
            claims,
            meta,
            snapshots,
            closed: AtomicBool::new(false),
        }
    }

    /// A new handle on the pod of `state`, in the destination's namespace:
    /// the pod becomes `owner`'s and is no longer marked detached.
    ///
    /// Errors: `NotFound` naming the pod when it is gone, or when it is not
    /// this library's pod of that session and destination (the marker and
    /// session labels, the destination annotation and the name are
    /// checked; such a pod is left alone); `Unavailable` when its agent
    /// does not answer.
    pub(crate) async fn rejoin(
        target: Target,
        config: KubernetesConfig,
        state: RunnerSessionState,
        meta: SessionMeta,
        owner: &str,
        snapshots: SnapshotStore,
    ) -> RunnerResult<Self> {
        const OP: &str = "rejoin_session";
        let name = pod::pod_name(&state.session_id);
        let not_ours = || {
            RunnerError::not_found(format!(
                "{OP}: pod {:?} in namespace {:?} is not the pod of kubernetes session {} of \
                 destination {:?} in namespace {:?}; it is left alone",
                meta.pod, meta.namespace, state.session_id, state.destination_id, target.namespace
            ))
        };
        if meta.pod != name || meta.namespace != target.namespace {
            return Err(not_ours());
        }
        let pods = target.pods();
        let found = pods.get(&name).await.map_err(|e| {
            let mapped = Call::new(OP, "get", "pods").named(&name).error(e);
            if mapped.kind() == RunnerErrorKind::NotFound {
                RunnerError::not_found(format!(
                    "{OP}: the pod {name} of session {} no longer exists",
                    state.session_id
                ))
            } else {
                mapped
            }
        })?;
        let labels = found.metadata.labels.clone().unwrap_or_default();
        let annotations = found.metadata.annotations.clone().unwrap_or_default();
        let ours = labels.get(LABEL_MARKER).map(String::as_str) == Some(MARKER_VALUE)
            && labels.get(LABEL_SESSION) == Some(&state.session_id)
            && annotations.get(ANNOTATION_DESTINATION) == Some(&state.destination_id);
        if !ours || found.metadata.deletion_timestamp.is_some() {
            return Err(not_ours());
        }
        label(OP, &pods, &name, Some(owner), false).await?;
        let endpoint = Endpoint {
            pods: pods.clone(),
            pod: name.clone(),
            socket: delivery::socket_path(&state.session_id),
        };
        let agent = AgentSession::connect(endpoint.connector()).await?;
        tracing::info!(session_id = %state.session_id, pod = %name, "kubernetes session rejoined");
        let claim = workspace_claim(&found);
        let image = found
            .spec
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default();
        let meta = SessionMeta {
            pod: name,
            namespace: target.namespace.clone(),
            image,
            socket: delivery::socket_path(&state.session_id),
            claim,
        };
        Ok(Self::assemble(
            agent,
            state.session_id,
            state.destination_id,
            config,
            (pods, target.claims()),
            meta,
            snapshots,
        ))
    }

    /// Unpacks a snapshot's `tar` into the workspace of this new session
    /// (through the agent); the pod is deleted when that fails.
    pub(crate) async fn restore(&self, tar: Vec<u8>) -> RunnerResult<()> {
        let restored = self
            .inner
            .upload_archive(&self.config.workspace_dir, tar)
            .await;
        if let Err(e) = restored {
            if let Err(closed) = RemoteRunnerSession::close(self).await {
                tracing::debug!(session_id = %self.session_id, error = %closed, "deleting a fork that was not restored");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The pod's name.
    pub fn pod_name(&self) -> &str {
        &self.meta.pod
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.meta.namespace
    }

    /// The agent session every call goes through.
    pub fn agent(&self) -> &AgentSession {
        &self.agent
    }
}

#[async_trait]
impl LayeredSession for KubernetesSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    fn state(&self) -> RunnerSessionState {
        RunnerSessionState {
            provider_id: PROVIDER_ID.to_string(),
            session_id: self.session_id.clone(),
            destination_id: self.destination_id.clone(),
            snapshot: None,
            metadata: serde_json::to_value(&self.meta).unwrap_or_default(),
        }
    }

    /// The provider's, with snapshots only when the destination names a
    /// `snapshot_store`.
    fn capabilities(&self) -> RunnerCapabilities {
        let snapshots = self.snapshots.configured();
        RunnerCapabilities {
            snapshots,
            snapshot_restore: snapshots,
            ..crate::capabilities()
        }
    }

    fn workspace_root(&self) -> PathBuf {
        self.config.workspace_dir.clone()
    }

    /// `Unsupported`: a pod cannot be frozen.
    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        Err(RunnerError::unsupported("pause", PROVIDER_ID))
    }

    /// `Unsupported`: a pod cannot be frozen.
    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        Err(RunnerError::unsupported("resume", PROVIDER_ID))
    }

    /// The workspace as a tar (the agent's `download_archive`), stored in
    /// the destination's `snapshot_store`; the reference names the snapshot
    /// id, the session and the destination, never its settings.
    ///
    /// Errors: `InvalidRequest` when the destination names no
    /// `snapshot_store`, the agent's and the store's.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let tar = self
            .inner
            .download_archive(&self.config.workspace_dir)
            .await?;
        self.snapshots.put(&self.session_id, tar).await
    }

    /// Releases this handle: its connection to the agent closes, the agent
    /// and its commands keep running, and the pod is labelled detached,
    /// which `sweep_orphans` never deletes.
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        label("detach", &self.pods, &self.meta.pod, None, true).await?;
        self.closed.store(true, Ordering::SeqCst);
        self.agent.client().disconnect().await;
        tracing::info!(session_id = %self.session_id, pod = %self.meta.pod, "kubernetes session detached");
        Ok(LayeredSession::state(self))
    }

    /// The agent closes its session (every process of it ends) and exits;
    /// then the pod is deleted (one already gone is fine), and the
    /// workspace's claim after it. An agent that cannot be reached does not
    /// keep the pod; when the pod or the claim cannot be deleted (the API
    /// server is unreachable), the error is returned and a later `close`
    /// tries again.
    async fn close(&self) -> RunnerResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = self.inner.close().await {
            tracing::debug!(session_id = %self.session_id, error = %e, "closing the agent's session");
        }
        let delete = DeleteParams::default().grace_period(0);
        let deleted = match self.pods.delete(&self.meta.pod, &delete).await {
            Ok(_) => Ok(()),
            Err(e) => match Call::new("close", "delete", "pods")
                .named(&self.meta.pod)
                .error(e)
            {
                e if e.kind() == RunnerErrorKind::NotFound => Ok(()),
                e => Err(e),
            },
        };
        let deleted = match (deleted, &self.meta.claim) {
            (Ok(()), Some(claim)) => delete_claim("close", &self.claims, claim).await,
            (deleted, _) => deleted,
        };
        match deleted {
            Ok(()) => {
                tracing::info!(session_id = %self.session_id, pod = %self.meta.pod, "kubernetes session closed");
                Ok(())
            }
            Err(e) => {
                // The pod or the claim is still there: a later close tries again.
                self.closed.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}
