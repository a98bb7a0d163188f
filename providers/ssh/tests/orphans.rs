//! A crashed embedding process, against a real sshd on 127.0.0.1: a child
//! process (this test binary, re-run with `RUNNER_SSH_CRASH_AREA` set) opens
//! ssh sessions with running background commands and a snapshot, and is
//! killed with SIGKILL. A sweep from a new `SshProvider` told about the
//! destination then removes the child's remote session directories,
//! workspaces, snapshot and processes, while a live session of this process
//! (its directories, snapshot and process) stays.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerFileWriteRequest, RunnerSweepReport,
};
use runner_ssh::SshProvider;
use runner_testkit::{BackendGate, async_trial};
use serde::{Deserialize, Serialize};

mod support;

type TestResult = Result<(), String>;

/// The remote directory (relative to the remote home) the child works in;
/// set only for the child.
const AREA_ENV: &str = "RUNNER_SSH_CRASH_AREA";
/// The local control directory of the child's master; set only for the child.
const CONTROL_ENV: &str = "RUNNER_SSH_CRASH_CONTROL_DIR";

/// What the child reports once everything is in place.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    /// Absolute remote session directories.
    session_dirs: Vec<PathBuf>,
    /// Absolute remote workspaces.
    workspaces: Vec<PathBuf>,
    /// Absolute remote snapshot archive.
    snapshot: PathBuf,
    /// Remote process group ids of the background commands.
    pids: Vec<u32>,
}

/// The test server's destination with every remote directory under `area`.
fn destination(area: &str, control_dir: &Path, grace_s: u64) -> Result<RunnerDestination, String> {
    Ok(support::destination(
        "ssh-crash",
        support::config(serde_json::json!({
            "workspace_root": format!("{area}/workspaces"),
            "state_dir": format!("{area}/sessions"),
            "snapshot_dir": format!("{area}/snapshots"),
            "control_dir": control_dir,
            "kill_grace_ms": 200,
            "master_idle_s": 2,
            "orphan_grace_s": grace_s,
            "snapshot_grace_s": grace_s,
        }))?,
    ))
}

fn command_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Starts `sleep 1000` in the background; returns its remote process group.
async fn background(session: &Arc<dyn RemoteRunnerSession>) -> Result<u32, String> {
    session
        .start_command(RunnerCommandRequest::new(
            command_id("bg"),
            "sleep",
            ["1000"],
        ))
        .await
        .map_err(|e| format!("start_command: {e}"))?
        .pid
        .ok_or_else(|| "a background command without a pid".to_string())
}

fn metadata_path(value: &serde_json::Value, key: &str) -> Result<PathBuf, String> {
    value[key]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| format!("metadata without {key:?}: {value}"))
}

/// The child's side: opens two sessions with a background command each and
/// a snapshot, reports, and waits to be killed (nothing is ever closed).
async fn crash_child(area: String, control_dir: PathBuf) -> TestResult {
    let provider = SshProvider::new();
    let destination = destination(&area, &control_dir, 3600)?;
    let mut report = ChildReport {
        session_dirs: Vec::new(),
        workspaces: Vec::new(),
        snapshot: PathBuf::new(),
        pids: Vec::new(),
    };
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let session = provider
            .create_session(destination.clone())
            .await
            .map_err(|e| format!("create_session: {e}"))?;
        session
            .write_file(RunnerFileWriteRequest::new(
                "work.txt",
                b"unsaved work".to_vec(),
            ))
            .await
            .map_err(|e| format!("write_file: {e}"))?;
        report.pids.push(background(&session).await?);
        report
            .session_dirs
            .push(metadata_path(&session.state().metadata, "session_dir")?);
        report.workspaces.push(session.workspace_root());
        sessions.push(session);
    }
    let snapshot = sessions[0]
        .snapshot()
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    report.snapshot = metadata_path(&snapshot.metadata, "archive")?;
    let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    println!("READY {json}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(sessions);
    Ok(())
}

/// The child process; SIGKILLed when dropped early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child and waits for its report.
fn spawn_child(area: &str, control_dir: &Path) -> Result<(ChildGuard, ChildReport), String> {
    let exe = std::env::current_exe().map_err(|e| format!("the test binary: {e}"))?;
    let mut child = Command::new(exe)
        .env(AREA_ENV, area)
        .env(CONTROL_ENV, control_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn the child process: {e}"))?;
    let stdout = child.stdout.take().ok_or("the child's stdout")?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("READY ") {
                let _ = tx.send(serde_json::from_str::<ChildReport>(json));
                return;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(report)) => Ok((guard, report)),
        Ok(Err(e)) => Err(format!("the child's report: {e}")),
        Err(_) => Err("the child process did not report within 120 s".into()),
    }
}

