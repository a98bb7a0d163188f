//! The runner agent: one unix-local session served over byte streams from
//! inside a sandbox, and the client every remote provider drives it with.
//!
//! [`protocol`] is the wire format `docs/agent-protocol.md` specifies:
//! length-delimited frames, MessagePack control messages, raw data frames,
//! multiplexing by request id, credit-based flow control, cancellation.

pub mod protocol;

pub use protocol::{AgentVersion, PROTOCOL_VERSION};
