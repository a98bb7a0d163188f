#![doc = include_str!("../README.md")]

mod capabilities;
mod command;
mod destination;
mod error;
mod files;
mod layer;
mod lease;
mod limits;
mod manifest;
mod paths;
mod session;
mod stream;
mod watch;

pub use capabilities::{RunnerCapabilities, RunnerMountCapabilities};
pub use command::{
    HOST_ENV_ALLOWLIST, NON_INTERACTIVE_ENV, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerExitStatus, RunnerOutputChunk, RunnerOutputLimit,
    RunnerOutputStream, RunnerOutputTruncation, RunnerProcessEvent, RunnerProcessInfo,
    RunnerProcessState, RunnerSignal, RunnerTerminal, host_env_allowed, inherited_host_env,
};
pub use destination::{
    RemoteRunnerProviderId, RemoteRunnerSessionId, RunnerCommandId, RunnerDestination,
    RunnerDestinationId, RunnerManifest, RunnerManifestEntry, RunnerMount, RunnerMountIntent,
    RunnerMountKind, RunnerSecretRef, RunnerSessionState, RunnerSnapshotRef, ThreadRunnerBinding,
};
pub use error::{RunnerError, RunnerErrorKind, RunnerResult, RunnerResultExt};
pub use files::{
    RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerFileKind, RunnerFileReadRequest,
    RunnerFileReadResult, RunnerFileStat, RunnerFileWriteRequest, RunnerListeningPort,
    RunnerPortRequest, RunnerPortResult,
};
pub use layer::{LayeredSession, SessionLayer};
pub use lease::{RunnerExecutionLease, RunnerLeaseRequest};
pub use limits::{MAX_READ_BYTES, ReadWindow, check_read_request, read_window};
pub use manifest::{validate_manifest, validate_relative_path};
pub use paths::{normalize_lexically, reject_nul_path};
pub use session::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerEventStream, RunnerSweepReport,
};
pub use stream::{
    RunnerByteStream, RunnerFileStream, bytes_stream, collect_stream, empty_stream, next_chunk,
    prepend,
};
pub use watch::{RunnerWatchEvent, RunnerWatchEventKind, RunnerWatchRequest, RunnerWatchStream};
