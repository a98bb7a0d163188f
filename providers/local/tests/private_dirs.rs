//! Where unix-local keeps its own files: workspaces, snapshots, locks and
//! execution leases live in directories private to the user (0700, files
//! 0600), and a directory someone else owns or can reach into is refused.
//! The tests run as root, so "someone else" is made with `chown`.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerErrorKind, RunnerLeaseRequest, RunnerResult,
};
use runner_local::{LocalConfig, LocalProvider, SweepConfig};
use serde_json::json;
use support::{Area, destination, session};

/// A uid no one on the test machine uses.
const OTHER_UID: u32 = 4242;

/// Asserts the permission bits of `path` (lstat), shown in octal.
fn assert_mode(path: &Path, want: u32) {
    let got = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        format!("{got:o}"),
        format!("{want:o}"),
        "mode of {}",
        path.display()
    );
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).expect("mkdir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown (the tests run as root)");
}

/// `result` is `PermissionDenied` naming `path`.
fn refused<T>(result: RunnerResult<T>, path: &Path) {
    let err = match result {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    };
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message().contains(&path.display().to_string()),
        "the message names {}: {err}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_snapshots_and_locks_are_private() {
    let area = Area::new();
    let s = session(area.owned_config()).await;
    let workspaces = area.path("workspaces");
    let snapshots = area.path("snapshots");
    for dir in [
        workspaces.clone(),
        workspaces.join(".locks"),
        workspaces.join(".locks").join(".staging"),
        s.workspace_root(),
    ] {
        assert_mode(&dir, 0o700);
    }
    let snap = s.snapshot().await.expect("snapshot");
    let tar = PathBuf::from(snap.metadata["path"].as_str().expect("path"));
    assert_mode(&snapshots, 0o700);
    // The archive holds the whole workspace.
    assert_mode(&tar, 0o600);
    for dir in [".owners", ".sessions"] {
        let dir = snapshots.join(dir);
        assert_mode(&dir, 0o700);
        for file in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            assert_mode(&file.path(), 0o600);
        }
    }
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_others_can_reach_are_refused() {
    let provider = LocalProvider::new();
    // Group or other permissions, another owner, a symlink in its place.
    for (case, prepare) in [
        ("open", (|dir: &Path| mkdir(dir, 0o755)) as fn(&Path)),
        ("foreign", |dir: &Path| {
            mkdir(dir, 0o700);
            chown(dir, OTHER_UID);
        }),
        ("symlink", |dir: &Path| {
            let target = dir.with_extension("target");
            mkdir(&target, 0o700);
            std::os::unix::fs::symlink(&target, dir).expect("symlink");
        }),
    ] {
        let area = Area::new();
        let workspaces = area.path("workspaces");
        prepare(&workspaces);
        refused(
            provider
                .create_session(destination(area.owned_config()))
                .await,
            &workspaces,
        );
        assert!(
            std::fs::read_dir(&workspaces)
                .expect("read_dir")
                .next()
                .is_none(),
            "{case}: nothing was created in {}",
            workspaces.display()
        );
        let sweeper = LocalProvider::new().with_sweep(SweepConfig {
            workspaces_dir: workspaces.clone(),
            ..SweepConfig::default()
        });
        refused(sweeper.sweep_orphans().await, &workspaces);

        // The snapshot directory is held to the same rule.
        let snapshots = area.path("snapshots");
        prepare(&snapshots);
        let s = session(area.rooted_config()).await;
        refused(s.snapshot().await, &snapshots);
        s.close().await.expect("close");
    }
}

/// What the child of `default_directories_are_private_per_user` checks; set
/// only for the child.
const CHILD_CASE: &str = "RUNNER_LOCAL_TEST_STATE_CASE";

/// The child's side: run with a controlled environment by
/// `default_directories_are_private_per_user`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the child process of default_directories_are_private_per_user, which runs it"]
async fn default_dirs_child() {
    let Ok(case) = std::env::var(CHILD_CASE) else {
        return;
    };
    let state = LocalConfig::default_state_dir();
    let provider = LocalProvider::new();
    match case.as_str() {
        "fresh" => {
            let s = provider
                .create_session(destination(json!({})))
                .await
                .expect("create_session with the default directories");
            let root = s.workspace_root();
            assert!(
                root.starts_with(state.join("unix-local").join("workspaces")),
                "{} under {}",
                root.display(),
                state.display()
            );
            let mut dir = root.clone();
            while dir.starts_with(&state) {
                assert_mode(&dir, 0o700);
                dir.pop();
            }
            let snap = s.snapshot().await.expect("snapshot");
            let tar = PathBuf::from(snap.metadata["path"].as_str().expect("path"));
            assert!(tar.starts_with(&state), "{}", tar.display());
            assert_mode(&tar, 0o600);
            s.close().await.expect("close");
        }
        "taken" => refused(
            provider.create_session(destination(json!({}))).await,
            &state,
        ),
        other => panic!("unknown case {other}"),
    }
}

