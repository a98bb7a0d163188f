//! Workspace execution leases: at most one holder runs an agent turn in a
//! workspace at a time, across processes and machines.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Asks for the workspace execution lease of a session's workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerLeaseRequest {
    /// Who holds the lease (a thread or process name); shown to other holders
    /// that are refused. Never a secret.
    pub holder: String,
    /// How long the lease lasts unless renewed, in milliseconds. A holder that
    /// dies without releasing loses the lease once this has passed.
    pub ttl_ms: u64,
    /// How long to wait for a lease another holder has, in milliseconds;
    /// `0` (the default) answers at once.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A held workspace execution lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerExecutionLease {
    /// Unique id of this grant; renew and release must present it.
    pub lease_id: String,
    /// The holder named in the request.
    pub holder: String,
    /// The workspace root the lease covers, as a path on the runner.
    pub workspace: PathBuf,
    /// When the lease was granted, in milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
    /// When the lease lapses unless renewed, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}
