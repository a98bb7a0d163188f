//! `SshSession`: the runner agent's session on the host, seen through what
//! ssh owns (its state, its session directory, detach and close, snapshots
//! in the destination's `snapshot_dir`, which manifest entries are
//! read-only, for a fork to protect them again).
//! Everything else forwards to the [`AgentSession`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runner_agent::AgentSession;
use runner_api::{
    LayeredSession, RemoteRunnerSession, RunnerCapabilities, RunnerError, RunnerManifestEntry,
    RunnerMountCapabilities, RunnerResult, RunnerSessionState, RunnerSnapshotRef,
};
use serde::{Deserialize, Serialize};

use crate::config::SshConfig;
use crate::connection::{Connection, Link};
use crate::ownership::{self, OwnerMarker};
use crate::{PROVIDER_ID, host, snapshot};

/// What `state().metadata` carries: where the session lives, for a rejoin to
/// check against the destination it is rejoined on. No config: resume and
/// rejoin take every setting from the destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// The destination as `user@host:port` ([`SshConfig::destination_label`]).
    pub(crate) destination: String,
    /// Absolute remote workspace root (as the agent reports it).
    pub(crate) workspace: PathBuf,
    /// Absolute remote session directory.
    pub(crate) session_dir: PathBuf,
    /// The agent's socket in the session directory.
    #[serde(default)]
    pub(crate) socket: PathBuf,
    /// The read-only manifest entries' targets, relative to the workspace
    /// (the agent refuses writes to them; a fork protects them again).
    #[serde(default)]
    pub(crate) read_only: Vec<PathBuf>,
}

impl SessionMeta {
    /// Refuses a state that is not of `config`'s destination: a session id
    /// this provider does not make (`InvalidRequest`), another host, port or
    /// user (`PermissionDenied` naming both).
    pub(crate) fn check_destination(
        &self,
        operation: &str,
        session_id: &str,
        config: &SshConfig,
    ) -> RunnerResult<()> {
        check_destination_label(operation, session_id, &self.destination, config)?;
        if !ownership::is_plain_id(session_id) {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: session id {session_id:?} is not one this provider makes"
            )));
        }
        Ok(())
    }
}

/// Refuses `what` (a session or snapshot id) when the `named` destination is
/// not `config`'s. Errors: `PermissionDenied` naming both.
pub(crate) fn check_destination_label(
    operation: &str,
    what: &str,
    named: &str,
    config: &SshConfig,
) -> RunnerResult<()> {
    let label = config.destination_label();
    if named != label {
        return Err(RunnerError::permission_denied(format!(
            "{operation} {what}: the state names destination {named}, not {label}, the \
             destination it is resumed on"
        )));
    }
    Ok(())
}

/// Absolute remote path of a configured directory (relative to `home`).
pub(crate) fn remote_dir(link: &Link, dir: &str) -> PathBuf {
    let path = Path::new(dir);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        link.home.join(path)
    }
}

/// Everything a session handle is made of.
pub(crate) struct SessionSetup {
    pub(crate) agent: AgentSession,
    pub(crate) conn: Arc<Connection>,
    pub(crate) config: SshConfig,
    pub(crate) session_id: String,
    pub(crate) destination_id: String,
    pub(crate) session_dir: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) snapshot_dir: PathBuf,
    pub(crate) read_only: Vec<PathBuf>,
}

/// A session on an ssh host: the agent's session, with ssh's lifecycle.
pub(crate) struct SshSession {
    inner: Arc<dyn RemoteRunnerSession>,
    agent: AgentSession,
    conn: Arc<Connection>,
    config: SshConfig,
    session_id: String,
    destination_id: String,
    session_dir: PathBuf,
    socket: PathBuf,
    snapshot_dir: PathBuf,
    read_only: Mutex<Vec<PathBuf>>,
    closed: AtomicBool,
}

