//! The catalogue of checks: names, areas, required capabilities, docs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use runner_api::RunnerCapabilities;

use crate::context::Cx;
use crate::outcome::CheckResult;

/// A boxed check future.
pub(crate) type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send + 'static>>;

/// The function behind a check.
pub(crate) type CheckFn = fn(Cx) -> CheckFuture;

/// The group a check belongs to; the first word of its name.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Foreground commands: `run_command`, `cancel_command`, stdin, output budgets.
    Exec,
    /// Background commands: `start_command` and everything keyed by a command id.
    Processes,
    /// The file API: `read_file`, `write_file`, `list_dir`, archives.
    Files,
    /// The workspace path rule, enforced by the stack's workspace layer over every session.
    Paths,
    /// `expose_port` and `list_listening_ports`.
    Ports,
    /// `snapshot` and `resume_session` with a snapshot.
    Snapshots,
    /// Object-store mounts: materialized at creation, synced back, read-only.
    Mounts,
    /// `export_artifact` to the destination's artifact store.
    Artifacts,
    /// Commands on a pseudo-terminal: `RunnerCommandRequest::terminal`, `resize_terminal`.
    Terminal,
    /// `watch`: file events of the workspace.
    Watch,
    /// `close`, `pause`/`resume`, `detach`/`rejoin_session`, `state`.
    Lifecycle,
    /// Capability flags are honest in both directions.
    Capabilities,
}

impl Area {
    /// Every area, in catalogue order.
    pub const ALL: [Area; 12] = [
        Area::Exec,
        Area::Processes,
        Area::Files,
        Area::Paths,
        Area::Ports,
        Area::Snapshots,
        Area::Mounts,
        Area::Artifacts,
        Area::Terminal,
        Area::Watch,
        Area::Lifecycle,
        Area::Capabilities,
    ];

    /// The area's name, the prefix of its checks' names.
    pub fn name(self) -> &'static str {
        match self {
            Area::Exec => "exec",
            Area::Processes => "processes",
            Area::Files => "files",
            Area::Paths => "paths",
            Area::Ports => "ports",
            Area::Snapshots => "snapshots",
            Area::Mounts => "mounts",
            Area::Artifacts => "artifacts",
            Area::Terminal => "terminal",
            Area::Watch => "watch",
            Area::Lifecycle => "lifecycle",
            Area::Capabilities => "capabilities",
        }
    }
}

impl Area {
    /// Whether the area's checks need an object store
    /// ([`Conformance::with_object_store`](crate::Conformance::with_object_store)).
    pub fn needs_object_store(self) -> bool {
        matches!(self, Area::Mounts | Area::Artifacts)
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One flag of [`RunnerCapabilities`], as a check requires it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `command_exec`.
    CommandExec,
    /// `file_read`.
    FileRead,
    /// `file_write`.
    FileWrite,
    /// `port_preview`.
    PortPreview,
    /// `snapshots`.
    Snapshots,
    /// `cancellation`.
    Cancellation,
    /// `artifact_export`.
    ArtifactExport,
    /// `pausable`.
    Pausable,
    /// `detachable`.
    Detachable,
    /// `streaming`.
    Streaming,
    /// `background_processes`.
    BackgroundProcesses,
    /// `stdin`.
    Stdin,
    /// `file_management`.
    FileManagement,
    /// `archive_transfer`.
    ArchiveTransfer,
    /// `snapshot_restore`.
    SnapshotRestore,
    /// `port_listing`.
    PortListing,
    /// `execution_lease`.
    ExecutionLease,
    /// `run_as_user`.
    RunAsUser,
    /// `pty`.
    Pty,
    /// `file_watch`.
    FileWatch,
}

impl Capability {
    /// Every boolean capability flag.
    pub const ALL: [Capability; 20] = [
        Capability::CommandExec,
        Capability::FileRead,
        Capability::FileWrite,
        Capability::PortPreview,
        Capability::Snapshots,
        Capability::Cancellation,
        Capability::ArtifactExport,
        Capability::Pausable,
        Capability::Detachable,
        Capability::Streaming,
        Capability::BackgroundProcesses,
        Capability::Stdin,
        Capability::FileManagement,
        Capability::ArchiveTransfer,
        Capability::SnapshotRestore,
        Capability::PortListing,
        Capability::ExecutionLease,
        Capability::RunAsUser,
        Capability::Pty,
        Capability::FileWatch,
    ];

