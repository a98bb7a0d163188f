//! Transports: byte streams to an agent that any provider can reuse.

use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::{AgentConnection, AgentConnector};

/// A reader and a writer as one byte stream (an [`AgentIo`](crate::AgentIo)),
/// holding `keep` as long as the stream lives: a child process whose pipes
/// they are, the handle of an exec whose stdout and stdin they are. What
/// every transport that gets two halves builds its connection from.
pub struct JoinedStream<R, W, K = ()> {
    io: tokio::io::Join<R, W>,
    keep: K,
}

impl<R, W, K> std::fmt::Debug for JoinedStream<R, W, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinedStream").finish_non_exhaustive()
    }
}

impl<R: AsyncRead, W: AsyncWrite, K> JoinedStream<R, W, K> {
    /// `reader` and `writer` as one stream, keeping `keep` alive with it.
    pub fn new(reader: R, writer: W, keep: K) -> Self {
        Self {
            io: tokio::io::join(reader, writer),
            keep,
        }
    }

    /// What the stream keeps alive.
    pub fn kept(&self) -> &K {
        &self.keep
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin, K: Unpin> AsyncRead for JoinedStream<R, W, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin, K: Unpin> AsyncWrite for JoinedStream<R, W, K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A child process's stdin and stdout as one byte stream: what a local
/// `runner-agent connect`, a `docker exec -i` or an `ssh` command gives. The
/// child is killed when the stream is dropped.
pub type ChildStream = JoinedStream<ChildStdout, ChildStdin, Child>;

impl ChildStream {
    /// Spawns `command` with piped stdin and stdout (stderr as the command
    /// says, inherited by default).
    ///
    /// Errors: the spawn's own.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let missing = || io::Error::other("the child's stdio was not piped");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        Ok(Self::new(stdout, stdin, child))
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.kept().id()
    }
}

/// A connector that spawns the command `make` returns for every connection
/// and talks over its stdio (see [`ChildStream`]): for example
/// `runner-agent connect --socket PATH`, or the same through `docker exec -i`
/// or `ssh`.
pub fn command_connector(
    make: impl Fn() -> Command + Send + Sync + 'static,
) -> impl AgentConnector {
    move || {
        let spawned = ChildStream::spawn(&mut make());
        async move { spawned.map(|stream| Box::new(stream) as AgentConnection) }
    }
}
