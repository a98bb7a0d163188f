//! Owner markers on what the provider creates remotely, and the orphan sweep.
//!
//! Every session directory holds `owner.json` and every snapshot archive has
//! `<id>.owner` next to it. A marker names the library, the local host, the
//! owning process (pid and its start time) and when it was written. The sweep
//! removes only marked items whose owner is gone: a process on this host that
//! no longer runs (or a detached session, whose marker has no owner process),
//! and only once the marker is older than `orphan_grace_s`. Before a session
//! directory goes, the process groups recorded in it are killed. A finished
//! snapshot archive goes once its session is gone and it is older than
//! `snapshot_grace_s`.

use std::path::{Path, PathBuf};

use runner_api::{RunnerFileKind, RunnerResult, RunnerSignal, RunnerSweepReport};
use serde::{Deserialize, Serialize};

use crate::config::SshConfig;
use crate::connection::Link;
use crate::exec::{SESSION_MARK, now_ms, read_small, signal_marked};
use crate::files;
use crate::script::{quote_path, run_checked, run_script};
use crate::session::remote_dir;

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

/// Writes a marker file.
pub(crate) async fn write_marker(
    link: &Link,
    path: &Path,
    marker: &OwnerMarker,
) -> RunnerResult<()> {
    let json = serde_json::to_vec_pretty(marker)
        .map_err(|e| runner_api::RunnerError::provider(format!("encoding owner marker: {e}")))?;
    files::write_small_file(link, path, &json, Some(0o600)).await
}

async fn read_marker(link: &Link, path: &Path) -> RunnerResult<Option<OwnerMarker>> {
    Ok(read_small(link, path)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// The script that kills every process group recorded in `session_dir` (its
/// commands and their stdin holders) and every process carrying the session's
/// mark (those that left their group), then removes `session_dir` and
/// `workspace`.
pub(crate) fn teardown_script(
    operation: &str,
    session_id: &str,
    session_dir: &Path,
    workspace: Option<&Path>,
) -> RunnerResult<String> {
    let dir = quote_path(operation, session_dir)?;
    let workspace = match workspace {
        Some(path) => quote_path(operation, path)?,
        None => String::new(),
    };
    Ok(format!(
        "for f in {dir}/cmd/*/pgid {dir}/run/*; do \
         [ -f \"$f\" ] && read p < \"$f\" && case \"$p\" in ''|*[!0-9]*) ;; \
         *) kill -s KILL -- -\"$p\" 2>/dev/null;; esac; done; \
         for f in {dir}/cmd/*/stdin.holder; do \
         [ -s \"$f\" ] && kill \"$(cat \"$f\")\" 2>/dev/null; done; \
         {marked}rm -rf -- {workspace} {dir}",
        marked = signal_marked(SESSION_MARK, session_id, RunnerSignal::Kill),
    ))
}

async fn remove_all(link: &Link, paths: &[&Path]) -> RunnerResult<()> {
    let mut script = String::from("rm -rf --");
    for path in paths {
        script.push(' ');
        script.push_str(&quote_path("sweep_orphans", path)?);
    }
    run_script(link, "sweep_orphans", &script, None).await?;
    Ok(())
}

/// Whether `name` can be a session or snapshot id the provider made (a
/// uuid): letters, digits and `-`, at most 64 of them.
pub(crate) fn is_plain_id(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The canonical path of the workspace the orphan `marker` owns, when it is
/// one this library made: the marker names `<workspace_root>/<session id>`,
/// that path is a directory itself (not a symlink), and it resolves to the
/// same name under the canonical workspace root `base`. `None` otherwise:
/// a marker naming anything else (a `..` path, a directory elsewhere, a
/// symlink leading out) never gets it removed.
async fn owned_workspace(
    link: &Link,
    workspace_root: &Path,
    base: Option<&Path>,
    marker: &OwnerMarker,
) -> RunnerResult<Option<PathBuf>> {
    let expected = workspace_root.join(&marker.session_id);
    let Some(base) = base else {
        return Ok(None);
    };
    if runner_api::normalize_lexically(&marker.workspace) != expected {
        tracing::warn!(workspace = %marker.workspace.display(), session = %marker.session_id, "sweep_orphans: a marker names a workspace this library did not make; leaving it");
        return Ok(None);
    }
    let is_dir = files::lstat(link, &expected)
        .await?
        .and_then(|meta| meta.file_type())
        .is_some_and(|kind| kind.is_dir());
    if !is_dir {
        return Ok(None);
    }
    let canonical = base.join(&marker.session_id);
    let resolved = files::canonicalize(link, &expected).await.ok();
    Ok((resolved.as_ref() == Some(&canonical)).then_some(canonical))
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
    link: &Link,
    config: &SshConfig,
    report: &mut RunnerSweepReport,
) -> RunnerResult<()> {
    let label = config.destination_label();
    let state_dir = remote_dir(link, &config.state_dir);
    let workspace_root = remote_dir(link, &config.workspace_root);
    if let Ok(entries) = files::list_dir(link, &state_dir).await {
        let state_base = files::canonicalize(link, &state_dir).await?;
        let workspace_base = files::canonicalize(link, &workspace_root).await.ok();
        for entry in entries {
            if entry.kind != RunnerFileKind::Directory || !is_plain_id(&entry.name) {
                continue;
            }
            let Some(marker) = read_marker(link, &entry.path.join(MARKER)).await? else {
                continue;
            };
            if marker.session_id != entry.name || !marker.is_orphan(config.orphan_grace_s) {
                continue;
            }
            let session_dir = state_base.join(&entry.name);
            let workspace =
                owned_workspace(link, &workspace_root, workspace_base.as_deref(), &marker).await?;
            let script = teardown_script(
                "sweep_orphans",
                &marker.session_id,
                &session_dir,
                workspace.as_deref(),
            )?;
            run_checked(link, "sweep_orphans", &script, None).await?;
            for path in std::iter::once(&session_dir).chain(&workspace) {
                report.removed.push(format!("{label}:{}", path.display()));
            }
        }
    }
    let snapshot_dir = remote_dir(link, &config.snapshot_dir);
    if let Ok(entries) = files::list_dir(link, &snapshot_dir).await {
        for entry in entries.iter().filter(|e| e.kind == RunnerFileKind::File) {
            let Some(stem) = entry.name.strip_suffix(".owner").filter(|s| is_plain_id(s)) else {
                continue;
            };
            let Some(marker) = read_marker(link, &entry.path).await? else {
                continue;
            };
            let archive = snapshot_dir.join(format!("{stem}.tar"));
            let partial = snapshot_dir.join(format!("{stem}.tar.tmp"));
            let complete = entries.iter().any(|e| e.path == archive);
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
                    || files::lstat(link, &state_dir.join(&marker.session_id))
                        .await?
                        .is_none();
                if session_gone {
                    remove_all(link, &[&archive, &entry.path]).await?;
                    report
                        .removed
                        .push(format!("{label}:{}", archive.display()));
                }
                continue;
            }
            // A snapshot that never completed: its leftovers go once its
            // owner is gone.
            if !marker.is_orphan(config.orphan_grace_s) {
                continue;
            }
            remove_all(link, &[&partial, &entry.path]).await?;
            report
                .removed
                .push(format!("{label}:{}", partial.display()));
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
