//! The workspace execution lease for any runner with a POSIX shell: a lease
//! file with a bounded lifetime, changed only inside an atomic `mkdir`
//! critical section, run through the session's own `run_command`.
//!
//! The lease lives outside the workspace, under a per-user state directory on
//! the runner (`$XDG_STATE_HOME/runner-leases`, else
//! `$HOME/.local/state/runner-leases`; when that cannot be created,
//! `${TMPDIR:-/tmp}/runner-leases-<uid>`), in a directory named by a hash of
//! the workspace path. Every session whose commands see the same filesystem
//! therefore shares it, whichever process or machine drives the session.
//! Expiry is judged by the runner's clock.
//!
//! The state directory is private: created with mode 0700 (the script runs
//! under `umask 077`, so lease files are 0600), and refused with
//! `PermissionDenied` naming it when it exists as a symlink or a non-directory,
//! belongs to another uid, or has any group or other permission (or an ACL).
//! Nobody else can therefore plant, read or swap a lease, not even in a shared
//! temp directory.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use runner_api::{
    RemoteRunnerSession, RunnerCommandRequest, RunnerError, RunnerErrorKind, RunnerExecutionLease,
    RunnerLeaseRequest, RunnerResult,
};

/// How long one lease command may run on the runner before it is killed.
const COMMAND_TIMEOUT_MS: u64 = 60_000;
/// The longest pause between two attempts while waiting for a held lease.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The script's exit status when the state directory is not private; its
/// stderr names the directory.
const EXIT_NOT_PRIVATE: i32 = 4;

/// The script behind every lease operation. Inputs come from the environment
/// (never interpolated into the script); outputs are lines on stdout:
/// `OK`, acquired and expiry times; `HELD`, expiry and holder; or `GONE`.
/// Exit status 4 ([`EXIT_NOT_PRIVATE`]): the state directory is not private.
const SCRIPT: &str = r#"
set -u
set -f
umask 077
# private DIR: DIR is a directory (not a symlink) of this uid with no group or
# other permission bits and no ACL; else say so on stderr and exit 4.
private() {
  if [ -L "$1" ] || [ ! -d "$1" ]; then
    printf '%s is not a directory (a symlink or a file is in its place)
' "$1" >&2; exit 4
  fi
  d=$1
  set -- $(ls -ldn "$d")
  case "$1" in
    d???------|d???------.) ;;
    *) printf '%s is open to group or others (mode %s); make it private (chmod 700)
' "$d" "$1" >&2; exit 4 ;;
  esac
  if [ "$3" != "$(id -u)" ]; then
    printf '%s is owned by uid %s, not by this user (uid %s)
' "$d" "$3" "$(id -u)" >&2; exit 4
  fi
}
base="${XDG_STATE_HOME:-${HOME:-/nonexistent}/.local/state}/runner-leases"
if ! mkdir -p "$base" 2>/dev/null; then
  base="${TMPDIR:-/tmp}/runner-leases-$(id -u)"
  mkdir -p "$base" 2>/dev/null
fi
private "$base"
dir="$base/$RUNNER_LEASE_KEY"
mkdir -p "$dir" || exit 3
m="$dir/mutex"
n=0
until mkdir "$m" 2>/dev/null; do
  n=$((n + 1))
  # A critical section takes milliseconds; a mutex this old belongs to a
  # killed command.
  if [ "$n" -ge 200 ]; then rm -rf "$m"; n=0; fi
  sleep 0.05 2>/dev/null || sleep 1
done
trap 'rmdir "$m" 2>/dev/null' EXIT
cur_id=''; cur_acq=0; cur_exp=0; cur_holder=''
if [ -f "$dir/lease" ]; then
  { read -r cur_id; read -r cur_acq; read -r cur_exp; read -r cur_holder; } < "$dir/lease" || true
fi
case "$cur_acq$cur_exp" in *[!0-9]*|'') cur_id=''; cur_acq=0; cur_exp=0 ;; esac
# Milliseconds where `date` has them; else whole seconds, with the expiry
# rounded up so a lease never lasts less than its ttl.
now=$(date +%s%3N 2>/dev/null)
slack=0
case "$now" in *[!0-9]*) now='' ;; esac
if [ "${#now}" -ne 13 ]; then now="$(date +%s)000"; slack=999; fi
put() {
  rm -f "$dir/lease.tmp" &&
    printf '%s\n%s\n%s\n%s\n' "$1" "$2" "$3" "$4" > "$dir/lease.tmp" && mv -f "$dir/lease.tmp" "$dir/lease"
}
case "$RUNNER_LEASE_OP" in
  acquire)
    if [ -n "$cur_id" ] && [ "$cur_exp" -gt "$now" ]; then
      printf 'HELD\n%s\n%s\n' "$cur_exp" "$cur_holder"
    else
      exp=$((now + RUNNER_LEASE_TTL_MS + slack))
      put "$RUNNER_LEASE_ID" "$now" "$exp" "$RUNNER_LEASE_HOLDER" || exit 3
      printf 'OK\n%s\n%s\n' "$now" "$exp"
    fi ;;
  renew)
    if [ -n "$cur_id" ] && [ "$cur_id" = "$RUNNER_LEASE_ID" ]; then
      exp=$((now + RUNNER_LEASE_TTL_MS + slack))
      put "$cur_id" "$cur_acq" "$exp" "$cur_holder" || exit 3
      printf 'OK\n%s\n%s\n' "$cur_acq" "$exp"
    else
      printf 'GONE\n'
    fi ;;
  release)
    if [ -n "$cur_id" ] && [ "$cur_id" = "$RUNNER_LEASE_ID" ]; then
      rm -f "$dir/lease" || exit 3
    fi
    printf 'OK\n' ;;
  *) exit 2 ;;
