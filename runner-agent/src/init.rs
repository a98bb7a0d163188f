//! `runner-agent init`: the agent as a container's PID 1.
//!
//! A container's first process inherits every orphan in it: a command's
//! daemonised grandchild, a killed shell's children. PID 1 must reap them or
//! they stay zombies for the container's life. `init` starts the agent
//! (this binary again, with the given arguments) as its only child, reaps
//! every child that exits, passes SIGTERM and SIGINT to the agent, and exits
//! with the agent's status (128 + the signal when a signal ended it).

use std::ffi::OsString;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// Runs `init` with the child's arguments `args`.
pub(crate) fn run(args: Vec<OsString>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runner-agent init: building the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(args)) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("runner-agent init: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn supervise(args: Vec<OsString>) -> Result<u8, String> {
    // Watch the signals before the child exists, so no exit is missed.
    let watch = |kind| signal(kind).map_err(|e| format!("watching signals: {e}"));
    let (mut child_exits, mut term, mut int) = (
        watch(SignalKind::child())?,
        watch(SignalKind::terminate())?,
        watch(SignalKind::interrupt())?,
    );
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let agent = std::process::Command::new(&exe)
        .args(&args)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let agent = Pid::from_raw(i32::try_from(agent.id()).map_err(|_| "a pid out of range")?);
    loop {
        if let Some(code) = reap(agent) {
            return Ok(code);
        }
        tokio::select! {
            _ = child_exits.recv() => {}
            _ = term.recv() => { let _ = kill(agent, Signal::SIGTERM); }
            _ = int.recv() => { let _ = kill(agent, Signal::SIGINT); }
        }
    }
}

/// Reaps every exited child; the agent's exit status once it has exited.
fn reap(agent: Pid) -> Option<u8> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                return Some(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == agent => {
                return Some(128u8.saturating_add(signal as u8));
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            // No children left: the agent is gone too.
            Err(_) => return Some(1),
        }
    }
}
