//! Pausing: the container frozen (`docker pause`) while the session is
//! paused, and thawed for the length of each call that reaches the agent.
//!
//! The agent runs in the container, so a frozen container answers nothing.
//! Every call of a paused session takes a [`Hold`]: the first hold thaws the
//! container, the last one to end freezes it again. The session's commands
//! stay stopped meanwhile (the agent's `pause` sent their process groups
//! STOP before the freeze), so file operations, `command_status` and
//! `command_output` keep working while paused, as the contract says.

use std::sync::Arc;

use runner_api::RunnerResult;
use tokio::sync::{Mutex, MutexGuard};

use crate::error::Daemon;

/// Whether the session is paused, and how many calls hold the container thawed.
#[derive(Debug, Default)]
pub(crate) struct FreezeState {
    /// `pause` froze the session and no `resume` came since.
    pub(crate) paused: bool,
    /// Calls running now.
    holds: usize,
}

struct Inner {
    daemon: Daemon,
    container: String,
    state: Mutex<FreezeState>,
}

/// The freezer of one container.
#[derive(Clone)]
pub(crate) struct Freezer {
    inner: Arc<Inner>,
}

/// One call's hold on the container running; dropping it ends the hold
/// (the last one of a paused session freezes the container again).
pub(crate) struct Hold {
    inner: Arc<Inner>,
}

impl Freezer {
    /// The freezer of `container`, which is frozen now when `paused`.
    pub(crate) fn new(daemon: Daemon, container: String, paused: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                daemon,
                container,
                state: Mutex::new(FreezeState { paused, holds: 0 }),
            }),
        }
    }

    /// Holds the container running for a call of `operation`: a paused one
    /// is thawed first, unless another call thawed it already.
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn hold(&self, operation: &str) -> RunnerResult<Hold> {
        let mut state = self.inner.state.lock().await;
        if state.paused && state.holds == 0 {
            self.thaw(operation).await?;
        }
        state.holds += 1;
        Ok(Hold {
            inner: self.inner.clone(),
        })
    }

    /// The state, held exclusively: `pause`, `resume` and `close` change it
    /// with nothing else starting meanwhile.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, FreezeState> {
        self.inner.state.lock().await
    }

    /// Freezes the container unless calls hold it running (the last one
    /// freezes it then); marks `state` paused.
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn freeze(
        &self,
        operation: &str,
        state: &mut FreezeState,
    ) -> RunnerResult<()> {
        if state.holds == 0 {
            let inner = &self.inner;
            inner
                .daemon
                .docker
                .pause_container(&inner.container)
                .await
                .map_err(|e| inner.daemon.error(operation, &inner.container, e))?;
        }
        state.paused = true;
        Ok(())
    }

    /// Thaws a paused container for good (unless calls hold it thawed
    /// already); marks `state` not paused.
    ///
    /// Errors: the daemon's, naming `operation` and the container.
    pub(crate) async fn unfreeze(
        &self,
        operation: &str,
        state: &mut FreezeState,
    ) -> RunnerResult<()> {
        if state.paused && state.holds == 0 {
            self.thaw(operation).await?;
        }
        state.paused = false;
        Ok(())
    }

    async fn thaw(&self, operation: &str) -> RunnerResult<()> {
        let inner = &self.inner;
        inner
            .daemon
            .docker
            .unpause_container(&inner.container)
            .await
            .map_err(|e| inner.daemon.error(operation, &inner.container, e))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let release = async move {
            let mut state = inner.state.lock().await;
            state.holds = state.holds.saturating_sub(1);
            if state.paused
                && state.holds == 0
                && let Err(e) = inner.daemon.docker.pause_container(&inner.container).await
            {
                tracing::warn!(container = %inner.container, error = %e, "freezing the paused container again failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release);
            }
            Err(_) => {
                if let Ok(mut state) = self.inner.state.try_lock() {
                    state.holds = state.holds.saturating_sub(1);
                }
            }
        }
    }
}