impl SshSession {
    /// A handle over a connected agent.
    pub(crate) fn new(setup: SessionSetup) -> Self {
        Self {
            inner: Arc::new(setup.agent.clone()),
            agent: setup.agent,
            conn: setup.conn,
            config: setup.config,
            session_id: setup.session_id,
            destination_id: setup.destination_id,
            session_dir: setup.session_dir,
            socket: setup.socket,
            snapshot_dir: setup.snapshot_dir,
            read_only: Mutex::new(setup.read_only),
            closed: AtomicBool::new(false),
        }
    }

    fn read_only_targets(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.read_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the read-only entries among `entries` (already in the
    /// workspace) read-only in the agent, which from then on refuses file
    /// API writes to them where it resolves each path, and records their
    /// targets for the state.
    pub(crate) async fn protect(&self, entries: Vec<RunnerManifestEntry>) -> RunnerResult<()> {
        let targets: Vec<PathBuf> = entries
            .iter()
            .filter(|entry| !entry.writable)
            .map(|entry| entry.target.clone())
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.agent.protect_entries(entries).await?;
        self.read_only_targets().extend(targets);
        Ok(())
    }

    /// The owner marker of this session, owned by this process.
    fn marker(&self) -> OwnerMarker {
        OwnerMarker::for_session(&self.session_id, &self.inner.workspace_root())
    }

    /// Writes the session directory's owner marker: owned by this process,
    /// or detached.
    pub(crate) async fn write_marker(&self, detached: bool) -> RunnerResult<()> {
        let mut marker = self.marker();
        if detached {
            marker.detach();
        }
        let path = self.session_dir.join(ownership::MARKER);
        self.conn
            .with_link(|link| {
                let (marker, path) = (&marker, &path);
                async move { ownership::write_marker(&link, path, marker).await }
            })
            .await
    }

    fn meta(&self) -> SessionMeta {
        SessionMeta {
            destination: self.config.destination_label(),
            workspace: self.inner.workspace_root(),
            session_dir: self.session_dir.clone(),
            socket: self.socket.clone(),
            read_only: self.read_only_targets().clone(),
        }
    }

    /// Removes the workspace and the session directory from the host.
    async fn remove_dirs(&self) -> RunnerResult<()> {
        let workspace = self.inner.workspace_root();
        let session_dir = self.session_dir.clone();
        self.conn
            .with_link(|link| {
                let (workspace, session_dir) = (&workspace, &session_dir);
                async move {
                    host::remove_tree(&link, workspace).await?;
                    host::remove_tree(&link, session_dir).await
                }
            })
            .await
    }
}

#[async_trait]
impl LayeredSession for SshSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    fn state(&self) -> RunnerSessionState {
        RunnerSessionState {
            provider_id: PROVIDER_ID.to_string(),
            session_id: self.session_id.clone(),
            destination_id: self.destination_id.clone(),
            snapshot: None,
            metadata: serde_json::to_value(self.meta()).unwrap_or_default(),
        }
    }

    /// The agent's, with detaching (the agent outlives its channels) and
    /// without mounts and artifact export (the layer stack adds them on
    /// this side).
    fn capabilities(&self) -> RunnerCapabilities {
        let mut caps = self.inner.capabilities();
        caps.detachable = true;
        caps.artifact_export = false;
        caps.mounts = RunnerMountCapabilities::default();
        caps
    }

    /// Leaves the agent, the workspace and every command running; marks the
    /// owner marker detached and drops the connection.
    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        let state = LayeredSession::state(self);
        self.write_marker(true).await?;
        self.closed.store(true, Ordering::SeqCst);
        self.agent.client().disconnect().await;
        Ok(state)
    }

    /// Closes the agent's session (every process ends, the agent exits),
    /// then removes the workspace and the session directory.
    async fn close(&self) -> RunnerResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.close().await?;
        self.remove_dirs().await
    }

    /// The agent's unix-local snapshot (an archive in the destination's
    /// `snapshot_dir`), with an owner marker next to it.
    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let taken = self.inner.snapshot().await?;
        let marker = self.marker();
        self.conn
            .with_link(|link| {
                let (marker, taken) = (&marker, taken.clone());
                async move {
                    snapshot::adopt(&link, &self.config, &self.snapshot_dir, marker, taken).await
                }
            })
            .await
    }
}
