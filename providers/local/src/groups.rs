//! Every process a session started, so that nothing of it survives a timeout,
//! `cancel_command` or `close`: process groups, environment marks and parent
//! links, read from `/proc`.
//!
//! Each command runs in its own process group whose id is the command's pid,
//! and its environment carries two marks the request cannot override (they are
//! added last): [`SESSION_ENV`] (the session id) and [`COMMAND_ENV`] (unique
//! per command). Children inherit them. A command's *tree* is every live
//! process of its group, every process carrying its command mark, and every
//! descendant (by parent pid) of those; a session's tree is the same over all
//! its groups and its session mark. So a process that leaves the group
//! (`setsid`, `setpgid`) is still found by its mark, and one that clears its
//! environment is still found as a descendant while its parent lives. A
//! process that does both (clears the mark and is orphaned) escapes:
//! unix-local is not a sandbox.
//!
//! A signal goes to a tree in rounds: scan `/proc`, signal every process not
//! signalled yet, scan again, until a scan finds nothing new (children forked
//! meanwhile are caught by the next round). The embedding process itself is
//! never signalled.
//!
//! Linux does not hand out a pid again while a process group of that number
//! still has members, so a remembered group that still has members is ours,
//! unless all of ours died and the number was reused by a new leader: that case
//! is recognised by the leader's start time and the group left alone.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use runner_api::{RunnerError, RunnerResult, RunnerSignal};

/// The variable every command of a session carries: the session id.
pub(crate) const SESSION_ENV: &str = "RUNNER_LOCAL_SESSION";

/// The variable every command carries: a mark unique to the command.
pub(crate) const COMMAND_ENV: &str = "RUNNER_LOCAL_COMMAND";

/// Most rounds one signal takes (a fork bomb must not keep it going forever).
const MAX_ROUNDS: usize = 200;

/// A process as `/proc` shows it.
struct ProcEntry {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    zombie: bool,
    starttime: u64,
    /// The value of [`SESSION_ENV`] in its environment.
    session: Option<String>,
    /// The value of [`COMMAND_ENV`] in its environment.
    command: Option<String>,
}

/// Every process `/proc` lists except the embedding process; `None` when
/// `/proc` cannot be read.
fn scan_proc() -> Option<Vec<ProcEntry>> {
    let own = std::process::id() as i32;
    let all = procfs::process::all_processes().ok()?;
    let procs = all
        .filter_map(Result::ok)
        .filter_map(|process| {
            let stat = process.stat().ok()?;
            if stat.pid == own {
                return None;
            }
            let (session, command) = match process.environ() {
                Ok(environ) => {
                    let get = |key: &str| {
                        environ
                            .get(OsStr::new(key))
                            .map(|v| v.to_string_lossy().into_owned())
                    };
                    (get(SESSION_ENV), get(COMMAND_ENV))
                }
                Err(_) => (None, None),
            };
            Some(ProcEntry {
                pid: stat.pid,
                ppid: stat.ppid,
                pgrp: stat.pgrp,
                zombie: stat.state == 'Z',
                starttime: stat.starttime,
                session,
                command,
            })
        })
        .collect();
    Some(procs)
}

/// Where a tree starts: process groups (id → the leader's start time) and
/// environment marks.
#[derive(Default)]
struct Seeds<'a> {
    groups: HashMap<i32, Option<u64>>,
    sessions: &'a [String],
    command: Option<&'a str>,
}

impl Seeds<'_> {
    /// Groups whose number now belongs to another leader.
    fn reused(&self, procs: &[ProcEntry]) -> HashSet<i32> {
        procs
            .iter()
            .filter(
                |p| matches!(self.groups.get(&p.pid), Some(Some(start)) if *start != p.starttime),
            )
            .map(|p| p.pid)
            .collect()
    }

    fn is_seed(&self, p: &ProcEntry, reused: &HashSet<i32>) -> bool {
        (self.groups.contains_key(&p.pgrp) && !reused.contains(&p.pgrp))
            || p.session
                .as_deref()
                .is_some_and(|s| self.sessions.iter().any(|id| id == s))
            || (self.command.is_some() && p.command.as_deref() == self.command)
    }

    /// Live pids of the tree, and the seed groups that have any process
    /// (zombies included: their number cannot be reused yet).
    fn tree(&self, procs: &[ProcEntry]) -> (HashSet<i32>, HashSet<i32>) {
        let reused = self.reused(procs);
        let mut found: HashSet<i32> = HashSet::new();
        let mut groups = HashSet::new();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in procs {
            children.entry(p.ppid).or_default().push(p.pid);
            if self.is_seed(p, &reused) {
                found.insert(p.pid);
            }
            if self.groups.contains_key(&p.pgrp) && !reused.contains(&p.pgrp) {
                groups.insert(p.pgrp);
            }
        }
        let mut stack: Vec<i32> = found.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for child in children.get(&pid).into_iter().flatten() {
                if found.insert(*child) {
                    stack.push(*child);
                }
            }
        }
        let zombies: HashSet<i32> = procs.iter().filter(|p| p.zombie).map(|p| p.pid).collect();
        found.retain(|pid| !zombies.contains(pid));
        (found, groups)
    }

    /// Sends `signal` to the tree in rounds until a scan finds nothing new.
    /// Returns the pids signalled.
    fn signal(&self, signal: Signal) -> HashSet<i32> {
        let mut sent = HashSet::new();
        for round in 0..MAX_ROUNDS {
            let Some(procs) = scan_proc() else {
                tracing::warn!("cannot read /proc: the session's processes are not signalled");
                return sent;
            };
            let (live, groups) = self.tree(&procs);
            if round == 0 {
                // The group first, in one call, then whoever left it.
                for pgid in groups {
                    let _ = killpg(Pid::from_raw(pgid), signal);
                }
            }
            let new: Vec<i32> = live.into_iter().filter(|pid| !sent.contains(pid)).collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                match kill(Pid::from_raw(pid), signal) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        tracing::debug!(pid, error = %e, signal = %signal, "signalling a process of the session failed");
                    }
                }
                sent.insert(pid);
            }
        }
        sent
    }
}

