#![doc = include_str!("../README.md")]

mod cluster;
mod config;
mod delivery;
mod error;
mod exec;
mod orphans;
mod pod;
mod pool;
mod session;
mod snapshot;
mod transport;

use std::sync::Arc;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerErrorKind, RunnerMountCapabilities, RunnerResult,
    RunnerSessionState, RunnerSweepReport, validate_manifest,
};
use runner_kit::KnownDestinations;
use runner_mounts::{EnvSecretResolver, SecretResolver};

pub use config::{
    ACCESS_MODES, DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_WORKSPACE, ImagePullPolicy, KubernetesConfig,
    MAX_WARM_POOL, ResourceAmounts, Resources, WarmPool, WorkspaceVolume,
};
pub use session::KubernetesSession;

use crate::cluster::Clusters;
use crate::session::SessionMeta;
use crate::snapshot::SnapshotStore;

/// The provider id destinations name: `"kubernetes"`.
pub const PROVIDER_ID: &str = "kubernetes";

/// Prefix of every label and annotation this library sets; user labels and
/// annotations may not use it.
pub const LABEL_PREFIX: &str = "runners.io/";
/// Marker label on every pod and lease this library creates;
/// `sweep_orphans` only ever touches objects carrying it.
pub const LABEL_MARKER: &str = "runners.io/managed-by";
/// The marker label's value.
pub const MARKER_VALUE: &str = "runner-kubernetes";
/// Label naming the session a pod belongs to.
pub const LABEL_SESSION: &str = "runners.io/session";
/// Label naming the owner (a provider instance) of a pod; its lease is
/// [`LEASE_PREFIX`]`<owner>`.
pub const LABEL_OWNER: &str = "runners.io/owner";
/// Label `"true"` on the pod of a detached session (never swept).
pub const LABEL_DETACHED: &str = "runners.io/detached";
/// Label naming the warm pool (a hash of the destination) a pool pod was
/// made for.
pub const LABEL_POOL: &str = "runners.io/pool";
/// Label of a pool pod: `"starting"` until its agent answers, then
/// `"false"` until a `create_session` claims it (`"true"`).
pub const LABEL_CLAIMED: &str = "runners.io/claimed";
/// Annotation naming the destination a pod was created for.
pub const ANNOTATION_DESTINATION: &str = "runners.io/destination";
/// Name prefix of session pods: `runner-<session id>`.
pub const POD_PREFIX: &str = "runner-";
/// Name prefix of owner leases: `runners-owner-<owner id>`.
pub const LEASE_PREFIX: &str = "runners-owner-";
/// The name of the pod's one container.
pub const CONTAINER_NAME: &str = "runner";
/// Where the agent and its socket live in the pod (an emptyDir volume).
pub const RUNNER_DIR: &str = "/.runner";

/// What kubernetes sessions can do themselves: commands, processes, files,
/// archives, ports (relayed through the agent) and leases, all through the
/// runner agent; detach and rejoin by pod name; snapshots of the workspace
/// kept in the destination's `snapshot_store`, restored into a new pod (a
/// session claims them only when its destination names that store). No
/// pause (a pod cannot be frozen honestly), no user switching (every
/// capability is dropped), no mounts of its own. The layer stack
/// (`runner_stack::stacked`) adds the object-store mount kinds and artifact
/// export, through the session's file API.
pub fn capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        file_read: true,
        file_write: true,
        port_preview: true,
        snapshots: true,
        cancellation: true,
        artifact_export: false,
        mounts: RunnerMountCapabilities::default(),
        pausable: false,
        detachable: true,
        streaming: true,
        background_processes: true,
        stdin: true,
        file_management: true,
        archive_transfer: true,
        snapshot_restore: true,
        port_listing: true,
        execution_lease: true,
        run_as_user: false,
        pty: true,
        file_watch: true,
    }
}

