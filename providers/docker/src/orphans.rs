//! Who owns a container or snapshot image, and removing those whose owner died.
//!
//! Every container and snapshot image carries the marker label, the session id
//! and an owner label `<hostname>/<boot id>/<pid>/<process start time>` naming
//! the process that created it. `sweep_orphans` removes a marked resource when
//! its owner ran on this host and is gone (the machine rebooted since, or no
//! process with that pid and start time exists), once it is older than the
//! grace period. Resources owned by processes of other hosts, detached sessions
//! and containers kept on close are left alone.
//!
//! Labels alone do not make a resource this library's: a container started
//! from a snapshot image inherits the image's labels. So a container counts
//! only with kind `session` and the name `runner-<its session label>` (a
//! container inherits labels, never a name), and an image only with kind
//! `snapshot` and a tag of the snapshot repository.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use runner_api::{RunnerErrorKind, RunnerResult, RunnerSweepReport};

use crate::error::Daemon;
use crate::socket::HostSocket;
use crate::{
    CONTAINER_PREFIX, DETACHED_PREFIX, KIND_SESSION, KIND_SNAPSHOT, LABEL_CREATED_MS, LABEL_KEEP,
    LABEL_KIND, LABEL_MARKER, LABEL_OWNER, LABEL_SESSION, MARKER_VALUE, SNAPSHOT_REPOSITORY,
};

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time of a process in clock ticks since boot (field 22 of its stat).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// The owner label value of this process.
pub(crate) fn this_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{}/{}/{pid}/{}",
            hostname(),
            boot_id(),
            start_time(pid).unwrap_or_default()
        )
    })
}

/// Whether the owner named by `owner` may still be alive. Unknown or foreign
/// owners count as alive: only what is provably orphaned is removed.
pub(crate) fn owner_alive(owner: &str) -> bool {
    let parts: Vec<&str> = owner.split('/').collect();
    let [host, boot, pid, start] = parts.as_slice() else {
        return true;
    };
    if *host != hostname() {
        return true;
    }
    if *boot != boot_id() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    start_time(pid).as_deref() == Some(*start)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn label<'a>(labels: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    labels.get(key).map(String::as_str)
}

/// Whether `labels` carry the marker, the `kind` and an owner.
fn ours(labels: &HashMap<String, String>, kind: &str) -> bool {
    label(labels, LABEL_MARKER) == Some(MARKER_VALUE)
        && label(labels, LABEL_KIND) == Some(kind)
        && labels.contains_key(LABEL_OWNER)
}

/// Whether a container with `labels` and `name` (as Docker reports it, with
/// or without the leading `/`) is the one this library created for
/// `session_id` of `destination_id`: the marker, kind `session`, an owner,
/// those session and destination labels, and the name `runner-<session>` or
/// `runner-detached-<session>`.
pub(crate) fn session_container(
    labels: &HashMap<String, String>,
    name: &str,
    session_id: &str,
    destination_id: &str,
) -> bool {
    let name = name.trim_start_matches('/');
    ours(labels, KIND_SESSION)
        && label(labels, LABEL_SESSION) == Some(session_id)
        && label(labels, crate::LABEL_DESTINATION) == Some(destination_id)
        && [CONTAINER_PREFIX, DETACHED_PREFIX]
            .iter()
            .any(|prefix| name.strip_prefix(prefix) == Some(session_id))
}

/// Whether a container with `labels` and `names` is a session container of
/// this library that is not detached: named `runner-<its session label>`.
fn attached_session_container(labels: &HashMap<String, String>, names: &[String]) -> bool {
    let Some(session) = label(labels, LABEL_SESSION) else {
        return false;
    };
    ours(labels, KIND_SESSION)
        && names.iter().any(|name| {
            name.trim_start_matches('/').strip_prefix(CONTAINER_PREFIX) == Some(session)
        })
}

/// Whether an image with `labels` and `tags` is a snapshot this library took.
fn snapshot_image(labels: &HashMap<String, String>, tags: &[String]) -> bool {
    ours(labels, KIND_SNAPSHOT)
        && tags.iter().any(|tag| {
            tag.strip_prefix(SNAPSHOT_REPOSITORY)
                .is_some_and(|rest| rest.starts_with(':'))
        })
}

/// Whether a resource of this library with `labels` is an orphan past `grace`.
fn orphaned(labels: &HashMap<String, String>, grace: Duration) -> bool {
    if label(labels, LABEL_KEEP) == Some("true") {
        return false;
    }
    let created = labels
        .get(LABEL_CREATED_MS)
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0);
    if now_ms().saturating_sub(created) < grace.as_millis() as u64 {
        return false;
    }
    match labels.get(LABEL_OWNER) {
        Some(owner) => !owner_alive(owner),
        None => false,
    }
}

