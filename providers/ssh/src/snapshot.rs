//! Snapshots: the agent's unix-local snapshot archive in the destination's
//! `snapshot_dir` on the host, with an owner marker next to it; a resume is
//! a new agent started with `--resume` of that snapshot.

use std::path::{Path, PathBuf};

use runner_api::{RunnerError, RunnerResult, RunnerSessionState, RunnerSnapshotRef};
use serde::{Deserialize, Serialize};

use crate::PROVIDER_ID;
use crate::config::SshConfig;
use crate::connection::Link;
use crate::host;
use crate::ownership::{self, OwnerMarker};

/// The provider id of the sessions the agent serves.
const AGENT_PROVIDER_ID: &str = "unix-local";

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

/// The ssh reference of the agent's snapshot `taken` (an archive in
/// `snapshot_dir`), after writing its owner marker `<id>.owner` next to it.
///
/// Errors: `Provider` when the agent's reference is not a unix-local
/// snapshot with a plain id.
pub(crate) async fn adopt(
    link: &Link,
    config: &SshConfig,
    snapshot_dir: &Path,
    marker: &OwnerMarker,
    taken: RunnerSnapshotRef,
) -> RunnerResult<RunnerSnapshotRef> {
    let id = taken.snapshot_id;
    if taken.provider_id != AGENT_PROVIDER_ID || !ownership::is_plain_id(&id) {
        return Err(RunnerError::provider(format!(
            "snapshot: the agent returned snapshot {id:?} of provider {:?}",
            taken.provider_id
        )));
    }
    ownership::write_marker(link, &snapshot_dir.join(format!("{id}.owner")), marker).await?;
    let meta = SnapshotMeta {
        destination: config.destination_label(),
        archive: snapshot_dir.join(format!("{id}.tar")),
    };
    Ok(RunnerSnapshotRef {
        provider_id: PROVIDER_ID.to_string(),
        snapshot_id: id,
        metadata: serde_json::to_value(meta).unwrap_or_default(),
    })
}

/// The archive an ssh snapshot reference names in `snapshot_dir`.
///
/// Errors: `InvalidRequest` for another provider's reference or an id this
/// provider does not make; `NotFound` when the archive does not exist.
pub(crate) async fn archive_of(
    link: &Link,
    snapshot_dir: &Path,
    snapshot: &RunnerSnapshotRef,
) -> RunnerResult<PathBuf> {
    if snapshot.provider_id != PROVIDER_ID || !ownership::is_plain_id(&snapshot.snapshot_id) {
        return Err(RunnerError::invalid_request(format!(
            "resume_session: snapshot {:?} of provider {:?} is not an ssh snapshot",
            snapshot.snapshot_id, snapshot.provider_id
        )));
    }
    let archive = snapshot_dir.join(format!("{}.tar", snapshot.snapshot_id));
    match host::lstat(link, &archive).await? {
        Some(meta) if meta.file_type().is_some_and(|t| t.is_file()) => Ok(archive),
        _ => Err(RunnerError::not_found(format!(
            "resume_session: snapshot archive {} does not exist",
            archive.display()
        ))),
    }
}

/// The unix-local state the agent resumes to fork `snapshot_id`: the agent
/// finds the archive by id in the `snapshot_dir` of its config.
pub(crate) fn agent_resume(destination_id: &str, snapshot_id: &str) -> RunnerSessionState {
    RunnerSessionState {
        provider_id: AGENT_PROVIDER_ID.to_string(),
        session_id: String::new(),
        destination_id: destination_id.to_string(),
        snapshot: Some(RunnerSnapshotRef {
            provider_id: AGENT_PROVIDER_ID.to_string(),
            snapshot_id: snapshot_id.to_string(),
            metadata: serde_json::Value::Null,
        }),
        metadata: serde_json::Value::Null,
    }
}
