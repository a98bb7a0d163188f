//! The session manager: idle timeout, maximum lifetime and keepalive for the
//! sessions of any provider.
//!
//! [`SessionManager`] wraps a provider. Every session it creates (or is given
//! with [`SessionManager::manage`]) comes back as a [`ManagedSession`], which is
//! itself a [`RemoteRunnerSession`] and can be
//! handed out as `Arc<dyn RemoteRunnerSession>`. A background task checks the
//! timers every [`ManagerConfig::check_interval`]:
//!
//! - **Activity** is any call through the managed session (for its whole
//!   duration, so a long `run_command` is activity until it returns), a
//!   background command the session reports as running (`list_commands`), a
//!   [`ManagedSession::touch`], and every moment a [`TurnGuard`] is held.
//! - **Idle**: a session without activity for `idle_timeout` is paused when
//!   [`IdleAction::Pause`] is chosen and the session is `pausable`, and closed
//!   otherwise. The next call through a session the manager paused resumes it
//!   first, transparently.
//! - **Maximum lifetime**: a session older than `max_lifetime` is closed even
//!   when busy or inside a turn; calls in flight may then fail with
//!   `SessionClosed`.
//! - **Keepalive**: while a session is busy (a turn is held, a call is in
//!   flight, or a background command was last seen running), the manager sends
//!   it a cheap call (`list_commands`, else `true` through `run_command`) every
//!   `keepalive_interval`, so idle rules of the backend or of the network path
//!   (a remote sandbox's own auto-stop, an SSH connection cut when quiet) see
//!   traffic while an agent turn is in progress. An idle session gets none.
//!
//! Every pause, resume and close the manager decides is logged with `tracing`
//! at `info`, failures at `warn`.

mod managed;
mod pool;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerDestination, RunnerError, RunnerResult,
    RunnerSessionState, RunnerSweepReport,
};

pub use managed::{CloseReason, ManagedSession, ManagedStatus, TurnGuard};
pub use pool::{DestinationHealth, DestinationPool, PoolConfig, SelectionPolicy};

/// What the manager does with a session that has been idle for `idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleAction {
    /// Pause it when the session is `pausable` (it resumes on the next call);
    /// close it otherwise.
    #[default]
    Pause,
    /// Close it.
    Close,
}

/// Timers of a [`SessionManager`]. `None` turns a rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Pause or close a session after this long without activity
    /// (default 10 minutes).
    pub idle_timeout: Option<Duration>,
    /// Close a session this long after it was created, busy or not
    /// (default: no limit).
    pub max_lifetime: Option<Duration>,
    /// While a session is busy, send it a cheap call this often
    /// (default: off).
    pub keepalive_interval: Option<Duration>,
    /// What to do on idle (default [`IdleAction::Pause`]).
    pub on_idle: IdleAction,
    /// How often the background task checks the timers (default 1 second);
    /// every rule acts at most this much after its time.
    pub check_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: None,
            keepalive_interval: None,
            on_idle: IdleAction::Pause,
            check_interval: Duration::from_secs(1),
        }
    }
}

impl ManagerConfig {
    fn validate(&self) -> RunnerResult<()> {
        let zero = |name: &str, value: Option<Duration>| match value {
            Some(d) if d.is_zero() => Err(RunnerError::invalid_request(format!(
                "SessionManager::new: {name} must be greater than zero (use None to turn it off)"
            ))),
            _ => Ok(()),
        };
        zero("idle_timeout", self.idle_timeout)?;
        zero("max_lifetime", self.max_lifetime)?;
        zero("keepalive_interval", self.keepalive_interval)?;
        zero("check_interval", Some(self.check_interval))
    }
}

struct Shared {
    provider: Arc<dyn RemoteRunnerProvider>,
    config: Arc<ManagerConfig>,
    sessions: Mutex<BTreeMap<String, Arc<ManagedSession>>>,
}

