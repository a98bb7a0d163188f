//! Cluster access: a `kube::Client` per kubeconfig and context (made once),
//! the namespace of a destination, and the owner leases this provider holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};
use tokio_util::sync::CancellationToken;

use crate::config::KubernetesConfig;
use crate::orphans;

/// Which cluster credentials: a kubeconfig file (or the environment's) and
/// a context (or its current one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ClusterKey {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

/// A cluster and a namespace as a destination names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Access {
    cluster: ClusterKey,
    namespace: Option<String>,
}

impl Access {
    fn of(config: &KubernetesConfig) -> Self {
        Self {
            cluster: ClusterKey {
                kubeconfig: config.kubeconfig.clone(),
                context: config.context.clone(),
            },
            namespace: config.namespace.clone(),
        }
    }
}

/// A connected cluster and the namespace sessions live in.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    cluster: ClusterKey,
}

impl Target {
    /// The pods of the namespace.
    pub(crate) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The persistent volume claims of the namespace.
    pub(crate) fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The leases of the namespace.
    pub(crate) fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

struct Inner {
    owner: String,
    clients: tokio::sync::Mutex<HashMap<ClusterKey, (Client, String)>>,
    known: Mutex<BTreeSet<Access>>,
    leases: tokio::sync::Mutex<HashSet<(ClusterKey, String)>>,
    /// Stops every lease renewal when the last clone of the provider goes.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The clusters of one provider (shared by its clones) and its owner id.
#[derive(Clone)]
pub(crate) struct Clusters {
    inner: Arc<Inner>,
}

impl Default for Clusters {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                owner: uuid::Uuid::new_v4().simple().to_string(),
                clients: Default::default(),
                known: Default::default(),
                leases: Default::default(),
                stop: CancellationToken::new(),
            }),
        }
    }
}

/// The client configuration of `key`.
///
/// Errors: `NotFound` for a kubeconfig file that does not exist,
/// `InvalidRequest` for one that does not parse or lacks the context,
/// `Unavailable` when the environment configures no cluster.
async fn client_config(operation: &str, key: &ClusterKey) -> RunnerResult<Config> {
    let options = KubeConfigOptions {
        context: key.context.clone(),
        ..Default::default()
    };
    let context = key.context.as_deref().unwrap_or("(current)");
    match (&key.kubeconfig, &key.context) {
        (Some(path), _) => {
            if !path.exists() {
                return Err(RunnerError::not_found(format!(
                    "{operation}: kubeconfig {} not found",
                    path.display()
                )));
            }
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                RunnerError::invalid_request(format!(
                    "{operation}: kubeconfig {}: {e}",
                    path.display()
                ))
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| {
                    RunnerError::invalid_request(format!(
                        "{operation}: kubeconfig {} context {context}: {e}",
                        path.display()
                    ))
                })
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await.map_err(|e| {
            RunnerError::invalid_request(format!(
                "{operation}: the kubeconfig of KUBECONFIG or ~/.kube/config, context \
                 {context}: {e}"
            ))
        }),
        (None, None) => Config::infer().await.map_err(|e| {
            RunnerError::new(
                RunnerErrorKind::Unavailable,
                format!(
                    "{operation}: no Kubernetes cluster is configured (not in a cluster, no \
                     KUBECONFIG or ~/.kube/config); set `kubeconfig` in the destination \
                     config: {e}"
                ),
            )
        }),
    }
}

impl Clusters {
    /// The owner id of this provider.
    pub(crate) fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Remembers the cluster and namespace of `config` for `sweep_orphans`.
    pub(crate) fn remember(&self, config: &KubernetesConfig) {
        self.inner
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Access::of(config));
    }

    /// The connected cluster and namespace of `config` (remembered for the
    /// sweep).
    ///
    /// Errors: those of the kubeconfig (see `client_config`), `Provider`
    /// when no client can be made from it.
    pub(crate) async fn target(
        &self,
        operation: &str,
        config: &KubernetesConfig,
    ) -> RunnerResult<Target> {
        self.remember(config);
        self.connect(operation, &Access::of(config)).await
    }

    async fn connect(&self, operation: &str, access: &Access) -> RunnerResult<Target> {
        let mut clients = self.inner.clients.lock().await;
        let (client, default_namespace) = match clients.get(&access.cluster) {
            Some(found) => found.clone(),
            None => {
                let config = client_config(operation, &access.cluster).await?;
                // kube's rustls client needs a process-wide crypto provider
                // when several are compiled in; ring is the one its features
                // name. One the program installed stays.
                if rustls::crypto::CryptoProvider::get_default().is_none() {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                let namespace = config.default_namespace.clone();
                let client = Client::try_from(config).map_err(|e| {
                    RunnerError::provider(format!("{operation}: making a Kubernetes client: {e}"))
                })?;
                clients.insert(access.cluster.clone(), (client.clone(), namespace.clone()));
                (client, namespace)
            }
        };
        Ok(Target {
            client,
            namespace: access.namespace.clone().unwrap_or(default_namespace),
            cluster: access.cluster.clone(),
        })
    }

    /// Every remembered cluster and namespace, connected, once each.
    ///
    /// Errors: the first cluster that cannot be configured.
    pub(crate) async fn known_targets(&self, operation: &str) -> RunnerResult<Vec<Target>> {
        let known: Vec<Access> = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for access in known {
            let target = self.connect(operation, &access).await?;
            if seen.insert((target.cluster.clone(), target.namespace.clone())) {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    /// Cancelled when the last clone of the provider goes.
    pub(crate) fn stopped(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Makes sure this owner's lease exists in the target's namespace and
    /// is renewed in the background for as long as the provider lives.
    ///
    /// Errors: the API's for the lease (`PermissionDenied` naming the verb
    /// on `leases`, `Unavailable`).
    pub(crate) async fn hold_lease(&self, operation: &str, target: &Target) -> RunnerResult<()> {
        let mut held = self.inner.leases.lock().await;
        let key = (target.cluster.clone(), target.namespace.clone());
        if held.contains(&key) {
            return Ok(());
        }
        let leases = target.leases();
        orphans::acquire(operation, &leases, self.owner()).await?;
        orphans::keep_renewing(leases, self.owner().to_string(), self.inner.stop.clone());
        held.insert(key);
        Ok(())
    }
}