esac
"#;

/// A lease operation, as the trait names it and as the script takes it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Acquire,
    Renew,
    Release,
}

impl Op {
    /// The trait method, for messages.
    const fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire_workspace_execution_lease",
            Op::Renew => "renew_workspace_execution_lease",
            Op::Release => "release_workspace_execution_lease",
        }
    }

    /// The script's `RUNNER_LEASE_OP`.
    fn script_arg(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
        }
    }
}

/// What the script answered.
enum Answer {
    /// The lease is ours: acquired and expiry times (runner clock, ms).
    Granted {
        acquired_at_ms: u64,
        expires_at_ms: u64,
    },
    /// Another live lease exists.
    Held { expires_at_ms: u64, holder: String },
    /// The lease id is no longer the current one.
    Gone,
    /// The release went through (or there was nothing to release).
    Released,
}

/// The lease directory name for a workspace: a hash of its path.
fn workspace_key(session: &dyn RemoteRunnerSession) -> String {
    let root = session.workspace_root();
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn check_holder(operation: &str, holder: &str) -> RunnerResult<()> {
    if holder.trim().is_empty() {
        return Err(RunnerError::invalid_request(format!(
            "{operation}: the holder must not be empty"
        )));
    }
    if holder.chars().any(char::is_control) {
        return Err(RunnerError::invalid_request(format!(
            "{operation}: the holder {holder:?} contains a control character"
        )));
    }
    Ok(())
}

fn check_ttl(operation: &str, ttl_ms: u64) -> RunnerResult<()> {
    if ttl_ms == 0 {
        return Err(RunnerError::invalid_request(format!(
            "{operation}: ttl_ms must be greater than zero"
        )));
    }
    Ok(())
}

fn check_workspace(
    operation: &str,
    session: &dyn RemoteRunnerSession,
    lease: &RunnerExecutionLease,
) -> RunnerResult<()> {
    let root = session.workspace_root();
    if lease.workspace != root {
        return Err(RunnerError::invalid_request(format!(
            "{operation}: lease {} covers workspace {}, not this session's {}",
            lease.lease_id,
            lease.workspace.display(),
            root.display()
        )));
    }
    Ok(())
}

/// Runs one lease operation on the runner.
async fn run(
    session: &dyn RemoteRunnerSession,
    op: Op,
    lease_id: &str,
    ttl_ms: u64,
    holder: &str,
) -> RunnerResult<Answer> {
    let operation = op.name();
    let request = RunnerCommandRequest::shell(
        format!("runner-lease-{}", uuid::Uuid::new_v4().simple()),
        SCRIPT,
    )
    .with_env("RUNNER_LEASE_OP", op.script_arg())
    .with_env("RUNNER_LEASE_KEY", workspace_key(session))
    .with_env("RUNNER_LEASE_ID", lease_id)
    .with_env("RUNNER_LEASE_TTL_MS", ttl_ms.to_string())
    .with_env("RUNNER_LEASE_HOLDER", holder)
    .with_cwd(session.workspace_root())
    .with_timeout_ms(COMMAND_TIMEOUT_MS);
    let result = session
        .run_command(request)
        .await
        .map_err(|e| e.context(operation))?;
    if !result.timed_out && result.exit_code == Some(EXIT_NOT_PRIVATE) {
        return Err(RunnerError::permission_denied(format!(
            "{operation}: refusing the lease directory on the runner: {}",
            result.stderr.trim()
        )));
    }
    if result.timed_out || !result.success() {
        return Err(RunnerError::provider(format!(
            "{operation}: the lease command on the runner failed ({}): {}",
            match result.exit_code {
                Some(code) => format!("exit code {code}"),
                None => "killed".to_string(),
            },
            result.stderr.trim()
        )));
    }
    let mut lines = result.stdout.lines();
    let bad = || {
        RunnerError::provider(format!(
            "{operation}: unexpected answer from the lease command: {:?}",
            result.stdout
        ))
    };
    let number = |lines: &mut std::str::Lines<'_>| -> RunnerResult<u64> {
        lines
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(bad)
    };
    match lines.next().map(str::trim) {
        Some("OK") if op == Op::Release => Ok(Answer::Released),
        Some("OK") => Ok(Answer::Granted {
            acquired_at_ms: number(&mut lines)?,
            expires_at_ms: number(&mut lines)?,
        }),
        Some("HELD") => Ok(Answer::Held {
            expires_at_ms: number(&mut lines)?,
            holder: lines.next().unwrap_or_default().to_string(),
        }),
        Some("GONE") => Ok(Answer::Gone),
        _ => Err(bad()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Takes the workspace execution lease of `session`'s workspace with a lease
/// file on the runner, as
/// [`RemoteRunnerSession::acquire_workspace_execution_lease`] documents.
///
/// Works on any session whose `run_command` runs `sh` with `mkdir`, `mv`,
/// `rm`, `ls`, `date` and `id` (POSIX). A provider with such a shell implements the
/// three lease methods by calling [`acquire_shell_lease`],
/// [`renew_shell_lease`] and [`release_shell_lease`] with `self`.
///
/// Errors: `AlreadyExists` naming the holder when another live lease exists
/// after `wait_ms`; `InvalidRequest` for a zero `ttl_ms` or an empty holder;
/// `PermissionDenied` naming the lease directory when it is not private (see
/// the module docs); the session's own errors from `run_command`
/// (`SessionClosed`, …).
pub async fn acquire_shell_lease(
    session: &dyn RemoteRunnerSession,
    request: RunnerLeaseRequest,
) -> RunnerResult<RunnerExecutionLease> {
    const OP: &str = Op::Acquire.name();
    check_holder(OP, &request.holder)?;
    check_ttl(OP, request.ttl_ms)?;
    let lease_id = format!("lease-{}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms);
    loop {
        match run(
            session,
            Op::Acquire,
            &lease_id,
            request.ttl_ms,
            &request.holder,
        )
        .await?
        {
            Answer::Granted {
                acquired_at_ms,
                expires_at_ms,
            } => {
                tracing::debug!(lease_id = %lease_id, holder = %request.holder, "workspace execution lease acquired");
                return Ok(RunnerExecutionLease {
                    lease_id,
                    holder: request.holder,
                    workspace: session.workspace_root(),
                    acquired_at_ms,
                    expires_at_ms,
                });
            }
            Answer::Held {
                expires_at_ms,
                holder,
            } => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(RunnerError::new(
                        RunnerErrorKind::AlreadyExists,
                        format!(
                            "{OP}: workspace {} is held by {holder:?} until {expires_at_ms} ms \
                             since the epoch (runner clock)",
                            session.workspace_root().display()
                        ),
                    ));
                }
                let until_expiry =
                    Duration::from_millis(expires_at_ms.saturating_sub(now_ms()).max(1));
                tokio::time::sleep(RETRY_PAUSE.min(until_expiry).min(deadline - now)).await;
            }
            Answer::Gone | Answer::Released => {
                return Err(RunnerError::provider(format!(
                    "{OP}: unexpected answer from the lease command"
                )));
            }
        }
    }
}

/// Extends a lease taken with [`acquire_shell_lease`] to `ttl_ms` from now, as
/// [`RemoteRunnerSession::renew_workspace_execution_lease`] documents.
///
/// Errors: `NotFound` when the lease was released or taken over by another
/// holder; `InvalidRequest` for a zero `ttl_ms` or a lease of another workspace.
pub async fn renew_shell_lease(
    session: &dyn RemoteRunnerSession,
    lease: &RunnerExecutionLease,
    ttl_ms: u64,
) -> RunnerResult<RunnerExecutionLease> {
    const OP: &str = Op::Renew.name();
    check_ttl(OP, ttl_ms)?;
    check_workspace(OP, session, lease)?;
    match run(session, Op::Renew, &lease.lease_id, ttl_ms, &lease.holder).await? {
        Answer::Granted {
            acquired_at_ms,
            expires_at_ms,
        } => Ok(RunnerExecutionLease {
            acquired_at_ms,
            expires_at_ms,
            ..lease.clone()
        }),
        Answer::Held { .. } | Answer::Gone | Answer::Released => {
            Err(RunnerError::not_found(format!(
                "{OP}: lease {} on workspace {} was released or taken over by another holder",
                lease.lease_id,
                lease.workspace.display()
            )))
        }
    }
}

/// Gives back a lease taken with [`acquire_shell_lease`], as
/// [`RemoteRunnerSession::release_workspace_execution_lease`] documents: a
/// lease that lapsed or was released already is `Ok`, and another holder's
/// lease is never touched.
///
/// Errors: `InvalidRequest` for a lease of another workspace; the session's
/// own errors from `run_command`.
pub async fn release_shell_lease(
    session: &dyn RemoteRunnerSession,
    lease: &RunnerExecutionLease,
) -> RunnerResult<()> {
    const OP: &str = Op::Release.name();
    check_workspace(OP, session, lease)?;
    run(session, Op::Release, &lease.lease_id, 1, &lease.holder).await?;
    tracing::debug!(lease_id = %lease.lease_id, "workspace execution lease released");
    Ok(())
}
