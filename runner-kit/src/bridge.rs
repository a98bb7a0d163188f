//! Byte streams to and from blocking code, with bounded memory.
//!
//! A provider whose file work blocks (a directory handle, a spool file, a tar
//! walk) runs it on Tokio's blocking pool and moves bytes through these two
//! bridges:
//!
//! - [`with_body_reader`]: a caller's [`RunnerByteStream`] as a
//!   [`std::io::BufRead`] for a blocking task (a write body, an upload). An
//!   error the stream yields is what the call returns, kind and message kept,
//!   and dropping the call's future makes the reader fail, so the blocking
//!   work never mistakes an abandoned body for a finished one.
//! - [`chunk_stream`]: a [`RunnerByteStream`] fed by a blocking task through a
//!   [`ChunkWriter`] (a file read, a packed archive). The channel holds
//!   [`CHANNEL_CHUNKS`] chunks of at most [`CHUNK_BYTES`]; a dropped stream
//!   makes the writer fail, which stops the task. [`opened_chunk_stream`]
//!   opens the source on the same task first, so the call reports what is
//!   wrong with the path before any chunk.

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use runner_api::{RunnerByteStream, RunnerError, RunnerResult};
use tokio::sync::{mpsc, oneshot};

/// Most bytes one chunk of a [`chunk_stream`] holds: 256 KiB.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Chunks a [`chunk_stream`] holds in its channel before the blocking task
/// waits for the reader.
pub const CHANNEL_CHUNKS: usize = 2;

/// What the body reader sees when the caller dropped the transfer.
const DROPPED: &str = "the caller dropped the transfer";

/// The stream's own error, kept whole for the caller (the blocking side only
/// sees an I/O error).
type Failure = Arc<Mutex<Option<RunnerError>>>;

/// A caller's byte stream as an `io::Result` stream that ends with an error,
/// not with its end, when the transfer is dropped.
struct Body {
    stream: RunnerByteStream,
    dropped: oneshot::Receiver<()>,
    failed: Failure,
    done: bool,
}

impl Stream for Body {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if Pin::new(&mut self.dropped).poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(io::Error::other(DROPPED))));
        }
        match self.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                let io = io::Error::other(error.message().to_owned());
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                Poll::Ready(Some(Err(io)))
            }
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A caller's byte stream read from a blocking thread (see
/// [`with_body_reader`]). Reads block the thread until the next chunk
/// arrives; it holds one chunk at a time.
pub struct BodyReader {
    inner: tokio_util::io::SyncIoBridge<tokio_util::io::StreamReader<Body, Bytes>>,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader").finish_non_exhaustive()
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl BufRead for BodyReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl BodyReader {
    /// Writes every remaining byte of the body to `writer`, chunk by chunk as
    /// the stream delivers them (see [`copy_buffered`]), and returns how many.
    pub fn copy_to(&mut self, writer: &mut impl Write) -> io::Result<u64> {
        copy_buffered(self, writer)
    }
}

/// Writes every remaining byte of `reader` to `writer` one buffer of the
/// reader at a time (a whole stream chunk for a [`BodyReader`], the whole
/// slice for a `&[u8]`), with no copy through a small intermediate buffer,
/// and returns how many.
pub fn copy_buffered(
    reader: &mut (impl BufRead + ?Sized),
    writer: &mut (impl Write + ?Sized),
) -> io::Result<u64> {
    let mut copied = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(copied);
        }
        writer.write_all(chunk)?;
        let len = chunk.len();
        reader.consume(len);
        copied += len as u64;
    }
}