    /// The field name in [`RunnerCapabilities`] (and its JSON).
    pub fn name(self) -> &'static str {
        match self {
            Capability::CommandExec => "command_exec",
            Capability::FileRead => "file_read",
            Capability::FileWrite => "file_write",
            Capability::PortPreview => "port_preview",
            Capability::Snapshots => "snapshots",
            Capability::Cancellation => "cancellation",
            Capability::ArtifactExport => "artifact_export",
            Capability::Pausable => "pausable",
            Capability::Detachable => "detachable",
            Capability::Streaming => "streaming",
            Capability::BackgroundProcesses => "background_processes",
            Capability::Stdin => "stdin",
            Capability::FileManagement => "file_management",
            Capability::ArchiveTransfer => "archive_transfer",
            Capability::SnapshotRestore => "snapshot_restore",
            Capability::PortListing => "port_listing",
            Capability::ExecutionLease => "execution_lease",
            Capability::RunAsUser => "run_as_user",
            Capability::Pty => "pty",
            Capability::FileWatch => "file_watch",
        }
    }

    /// Whether `capabilities` declares this flag.
    pub fn is_set(self, capabilities: &RunnerCapabilities) -> bool {
        let c = capabilities;
        match self {
            Capability::CommandExec => c.command_exec,
            Capability::FileRead => c.file_read,
            Capability::FileWrite => c.file_write,
            Capability::PortPreview => c.port_preview,
            Capability::Snapshots => c.snapshots,
            Capability::Cancellation => c.cancellation,
            Capability::ArtifactExport => c.artifact_export,
            Capability::Pausable => c.pausable,
            Capability::Detachable => c.detachable,
            Capability::Streaming => c.streaming,
            Capability::BackgroundProcesses => c.background_processes,
            Capability::Stdin => c.stdin,
            Capability::FileManagement => c.file_management,
            Capability::ArchiveTransfer => c.archive_transfer,
            Capability::SnapshotRestore => c.snapshot_restore,
            Capability::PortListing => c.port_listing,
            Capability::ExecutionLease => c.execution_lease,
            Capability::RunAsUser => c.run_as_user,
            Capability::Pty => c.pty,
            Capability::FileWatch => c.file_watch,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One conformance check: a behaviour of the trait docs, tested on a provider.
#[derive(Clone)]
pub struct Check {
    /// `<area>_<behaviour>`, the trial name.
    pub name: &'static str,
    /// The group it belongs to.
    pub area: Area,
    /// Capabilities the provider must declare for the check to run; otherwise it
    /// is skipped (reported as ignored, `[unsupported: <flag>]`).
    pub requires: &'static [Capability],
    /// One line: which sentence of the trait docs it enforces.
    pub doc: &'static str,
    /// Whether it needs the run's connection breaker
    /// ([`Conformance::with_connection_breaker`](crate::Conformance::with_connection_breaker));
    /// without one it is skipped.
    pub needs_breaker: bool,
    /// Whether it needs a destination whose agent speaks another protocol
    /// version ([`Conformance::with_skewed_agent`](crate::Conformance::with_skewed_agent));
    /// without one it is skipped.
    pub needs_skewed_agent: bool,
    pub(crate) run: CheckFn,
}

impl Check {
    pub(crate) const fn new(
        name: &'static str,
        area: Area,
        requires: &'static [Capability],
        doc: &'static str,
        run: CheckFn,
    ) -> Self {
        Self {
            name,
            area,
            requires,
            doc,
            needs_breaker: false,
            needs_skewed_agent: false,
            run,
        }
    }

    /// The check needs the run's connection breaker.
    pub(crate) const fn breaking(mut self) -> Self {
        self.needs_breaker = true;
        self
    }

    /// The check needs the run's destination of a skewed agent.
    pub(crate) const fn skewed(mut self) -> Self {
        self.needs_skewed_agent = true;
        self
    }

    /// The required capabilities `capabilities` does not declare (empty: the check runs).
    pub fn missing(&self, capabilities: &RunnerCapabilities) -> Vec<Capability> {
        self.requires
            .iter()
            .copied()
            .filter(|c| !c.is_set(capabilities))
            .collect()
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("area", &self.area)
            .field("requires", &self.requires)
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

/// The whole catalogue, grouped by area in [`Area::ALL`] order.
pub fn checks() -> Vec<Check> {
    let mut all = Vec::new();
    all.extend(crate::checks::exec::checks());
    all.extend(crate::checks::processes::checks());
    all.extend(crate::checks::files::checks());
    all.extend(crate::checks::hostile::checks());
    all.extend(crate::checks::framework::checks());
    all.extend(crate::checks::paths::checks());
    all.extend(crate::checks::ports::checks());
    all.extend(crate::checks::snapshots::checks());
    all.extend(crate::checks::mounts::checks());
    all.extend(crate::checks::artifacts::checks());
    all.extend(crate::checks::terminal::checks());
    all.extend(crate::checks::lifecycle::checks());
    all.extend(crate::checks::lease::lifecycle_checks());
    all.extend(crate::checks::manager::checks());
    all.extend(crate::checks::capabilities::checks());
    all.extend(crate::checks::lease::capability_checks());
    // The hostile-input checks span areas: a stable sort puts each in its own.
    all.sort_by_key(|check| check.area);
    all
}
