//! Remote shell scripts: quoting, and running a short script over the master.

use std::path::Path;

use bytes::Bytes;
use futures_util::{StreamExt, future, stream};
use openssh::{Session, Stdio};
use runner_api::{RunnerByteStream, RunnerError, RunnerErrorKind, RunnerResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::connection::Link;
use crate::error::transport_error;

/// Quotes `text` for a POSIX shell (single quotes).
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes a remote path; non-UTF-8 bytes are refused.
pub(crate) fn quote_path(operation: &str, path: &Path) -> RunnerResult<String> {
    let text = path.to_str().ok_or_else(|| {
        RunnerError::invalid_request(format!(
            "{operation} {}: the ssh provider needs UTF-8 paths",
            path.display()
        ))
    })?;
    Ok(quote(text))
}

/// What a short script printed and how it exited.
pub(crate) struct ScriptOutput {
    /// Exit code (`None` when the remote shell did not report one).
    pub(crate) code: Option<i32>,
    /// Everything on stdout.
    pub(crate) stdout: Vec<u8>,
    /// Everything on stderr.
    pub(crate) stderr: Vec<u8>,
}

impl ScriptOutput {
    /// Stderr as text, for messages.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Runs `script` with the remote user's shell, feeding `stdin`, and collects
/// its output. Errors: `Unavailable` when the master cannot run it.
pub(crate) async fn run_script(
    link: &Link,
    operation: &str,
    script: &str,
    stdin: Option<&[u8]>,
) -> RunnerResult<ScriptOutput> {
    let feed =
        stdin.map(|bytes| Feed::new(runner_api::bytes_stream(Bytes::copy_from_slice(bytes))));
    run_script_fed(link, operation, script, feed.as_ref()).await
}

/// The stdin of a script, taken when the script has started: a script run
/// again because its first start failed (a lost master, see
/// [`Connection::with_link`](crate::connection::Connection::with_link))
/// still finds it.
pub(crate) struct Feed(std::sync::Mutex<Option<RunnerByteStream>>);

impl Feed {
    /// A feed of `stream`.
    pub(crate) fn new(stream: RunnerByteStream) -> Self {
        Self(std::sync::Mutex::new(Some(stream)))
    }

    fn take(&self) -> Option<RunnerByteStream> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// [`run_script`] with stdin fed chunk by chunk from `stdin` as the remote
/// side reads it (closed at the stream's end), so a large input is never
/// held whole.
///
/// Errors: `Unavailable` when the master cannot run it (the feed is then
/// left untouched); `Provider` when the feed was taken by an earlier run
/// (its input went out in part and is not sent again); the stream's own
/// error, once the script has ended (it saw its stdin end early).
pub(crate) async fn run_script_fed(
    link: &Link,
    operation: &str,
    script: &str,
    stdin: Option<&Feed>,
) -> RunnerResult<ScriptOutput> {
    let mut command = Session::to_raw_command(link.session.clone(), script);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .await
        .map_err(|e| transport_error(operation, e))?;
    let writer = match (child.stdin().take(), stdin) {
        (Some(mut pipe), Some(feed)) => {
            let Some(mut input) = feed.take() else {
                return Err(RunnerError::provider(format!(
                    "{operation}: the input went out in part on a connection that was lost; \
                     it is not sent again"
                )));
            };
            Some(tokio::spawn(async move {
                while let Some(chunk) = runner_api::next_chunk(&mut input).await {
                    // A script that stopped reading ends the feed; its exit says why.
                    if pipe.write_all(&chunk?).await.is_err() {
                        break;
                    }
                }
                let _ = pipe.shutdown().await;
                Ok::<_, RunnerError>(())
            }))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| transport_error(operation, e))?;
    if let Some(writer) = writer {
        writer.await.map_err(|e| {
            RunnerError::provider(format!(
                "{operation}: feeding the remote command failed: {e}"
            ))
        })??;
    }
    Ok(ScriptOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// Most bytes of a streamed script's stderr kept for its error message.
const STDERR_KEPT: usize = 8 * 1024;

/// Runs `script` and streams its stdout as the caller pulls it (chunks of
/// at most 256 KiB; the channel's flow control holds the remote side back
/// meanwhile). Stderr is drained on the side, its first [`STDERR_KEPT`]
/// bytes kept. After the last chunk, an exit other than 0 ends the stream
/// with `Provider` "{operation} {what}: {exit}: {stderr}". Dropping the
/// stream closes the channel.
///
/// Errors: `Unavailable` when the master cannot run it (before the first
/// chunk), or when reading its output fails (as a stream item).
pub(crate) async fn script_stdout(
    link: &Link,
    operation: &str,
    what: &str,
    script: &str,
) -> RunnerResult<RunnerByteStream> {
    let mut command = Session::to_raw_command(link.session.clone(), script);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .await
        .map_err(|e| transport_error(operation, e))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout().take(), child.stderr().take()) else {
        return Err(RunnerError::provider(format!(
            "{operation} {what}: the remote command has no output pipes"
        )));
    };
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = STDERR_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    });
    let label = format!("{operation} {what}");
    let read_failed = label.clone();
    let bytes = ReaderStream::with_capacity(stdout, 256 * 1024).map(move |chunk| {
        chunk.map_err(|e| {
            RunnerError::new(
                RunnerErrorKind::Unavailable,
                format!("{read_failed}: reading the remote output failed: {e}"),
            )
            .with_source(e)
        })
    });
    // Runs once stdout has ended: the exit status decides.
    let exit = stream::once(async move {
        let stderr = errors.await.unwrap_or_default();
        let status = match child.wait().await {
            Ok(status) => status,
            Err(e) => return Some(Err(transport_error(&label, e))),
        };
        (status.code() != Some(0)).then(|| {
            Err(RunnerError::provider(format!(
                "{label}: the remote command failed (exit {:?}): {}",
                status.code(),
                String::from_utf8_lossy(&stderr).trim()
            )))
        })
    })
    .filter_map(future::ready);
    Ok(Box::pin(bytes.chain(exit)))
}

/// Runs `script` and requires exit code 0. Errors: `Provider` with its stderr.
pub(crate) async fn run_checked(
    link: &Link,
    operation: &str,
    script: &str,
    stdin: Option<&[u8]>,
) -> RunnerResult<ScriptOutput> {
    let out = run_script(link, operation, script, stdin).await?;
    if out.code != Some(0) {
        return Err(RunnerError::provider(format!(
            "{operation}: remote command failed (exit {:?}): {}",
            out.code,
            out.stderr_text()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_single_quotes() {
        assert_eq!(quote("a'b"), "'a'\\''b'");
        assert_eq!(quote(""), "''");
    }
}