fn to_signal(signal: RunnerSignal) -> RunnerResult<Signal> {
    Signal::try_from(signal.number())
        .map_err(|e| RunnerError::invalid_request(format!("signal {}: {e}", signal.name())))
}

fn start_time(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

/// The processes of one command: its group and its mark. Blocking methods
/// (they read `/proc`).
#[derive(Debug, Clone)]
pub(crate) struct CommandTree {
    pgid: i32,
    leader_start: Option<u64>,
    mark: String,
}

impl CommandTree {
    /// A fresh command mark, for [`COMMAND_ENV`].
    pub(crate) fn new_mark() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Sends `signal` to every process of the command's tree.
    ///
    /// Errors: `InvalidRequest` for a signal the host does not know.
    pub(crate) fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        let signal = to_signal(signal)?;
        let seeds = Seeds {
            groups: HashMap::from([(self.pgid, self.leader_start)]),
            command: Some(&self.mark),
            ..Seeds::default()
        };
        seeds.signal(signal);
        Ok(())
    }
}

/// KILLs every process carrying the mark of one of `session_ids` and their
/// descendants (sessions of a crashed embedding process). Returns how many
/// processes were signalled. Blocking.
pub(crate) fn kill_sessions(session_ids: &[String]) -> usize {
    Seeds {
        sessions: session_ids,
        ..Seeds::default()
    }
    .signal(Signal::SIGKILL)
    .len()
}

/// The process groups one session created (group id → the leader's start
/// time in clock ticks since boot) and its session mark. Blocking methods.
pub(crate) struct Groups {
    session: [String; 1],
    groups: Mutex<HashMap<i32, Option<u64>>>,
}

impl Groups {
    /// The processes of session `session_id`.
    pub(crate) fn new(session_id: &str) -> Self {
        Self {
            session: [session_id.to_string()],
            groups: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Option<u64>>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers the group led by `pid` (call right after spawning it) and
    /// returns the tree of the command that leads it, marked with `mark`.
    pub(crate) fn remember(&self, pid: i32, mark: String) -> CommandTree {
        let leader_start = start_time(pid);
        self.lock().insert(pid, leader_start);
        CommandTree {
            pgid: pid,
            leader_start,
            mark,
        }
    }

    fn seeds(&self) -> Seeds<'_> {
        Seeds {
            groups: self.lock().clone(),
            sessions: &self.session,
            command: None,
        }
    }

    /// Forgets remembered groups that have no process left (among those that
    /// `seeds` was taken with; groups remembered since are kept).
    fn forget_gone(&self, seeds: &Seeds<'_>, groups_with_processes: &HashSet<i32>) {
        self.lock()
            .retain(|pgid, start| match seeds.groups.get(pgid) {
                Some(seen) if seen == start => groups_with_processes.contains(pgid),
                _ => true,
            });
    }

    /// Live pids of the session's tree. Forgets groups that are gone.
    pub(crate) fn live_pids(&self) -> HashSet<u32> {
        let seeds = self.seeds();
        let Some(procs) = scan_proc() else {
            tracing::warn!("cannot read /proc: the session's processes are not listed");
            return HashSet::new();
        };
        let (live, groups) = seeds.tree(&procs);
        self.forget_gone(&seeds, &groups);
        live.into_iter().map(|pid| pid as u32).collect()
    }

    /// Sends `signal` to every process of the session's tree.
    pub(crate) fn signal_live(&self, signal: RunnerSignal) {
        match to_signal(signal) {
            Ok(signal) => {
                self.seeds().signal(signal);
            }
            Err(e) => tracing::warn!(error = %e, "signalling the session's processes failed"),
        }
    }

    /// KILLs the session's tree until no live process is left (bounded by
    /// `limit`).
    pub(crate) fn kill_all_blocking(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let live = self.live_pids();
            if live.is_empty() {
                return;
            }
            tracing::debug!(
                processes = live.len(),
                "killing processes left by the session"
            );
            self.seeds().signal(Signal::SIGKILL);
            if Instant::now() >= deadline {
                tracing::warn!(
                    processes = live.len(),
                    "processes of the session survived KILL"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// KILLs the session's tree once (used when a session is dropped without
    /// `close`).
    pub(crate) fn kill_remembered_now(&self) {
        self.seeds().signal(Signal::SIGKILL);
    }
}
