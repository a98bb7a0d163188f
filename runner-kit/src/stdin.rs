//! The stdin pipe of a running command, shared by every provider.
//!
//! A provider hands the child's stdin writer (a local pipe, an ssh channel, a
//! Docker exec's attached stream) to [`StdinPipe::start`] together with the
//! request's [`stdin`](runner_api::RunnerCommandRequest::stdin) bytes and
//! [`keep_stdin_open`](runner_api::RunnerCommandRequest::keep_stdin_open), and
//! forwards [`ProcessControl::write_stdin`](crate::ProcessControl::write_stdin)
//! to [`StdinPipe::write`].

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use runner_api::{RunnerError, RunnerResult};

/// One `write` waiting for the writer task.
struct Write {
    /// Bytes to write (may be empty).
    bytes: Vec<u8>,
    /// Close the pipe after the bytes.
    close: bool,
    /// Where the writer task reports the outcome.
    done: oneshot::Sender<io::Result<()>>,
}

/// The stdin of one running command.
///
/// # Behavior
///
/// - The request's initial bytes are written first, by a writer task that
///   owns the pipe.
/// - Without `keep_open` the pipe is closed (EOF) right after them.
/// - With `keep_open`, [`write`](Self::write) calls queue behind the initial
///   bytes and are written in the order they were made; `close = true` closes
///   the pipe after its bytes.
/// - Once the pipe is closed (by `close`, because `keep_open` was not set, by a
///   failed write, or by [`release`](Self::release)), every `write` fails with
///   `InvalidRequest`.
/// - A command that exited or closed its stdin turns a write into an error,
///   never a panic; the initial bytes are dropped quietly in that case, as a
///   program may exit without reading its input.
///
/// Cheap to clone: the clones share one pipe. When the last clone is dropped
/// the pipe is closed after the bytes already queued.
#[derive(Clone)]
pub struct StdinPipe {
    /// Requests for the writer task; closed when there is no writer task.
    writes: mpsc::UnboundedSender<Write>,
    /// The writer task, when the command has a stdin pipe.
    writer: Option<AbortHandle>,
}

impl std::fmt::Debug for StdinPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinPipe")
            .field("open", &!self.writes.is_closed())
            .finish()
    }
}

impl StdinPipe {
    /// Starts the writer task for `pipe`, the command's stdin writer (`None`
    /// when the command has no stdin pipe: every `write` then fails with
    /// `InvalidRequest`), writing `initial` first and closing the pipe after it
    /// unless `keep_open` is set.
    ///
    /// Must be called within a Tokio runtime.
    pub fn start<W>(pipe: Option<W>, initial: Option<Vec<u8>>, keep_open: bool) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (writes, requests) = mpsc::unbounded_channel();
        let writer = pipe.map(|pipe| {
            tokio::spawn(run_writer(pipe, initial, keep_open, requests)).abort_handle()
        });
        Self { writes, writer }
    }

    /// Writes `bytes` to the command's stdin after everything queued before,
    /// then closes the pipe when `close` is set. Returns once the bytes were
    /// written (and the pipe closed).
    ///
    /// Errors: `InvalidRequest` naming `command_id` when the pipe is closed or
    /// was never kept open, or when the command closed its stdin or exited
    /// (the pipe is closed from then on); other I/O failures map through
    /// [`RunnerError::from_io`] and also close the pipe.
    pub async fn write(&self, command_id: &str, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        let (done, outcome) = oneshot::channel();
        let write = Write { bytes, close, done };
        if self.writes.send(write).is_err() {
            return Err(closed(command_id));
        }
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_error(command_id, e)),
            // The writer task ended before taking this write: the pipe closed.
            Err(_) => Err(closed(command_id)),
        }
    }

    /// Drops the pipe without writing anything more: for when the command has
    /// exited. Writes still queued or in progress fail with `InvalidRequest`.
    pub fn release(&self) {
        if let Some(writer) = &self.writer {
            writer.abort();
        }
    }
}

/// The error for a write to a pipe that is closed.
fn closed(command_id: &str) -> RunnerError {
    RunnerError::invalid_request(format!(
        "stdin of command {command_id:?} is closed (or was not kept open with keep_stdin_open)"
    ))
}

/// Maps a failed write: a peer that went away means the command closed its
/// stdin or exited.
fn write_error(command_id: &str, error: io::Error) -> RunnerError {
    use io::ErrorKind as Io;
    match error.kind() {
        Io::BrokenPipe
        | Io::ConnectionReset
        | Io::ConnectionAborted
        | Io::NotConnected
        | Io::WriteZero
        | Io::UnexpectedEof => RunnerError::invalid_request(format!(
            "command {command_id:?} closed its stdin or exited: {error}"
        ))
        .with_source(error),
        _ => RunnerError::from_io("writing stdin of command", format!("{command_id:?}"), error),
    }
}

