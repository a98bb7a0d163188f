//! Process trees, read from `/proc`.
//!
//! The agent makes itself a child subreaper at start: a process whose parent
//! exits is re-parented to the agent instead of init, so everything a command
//! started, `setsid` escapes and double forks included, stays a descendant of
//! the agent where a scan by parent pid finds it. Killing a tree stops it first
//! (a stopped process cannot fork), rescanning until nothing new appears, then
//! kills what it stopped.

use std::collections::BTreeSet;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Most rescans one signal makes: a tree forking faster than it is signalled
/// is left to the next signal (and, in the end, to `shutdown`).
const MAX_ROUNDS: usize = 64;

/// One process, from `/proc/<pid>/stat`.
pub(crate) struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
    /// Exited, waiting to be reaped by its parent.
    pub zombie: bool,
}

/// Every process visible in `/proc`.
pub(crate) fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let zombie = fields.next()? == "Z";
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Proc {
            pid,
            ppid,
            pgrp,
            zombie,
        })
    })
    .collect()
}

/// The processes below `roots` (children, their children, …), roots excluded.
pub(crate) fn below(procs: &[Proc], roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut found = BTreeSet::new();
    let mut frontier: Vec<i32> = roots.iter().copied().collect();
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            if !roots.contains(&p.pid) && found.insert(p.pid) {
                frontier.push(p.pid);
            }
        }
    }
    found
}

/// Sends `signal` to every process `find` picks from a fresh scan, given the
/// pids signalled so far, and scans again until it picks nobody new. SIGKILL
/// is preceded by a SIGSTOP pass, so no process forks between the scan and
/// the kill. Returns every pid signalled.
pub(crate) fn signal_tree(
    signal: Signal,
    mut find: impl FnMut(&[Proc], &BTreeSet<i32>) -> BTreeSet<i32>,
) -> BTreeSet<i32> {
    let mut stopped = BTreeSet::new();
    if signal == Signal::SIGKILL {
        stopped = pass(Signal::SIGSTOP, &mut find, &stopped);
    }
    pass(signal, &mut find, &stopped)
}

fn pass(
    signal: Signal,
    find: &mut impl FnMut(&[Proc], &BTreeSet<i32>) -> BTreeSet<i32>,
    known: &BTreeSet<i32>,
) -> BTreeSet<i32> {
    let mut signalled = known.clone();
    let mut sent = BTreeSet::new();
    for _ in 0..MAX_ROUNDS {
        let picked = find(&processes(), &signalled);
        let new: Vec<i32> = picked.difference(&sent).copied().collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            // A process that is gone already is fine.
            let _ = kill(Pid::from_raw(pid), signal);
            sent.insert(pid);
            signalled.insert(pid);
        }
    }
    signalled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, ppid: i32) -> Proc {
        Proc {
            pid,
            ppid,
            pgrp: pid,
            zombie: false,
        }
    }

    /// Grandchildren count, the roots and unrelated processes do not.
    #[test]
    fn below_walks_every_generation() {
        let procs = [
            proc(1, 0),
            proc(10, 1),
            proc(11, 10),
            proc(12, 11),
            proc(20, 1),
        ];
        let found = below(&procs, &BTreeSet::from([10]));
        assert_eq!(found, BTreeSet::from([11, 12]));
    }

    /// The scan sees this test process under its parent.
    #[test]
    fn processes_reads_parents() {
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        assert!(processes().iter().any(|p| p.pid == me && p.ppid == parent));
    }
}