/// Runs each session in its own pod, through the Kubernetes API (kube-rs),
/// with the runner agent delivered into it by pod exec.
///
/// Settings come from `RunnerDestination.config` (see
/// [`KubernetesConfig`]). Each provider value (and its clones) is one
/// *owner*: it creates a `coordination.k8s.io/v1` Lease named
/// [`LEASE_PREFIX`]`<owner id>` in every namespace it creates pods in and
/// renews it in the background while it lives; `sweep_orphans` of any
/// provider deletes the marked pods whose owner's lease is missing or
/// expired.
///
/// A session it creates is the bare pod session: closed-session and
/// capability checks, workspace confinement, object-store mounts and
/// artifact export are layers of `runner_stack::Stack`
/// (`runner_stack::stacked(KubernetesProvider::new())`).
///
/// `rejoin_session` takes every setting from the destination the state
/// names by id, never from the state: destinations passed to
/// `create_session`, or given with [`with_destination`](Self::with_destination)
/// or [`trust_destination`](RemoteRunnerProvider::trust_destination).
///
/// A destination with `warm_pool` gets ready pods made ahead of time;
/// `create_session` claims one (an update with the pod's resourceVersion,
/// so two callers never get the same pod) and the pool refills in the
/// background; [`fill_warm_pool`](Self::fill_warm_pool) fills it and waits.
///
/// Snapshots are tars of the workspace in the destination's
/// `snapshot_store` object store, opened with credentials from the
/// provider's secret resolver ([`with_secret_resolver`](Self::with_secret_resolver);
/// by default `RUNNER_SECRET_<ID>_<KEY>` environment variables).
#[derive(Clone)]
pub struct KubernetesProvider {
    clusters: Clusters,
    destinations: KnownDestinations,
    resolver: Arc<dyn SecretResolver>,
    pools: pool::Pools,
}

impl Default for KubernetesProvider {
    fn default() -> Self {
        Self {
            clusters: Clusters::default(),
            destinations: KnownDestinations::default(),
            resolver: Arc::new(EnvSecretResolver::new()),
            pools: pool::Pools::default(),
        }
    }
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("owner", &self.owner())
            .finish_non_exhaustive()
    }
}

impl KubernetesProvider {
    /// A provider with a new owner id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves the credentials of the stores snapshots are kept in with `resolver` instead of environment variables.
    pub fn with_secret_resolver(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// This provider's owner id (the [`LABEL_OWNER`] of its pods).
    pub fn owner(&self) -> &str {
        self.clusters.owner()
    }

    /// Makes `destination` known for `rejoin_session` of states naming its
    /// id, and its namespace one that `sweep_orphans` sweeps.
    ///
    /// Errors: `InvalidRequest` or `Unsupported` when the destination does
    /// not validate.
    pub fn with_destination(self, destination: &RunnerDestination) -> RunnerResult<Self> {
        self.checked_config("with_destination", destination)?;
        self.trust_destination(destination);
        Ok(self)
    }

    /// Fills the warm pool of `destination` (its `warm_pool` key) now and
    /// waits until it is full; returns how many ready pods this provider
    /// holds for it (fewer than the size when some did not start). A
    /// destination without `warm_pool` has none (0).
    ///
    /// Errors: `InvalidRequest` for a bad destination, the cluster's and
    /// the owner lease's errors.
    pub async fn fill_warm_pool(&self, destination: &RunnerDestination) -> RunnerResult<usize> {
        const OP: &str = "fill_warm_pool";
        let config = self.checked_config(OP, destination)?;
        let Some(warm) = config.warm_pool else {
            return Ok(0);
        };
        let snapshots = self.snapshot_store(destination, &config);
        self.trust_destination(destination);
        let target = self.clusters.target(OP, &config).await?;
        self.clusters.hold_lease(OP, &target).await?;
        let pool = self.pools.of(&destination.id, &config);
        Ok(pool
            .fill_now(&pool::Refill {
                target,
                config: config.clone(),
                destination_id: destination.id.clone(),
                owner: self.owner().to_string(),
                snapshots,
                size: warm.size,
            })
            .await)
    }

    fn check_provider(operation: &str, provider_id: &str) -> RunnerResult<()> {
        if provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: provider {provider_id:?} is not {PROVIDER_ID}"
            )));
        }
        Ok(())
    }

    /// Checks that `destination` is for this provider, parses its config
    /// and checks its manifest: object-store mounts are the stack's (it
    /// hands the provider the manifest without them); manifest entries and
    /// `provider_native` mounts are refused.
    ///
    /// Errors: `InvalidRequest`, `Unsupported`.
    fn checked_config(
        &self,
        operation: &str,
        destination: &RunnerDestination,
    ) -> RunnerResult<KubernetesConfig> {
        Self::check_provider(operation, &destination.provider_id)?;
        let config = KubernetesConfig::from_destination(destination)?;
        validate_manifest(&destination.default_manifest, &capabilities())?;
        if let Some(entry) = destination.default_manifest.entries.first() {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!(
                    "{operation}: manifest entry {}: the kubernetes provider does not copy \
                     files of this machine into pods; upload them with upload_archive",
                    entry.source.display()
                ),
            ));
        }
        Ok(config)
    }

    /// Where the sessions of `destination` keep their snapshots.
    fn snapshot_store(
        &self,
        destination: &RunnerDestination,
        config: &KubernetesConfig,
    ) -> SnapshotStore {
        SnapshotStore::new(
            config.snapshot_store.clone(),
            &destination.id,
            self.resolver.clone(),
        )
    }

    /// The known destination `state` names and its parsed config.
    fn destination_of(
        &self,
        operation: &str,
        state: &RunnerSessionState,
    ) -> RunnerResult<(RunnerDestination, KubernetesConfig)> {
        let destination =
            self.destinations
                .of_state(operation, state, "KubernetesProvider::with_destination")?;
        let config = self.checked_config(operation, &destination)?;
        Ok((destination, config))
    }
}

