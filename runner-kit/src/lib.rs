//! The machinery a provider implementation runs on: the process table with
//! process groups, stdin pipes, head/tail output and the numbered output log,
//! archive checks, read-only paths, `/proc` parsing, the execution lease, the
//! destinations a process may resume, the bridges between byte streams and
//! blocking file work, and the parser of typed provider configs.
//!
//! unix-local and the runner agent are built from these parts; a provider that
//! only forwards to a remote API needs none of them.

pub mod accounts;
pub mod archive;
pub mod bridge;
pub mod config;
mod known;
mod lease;
pub mod output;
mod ports;
pub mod process;
mod stdin;

pub use known::KnownDestinations;
pub use lease::{acquire_shell_lease, release_shell_lease, renew_shell_lease};
pub use output::{HeadTailBuffer, OutputLog};
pub use ports::parse_proc_net_tcp;
pub use process::{
    OutputSink, ProcessControl, ProcessTable, ProcessTableConfig, RawExit, SpawnedProcess,
    validate_command_request,
};
pub use stdin::StdinPipe;
