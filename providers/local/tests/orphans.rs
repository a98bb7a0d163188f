//! A crashed embedding process: a child process (this test binary, re-run on
//! the ignored `crash_child` test) opens unix-local sessions with running
//! background commands, takes a snapshot and the workspace execution lease,
//! and is killed with SIGKILL. The lease lapses after its ttl, and a sweep
//! from this process removes the child's workspaces, snapshot and processes
//! while another live session (and its snapshot) stays.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerErrorKind,
    RunnerLeaseRequest,
};
use runner_local::{LocalProvider, SweepConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{Area, alive, destination, eventually};

/// The directory the child works in; set only for the child.
const AREA_ENV: &str = "RUNNER_LOCAL_CRASH_AREA";
/// Lifetime of the lease the child takes and never releases.
const CHILD_LEASE_TTL_MS: u64 = 2_000;

/// What the child reports once everything is in place.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    roots: Vec<PathBuf>,
    snapshot: PathBuf,
    pids: Vec<i32>,
    leased_root: PathBuf,
    holder: String,
}

fn owned_config(area: &std::path::Path) -> serde_json::Value {
    json!({
        "workspaces_dir": area.join("workspaces"),
        "snapshot_dir": area.join("snapshots"),
        "kill_grace_ms": 200,
    })
}

/// Starts `sleep 1000` in the background and, through a shell, a grandchild
/// that outlives its parent; returns both pids.
async fn background(session: &Arc<dyn RemoteRunnerSession>, id: &str) -> Vec<i32> {
    let info = session
        .start_command(RunnerCommandRequest::new(id, "sleep", ["1000"]))
        .await
        .expect("start_command");
    let detached = session
        .run_command(RunnerCommandRequest::shell(
            format!("{id}-detached"),
            "sleep 1000 >/dev/null 2>&1 & echo $!",
        ))
        .await
        .expect("run_command");
    vec![
        info.pid.expect("pid") as i32,
        detached.stdout.trim().parse().expect("pid"),
    ]
}

/// The child's side: run only by `killed_embedding_process_leaves_nothing_after_sweep`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the child process of killed_embedding_process_leaves_nothing_after_sweep, which runs it"]
async fn crash_child() {
    let Some(area) = std::env::var_os(AREA_ENV).map(PathBuf::from) else {
        return;
    };
    let provider = LocalProvider::new();
    let mut roots = Vec::new();
    let mut pids = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..2 {
        let s = provider
            .create_session(destination(owned_config(&area)))
            .await
            .expect("create_session");
        s.write_file(runner_api::RunnerFileWriteRequest::new(
            "work.txt",
            b"unsaved work".to_vec(),
        ))
        .await
        .expect("write_file");
        pids.extend(background(&s, &format!("bg{i}")).await);
        roots.push(s.workspace_root());
        sessions.push(s);
    }
    let snapshot = sessions[0].snapshot().await.expect("snapshot");
    let holder = format!("crash-child-{}", std::process::id());
    sessions[1]
        .acquire_workspace_execution_lease(RunnerLeaseRequest {
            holder: holder.clone(),
            ttl_ms: CHILD_LEASE_TTL_MS,
            wait_ms: 0,
        })
        .await
        .expect("acquire lease");
    let report = ChildReport {
        leased_root: roots[1].clone(),
        roots,
        snapshot: PathBuf::from(snapshot.metadata["path"].as_str().expect("snapshot path")),
        pids,
        holder,
    };
    println!("READY {}", serde_json::to_string(&report).expect("json"));
    // Wait to be killed; the sessions are never closed or dropped.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(sessions);
}