/// Writes all of `bytes` and flushes.
async fn put<W: AsyncWrite + Unpin>(pipe: &mut W, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    pipe.write_all(bytes).await?;
    pipe.flush().await
}

/// Owns the pipe: writes the initial bytes, then the queued writes, and closes
/// the pipe when told to, when a write fails, or when every [`StdinPipe`] clone
/// is gone.
async fn run_writer<W>(
    mut pipe: W,
    initial: Option<Vec<u8>>,
    keep_open: bool,
    mut requests: mpsc::UnboundedReceiver<Write>,
) where
    W: AsyncWrite + Unpin,
{
    if let Some(bytes) = initial
        && let Err(e) = put(&mut pipe, &bytes).await
    {
        if e.kind() != io::ErrorKind::BrokenPipe {
            tracing::debug!(error = %e, "writing the initial stdin bytes failed");
        }
        let _ = pipe.shutdown().await;
        return;
    }
    if keep_open {
        while let Some(write) = requests.recv().await {
            let written = put(&mut pipe, &write.bytes).await;
            if written.is_ok() && !write.close {
                let _ = write.done.send(Ok(()));
                continue;
            }
            // Closing, or the pipe broke: no write after this one.
            let _ = pipe.shutdown().await;
            drop(pipe);
            let _ = write.done.send(written);
            return;
        }
    }
    let _ = pipe.shutdown().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, duplex};

    use super::*;
    use runner_api::RunnerErrorKind;

    async fn read_all(mut reader: tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.expect("read stdin");
        got
    }

    #[tokio::test]
    async fn initial_bytes_then_eof() {
        let (pipe, reader) = duplex(16);
        let stdin = StdinPipe::start(
            Some(pipe),
            Some(b"hello, larger than the buffer".to_vec()),
            false,
        );
        assert_eq!(read_all(reader).await, b"hello, larger than the buffer");
        let err = stdin
            .write("c1", b"late".to_vec(), false)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("\"c1\""), "{err}");
    }

    #[tokio::test]
    async fn kept_open_writes_queue_behind_initial_bytes_until_close() {
        let (pipe, reader) = duplex(4);
        let stdin = StdinPipe::start(Some(pipe), Some(b"first\n".to_vec()), true);
        let reading = tokio::spawn(read_all(reader));
        stdin
            .write("c2", b"second\n".to_vec(), false)
            .await
            .expect("write");
        stdin
            .write("c2", Vec::new(), false)
            .await
            .expect("empty write");
        stdin
            .clone()
            .write("c2", b"third\0binary\n".to_vec(), true)
            .await
            .expect("write and close");
        assert_eq!(
            reading.await.expect("reader task"),
            b"first\nsecond\nthird\0binary\n"
        );
        let err = stdin.write("c2", b"x".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("\"c2\""), "{err}");
        let err = stdin.write("c2", Vec::new(), true).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    }

    #[tokio::test]
    async fn no_pipe_refuses_writes() {
        let stdin = StdinPipe::start(None::<tokio::io::DuplexStream>, None, true);
        let err = stdin.write("c3", b"x".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("\"c3\""), "{err}");
    }

    #[tokio::test]
    async fn write_after_the_reader_went_away_is_an_error() {
        let (pipe, reader) = duplex(64);
        let stdin = StdinPipe::start(Some(pipe), None, true);
        drop(reader);
        let err = stdin.write("c4", b"x".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("\"c4\""), "{err}");
        // The pipe is closed from then on.
        let err = stdin.write("c4", b"y".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    }

    #[tokio::test]
    async fn initial_bytes_to_a_gone_reader_close_quietly() {
        let (pipe, reader) = duplex(64);
        drop(reader);
        let stdin = StdinPipe::start(Some(pipe), Some(b"unread".to_vec()), true);
        let err = stdin.write("c5", b"x".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    }

    #[tokio::test]
    async fn release_drops_the_pipe() {
        let (pipe, reader) = duplex(64);
        let stdin = StdinPipe::start(Some(pipe), Some(b"kept".to_vec()), true);
        let reading = tokio::spawn(read_all(reader));
        stdin
            .write("c6", b" open".to_vec(), false)
            .await
            .expect("write");
        stdin.release();
        // The reader sees EOF once the writer task dropped the pipe.
        assert_eq!(reading.await.expect("reader task"), b"kept open");
        let err = stdin.write("c6", b"x".to_vec(), false).await.unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    }
}
