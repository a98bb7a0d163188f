//! Delivery: the agent binary for the image's platform, the tree it is
//! uploaded in before the container starts, the manifest as the agent sees
//! it, the entrypoint that starts the agent as PID 1, and its status line.
//!
//! Nothing of ours has to be in the image: the tree is uploaded through the
//! archive API into the created (not yet started) container, as root:
//!
//! ```text
//! /.runner/                       0755 root
//! /.runner/runner-agent-<sha256>  0755 root   the static agent binary
//! /.runner/run/                   1777 root   the agent makes run/<session>/ 0700
//! /.runner/manifest/<n>/…         staged manifest entries (the agent copies them in)
//! <workspace_dir>/                0755 the session user
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, LogsOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::BytesMut;
use futures_util::StreamExt;
use runner_agent::cli::ServeStatus;
use runner_agent::delivery::{AgentBinaries, AgentBinary, Platform};
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerManifest, RunnerManifestEntry, RunnerMount,
    RunnerMountIntent, RunnerMountKind, RunnerResult,
};
use runner_kit::accounts::{group_entries, passwd_entries};

use crate::config::DockerConfig;
use crate::error::Daemon;

/// The directory of everything the provider delivers into a container.
pub(crate) const RUNNER_DIR: &str = "/.runner";
/// Where agents make their socket directories (mode 1777, like /tmp).
pub(crate) const RUN_DIR: &str = "/.runner/run";
/// Where manifest entries are staged for the agent to copy into the workspace.
const MANIFEST_DIR: &str = "/.runner/manifest";
/// Where `provider_native` host directories are bind-mounted; the agent
/// links them into the workspace.
const MOUNTS_DIR: &str = "/.runner/mounts";
/// How much of the agent's stderr a failed start reports.
const STDERR_KEPT: usize = 4096;
/// How long the agent may take to print its status line.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The platform `image` is built for, from the daemon's image inspect.
///
/// Errors: `NotFound` naming the image when the daemon does not have it,
/// and the daemon's other errors.
pub(crate) async fn image_platform(
    daemon: &Daemon,
    operation: &str,
    image: &str,
) -> RunnerResult<(Platform, Option<String>)> {
    let inspect = daemon.docker.inspect_image(image).await.map_err(|e| {
        let mapped = daemon.error(&format!("{operation} image"), image, e);
        if mapped.kind() == RunnerErrorKind::NotFound {
            RunnerError::not_found(format!(
                "{operation}: image {image:?} is not present on the Docker daemon at {}; \
                     build, load or pull it first (the provider never pulls): {}",
                daemon.host,
                mapped.message()
            ))
        } else {
            mapped
        }
    })?;
    let os = inspect.os.unwrap_or_else(|| "linux".into());
    let arch = inspect.architecture.unwrap_or_default();
    let user = inspect
        .config
        .and_then(|c| c.user)
        .filter(|u| !u.is_empty());
    Ok((Platform::from_oci(&os, &arch), user))
}

/// The agent binary for `platform`: `agent_binaries`, then
/// `RUNNER_AGENT_BINARY`; it must be static (the image need not hold a C
/// library).
///
/// Errors: `Unsupported` naming the platform and the build command when
/// there is none; `InvalidRequest` for a dynamically linked one or one of
/// another architecture; `NotFound` for a configured path that is missing.
pub(crate) fn agent_binary(
    config: &DockerConfig,
    operation: &str,
    platform: &Platform,
) -> RunnerResult<AgentBinary> {
    AgentBinaries::new(config.agent_binaries.clone()).resolve_static(operation, platform)
}

/// The container path of the delivered binary.
pub(crate) fn agent_path(binary: &AgentBinary) -> String {
    format!("{RUNNER_DIR}/{}", binary.file_name())
}

/// The agent's socket file name in its directory.
pub(crate) const SOCKET_NAME: &str = "agent.sock";

/// The directory of the socket of the agent of session `session_id`: the
/// mount point of its host socket directory with the `socket` transport.
pub(crate) fn socket_dir(session_id: &str) -> String {
    format!("{RUN_DIR}/{session_id}/sock")
}

