//! Snapshots: the container's filesystem committed to a labelled image.
//!
//! A snapshot holds every file of the container (the workspace and everything
//! else the session changed), not the contents of bind mounts, and no
//! processes. Restoring starts a new container from the image.
//!
//! Docker gives a container started from an image the image's labels, so a
//! snapshot image carries kind `snapshot` (never `session`) and `keep`
//! `false`: a container someone starts from it by hand inherits those, and
//! neither `sweep_orphans` nor `rejoin_session` takes it for a session.

use std::collections::HashMap;

use bollard::models::ContainerConfig;
use bollard::query_parameters::CommitContainerOptionsBuilder;
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult, RunnerSnapshotRef};

use crate::error::Daemon;
use crate::orphans::{now_ms, this_owner};
use crate::{
    KIND_SNAPSHOT, LABEL_CREATED_MS, LABEL_DESTINATION, LABEL_KEEP, LABEL_KIND, LABEL_MARKER,
    LABEL_OWNER, LABEL_SESSION, MARKER_VALUE, PROVIDER_ID, SNAPSHOT_REPOSITORY,
};

/// Commits `container` to `runners-snapshot:<unique tag>` with the library's
/// labels (replacing the session labels the container has).
pub(crate) async fn take(
    daemon: &Daemon,
    container: &str,
    session_id: &str,
    destination_id: &str,
) -> RunnerResult<RunnerSnapshotRef> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let labels = HashMap::from([
        (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
        (LABEL_SESSION.to_string(), session_id.to_string()),
        (LABEL_DESTINATION.to_string(), destination_id.to_string()),
        (LABEL_OWNER.to_string(), this_owner().to_string()),
        (LABEL_CREATED_MS.to_string(), now_ms().to_string()),
        (LABEL_KIND.to_string(), KIND_SNAPSHOT.to_string()),
        (LABEL_KEEP.to_string(), "false".to_string()),
    ]);
    let options = CommitContainerOptionsBuilder::new()
        .container(container)
        .repo(SNAPSHOT_REPOSITORY)
        .tag(&tag)
        .pause(true)
        .build();
    let config = ContainerConfig {
        labels: Some(labels),
        ..Default::default()
    };
    let committed = daemon
        .docker
        .commit_container(options, config)
        .await
        .map_err(|e| daemon.error("snapshot", container, e))?;
    let image_id = committed.id;
    tracing::info!(session_id, image = %image_id, "snapshot taken");
    Ok(RunnerSnapshotRef {
        provider_id: PROVIDER_ID.to_string(),
        snapshot_id: image_id,
        metadata: serde_json::json!({
            "image": format!("{SNAPSHOT_REPOSITORY}:{tag}"),
            "session_id": session_id,
        }),
    })
}

/// The image of a snapshot, checked to exist on the daemon and to be a
/// snapshot this library took of a session of `destination_id`.
///
/// Errors: `NotFound` naming the snapshot.
pub(crate) async fn locate(
    daemon: &Daemon,
    snapshot: &RunnerSnapshotRef,
    destination_id: &str,
) -> RunnerResult<String> {
    let id = &snapshot.snapshot_id;
    if id.is_empty() || id.contains('\0') {
        return Err(RunnerError::invalid_request(
            "resume_session: the snapshot id is empty or contains a NUL byte",
        ));
    }
    match daemon.docker.inspect_image(id).await {
        Ok(image) => {
            let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
            let label = |key: &str| labels.get(key).map(String::as_str);
            let ours = label(LABEL_MARKER) == Some(MARKER_VALUE)
                && label(LABEL_KIND) == Some(KIND_SNAPSHOT)
                && label(LABEL_DESTINATION) == Some(destination_id);
            if !ours {
                return Err(RunnerError::not_found(format!(
                    "resume_session: image {id} is not a snapshot this provider took of \
                     destination {destination_id:?}"
                )));
            }
            Ok(image.id.unwrap_or_else(|| id.clone()))
        }
        Err(e) => {
            let mapped = daemon.error("resume_session: snapshot", id, e);
            if mapped.kind() == RunnerErrorKind::InvalidRequest {
                // A malformed reference is just as absent.
                return Err(RunnerError::not_found(mapped.message().to_string()));
            }
            Err(mapped)
        }
    }
}