#[async_trait]
impl RemoteRunnerProvider for KubernetesProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        PROVIDER_ID.to_string()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        capabilities()
    }

    fn default_workspace(&self) -> Option<String> {
        Some(DEFAULT_WORKSPACE.to_string())
    }

    /// Parses the config and checks the manifest; the cluster is not
    /// contacted (an unreachable one is `create_session`'s to report).
    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.checked_config("validate_destination", destination)
            .map(|_| ())
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "create_session";
        let config = self.checked_config(OP, &destination)?;
        let snapshots = self.snapshot_store(&destination, &config);
        self.trust_destination(&destination);
        let target = self.clusters.target(OP, &config).await?;
        self.clusters.hold_lease(OP, &target).await?;
        if let Some(warm) = config.warm_pool {
            let pool = self.pools.of(&destination.id, &config);
            let claimed = pool
                .claim(&target, &config, &destination.id, self.owner(), &snapshots)
                .await;
            pool.refill(
                pool::Refill {
                    target: target.clone(),
                    config: config.clone(),
                    destination_id: destination.id.clone(),
                    owner: self.owner().to_string(),
                    snapshots: snapshots.clone(),
                    size: warm.size,
                },
                self.clusters.stopped(),
            );
            if let Some(session) = claimed? {
                return Ok(Arc::new(session));
            }
        }
        let session = KubernetesSession::create(
            target,
            config,
            destination.id.clone(),
            self.owner(),
            snapshots,
            None,
        )
        .await?;
        Ok(Arc::new(session))
    }

    /// With `state.snapshot`: a new pod of the state's (known) destination
    /// whose workspace is the snapshot's tar, read from that destination's
    /// `snapshot_store` (a fork: the original goes on). Without: the same as
    /// [`rejoin_session`](Self::rejoin_session).
    ///
    /// Errors: `InvalidRequest` for the state or snapshot of another
    /// provider, `NotFound` for a snapshot the store does not hold, those
    /// of `create_session`.
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        Self::check_provider(OP, &state.provider_id)?;
        let Some(snapshot) = &state.snapshot else {
            return self.rejoin_session(state).await;
        };
        Self::check_provider(OP, &snapshot.provider_id)?;
        let (destination, config) = self.destination_of(OP, &state)?;
        let snapshots = self.snapshot_store(&destination, &config);
        let tar = snapshots.get(snapshot).await?;
        let target = self.clusters.target(OP, &config).await?;
        self.clusters.hold_lease(OP, &target).await?;
        let session = KubernetesSession::create(
            target,
            config,
            destination.id,
            self.owner(),
            snapshots,
            None,
        )
        .await?;
        session.restore(tar).await?;
        Ok(Arc::new(session))
    }

    /// Reconnects to the pod of a detached (or still running) session of a
    /// known destination, by the pod name in the state. The pod must be
    /// this library's pod of that session and destination (`NotFound`
    /// naming it otherwise, and it is left alone). Commands started by the
    /// earlier handle go on in the agent and are seen by the new one. The
    /// pod becomes this provider's (its owner label is set to this owner)
    /// and is no longer marked detached.
    async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "rejoin_session";
        Self::check_provider(OP, &state.provider_id)?;
        let meta: SessionMeta = serde_json::from_value(state.metadata.clone()).map_err(|e| {
            RunnerError::invalid_request(format!(
                "{OP}: state metadata is not a kubernetes session's: {e}"
            ))
        })?;
        let (destination, config) = self.destination_of(OP, &state)?;
        let snapshots = self.snapshot_store(&destination, &config);
        let target = self.clusters.target(OP, &config).await?;
        self.clusters.hold_lease(OP, &target).await?;
        let session =
            KubernetesSession::rejoin(target, config, state, meta, self.owner(), snapshots).await?;
        Ok(Arc::new(session))
    }

    /// Deletes, in every namespace of a destination this provider knows,
    /// the pods carrying the marker whose owner's lease is missing or
    /// expired (not those of detached sessions), and the expired leases of
    /// owners that have no pods left.
    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        orphans::sweep(&self.clusters).await
    }

    /// Remembers `destination` for states naming its id, and its namespace
    /// for `sweep_orphans`.
    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
        if let Ok(config) = KubernetesConfig::from_destination(destination) {
            self.clusters.remember(&config);
        }
    }
}
