//! What a check gets: the provider, the destination, fresh sessions, and cleanup.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCapabilities, RunnerCommandRequest,
    RunnerDestination, RunnerSessionState,
};

use crate::catalogue::Capability;
use crate::commands::unique_suffix;
use crate::fixtures::process_tree::Marker;
use crate::outcome::{CheckResult, Expect};
use crate::store::ObjectStoreTarget;

/// Why the mounts and artifacts checks did not run.
pub(crate) const NO_STORE: &str = "needs an object store: call Conformance::with_object_store \
     (runner_testkit::S3TestServer::start().target() with the kit's `s3-server` feature)";

/// Why the lost-connection checks did not run.
pub(crate) const NO_BREAKER: &str = "needs a connection breaker: call \
     Conformance::with_connection_breaker (a provider whose sessions hold a connection)";

/// Why the version-mismatch check did not run.
pub(crate) const NO_SKEWED_AGENT: &str = "needs a destination whose agent speaks another \
     protocol version: call Conformance::with_skewed_agent (a provider that runs the runner agent)";

/// What a run gives the checks beyond the provider and its destination, from
/// the [`Conformance`](crate::Conformance) builder.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    /// The object store of the mounts and artifacts checks.
    pub(crate) store: Option<Arc<ObjectStoreTarget>>,
    /// The connection breaker of the lost-connection checks.
    pub(crate) breaker: Option<ConnectionBreaker>,
    /// A destination whose sandbox gets an agent of another protocol version.
    pub(crate) skewed: Option<RunnerDestination>,
}

/// Cuts every connection to the sandbox of the session whose state it gets,
/// leaving the sandbox, its agent and its commands running (see
/// [`Conformance::with_connection_breaker`](crate::Conformance::with_connection_breaker)).
pub type ConnectionBreaker = Arc<
    dyn Fn(RunnerSessionState) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A session the check created, shared for cleanup.
pub(crate) type Session = Arc<dyn RemoteRunnerSession>;

