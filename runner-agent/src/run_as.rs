//! `runner-agent run-as --uid U --gid G -- PROGRAM ARGS…`: the agent as
//! unix-local's user switcher (`LocalProvider::with_user_switcher`), where
//! there is no util-linux `setpriv` (a busybox image).
//!
//! unix-local starts it as root, already in the command's working directory
//! and with the command's environment. It clears the supplementary groups,
//! sets the gid and then the uid (real, effective and saved), checks that
//! the switch took, and execs `PROGRAM` (found through `PATH` as `execvp`
//! does). When the switch fails it exits 126; when the exec fails, 127 for a
//! program not found and 126 otherwise, as a shell does, with the reason on
//! stderr.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::unistd::{Gid, Uid, getegid, geteuid, getgid, getuid, setgid, setgroups, setuid};

/// The status when the program cannot be run (or the switch failed).
const CANNOT_EXECUTE: u8 = 126;

/// The status when the program does not exist.
const NOT_FOUND: u8 = 127;

/// Switches to `uid`/`gid` and execs `command` (the program, then its
/// arguments); returns only when that failed.
pub(crate) fn run(uid: u32, gid: u32, command: &[OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("runner-agent run-as: no program given");
        return ExitCode::from(CANNOT_EXECUTE);
    };
    if let Err(message) = switch(Uid::from_raw(uid), Gid::from_raw(gid)) {
        eprintln!("runner-agent run-as: switching to uid {uid} gid {gid}: {message}");
        return ExitCode::from(CANNOT_EXECUTE);
    }
    let error = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "runner-agent run-as: {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::from(match error.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    })
}

/// Clears the supplementary groups, sets the gid, then the uid, and checks
/// that real and effective ids are the ones asked for.
fn switch(uid: Uid, gid: Gid) -> Result<(), String> {
    setgroups(&[]).map_err(|e| format!("clearing the supplementary groups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(uid).map_err(|e| format!("setuid: {e}"))?;
    let now = (getuid(), geteuid(), getgid(), getegid());
    if now != (uid, uid, gid, gid) {
        return Err(format!(
            "the switch did not take: uid {} euid {} gid {} egid {}",
            now.0, now.1, now.2, now.3
        ));
    }
    Ok(())
}