/// Runs `default_dirs_child` for `case` with `env` (and nothing of XDG_STATE_HOME
/// or HOME unless `env` sets them).
fn run_child(case: &str, env: &[(&str, &Path)]) {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "default_dirs_child",
            "--test-threads=1",
        ])
        .env(CHILD_CASE, case)
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME")
        .stdout(std::process::Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command.status().expect("run the child test");
    assert!(status.success(), "child case {case} failed: {status}");
}

#[test]
fn default_directories_are_private_per_user() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // $XDG_STATE_HOME/runners, created 0700 all the way down.
    let xdg = tmp.path().join("xdg");
    run_child("fresh", &[("XDG_STATE_HOME", &xdg)]);
    assert_mode(&xdg.join("runners"), 0o700);
    // $HOME/.local/state/runners when XDG_STATE_HOME is not set.
    let home = tmp.path().join("home");
    run_child("fresh", &[("HOME", &home)]);
    assert_mode(&home.join(".local/state/runners"), 0o700);
    // Neither: <temp dir>/runners-<uid>, which someone else may have made first.
    let temp = tmp.path().join("temp");
    mkdir(&temp, 0o1777);
    run_child("fresh", &[("TMPDIR", &temp)]);
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_mode(&temp.join(format!("runners-{uid}")), 0o700);
    let shared = tmp.path().join("shared");
    mkdir(&shared, 0o1777);
    let taken = shared.join(format!("runners-{uid}"));
    mkdir(&taken, 0o700);
    chown(&taken, OTHER_UID);
    run_child("taken", &[("TMPDIR", &shared)]);
    std::fs::remove_dir(&taken).expect("remove");
    mkdir(&taken, 0o777);
    run_child("taken", &[("TMPDIR", &shared)]);
}

/// A session whose commands see `env` on top of the host's.
async fn session_with_env(
    area: &Area,
    env: serde_json::Value,
) -> std::sync::Arc<dyn RemoteRunnerSession> {
    let mut config = area.owned_config();
    config["env"] = env;
    session(config).await
}

fn lease_request() -> RunnerLeaseRequest {
    RunnerLeaseRequest {
        holder: "private-dirs-test".into(),
        ttl_ms: 60_000,
        wait_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn execution_leases_live_in_a_private_directory() {
    let area = Area::new();
    // The state directory: 0700 directories, a 0600 lease file.
    let state = area.path("state");
    let s = session_with_env(&area, json!({ "XDG_STATE_HOME": state })).await;
    let lease = s
        .acquire_workspace_execution_lease(lease_request())
        .await
        .expect("acquire");
    let base = state.join("runner-leases");
    assert_mode(&base, 0o700);
    let keys: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("read_dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_mode(&keys[0], 0o700);
    assert_mode(&keys[0].join("lease"), 0o600);
    s.release_workspace_execution_lease(&lease)
        .await
        .expect("release");
    s.close().await.expect("close");

    // When the state directory cannot be made: the per-uid directory under
    // TMPDIR, refused when someone else owns it or can reach into it.
    let blocker = area.path("not-a-dir");
    std::fs::write(&blocker, "").expect("file");
    let temp = area.path("temp");
    mkdir(&temp, 0o1777);
    let env = json!({ "XDG_STATE_HOME": blocker.join("state"), "TMPDIR": temp });
    let s = session_with_env(&area, env.clone()).await;
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let fallback = temp.join(format!("runner-leases-{uid}"));
    let lease = s
        .acquire_workspace_execution_lease(lease_request())
        .await
        .expect("acquire in the fallback");
    assert_mode(&fallback, 0o700);
    s.release_workspace_execution_lease(&lease)
        .await
        .expect("release");
    chown(&fallback, OTHER_UID);
    refused(
        s.acquire_workspace_execution_lease(lease_request()).await,
        &fallback,
    );
    chown(&fallback, uid);
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    refused(
        s.acquire_workspace_execution_lease(lease_request()).await,
        &fallback,
    );
    std::fs::remove_dir_all(&fallback).expect("remove");
    let target = area.path("elsewhere");
    mkdir(&target, 0o700);
    std::os::unix::fs::symlink(&target, &fallback).expect("symlink");
    refused(
        s.acquire_workspace_execution_lease(lease_request()).await,
        &fallback,
    );
    s.close().await.expect("close");
}
