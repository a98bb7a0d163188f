//! The transport: each connection to the agent is one pod exec (a
//! WebSocket, `v5.channel.k8s.io`) of `runner-agent connect --socket …`,
//! its stdin and stdout the byte stream (its stderr is not attached).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use runner_agent::{AgentConnection, AgentConnector};
use tokio::io::{AsyncRead, AsyncWrite, Join, ReadBuf, ReadHalf, SimplexStream, WriteHalf};

use crate::CONTAINER_NAME;
use crate::delivery::AGENT_PATH;
use crate::error::{Call, io_error};
use crate::exec::{Attached, Pipe};

/// Buffer of each direction of an exec stream.
const BUFFER: usize = 256 << 10;

/// Where the agent of one pod is reached.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) pods: Api<Pod>,
    pub(crate) pod: String,
    /// The agent's socket in the pod.
    pub(crate) socket: String,
}

/// A pod exec's stdout and stdin as one stream; the process is kept so
/// that its WebSocket lives as long as the stream (dropping it ends it).
struct ExecStream {
    io: Join<Pipe<ReadHalf<SimplexStream>>, Pipe<WriteHalf<SimplexStream>>>,
    _attached: Attached,
}

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExecStream {
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

impl Endpoint {
    /// Starts one `connect` exec and returns its stdio as a connection.
    async fn open(self) -> io::Result<AgentConnection> {
        let params = AttachParams::default()
            .container(CONTAINER_NAME)
            .stdin(true)
            .stdout(true)
            .stderr(false)
            .max_stdin_buf_size(BUFFER)
            .max_stdout_buf_size(BUFFER);
        let process = self
            .pods
            .exec(
                &self.pod,
                [AGENT_PATH, "connect", "--socket", self.socket.as_str()],
                &params,
            )
            .await
            .map_err(|e| {
                io_error(
                    Call::new("connect to the agent", "create", "pods/exec")
                        .named(&self.pod)
                        .error(e),
                )
            })?;
        let mut attached = Attached::new(process);
        let (Some(stdout), Some(stdin)) = (attached.stdout.take(), attached.stdin.take()) else {
            return Err(io::Error::other(format!(
                "the connect exec in pod {} has no stdin or stdout",
                self.pod
            )));
        };
        Ok(Box::new(ExecStream {
            io: tokio::io::join(stdout, stdin),
            _attached: attached,
        }))
    }

    /// The connector an [`AgentSession`](runner_agent::AgentSession) makes
    /// every connection with.
    pub(crate) fn connector(self) -> impl AgentConnector {
        move || self.clone().open()
    }
}
