//! Snapshots: the container's filesystem committed to a labelled image.
//!
//! A snapshot holds every file of the container (the workspace and everything
//! else the session changed), not the contents of bind mounts, and no
//! processes. Restoring starts a new container from the image.

use std::collections::HashMap;

use bollard::models::ContainerConfig;
use bollard::query_parameters::CommitContainerOptionsBuilder;
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult, RunnerSnapshotRef};

use crate::error::Daemon;
use crate::orphans::{now_ms, this_owner};
use crate::{
    LABEL_CREATED_MS, LABEL_KIND, LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, MARKER_VALUE,
    PROVIDER_ID, SNAPSHOT_REPOSITORY,
};

/// Commits `container` to `runners-snapshot:<unique tag>` with the library's labels.
pub(crate) async fn take(
    daemon: &Daemon,
    container: &str,
    session_id: &str,
) -> RunnerResult<RunnerSnapshotRef> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let labels = HashMap::from([
        (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
        (LABEL_SESSION.to_string(), session_id.to_string()),
        (LABEL_OWNER.to_string(), this_owner().to_string()),
        (LABEL_CREATED_MS.to_string(), now_ms().to_string()),
        (LABEL_KIND.to_string(), "snapshot".to_string()),
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

/// The image of a snapshot, checked to exist on the daemon.
///
/// Errors: `NotFound` naming the snapshot.
pub(crate) async fn locate(daemon: &Daemon, snapshot: &RunnerSnapshotRef) -> RunnerResult<String> {
    let id = &snapshot.snapshot_id;
    if id.is_empty() || id.contains('\0') {
        return Err(RunnerError::invalid_request(
            "resume_session: the snapshot id is empty or contains a NUL byte",
        ));
    }
    match daemon.docker.inspect_image(id).await {
        Ok(image) => {
            let ours = image
                .config
                .and_then(|c| c.labels)
                .is_some_and(|l| l.get(LABEL_MARKER).map(String::as_str) == Some(MARKER_VALUE));
            if !ours {
                return Err(RunnerError::not_found(format!(
                    "resume_session: image {id} is not a snapshot of this provider"
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
