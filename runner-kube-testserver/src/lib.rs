#![doc = include_str!("../README.md")]

mod api;
mod claims;
mod exec;
mod patch;
mod pods;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod watch;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use server::{Shared, lock};
use store::Store;

/// The label on every container the server creates; its value is the
/// server instance's id.
pub const LABEL_INSTANCE: &str = "io.runners.kube-testserver.instance";
/// The label naming the pod uid of a container.
pub const LABEL_POD_UID: &str = "io.runners.kube-testserver.pod-uid";
/// The name of the one fake node.
pub const NODE_NAME: &str = "runners-test";
/// The user the kubeconfig authenticates as (named in 403 messages).
pub const USER: &str = "runners-test";

/// A failure to start or restart the server.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How to start a [`KubeTestServer`].
#[derive(Debug, Clone)]
pub struct KubeTestServerOptions {
    /// The namespace of the kubeconfig's context (`runners-test` by default).
    pub namespace: String,
}

impl Default for KubeTestServerOptions {
    fn default() -> Self {
        Self {
            namespace: "runners-test".into(),
        }
    }
}

struct Serving {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

/// A Kubernetes API server on 127.0.0.1 for a subset of the wire protocol,
/// whose pods are Docker containers. Dropping it (or [`shutdown`]) removes
/// every container and directory it created.
///
/// [`shutdown`]: KubeTestServer::shutdown
pub struct KubeTestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    namespace: String,
    serving: tokio::sync::Mutex<Option<Serving>>,
    cleaned: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for KubeTestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTestServer")
            .field("url", &self.url())
            .field("instance", &self.shared.instance)
            .finish()
    }
}

impl KubeTestServer {
    /// Connects to the local Docker daemon, listens on an ephemeral port of
    /// 127.0.0.1 (plain HTTP, bearer token) and writes a kubeconfig.
    pub async fn start(options: KubeTestServerOptions) -> Result<Self, Error> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| Error(format!("connecting to the Docker daemon: {e}")))?
            .negotiate_version()
            .await
            .map_err(|e| Error(format!("negotiating the Docker API version: {e}")))?;
        docker
            .ping()
            .await
            .map_err(|e| Error(format!("pinging the Docker daemon: {e}")))?;
        let instance = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = std::env::temp_dir().join(format!("runners-kube-testserver-{instance}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("creating {}: {e}", dir.display())))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error(format!("binding 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error(format!("reading the listening address: {e}")))?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let kubeconfig = dir.join("kubeconfig");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": NODE_NAME, "cluster": {"server": format!("http://{addr}")}}],
            "users": [{"name": USER, "user": {"token": token}}],
            "contexts": [{"name": NODE_NAME, "context": {
                "cluster": NODE_NAME, "user": USER, "namespace": options.namespace}}],
            "current-context": NODE_NAME,
        });
        std::fs::write(&kubeconfig, config.to_string())
            .map_err(|e| Error(format!("writing {}: {e}", kubeconfig.display())))?;
        let shared = Arc::new(Shared {
            instance,
            token,
            user: USER.into(),
            docker,
            dir,
            store: Mutex::new(Store::new()),
            forbidden: Mutex::new(HashSet::new()),
            lifecycles: Mutex::new(HashMap::new()),
            generation: Mutex::new(CancellationToken::new()),
            exec_cut: Mutex::new(CancellationToken::new()),
            open_execs: std::sync::atomic::AtomicUsize::new(0),
        });
        let serving = serve(&shared, listener);
        Ok(Self {
            shared,
            addr,
            kubeconfig,
            namespace: options.namespace,
            serving: tokio::sync::Mutex::new(Some(serving)),
            cleaned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The kubeconfig file (cluster, token user, context with namespace).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The namespace of the kubeconfig's context.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The instance id, the value of [`LABEL_INSTANCE`] on its containers.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Answers `verb` on `resource` (`"create"`, `"pods/exec"`) with 403
    /// from now on. Exec checks `create` and `get` on `pods/exec`.
    pub fn forbid(&self, verb: &str, resource: &str) {
        lock(&self.shared.forbidden).insert((verb.into(), resource.into()));
    }

    /// Allows `verb` on `resource` again.
    pub fn allow(&self, verb: &str, resource: &str) {
        lock(&self.shared.forbidden).remove(&(verb.to_string(), resource.to_string()));
    }

    /// Forgets the change history: watches from an older resourceVersion get
    /// 410 Expired, as after an etcd compaction.
    pub fn expire_history(&self) {
        lock(&self.shared.store).compact();
    }

    /// Cuts every open exec WebSocket without a close frame, as when the
    /// connection to an API server drops. The commands keep running in their
    /// containers and the server keeps serving; new execs work.
    pub fn drop_exec_streams(&self) {
        self.shared.cut_execs();
    }

    /// How many exec streams are open: each one from its upgrade until its
    /// status is sent, its client goes away or it is cut.
    pub fn open_exec_streams(&self) -> usize {
        self.shared
            .open_execs
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops listening; watches and exec streams are cut. Objects and
    /// containers stay.
    pub async fn stop(&self) {
        if let Some(serving) = self.serving.lock().await.take() {
            serving.stop.cancel();
            let abort = serving.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), serving.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub async fn start_again(&self) -> Result<(), Error> {
        let mut serving = self.serving.lock().await;
        if serving.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|e| Error(format!("binding {} again: {e}", self.addr)))?;
        *serving = Some(serve(&self.shared, listener));
        Ok(())
    }

    /// Stops the server and removes every container and directory it
    /// created.
    pub async fn shutdown(&self) {
        self.stop().await;
        for (_, task) in lock(&self.shared.lifecycles).drain() {
            task.abort();
        }
        pods::remove_all(&self.shared.docker, &self.shared.instance).await;
        let _ = std::fs::remove_dir_all(&self.shared.dir);
        self.cleaned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve(shared: &Arc<Shared>, listener: TcpListener) -> Serving {
    let stop = CancellationToken::new();
    *lock(&shared.generation) = stop.clone();
    let app = api::router(shared.clone());
    let signal = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(signal.cancelled_owned())
            .await;
    });
    Serving { task, stop }
}

impl Drop for KubeTestServer {
    fn drop(&mut self) {
        lock(&self.shared.generation).cancel();
        for (_, task) in lock(&self.shared.lifecycles).drain() {
            task.abort();
        }
        if self.cleaned.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let instance = self.shared.instance.clone();
        let dir = self.shared.dir.clone();
        // The caller's runtime may be shutting down: clean up on a thread
        // with a runtime and a Docker client of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(docker) = Docker::connect_with_local_defaults() {
                    pods::remove_all(&docker, &instance).await;
                }
            });
            let _ = std::fs::remove_dir_all(&dir);
        });
        let _ = cleanup.join();
    }
}
