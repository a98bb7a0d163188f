#![doc = include_str!("../README.md")]

mod agent;
mod config;
mod connection;
mod error;
mod host;
mod ownership;
mod session;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use runner_agent::AgentSession;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerByteStream,
    RunnerCapabilities, RunnerDestination, RunnerError, RunnerManifestEntry,
    RunnerMountCapabilities, RunnerResult, RunnerSessionState, RunnerSweepReport,
    validate_manifest,
};
use runner_kit::KnownDestinations;

pub use config::{HostKeyPolicy, SshConfig};

use crate::agent::Start;
use crate::connection::{Connection, Pool};
use crate::session::{SessionMeta, SessionSetup, SshSession, remote_dir};

/// The provider id destinations name: `"ssh"`.
pub const PROVIDER_ID: &str = "ssh";

/// What a bare ssh session can do: what the runner agent's session does
/// (unix-local's), plus detaching, without mounts and artifact export,
/// which the layer stack adds on top of the file API (`runner_stack::Stack`:
/// object-store mounts, and artifact export where the destination names a
/// store). `run_as_user` accepts the login user only (by name or uid): the
/// agent runs as that user, another one is `PermissionDenied` (no `sudo`).
pub fn capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        file_read: true,
        file_write: true,
        port_preview: true,
        snapshots: true,
        cancellation: true,
        artifact_export: false,
        mounts: RunnerMountCapabilities::default(),
        pausable: true,
        detachable: true,
        streaming: true,
        background_processes: true,
        stdin: true,
        file_management: true,
        archive_transfer: true,
        snapshot_restore: true,
        port_listing: true,
        execution_lease: true,
        run_as_user: true,
        pty: true,
        file_watch: true,
    }
}

/// Runs commands and files on a host reached over SSH.
///
/// Settings come from `RunnerDestination.config` (see [`SshConfig`]). Sessions
/// of one destination share one OpenSSH master connection (the system `ssh`
/// binary in multiplexing mode). Each session is a runner agent daemon on
/// the host (`runner-agent serve --detach`, delivered once per host by
/// content hash), reached through `runner-agent connect` channels on the
/// master: every command and file operation is the agent's.
///
/// Its sessions are bare: paths are not confined to the workspace, and
/// closed-session, capability, mount and artifact handling is not theirs.
/// Use it through the layer stack (`runner_stack::stacked(SshProvider::new())`,
/// or a `RunnerRegistry`), which confines every path once and resolves store
/// credentials on this side, so they never reach the remote host.
#[derive(Default)]
pub struct SshProvider {
    pool: Pool,
    sweep_targets: Vec<SshConfig>,
    /// The destinations sessions may be resumed or rejoined on, by id: those
    /// given to `create_session` and to [`SshProvider::with_destination`].
    destinations: KnownDestinations,
}

impl std::fmt::Debug for SshProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshProvider").finish_non_exhaustive()
    }
}

/// A new session id: 16 hex digits (64 random bits), short enough that the
/// agent's socket path in `<state_dir>/<id>` fits a unix socket address.
fn new_session_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(16);
    id
}

impl SshProvider {
    /// A provider with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `sweep_orphans` also visit `destination`, connecting to it when
    /// this provider has no connection there yet. This is how orphans of a
    /// crashed process are removed: a fresh provider is told which
    /// destinations to sweep (its `orphan_grace_s` applies).
    ///
    /// Errors: `InvalidRequest` for a destination of another provider or a bad
    /// config, naming the field.
    pub fn with_sweep_destination(mut self, destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::check_provider(
            "with_sweep_destination",
            &destination.provider_id,
            "the destination",
        )?;
        let config = SshConfig::from_destination(destination)?;
        if !self.sweep_targets.contains(&config) {
            self.sweep_targets.push(config);
        }
        Ok(self)
    }

