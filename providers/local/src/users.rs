//! `RunnerCommandRequest::user`: which host user a command runs as, and how
//! the switch is made.
//!
//! The user is looked up on this host by name, then (for a number) by uid,
//! through NSS (`getpwnam_r`; a static glibc build reads `/etc/passwd` with
//! its built-in `files` module, so this also works in an image without
//! shared libraries). The process's own user (its effective uid) is always
//! accepted and needs no switch; any other user only when the process runs
//! as root. A switched command is started, as root, through a *switcher*
//! that changes user after the working directory was entered, as `docker
//! exec -u` (runc) does: the command starts even in a workspace the user
//! could not enter (unix-local's own workspaces are private to the embedding
//! user), and what it may read or write there is up to POSIX permissions.
//! The switcher is util-linux's `setpriv` with `--reuid`, `--regid` (the
//! user's primary gid) and `--clear-groups` by default, or a program given
//! with [`LocalProvider::with_user_switcher`](crate::LocalProvider::with_user_switcher)
//! that takes `run-as --uid U --gid G -- PROGRAM ARGS…` (the runner agent is
//! its own switcher: a sandbox image has no `setpriv`). Rust's
//! `CommandExt::uid` cannot do this: it switches user before it changes
//! directory, and code run between fork and exec (`pre_exec`) is `unsafe`,
//! which this workspace forbids.

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

/// Where `setpriv` is looked for, in order. A fixed list, not `PATH`: it runs
/// as root.
const SETPRIV: [&str; 2] = ["/usr/bin/setpriv", "/bin/setpriv"];

/// The search path `execvp` uses when the environment has no `PATH`.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// How a command is started as another user.
enum Switch {
    /// util-linux `setpriv --reuid=U --regid=G --clear-groups -- PROGRAM`.
    Setpriv(PathBuf),
    /// `SWITCHER run-as --uid U --gid G -- PROGRAM` (the runner agent).
    RunAs(PathBuf),
}

/// The host user a command runs as.
pub(crate) struct RunAs {
    /// Its passwd entry.
    user: User,
    /// The switcher, when it is another user than the process's own.
    switch: Option<Switch>,
}

impl RunAs {
    /// Resolves `spec` (a name, or a numeric uid) for command `what`
    /// (`"run_command <id>"`); a switch goes through `switcher` when given,
    /// else `setpriv`. Blocking: the lookup may ask NSS.
    ///
    /// Errors: `InvalidRequest` (empty, or a NUL byte), `NotFound` naming the
    /// user when the host has none such, `PermissionDenied` naming it when it
    /// is another user and this process is not root, `Unsupported` naming it
    /// when a switch is needed, no switcher is given and this host has no
    /// `setpriv`, `Provider` when the lookup itself fails.
    pub(crate) fn resolve(what: &str, spec: &str, switcher: Option<&Path>) -> RunnerResult<Self> {
        if spec.is_empty() || spec.contains('\0') {
            return Err(RunnerError::invalid_request(format!(
                "{what}: user {spec:?} is not a user name or uid"
            )));
        }
        let lookup_error = |e: nix::errno::Errno| {
            RunnerError::provider(format!("{what}: looking up user {spec:?}: {e}"))
        };
        let user = if switcher.is_some() {
            // The runner agent is a static binary: glibc cannot load NSS
            // modules into it (a lookup through them crashes), so it reads
            // the passwd file only.
            passwd_file_user(spec).map_err(|e| {
                RunnerError::provider(format!("{what}: reading /etc/passwd for {spec:?}: {e}"))
            })?
        } else {
            let mut user = User::from_name(spec).map_err(lookup_error)?;
            if user.is_none()
                && let Ok(uid) = spec.parse::<u32>()
            {
                user = User::from_uid(Uid::from_raw(uid)).map_err(lookup_error)?;
            }
            user
        };
        let user = user.ok_or_else(|| {
            RunnerError::not_found(format!("{what}: user {spec:?} not found on this host"))
        })?;
        let me = nix::unistd::geteuid();
        if user.uid == me {
            return Ok(Self { user, switch: None });
        }
        if !me.is_root() {
            return Err(RunnerError::permission_denied(format!(
                "{what}: cannot run as user {spec:?} (uid {}): this process runs as uid {me}, \
                 not root, and runs commands only as itself",
                user.uid
            )));
        }
        if let Some(switcher) = switcher {
            return Ok(Self {
                user,
                switch: Some(Switch::RunAs(switcher.to_path_buf())),
            });
        }
        let setpriv = SETPRIV
            .iter()
            .map(Path::new)
            .find(|path| path.is_file())
            .ok_or_else(|| {
                RunnerError::new(
                    RunnerErrorKind::Unsupported,
                    format!(
                        "{what}: running as user {spec:?} needs setpriv (util-linux) at {}; \
                         this host has neither",
                        SETPRIV.join(" or ")
                    ),
                )
            })?;
        Ok(Self {
            user,
            switch: Some(Switch::Setpriv(setpriv.to_path_buf())),
        })
    }