impl Shared {
    fn sessions(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ManagedSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies idle timeout, maximum lifetime and keepalive to the sessions of one
/// provider (see the [module docs](self)).
///
/// The manager keeps every session it manages until that session is closed,
/// so a session whose handles were all dropped is still reaped when idle.
/// Dropping the manager stops its background task and leaves the sessions as
/// they are; [`close_all`](Self::close_all) closes them.
pub struct SessionManager {
    shared: Arc<Shared>,
    reaper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("provider", &self.shared.provider.id())
            .field("config", &self.shared.config)
            .field("sessions", &self.shared.sessions().len())
            .finish()
    }
}

impl SessionManager {
    /// A manager for `provider`'s sessions. Starts the background task on the
    /// current tokio runtime.
    ///
    /// Errors: `InvalidRequest` for a zero duration, or when called outside a
    /// tokio runtime.
    pub fn new(
        provider: Arc<dyn RemoteRunnerProvider>,
        config: ManagerConfig,
    ) -> RunnerResult<Self> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            RunnerError::invalid_request(
                "SessionManager::new: must be called inside a tokio runtime",
            )
        })?;
        let shared = Arc::new(Shared {
            provider,
            config: Arc::new(config),
            sessions: Mutex::new(BTreeMap::new()),
        });
        let reaper = handle.spawn(reap(Arc::downgrade(&shared)));
        Ok(Self { shared, reaper })
    }

    /// The provider this manager wraps.
    pub fn provider(&self) -> &Arc<dyn RemoteRunnerProvider> {
        &self.shared.provider
    }

    /// The timers in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.shared.config
    }

    /// Creates a session with the provider and manages it.
    /// Errors: those of [`RemoteRunnerProvider::create_session`].
    pub async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<ManagedSession>> {
        let session = self.shared.provider.create_session(destination).await?;
        Ok(self.manage(session))
    }

    /// Resumes a session with the provider and manages it.
    /// Errors: those of [`RemoteRunnerProvider::resume_session`].
    pub async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<ManagedSession>> {
        let session = self.shared.provider.resume_session(state).await?;
        Ok(self.manage(session))
    }

    /// Manages a session created elsewhere (a pool, a rejoin). Its lifetime
    /// counts from now.
    pub fn manage(&self, session: Arc<dyn RemoteRunnerSession>) -> Arc<ManagedSession> {
        let managed = Arc::new(ManagedSession::new(session, self.shared.config.clone()));
        tracing::debug!(session_id = %managed.session_id(), "session managed");
        self.shared
            .sessions()
            .insert(managed.session_id().to_string(), managed.clone());
        managed
    }

    /// The managed session with `session_id`, while it is open.
    pub fn get(&self, session_id: &str) -> Option<Arc<ManagedSession>> {
        self.shared.sessions().get(session_id).cloned()
    }

    /// Every session still open, by session id.
    pub fn sessions(&self) -> Vec<Arc<ManagedSession>> {
        self.shared.sessions().values().cloned().collect()
    }

    /// Runs the provider's [`sweep_orphans`](RemoteRunnerProvider::sweep_orphans).
    pub async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        self.shared.provider.sweep_orphans().await
    }

    /// Closes every managed session. Returns the first error after trying all.
    pub async fn close_all(&self) -> RunnerResult<()> {
        let sessions: Vec<_> = std::mem::take(&mut *self.shared.sessions())
            .into_values()
            .collect();
        let results = futures_util::future::join_all(
            sessions
                .iter()
                .map(|s| s.close_because(CloseReason::Shutdown)),
        )
        .await;
        results.into_iter().collect::<RunnerResult<Vec<()>>>()?;
        Ok(())
    }
}

impl Drop for SessionManager {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// The background task: checks every session each `check_interval` until the
/// manager is gone.
async fn reap(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(shared) => shared.config.check_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let sessions: Vec<_> = shared.sessions().values().cloned().collect();
        futures_util::future::join_all(sessions.iter().map(|s| s.check())).await;
        shared.sessions().retain(|_, s| !s.status().is_closed());
    }
}
