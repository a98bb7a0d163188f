//! Snapshots: a tar of the workspace written atomically to
//! `<snapshot_dir>/<snapshot_id>.tar`, and restoring one into a fresh directory.

use std::fs;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use runner_api::{RunnerError, RunnerResult, RunnerSnapshotRef};

use crate::PROVIDER_ID;
use crate::archive::{self, Protect, SymlinkPolicy, unprotected};
use crate::files::Workspace;
use crate::private::{self, FILE_MODE};

/// Writes a snapshot of `ws` (mount points left out, symlinks stored as
/// symlinks) to `<snapshot_dir>/<id>.tar` (mode 0600, in a private
/// `snapshot_dir`) through a temp file and a rename. Blocking.
///
/// Errors: `PermissionDenied` when `snapshot_dir` is not private, I/O errors
/// by kind.
pub(crate) fn take(
    ws: &Workspace,
    snapshot_dir: &Path,
    session_id: &str,
) -> RunnerResult<RunnerSnapshotRef> {
    let op = "snapshot";
    private::ensure(op, snapshot_dir)?;
    let snapshot_id = format!("snap-{}", uuid::Uuid::new_v4().simple());
    let path = snapshot_dir.join(format!("{snapshot_id}.tar"));
    let temp = snapshot_dir.join(format!(".{snapshot_id}.tar.tmp"));
    let written = (|| -> io::Result<u64> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        let skip = |rel: &Path| ws.mounts.iter().any(|m| m.rel == rel);
        archive::pack_dir(&mut builder, &ws.dir, &skip)?;
        let mut writer = builder.into_inner()?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        fs::rename(&temp, &path)?;
        Ok(size)
    })();
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(ws.io(op, &ws.root, e));
        }
    };
    tracing::info!(session_id, snapshot_id = %snapshot_id, size, "snapshot written");
    Ok(RunnerSnapshotRef {
        provider_id: PROVIDER_ID.to_string(),
        snapshot_id,
        metadata: serde_json::json!({
            "path": path.display().to_string(),
            "size": size,
            "source_session_id": session_id,
        }),
    })
}

/// The archive of `snapshot`: `<snapshot_dir>/<snapshot_id>.tar` of the
/// destination (a path in the snapshot's metadata is not trusted).
///
/// Errors: `InvalidRequest` (another provider's snapshot, a malformed id).
pub(crate) fn locate(snapshot: &RunnerSnapshotRef, snapshot_dir: &Path) -> RunnerResult<PathBuf> {
    if snapshot.provider_id != PROVIDER_ID {
        return Err(RunnerError::invalid_request(format!(
            "resume_session: snapshot {} belongs to provider {:?}, not {PROVIDER_ID}",
            snapshot.snapshot_id, snapshot.provider_id
        )));
    }
    let id = &snapshot.snapshot_id;
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\0']) {
        return Err(RunnerError::invalid_request(format!(
            "resume_session: malformed snapshot id {id:?}"
        )));
    }
    Ok(snapshot_dir.join(format!("{id}.tar")))
}

/// Unpacks the snapshot at `path` (in a private snapshot directory) into
/// `dir`. Blocking.
///
/// Errors: `NotFound` naming the snapshot, `PermissionDenied` (the snapshot
/// directory is not private), `InvalidRequest` (corrupt archive).
pub(crate) fn restore(snapshot_id: &str, path: &Path, dir: &Dir) -> RunnerResult<()> {
    if let Some(snapshot_dir) = path.parent() {
        private::check_present("resume_session", snapshot_dir)?;
    }
    let file = fs::File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            RunnerError::not_found(format!(
                "resume_session: snapshot {snapshot_id} not found ({})",
                path.display()
            ))
        } else {
            RunnerError::from_io("resume_session: opening snapshot", path.display(), e)
        }
    })?;
    archive::unpack(
        dir,
        BufReader::new(file),
        SymlinkPolicy::Verbatim,
        &Protect(&unprotected),
    )
    .map_err(|e| e.context(format!("resume_session: restoring snapshot {snapshot_id}")))
}
