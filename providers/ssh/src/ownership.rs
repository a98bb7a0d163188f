//! Owner markers on what the provider creates remotely, and the orphan sweep.
//!
//! Every session directory holds `owner.json` and every snapshot archive has
//! `<id>.owner` next to it. A marker names the library, the local host, the
//! owning process (pid and its start time) and when it was written. The sweep
//! removes only marked items whose owner is gone: a process on this host that
//! no longer runs (or a detached session, whose marker has no owner process),
//! and only once the marker is older than `orphan_grace_s`. Before a session
//! directory goes, its agent is closed (a connection and a `close`: every
//! process of the session ends, and the agent exits). A finished snapshot
//! archive goes once its session is gone and it is older than
//! `snapshot_grace_s`.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use runner_agent::AgentSession;
use runner_api::{RemoteRunnerSession, RunnerResult, RunnerSweepReport};
use serde::{Deserialize, Serialize};

use crate::config::SshConfig;
use crate::connection::{Connection, Link, Pool};
use crate::session::remote_dir;
use crate::{agent, host};

/// File name of a session directory's marker.
pub(crate) const MARKER: &str = "owner.json";

/// Value of [`OwnerMarker::library`].
const LIBRARY: &str = "runner-ssh";

/// Who created a remote directory or archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct OwnerMarker {
    /// Always `runner-ssh`: only marked items are ever swept.
    pub(crate) library: String,
    /// The session.
    pub(crate) session_id: String,
    /// The session's workspace (removed with the session directory).
    pub(crate) workspace: PathBuf,
    /// Host name of the machine the owning process runs on.
    pub(crate) host: String,
    /// The owning process; `None` once detached.
    pub(crate) pid: Option<u32>,
    /// Start time of the owning process (clock ticks since boot), to tell a
    /// reused pid apart.
    pub(crate) pid_start: Option<u64>,
    /// When the marker was written, milliseconds since the Unix epoch.
    pub(crate) written_ms: u64,
}

fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Start time of a local process (field 22 of `/proc/<pid>/stat`).
fn process_start(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

impl OwnerMarker {
    /// A marker owned by this process.
    pub(crate) fn for_session(session_id: &str, workspace: &Path) -> Self {
        Self {
            library: LIBRARY.to_string(),
            session_id: session_id.to_string(),
            workspace: workspace.to_path_buf(),
            host: local_host(),
            pid: Some(std::process::id()),
            pid_start: process_start("self"),
            written_ms: now_ms(),
        }
    }

    /// No process owns it any more (the session was detached).
    pub(crate) fn detach(&mut self) {
        self.pid = None;
        self.pid_start = None;
        self.written_ms = now_ms();
    }

    /// Whether the marker was written at least `grace_s` ago.
    fn is_older_than(&self, grace_s: u64) -> bool {
        now_ms().saturating_sub(self.written_ms) >= grace_s.saturating_mul(1000)
    }

    /// Whether no process owns it: detached, or the owner ran on this host
    /// and that process (same pid and start time) no longer runs.
    fn owner_gone(&self) -> bool {
        match self.pid {
            None => true,
            Some(pid) => {
                self.host == local_host() && process_start(&pid.to_string()) != self.pid_start
            }
        }
    }

    /// Whether the owner is gone and the grace period has passed.
    fn is_orphan(&self, grace_s: u64) -> bool {
        self.library == LIBRARY && self.is_older_than(grace_s) && self.owner_gone()
    }
}

/// Writes a marker file (mode 0600).
pub(crate) async fn write_marker(
    link: &Link,
    path: &Path,
    marker: &OwnerMarker,
) -> RunnerResult<()> {
    let json = serde_json::to_vec_pretty(marker)
        .map_err(|e| runner_api::RunnerError::provider(format!("encoding owner marker: {e}")))?;
    host::write_file(link, path, &json, 0o600).await
}

async fn read_marker(link: &Link, path: &Path) -> RunnerResult<Option<OwnerMarker>> {
    Ok(host::read_small(link, path)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// Whether `name` can be a session or snapshot id the provider made (a
/// uuid): letters, digits and `-`, at most 64 of them.
pub(crate) fn is_plain_id(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The canonical path of the workspace the orphan `marker` owns, when it is
/// one this library made: the marker names `<workspace_root>/<name>` with a
/// plain id as name (the session's own id, or the fresh directory of a
/// snapshot fork), that path is a directory itself (not a symlink), and it
/// resolves to the same name under the canonical workspace root `base`.
/// `None` otherwise: a marker naming anything else (a `..` path, a
/// directory elsewhere, a symlink leading out) never gets it removed.
async fn owned_workspace(
    link: &Link,
    workspace_root: &Path,
    base: Option<&Path>,
    marker: &OwnerMarker,
) -> RunnerResult<Option<PathBuf>> {
    let Some(base) = base else {
        return Ok(None);
    };
    let named = runner_api::normalize_lexically(&marker.workspace);
    let name = named
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| is_plain_id(n));
    let Some(name) = name.filter(|_| named.parent() == Some(workspace_root)) else {
        tracing::warn!(workspace = %marker.workspace.display(), session = %marker.session_id, "sweep_orphans: a marker names a workspace this library did not make; leaving it");
        return Ok(None);
    };
    let expected = workspace_root.join(&name);
    let is_dir = host::lstat(link, &expected)
        .await?
        .is_some_and(|meta| host::is_dir(&meta));
    if !is_dir {
        return Ok(None);
    }
    let canonical = base.join(&name);
    let resolved = host::canonicalize(link, &expected).await.ok();
    Ok((resolved.as_ref() == Some(&canonical)).then_some(canonical))
}

/// Closes the agent serving `session_dir`'s socket, when one answers: every
/// process of its session ends and the agent exits. An agent that is gone
/// (no socket, or nobody listening) is fine.
async fn close_agent(
    pool: &Pool,
    conn: &Arc<Connection>,
    link: &Link,
    session_dir: &Path,
) -> RunnerResult<()> {
    let socket = agent::socket_of(link, session_dir);
    if host::lstat(link, &socket).await?.is_none() {
        return Ok(());
    }
    let config = conn.config();
    let binary = agent::binary_for("sweep_orphans", pool, link, config).await?;
    let copy = agent::deliver(link, config, &binary).await?;
    match AgentSession::connect(agent::connector(conn.clone(), copy, socket)).await {
        Ok(session) => session.close().await,
        Err(e) => {
            tracing::info!(dir = %session_dir.display(), error = %e, "sweep_orphans: no agent answers; removing the directory");
            Ok(())
        }
    }
}

/// Removes orphaned session directories (with their workspaces) and orphaned
/// snapshot leftovers of one destination.
///
/// Only what this library made is touched: a session directory is a real
/// directory (not a symlink) directly in the canonical `state_dir`, named as
/// a session id, holding a marker of that session; its workspace is removed
/// only as [`owned_workspace`] allows. Both are removed by their canonical
/// paths.
pub(crate) async fn sweep(
    pool: &Pool,
    conn: &Arc<Connection>,
    link: &Link,
    config: &SshConfig,
    report: &mut RunnerSweepReport,
) -> RunnerResult<()> {
    let label = config.destination_label();
    let state_dir = remote_dir(link, &config.state_dir);
    let workspace_root = remote_dir(link, &config.workspace_root);
    if let Ok(entries) = host::list(link, &state_dir).await {
        let state_base = host::canonicalize(link, &state_dir).await?;
        let workspace_base = host::canonicalize(link, &workspace_root).await.ok();
        for entry in entries {
            if !entry.is_dir || !is_plain_id(&entry.name) {
                continue;
            }
            let Some(marker) = read_marker(link, &state_dir.join(&entry.name).join(MARKER)).await?
            else {
                continue;
            };
            if marker.session_id != entry.name || !marker.is_orphan(config.orphan_grace_s) {
                continue;
            }
            let session_dir = state_base.join(&entry.name);
            let workspace =
                owned_workspace(link, &workspace_root, workspace_base.as_deref(), &marker).await?;
            close_agent(pool, conn, link, &session_dir).await?;
            for path in workspace.iter().chain(std::iter::once(&session_dir)) {
                host::remove_tree(link, path).await?;
            }
            for path in std::iter::once(&session_dir).chain(&workspace) {
                report.removed.push(format!("{label}:{}", path.display()));
            }
        }
    }
    let snapshot_dir = remote_dir(link, &config.snapshot_dir);
    if let Ok(entries) = host::list(link, &snapshot_dir).await {
        for entry in entries.iter().filter(|e| e.is_file) {
            let Some(stem) = entry.name.strip_suffix(".owner").filter(|s| is_plain_id(s)) else {
                continue;
            };
            let marker_path = snapshot_dir.join(&entry.name);
            let Some(marker) = read_marker(link, &marker_path).await? else {
                continue;
            };
            let archive_name = format!("{stem}.tar");
            let archive = snapshot_dir.join(&archive_name);
            let complete = entries.iter().any(|e| e.name == archive_name);
            if complete {
                // Finished archives serve resume_session: kept while their
                // session lives, and for snapshot_grace_s after it is gone.
                let Some(grace) = config.snapshot_grace_s else {
                    continue;
                };
                if marker.library != LIBRARY
                    || !is_plain_id(&marker.session_id)
                    || !marker.is_older_than(grace)
                {
                    continue;
                }
                let session_gone = marker.owner_gone()
                    || host::lstat(link, &state_dir.join(&marker.session_id))
                        .await?
                        .is_none();
                if session_gone {
                    host::remove_tree(link, &archive).await?;
                    host::remove_tree(link, &marker_path).await?;
                    report
                        .removed
                        .push(format!("{label}:{}", archive.display()));
                }
                continue;
            }
            // A marker without its archive (the snapshot failed): it goes
            // once its owner is gone.
            if !marker.is_orphan(config.orphan_grace_s) {
                continue;
            }
            host::remove_tree(link, &marker_path).await?;
            report
                .removed
                .push(format!("{label}:{}", marker_path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_owner_is_not_an_orphan_and_detached_is() {
        let mut marker = OwnerMarker::for_session("s", Path::new("/w/s"));
        assert!(!marker.is_orphan(0));
        marker.detach();
        assert!(marker.is_orphan(0));
        assert!(!marker.is_orphan(3600));
        marker.library = "other".into();
        assert!(!marker.is_orphan(0));
    }
}