/// Runs `work` on the blocking pool with `body` as a [`BodyReader`] and
/// returns its result.
///
/// When the body yields an `Err` item, that error is returned (whatever
/// `work` made of the failed read), so the caller sees the body's kind and
/// message. When this future is dropped before `work` ends, the reader's next
/// read fails, so `work` fails (and cleans up) instead of treating the body
/// as complete.
///
/// Errors: the body's error; `work`'s error; `Provider` naming `operation`
/// when the blocking task panicked.
pub async fn with_body_reader<T, F>(
    operation: &str,
    body: RunnerByteStream,
    work: F,
) -> RunnerResult<T>
where
    T: Send + 'static,
    F: FnOnce(BodyReader) -> RunnerResult<T> + Send + 'static,
{
    let failed = Failure::default();
    // Dropped with this future, which makes the reader fail.
    let (_alive, dropped) = oneshot::channel::<()>();
    let body = Body {
        stream: body,
        dropped,
        failed: Arc::clone(&failed),
        done: false,
    };
    let reader = BodyReader {
        inner: tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body)),
    };
    let result = tokio::task::spawn_blocking(move || work(reader))
        .await
        .map_err(|e| join_error(operation, e))?;
    result.map_err(|error| {
        failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(error)
    })
}

fn join_error(operation: &str, error: tokio::task::JoinError) -> RunnerError {
    RunnerError::provider(format!("{operation}: the worker task failed: {error}"))
}

/// The writing end of a [`chunk_stream`]: buffers writes into chunks and
/// sends each full one, blocking while the channel is full. The first chunk
/// holds [`FIRST_CHUNK_BYTES`] and each next one twice the last, up to
/// [`CHUNK_BYTES`], so a small transfer allocates little and a large one
/// moves full chunks after a few. A write fails with `BrokenPipe` once the
/// stream was dropped.
#[derive(Debug)]
pub struct ChunkWriter {
    tx: mpsc::Sender<RunnerResult<Bytes>>,
    /// The chunk being filled (its whole length is the chunk's size).
    buf: Vec<u8>,
    filled: usize,
}

/// Bytes of the first chunk a [`ChunkWriter`] fills: 16 KiB.
pub const FIRST_CHUNK_BYTES: usize = 16 * 1024;

impl ChunkWriter {
    fn new(tx: mpsc::Sender<RunnerResult<Bytes>>) -> Self {
        Self {
            tx,
            buf: vec![0; FIRST_CHUNK_BYTES],
            filled: 0,
        }
    }

    /// Sends a full chunk, when there is one.
    fn send_full(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let next = (self.buf.len() * 2).min(CHUNK_BYTES);
        let mut chunk = std::mem::replace(&mut self.buf, vec![0; next]);
        chunk.truncate(self.filled);
        self.filled = 0;
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream was dropped"))
    }

    /// Reads `reader` to its end straight into the chunks (no copy through a
    /// small buffer) and returns how many bytes it read.
    pub fn copy_from(&mut self, reader: &mut impl Read) -> io::Result<u64> {
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += n;
            copied += n as u64;
            self.send_full()?;
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.buf.len() - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        self.send_full()?;
        Ok(n)
    }

