//! Snapshots: the workspace as a tar (the agent's `download_archive`),
//! stored in the destination's `snapshot_store` object store at
//! `<prefix>/kubernetes-snapshots/<snapshot id>.tar`; a session resumed
//! from one is a new pod with the tar unpacked into its workspace.

use std::sync::Arc;

use runner_api::{RunnerError, RunnerErrorKind, RunnerResult, RunnerSnapshotRef};
use runner_mounts::object_store::path::Path as StorePath;
use runner_mounts::object_store::{self, ObjectStore, ObjectStoreExt, PutPayload};
use runner_mounts::{SecretResolver, StoreSpec};

use crate::PROVIDER_ID;

/// The folder of snapshots under the artifact store's prefix.
const FOLDER: &str = "kubernetes-snapshots";

/// Where the snapshots of one destination are kept.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    spec: Option<StoreSpec>,
    resolver: Arc<dyn SecretResolver>,
    destination_id: String,
}

/// Whether `id` is a snapshot id this provider makes (32 hex digits).
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn store_error(operation: &str, key: &StorePath, error: object_store::Error) -> RunnerError {
    let kind = match &error {
        object_store::Error::NotFound { .. } => RunnerErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => RunnerErrorKind::PermissionDenied,
        _ => RunnerErrorKind::Unavailable,
    };
    RunnerError::new(
        kind,
        format!("{operation}: the snapshot store object {key}: {error}"),
    )
}

impl SnapshotStore {
    /// The `snapshot_store` of destination `destination_id`, with
    /// credentials from `resolver`.
    pub(crate) fn new(
        spec: Option<StoreSpec>,
        destination_id: &str,
        resolver: Arc<dyn SecretResolver>,
    ) -> Self {
        Self {
            spec,
            resolver,
            destination_id: destination_id.to_string(),
        }
    }

    /// Whether the destination keeps snapshots.
    pub(crate) fn configured(&self) -> bool {
        self.spec.is_some()
    }

    /// The store client and the key of snapshot `id`.
    async fn open(
        &self,
        operation: &str,
        id: &str,
    ) -> RunnerResult<(Arc<dyn ObjectStore>, StorePath)> {
        let Some(spec) = &self.spec else {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: destination {:?} names no `snapshot_store` to keep snapshots in",
                self.destination_id
            )));
        };
        let (store, prefix) = spec.open(operation, self.resolver.as_ref()).await?;
        let key = prefix.join(FOLDER).join(format!("{id}.tar").as_str());
        Ok((store, key))
    }

    /// Stores `tar` (the workspace of session `session_id`) as a new snapshot.
    ///
    /// Errors: `InvalidRequest` without a `snapshot_store`, the store's.
    pub(crate) async fn put(
        &self,
        session_id: &str,
        tar: Vec<u8>,
    ) -> RunnerResult<RunnerSnapshotRef> {
        const OP: &str = "snapshot";
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (store, key) = self.open(OP, &id).await?;
        let size = tar.len();
        store
            .put(&key, PutPayload::from(tar))
            .await
            .map_err(|e| store_error(OP, &key, e))?;
        tracing::info!(session_id, snapshot_id = %id, bytes = size, "kubernetes snapshot stored");
        Ok(RunnerSnapshotRef {
            provider_id: PROVIDER_ID.to_string(),
            snapshot_id: id,
            metadata: serde_json::json!({
                "session_id": session_id,
                "destination_id": self.destination_id,
                "bytes": size,
            }),
        })
    }

    /// The tar of `snapshot`.
    ///
    /// Errors: `NotFound` for an id this provider did not make or a snapshot
    /// the store does not hold, `InvalidRequest` without a `snapshot_store`,
    /// the store's.
    pub(crate) async fn get(&self, snapshot: &RunnerSnapshotRef) -> RunnerResult<Vec<u8>> {
        const OP: &str = "resume_session";
        let id = &snapshot.snapshot_id;
        if !valid_id(id) {
            return Err(RunnerError::not_found(format!(
                "{OP}: {id:?} is not a snapshot of the kubernetes provider"
            )));
        }
        let (store, key) = self.open(OP, id).await?;
        let got = store
            .get(&key)
            .await
            .map_err(|e| store_error(OP, &key, e))?;
        let bytes = got.bytes().await.map_err(|e| store_error(OP, &key, e))?;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ours() {
        assert!(valid_id(&uuid::Uuid::new_v4().simple().to_string()));
        assert!(!valid_id("conformance-no-such-snapshot"));
        assert!(!valid_id("../../etc/passwd"));
    }
}
