//! Large files through docker's archive API, staged by the agent.
//!
//! The exec stream carries about 0.4x of what the archive API moves (the
//! daemon multiplexes exec output in small frames), so `write_file` and
//! `read_file` of [`BULK_BYTES`] or more go another way, with the agent still
//! the one that checks paths and owns files:
//!
//! - write: the agent makes a fresh directory in its private staging root
//!   (root's, 0700: only an agent running as root stages, see
//!   [`crate::delivery::entrypoint`]); the file goes there as a one-entry tar
//!   the provider builds (mode 0600, nothing else in it); the agent then
//!   writes it into the workspace through `write_file` (every check, the
//!   atomic replace, the session user's permissions) and removes the
//!   directory.
//! - read: the agent reads the file through `read_file` (confined, bounded)
//!   into a staged file, the provider fetches that one file's archive and
//!   the agent drops it. A read under [`BULK_BYTES`] comes back inline in
//!   the same call.
//!
//! The daemon only ever touches a directory the agent made, named by a
//! random id, where nothing of the session can reach.

use std::io::Read;

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::TryStreamExt;
use runner_agent::{AgentSession, Download, STAGED_FILE, Staged};
use runner_api::{
    RemoteRunnerSession, RunnerError, RunnerFileReadRequest, RunnerFileReadResult,
    RunnerFileWriteRequest, RunnerResult,
};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::Daemon;

/// Files of this many bytes or more move through the archive API: 8 MiB.
pub(crate) const BULK_BYTES: usize = 8 * 1024 * 1024;

/// A tar block.
const BLOCK: usize = 512;

/// The staged directory of `staged` (where its file is put or fetched).
fn staged_dir(staged: &Staged) -> String {
    staged
        .path
        .parent()
        .map(|dir| dir.display().to_string())
        .unwrap_or_default()
}

/// `write_file` of `request` (its contents at least [`BULK_BYTES`]): staged,
/// put through the archive API, committed by the agent.
pub(crate) async fn write(
    daemon: &Daemon,
    container: &str,
    agent: &AgentSession,
    mut request: RunnerFileWriteRequest,
) -> RunnerResult<()> {
    const OP: &str = "write_file";
    let what = request.path.display().to_string();
    let contents = Bytes::from(std::mem::take(&mut request.contents));
    let staged = agent.stage_upload().await?;
    let mut header = tar::Header::new_gnu();
    header
        .set_path(STAGED_FILE)
        .map_err(|e| RunnerError::from_io(OP, &what, e))?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(contents.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    let padding = (BLOCK - contents.len() % BLOCK) % BLOCK;
    // The entry, its padding, and the two zero blocks that end an archive.
    let parts = [
        Bytes::copy_from_slice(header.as_bytes()),
        contents,
        Bytes::from(vec![0u8; padding + 2 * BLOCK]),
    ];
    let body = futures_util::stream::iter(parts);
    let options = UploadToContainerOptionsBuilder::new()
        .path(&staged_dir(&staged))
        .no_overwrite_dir_non_dir("true")
        .build();
    let put = daemon
        .docker
        .upload_to_container(container, Some(options), bollard::body_stream(body))
        .await;
    if let Err(e) = put {
        let _ = agent.drop_stage(&staged.stage).await;
        return Err(daemon.error(
            &format!("{OP} {what}: putting the staged file into"),
            container,
            e,
        ));
    }
    agent.commit_upload(request, &staged.stage).await
}

/// `read_file` of `request`: inline when it is under [`BULK_BYTES`], else
/// staged by the agent and fetched through the archive API.
pub(crate) async fn read(
    daemon: &Daemon,
    container: &str,
    agent: &AgentSession,
    request: RunnerFileReadRequest,
) -> RunnerResult<RunnerFileReadResult> {
    let path = request.path.clone();
    let whole = request.offset.is_none() && request.limit.is_none();
    let staged = match agent.stage_download(request, BULK_BYTES as u64).await? {
        Download::Inline(read) => return Ok(read),
        Download::Staged(staged) => staged,
    };
    let fetched = fetch(daemon, container, &staged, &path.display().to_string()).await;
    let _ = agent.drop_stage(&staged.stage).await;
    let contents = fetched?;
    // A window's file may be larger than the bytes staged.
    let size = if whole {
        staged.size
    } else {
        agent.stat(&path).await?.size
    };
    Ok(RunnerFileReadResult {
        path,
        contents,
        size,
    })
}

/// The staged file's bytes, from its one-entry archive.
async fn fetch(
    daemon: &Daemon,
    container: &str,
    staged: &Staged,
    what: &str,
) -> RunnerResult<Vec<u8>> {
    const OP: &str = "read_file";
    // The size comes from inside the sandbox: it sizes the buffer below, so
    // it is never trusted past what one read returns.
    if staged.size > runner_api::MAX_READ_BYTES {
        return Err(RunnerError::provider(format!(
            "{OP} {what}: the staged file claims {} bytes, over the {} one read returns",
            staged.size,
            runner_api::MAX_READ_BYTES
        )));
    }
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(&staged.path.display().to_string())
        .build();
    let archive = daemon
        .docker
        .download_from_container(container, Some(options))
        .map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(archive));
    let expected = staged.size;
    let shown = what.to_string();
    let read = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries()?;
        let mut entry = entries
            .next()
            .ok_or_else(|| std::io::Error::other("the staged file's archive is empty"))??;
        if !entry.header().entry_type().is_file() || entry.size() != expected {
            return Err(std::io::Error::other(format!(
                "the staged file's archive holds {} bytes of type {:?}, not {expected}",
                entry.size(),
                entry.header().entry_type()
            )));
        }
        let mut contents = Vec::with_capacity(expected as usize);
        entry.read_to_end(&mut contents)?;
        Ok(contents)
    })
    .await
    .map_err(|e| RunnerError::provider(format!("{OP} {shown}: fetching the staged file: {e}")))?;
    read.map_err(|e| {
        RunnerError::from_io(
            &format!("{OP}: fetching the staged file from container {container}"),
            what,
            e,
        )
    })
}
