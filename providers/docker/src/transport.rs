//! The transports: each connection to the agent is one dial of its socket
//! through the host socket directory (the `socket` transport,
//! [`crate::socket`]), or one docker exec of `runner-agent connect
//! --socket …`, its stdin and stdout the byte stream (`exec`).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use runner_agent::{AgentConnection, AgentConnector, JoinedStream};
use tokio_util::io::StreamReader;

use crate::config::DockerTransport;
use crate::error::Daemon;

/// Where the agent of one container is reached.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) daemon: Daemon,
    pub(crate) container: String,
    /// The exec user (`None`: the container's).
    pub(crate) user: Option<String>,
    /// The delivered binary's container path.
    pub(crate) agent: String,
    /// The agent's socket, a container path.
    pub(crate) socket: String,
    /// The agent's socket on this machine, with the `socket` transport
    /// (`None`: every connection is an exec).
    pub(crate) host_socket: Option<PathBuf>,
}

type Output = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Endpoint {
    /// One connection: a dial of the host socket, or a `connect` exec.
    async fn open(self) -> io::Result<AgentConnection> {
        match &self.host_socket {
            Some(socket) => {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok(Box::new(stream))
            }
            None => self.exec().await,
        }
    }

    /// The name of the transport, for the session's state and logs.
    pub(crate) fn transport(&self) -> DockerTransport {
        if self.host_socket.is_some() {
            DockerTransport::Socket
        } else {
            DockerTransport::Exec
        }
    }

    /// Starts one `connect` exec and returns its stdio as a connection; its
    /// stderr goes to the log.
    async fn exec(self) -> io::Result<AgentConnection> {
        let docker = &self.daemon.docker;
        let exec = docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    cmd: Some(vec![
                        self.agent.clone(),
                        "connect".to_string(),
                        "--socket".to_string(),
                        self.socket.clone(),
                    ]),
                    user: self.user.clone(),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.io_error(e))?;
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(256 * 1024),
        };
        match docker
            .start_exec(&exec.id, Some(options))
            .await
            .map_err(|e| self.io_error(e))?
        {
            StartExecResults::Attached { output, input } => {
                let container = self.container.clone();
                let output: Output = Box::pin(output.filter_map(move |item| {
                    let item = match item {
                        Ok(LogOutput::StdErr { message }) => {
                            tracing::debug!(
                                container = %container,
                                stderr = %String::from_utf8_lossy(&message).trim_end(),
                                "runner-agent connect"
                            );
                            None
                        }
                        Ok(other) => Some(Ok(other.into_bytes())),
                        Err(e) => Some(Err(io::Error::other(e))),
                    };
                    std::future::ready(item)
                }));
                Ok(Box::new(JoinedStream::new(
                    StreamReader::new(output),
                    input,
                    (),
                )))
            }
            StartExecResults::Detached => Err(io::Error::other(format!(
                "the connect exec in {} started detached",
                self.container
            ))),
        }
    }

    /// A Docker error as the I/O error a connector returns; the client
    /// reports it as `Unavailable` naming the operation.
    fn io_error(&self, error: bollard::errors::Error) -> io::Error {
        let mapped = self
            .daemon
            .error("connect to the agent in", &self.container, error);
        io::Error::other(mapped.message().to_string())
    }

    /// The connector an [`AgentSession`](runner_agent::AgentSession) makes
    /// every connection with.
    pub(crate) fn connector(self) -> impl AgentConnector {
        move || self.clone().open()
    }
}
