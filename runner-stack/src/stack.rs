//! `Stack`: what every session of a provider gets on top of the provider's
//! own session, composed once.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession, RunnerCapabilities,
    RunnerDestination, RunnerError, RunnerResult, RunnerSessionState, RunnerSweepReport,
    SessionLayer, ThreadRunnerBinding,
};
use runner_kit::KnownDestinations;
use runner_mounts::{EnvSecretResolver, MountedSession, SecretResolver};

use crate::{CorrectnessLayer, RemoteWorkspace, TracingLayer};

/// The layer stack every session of a wrapped provider comes back in, from
/// the outside in:
///
/// 1. the correctness layer ([`CheckedSession`](crate::CheckedSession)):
///    closed-session and capability checks;
/// 2. the tracing layer ([`TracedSession`](crate::TracedSession)): one span
///    per operation;
/// 3. workspace confinement ([`RemoteWorkspace`]) at the session's workspace
///    root (or, through [`RunnerRegistry::open`](crate::RunnerRegistry::open),
///    at a binding's workspace and read roots);
/// 4. object-store mounts and artifact export
///    ([`MountedSession`](runner_mounts::MountedSession)), so materialization
///    and sync go through the provider's own file API;
/// 5. the provider's own session.
///
/// `Stack::new()` resolves mount and artifact-store credentials from the
/// environment ([`EnvSecretResolver`]); [`with_resolver`](Self::with_resolver)
/// changes that.
#[derive(Clone)]
pub struct Stack {
    resolver: Arc<dyn SecretResolver>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Stack {
    /// A stack resolving credentials with [`EnvSecretResolver`].
    pub fn new() -> Self {
        Self {
            resolver: Arc::new(EnvSecretResolver::new()),
        }
    }

    /// Resolves mount and artifact-store credentials with `resolver`.
    pub fn with_resolver(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Wraps a provider: every session it creates, resumes or rejoins comes
    /// back composed as this stack says (see [`Stack`]).
    ///
    /// The wrapped provider's `capabilities()` add the compiled-in
    /// object-store mount kinds and `artifact_export` when the provider has
    /// `file_read`, `file_write` and `file_management` (a session claims
    /// `artifact_export` only when its destination names an artifact store).
    /// `validate_destination` checks the stores, the manifest against those
    /// capabilities and the moved `config.artifacts` key, then hands the
    /// provider the destination without store mounts and artifact store, as
    /// `create_session` and `trust_destination` do. Resumed and rejoined
    /// sessions get the artifact store of the destination the state names
    /// (one given to `create_session` or `trust_destination`), and no mount
    /// is materialized again.
    pub fn provider(&self, inner: Arc<dyn RemoteRunnerProvider>) -> Arc<dyn RemoteRunnerProvider> {
        Arc::new(self.wrap(inner))
    }

    pub(crate) fn wrap(&self, inner: Arc<dyn RemoteRunnerProvider>) -> StackedProvider {
        StackedProvider {
            inner,
            resolver: self.resolver.clone(),
            destinations: KnownDestinations::default(),
        }
    }
}

/// `Stack::new().provider(Arc::new(provider))`.
pub fn stacked<P: RemoteRunnerProvider>(provider: P) -> Arc<dyn RemoteRunnerProvider> {
    Stack::new().provider(Arc::new(provider))
}

/// The destination as the provider itself sees it: the manifest without
/// object-store mounts, and no artifact store (the mounts layer owns both).
fn native(destination: &RunnerDestination) -> RunnerDestination {
    RunnerDestination {
        default_manifest: runner_mounts::native_manifest(&destination.default_manifest),
        artifacts: None,
        ..destination.clone()
    }
}

/// The key of `RunnerDestination.config` that named the artifact store
/// before the setting moved to [`RunnerDestination::artifacts`].
const MOVED_ARTIFACTS_KEY: &str = "artifacts";

/// Refuses the artifact store setting where it used to be.
fn refuse_moved_artifacts(destination: &RunnerDestination) -> RunnerResult<()> {
    let key = MOVED_ARTIFACTS_KEY;
    if destination.config.get(key).is_some() {
        return Err(RunnerError::invalid_request(format!(
            "destination {:?}: config.{key} is no longer read: the artifact store moved to the \
             destination's `{key}` field, next to `config` (\"{key}\": {{\"uri\": …}})",
            destination.id
        )));
    }
    Ok(())
}

/// Where the mounts layer takes its mounts and artifact store from.
enum Mounts<'a> {
    /// A new session: materialize the destination's store mounts.
    Fresh(&'a RunnerDestination),
    /// A resumed or rejoined one: the artifact store only, when the
    /// destination is known.
    Reattach(Option<&'a RunnerDestination>),
}

/// A provider wrapped by a [`Stack`].
pub(crate) struct StackedProvider {
    inner: Arc<dyn RemoteRunnerProvider>,
    resolver: Arc<dyn SecretResolver>,
    destinations: KnownDestinations,
}

impl StackedProvider {
    /// The stack's own checks of a destination, before the provider's.
    fn check(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        refuse_moved_artifacts(destination)?;
        runner_mounts::validate_stores(destination)?;
        runner_api::validate_manifest(&destination.default_manifest, &self.capabilities())
    }

    /// A new session of `destination`, confined to `binding`'s workspace and
    /// read roots (`None`: the session's own root).
    pub(crate) async fn open(
        &self,
        destination: RunnerDestination,
        binding: Option<(PathBuf, Vec<PathBuf>)>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.check(&destination)?;
        self.destinations.remember(&destination);
        let bare = self.inner.create_session(native(&destination)).await?;
        self.compose(bare, Mounts::Fresh(&destination), binding)
            .await
    }

    /// A session for a [`ThreadRunnerBinding`]: confined to its workspace (a
    /// relative one, the empty path included, under the session's own root)
    /// and read roots.
    pub(crate) async fn open_binding(
        &self,
        binding: ThreadRunnerBinding,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.open(
            binding.destination,
            Some((binding.workspace, binding.read_roots)),
        )
        .await
    }

    async fn compose(
        &self,
        bare: Arc<dyn RemoteRunnerSession>,
        mounts: Mounts<'_>,
        binding: Option<(PathBuf, Vec<PathBuf>)>,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let resolver = self.resolver.clone();
        let mounted = match mounts {
            Mounts::Fresh(destination) => {
                MountedSession::attach(bare, destination, resolver).await?
            }
            Mounts::Reattach(destination) => {
                MountedSession::reattach(bare, destination, resolver).await?
            }
        };
        let session_root = mounted.workspace_root();
        let (root, read_roots) = match binding {
            None => (session_root, Vec::new()),
            Some((workspace, read_roots)) if workspace.as_os_str().is_empty() => {
                (session_root, read_roots)
            }
            Some((workspace, read_roots)) => (session_root.join(workspace), read_roots),
        };
        let confined: Arc<dyn RemoteRunnerSession> =
            Arc::new(RemoteWorkspace::new(mounted, root).with_read_roots(read_roots));
        Ok(CorrectnessLayer.layer(TracingLayer.layer(confined)))
    }

    /// The destination `state` names, when one was given to this stack.
    fn known(&self, operation: &str, state: &RunnerSessionState) -> Option<RunnerDestination> {
        self.destinations
            .of_state(operation, state, "trust_destination")
            .ok()
    }
}

#[async_trait]
impl RemoteRunnerProvider for StackedProvider {
    fn id(&self) -> RemoteRunnerProviderId {
        self.inner.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        runner_mounts::mounted_capabilities(self.inner.capabilities(), true)
    }

    fn setup_hint(&self) -> Option<String> {
        self.inner.setup_hint()
    }

    fn default_workspace(&self) -> Option<String> {
        self.inner.default_workspace()
    }

    async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.check(destination)?;
        self.inner.validate_destination(&native(destination)).await
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.open(destination, None).await
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let known = self.known("resume_session", &state);
        let bare = self.inner.resume_session(state).await?;
        self.compose(bare, Mounts::Reattach(known.as_ref()), None)
            .await
    }

    async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let known = self.known("rejoin_session", &state);
        let bare = self.inner.rejoin_session(state).await?;
        self.compose(bare, Mounts::Reattach(known.as_ref()), None)
            .await
    }

    async fn sweep_orphans(&self) -> RunnerResult<RunnerSweepReport> {
        self.inner.sweep_orphans().await
    }

    fn trust_destination(&self, destination: &RunnerDestination) {
        self.destinations.remember(destination);
        self.inner.trust_destination(&native(destination));
    }
}
