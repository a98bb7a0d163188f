//! Shared pieces of the unix-local integration tests: real temp directories,
//! real processes, and `/proc` checks.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerDestination, RunnerErrorKind, RunnerManifest,
    RunnerResult,
};
use runner_local::LocalProvider;
use serde_json::{Value, json};

/// A temp area with a workspace root, a workspaces dir and a snapshot dir.
pub struct Area {
    pub tmp: tempfile::TempDir,
}

impl Area {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Config with an explicit root `<tmp>/root`.
    pub fn rooted_config(&self) -> Value {
        json!({
            "root": self.path("root"),
            "workspaces_dir": self.path("workspaces"),
            "snapshot_dir": self.path("snapshots"),
            "kill_grace_ms": 200,
        })
    }

    /// Config without a root: the session owns a fresh directory.
    pub fn owned_config(&self) -> Value {
        json!({
            "workspaces_dir": self.path("workspaces"),
            "snapshot_dir": self.path("snapshots"),
            "kill_grace_ms": 200,
        })
    }
}

pub fn destination(config: Value) -> RunnerDestination {
    destination_with(config, RunnerManifest::default())
}

pub fn destination_with(config: Value, manifest: RunnerManifest) -> RunnerDestination {
    RunnerDestination {
        id: "test".into(),
        provider_id: "unix-local".into(),
        config,
        default_manifest: manifest,
        artifacts: None,
    }
}

pub async fn session(config: Value) -> Arc<dyn RemoteRunnerSession> {
    LocalProvider::new()
        .create_session(destination(config))
        .await
        .expect("create_session")
}

/// A session of the stacked provider (`runner_stack::stacked`), as users get
/// it: closed-session and capability checks, confinement, mounts.
pub async fn stacked_session(config: Value) -> Arc<dyn RemoteRunnerSession> {
    runner_stack::stacked(LocalProvider::new())
        .create_session(destination(config))
        .await
        .expect("create_session")
}

pub fn kind<T: std::fmt::Debug>(result: RunnerResult<T>) -> RunnerErrorKind {
    match result {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.kind(),
    }
}

/// Polls `check` every 25 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// (pid, pgrp, state) of every process, from /proc/<pid>/stat.
fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields[0].chars().next().unwrap_or('?');
        let pgrp = fields[2].parse().unwrap_or(-1);
        out.push((pid, pgrp, state));
    }
    out
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, pgrp, state)| *pgrp == pgid && *state != 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Whether `pid` is alive (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    processes()
        .into_iter()
        .any(|(p, _, state)| p == pid && state != 'Z')
}

/// Waits (up to 5 s: zombies may linger) until group `pgid` has no live member.
pub async fn group_gone(pgid: i32) -> bool {
    eventually(Duration::from_secs(5), || async move {
        group_members(pgid).is_empty()
    })
    .await
}

/// Every file under `root` (relative path → contents, mode), symlinks as targets.
pub fn tree(root: &Path) -> Vec<(String, String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, u32)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.push((rel, format!("-> {}", target.display()), 0));
            } else if meta.is_dir() {
                out.push((rel.clone(), "<dir>".into(), mode));
                walk(root, &path, out);
            } else {
                let contents = std::fs::read(&path).expect("read");
                out.push((rel, String::from_utf8_lossy(&contents).into_owned(), mode));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The workspaces left in a provider's `workspaces` directory (its own lock
/// directory does not count); empty when the directory is missing.
pub fn workspaces_in(workspaces: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(workspaces)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|name| name != ".locks")
                .collect()
        })
        .unwrap_or_default()
}

/// A number no other test or process uses, for `sleep <marker>` commands
/// that are found again by scanning /proc.
pub fn unique_marker() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    // Seconds no one sleeps by accident: the pid, a counter and the clock.
    7_000_000_000_000
        + u64::from(std::process::id()) * 1_000_000
        + NEXT.fetch_add(1, Ordering::Relaxed) * 1_000
        + nanos % 1_000
}

/// Pids of live (non-zombie) processes that are `sleep <marker>` or
/// `sh -c 'sleep <marker>'` (not a longer script that mentions it).
pub fn marked_processes(marker: u64) -> Vec<i32> {
    let sleep = format!("sleep {marker}");
    let shell = format!("sh -c sleep {marker}");
    let mut out = Vec::new();
    for (pid, _, state) in processes() {
        if state == 'Z' {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let line = args.join(" ");
        if line == sleep || line == shell || line.ends_with(&format!("/{sleep}")) {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to 10 s) until no live process holds `sleep <marker>`.
pub async fn marked_gone(marker: u64) -> bool {
    eventually(Duration::from_secs(10), || async move {
        marked_processes(marker).is_empty()
    })
    .await
}

/// Waits (up to 10 s) until a live process holds `sleep <marker>`.
pub async fn marked_running(marker: u64) -> bool {
    eventually(Duration::from_secs(10), || async move {
        !marked_processes(marker).is_empty()
    })
    .await
}

/// KILLs what is left of `sleep <marker>` processes when dropped, so a failed
/// test leaves nothing behind.
pub struct MarkerGuard(pub Vec<u64>);

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        for marker in &self.0 {
            for pid in marked_processes(*marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A script that starts `sleep <a>` in a new session in the background and
/// `sleep <b>` in a new session from a subshell that exits at once (so it is
/// orphaned at once), then runs `rest`.
pub fn setsid_escape_script(a: u64, b: u64, rest: &str) -> String {
    format!("setsid sh -c 'sleep {a}' & ( setsid sh -c 'sleep {b}' & ); {rest}")
}
