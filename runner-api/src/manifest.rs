//! Manifest and relative-path checks every provider and layer shares.

use std::path::{Component, Path};

use crate::{
    RunnerCapabilities, RunnerError, RunnerErrorKind, RunnerManifest, RunnerMountKind, RunnerResult,
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
