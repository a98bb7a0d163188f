//! Byte streams for file and archive transfer, with bounded memory.
//!
//! A provider moves file contents and archives as a [`RunnerByteStream`] of
//! [`Bytes`] chunks, so a 1 GiB file never sits whole in the caller or the
//! provider. The whole-buffer methods (`read_file`, `write_file`,
//! `upload_archive`, `download_archive`) are conveniences built on these
//! streams with the helpers here; they need nothing beyond `futures-core`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::{RunnerError, RunnerResult};

/// A stream of byte chunks; an `Err` item ends the transfer with that error.
pub type RunnerByteStream = Pin<Box<dyn Stream<Item = RunnerResult<Bytes>> + Send + 'static>>;

/// A file being read: its whole size, and the bytes of the requested window.
pub struct RunnerFileStream {
    /// The path as requested.
    pub path: PathBuf,
    /// The file's whole size, so a ranged read knows what remains.
    pub size: u64,
    /// The bytes from the request's offset, up to its limit or the end.
    pub bytes: RunnerByteStream,
}

impl std::fmt::Debug for RunnerFileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerFileStream")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Chunks already in memory, yielded in order.
struct Chunks(VecDeque<Bytes>);

impl Stream for Chunks {
    type Item = RunnerResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A stream of `bytes` as one chunk (no chunk when empty).
pub fn bytes_stream(bytes: impl Into<Bytes>) -> RunnerByteStream {
    let bytes = bytes.into();
    let chunks = if bytes.is_empty() {
        VecDeque::new()
    } else {
        VecDeque::from([bytes])
    };
    Box::pin(Chunks(chunks))
}

/// A stream with no bytes.
pub fn empty_stream() -> RunnerByteStream {
    Box::pin(Chunks(VecDeque::new()))
}

/// `first` followed by every chunk of `rest`.
struct Prepend {
    first: Option<Bytes>,
    rest: RunnerByteStream,
}

impl Stream for Prepend {
    type Item = RunnerResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        self.rest.as_mut().poll_next(cx)
    }
}

/// A stream of `first` (when not empty) followed by `rest`: how a provider
/// turns a write request's `contents` and its body into one stream.
pub fn prepend(first: impl Into<Bytes>, rest: RunnerByteStream) -> RunnerByteStream {
    let first = first.into();
    Box::pin(Prepend {
        first: (!first.is_empty()).then_some(first),
        rest,
    })
}

/// The next chunk of `stream`, `None` at its end.
pub async fn next_chunk(stream: &mut RunnerByteStream) -> Option<RunnerResult<Bytes>> {
    poll_fn(|cx| stream.as_mut().poll_next(cx)).await
}

/// Every byte of `stream` in one buffer, refusing more than `max` bytes.
///
/// Errors: the stream's own error, or `InvalidRequest` naming `operation`,
/// `what` and the maximum once the stream exceeds it (the excess is never held).
pub async fn collect_stream(
    operation: &str,
    what: &str,
    mut stream: RunnerByteStream,
    max: u64,
) -> RunnerResult<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(RunnerError::invalid_request(format!(
                "{operation} {what}: more than the maximum of {max} bytes one buffer holds; \
                 use the streaming form"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunnerErrorKind;

    #[tokio::test]
    async fn prepend_and_collect_keep_order() {
        let stream = prepend(b"ab".to_vec(), bytes_stream(b"cd".to_vec()));
        let all = collect_stream("read", "f", stream, 4).await.unwrap();
        assert_eq!(all, b"abcd");
        let none = collect_stream("read", "f", prepend(Vec::new(), empty_stream()), 0)
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn collect_refuses_past_the_maximum() {
        let err = collect_stream("read_file", "big", bytes_stream(vec![0u8; 5]), 4)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("read_file big"), "{}", err.message());
    }
}