/// Sessions and scratch directories a check created, closed and removed by the
/// harness after the check, whatever its outcome.
#[derive(Default)]
pub(crate) struct Cleanup {
    sessions: Mutex<Vec<Session>>,
    scratch: Mutex<Vec<(Session, PathBuf)>>,
    markers: Mutex<Vec<Marker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cleanup {
    /// Removes scratch directories (best effort) and closes every session.
    /// Returns a message for each session whose `close` failed.
    pub(crate) async fn run(&self) -> Vec<String> {
        self.reap().await;
        let scratch: Vec<(Session, PathBuf)> = lock(&self.scratch).drain(..).collect();
        for (session, dir) in scratch {
            let removal = remove_scratch(&session, dir);
            let _ = tokio::time::timeout(Duration::from_secs(20), removal).await;
        }
        let sessions: Vec<Session> = lock(&self.sessions).drain(..).collect();
        let closes = sessions.into_iter().map(|session| async move {
            let id = session.state().session_id;
            match tokio::time::timeout(Duration::from_secs(60), session.close()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!(
                    "closing session {id} after the check: expected Ok, got {}",
                    crate::outcome::describe(&e)
                )),
                Err(_) => Some(format!(
                    "closing session {id} after the check did not finish within 60 s"
                )),
            }
        });
        futures_util::future::join_all(closes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Cleanup {
    /// Kills processes a check left behind (a failed check may return before
    /// its tree is gone), counting through any registered session still open.
    async fn reap(&self) {
        let markers: Vec<Marker> = lock(&self.markers).drain(..).collect();
        if markers.is_empty() {
            return;
        }
        let sessions: Vec<Session> = lock(&self.sessions).clone();
        for marker in markers {
            for session in &sessions {
                let reaped =
                    tokio::time::timeout(Duration::from_secs(30), marker.reap(session.as_ref()));
                if let Ok(Ok(_)) = reaped.await {
                    break;
                }
            }
        }
    }
}

async fn remove_scratch(session: &Session, dir: PathBuf) {
    let caps = session.capabilities();
    if caps.file_management {
        let _ = session.remove(&dir, true).await;
    } else if caps.command_exec {
        let root = session.workspace_root();
        let request = RunnerCommandRequest::new(
            format!("conformance-cleanup-{}", unique_suffix()),
            "rm",
            [
                "-rf".to_string(),
                "--".to_string(),
                dir.display().to_string(),
            ],
        )
        .with_cwd(root)
        .with_timeout_ms(15_000);
        let _ = session.run_command(request).await;
    }
}

/// The context one check runs with.
#[derive(Clone)]
pub(crate) struct Cx {
    /// The provider under test.
    pub(crate) provider: Arc<dyn RemoteRunnerProvider>,
    /// The destination every fresh session is created for.
    pub(crate) destination: RunnerDestination,
    /// The provider's declared capabilities.
    pub(crate) caps: RunnerCapabilities,
    /// The check's name, used in scratch paths.
    pub(crate) name: &'static str,
    cleanup: Arc<Cleanup>,
    /// The run's object store, connection breaker and skewed destination.
    hooks: Hooks,
}

impl Cx {
    pub(crate) fn new(
        provider: Arc<dyn RemoteRunnerProvider>,
        destination: RunnerDestination,
        name: &'static str,
        cleanup: Arc<Cleanup>,
    ) -> Self {
        let caps = provider.capabilities();
        Self {
            provider,
            destination,
            caps,
            name,
            cleanup,
            hooks: Hooks::default(),
        }
    }

    /// Gives the check what the run was given beyond the provider.
    pub(crate) fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Cuts the connections of the session whose state is `state`.
    pub(crate) async fn break_connections(&self, state: RunnerSessionState) -> CheckResult {
        let breaker = self
            .hooks
            .breaker
            .clone()
            .ok_or_else(|| NO_BREAKER.to_string())?;
        breaker(state)
            .await
            .map_err(|e| format!("cutting the session's connections: {e}"))
    }

    /// The object store, or a failure saying how to configure one.
    pub(crate) fn store(&self) -> CheckResult<Arc<ObjectStoreTarget>> {
        self.hooks.store.clone().ok_or_else(|| NO_STORE.to_string())
    }

    /// The destination whose agent speaks another protocol version, or a
    /// failure saying how to configure one.
    pub(crate) fn skewed_destination(&self) -> CheckResult<RunnerDestination> {
        self.hooks
            .skewed
            .clone()
            .ok_or_else(|| NO_SKEWED_AGENT.to_string())
    }

    /// Whether the provider declares `capability`.
    pub(crate) fn has(&self, capability: Capability) -> bool {
        capability.is_set(&self.caps)
    }

    /// A fresh session from `create_session(destination)`, closed after the check.
    pub(crate) async fn session(&self) -> CheckResult<Session> {
        self.session_of(self.destination.clone()).await
    }

    /// A fresh session of another `destination` (a variant of the run's),
    /// closed after the check.
    pub(crate) async fn session_of(&self, destination: RunnerDestination) -> CheckResult<Session> {
        let id = destination.id.clone();
        let session = self
            .provider
            .create_session(destination)
            .await
            .or_fail(format!("create_session for destination {id:?}"))?;
        self.adopt(session.clone());
        Ok(session)
    }

    /// Registers a session the check got elsewhere (resume, rejoin) for closing.
    pub(crate) fn adopt(&self, session: Session) {
        lock(&self.cleanup.sessions).push(session);
    }

    /// A fresh process marker; processes still carrying it after the check are
    /// killed by the harness.
    pub(crate) fn marker(&self) -> Marker {
        let marker = Marker::new();
        lock(&self.cleanup.markers).push(marker);
        marker
    }

    /// A unique relative directory name for this check's files in `session`,
    /// removed after the check (sessions of one destination may share a root).
    /// The directory is not created.
    pub(crate) fn scratch(&self, session: &Session) -> PathBuf {
        let dir = PathBuf::from(format!("conformance-{}-{}", self.name, unique_suffix()));
        lock(&self.cleanup.scratch).push((session.clone(), dir.clone()));
        dir
    }
}
