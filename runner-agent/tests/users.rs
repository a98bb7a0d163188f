//! Commands of another user through an agent child: the agent is its own
//! user switcher (`runner-agent run-as`), not util-linux `setpriv`, so a
//! sandbox image without `setpriv` still runs them. Switching users needs
//! root: as another user these tests say so and return.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use runner_api::{RemoteRunnerSession, RunnerCommandRequest};
use support::{ConnectPids, Launcher, agent_bin};

/// nobody's uid and gid.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program args` as user `user` in `cwd` (relative to the workspace).
fn as_user(id: &str, user: &str, cwd: &str, program: &str, args: &[&str]) -> RunnerCommandRequest {
    let mut request = RunnerCommandRequest::new(id, program, args.iter().copied());
    request.user = Some(user.into());
    request.cwd = Some(cwd.into());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_switches_users_itself_after_entering_the_cwd() {
    if !is_root() {
        eprintln!("needs root: switching users");
        return;
    }
    // The workspace is private to root (0700): nobody could not enter it.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("sub")).unwrap();
    let launcher = Launcher::new();
    let destination = support::root_destination("users", root.path());
    let agent = launcher.launch(&destination, None).await.unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let workspace = session.workspace_root();

    // The uid, the gid, and no other groups.
    for user in ["nobody", "65534"] {
        for flag in ["-u", "-g", "-G"] {
            let id = format!("id{flag}-{user}");
            let ids = session
                .run_command(as_user(&id, user, "sub", "id", &[flag]))
                .await
                .unwrap();
            assert_eq!(ids.exit_code, Some(0), "{ids:?}");
            assert_eq!(ids.stdout, format!("{NOBODY}\n"), "id {flag}: {ids:?}");
        }
    }
    let cwd = session
        .run_command(as_user("pwd", "nobody", "sub", "pwd", &["-P"]))
        .await
        .unwrap();
    let expected = std::fs::canonicalize(workspace.join("sub")).unwrap();
    assert_eq!(cwd.stdout, format!("{}\n", expected.display()), "{cwd:?}");

    // The switcher is the agent: a program nobody may not execute fails in
    // `runner-agent run-as` with the shell's status 126.
    let private = root.path().join("sub").join("private-tool");
    std::fs::write(&private, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let denied = session
        .run_command(as_user("denied", "nobody", "sub", "./private-tool", &[]))
        .await
        .unwrap();
    assert_eq!(denied.exit_code, Some(126), "{denied:?}");
    assert!(
        denied
            .stderr
            .starts_with("runner-agent run-as: ./private-tool:"),
        "{denied:?}"
    );
    session.close().await.unwrap();
}

/// `runner-agent run-as` itself, in `dir`, with a `PATH` nobody may search
/// (a directory it may not enter makes `execvp` say "permission denied").
fn run_as(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(["run-as", "--uid", "65534", "--gid", "65534", "--"])
        .args(args)
        .current_dir(dir)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap()
}

#[test]
fn run_as_switches_then_execs_and_fails_as_a_shell_does() {
    if !is_root() {
        eprintln!("needs root: switching users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ids = run_as(dir.path(), &["id", "-u"]);
    assert!(ids.status.success(), "{ids:?}");
    assert_eq!(String::from_utf8_lossy(&ids.stdout), format!("{NOBODY}\n"));
    let groups = run_as(dir.path(), &["id", "-G"]);
    assert_eq!(
        String::from_utf8_lossy(&groups.stdout),
        format!("{NOBODY}\n")
    );
    // Arguments that look like flags belong to the program.
    let echo = run_as(dir.path(), &["echo", "--uid", "-n"]);
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "--uid -n\n");
    let missing = run_as(dir.path(), &["runner-no-such-program-5c1e"]);
    assert_eq!(missing.status.code(), Some(127), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .starts_with("runner-agent run-as: runner-no-such-program-5c1e:"),
        "{missing:?}"
    );
}
