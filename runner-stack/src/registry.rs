//! Providers by id, each wrapped in the registry's [`Stack`], with
//! validation before every session.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCapabilities, RunnerDestination, RunnerError,
    RunnerErrorKind, RunnerResult, RunnerSessionState, ThreadRunnerBinding,
};

use crate::Stack;
use crate::stack::StackedProvider;

/// A provider as listed by [`RunnerRegistry::providers`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerProviderInfo {
    /// Provider id.
    pub id: String,
    /// What its sessions can do.
    pub capabilities: RunnerCapabilities,
    /// Setup guidance when not ready.
    pub setup_hint: Option<String>,
    /// Default workspace path, if any.
    pub default_workspace: Option<String>,
}

/// Providers by id, each wrapped in the registry's [`Stack`] when it is
/// registered, so every session comes back composed (see [`Stack`]). Every
/// session is created through
/// [`validate_destination`](RemoteRunnerProvider::validate_destination) first.
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    stack: Stack,
    providers: BTreeMap<String, Arc<StackedProvider>>,
}

impl std::fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.providers.keys()).finish()
    }
}

impl RunnerRegistry {
    /// An empty registry with [`Stack::new`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose providers are wrapped in `stack` (for a
    /// secret resolver of its own: `Stack::new().with_resolver(…)`).
    pub fn with_stack(stack: Stack) -> Self {
        Self {
            stack,
            providers: BTreeMap::new(),
        }
    }

    /// Adds a provider, wrapped in the registry's stack: register the bare
    /// provider, not one already [`stacked`](crate::stacked).
    ///
    /// Errors: `AlreadyExists` when its id is taken.
    pub fn register(&mut self, provider: Arc<dyn RemoteRunnerProvider>) -> RunnerResult<()> {
        let id = provider.id();
        if self.providers.contains_key(&id) {
            return Err(RunnerError::new(
                RunnerErrorKind::AlreadyExists,
                format!("register: a provider with id {id:?} is already registered"),
            ));
        }
        self.providers
            .insert(id, Arc::new(self.stack.wrap(provider)));
        Ok(())
    }

    /// The provider with `id`, as stacked by the registry.
    pub fn get(&self, id: &str) -> Option<Arc<dyn RemoteRunnerProvider>> {
        self.providers
            .get(id)
            .map(|p| p.clone() as Arc<dyn RemoteRunnerProvider>)
    }

    fn require(&self, operation: &str, id: &str) -> RunnerResult<Arc<StackedProvider>> {
        self.providers.get(id).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
            RunnerError::not_found(format!(
                "{operation}: no provider {id:?} is registered (registered: {})",
                known.join(", ")
            ))
        })
    }

    /// Every provider with its capabilities and setup hint, by id.
    pub fn providers(&self) -> Vec<RunnerProviderInfo> {
        self.providers
            .values()
            .map(|p| RunnerProviderInfo {
                id: p.id(),
                capabilities: p.capabilities(),
                setup_hint: p.setup_hint(),
                default_workspace: p.default_workspace(),
            })
            .collect()
    }

    /// Validates `destination` with its provider. Errors: `NotFound` (no such
    /// provider) and the provider's validation errors.
    pub async fn validate_destination(&self, destination: &RunnerDestination) -> RunnerResult<()> {
        self.require("validate_destination", &destination.provider_id)?
            .validate_destination(destination)
            .await
    }

    /// Validates the binding's destination, then creates a session for it,
    /// composed once with the workspace layer at the binding's `workspace`
    /// and `read_roots` instead of the session's own root: writes and working
    /// directories stay under `workspace`, reads may also resolve under the
    /// read roots. A relative `workspace` (the empty path included) is taken
    /// under the session's own workspace root.
    ///
    /// Errors: `NotFound` (no such provider), and those of
    /// [`create_session`](Self::create_session).
    pub async fn open(
        &self,
        binding: ThreadRunnerBinding,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let provider = self.require("open", &binding.destination.provider_id)?;
        provider.validate_destination(&binding.destination).await?;
        provider.open_binding(binding).await
    }

    /// Validates `destination`, then creates a session for it, confined to
    /// the session's own workspace root.
    pub async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let provider = self.require("create_session", &destination.provider_id)?;
        provider.validate_destination(&destination).await?;
        provider.create_session(destination).await
    }

    /// Resumes a session with the provider named in `state`.
    pub async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.require("resume_session", &state.provider_id)?
            .resume_session(state)
            .await
    }

    /// Rejoins a detached session with the provider named in `state`.
    pub async fn rejoin_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        self.require("rejoin_session", &state.provider_id)?
            .rejoin_session(state)
            .await
    }
}