    /// Lets `resume_session` and `rejoin_session` accept states of
    /// `destination` (by its id), as they do for every destination this
    /// provider created a session for. A provider that did not create the
    /// session (a new process) must be told the destination this way: the
    /// host, port, user, key and known_hosts files, host-key policy and remote
    /// directories of a resumed session always come from the destination,
    /// never from the state.
    ///
    /// The builder form of
    /// [`trust_destination`](RemoteRunnerProvider::trust_destination), which
    /// checks nothing.
    ///
    /// Errors: `InvalidRequest` for a destination of another provider or a bad
    /// config, naming the field.
    pub fn with_destination(self, destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::check_provider(
            "with_destination",
            &destination.provider_id,
            "the destination",
        )?;
        SshConfig::from_destination(destination)?;
        self.trust_destination(destination);
        Ok(self)
    }

    /// The parsed config of the destination `state` names.
    ///
    /// Errors: `NotFound` when this provider does not know it.
    fn config_of(&self, operation: &str, state: &RunnerSessionState) -> RunnerResult<SshConfig> {
        let destination =
            self.destinations
                .of_state(operation, state, "SshProvider::with_destination")?;
        SshConfig::from_destination(&destination)
    }

    /// Setup guidance for `config`: a missing `ssh` binary, an unreadable key
    /// or known_hosts file. Names paths and settings only, never key contents.
    pub fn setup_hint_for(&self, config: &SshConfig) -> Option<String> {
        if error::which_ssh().is_none() {
            return self.setup_hint();
        }
        config
            .check_local_files()
            .err()
            .map(|e| e.message().to_string())
    }

    /// The control socket of the master shared by `config`'s sessions, while
    /// one is connected (for diagnostics: `ssh -O check -S <socket> host`).
    pub async fn control_socket(&self, config: &SshConfig) -> Option<std::path::PathBuf> {
        self.pool.get(config).control_socket().await
    }

    fn check_provider(operation: &str, provider_id: &str, what: &str) -> RunnerResult<()> {
        if provider_id != PROVIDER_ID {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: {what} is for provider {provider_id:?}, not {PROVIDER_ID}"
            )));
        }
        Ok(())
    }

    /// Checks the manifest against the capabilities: local entries only (the
    /// layer stack takes object-store mounts out before the provider sees
    /// the destination).
    fn check_manifest(destination: &RunnerDestination) -> RunnerResult<()> {
        validate_manifest(&destination.default_manifest, &capabilities())
    }

    /// Connects to `config`'s host and resolves, delivers and checks the
    /// agent binary for its platform. Returns the connection and the copy.
    ///
    /// Errors: `Unsupported` (no agent binary for the host's platform),
    /// `Unavailable` and `PermissionDenied` of the connection.
    async fn prepare(
        &self,
        operation: &str,
        config: &SshConfig,
    ) -> RunnerResult<(Arc<Connection>, PathBuf)> {
        let conn = self.pool.get(config);
        let link = conn.link().await?;
        let binary = agent::binary_for(operation, &self.pool, &link, config).await?;
        let copy = agent::deliver(&link, config, &binary).await?;
        Ok((conn, copy))
    }

    /// Starts a new agent for a new session `session_id` and connects to
    /// it: a fresh workspace `<workspace_root>/<id>`, or with `fork` the
    /// snapshot of that id unpacked by the agent into a fresh directory
    /// under `workspace_root`. The session directory `<state_dir>/<id>`
    /// (0700) holds the socket, the agent's log and the owner marker.
    async fn launch(
        &self,
        operation: &str,
        destination_id: &str,
        config: SshConfig,
        fork: Option<&str>,
    ) -> RunnerResult<Arc<SshSession>> {
        let (conn, copy) = self.prepare(operation, &config).await?;
        let link = conn.link().await?;
        let session_id = new_session_id();
        let workspace_root = remote_dir(&link, &config.workspace_root);
        let snapshot_dir = remote_dir(&link, &config.snapshot_dir);
        let session_dir = remote_dir(&link, &config.state_dir).join(&session_id);
        for dir in [&workspace_root, &snapshot_dir, &session_dir] {
            host::make_private_dirs(&link, dir).await?;
        }
        let root = fork.is_none().then(|| workspace_root.join(&session_id));
        let marker = ownership::OwnerMarker::for_session(
            &session_id,
            root.as_deref().unwrap_or(&workspace_root),
        );
        let started = async {
            ownership::write_marker(&link, &session_dir.join(ownership::MARKER), &marker).await?;
            let resume = fork
                .map(|id| serde_json::to_value(snapshot::agent_resume(destination_id, id)))
                .transpose()
                .map_err(|e| {
                    RunnerError::provider(format!("{operation}: encoding the resume state: {e}"))
                })?;
            agent::start(
                &link,
                Start {
                    copy: &copy,
                    session_dir: &session_dir,
                    config: config.agent_config(root.as_deref(), &workspace_root, &snapshot_dir),
                    destination_id,
                    resume,
                },
            )
            .await
        }
        .await;
        if let Err(e) = started {
            for dir in root.iter().chain(std::iter::once(&session_dir)) {
                let _ = host::remove_tree(&link, dir).await;
            }
            return Err(e);
        }
        let socket = agent::socket_of(&link, &session_dir);
        let agent = AgentSession::connect(agent::connector(conn.clone(), copy, socket.clone()))
            .await
            .map_err(|e| {
                e.context(format!(
                    "{operation}: connecting to the agent in {}",
                    session_dir.display()
                ))
            })?;
        let session = Arc::new(SshSession::new(SessionSetup {
            agent,
            conn,
            config,
            session_id,
            destination_id: destination_id.to_string(),
            session_dir,
            socket,
            snapshot_dir,
            read_only: Vec::new(),
        }));
        session.write_marker(false).await?;
        Ok(session)
    }
}