fn marker_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_MARKER}={MARKER_VALUE}")],
    )])
}

/// Removes orphaned containers, then orphaned snapshot images.
pub(crate) async fn sweep(daemon: &Daemon, grace: Duration) -> RunnerResult<RunnerSweepReport> {
    const OP: &str = "sweep_orphans";
    let mut report = RunnerSweepReport::default();
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&marker_filter())
        .build();
    let containers = daemon
        .docker
        .list_containers(Some(options))
        .await
        .map_err(|e| daemon.error(OP, "listing containers", e))?;
    for container in containers {
        let (Some(id), Some(labels)) = (container.id, container.labels) else {
            continue;
        };
        let names = container.names.unwrap_or_default();
        if !attached_session_container(&labels, &names) || !orphaned(&labels, grace) {
            continue;
        }
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match daemon.docker.remove_container(&id, Some(remove)).await {
            Ok(()) => {
                let session = labels.get(LABEL_SESSION).cloned().unwrap_or_default();
                if let Some(host) = container
                    .mounts
                    .as_deref()
                    .and_then(|mounts| HostSocket::of_mounts(mounts, &session))
                {
                    host.remove();
                }
                tracing::info!(container = %id, session = %session, "removed an orphaned container");
                report
                    .removed
                    .push(format!("container {id} (session {session})"));
            }
            Err(e) => {
                let e = daemon.error(OP, &id, e);
                if e.kind() != RunnerErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
    }
    let options = ListImagesOptionsBuilder::new()
        .filters(&marker_filter())
        .build();
    let images = daemon
        .docker
        .list_images(Some(options))
        .await
        .map_err(|e| daemon.error(OP, "listing images", e))?;
    for image in images {
        if !snapshot_image(&image.labels, &image.repo_tags) || !orphaned(&image.labels, grace) {
            continue;
        }
        let remove = RemoveImageOptionsBuilder::new().force(false).build();
        match daemon
            .docker
            .remove_image(&image.id, Some(remove), None)
            .await
        {
            Ok(_) => {
                let session = image.labels.get(LABEL_SESSION).cloned().unwrap_or_default();
                tracing::info!(image = %image.id, session = %session, "removed an orphaned snapshot");
                report
                    .removed
                    .push(format!("image {} (session {session})", image.id));
            }
            // In use by a container, or already gone: leave it.
            Err(e) => tracing::debug!(image = %image.id, error = %e, "snapshot image not removed"),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(owner_alive(this_owner()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let start = start_time(pid).unwrap_or_default();
        child.wait().expect("wait");
        let owner = format!("{}/{}/{pid}/{start}", hostname(), boot_id());
        assert!(!owner_alive(&owner));
        assert!(owner_alive("other-host/x/1/1"));
        assert!(owner_alive("garbage"));
    }

    fn labels(kind: &str, session: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MARKER.to_string(), MARKER_VALUE.to_string()),
            (LABEL_KIND.to_string(), kind.to_string()),
            (LABEL_SESSION.to_string(), session.to_string()),
            (LABEL_OWNER.to_string(), "h/b/1/1".to_string()),
            (crate::LABEL_DESTINATION.to_string(), "d".to_string()),
        ])
    }

    #[test]
    fn only_named_session_containers_and_tagged_snapshots_count() {
        let session = labels(KIND_SESSION, "abc");
        let named = |n: &str| vec![n.to_string()];
        assert!(attached_session_container(&session, &named("/runner-abc")));
        assert!(!attached_session_container(
            &session,
            &named("/runner-detached-abc")
        ));
        assert!(!attached_session_container(&session, &named("/users-box")));
        assert!(!attached_session_container(
            &session,
            &named("/runner-abcd")
        ));
        // What a container started from a snapshot image inherits.
        let inherited = labels(KIND_SNAPSHOT, "abc");
        assert!(!attached_session_container(
            &inherited,
            &named("/runner-abc")
        ));
        assert!(session_container(
            &session,
            "/runner-detached-abc",
            "abc",
            "d"
        ));
        assert!(!session_container(&session, "/runner-abc", "abc", "other"));
        assert!(!session_container(&session, "/runner-abc", "xyz", "d"));
        assert!(!session_container(&inherited, "/runner-abc", "abc", "d"));
        let tags = |t: &str| vec![t.to_string()];
        assert!(snapshot_image(&inherited, &tags("runners-snapshot:1f")));
        assert!(!snapshot_image(&inherited, &tags("users/image:1")));
        assert!(!snapshot_image(&session, &tags("runners-snapshot:1f")));
    }
}
