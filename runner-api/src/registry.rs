//! Providers by id, with validation before every session.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCapabilities, RunnerDestination, RunnerError,
    RunnerErrorKind, RunnerManifest, RunnerMountKind, RunnerResult, RunnerSessionState,
};

/// Checks that `path` is relative and stays inside the workspace lexically.
pub fn validate_relative_path(what: &str, path: &Path) -> RunnerResult<()> {
    crate::reject_nul_path(what, path)?;
    let ok = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(RunnerError::invalid_request(format!(
            "{what}: {} must be a relative path inside the workspace without `..`",
            path.display()
        )));
    }
    Ok(())
}

/// Checks a manifest against capabilities: entry targets and mount paths are
/// relative without `..`, mount names are unique, and every mount kind is
/// supported. `box_storage` is always refused: it has no object_store backend.
///
/// Errors: `InvalidRequest` naming the entry or mount, `Unsupported` for a kind.
pub fn validate_manifest(
    manifest: &RunnerManifest,
    capabilities: &RunnerCapabilities,
) -> RunnerResult<()> {
    for entry in &manifest.entries {
        validate_relative_path(
            &format!("manifest entry {}", entry.source.display()),
            &entry.target,
        )?;
    }
    let mut names = std::collections::HashSet::new();
    for mount in &manifest.mounts {
        let what = format!("mount {:?}", mount.name);
        if !names.insert(mount.name.as_str()) {
            return Err(RunnerError::invalid_request(format!(
                "{what}: duplicate mount name"
            )));
        }
        validate_relative_path(&what, &mount.path)?;
        if mount.intent.kind == RunnerMountKind::BoxStorage {
            return Err(RunnerError::invalid_request(format!(
                "{what}: box_storage mounts are not supported: Box has no object_store backend; \
                 sync the files with a provider_native or s3 mount instead"
            )));
        }
        if !capabilities.mounts.supports(&mount.intent.kind) {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!(
                    "{what}: mount kind {:?} is not supported by this provider",
                    mount.intent.kind
                ),
            ));
        }
    }
    Ok(())
}

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

/// Providers by id. Every session is created through
/// [`validate_destination`](RemoteRunnerProvider::validate_destination) first.
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    providers: BTreeMap<String, Arc<dyn RemoteRunnerProvider>>,
}

impl RunnerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider. Errors: `AlreadyExists` when its id is taken.
    pub fn register(&mut self, provider: Arc<dyn RemoteRunnerProvider>) -> RunnerResult<()> {
        let id = provider.id();
        if self.providers.contains_key(&id) {
            return Err(RunnerError::new(
                RunnerErrorKind::AlreadyExists,
                format!("register: a provider with id {id:?} is already registered"),
            ));
        }
        self.providers.insert(id, provider);
        Ok(())
    }

    /// The provider with `id`.
    pub fn get(&self, id: &str) -> Option<Arc<dyn RemoteRunnerProvider>> {
        self.providers.get(id).cloned()
    }

    fn require(&self, operation: &str, id: &str) -> RunnerResult<Arc<dyn RemoteRunnerProvider>> {
        self.get(id).ok_or_else(|| {
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

    /// Validates `destination`, then creates a session for it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunnerMount, RunnerMountIntent};

    fn mount(kind: RunnerMountKind, path: &str) -> RunnerMount {
        RunnerMount {
            name: "m".into(),
            path: path.into(),
            read_only: false,
            intent: RunnerMountIntent {
                kind,
                uri: "x".into(),
                credentials: None,
            },
        }
    }

    #[test]
    fn box_storage_is_refused_with_reason() {
        let manifest = RunnerManifest {
            entries: vec![],
            mounts: vec![mount(RunnerMountKind::BoxStorage, "m")],
        };
        let err =
            validate_manifest(&manifest, &RunnerCapabilities::default()).expect_err("refused");
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("object_store"));
    }

    #[test]
    fn unsupported_kind_and_escaping_paths_are_refused() {
        let manifest = RunnerManifest {
            entries: vec![],
            mounts: vec![mount(RunnerMountKind::S3, "m")],
        };
        let err =
            validate_manifest(&manifest, &RunnerCapabilities::default()).expect_err("unsupported");
        assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
        let mut caps = RunnerCapabilities::default();
        caps.mounts.s3 = true;
        let manifest = RunnerManifest {
            entries: vec![],
            mounts: vec![mount(RunnerMountKind::S3, "../up")],
        };
        assert_eq!(
            validate_manifest(&manifest, &caps).map_err(|e| e.kind()),
            Err(RunnerErrorKind::InvalidRequest)
        );
    }
}