/// Runs `crash_child` in a child process and waits for its report.
fn spawn_child(area: &std::path::Path) -> (std::process::Child, ChildReport) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env(AREA_ENV, area)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child process");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("READY ") {
                let _ = tx.send(serde_json::from_str::<ChildReport>(json).expect("report"));
                return;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(report) => (child, report),
        Err(_) => {
            let _ = child.kill();
            panic!("the child process did not report within 120 s");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_embedding_process_leaves_nothing_after_sweep() {
    let area = Area::new();
    let provider = LocalProvider::new();

    // A live session of this process in the same directories, with a process
    // and a snapshot of its own.
    let live = provider
        .create_session(destination(owned_config(area.tmp.path())))
        .await
        .expect("create");
    let live_pids = background(&live, "live").await;
    let live_snapshot = live.snapshot().await.expect("snapshot");
    let live_snapshot = PathBuf::from(live_snapshot.metadata["path"].as_str().expect("path"));

    let (mut child, report) = spawn_child(area.tmp.path());

    // The child's lease holds across processes: a session of this process on
    // the same workspace is refused, naming the child.
    let mut leased = destination(json!({ "root": report.leased_root }));
    leased.id = "leased".into();
    let observer = provider.create_session(leased).await.expect("create");
    let refused = observer
        .acquire_workspace_execution_lease(RunnerLeaseRequest {
            holder: "observer".into(),
            ttl_ms: 10_000,
            wait_ms: 0,
        })
        .await
        .map(drop)
        .expect_err("the child holds the lease");
    assert_eq!(refused.kind(), RunnerErrorKind::AlreadyExists, "{refused}");
    assert!(refused.message().contains(&report.holder), "{refused}");

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    // The dead holder's lease lapses after its ttl and can be taken over.
    let lease = observer
        .acquire_workspace_execution_lease(RunnerLeaseRequest {
            holder: "observer".into(),
            ttl_ms: 10_000,
            wait_ms: 60_000,
        })
        .await
        .expect("the lapsed lease is taken over");
    observer
        .release_workspace_execution_lease(&lease)
        .await
        .expect("release");
    observer.close().await.expect("close the observer");

    // Within the grace period nothing of the child is touched.
    let patient = LocalProvider::new().with_sweep(SweepConfig {
        workspaces_dir: area.path("workspaces"),
        snapshot_dir: area.path("snapshots"),
        grace: Duration::from_secs(3600),
        snapshot_grace: Some(Duration::from_secs(3600)),
    });
    let early = patient.sweep_orphans().await.expect("sweep");
    assert!(early.removed.is_empty(), "{early:?}");
    assert!(report.roots.iter().all(|r| r.exists()));
    assert!(report.snapshot.exists());

    // After it, everything of the child goes: workspaces, snapshot, processes.
    let sweeper = LocalProvider::new().with_sweep(SweepConfig {
        workspaces_dir: area.path("workspaces"),
        snapshot_dir: area.path("snapshots"),
        grace: Duration::ZERO,
        snapshot_grace: Some(Duration::ZERO),
    });
    let swept = sweeper.sweep_orphans().await.expect("sweep");
    for root in &report.roots {
        assert!(!root.exists(), "{} survived the sweep", root.display());
        assert!(
            swept.removed.contains(&root.display().to_string()),
            "{swept:?}"
        );
    }
    assert!(!report.snapshot.exists(), "the child's snapshot survived");
    assert!(
        swept
            .removed
            .contains(&report.snapshot.display().to_string()),
        "{swept:?}"
    );
    for &pid in &report.pids {
        assert!(
            eventually(Duration::from_secs(30), || async move { !alive(pid) }).await,
            "process {pid} of the killed child survived the sweep"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(area.path("workspaces"))
        .expect("workspaces")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(
        leftovers,
        [live
            .workspace_root()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()],
        "only the live session's workspace is left"
    );

    // The live session, its snapshot and its processes are untouched.
    assert!(live.workspace_root().exists());
    assert!(
        live_snapshot.exists(),
        "a live session's snapshot was swept"
    );
    assert!(live_pids.iter().all(|&pid| alive(pid)));
    let again = sweeper.sweep_orphans().await.expect("sweep");
    assert!(again.removed.is_empty(), "{again:?}");
    live.close().await.expect("close");

    // Once closed, the live session's snapshot is an orphan too.
    let last = sweeper.sweep_orphans().await.expect("sweep");
    assert!(
        last.removed.contains(&live_snapshot.display().to_string()),
        "{last:?}"
    );
}