    /// Whether the command runs as another user than the process's own.
    pub(crate) fn is_switch(&self) -> bool {
        self.switch.is_some()
    }

    /// `HOME`, `USER` and `LOGNAME` of the user.
    pub(crate) fn login_env(&self) -> [(String, String); 3] {
        [
            ("HOME".into(), self.user.dir.to_string_lossy().into_owned()),
            ("USER".into(), self.user.name.clone()),
            ("LOGNAME".into(), self.user.name.clone()),
        ]
    }

    /// The command that runs `program` as the user: `program` itself, or
    /// for a switch `setpriv --reuid=<uid> --regid=<gid> --clear-groups --
    /// <program>` or `<switcher> run-as --uid <uid> --gid <gid> -- <program>`
    /// (the caller adds the program's arguments).
    pub(crate) fn command(&self, program: &str) -> tokio::process::Command {
        let (uid, gid) = (self.user.uid, self.user.gid);
        match &self.switch {
            None => tokio::process::Command::new(program),
            Some(Switch::Setpriv(setpriv)) => {
                let mut command = tokio::process::Command::new(setpriv);
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--", program]);
                command
            }
            Some(Switch::RunAs(switcher)) => {
                let mut command = tokio::process::Command::new(switcher);
                command
                    .arg("run-as")
                    .arg("--uid")
                    .arg(uid.to_string())
                    .arg("--gid")
                    .arg(gid.to_string())
                    .args(["--", program]);
                command
            }
        }
    }
}

/// What `execvp` would find for `program` with the search path `path_env`
/// and working directory `cwd`: `Ok` when it finds a regular file with an
/// execute bit, else the error it would fail with (`PermissionDenied` when a
/// candidate exists but is not executable, `NotFound` otherwise). A switched
/// command is exec'ed by its switcher, whose failure would only be an exit
/// status, so its program is looked up here first.
pub(crate) fn find_program(program: &str, path_env: Option<&str>, cwd: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else {
        path_env
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .map(|dir| cwd.join(dir).join(program))
            .collect()
    };
    let mut denied = false;
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => return Ok(()),
            Ok(_) => denied = true,
            Err(_) => {}
        }
    }
    Err(if denied {
        io::Error::from(io::ErrorKind::PermissionDenied)
    } else {
        io::Error::from(io::ErrorKind::NotFound)
    })
}

/// `spec` (a name, then a numeric uid) in `/etc/passwd`; a missing file has
/// no users, and an entry without a gid is no user.
fn passwd_file_user(spec: &str) -> io::Result<Option<User>> {
    let text = match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let entries = || runner_kit::accounts::passwd_entries(&text);
    let entry = entries().find(|entry| entry.name == spec).or_else(|| {
        let uid = spec.parse::<u32>().ok()?;
        entries().find(|entry| entry.uid == uid)
    });
    Ok(entry.and_then(|entry| {
        Some(User {
            name: entry.name.to_string(),
            passwd: std::ffi::CString::new(entry.password).ok()?,
            uid: Uid::from_raw(entry.uid),
            gid: nix::unistd::Gid::from_raw(entry.gid?),
            gecos: std::ffi::CString::new(entry.gecos).ok()?,
            dir: PathBuf::from(entry.home),
            shell: PathBuf::from(entry.shell),
        })
    }))
}
