//! The runner agent: one unix-local session served over byte streams from
//! inside a sandbox, and the client every remote provider drives it with.
//!
//! - [`AgentServer`] serves one `Arc<dyn RemoteRunnerSession>` (unix-local's
//!   bare session) to any number of connections over any
//!   `AsyncRead + AsyncWrite`. The session lives in the agent: a dropped
//!   connection loses nothing, the next one sees the same commands and output.
//! - [`AgentSession`] (over an [`AgentClient`]) implements
//!   `RemoteRunnerSession` over connections made by a caller's
//!   [`AgentConnector`]: a docker exec's stdio, an ssh channel, a WebSocket,
//!   a child process ([`ChildStream`], [`command_connector`]). Its
//!   `expose_port` answers a URL on the caller's side whose connections are
//!   relayed through the agent connection to the port inside the sandbox.
//! - [`protocol`] is the wire format `docs/agent-protocol.md` specifies:
//!   length-delimited frames, MessagePack control messages, raw data frames,
//!   multiplexing by request id, credit-based flow control, cancellation.
//! - The binary `runner-agent` ([`cli`]): `serve --socket PATH --config JSON`
//!   (the daemon), `serve --stdio`, `connect --socket PATH` (the bridge a
//!   transport runs), `init -- serve …` (a container's PID 1) and `version`.
//! - [`delivery`]: which binary a sandbox's platform gets, checked by its
//!   ELF header and named by its sha256.
//!
//! ```no_run
//! use runner_agent::{AgentSession, command_connector};
//! use runner_api::{RemoteRunnerSession, RunnerCommandRequest};
//!
//! # async fn demo() -> runner_api::RunnerResult<()> {
//! // Each connection is a `runner-agent connect` child bridging to the daemon.
//! let session = AgentSession::connect(command_connector(|| {
//!     let mut command = tokio::process::Command::new("runner-agent");
//!     command.args(["connect", "--socket", "/run/agent/agent.sock"]);
//!     command
//! }))
//! .await?;
//! let result = session.run_command(RunnerCommandRequest::new("c1", "true", Vec::<String>::new())).await?;
//! assert!(result.success());
//! # Ok(()) }
//! ```

pub mod cli;
mod client;
mod conn;
pub mod daemon;
pub mod delivery;
mod init;
pub mod protocol;
mod run_as;
mod server;
mod stage;
mod transport;
mod tunnel;

pub use client::{
    AgentClient, AgentConnection, AgentConnector, AgentIo, AgentSession, ConnectFuture, Download,
    Staged,
};
pub use protocol::{AgentVersion, PROTOCOL_VERSION};
pub use server::AgentServer;
pub use stage::STAGED_FILE;
pub use transport::{ChildStream, JoinedStream, command_connector};
