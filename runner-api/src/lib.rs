#![doc = include_str!("../README.md")]

pub mod archive;
mod artifacts;
mod capabilities;
mod command;
mod destination;
mod error;
mod files;
mod known;
mod lease;
pub mod lifecycle;
mod limits;
pub mod mounts;
pub mod output;
mod pool;
mod ports;
pub mod process;
mod read_only;
mod registry;
mod secrets;
mod session;
mod stdin;
mod workspace;

pub use capabilities::{RunnerCapabilities, RunnerMountCapabilities};
pub use command::{
    HOST_ENV_ALLOWLIST, NON_INTERACTIVE_ENV, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerExitStatus, RunnerOutputChunk, RunnerOutputLimit,
    RunnerOutputStream, RunnerOutputTruncation, RunnerProcessEvent, RunnerProcessInfo,
    RunnerProcessState, RunnerSignal, host_env_allowed, inherited_host_env,
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
pub use known::KnownDestinations;
pub use lease::{
    RunnerExecutionLease, RunnerLeaseRequest, acquire_shell_lease, release_shell_lease,
    renew_shell_lease,
};
pub use lifecycle::{
    CloseReason, IdleAction, ManagedSession, ManagedStatus, ManagerConfig, SessionManager,
    TurnGuard,
};
pub use limits::{MAX_READ_BYTES, ReadWindow, check_read_request, read_window};
pub use output::{HeadTailBuffer, OutputLog};
pub use pool::{DestinationHealth, DestinationPool, PoolConfig, SelectionPolicy};
pub use ports::parse_proc_net_tcp;
pub use process::{
    OutputSink, ProcessControl, ProcessTable, ProcessTableConfig, RawExit, SpawnedProcess,
    validate_command_request,
};
pub use read_only::ReadOnlyPaths;
pub use registry::{RunnerProviderInfo, RunnerRegistry, validate_manifest, validate_relative_path};
pub use secrets::{EnvSecretResolver, SecretResolver, SecretValues};
pub use session::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerEventStream, RunnerSweepReport,
};
pub use stdin::StdinPipe;
pub use workspace::{PathAccess, RemoteWorkspace, normalize_lexically, reject_nul_path};