    /// Sends the bytes buffered so far as a chunk of their own.
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A byte stream fed by `work` on the blocking pool through a
/// [`ChunkWriter`]. What `work` leaves buffered is sent when it returns `Ok`;
/// an `Err` is the stream's last item. Dropping the stream makes the writer's
/// next write fail with `BrokenPipe`, so `work` stops.
///
/// Must be called from within a Tokio runtime (it spawns the task at once).
/// A panic of `work` ends the stream with a `Provider` error naming
/// `operation`.
pub fn chunk_stream<F>(operation: &str, work: F) -> RunnerByteStream
where
    F: FnOnce(&mut ChunkWriter) -> RunnerResult<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let mut writer = ChunkWriter::new(tx);
    let operation = operation.to_owned();
    // Detached: the stream, not a handle, is how the caller sees the end.
    drop(tokio::task::spawn_blocking(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut writer)))
            .unwrap_or_else(|_| {
                Err(RunnerError::provider(format!(
                    "{operation}: the worker task panicked"
                )))
            })
            .and_then(|()| {
                writer.flush().map_err(|e| {
                    RunnerError::provider(format!(
                        "{operation}: sending the last chunk failed: {e}"
                    ))
                })
            });
        if let Err(error) = result {
            // The reader may be gone: then nobody waits for the error.
            let _ = writer.tx.blocking_send(Err(error));
        }
    }));
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A [`chunk_stream`] whose one blocking task first opens what it streams:
/// `open` runs on the task; its error is this call's (before any chunk), and
/// the first part of its success comes back with the stream while `feed`
/// writes the chunks from the second. One task for both halves, so a small
/// transfer costs one hand-off to the blocking pool.
///
/// Errors: `open`'s; `Provider` naming `operation` when the task ended
/// before `open` did (a panic).
pub async fn opened_chunk_stream<I, S, O, F>(
    operation: &str,
    open: O,
    feed: F,
) -> RunnerResult<(I, RunnerByteStream)>
where
    I: Send + 'static,
    S: 'static,
    O: FnOnce() -> RunnerResult<(I, S)> + Send + 'static,
    F: FnOnce(S, &mut ChunkWriter) -> RunnerResult<()> + Send + 'static,
{
    let (opened_tx, opened) = oneshot::channel();
    let stream = chunk_stream(operation, move |out| {
        let source = match open() {
            Ok((info, source)) => {
                if opened_tx.send(Ok(info)).is_err() {
                    return Ok(());
                }
                source
            }
            Err(error) => {
                // The call returns it; the stream is dropped unread.
                let _ = opened_tx.send(Err(error));
                return Ok(());
            }
        };
        feed(source, out)
    });
    let info = opened.await.map_err(|_| {
        RunnerError::provider(format!("{operation}: the worker task ended before opening"))
    })??;
    Ok((info, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::{RunnerErrorKind, collect_stream, next_chunk};

    fn body(chunks: Vec<RunnerResult<&'static [u8]>>) -> RunnerByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| c.map(Bytes::from_static)),
        ))
    }

    #[tokio::test]
    async fn body_reader_copies_every_chunk() {
        let stream = body(vec![Ok(b"ab"), Ok(b""), Ok(b"cde")]);
        let copied = with_body_reader("write_file", stream, |mut reader| {
            let mut out = Vec::new();
            reader
                .copy_to(&mut out)
                .map_err(|e| RunnerError::provider(e.to_string()))?;
            Ok(out)
        })
        .await
        .expect("copied");
        assert_eq!(copied, b"abcde");
    }

    #[tokio::test]
    async fn body_reader_returns_the_body_error() {
        let failing = RunnerError::new(RunnerErrorKind::Unavailable, "body: the peer went away");
        let stream = body(vec![Ok(b"ab"), Err(failing)]);
        let err = with_body_reader("write_file", stream, |mut reader| {
            let mut out = Vec::new();
            reader
                .copy_to(&mut out)
                .map_err(|e| RunnerError::provider(format!("write_file f: {e}")))?;
            Ok(out)
        })
        .await
        .expect_err("the body failed");
        assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
        assert_eq!(err.message(), "body: the peer went away");
    }

    #[tokio::test]
    async fn body_reader_fails_once_the_future_is_dropped() {
        let (seen_tx, seen_rx) = oneshot::channel();
        let stream: RunnerByteStream = Box::pin(futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok(Bytes::from_static(b"first"))]),
            futures_util::stream::pending(),
        ));
        let write = with_body_reader("write_file", stream, move |mut reader| {
            let mut out = Vec::new();
            let result = reader.copy_to(&mut out);
            let _ = seen_tx.send((out, result.map_err(|e| e.to_string())));
            Ok(())
        });
        tokio::select! {
            _ = write => panic!("a body that never ends cannot finish"),
            _ = tokio::task::yield_now() => {}
        }
        let (out, result) = seen_rx.await.expect("the work ended");
        // The drop may come before the first chunk was read, never after the end.
        assert!(b"first".starts_with(&out), "{out:?}");
        assert_eq!(result, Err(DROPPED.to_owned()));
    }

    #[tokio::test]
    async fn chunk_stream_chunks_and_ends_with_the_error() {
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| i as u8).collect();
        let expected = data.clone();
        let stream = chunk_stream("download_archive", move |out| {
            out.copy_from(&mut data.as_slice())
                .map_err(|e| RunnerError::provider(e.to_string()))?;
            out.write_all(b"tail")
                .map_err(|e| RunnerError::provider(e.to_string()))
        });
        let all = collect_stream("read", "f", stream, u64::MAX)
            .await
            .expect("stream");
        assert_eq!(&all[..expected.len()], &expected[..]);
        assert_eq!(&all[expected.len()..], b"tail");

        let mut failing = chunk_stream("download_archive", |out| {
            out.write_all(b"some")
                .map_err(|e| RunnerError::provider(e.to_string()))?;
            Err(RunnerError::not_found("download_archive x: gone"))
        });
        let err = loop {
            match next_chunk(&mut failing).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended without its error"),
            }
        };
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        assert!(next_chunk(&mut failing).await.is_none());
    }

    #[tokio::test]
    async fn chunk_stream_chunks_grow_to_the_maximum() {
        let stream = chunk_stream("read_file", |out| {
            out.copy_from(&mut io::repeat(1).take(3 * CHUNK_BYTES as u64))
                .map(drop)
                .map_err(|e| RunnerError::provider(e.to_string()))
        });
        let mut stream = stream;
        let mut sizes = Vec::new();
        while let Some(chunk) = next_chunk(&mut stream).await {
            sizes.push(chunk.expect("chunk").len());
        }
        let mut expected = Vec::new();
        let (mut size, mut left) = (FIRST_CHUNK_BYTES, 3 * CHUNK_BYTES);
        while left > 0 {
            expected.push(size.min(left));
            left -= size.min(left);
            size = (size * 2).min(CHUNK_BYTES);
        }
        assert_eq!(sizes, expected);
        assert!(sizes.iter().all(|&n| n <= CHUNK_BYTES));
    }

    #[tokio::test]
    async fn chunk_stream_ends_with_an_error_when_the_work_panics() {
        let mut stream = chunk_stream("download_archive", |_| panic!("the packer broke"));
        let err = next_chunk(&mut stream)
            .await
            .expect("an item")
            .expect_err("the panic is an error");
        assert_eq!(err.kind(), RunnerErrorKind::Provider);
        assert!(err.message().starts_with("download_archive: "), "{err}");
        assert!(next_chunk(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn opened_chunk_stream_returns_the_open_error_or_the_info() {
        let err = opened_chunk_stream(
            "read_file",
            || Err::<((), ()), _>(RunnerError::not_found("read_file x: missing")),
            |(), _| panic!("nothing to feed"),
        )
        .await
        .map(drop)
        .expect_err("the open failed");
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        let (size, stream) = opened_chunk_stream(
            "read_file",
            || Ok((3u64, b"abc".as_slice())),
            |mut data, out| {
                out.copy_from(&mut data)
                    .map(drop)
                    .map_err(|e| RunnerError::provider(e.to_string()))
            },
        )
        .await
        .expect("opened");
        assert_eq!(size, 3);
        let all = collect_stream("read", "x", stream, 10)
            .await
            .expect("bytes");
        assert_eq!(all, b"abc");
        let err = opened_chunk_stream(
            "read_file",
            || -> RunnerResult<((), ())> { panic!("the open broke") },
            |(), _| Ok(()),
        )
        .await
        .map(drop)
        .expect_err("a panic");
        assert_eq!(err.kind(), RunnerErrorKind::Provider);
    }

    #[tokio::test]
    async fn chunk_stream_stops_its_task_when_dropped() {
        let (done_tx, done_rx) = oneshot::channel();
        let mut stream = chunk_stream("read_file", move |out| {
            // Endless: only a dropped stream stops it.
            let result = out.copy_from(&mut io::repeat(7));
            let _ = done_tx.send(result.map_err(|e| e.kind()));
            Ok(())
        });
        let first = next_chunk(&mut stream).await.expect("a chunk").expect("ok");
        assert_eq!(first.len(), FIRST_CHUNK_BYTES);
        drop(stream);
        let result = done_rx.await.expect("the task ended");
        assert_eq!(result, Err(io::ErrorKind::BrokenPipe));
    }
}
