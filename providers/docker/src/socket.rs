//! The `socket` transport: the agent's socket directory is a private
//! directory of this machine bind-mounted into the container, so the caller
//! dials the agent's unix socket directly instead of through a docker exec
//! (no dockerd, shim or `connect` bridge on the data path).
//!
//! Each session gets `<socket_dir>/<session id>` (0700, this user's),
//! mounted at the agent's socket directory; the agent (`serve
//! --socket-from-host`) checks that it is closed to others and gives the
//! socket to its owner. Whether it works is only known once the agent
//! runs: a daemon of another machine or mount namespace either refuses the
//! bind (no such source) or binds a directory of its own filesystem, where
//! the socket never shows up here. With `transport: "auto"` the session
//! then takes the exec transport; with `"socket"` it fails.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountPoint, MountType};
use runner_api::{RunnerError, RunnerResult};

use crate::config::DockerConfig;
use crate::delivery;

/// The directory every session's host socket directory is made in:
/// `socket_dir`, else `$XDG_RUNTIME_DIR/runners-docker`, else
/// `<temp>/runners-docker-<uid>`.
pub(crate) fn base_dir(config: &DockerConfig) -> PathBuf {
    if let Some(dir) = &config.socket_dir {
        return dir.clone();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| Path::new(dir).is_absolute()) {
        Some(runtime) => PathBuf::from(runtime).join("runners-docker"),
        None => std::env::temp_dir().join(format!(
            "runners-docker-{}",
            nix::unistd::geteuid().as_raw()
        )),
    }
}

/// One session's socket directory on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSocket {
    dir: PathBuf,
}

impl HostSocket {
    /// Makes `<base_dir>/<session_id>`, 0700. The base is made 0700 when
    /// missing; an existing one must be this user's and closed to others
    /// (another user could otherwise swap a session's directory).
    ///
    /// Errors: `PermissionDenied` for a base of another user or open to
    /// others, the I/O error otherwise.
    pub(crate) fn create(config: &DockerConfig, session_id: &str) -> RunnerResult<Self> {
        const OP: &str = "create_session: the agent's host socket directory";
        let base = base_dir(config);
        let io = |path: &Path, e| RunnerError::from_io(OP, path.display(), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .map_err(|e| io(&base, e))?;
        let meta = std::fs::symlink_metadata(&base).map_err(|e| io(&base, e))?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(RunnerError::permission_denied(format!(
                "{OP}: {} must be a directory of uid {uid} that others cannot enter (mode \
                 0700); it is mode {:o} owned by uid {} (set socket_dir, or transport \"exec\")",
                base.display(),
                meta.mode() & 0o7777,
                meta.uid()
            )));
        }
        let dir = base.join(session_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io(&dir, e))?;
        // The mode given is masked by the umask; 0700 is what the agent checks.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(&dir, e))?;
        Ok(Self { dir })
    }

    /// Whether the socket directory can serve an agent running as `user`
    /// (the container's user: a name, a uid, `uid:gid`; `None`: root):
    /// this process is root (it gives the directory to that user), or the
    /// agent is root (it gives the socket to this process's user), or the
    /// agent's uid is this process's. A user named other than `root` needs
    /// the image's passwd file, read only once the container exists, so it
    /// is taken for another user.
    pub(crate) fn can_serve(user: Option<&str>) -> bool {
        let euid = nix::unistd::geteuid().as_raw();
        let name = user.map(|user| user.split(':').next().unwrap_or_default());
        euid == 0
            || match name {
                None | Some("" | "root" | "0") => true,
                Some(uid) => uid.parse::<u32>() == Ok(euid),
            }
    }

    /// Gives the directory to the agent's user when that is not this
    /// process's (this process is then root: [`can_serve`](Self::can_serve)),
    /// so that the agent can make its socket there.
    ///
    /// Errors: the I/O error of the change of owner.
    pub(crate) fn give_to(&self, owner: delivery::Owner) -> RunnerResult<()> {
        let uid = u32::try_from(owner.uid).unwrap_or(u32::MAX);
        let gid = u32::try_from(owner.gid).unwrap_or(u32::MAX);
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return Ok(());
        }
        std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid)).map_err(|e| {
            RunnerError::from_io(
                "create_session: giving the host socket directory to the session's user",
                self.dir.display(),
                e,
            )
        })
    }

    /// The session's directory as a container of session `session_id`
    /// mounts it (`mounts` of its inspect or list entry), when it has one.
    pub(crate) fn of_mounts(mounts: &[MountPoint], session_id: &str) -> Option<Self> {
        let target = delivery::socket_dir(session_id);
        mounts
            .iter()
            .find(|m| m.destination.as_deref() == Some(target.as_str()))
            .and_then(|m| m.source.as_deref())
            .map(|source| Self {
                dir: PathBuf::from(source),
            })
    }

    /// The bind mount of the directory at the agent's socket directory.
    pub(crate) fn mount(&self, session_id: &str) -> Mount {
        Mount {
            target: Some(delivery::socket_dir(session_id)),
            source: Some(self.dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }
    }

    /// The agent's socket as this machine sees it.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join(delivery::SOCKET_NAME)
    }

    /// Whether the agent's socket is there: the daemon shares this
    /// machine's filesystem.
    pub(crate) fn is_served(&self) -> bool {
        std::fs::symlink_metadata(self.socket())
            .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
    }

    /// Removes the socket (when it is one) and the directory, which must
    /// then be empty: nothing else is ever deleted, whatever a container's
    /// mount names (best effort: a failure is logged).
    pub(crate) fn remove(&self) {
        if self.is_served() {
            let _ = std::fs::remove_file(self.socket());
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "docker: cannot remove a host socket directory");
            }
        }
    }
}
