//! The bearer token of the HTTP transport when none is configured: generated
//! from the OS random number generator and written to a file only this user
//! can read, whose path (never the token) is printed.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use runner_api::{RunnerError, RunnerResult};
use secrecy::{ExposeSecret, SecretString};

/// Random bytes in a generated token (written as twice as many hex digits).
pub const TOKEN_BYTES: usize = 32;

/// A bearer token generated for one server, and the file holding it.
///
/// The file is removed when this value is dropped (on a clean shutdown); a
/// file left by a server that was killed is replaced by the next server on
/// the same address.
#[derive(Debug)]
pub struct GeneratedToken {
    token: SecretString,
    path: PathBuf,
}

impl GeneratedToken {
    /// A new token for the server listening on `addr`, written to
    /// `<dir>/http-<ip>-<port>.token` (mode 0600, created exclusively).
    /// `dir` is created with mode 0700 when missing, and refused unless it is
    /// a directory (not a symlink) owned by this user with no group or other
    /// permissions.
    ///
    /// Errors: `PermissionDenied` for a directory someone else could use;
    /// the I/O error naming the path otherwise; `Provider` when the OS has no
    /// random bytes to give.
    pub fn create(dir: &Path, addr: SocketAddr) -> RunnerResult<Self> {
        let op = "generate token";
        private_dir(op, dir)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            RunnerError::provider(format!("{op}: the OS random number generator failed: {e}"))
        })?;
        let mut hex = String::with_capacity(2 * TOKEN_BYTES);
        for byte in bytes {
            let _ = write!(hex, "{byte:02x}");
        }
        let token = SecretString::from(hex);
        let path = dir.join(format!("http-{}-{}.token", addr.ip(), addr.port()));
        // The directory is this user's alone, so what is there is a file a
        // killed server left behind; `create_new` still refuses whatever
        // appears in between, symlinks included.
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RunnerError::from_io(op, path.display(), e));
            }
            _ => {}
        }
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(token.expose_secret().as_bytes())?;
                file.write_all(b"\n")?;
                file.sync_all()
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(RunnerError::from_io(op, path.display(), e));
        }
        Ok(Self { token, path })
    }

    /// The token.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// The file holding it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for GeneratedToken {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Where generated token files go: `$XDG_RUNTIME_DIR/runner-mcp` (a per-user
/// directory, emptied at logout), else `$XDG_STATE_HOME/runner-mcp`, else
/// `$HOME/.local/state/runner-mcp`. Only absolute values count.
///
/// Errors: `InvalidRequest` when none of these variables is set to an
/// absolute path.
pub fn default_token_dir() -> RunnerResult<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_RUNTIME_DIR")
        .or_else(|| absolute("XDG_STATE_HOME"))
        .or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))
        .map(|base| base.join("runner-mcp"))
        .ok_or_else(|| {
            RunnerError::invalid_request(
                "generate token: no per-user directory for the token file: none of \
                 XDG_RUNTIME_DIR, XDG_STATE_HOME and HOME is an absolute path; give a token \
                 with --token-file PATH",
            )
        })
}

/// Creates `dir` (mode 0700) when missing and checks that it is this user's
/// alone.
fn private_dir(op: &str, dir: &Path) -> RunnerResult<()> {
    let io = |e| RunnerError::from_io(op, dir.display(), e);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = fs::symlink_metadata(dir).map_err(io)?;
    let uid = nix::unistd::geteuid().as_raw();
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != uid || mode & 0o077 != 0 {
        return Err(RunnerError::permission_denied(format!(
            "{op}: {} must be a directory owned by uid {uid} with no group or other \
             permissions (it is {}owned by uid {} with mode {mode:o})",
            dir.display(),
            if meta.is_dir() {
                ""
            } else {
                "not a directory, "
            },
            meta.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_private_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("state").join("runner-mcp");
        let addr: SocketAddr = "127.0.0.1:8765".parse().expect("addr");
        let first = GeneratedToken::create(&tokens, addr).expect("token");
        let meta = fs::metadata(first.path()).expect("token file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_mode = fs::metadata(&tokens).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let text = fs::read_to_string(first.path()).expect("read");
        assert_eq!(text.trim_end(), first.token().expose_secret());
        assert_eq!(text.trim_end().len(), 2 * TOKEN_BYTES);
        assert!(!format!("{first:?}").contains(text.trim_end()));

        // A file left behind is replaced by a new token; dropping removes it.
        let path = first.path().to_path_buf();
        std::mem::forget(first);
        let second = GeneratedToken::create(&tokens, addr).expect("second token");
        assert_eq!(second.path(), path);
        let again = fs::read_to_string(&path).expect("read");
        assert_ne!(again, text);
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn a_directory_others_can_enter_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("dir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let err = GeneratedToken::create(&open, addr).expect_err("refused");
        assert_eq!(err.kind(), runner_api::RunnerErrorKind::PermissionDenied);
        assert!(err.message().contains("no group or other"), "{err}");
        assert_eq!(fs::read_dir(&open).expect("list").count(), 0);
    }
}
