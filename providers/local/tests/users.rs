//! Users: commands run as the user a request names, and the file API under
//! the POSIX permissions of the session's user.
//!
//! What needs a root embedder (switching to another user, owners kept on
//! replace) runs here when the tests run as root. What needs a non-root one
//! runs in a child: this test binary re-executed, as uid 65534 (nobody) when
//! the tests run as root, else as the current user, with a filter selecting
//! one of the `#[ignore]`d `child_*` tests, which run only when
//! [`CHILD_DIR`] names their directory. The child that runs the conformance
//! kit prints the kit's summary line (`unix-local: 1 passed, 0 failed, 0
//! skipped`) into its captured output; the parent shows it only on failure,
//! after a `[non-root child]` header.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileWriteRequest,
};
use runner_local::LocalProvider;
use runner_testkit::Conformance;
use runner_testkit::libtest_mimic::Arguments;
use serde_json::json;
use support::{
    Area, MarkerGuard, destination, kind, marked_gone, marked_processes, marked_running, session,
    setsid_escape_script, tree, unique_marker,
};

/// Set for a child only: the directory it works in (its own).
const CHILD_DIR: &str = "RUNNER_LOCAL_TEST_CHILD_DIR";

/// The uid (and gid) a root parent runs its children as.
const NOBODY: u32 = 65534;