/// The local control directory; on drop, every master left in it (the
/// killed child's, which a SIGKILL cannot stop) is told to exit.
struct ControlDir(tempfile::TempDir);

impl Drop for ControlDir {
    fn drop(&mut self) {
        for socket in sockets(self.0.path()) {
            let _ = Command::new("ssh")
                .args(["-F", "/dev/null", "-O", "exit", "-S"])
                .arg(&socket)
                .arg("runner-test-master")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Unix sockets up to two levels under `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_socket() {
                found.push(entry.path());
            } else if kind.is_dir() && depth < 2 {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// Whether `script` exits 0 on the remote host.
async fn remote_true(
    session: &Arc<dyn RemoteRunnerSession>,
    script: String,
) -> Result<bool, String> {
    let result = session
        .run_command(RunnerCommandRequest::shell(command_id("check"), script))
        .await
        .map_err(|e| format!("run_command: {e}"))?;
    Ok(result.exit_code == Some(0))
}

async fn exists(session: &Arc<dyn RemoteRunnerSession>, path: &Path) -> Result<bool, String> {
    remote_true(session, format!("test -e '{}'", path.display())).await
}

/// Whether process group `pgid` has a live (non-zombie) member.
async fn group_alive(session: &Arc<dyn RemoteRunnerSession>, pgid: u32) -> Result<bool, String> {
    remote_true(
        session,
        format!(
            "for s in /proc/[0-9]*/stat; do read -r l < \"$s\" 2>/dev/null || continue; \
             set -- ${{l##*) }}; [ \"$1\" != Z ] && [ \"$3\" = {pgid} ] && exit 0; done; exit 1"
        ),
    )
    .await
}

/// Polls `check` until it is true, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Result<bool, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(report: &RunnerSweepReport, path: &Path) -> bool {
    let wanted = format!(":{}", path.display());
    report.removed.iter().any(|r| r.ends_with(&wanted))
}

fn ensure(ok: bool, message: impl FnOnce() -> String) -> TestResult {
    if ok { Ok(()) } else { Err(message()) }
}

async fn sweep_with_grace(
    area: &str,
    control: &Path,
    grace_s: u64,
) -> Result<RunnerSweepReport, String> {
    let destination = destination(area, control, grace_s)?;
    let provider = SshProvider::new()
        .with_sweep_destination(&destination)
        .map_err(|e| format!("with_sweep_destination: {e}"))?;
    provider
        .sweep_orphans()
        .await
        .map_err(|e| format!("sweep_orphans: {e}"))
}

async fn killed_embedding_process_leaves_nothing_after_sweep() -> TestResult {
    let area = format!(".runners/crash-{}", uuid::Uuid::new_v4().simple());
    let control = ControlDir(
        tempfile::Builder::new()
            .prefix("rsc")
            .tempdir_in("/tmp")
            .map_err(|e| format!("control directory: {e}"))?,
    );
    let control_dir = control.0.path().to_path_buf();

    // A live session of this process in the same directories, with a
    // background command and a snapshot of its own.
    let provider = SshProvider::new();
    let live = provider
        .create_session(destination(&area, &control_dir, 3600)?)
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let outcome = crash_and_sweep(&area, &control_dir, &live).await;
    if outcome.is_err() {
        // Nothing of a failed run stays on the server either.
        let _ = live.close().await;
        let _ = sweep_with_grace(&area, &control_dir, 0).await;
    }
    let leftovers = remove_area(&provider, &area, &control_dir).await;
    outcome?;
    let leftovers = leftovers?;
    ensure(leftovers.is_empty(), || {
        format!("left behind in {area}: {leftovers:?}")
    })
}

/// Kills a child holding sessions and sweeps, next to `live`; closes `live`.
async fn crash_and_sweep(
    area: &str,
    control_dir: &Path,
    live: &Arc<dyn RemoteRunnerSession>,
) -> TestResult {
    let live_pid = background(live).await?;
    let live_snapshot = live
        .snapshot()
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    let live_snapshot = metadata_path(&live_snapshot.metadata, "archive")?;
    let live_dir = metadata_path(&live.state().metadata, "session_dir")?;

    let ours = sockets(control_dir);
    let (mut child, report) = spawn_child(area, control_dir)?;
    let childs: Vec<PathBuf> = sockets(control_dir)
        .into_iter()
        .filter(|socket| !ours.contains(socket))
        .collect();
    ensure(!childs.is_empty(), || {
        format!("no master socket of the child in {}", control_dir.display())
    })?;
    for &pid in &report.pids {
        ensure(group_alive(live, pid).await?, || {
            format!("the child's background command {pid} is not running")
        })?;
    }
    child
        .0
        .kill()
        .map_err(|e| format!("SIGKILL the child: {e}"))?;
    child.0.wait().map_err(|e| format!("reap the child: {e}"))?;

    // The killed child's master has no user left and exits after
    // `master_idle_s`; ours, holding its sftp channel, stays.
    let master_gone = eventually(Duration::from_secs(60), || {
        let childs = childs.clone();
        async move { Ok(childs.iter().all(|socket| !socket.exists())) }
    })
    .await?;
    ensure(master_gone, || {
        format!("the killed child's ssh master still runs: {childs:?}")
    })?;
    ensure(ours.iter().all(|socket| socket.exists()), || {
        format!("this process's ssh master went away: {ours:?}")
    })?;

    // The child's remote processes outlive it: only the sweep ends them.
    for &pid in &report.pids {
        ensure(group_alive(live, pid).await?, || {
            format!("process group {pid} ended with the child, before any sweep")
        })?;
    }

    // Within the grace period nothing of the child is touched.
    let early = sweep_with_grace(area, control_dir, 3600).await?;
    ensure(early.removed.is_empty(), || format!("{early:?}"))?;
    for path in report.session_dirs.iter().chain(&report.workspaces) {
        ensure(exists(live, path).await?, || {
            format!("{} went before its grace period", path.display())
        })?;
    }

    // After it, everything of the child goes: session directories,
    // workspaces, the snapshot and the processes.
    let swept = sweep_with_grace(area, control_dir, 0).await?;
    for path in report
        .session_dirs
        .iter()
        .chain(&report.workspaces)
        .chain([&report.snapshot])
    {
        ensure(!exists(live, path).await?, || {
            format!("{} survived the sweep", path.display())
        })?;
        ensure(names(&swept, path), || {
            format!("the sweep report misses {}: {swept:?}", path.display())
        })?;
    }
    for &pid in &report.pids {
        let gone = eventually(Duration::from_secs(30), || async move {
            group_alive(live, pid).await.map(|alive| !alive)
        })
        .await?;
        ensure(gone, || {
            format!("process group {pid} of the killed child survived the sweep")
        })?;
    }

    // The live session, its snapshot and its process are untouched.
    for path in [&live.workspace_root(), &live_dir, &live_snapshot] {
        ensure(exists(live, path).await?, || {
            format!("{} of the live session was swept", path.display())
        })?;
    }
    ensure(group_alive(live, live_pid).await?, || {
        "the live session's background command was killed".to_string()
    })?;
    let again = sweep_with_grace(area, control_dir, 0).await?;
    ensure(again.removed.is_empty(), || format!("{again:?}"))?;

    // Once closed, the live session's snapshot is an orphan too.
    live.close().await.map_err(|e| format!("close: {e}"))?;
    let last = sweep_with_grace(area, control_dir, 0).await?;
    ensure(names(&last, &live_snapshot), || format!("{last:?}"))?;

    Ok(())
}

/// Removes the test's remote directory; returns the files that were in it
/// besides the removing session's own, the delivered agent binaries
/// (`<state_dir>/bin`, kept for the next session by design) and the
/// agent's snapshot bookkeeping.
async fn remove_area(
    provider: &SshProvider,
    area: &str,
    control_dir: &Path,
) -> Result<Vec<String>, String> {
    let cleanup = provider
        .create_session(destination(area, control_dir, 3600)?)
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let own = [
        cleanup.workspace_root(),
        metadata_path(&cleanup.state().metadata, "session_dir")?,
    ];
    let listing = cleanup
        .run_command(RunnerCommandRequest::shell(
            command_id("leftovers"),
            format!(
                "cd \"$HOME/{area}\" && find . -mindepth 2 ! -type d ! -path './sessions/bin/*' | sort; rm -rf \"$HOME/{area}\""
            ),
        ))
        .await
        .map_err(|e| format!("run_command: {e}"))?;
    cleanup.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(listing
        .stdout
        .lines()
        .filter(|line| {
            !own.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| line.contains(&*n.to_string_lossy()))
            })
        })
        // The agent's unix-local bookkeeping of snapshots (owner records,
        // session locks) is unix-local's to sweep.
        .filter(|line| !line.starts_with("./snapshots/."))
        .map(str::to_string)
        .collect())
}

fn main() -> ExitCode {
    if let (Some(area), Some(control)) = (std::env::var_os(AREA_ENV), std::env::var_os(CONTROL_ENV))
    {
        let area = area.to_string_lossy().into_owned();
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime for the child");
        return match runtime.block_on(crash_child(area, PathBuf::from(control))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crash child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    )
    .run(vec![async_trial(
        "killed_embedding_process_leaves_nothing_after_sweep",
        killed_embedding_process_leaves_nothing_after_sweep,
    )])
}