/// The socket of the agent of session `session_id`.
pub(crate) fn socket_path(session_id: &str) -> String {
    format!("{}/{SOCKET_NAME}", socket_dir(session_id))
}

/// Where the agent of a session of an earlier release (one socket
/// directory for everything) listens: what a rejoin of such a container
/// still finds.
pub(crate) fn legacy_socket_path(session_id: &str) -> String {
    format!("{RUN_DIR}/{session_id}/{SOCKET_NAME}")
}

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) uid: u64,
    pub(crate) gid: u64,
}

impl Owner {
    const ROOT: Self = Self { uid: 0, gid: 0 };
}

/// Who `user` (Docker's `name`, `uid`, `name:group`, `uid:gid`) is, by the
/// container's `/etc/passwd` and `/etc/group` (`passwd`, `group`); as Docker
/// does, a uid that no entry names has gid 0.
///
/// Errors: `NotFound` naming a user or group no entry names.
pub(crate) fn resolve_owner(
    operation: &str,
    user: Option<&str>,
    passwd: &str,
    group: &str,
) -> RunnerResult<Owner> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok(Owner::ROOT);
    };
    let (name, group_name) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let entry = match name.parse::<u64>() {
        Ok(uid) => passwd_entries(passwd).find(|entry| u64::from(entry.uid) == uid),
        Err(_) => passwd_entries(passwd).find(|entry| entry.name == name),
    };
    let uid = match (name.parse::<u64>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(entry)) => u64::from(entry.uid),
        (Err(_), None) => {
            return Err(RunnerError::not_found(format!(
                "{operation}: unable to find user {name}: no matching entry in the image's \
                 /etc/passwd"
            )));
        }
    };
    let gid = match group_name {
        None => entry.and_then(|entry| entry.gid).map_or(0, u64::from),
        Some(group_name) => match group_name.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _)| *name == group_name)
                .map(|(_, gid)| u64::from(gid))
                .ok_or_else(|| {
                    RunnerError::not_found(format!(
                        "{operation}: unable to find group {group_name}: no matching entry in \
                         the image's /etc/group"
                    ))
                })?,
        },
    };
    Ok(Owner { uid, gid })
}

/// The contents of the file `path` of the created `container` (empty when
/// it does not exist), through the archive API. For small files
/// (`/etc/passwd`).
pub(crate) async fn read_small_file(
    daemon: &Daemon,
    container: &str,
    path: &str,
) -> RunnerResult<String> {
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = daemon
        .docker
        .download_from_container(container, Some(options));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => tar.extend_from_slice(&bytes),
            Err(e) => {
                let e = daemon.error("create_session: reading", path, e);
                if e.kind() == RunnerErrorKind::NotFound {
                    return Ok(String::new());
                }
                return Err(e);
            }
        }
        if tar.len() > 16 << 20 {
            return Err(RunnerError::invalid_request(format!(
                "create_session: {path} in the image is larger than 16 MiB"
            )));
        }
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut text = String::new();
    let entries = archive
        .entries()
        .map_err(|e| RunnerError::from_io("create_session: reading", path, e))?;
    if let Some(entry) = entries.into_iter().next() {
        entry
            .and_then(|mut entry| entry.read_to_string(&mut text))
            .map_err(|e| RunnerError::from_io("create_session: reading", path, e))?;
    }
    Ok(text)
}

/// A destination's manifest split between Docker and the agent.
#[derive(Debug, Default, Clone)]
pub(crate) struct Placement {
    /// Docker bind mounts (`host:container[:ro]`).
    pub(crate) binds: Vec<String>,
    /// The manifest the agent applies, with container paths: staged
    /// entries, and `provider_native` mounts naming their bind mount or
    /// none (a plain directory).
    pub(crate) agent: RunnerManifest,
    /// Entries to stage: the host source and its staged name under `/.runner/manifest`.
    staged: Vec<(PathBuf, String)>,
}

