//! Pod exec streams whose pipes end when the stream does.
//!
//! kube's `AttachedProcess` closes its stdout and stderr pipes only when the
//! stream ends with a status or a close; when the WebSocket breaks (an API
//! server that goes away, a connection cut), its pipes stay open and a
//! reader would wait forever. [`Attached`] watches the end of the stream
//! (the status channel's sender goes away with it) and ends every pipe
//! then: readers see the end of their data, writers a broken pipe.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachedProcess;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, SimplexStream, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A pipe of an attached process that ends when its stream ended.
pub(crate) struct Pipe<T> {
    io: T,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl<T> Pipe<T> {
    fn new(io: T, ended: &CancellationToken) -> Self {
        Self {
            io,
            ended: Box::pin(ended.clone().cancelled_owned()),
            done: false,
        }
    }

    /// Whether the stream has ended (registers the waker while it has not).
    fn ended(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && self.ended.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
        self.done
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Pipe<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(read) = Pin::new(&mut self.io).poll_read(cx, buf) {
            return Poll::Ready(read);
        }
        if !self.ended(cx) {
            return Poll::Pending;
        }
        // What came in before the end is still read; then the end.
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(read) => Poll::Ready(read),
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the pod exec stream ended")
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Pipe<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ended(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An attached process with pipes that end with its stream. Dropping it
/// ends the stream.
pub(crate) struct Attached {
    /// Its stdout, when attached.
    pub(crate) stdout: Option<Pipe<ReadHalf<SimplexStream>>>,
    /// Its stderr, when attached.
    pub(crate) stderr: Option<Pipe<ReadHalf<SimplexStream>>>,
    /// Its stdin, when attached.
    pub(crate) stdin: Option<Pipe<WriteHalf<SimplexStream>>>,
    status: Option<JoinHandle<Option<Status>>>,
    _process: AttachedProcess,
}

impl Attached {
    /// Takes the pipes of `process` and watches the end of its stream.
    pub(crate) fn new(mut process: AttachedProcess) -> Self {
        let ended = CancellationToken::new();
        let status = process.take_status().map(|status| {
            let ended = ended.clone();
            tokio::spawn(async move {
                let status = status.await;
                ended.cancel();
                status
            })
        });
        if status.is_none() {
            ended.cancel();
        }
        Self {
            stdout: process.stdout().map(|io| Pipe::new(io, &ended)),
            stderr: process.stderr().map(|io| Pipe::new(io, &ended)),
            stdin: process.stdin().map(|io| Pipe::new(io, &ended)),
            status,
            _process: process,
        }
    }

    /// The status the stream ended with (`None` when it broke off without one).
    pub(crate) async fn status(&mut self) -> Option<Status> {
        match self.status.take() {
            Some(status) => status.await.ok().flatten(),
            None => None,
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(status) = &self.status {
            status.abort();
        }
    }
}
