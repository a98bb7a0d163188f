//! `write_file`: whole-file writes, and chunked writes through a staging file
//! renamed into place by the last chunk.

use runner_api::{RemoteRunnerSession, RunnerErrorKind, RunnerFileKind};
use runner_api::{RunnerError, RunnerFileWriteRequest, RunnerResult};

use crate::input::WriteFileInput;
use crate::output::WriteResult;

/// The mode a new file gets when the request names none.
const NEW_FILE_MODE: u32 = 0o644;

/// Writes `input` in `ws`: the whole file, or one chunk of a chunked write.
///
/// A chunk goes to the staging file; the first one (offset 0) replaces it
/// whole with the mode the finished file is to have (the requested one, else
/// that of the file at the path, else 0o644), since the rename keeps the
/// staging file's mode. The chunk with `complete` checks that the staging
/// file ends where the chunk does and renames it over the path.
///
/// Errors: those of [`WriteFileInput::to_request`]; `InvalidRequest` when
/// the staging file holds bytes past the end of the last chunk; the runner's
/// errors for the writes, `stat` and `rename`.
pub(crate) async fn write_file(
    ws: &dyn RemoteRunnerSession,
    input: &WriteFileInput,
) -> RunnerResult<WriteResult> {
    let mut request = input.to_request()?;
    let bytes_written = request.contents.len() as u64;
    let Some(offset) = input.offset else {
        ws.write_file(request).await?;
        return Ok(WriteResult {
            path: input.path.clone(),
            bytes_written,
            next_offset: None,
            size: None,
        });
    };
    let path = input.path.display();
    let end = offset.checked_add(bytes_written).ok_or_else(|| {
        RunnerError::invalid_request(format!(
            "write_file {path}: a chunk at offset {offset} would end past the largest file size"
        ))
    })?;
    if offset == 0 && request.mode.is_none() {
        request.mode = Some(mode_to_keep(ws, input).await?);
    }
    let staging = request.path.clone();
    let chunk_context =
        |e: RunnerError| e.context(format!("write_file {path}: chunk at offset {offset}"));
    ws.write_file(request).await.map_err(chunk_context)?;
    if !input.complete {
        return Ok(WriteResult {
            path: input.path.clone(),
            bytes_written,
            next_offset: Some(end),
            size: None,
        });
    }
    let staged = ws.stat(&staging).await.map_err(chunk_context)?.size;
    if staged != end {
        return Err(RunnerError::invalid_request(format!(
            "write_file {path}: the staged upload {} holds {staged} bytes but the last chunk \
             ends at {end}; send the chunks again from offset 0",
            staging.display()
        )));
    }
    may_replace(ws, input).await?;
    ws.rename(&staging, &input.path)
        .await
        .map_err(|e| e.context(format!("write_file {path}: moving the upload into place")))?;
    Ok(WriteResult {
        path: input.path.clone(),
        bytes_written,
        next_offset: None,
        size: Some(end),
    })
}

/// Asks the runner whether the session user may write the file the upload
/// replaces: the rename needs only the directory's permission, so an empty
/// write in place (offset 0, nothing truncated) stands for it. Nothing to
/// replace is fine.
///
/// Errors: the runner's errors for that write (`PermissionDenied` for a file
/// the session user may not write).
async fn may_replace(ws: &dyn RemoteRunnerSession, input: &WriteFileInput) -> RunnerResult<()> {
    match ws.stat(&input.path).await {
        Ok(stat) if stat.kind == RunnerFileKind::File => {
            let mut probe = RunnerFileWriteRequest::new(&input.path, Vec::new());
            probe.offset = Some(0);
            ws.write_file(probe).await.map_err(|e| {
                e.context(format!(
                    "write_file {}: replacing the file with the upload",
                    input.path.display()
                ))
            })
        }
        _ => Ok(()),
    }
}

/// The mode the file at `input.path` has (permission bits), or 0o644 when
/// there is no regular file there.
///
/// Errors: the runner's `stat` errors other than `NotFound`.
async fn mode_to_keep(ws: &dyn RemoteRunnerSession, input: &WriteFileInput) -> RunnerResult<u32> {
    match ws.stat(&input.path).await {
        Ok(stat) if stat.kind == RunnerFileKind::File => Ok(stat.mode & 0o7777),
        Ok(_) => Ok(NEW_FILE_MODE),
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(NEW_FILE_MODE),
        Err(e) => Err(e.context(format!("write_file {}", input.path.display()))),
    }
}