/// Splits `manifest`: every `provider_native` mount with a host path is
/// bind-mounted at `/.runner/mounts/<n>` (read-only ones `:ro`) and given to
/// the agent with that path, which it links into the workspace. For a
/// `fresh` session the entries are staged at `/.runner/manifest/<n>/<name>`
/// for the agent to copy in; a fork (of a snapshot, which holds the staged
/// copies and the workspace already) gets only the read-only entries again,
/// copied from those staged copies, so the agent refuses writes to them as
/// the first session did, and writable entries stay as the session left them.
///
/// Errors: `Unsupported` for a mount of another kind, `InvalidRequest` for
/// a relative host path, `NotFound` for a host path or entry source that is
/// missing (`local_daemon`: the daemon sees this machine's files).
pub(crate) fn place(
    manifest: &RunnerManifest,
    fresh: bool,
    local_daemon: bool,
) -> RunnerResult<Placement> {
    let mut placement = Placement::default();
    for (n, mount) in manifest.mounts.iter().enumerate() {
        let what = format!("mount {:?}", mount.name);
        if mount.intent.kind != RunnerMountKind::ProviderNative {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!("{what}: only provider_native mounts are supported by the docker provider"),
            ));
        }
        let host = mount
            .intent
            .uri
            .strip_prefix("file://")
            .unwrap_or(&mount.intent.uri);
        let uri = if host.is_empty() {
            String::new()
        } else {
            let host = Path::new(host);
            if !host.is_absolute() {
                return Err(RunnerError::invalid_request(format!(
                    "{what}: host path {} must be absolute",
                    host.display()
                )));
            }
            if local_daemon && !host.exists() {
                return Err(RunnerError::not_found(format!(
                    "{what}: host path {} not found",
                    host.display()
                )));
            }
            let target = format!("{MOUNTS_DIR}/{n}");
            let suffix = if mount.read_only { ":ro" } else { "" };
            placement
                .binds
                .push(format!("{}:{target}{suffix}", host.display()));
            target
        };
        placement.agent.mounts.push(RunnerMount {
            intent: RunnerMountIntent {
                kind: RunnerMountKind::ProviderNative,
                uri,
                credentials: None,
            },
            ..mount.clone()
        });
    }
    for (n, entry) in manifest.entries.iter().enumerate() {
        if !fresh && entry.writable {
            continue;
        }
        let name = entry
            .source
            .file_name()
            .map_or_else(|| "entry".into(), |n| n.to_string_lossy().into_owned());
        let staged = format!("{}/{n}/{name}", MANIFEST_DIR.trim_start_matches('/'));
        placement.agent.entries.push(RunnerManifestEntry {
            source: PathBuf::from(format!("/{staged}")),
            ..entry.clone()
        });
        if fresh {
            placement.staged.push((entry.source.clone(), staged));
        }
    }
    Ok(placement)
}

fn directory(mode: u32, owner: Owner) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(mode);
    header.set_uid(owner.uid);
    header.set_gid(owner.gid);
    header.set_size(0);
    header.set_mtime(0);
    header
}

/// The tar of the delivered tree (see the module docs). Blocking: reads the
/// binary and the entry sources.
///
/// Errors: the binary's (`Provider` when it changed since it was checked),
/// `NotFound` for a missing entry source.
pub(crate) fn tree<W: std::io::Write>(
    binary: &AgentBinary,
    workspace: &Path,
    owner: Owner,
    placement: &Placement,
    out: W,
) -> RunnerResult<W> {
    const OP: &str = "create_session: delivering the agent";
    let (len, contents) = binary.reader()?;
    let io = |e| RunnerError::from_io(OP, RUNNER_DIR, e);
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let root = |dir: &str| dir.trim_start_matches('/').to_string();
    builder
        .append_data(
            &mut directory(0o755, Owner::ROOT),
            root(RUNNER_DIR),
            std::io::empty(),
        )
        .map_err(io)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(len);
    builder
        .append_data(&mut header, root(&agent_path(binary)), contents)
        .map_err(io)?;
    builder
        .append_data(
            &mut directory(0o1777, Owner::ROOT),
            root(RUN_DIR),
            std::io::empty(),
        )
        .map_err(io)?;
    builder
        .append_data(
            &mut directory(0o755, owner),
            root(&workspace.display().to_string()),
            std::io::empty(),
        )
        .map_err(io)?;
    for (source, staged) in &placement.staged {
        let what = format!("manifest entry {}", source.display());
        let meta = std::fs::symlink_metadata(source).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RunnerError::not_found(format!("{what}: source not found"))
            } else {
                RunnerError::from_io(&what, source.display(), e)
            }
        })?;
        let added = if meta.is_dir() {
            builder.append_dir_all(staged, source)
        } else {
            builder.append_path_with_name(source, staged)
        };
        added.map_err(|e| RunnerError::from_io(&what, source.display(), e))?;
    }
    builder.into_inner().map_err(io)
}

