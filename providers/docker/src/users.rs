//! `RunnerCommandRequest::user`: who a command runs as.
//!
//! The session's own user (by name or uid) always works. Another user only
//! when the session runs as root (uid 0, learned once when the session is
//! created or rejoined); the exec then runs as `uid:gid` of that user's
//! `/etc/passwd` entry in the container, which Docker (runc) applies with no
//! supplementary groups, and the command gets the user's HOME, USER and
//! LOGNAME. The entry is looked up in the container, as the session user,
//! by a short helper per command, so a user added or removed by an earlier
//! command is seen as it is now.

use runner_api::{RunnerCommandRequest, RunnerError, RunnerResult};

use crate::exec::ExecContext;

/// Exit code of [`LOOKUP`] when `/etc/passwd` has no such entry.
const NO_ENTRY: i64 = 3;

/// `$1` `name` or `uid`, `$2` the value: prints the name, uid, gid and home
/// of the first matching `/etc/passwd` entry, one a line. A numeric user is
/// always a uid, as for Docker itself.
const LOOKUP: &str = r#"
[ -r /etc/passwd ] || exit 3
while IFS=: read -r n x u g r h s || [ -n "$n" ]; do
  case $1 in
    uid) [ "$u" = "$2" ] || continue ;;
    *) [ "$n" = "$2" ] || continue ;;
  esac
  printf '%s\n%s\n%s\n%s\n' "$n" "$u" "$g" "$h"
  exit 0
done < /etc/passwd
exit 3
"#;

/// Who one command runs as.
pub(crate) struct RunAs {
    /// Docker's exec `user` (`None`: the container's user).
    pub(crate) exec_user: Option<String>,
    /// HOME, USER and LOGNAME of a user other than the session's.
    pub(crate) env: Vec<(String, String)>,
}

/// An `/etc/passwd` entry.
struct Entry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

impl ExecContext {
    /// Who `request` runs as.
    ///
    /// Errors: `InvalidRequest` for a user that cannot be a name or uid
    /// (empty, or holding `:`, a NUL byte or a newline); `NotFound` naming a
    /// user the container's `/etc/passwd` does not know; `PermissionDenied`
    /// naming another user when the session is not root.
    pub(crate) async fn run_as(
        &self,
        operation: &str,
        request: &RunnerCommandRequest,
    ) -> RunnerResult<RunAs> {
        let session = RunAs {
            exec_user: self.user.clone(),
            env: Vec::new(),
        };
        let Some(user) = request.user.as_deref() else {
            return Ok(session);
        };
        let what = format!("{operation} {:?}", request.command_id);
        if user.is_empty() || user.contains([':', '\0', '\n']) {
            return Err(RunnerError::invalid_request(format!(
                "{what}: user {user:?} is not a user name or a uid"
            )));
        }
        let (own, _) = self.file_owner();
        let numeric = user.parse::<u32>().ok();
        if numeric == Some(own) {
            return Ok(session);
        }
        let entry = self.lookup(&what, user, numeric).await?;
        if entry.uid == own {
            return Ok(session);
        }
        if own != 0 {
            return Err(RunnerError::permission_denied(format!(
                "{what}: the session runs as uid {own}, not root, so it cannot run commands as \
                 user {user:?}"
            )));
        }
        Ok(RunAs {
            exec_user: Some(format!("{}:{}", entry.uid, entry.gid)),
            env: vec![
                ("HOME".to_string(), entry.home),
                ("USER".to_string(), entry.name.clone()),
                ("LOGNAME".to_string(), entry.name),
            ],
        })
    }

    /// The `/etc/passwd` entry of `user` in the container.
    async fn lookup(&self, what: &str, user: &str, numeric: Option<u32>) -> RunnerResult<Entry> {
        let (field, value) = match numeric {
            Some(uid) => ("uid", uid.to_string()),
            None => ("name", user.to_string()),
        };
        let out = self.script(what, LOOKUP, &[field, &value]).await?;
        if out.code == NO_ENTRY {
            return Err(RunnerError::not_found(format!(
                "{what}: no user {user:?} in the container's /etc/passwd"
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        match (out.code, lines.as_slice()) {
            (0, [name, uid, gid, home]) => match (uid.parse(), gid.parse()) {
                (Ok(uid), Ok(gid)) => Ok(Entry {
                    name: name.to_string(),
                    uid,
                    gid,
                    home: home.to_string(),
                }),
                _ => Err(RunnerError::provider(format!(
                    "{what}: the /etc/passwd entry of user {user:?} has uid {uid:?} and gid \
                     {gid:?}, not numbers"
                ))),
            },
            _ => Err(RunnerError::provider(format!(
                "{what}: looking up user {user:?} failed with exit {}: {}",
                out.code, out.stderr
            ))),
        }
    }
}
