//! Every process group a session created, so that nothing of the session
//! survives `close` (background children of finished commands included).
//!
//! Each command runs in its own process group whose id is the command's pid.
//! Linux does not hand out a pid again while a process group of that number
//! still has members, so a remembered group that still has members is ours,
//! unless all of ours died and the number was reused by a new leader: that case
//! is recognised by the leader's start time and left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_api::{RunnerError, RunnerResult, RunnerSignal};

/// Sends `signal` to the process group `pgid`. A group that no longer exists is `Ok`.
///
/// Errors: `PermissionDenied` (EPERM), `Provider` otherwise.
pub(crate) fn signal_group(pgid: i32, signal: RunnerSignal) -> RunnerResult<()> {
    let sig = Signal::try_from(signal.number())
        .map_err(|e| RunnerError::invalid_request(format!("signal {}: {e}", signal.name())))?;
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(Errno::EPERM) => Err(RunnerError::permission_denied(format!(
            "signal {} to process group {pgid}: not permitted",
            signal.name()
        ))),
        Err(e) => Err(RunnerError::provider(format!(
            "signal {} to process group {pgid}: {e}",
            signal.name()
        ))),
    }
}

/// The process groups one session created: group id → the leader's start time
/// (in clock ticks since boot, from `/proc/<pid>/stat`).
#[derive(Default)]
pub(crate) struct Groups {
    groups: Mutex<HashMap<i32, Option<u64>>>,
}

/// A process as `/proc` shows it.
struct ProcEntry {
    pid: i32,
    pgrp: i32,
    zombie: bool,
    starttime: u64,
}

/// Every process `/proc` lists; `None` when `/proc` cannot be read.
fn scan_proc() -> Option<Vec<ProcEntry>> {
    let all = procfs::process::all_processes().ok()?;
    let procs = all
        .filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .map(|s| ProcEntry {
            pid: s.pid,
            pgrp: s.pgrp,
            zombie: s.state == 'Z',
            starttime: s.starttime,
        })
        .collect();
    Some(procs)
}

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Option<u64>>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers the group led by `pid` (call right after spawning it).
    pub(crate) fn remember(&self, pid: i32) {
        let start = procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.starttime);
        self.lock().insert(pid, start);
    }

    /// Live (non-zombie) member pids of every remembered group that is still
    /// ours. Forgets groups that are gone. Reads `/proc`: call off the async
    /// threads when it matters.
    pub(crate) fn live_members(&self) -> HashMap<i32, Vec<u32>> {
        let groups = self.lock().clone();
        if groups.is_empty() {
            return HashMap::new();
        }
        let Some(procs) = scan_proc() else {
            tracing::warn!("cannot read /proc: process groups of the session are not checked");
            return HashMap::new();
        };
        let reused: HashSet<i32> = procs
            .iter()
            .filter(|p| matches!(groups.get(&p.pid), Some(Some(start)) if *start != p.starttime))
            .map(|p| p.pid)
            .collect();
        let mut members: HashMap<i32, Vec<u32>> = HashMap::new();
        let mut any: HashSet<i32> = HashSet::new();
        for p in &procs {
            if !groups.contains_key(&p.pgrp) || reused.contains(&p.pgrp) {
                continue;
            }
            any.insert(p.pgrp);
            if !p.zombie {
                members.entry(p.pgrp).or_default().push(p.pid as u32);
            }
        }
        // Forget groups with no process left at all (zombies count: their
        // number cannot be reused yet).
        // Groups remembered after the scan started are kept as they are.
        self.lock().retain(|pgid, start| match groups.get(pgid) {
            Some(seen) if seen == start => any.contains(pgid) && !reused.contains(pgid),
            _ => true,
        });
        members
    }

    /// Sends `signal` to every remembered group that still has live members.
    pub(crate) fn signal_live(&self, signal: RunnerSignal) {
        for pgid in self.live_members().into_keys() {
            if let Err(e) = signal_group(pgid, signal) {
                tracing::warn!(pgid, error = %e, "signalling a remembered process group failed");
            }
        }
    }

    /// KILLs every remembered group until none has a live member (bounded by
    /// `limit`). Blocking.
    pub(crate) fn kill_all_blocking(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let live = self.live_members();
            if live.is_empty() {
                return;
            }
            for pgid in live.keys() {
                tracing::debug!(pgid, "killing a process group left by the session");
                let _ = signal_group(*pgid, RunnerSignal::Kill);
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(groups = live.len(), "process groups survived KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends KILL once to every remembered group that still has live members
    /// (used when a session is dropped without `close`).
    pub(crate) fn kill_remembered_now(&self) {
        for pgid in self.live_members().into_keys() {
            let _ = signal_group(pgid, RunnerSignal::Kill);
        }
    }
}