/// Builds the tree and uploads it into the created `container` at `/`.
///
/// Errors: those of [`tree`] and the daemon's.
pub(crate) async fn deliver(
    daemon: &Daemon,
    container: &str,
    binary: AgentBinary,
    workspace: PathBuf,
    owner: Owner,
    placement: Placement,
) -> RunnerResult<Placement> {
    // Packed as it is sent (the binary and the entries are never whole in
    // memory); a failure while packing fails the upload.
    let packed = placement.clone();
    let tar = runner_kit::bridge::chunk_stream("create_session", move |out| {
        tree(&binary, &workspace, owner, &packed, out).map(drop)
    });
    let failure: Arc<Mutex<Option<RunnerError>>> = Arc::default();
    let seen = failure.clone();
    let body = tar.map(move |chunk| {
        chunk.map_err(|e| {
            let io = std::io::Error::other(e.message().to_string());
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            io
        })
    });
    let options = UploadToContainerOptionsBuilder::new()
        .path("/")
        .no_overwrite_dir_non_dir("true")
        .build();
    let put = daemon
        .docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(body))
        .await;
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    put.map_err(|e| daemon.error("create_session: delivering the agent to", container, e))?;
    Ok(placement)
}

/// What the agent serves, as its `serve` arguments take it.
pub(crate) struct ServeSpec<'a> {
    pub(crate) config: &'a DockerConfig,
    pub(crate) binary: &'a AgentBinary,
    pub(crate) session_id: &'a str,
    pub(crate) destination_id: &'a str,
    pub(crate) manifest: &'a RunnerManifest,
    /// The socket directory is a host directory mounted in (`socket`
    /// transport): the agent gives the socket to its owner.
    pub(crate) socket_from_host: bool,
}

/// The container's entrypoint: the agent as PID 1 (`init -- serve …`, or
/// `serve …` without `init`), serving unix-local over the workspace.
pub(crate) fn entrypoint(spec: &ServeSpec<'_>) -> Vec<String> {
    let state = format!("{RUN_DIR}/{}/state", spec.session_id);
    let local = serde_json::json!({
        "root": spec.config.workspace_dir,
        "env": spec.config.env,
        "max_upload_bytes": spec.config.max_upload_bytes,
        "workspaces_dir": format!("{state}/workspaces"),
        "snapshot_dir": format!("{state}/snapshots"),
    });
    let mut args = vec![agent_path(spec.binary)];
    if spec.config.init {
        args.extend(["init".to_string(), "--".to_string()]);
    }
    args.extend([
        "serve".to_string(),
        "--socket".to_string(),
        socket_path(spec.session_id),
        "--config".to_string(),
        local.to_string(),
        "--destination-id".to_string(),
        spec.destination_id.to_string(),
        "--manifest".to_string(),
        serde_json::to_string(spec.manifest).unwrap_or_default(),
        // Large files take the archive API (crate::bulk) when the agent is root.
        "--stage-dir".to_string(),
        format!("{RUN_DIR}/{}/stage", spec.session_id),
    ]);
    if spec.socket_from_host {
        args.push("--socket-from-host".to_string());
    }
    args
}