/// A user name no host has.
const GHOST: &str = "runner-no-such-user-5c1e";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs the ignored test `name` of this binary in a child that is not root:
/// uid and gid [`NOBODY`] (supplementary groups cleared) in a temporary
/// directory it owns when this process is root, else this process's user.
/// Panics with the child's output unless the test ran and passed.
fn run_child_as_non_root(name: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            name,
            "--test-threads=1",
            "--nocapture",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", tmp.path())
        .env(CHILD_DIR, tmp.path())
        .current_dir(tmp.path());
    if is_root() {
        std::os::unix::fs::chown(tmp.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
        command.uid(NOBODY).gid(NOBODY);
    }
    let out = command.output().expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The last summary is libtest's for the child (a kit run prints its own before).
    let ran = stdout
        .lines()
        .rfind(|line| line.starts_with("test result:"))
        .is_some_and(|line| line.starts_with("test result: ok. 1 passed;"));
    assert!(
        out.status.success() && ran && stdout.contains(&format!("test {name} ...")),
        "[non-root child] {name}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// The child's directory, or `None` outside a child (the test then does nothing).
fn child_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        eprintln!("not a child of run_child_as_non_root: nothing to do");
        return None;
    };
    assert!(!is_root(), "a child must not run as root");
    Some(PathBuf::from(dir))
}

/// `sh -c script` as `user`, with the workspace root as cwd.
fn as_user(
    s: &dyn RemoteRunnerSession,
    id: &str,
    user: &str,
    script: &str,
) -> RunnerCommandRequest {
    let mut request = RunnerCommandRequest::shell(id, script).with_cwd(s.workspace_root());
    request.user = Some(user.to_string());
    request
}

fn write(path: &str, contents: &str) -> RunnerFileWriteRequest {
    RunnerFileWriteRequest::new(path, contents.as_bytes().to_vec())
}

fn write_at(path: &str, offset: u64, contents: &str) -> RunnerFileWriteRequest {
    let mut request = write(path, contents);
    request.offset = Some(offset);
    request
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// The passwd entry of this process's user.
fn me() -> nix::unistd::User {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .expect("getpwuid")
        .expect("this process's user has a passwd entry")
}

// ----- as root -----

#[tokio::test(flavor = "multi_thread")]
async fn root_runs_commands_as_another_user_in_its_private_workspace() {
    if !is_root() {
        eprintln!("needs root: switching users");
        return;
    }
    let area = Area::new();
    // An owned workspace: private to root (0700, under a 0700 directory).
    let s = session(area.owned_config()).await;
    let root = s.workspace_root();
    let script = "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; pwd; \
                  touch made 2>/dev/null && echo wrote || echo denied";
    for user in ["nobody", "65534"] {
        let res = s
            .run_command(as_user(s.as_ref(), &format!("as-{user}"), user, script))
            .await
            .expect("run as nobody");
        assert_eq!(res.exit_code, Some(0), "{res:?}");
        let nobody = nix::unistd::User::from_uid(NOBODY.into())
            .expect("getpwuid")
            .expect("nobody");
        let expected = format!(
            "{NOBODY}\n{gid}\n{gid}\n{home} nobody nobody\n{root}\ndenied\n",
            gid = nobody.gid,
            home = nobody.dir.display(),
            root = root.display()
        );
        assert_eq!(res.stdout, expected, "{res:?}");
    }
    assert!(!root.join("made").exists());
    // The request's environment still wins over the user's login variables.
    let res = s
        .run_command(
            as_user(s.as_ref(), "env", "nobody", "echo \"$HOME $USER\"")
                .with_env("HOME", "/custom"),
        )
        .await
        .expect("run");
    assert_eq!(res.stdout, "/custom nobody\n", "{res:?}");
    // Root naming itself switches nothing.
    let res = s
        .run_command(as_user(s.as_ref(), "self", "0", "id -u; echo $USER"))
        .await
        .expect("run as root");
    assert_eq!(res.stdout, "0\nroot\n", "{res:?}");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_and_programs_of_a_switched_command_are_told_apart() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let err = s
        .run_command(as_user(s.as_ref(), "ghost", GHOST, "true"))
        .await
        .expect_err("an unknown user");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    assert!(err.message().contains(GHOST), "{err}");
    assert_eq!(
        kind(
            s.run_command(as_user(s.as_ref(), "empty", "", "true"))
                .await
        ),
        RunnerErrorKind::InvalidRequest
    );
    if is_root() {
        let mut missing =
            RunnerCommandRequest::new("missing", "runner-no-such-program", Vec::<String>::new());
        missing.user = Some("nobody".into());
        let err = s.run_command(missing).await.expect_err("no such program");
        assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
        assert!(err.message().contains("runner-no-such-program"), "{err}");
        s.write_file(write("plain.sh", "#!/bin/sh\n"))
            .await
            .expect("write");
        let mut plain = RunnerCommandRequest::new("plain", "./plain.sh", Vec::<String>::new());
        plain.user = Some("nobody".into());
        let err = s.run_command(plain).await.expect_err("not executable");
        assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("plain.sh"), "{err}");
    }
    s.close().await.expect("close");
}

/// The uid `/proc/<pid>/status` gives.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn switched_commands_stay_in_the_process_tree() {
    if !is_root() {
        eprintln!("needs root: switching users");
        return;
    }
    let area = Area::new();
    let s = session(area.owned_config()).await;
    let (a, b, c) = (unique_marker(), unique_marker(), unique_marker());
    let _guard = MarkerGuard(vec![a, b, c]);
    // Cancel: the command's tree, setsid escapes included.
    let script = setsid_escape_script(a, b, &format!("sleep {c}"));
    let info = s
        .start_command(as_user(s.as_ref(), "tree", "nobody", &script))
        .await
        .expect("start");
    assert!(marked_running(a).await && marked_running(b).await && marked_running(c).await);
    for marker in [a, b, c] {
        for pid in marked_processes(marker) {
            assert_eq!(uid_of(pid), Some(NOBODY), "sleep {marker} (pid {pid})");
        }
    }
    assert!(s.cancel_command(&info.command_id).await.expect("cancel"));
    assert!(
        marked_gone(a).await && marked_gone(b).await && marked_gone(c).await,
        "survivors: {:?} {:?} {:?}",
        marked_processes(a),
        marked_processes(b),
        marked_processes(c)
    );
    // Close: what a finished switched command left behind.
    let (d, e) = (unique_marker(), unique_marker());
    let _guard_de = MarkerGuard(vec![d, e]);
    let res = s
        .run_command(as_user(
            s.as_ref(),
            "left",
            "nobody",
            &setsid_escape_script(d, e, "true"),
        ))
        .await
        .expect("run");
    assert_eq!(res.exit_code, Some(0), "{res:?}");
    assert!(marked_running(d).await && marked_running(e).await);
    s.close().await.expect("close");
    assert!(
        marked_gone(d).await && marked_gone(e).await,
        "survivors: {:?} {:?}",
        marked_processes(d),
        marked_processes(e)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn root_replaces_keep_the_mode_and_the_owner() {
    if !is_root() {
        eprintln!("needs root: files of another owner");
        return;
    }
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let path = s.workspace_root().join("theirs.txt");
    std::fs::write(&path, "theirs").expect("seed");
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    s.write_file(write("theirs.txt", "replaced"))
        .await
        .expect("root replaces a 0444 file");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "replaced");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o444, NOBODY, NOBODY)
    );
    s.write_file(write_at("theirs.txt", 8, "!"))
        .await
        .expect("root writes in place");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "replaced!");
    s.close().await.expect("close");
}

// ----- as a non-root user -----

#[test]
fn write_permissions_hold_for_a_non_root_user() {
    run_child_as_non_root("child_write_permissions");
}

#[test]
fn a_non_root_session_runs_commands_only_as_itself() {
    run_child_as_non_root("child_run_as_itself");
}