/// A tar of a local manifest source (a file, or a directory's contents),
/// packed on a blocking thread as it is read ([`runner_kit::bridge::chunk_stream`]),
/// and whether the source is a directory.
fn manifest_tar(entry: &RunnerManifestEntry) -> RunnerResult<(RunnerByteStream, bool)> {
    let source = entry.source.clone();
    let failed =
        move |e: std::io::Error| RunnerError::from_io("manifest entry", source.display(), e);
    let is_dir = std::fs::metadata(&entry.source).map_err(&failed)?.is_dir();
    let source = entry.source.clone();
    let name = entry
        .target
        .file_name()
        .map_or_else(|| "file".into(), PathBuf::from);
    let archive = runner_kit::bridge::chunk_stream("manifest entry", move |out| {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        if is_dir {
            builder.append_dir_all(".", &source)
        } else {
            builder.append_path_with_name(&source, name)
        }
        .and_then(|()| builder.finish())
        .map_err(failed)
    });
    Ok((archive, is_dir))
}

/// Copies the manifest entries into the bare `session`'s workspace, in
/// order, as archives the agent unpacks (it refuses a target that an earlier
/// entry's symlink leads out of the workspace).
async fn apply_manifest(session: &SshSession, entries: &[RunnerManifestEntry]) -> RunnerResult<()> {
    for entry in entries {
        let (archive, is_dir) = manifest_tar(entry)?;
        let target = if is_dir {
            entry.target.clone()
        } else {
            entry
                .target
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        let target = if target.as_os_str().is_empty() {
            ".".into()
        } else {
            target
        };
        let context =
            |e: RunnerError| e.context(format!("manifest entry {}", entry.target.display()));
        session
            .upload_archive_stream(&target, archive)
            .await
            .map_err(context)?;
    }
    Ok(())
}

/// The session metadata `state` carries.
/// Errors: `InvalidRequest` when it is not an ssh session's.
fn session_meta(operation: &str, state: &RunnerSessionState) -> RunnerResult<SessionMeta> {
    serde_json::from_value(state.metadata.clone())
        .map_err(|e| RunnerError::invalid_request(format!("{operation}: bad state metadata: {e}")))
}

#[async_trait]
impl RemoteRunnerProvider for SshProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        PROVIDER_ID.to_string()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        capabilities()
    }

    /// Says so when the `ssh` client binary is not on `PATH`, or when a
    /// destination this provider was asked for names an identity or
    /// known_hosts file it cannot read (by path, never contents).
    fn setup_hint(&self) -> Option<String> {
        if error::which_ssh().is_none() {
            return Some(
                "the ssh provider needs the OpenSSH client: install `ssh` (Debian: apt-get install openssh-client)".into(),
            );
        }
        self.pool
            .configs()
            .iter()
            .find_map(|config| config.check_local_files().err())
            .map(|e| e.message().to_string())
    }

    /// Checks the config, the local key and known_hosts files and the
    /// manifest, then connects and checks that an agent binary is there for
    /// the host's platform (`uname -s -m`, once per host).
    ///
    /// Errors: `InvalidRequest` (config, manifest), `Unsupported` (no agent
    /// binary for the host's platform, naming it and the build command), and
    /// the connection's `Unavailable` and `PermissionDenied`.
    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        const OP: &str = "validate_destination";
        Self::check_provider(OP, &destination.provider_id, "the destination")?;
        let config = SshConfig::from_destination(destination)?;
        config.check_local_files()?;
        Self::check_manifest(destination)?;
        let link = self.pool.get(&config).link().await?;
        agent::binary_for(OP, &self.pool, &link, &config).await?;
        Ok(())
    }

    /// Starts a runner agent for the session on the host (delivering the
    /// binary first when the host has no checked copy) and copies the
    /// manifest entries into its workspace.
    ///
    /// Errors: `Unsupported` up front when no agent binary is for the host's
    /// platform; the agent's own error when it cannot open the session.
    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "create_session";
        Self::check_provider(OP, &destination.provider_id, "the destination")?;
        let config = SshConfig::from_destination(&destination)?;
        Self::check_manifest(&destination)?;
        self.trust_destination(&destination);
        let session = self.launch(OP, &destination.id, config, None).await?;
        let entries = &destination.default_manifest.entries;
        let applied = async {
            apply_manifest(&session, entries).await?;
            session.protect(entries.clone()).await
        }
        .await;
        if let Err(e) = applied {
            let _ = RemoteRunnerSession::close(session.as_ref()).await;
            return Err(e);
        }
        Ok(session)
    }

    /// With `state.snapshot`: a new session whose agent unpacks the
    /// snapshot into a fresh workspace (a fork). Without: the same as
    /// `rejoin_session`.
    ///
    /// Everything that decides where the session lives comes from the
    /// destination `state.destination_id` names (see
    /// [`with_destination`](SshProvider::with_destination)): the snapshot
    /// archive is `<snapshot_dir>/<snapshot id>.tar` of that destination.
    ///
    /// Errors: `InvalidRequest` (another provider's state, an unknown
    /// destination, a bad snapshot id), `PermissionDenied` (the state or the
    /// snapshot names another host), `NotFound` (no such snapshot archive).
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "resume_session";
        Self::check_provider(OP, &state.provider_id, "the state")?;
        let Some(snapshot_ref) = state.snapshot.clone() else {
            return self.rejoin_session(state).await;
        };
        let config = self.config_of(OP, &state)?;
        let source = session_meta(OP, &state).ok();
        if let Some(source) = &source {
            source.check_destination(OP, &state.session_id, &config)?;
        }
        if let Ok(meta) =
            serde_json::from_value::<snapshot::SnapshotMeta>(snapshot_ref.metadata.clone())
        {
            meta.check_destination(&snapshot_ref.snapshot_id, &config)?;
        }
        // The snapshot is found before anything is created for the copy.
        let link = self.pool.get(&config).link().await?;
        let snapshot_dir = remote_dir(&link, &config.snapshot_dir);
        snapshot::archive_of(&link, &snapshot_dir, &snapshot_ref).await?;
        let session = self
            .launch(
                OP,
                &state.destination_id,
                config,
                Some(&snapshot_ref.snapshot_id),
            )
            .await?;
        if let Some(source) = &source {
            // The snapshot holds the entries; the new agent protects them again.
            let entries = source
                .read_only
                .iter()
                .map(|target| RunnerManifestEntry {
                    source: PathBuf::new(),
                    target: target.clone(),
                    writable: false,
                })
                .collect();
            if let Err(e) = session.protect(entries).await {
                let _ = RemoteRunnerSession::close(session.as_ref()).await;
                return Err(e);
            }
        }
        Ok(session)
    }

    /// Reattaches to a detached session: a new connection to the agent that
    /// still serves it (same workspace, every command still running with
    /// its numbered output).
    ///
    /// The session is looked for on the destination `state.destination_id`
    /// names, in `<state_dir>/<session id>` of that destination; the state's
    /// session directory and socket must be those, and its workspace the
    /// one the agent serves.
    ///
    /// Errors: `InvalidRequest` (another provider's state, an unknown
    /// destination, a bad session id), `PermissionDenied` naming what the
    /// state gave (another host, a session directory outside the
    /// destination's, a symlink, another workspace), `NotFound` (the
    /// session directory or its agent is gone).
    async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        const OP: &str = "rejoin_session";
        Self::check_provider(OP, &state.provider_id, "the state")?;
        let config = self.config_of(OP, &state)?;
        let meta = session_meta(OP, &state)?;
        let id = &state.session_id;
        meta.check_destination(OP, id, &config)?;
        let (conn, copy) = self.prepare(OP, &config).await?;
        let link = conn.link().await?;
        let session_dir = remote_dir(&link, &config.state_dir).join(id);
        let socket = agent::socket_of(&link, &session_dir);
        for (what, given, own) in [
            ("session directory", &meta.session_dir, &session_dir),
            ("agent socket", &meta.socket, &socket),
        ] {
            if runner_api::normalize_lexically(given) != runner_api::normalize_lexically(own) {
                return Err(RunnerError::permission_denied(format!(
                    "{OP} {id}: the state's {what} {} is not {}, the session's under the \
                     destination's state_dir",
                    given.display(),
                    own.display()
                )));
            }
        }
        match host::lstat(&link, &session_dir).await? {
            None => {
                return Err(RunnerError::not_found(format!(
                    "{OP} {id}: the session directory {} no longer exists",
                    session_dir.display()
                )));
            }
            Some(found) if host::is_dir(&found) => {}
            Some(_) => {
                return Err(RunnerError::permission_denied(format!(
                    "{OP} {id}: the session directory {} is not a directory (a symlink leads \
                     elsewhere); refusing to rejoin",
                    session_dir.display()
                )));
            }
        }
        if host::lstat(&link, &socket).await?.is_none() {
            return Err(RunnerError::not_found(format!(
                "{OP} {id}: no agent serves the session any more ({} is gone)",
                socket.display()
            )));
        }
        let agent = AgentSession::connect(agent::connector(conn.clone(), copy, socket.clone()))
            .await
            .map_err(|e| e.context(format!("{OP} {id}")))?;
        let workspace = RemoteRunnerSession::workspace_root(&agent);
        if runner_api::normalize_lexically(&meta.workspace) != workspace {
            return Err(RunnerError::permission_denied(format!(
                "{OP} {id}: the state's workspace {} is not {}, the one the session's agent serves",
                meta.workspace.display(),
                workspace.display()
            )));
        }
        match host::lstat(&link, &workspace).await? {
            None => {
                return Err(RunnerError::not_found(format!(
                    "{OP} {id}: the workspace {} no longer exists",
                    workspace.display()
                )));
            }
            Some(found) if host::is_dir(&found) => {}
            Some(_) => {
                return Err(RunnerError::permission_denied(format!(
                    "{OP} {id}: the workspace {} is not a directory (a symlink leads \
                     elsewhere); refusing to rejoin",
                    workspace.display()
                )));
            }
        }
        let snapshot_dir = remote_dir(&link, &config.snapshot_dir);
        let session = Arc::new(SshSession::new(SessionSetup {
            agent,
            conn,
            config,
            session_id: id.clone(),
            destination_id: state.destination_id.clone(),
            session_dir,
            socket,
            snapshot_dir,
            read_only: meta.read_only.clone(),
        }));
        session.write_marker(false).await?;
        Ok(session)
    }

    /// Remembers `destination` by its id for `resume_session` and
    /// `rejoin_session` (see [`SshProvider::with_destination`], which also
    /// checks it).
    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
    }

    /// Sweeps every destination given with
    /// [`with_sweep_destination`](SshProvider::with_sweep_destination) and
    /// every destination this provider has connected to: session directories
    /// and workspaces whose owner process is gone (or that were detached) are
    /// removed after the destination's `orphan_grace_s`, once their agent is
    /// closed (every process of the session ends); finished snapshots of gone
    /// sessions after `snapshot_grace_s`. See the ownership rule in
    /// `docs/providers/ssh.md`.
    ///
    /// Errors: the first destination that cannot be reached (`Unavailable`,
    /// `PermissionDenied`) or swept ends the sweep with its error, naming it.
    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        let mut report = RunnerSweepReport::default();
        let mut targets = self.sweep_targets.clone();
        for config in self.pool.configs() {
            if !targets.contains(&config) {
                targets.push(config);
            }
        }
        for config in targets {
            let conn = self.pool.get(&config);
            let link = conn.link().await?;
            ownership::sweep(&self.pool, &conn, &link, &config, &mut report)
                .await
                .map_err(|e| e.context(format!("sweep_orphans {}", config.destination_label())))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;

    #[test]
    fn setup_hint_names_an_unreadable_key_by_path() {
        let mut config = SshConfig::new("127.0.0.1");
        config.identity_file = Some("/nonexistent/runner-ssh-key".into());
        let hint = SshProvider::new()
            .setup_hint_for(&config)
            .expect("a hint for a missing key");
        assert!(hint.contains("/nonexistent/runner-ssh-key"), "{hint}");
        assert!(hint.contains("identity_file"), "{hint}");
    }

    #[test]
    fn sweep_destinations_are_checked_when_given() {
        let mut destination = RunnerDestination {
            id: "d".into(),
            provider_id: "docker".into(),
            config: serde_json::json!({ "host": "h" }),
            default_manifest: Default::default(),
            artifacts: None,
        };
        let kind = |d: &RunnerDestination| {
            SshProvider::new()
                .with_sweep_destination(d)
                .err()
                .map(|e| e.kind())
        };
        assert_eq!(kind(&destination), Some(RunnerErrorKind::InvalidRequest));
        destination.provider_id = PROVIDER_ID.into();
        destination.config = serde_json::json!({ "host": "h", "bogus": 1 });
        assert_eq!(kind(&destination), Some(RunnerErrorKind::InvalidRequest));
        destination.config = serde_json::json!({ "host": "h", "orphan_grace_s": 0 });
        assert_eq!(kind(&destination), None);
    }

    #[test]
    fn bare_capabilities_leave_mounts_and_artifacts_to_the_stack() {
        let caps = capabilities();
        assert!(caps.detachable && caps.background_processes && caps.snapshot_restore);
        assert!(caps.execution_lease && caps.run_as_user && caps.archive_transfer);
        assert!(!caps.artifact_export);
        assert_eq!(caps.mounts, RunnerMountCapabilities::default());
    }
}
