//! The transport: each connection to the agent is one pod exec (a
//! WebSocket, `v5.channel.k8s.io`) of `runner-agent connect --socket …`,
//! its stdin and stdout the byte stream (its stderr is not attached).

use std::io;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use runner_agent::{AgentConnection, AgentConnector, JoinedStream};

use crate::CONTAINER_NAME;
use crate::delivery::AGENT_PATH;
use crate::error::{Call, io_error};
use crate::exec::Attached;

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
        // The process is kept so that its WebSocket lives as long as the
        // stream (dropping it ends it).
        Ok(Box::new(JoinedStream::new(stdout, stdin, attached)))
    }

    /// The connector an [`AgentSession`](runner_agent::AgentSession) makes
    /// every connection with.
    pub(crate) fn connector(self) -> impl AgentConnector {
        move || self.clone().open()
    }
}