/// The agent's status line: the container's first line of stdout, read
/// through the logs API (its stderr is logged, and kept for the error when
/// no line comes).
///
/// Errors: the kind and message the agent reported (`Failed`), `Provider`
/// with its stderr when it exited without a status line, `Timeout` after
/// a minute.
pub(crate) async fn status(daemon: &Daemon, container: &str) -> RunnerResult<ServeStatus> {
    const OP: &str = "create_session: starting the agent";
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = daemon.docker.logs(container, Some(options));
    let mut line = BytesMut::new();
    let mut stderr = Vec::new();
    let read = async {
        while let Some(item) = logs.next().await {
            let item = item.map_err(|e| daemon.error(OP, container, e))?;
            match item {
                bollard::container::LogOutput::StdErr { message } => {
                    tracing::debug!(container, stderr = %String::from_utf8_lossy(&message).trim_end(), "runner agent");
                    let room = STDERR_KEPT.saturating_sub(stderr.len());
                    stderr.extend_from_slice(&message[..message.len().min(room)]);
                }
                other => {
                    line.extend_from_slice(&other.into_bytes());
                    if let Some(end) = line.iter().position(|b| *b == b'\n') {
                        let text = String::from_utf8_lossy(&line[..end]).into_owned();
                        return serde_json::from_str::<ServeStatus>(&text).map_err(|e| {
                            RunnerError::provider(format!(
                                "{OP} in {container}: its status line {text:?} is not one: {e}"
                            ))
                        });
                    }
                }
            }
        }
        Err(RunnerError::provider(format!(
            "{OP} in {container}: the agent exited without a status line; its stderr: {:?}",
            String::from_utf8_lossy(&stderr).trim_end()
        )))
    };
    match tokio::time::timeout(STATUS_TIMEOUT, read).await {
        Ok(status) => status,
        Err(_) => Err(RunnerError::new(
            RunnerErrorKind::Timeout,
            format!(
                "{OP} in {container}: no status line within {} s",
                STATUS_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// The `Failed` status as the error the agent reported.
pub(crate) fn failed(kind: String, message: String) -> RunnerError {
    RunnerError::from(runner_agent::protocol::WireError { kind, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nweb:x:1000:100::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\n";

    #[test]
    fn users_resolve_like_docker() {
        let owner = |user| resolve_owner("t", user, PASSWD, GROUP).map(|o| (o.uid, o.gid));
        assert_eq!(owner(None).unwrap(), (0, 0));
        assert_eq!(owner(Some("nobody")).unwrap(), (65534, 65534));
        assert_eq!(owner(Some("1000")).unwrap(), (1000, 100));
        assert_eq!(owner(Some("4242")).unwrap(), (4242, 0));
        assert_eq!(owner(Some("web:nogroup")).unwrap(), (1000, 65534));
        assert_eq!(owner(Some("65534:65534")).unwrap(), (65534, 65534));
        let err = owner(Some("ghost")).unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        assert!(err.message().contains("ghost"), "{err}");
        assert!(owner(Some("web:ghosts")).is_err());
    }

    #[test]
    fn mounts_are_bound_under_runner_and_entries_staged() {
        let manifest = RunnerManifest {
            entries: vec![RunnerManifestEntry {
                source: PathBuf::from("/host/src"),
                target: PathBuf::from("project"),
                writable: true,
            }],
            mounts: vec![
                RunnerMount {
                    name: "shared".into(),
                    path: PathBuf::from("shared"),
                    read_only: true,
                    intent: RunnerMountIntent {
                        kind: RunnerMountKind::ProviderNative,
                        uri: "file:///host/shared".into(),
                        credentials: None,
                    },
                },
                RunnerMount {
                    name: "plain".into(),
                    path: PathBuf::from("plain"),
                    read_only: false,
                    intent: RunnerMountIntent {
                        kind: RunnerMountKind::ProviderNative,
                        uri: String::new(),
                        credentials: None,
                    },
                },
            ],
        };
        let placement = place(&manifest, true, false).unwrap();
        assert_eq!(placement.binds, ["/host/shared:/.runner/mounts/0:ro"]);
        assert_eq!(placement.agent.mounts[0].intent.uri, "/.runner/mounts/0");
        assert_eq!(placement.agent.mounts[1].intent.uri, "");
        assert_eq!(
            placement.agent.entries[0].source,
            PathBuf::from("/.runner/manifest/0/src")
        );
        assert!(
            place(&manifest, false, false)
                .unwrap()
                .agent
                .entries
                .is_empty()
        );
        let read_only = RunnerManifest {
            entries: vec![RunnerManifestEntry {
                writable: false,
                ..manifest.entries[0].clone()
            }],
            mounts: Vec::new(),
        };
        let fork = place(&read_only, false, false).unwrap();
        assert_eq!(fork.agent.entries.len(), 1);
        assert!(fork.staged.is_empty());
    }
}
