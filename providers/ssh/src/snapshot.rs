//! Snapshots: a tar of the workspace in the remote snapshot directory, and
//! restoring one into a fresh workspace.

use std::path::{Path, PathBuf};

use runner_api::{RunnerError, RunnerResult, RunnerSnapshotRef};
use serde::{Deserialize, Serialize};

use crate::PROVIDER_ID;
use crate::config::SshConfig;
use crate::connection::Link;
use crate::ownership::{self, OwnerMarker};
use crate::script::{quote_path, run_checked, run_script};
use crate::session::remote_dir;

/// What a snapshot reference's metadata carries: no config (a resume takes
/// every setting from the destination, and finds the archive by id in its
/// `snapshot_dir`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotMeta {
    /// The destination as `user@host:port`.
    pub(crate) destination: String,
    /// Absolute remote path of the archive (informative).
    pub(crate) archive: PathBuf,
}

impl SnapshotMeta {
    /// Refuses a snapshot of another destination than `config`'s
    /// (`PermissionDenied` naming both).
    pub(crate) fn check_destination(
        &self,
        snapshot_id: &str,
        config: &SshConfig,
    ) -> RunnerResult<()> {
        crate::session::check_destination_label(
            "resume_session",
            snapshot_id,
            &self.destination,
            config,
        )
    }
}

/// Tars the workspace into `<snapshot_dir>/<id>.tar` (written to a temporary
/// name and renamed), with an owner marker next to it.
pub(crate) async fn take(
    link: &Link,
    config: &SshConfig,
    session_id: &str,
    workspace: &Path,
) -> RunnerResult<RunnerSnapshotRef> {
    let dir = remote_dir(link, &config.snapshot_dir);
    crate::files::make_dirs(link, &dir).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let archive = dir.join(format!("{id}.tar"));
    let marker = OwnerMarker::for_session(session_id, workspace);
    ownership::write_marker(link, &dir.join(format!("{id}.owner")), &marker).await?;
    let script = format!(
        "a={archive}; tar -c -f \"$a.tmp\" -C {ws} . && mv \"$a.tmp\" \"$a\" || {{ rm -f \"$a.tmp\"; exit 1; }}",
        archive = quote_path("snapshot", &archive)?,
        ws = quote_path("snapshot", workspace)?,
    );
    run_checked(link, "snapshot", &script, None).await?;
    let meta = SnapshotMeta {
        destination: config.destination_label(),
        archive,
    };
    Ok(RunnerSnapshotRef {
        provider_id: PROVIDER_ID.to_string(),
        snapshot_id: id,
        metadata: serde_json::to_value(meta).unwrap_or_default(),
    })
}

/// The archive a snapshot reference names. Errors: `InvalidRequest`.
pub(crate) fn archive_of(
    link: &Link,
    config: &SshConfig,
    snapshot: &RunnerSnapshotRef,
) -> RunnerResult<PathBuf> {
    if snapshot.provider_id != PROVIDER_ID || !ownership::is_plain_id(&snapshot.snapshot_id) {
        return Err(RunnerError::invalid_request(format!(
            "resume_session: snapshot {:?} of provider {:?} is not an ssh snapshot",
            snapshot.snapshot_id, snapshot.provider_id
        )));
    }
    Ok(remote_dir(link, &config.snapshot_dir).join(format!("{}.tar", snapshot.snapshot_id)))
}

/// Unpacks the archive into `workspace` (which must exist).
/// Errors: `NotFound` when the archive is gone.
pub(crate) async fn restore(link: &Link, archive: &Path, workspace: &Path) -> RunnerResult<()> {
    let script = format!(
        "[ -f {a} ] || exit 44; tar -x -f {a} -C {ws} --no-same-owner",
        a = quote_path("resume_session", archive)?,
        ws = quote_path("resume_session", workspace)?,
    );
    let out = run_script(link, "resume_session", &script, None).await?;
    match out.code {
        Some(0) => Ok(()),
        Some(44) => Err(RunnerError::not_found(format!(
            "resume_session: snapshot archive {} does not exist",
            archive.display()
        ))),
        _ => Err(RunnerError::provider(format!(
            "resume_session: restoring {} failed: {}",
            archive.display(),
            out.stderr_text()
        ))),
    }
}