#[test]
fn conformance_checks_as_a_non_root_user() {
    run_child_as_non_root("child_conformance");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child of write_permissions_hold_for_a_non_root_user, which runs it"]
async fn child_write_permissions() {
    let Some(dir) = child_dir() else {
        return;
    };
    let root = dir.join("root");
    std::fs::create_dir(&root).expect("root");
    let s = session(json!({ "root": root, "workspaces_dir": dir.join("workspaces") })).await;
    std::fs::write(root.join("locked.txt"), "original").expect("locked");
    std::fs::set_permissions(
        root.join("locked.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    std::fs::create_dir(root.join("sealed")).expect("sealed");
    std::fs::write(root.join("sealed/open.txt"), "open").expect("open");
    std::fs::set_permissions(
        root.join("sealed/open.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    std::fs::set_permissions(root.join("sealed"), std::fs::Permissions::from_mode(0o555))
        .expect("chmod");
    std::fs::write(root.join("mine.txt"), "mine").expect("mine");
    std::fs::set_permissions(
        root.join("mine.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    let before = tree(&root);
    for request in [
        write("locked.txt", "replaced"),
        write_at("locked.txt", 0, "X"),
        write_at("locked.txt", 8, "X"),
        write("sealed/new.txt", "x"),
        write_at("sealed/new.txt", 0, "x"),
        write("sealed/sub/new.txt", "x"),
        // Its own bits allow writing, but a replace needs the directory.
        write("sealed/open.txt", "replaced"),
    ] {
        let err = s.write_file(request.clone()).await.expect_err("denied");
        assert_eq!(
            err.kind(),
            RunnerErrorKind::PermissionDenied,
            "{request:?}: {err}"
        );
        assert!(
            err.message()
                .contains(request.path.to_str().unwrap_or_default()),
            "{err}"
        );
    }
    assert_eq!(tree(&root), before, "a refused write changed something");
    // In place, the file's own bits are what counts.
    s.write_file(write_at("sealed/open.txt", 0, "OPEN"))
        .await
        .expect("write in place");
    assert_eq!(
        std::fs::read_to_string(root.join("sealed/open.txt")).expect("read"),
        "OPEN"
    );
    // A replace keeps the mode.
    s.write_file(write("mine.txt", "new"))
        .await
        .expect("replace");
    assert_eq!(
        std::fs::read_to_string(root.join("mine.txt")).expect("read"),
        "new"
    );
    assert_eq!(mode(&root.join("mine.txt")), 0o640);
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child of a_non_root_session_runs_commands_only_as_itself, which runs it"]
async fn child_run_as_itself() {
    let Some(dir) = child_dir() else {
        return;
    };
    let s = session(json!({
        "workspaces_dir": dir.join("workspaces"),
        "snapshot_dir": dir.join("snapshots"),
    }))
    .await;
    let me = me();
    let script = "id -u; echo \"$HOME $USER $LOGNAME\"";
    for user in [me.name.clone(), me.uid.to_string()] {
        let res = s
            .run_command(as_user(s.as_ref(), "self", &user, script))
            .await
            .expect("run as itself");
        let expected = format!("{}\n{} {n} {n}\n", me.uid, me.dir.display(), n = me.name);
        assert_eq!(res.stdout, expected, "as {user}: {res:?}");
    }
    for user in ["root", "0"] {
        let err = s
            .run_command(as_user(s.as_ref(), "root", user, "id -u"))
            .await
            .expect_err("not root: no switch");
        assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains(&format!("{user:?}")), "{err}");
    }
    let err = s
        .run_command(as_user(s.as_ref(), "ghost", GHOST, "true"))
        .await
        .expect_err("unknown");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    s.close().await.expect("close");
}

#[test]
#[ignore = "a child of conformance_checks_as_a_non_root_user, which runs it"]
fn child_conformance() {
    let Some(dir) = child_dir() else {
        return;
    };
    let destination = RunnerDestination {
        id: "conformance-non-root".into(),
        ..destination(json!({
            "workspaces_dir": dir.join("workspaces"),
            "snapshot_dir": dir.join("snapshots"),
        }))
    };
    let provider: Arc<dyn RemoteRunnerProvider> = Arc::new(LocalProvider::new());
    for check in ["files_write_permission_denied", "exec_run_as_user"] {
        let args = Arguments {
            filter: Some(check.into()),
            exact: true,
            test_threads: Some(1),
            ..Arguments::default()
        };
        let summary = Conformance::new(provider.clone(), destination.clone()).run_with(args);
        assert_eq!(
            (summary.passed, summary.failed, summary.skipped),
            (1, 0, 0),
            "{check} as uid {}: {:?}",
            nix::unistd::geteuid(),
            summary.failures
        );
    }
}
