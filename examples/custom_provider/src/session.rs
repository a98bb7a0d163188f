//! `ChildSession`: the agent's session, plus the lifecycle this provider
//! owns (its daemon, its provider id in states and snapshots).

use std::sync::Arc;

use async_trait::async_trait;
use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerResult, RunnerSessionState, RunnerSnapshotRef,
};

use crate::PROVIDER_ID;
use crate::daemon::Daemon;

/// A session served by an agent daemon this provider started. Every
/// operation goes to the [`runner_agent::AgentSession`] unchanged (the
/// [`LayeredSession`] defaults); only what the provider adds is overridden:
/// states and snapshot references name this provider, and `close` ends the
/// daemon after the agent closed the session.
pub(crate) struct ChildSession {
    agent: Arc<dyn RemoteRunnerSession>,
    daemon: tokio::sync::Mutex<Option<Daemon>>,
}

impl ChildSession {
    /// The session `agent` of `daemon`.
    pub(crate) fn new(agent: Arc<dyn RemoteRunnerSession>, daemon: Daemon) -> Self {
        Self {
            agent,
            daemon: tokio::sync::Mutex::new(Some(daemon)),
        }
    }
}

/// The agent's state as this provider's: unix-local's provider id becomes
/// ours (metadata and snapshot ids stay the agent's).
fn ours(mut state: RunnerSessionState) -> RunnerSessionState {
    state.provider_id = PROVIDER_ID.into();
    state.snapshot = state.snapshot.map(our_snapshot);
    state
}

fn our_snapshot(mut snapshot: RunnerSnapshotRef) -> RunnerSnapshotRef {
    snapshot.provider_id = PROVIDER_ID.into();
    snapshot
}

/// One of our states as the agent's unix-local session knows it, for
/// `serve --resume`.
pub(crate) fn agents(mut state: RunnerSessionState) -> RunnerSessionState {
    state.provider_id = runner_local::PROVIDER_ID.into();
    if let Some(snapshot) = &mut state.snapshot
        && snapshot.provider_id == PROVIDER_ID
    {
        snapshot.provider_id = runner_local::PROVIDER_ID.into();
    }
    state
}

#[async_trait]
impl LayeredSession for ChildSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.agent
    }

    fn state(&self) -> RunnerSessionState {
        ours(self.agent.state())
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.agent.pause().await.map(ours)
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.agent.resume().await.map(ours)
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        self.agent.snapshot().await.map(our_snapshot)
    }

    /// The agent closes its session (every process of it ends, its
    /// workspace is freed) and exits; then its socket directory is removed.
    /// A second close finds nothing left to do.
    async fn close(&self) -> RunnerResult<()> {
        let mut daemon = self.daemon.lock().await;
        let Some(running) = daemon.as_mut() else {
            return Ok(());
        };
        let closed = self.agent.close().await;
        running.stop().await;
        *daemon = None;
        closed
    }
}
