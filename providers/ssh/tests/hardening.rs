//! Hostile inputs against the ssh provider, over the real sshd on 127.0.0.1:
//!
//! - states and snapshot references that name other connection settings,
//!   another host or paths outside the destination: resume and rejoin take
//!   every setting from the destination and refuse the rest;
//! - forged owner markers: the orphan sweep removes only what it made;
//! - FIFOs read through the agent: refused at once, also when a FIFO is
//!   swapped in between the check and the open, and the session's file
//!   operations keep working;
//! - children that leave the process group with `setsid`: a cancel (also of a
//!   rejoined command, also with the marks forged in the request), a timeout
//!   and the sweep of an orphan end them;
//! - an upload above the destination's `max_upload_bytes`;
//! - a manifest entry beneath a symlink an earlier entry made, leading out of
//!   the workspace (the provider writes the manifest itself, before any layer
//!   confines paths).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerManifestEntry, RunnerResult, RunnerSessionState,
};
use runner_ssh::SshProvider;
use runner_testkit::{BackendGate, async_trial};

mod support;

type TestResult = Result<(), String>;
type Session = Arc<dyn RemoteRunnerSession>;

/// Longest any single operation of these tests may take before it counts as
/// hung (a guard against a wedged channel, not a measurement).
const HUNG: Duration = Duration::from_secs(120);

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn ensure(ok: bool, message: impl FnOnce() -> String) -> TestResult {
    if ok { Ok(()) } else { Err(message()) }
}

/// `operation` finished within [`HUNG`].
async fn guarded<T>(
    what: &str,
    operation: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(HUNG, operation)
        .await
        .map_err(|_| format!("{what} hung for {} s", HUNG.as_secs()))
}

/// The test server's destination with `overrides`.
fn plain_destination(overrides: serde_json::Value) -> Result<RunnerDestination, String> {
    Ok(support::destination(
        "ssh-hardening",
        support::config(overrides)?,
    ))
}

/// The test server's destination with every remote directory under `area`
/// (relative to the remote home), plus `extra` settings.
fn area_destination(area: &str, extra: serde_json::Value) -> Result<RunnerDestination, String> {
    let mut overrides = serde_json::json!({
        "workspace_root": format!("{area}/workspaces"),
        "state_dir": format!("{area}/sessions"),
        "snapshot_dir": format!("{area}/snapshots"),
    });
    if let (Some(base), Some(extra)) = (overrides.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    plain_destination(overrides)
}

/// `user@host:port` of the test server, as states name destinations.
fn label() -> Result<String, String> {
    Ok(format!(
        "{}@{}:{}",
        support::var("RUNNER_TEST_SSH_USER")?,
        support::var("RUNNER_TEST_SSH_HOST")?,
        support::var("RUNNER_TEST_SSH_PORT")?
    ))
}

/// Runs `script`; its stdout when it succeeded.
async fn sh(session: &Session, script: &str) -> Result<String, String> {
    let result = guarded(
        "run_command",
        session.run_command(RunnerCommandRequest::shell(
            format!("sh-{}", unique()),
            script,
        )),
    )
    .await?
    .map_err(|e| format!("run_command {script:?}: {e}"))?;
    ensure(result.success(), || {
        format!("{script:?} failed: {result:?}")
    })?;
    Ok(result.stdout)
}

async fn open(provider: &SshProvider, destination: &RunnerDestination) -> Result<Session, String> {
    provider
        .create_session(destination.clone())
        .await
        .map_err(|e| format!("create_session: {e}"))
}

/// The remote home directory.
async fn home(session: &Session) -> Result<String, String> {
    sh(session, "printf %s \"$HOME\"").await
}

/// Removes `area` on the server through a session of the plain destination.
async fn remove_area(area: &str) -> TestResult {
    let provider = SshProvider::new();
    let session = open(&provider, &plain_destination(serde_json::json!({}))?).await?;
    let removed = sh(&session, &format!("rm -rf \"$HOME/{area}\"")).await;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    removed.map(|_| ())
}

/// Runs `test` in a fresh `area` and removes the area afterwards, whatever
/// the outcome.
async fn in_area<F, Fut>(test: F) -> TestResult
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let area = format!(".runners/hardening-{}", unique());
    let outcome = test(area.clone()).await;
    let cleaned = remove_area(&area).await;
    outcome.and(cleaned)
}

/// Expects `result` to fail with `kind` and a message holding `named`.
fn refused<T>(
    result: RunnerResult<T>,
    kind: RunnerErrorKind,
    named: &str,
    what: &str,
) -> TestResult {
    match result {
        Ok(_) => Err(format!("{what}: accepted, expected {kind:?}")),
        Err(e) if e.kind() == kind && e.message().contains(named) => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {kind:?} naming {named:?}, got {:?}: {}",
            e.kind(),
            e.message()
        )),
    }
}

/// Rejoins `state` on `provider`, closing whatever it wrongly accepted.
async fn rejoin(provider: &SshProvider, state: RunnerSessionState) -> RunnerResult<Session> {
    provider.rejoin_session(state).await
}

// ----- item 8: resume and rejoin take their settings from the destination -----

/// A state carrying connection settings of its own (another host and port,
/// key and known_hosts files that do not exist, accept-new) is rejoined with
/// the destination's settings; the state the provider hands out carries none.
async fn rejoin_takes_settings_from_the_destination() -> TestResult {
    let destination = plain_destination(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = open(&provider, &destination).await?;
    let key = support::var("RUNNER_TEST_SSH_KEY")?;
    let text = session.state().metadata.to_string();
    ensure(
        session.state().metadata.get("config").is_none() && !text.contains(&key),
        || format!("the state's metadata carries connection settings: {text}"),
    )?;
    let mut state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
    drop(session);
    state.metadata["config"] = serde_json::json!({
        "host": "203.0.113.9", "port": 1,
        "identity_file": "/nonexistent/runner-hardening-key",
        "known_hosts_file": "/nonexistent/runner-hardening-known-hosts",
        "host_key_policy": "accept-new",
    });
    let fresh = SshProvider::new()
        .with_destination(&destination)
        .map_err(|e| format!("with_destination: {e}"))?;
    let rejoined = guarded("rejoin_session", rejoin(&fresh, state))
        .await?
        .map_err(|e| format!("rejoin_session with settings in the state: {e}"))?;
    let out = sh(&rejoined, "echo rejoined").await?;
    rejoined.close().await.map_err(|e| format!("close: {e}"))?;
    ensure(out == "rejoined\n", || {
        format!("echo after rejoin: {out:?}")
    })
}

/// States naming another host, a workspace or session directory outside the
/// destination's (directly, through `..`, or through a symlink put in place
/// of the workspace), a session id with a path in it, or a destination the
/// provider does not know are refused; the untouched state still rejoins.
async fn rejoin_refuses_foreign_hosts_and_paths() -> TestResult {
    in_area(|area| async move {
        let destination = area_destination(&area, serde_json::json!({}))?;
        let provider = SshProvider::new();
        let session = open(&provider, &destination).await?;
        let helper = open(&provider, &destination).await?;
        let home = home(&helper).await?;
        let victim = format!("{home}/{area}/victim");
        sh(
            &helper,
            &format!("mkdir -p '{victim}' && echo keep > '{victim}/keep.txt'"),
        )
        .await?;
        let workspace = session.workspace_root();
        let state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
        drop(session);

        let altered = |change: &dyn Fn(&mut RunnerSessionState)| {
            let mut altered = state.clone();
            change(&mut altered);
            altered
        };
        let cases: Vec<(&str, RunnerSessionState, RunnerErrorKind, String)> = vec![
            (
                "another host",
                altered(&|s| s.metadata["destination"] = "evil@203.0.113.7:22".into()),
                RunnerErrorKind::PermissionDenied,
                "evil@203.0.113.7:22".into(),
            ),
            (
                "a workspace outside",
                altered(&|s| s.metadata["workspace"] = victim.clone().into()),
                RunnerErrorKind::PermissionDenied,
                victim.clone(),
            ),
            (
                "a workspace outside through ..",
                altered(&|s| {
                    s.metadata["workspace"] = format!("{home}/{area}/workspaces/../victim").into()
                }),
                RunnerErrorKind::PermissionDenied,
                "../victim".into(),
            ),
            (
                "a session directory outside",
                altered(&|s| s.metadata["session_dir"] = victim.clone().into()),
                RunnerErrorKind::PermissionDenied,
                victim.clone(),
            ),
            (
                "a session id with a path",
                altered(&|s| s.session_id = "../victim".into()),
                RunnerErrorKind::InvalidRequest,
                "../victim".into(),
            ),
            (
                "an unknown destination",
                altered(&|s| s.destination_id = "ssh-hardening-unknown".into()),
                RunnerErrorKind::NotFound,
                "ssh-hardening-unknown".into(),
            ),
        ];
        for (what, altered, kind, named) in cases {
            let result = guarded(what, rejoin(&provider, altered)).await?;
            refused(result, kind, &named, what)?;
        }
        let untold = SshProvider::new();
        let result = guarded("untold provider", rejoin(&untold, state.clone())).await?;
        refused(
            result,
            RunnerErrorKind::NotFound,
            "with_destination",
            "a provider not told the destination",
        )?;

        // The workspace swapped for a symlink leading out.
        let ws = workspace.display().to_string();
        sh(
            &helper,
            &format!("mv '{ws}' '{ws}.moved' && ln -s '{victim}' '{ws}'"),
        )
        .await?;
        let result = guarded("symlinked workspace", rejoin(&provider, state.clone())).await?;
        let restored = sh(&helper, &format!("rm '{ws}' && mv '{ws}.moved' '{ws}'")).await;
        refused(
            result,
            RunnerErrorKind::PermissionDenied,
            &ws,
            "a workspace that is a symlink",
        )?;
        restored?;

        let rejoined = guarded("rejoin_session", rejoin(&provider, state))
            .await?
            .map_err(|e| format!("rejoin of the untouched state: {e}"))?;
        rejoined.close().await.map_err(|e| format!("close: {e}"))?;
        let kept = sh(&helper, &format!("cat '{victim}/keep.txt'")).await?;
        helper.close().await.map_err(|e| format!("close: {e}"))?;
        ensure(kept == "keep\n", || {
            format!("the victim's file now reads {kept:?}")
        })
    })
    .await
}

/// A snapshot reference whose metadata names another snapshot directory (a
/// forged archive there) is restored from the destination's own directory;
/// one naming another host is refused; the reference carries no config.
async fn resume_takes_the_snapshot_from_the_destination() -> TestResult {
    in_area(|area| async move {
        let destination = area_destination(&area, serde_json::json!({}))?;
        let provider = SshProvider::new();
        let session = open(&provider, &destination).await?;
        session
            .write_file(RunnerFileWriteRequest::new("real.txt", b"real".to_vec()))
            .await
            .map_err(|e| format!("write_file: {e}"))?;
        let snapshot = session
            .snapshot()
            .await
            .map_err(|e| format!("snapshot: {e}"))?;
        ensure(snapshot.metadata.get("config").is_none(), || {
            format!("the snapshot reference carries config: {}", snapshot.metadata)
        })?;
        let home = home(&session).await?;
        let forged_dir = format!("{area}/forged");
        let forged_archive = format!("{home}/{forged_dir}/{}.tar", snapshot.snapshot_id);
        sh(
            &session,
            &format!(
                "d=\"$HOME/{forged_dir}\"; mkdir -p \"$d/src\" && echo forged > \"$d/src/forged.txt\" \
                 && tar -c -f '{forged_archive}' -C \"$d/src\" ."
            ),
        )
        .await?;
        let mut forged_config = support::config(serde_json::json!({ "snapshot_dir": forged_dir }))?;
        forged_config["workspace_root"] = format!("{area}/workspaces").into();
        forged_config["state_dir"] = format!("{area}/sessions").into();

        let mut forged = session.state();
        let mut reference = snapshot.clone();
        reference.metadata = serde_json::json!({
            "destination": label()?,
            "archive": forged_archive,
            "config": forged_config,
        });
        forged.snapshot = Some(reference);
        let fork = guarded("resume_session", provider.resume_session(forged))
            .await?
            .map_err(|e| format!("resume_session with a forged reference: {e}"))?;
        let listing = sh(&fork, "ls").await?;
        fork.close().await.map_err(|e| format!("close the fork: {e}"))?;
        ensure(listing == "real.txt\n", || {
            format!("the fork holds {listing:?}, expected the destination's snapshot (real.txt)")
        })?;

        let mut foreign = session.state();
        let mut reference = snapshot.clone();
        reference.metadata["destination"] = "evil@203.0.113.7:22".into();
        foreign.snapshot = Some(reference);
        let result = guarded("resume_session", provider.resume_session(foreign)).await?;
        refused(
            result,
            RunnerErrorKind::PermissionDenied,
            "evil@203.0.113.7:22",
            "a snapshot of another host",
        )?;
        session.close().await.map_err(|e| format!("close: {e}"))
    })
    .await
}

// ----- item 10: the sweep removes only what it made -----

/// The JSON of a detached (so orphaned) owner marker.
fn marker(session_id: &str, workspace: &str) -> String {
    serde_json::json!({
        "library": "runner-ssh", "session_id": session_id, "workspace": workspace,
        "host": "elsewhere", "pid": null, "pid_start": null, "written_ms": 0
    })
    .to_string()
}

/// Forged markers in the state directory name a directory outside the
/// workspace root through `..`, one behind a symlink in the workspace root,
/// and a workspace whose session directory is a symlink or whose marker names
/// another session; a workspace path that is itself a symlink leads out.
/// After a sweep with grace 0, everything they name is still there, while a
/// real detached session is swept.
async fn sweep_leaves_what_forged_markers_name() -> TestResult {
    in_area(|area| async move {
        let destination = area_destination(&area, serde_json::json!({ "orphan_grace_s": 0 }))?;
        let provider = SshProvider::new();
        let live = open(&provider, &destination).await?;
        let orphan = open(&provider, &destination).await?;
        let orphan_workspace = orphan.workspace_root();
        orphan.detach().await.map_err(|e| format!("detach: {e}"))?;
        drop(orphan);
        let home = home(&live).await?;
        let base = format!("{home}/{area}");
        let ws = format!("{base}/workspaces");
        let state = format!("{base}/sessions");
        let [dotdot, behind_link, linked_state, other_id, linked_ws] =
            std::array::from_fn::<String, 5, _>(|_| unique());
        let forged_id = unique();
        // (marker directory, marker json) pairs, and the paths that must stay.
        let forged = [
            (format!("{state}/{dotdot}"), marker(&dotdot, &format!("{ws}/../victim1"))),
            (
                format!("{state}/{behind_link}"),
                marker(&behind_link, &format!("{ws}/lnk/victim2")),
            ),
            (
                format!("{base}/fake-state"),
                marker(&linked_state, &format!("{ws}/{linked_state}")),
            ),
            (
                format!("{state}/{other_id}"),
                marker(&forged_id, &format!("{ws}/{forged_id}")),
            ),
            (format!("{state}/{linked_ws}"), marker(&linked_ws, &format!("{ws}/{linked_ws}"))),
        ];
        let kept = [
            format!("{base}/victim1"),
            format!("{base}/outside/victim2"),
            format!("{ws}/{linked_state}"),
            format!("{ws}/{forged_id}"),
            format!("{base}/victim5"),
        ];
        let mut script = format!(
            "set -e; mkdir -p '{ws}' '{state}' '{base}/outside'; ln -s '{base}/outside' '{ws}/lnk'; \
             ln -s '{base}/fake-state' '{state}/{linked_state}'; \
             mkdir -p '{base}/victim5'; ln -s '{base}/victim5' '{ws}/{linked_ws}'; "
        );
        for path in &kept {
            script.push_str(&format!("mkdir -p '{path}'; echo keep > '{path}/keep.txt'; "));
        }
        for (dir, json) in &forged {
            script.push_str(&format!("mkdir -p '{dir}'; printf '%s' '{json}' > '{dir}/owner.json'; "));
        }
        sh(&live, &script).await?;

        let report = guarded("sweep_orphans", provider.sweep_orphans())
            .await?
            .map_err(|e| format!("sweep_orphans: {e}"))?;
        let mut check = String::new();
        for path in &kept {
            check.push_str(&format!("[ \"$(cat '{path}/keep.txt')\" = keep ] || echo '{path}'; "));
        }
        check.push_str(&format!(
            "[ -e '{}' ] && echo 'orphan:{}'; true",
            orphan_workspace.display(),
            orphan_workspace.display()
        ));
        let wrong = sh(&live, &check).await?;
        live.close().await.map_err(|e| format!("close: {e}"))?;
        ensure(wrong.is_empty(), || {
            format!("after the sweep (report {report:?}), wrong: {wrong}")
        })?;
        let named_kept: Vec<&String> = kept
            .iter()
            .filter(|path| report.removed.iter().any(|r| r.ends_with(path.as_str())))
            .collect();
        ensure(named_kept.is_empty(), || {
            format!("the sweep reports removing {named_kept:?}: {report:?}")
        })
    })
    .await
}

// ----- item 11: FIFOs -----

/// `read_file` of a FIFO (and of a symlink to one) is `InvalidRequest` at
/// once, no writer ever attached; stat, reads, writes and listings of the
/// session go on working.
async fn fifo_read_refused_and_channel_keeps_working() -> TestResult {
    let provider = SshProvider::new();
    let session = open(&provider, &plain_destination(serde_json::json!({}))?).await?;
    sh(
        &session,
        "mkfifo pipe && ln -s pipe pipe-link && echo plain > plain.txt",
    )
    .await?;
    for path in ["pipe", "pipe-link"] {
        let result = guarded(
            &format!("read_file {path}"),
            session.read_file(RunnerFileReadRequest::new(path)),
        )
        .await?;
        refused(
            result,
            RunnerErrorKind::InvalidRequest,
            "not a regular file",
            &format!("read_file of {path}"),
        )?;
    }
    let stat = guarded("stat", session.stat(Path::new("pipe")))
        .await?
        .map_err(|e| format!("stat pipe: {e}"))?;
    ensure(stat.kind == RunnerFileKind::Other, || {
        format!("stat of a FIFO: {stat:?}")
    })?;
    check_files_work(&session).await?;
    session.close().await.map_err(|e| format!("close: {e}"))
}

/// A write, a read and a listing succeed.
async fn check_files_work(session: &Session) -> TestResult {
    let name = format!("after-{}.txt", unique());
    guarded(
        "write_file",
        session.write_file(RunnerFileWriteRequest::new(&name, b"fine".to_vec())),
    )
    .await?
    .map_err(|e| format!("write_file after the FIFO: {e}"))?;
    let read = guarded(
        "read_file",
        session.read_file(RunnerFileReadRequest::new(&name)),
    )
    .await?
    .map_err(|e| format!("read_file after the FIFO: {e}"))?;
    ensure(read.contents == b"fine", || {
        format!("read back {:?}", read.contents)
    })?;
    let listed = guarded("list_dir", session.list_dir(Path::new(".")))
        .await?
        .map_err(|e| format!("list_dir after the FIFO: {e}"))?;
    ensure(listed.iter().any(|e| e.name == name), || {
        format!("list_dir: {listed:?}")
    })
}

/// A command keeps replacing `target` with a regular file and with a FIFO
/// (rename, so the name always exists). Every read either gets the file or
/// is refused (`InvalidRequest`, `NotFound`) within seconds: the agent opens
/// without waiting for a writer, so no read hangs, none times out, and the
/// session's file operations work afterwards.
async fn fifo_swapped_in_fails_fast_and_files_keep_working() -> TestResult {
    let provider = SshProvider::new();
    let destination = plain_destination(serde_json::json!({}))?;
    let session = open(&provider, &destination).await?;
    sh(&session, "echo plain > plain.txt && cp plain.txt target").await?;
    let flipper = RunnerCommandRequest::shell(
        format!("flip-{}", unique()),
        "while :; do cp plain.txt t && mv -f t target; mkfifo f && mv -f f target; done",
    );
    let flipper_id = flipper.command_id.clone();
    session
        .start_command(flipper)
        .await
        .map_err(|e| format!("start_command: {e}"))?;
    let (mut read, mut invalid, mut timed_out, mut missing) = (0, 0, 0, 0);
    let mut outcome = Ok(());
    for round in 0..40 {
        let result = match guarded(
            &format!("read_file of a flipping name, round {round}"),
            session.read_file(RunnerFileReadRequest::new("target")),
        )
        .await
        {
            Ok(result) => result,
            Err(hung) => {
                outcome = Err(hung);
                break;
            }
        };
        match result {
            Ok(file) if file.contents == b"plain\n" || file.contents.is_empty() => read += 1,
            Ok(file) => {
                outcome = Err(format!("read_file returned {:?}", file.contents));
                break;
            }
            Err(e) => match e.kind() {
                RunnerErrorKind::InvalidRequest => invalid += 1,
                RunnerErrorKind::Timeout => timed_out += 1,
                RunnerErrorKind::NotFound => missing += 1,
                other => {
                    outcome = Err(format!("read_file failed with {other:?}: {}", e.message()));
                    break;
                }
            },
        }
    }
    println!(
        "flipping reads: {read} read, {invalid} refused, {timed_out} timed out, {missing} missing"
    );
    let _ = session.cancel_command(&flipper_id).await;
    outcome?;
    check_files_work(&session).await?;
    ensure(timed_out == 0, || {
        format!("{timed_out} reads of a FIFO timed out instead of failing at once")
    })?;
    session.close().await.map_err(|e| format!("close: {e}"))
}

// ----- uploads: the destination's bound -----

/// With `max_upload_bytes` 16, an archive whose entries hold more is
/// `InvalidRequest` and nothing of it is written.
async fn upload_above_max_upload_bytes_refused() -> TestResult {
    let provider = SshProvider::new();
    let destination = plain_destination(serde_json::json!({ "max_upload_bytes": 16 }))?;
    let session = open(&provider, &destination).await?;
    let mut builder = tar::Builder::new(Vec::new());
    let contents = [b'x'; 100];
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "big.txt", &contents[..])
        .map_err(|e| e.to_string())?;
    let archive = builder.into_inner().map_err(|e| e.to_string())?;
    let result = guarded(
        "upload_archive",
        session.upload_archive(Path::new("up"), archive),
    )
    .await?;
    refused(
        result,
        RunnerErrorKind::InvalidRequest,
        "up",
        "an upload above max_upload_bytes",
    )?;
    let left = sh(&session, "ls up 2>/dev/null; true").await?;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    ensure(left.is_empty(), || {
        format!("the refused upload left {left:?}")
    })
}

// ----- the manifest stays in the workspace -----

/// A manifest entry whose target lies beneath a symlink an earlier entry
/// copied in, leading out of the workspace, fails `create_session` with
/// `PermissionDenied` and writes nothing where the symlink points.
async fn manifest_entry_through_a_symlink_refused() -> TestResult {
    in_area(|area| async move {
        let provider = SshProvider::new();
        let plain = open(&provider, &plain_destination(serde_json::json!({}))?).await?;
        let outside = format!("{}/{area}/outside", home(&plain).await?);
        sh(&plain, &format!("mkdir -p '{outside}'")).await?;
        let local = tempfile::tempdir().map_err(|e| e.to_string())?;
        let links = local.path().join("links");
        std::fs::create_dir(&links).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&outside, links.join("out")).map_err(|e| e.to_string())?;
        std::fs::write(local.path().join("x.txt"), b"x").map_err(|e| e.to_string())?;
        let mut destination = area_destination(&area, serde_json::json!({}))?;
        destination.default_manifest.entries = vec![
            RunnerManifestEntry {
                source: links,
                target: "links".into(),
                writable: true,
            },
            RunnerManifestEntry {
                source: local.path().join("x.txt"),
                target: "links/out/x.txt".into(),
                writable: true,
            },
        ];
        let created = guarded("create_session", provider.create_session(destination)).await?;
        let outcome = refused(
            created,
            RunnerErrorKind::PermissionDenied,
            "leads outside",
            "a manifest entry beneath a symlink leading out",
        );
        let left = sh(&plain, &format!("ls -A '{outside}'")).await;
        plain.close().await.map_err(|e| format!("close: {e}"))?;
        outcome?;
        let left = left?;
        ensure(left.is_empty(), || {
            format!("the refused entry wrote {left:?} outside the workspace")
        })
    })
    .await
}

// ----- item 5: setsid escapes -----

/// A number no other process sleeps for.
fn sleep_marker() -> u64 {
    1_000_000 + u64::from(uuid::Uuid::new_v4().as_u128() as u32 % 8_000_000)
}

/// A shell line leaving `sleep <n>` behind in a new session, detached from
/// the command's streams, started from a subshell that exits at once.
fn escape(n: u64) -> String {
    format!("( setsid sh -c 'trap \"\" TERM HUP; exec sleep {n}' </dev/null >/dev/null 2>&1 & ); ")
}

/// How many processes run `sleep <n>` on the host.
async fn sleepers(session: &Session, n: u64) -> Result<usize, String> {
    let out = sh(
        session,
        &format!(
            "c=0; for f in /proc/[0-9]*/cmdline; do \
             [ \"$(tr '\\000' ' ' < \"$f\" 2>/dev/null)\" = 'sleep {n} ' ] && c=$((c+1)); done; echo $c"
        ),
    )
    .await?;
    out.trim()
        .parse()
        .map_err(|e| format!("counting sleepers: {out:?}: {e}"))
}

/// Polls until `sleep <n>` runs `count` times.
async fn wait_sleepers(session: &Session, n: u64, count: usize, after: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = sleepers(session, n).await?;
        if found == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{after}: {found} processes run sleep {n}, expected {count}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Kills what a failed run left behind.
async fn kill_sleepers(session: &Session, marks: &[u64]) {
    for n in marks {
        let _ = sh(
            session,
            &format!(
                "for f in /proc/[0-9]*/cmdline; do \
                 [ \"$(tr '\\000' ' ' < \"$f\" 2>/dev/null)\" = 'sleep {n} ' ] || continue; \
                 p=${{f#/proc/}}; kill -s KILL \"${{p%/cmdline}}\" 2>/dev/null; done; true"
            ),
        )
        .await;
    }
}

/// A background command with its marks forged in the request's env, whose
/// subshell leaves a setsid child and exits at once: `cancel_command` ends
/// the child and the command.
async fn cancel_ends_setsid_children_despite_forged_marks() -> TestResult {
    let provider = SshProvider::new();
    let session = open(
        &provider,
        &plain_destination(serde_json::json!({ "kill_grace_ms": 300 }))?,
    )
    .await?;
    let (child, main) = (sleep_marker(), sleep_marker());
    let request = RunnerCommandRequest::shell(
        format!("escape-{}", unique()),
        format!("{}exec sleep {main}", escape(child)),
    )
    .with_env("RUNNER_SSH_COMMAND", "forged")
    .with_env("RUNNER_SSH_SESSION", "forged");
    let id = request.command_id.clone();
    let outcome = async {
        session
            .start_command(request)
            .await
            .map_err(|e| format!("start_command: {e}"))?;
        wait_sleepers(&session, child, 1, "after start").await?;
        let cancelled = session
            .cancel_command(&id)
            .await
            .map_err(|e| format!("cancel_command: {e}"))?;
        ensure(cancelled, || "cancel_command returned false".into())?;
        wait_sleepers(&session, child, 0, "after cancel_command").await?;
        wait_sleepers(&session, main, 0, "after cancel_command").await
    }
    .await;
    kill_sleepers(&session, &[child, main]).await;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    outcome
}

/// A foreground command past its `timeout_ms`, whose subshell left a setsid
/// child and exited at once: the timeout ends the child too.
async fn timeout_ends_setsid_children() -> TestResult {
    let provider = SshProvider::new();
    let session = open(
        &provider,
        &plain_destination(serde_json::json!({ "kill_grace_ms": 300 }))?,
    )
    .await?;
    let (child, main) = (sleep_marker(), sleep_marker());
    let request = RunnerCommandRequest::shell(
        format!("escape-{}", unique()),
        format!("{}exec sleep {main}", escape(child)),
    )
    .with_timeout_ms(3_000);
    let outcome = async {
        let result = session
            .run_command(request)
            .await
            .map_err(|e| format!("run_command: {e}"))?;
        ensure(result.timed_out, || {
            format!("expected a timeout: {result:?}")
        })?;
        wait_sleepers(&session, child, 0, "after the timeout").await
    }
    .await;
    kill_sleepers(&session, &[child, main]).await;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    outcome
}

/// A background command of a detached session, rejoined by a new provider:
/// cancelling the adopted command ends its setsid child.
async fn rejoined_cancel_ends_setsid_children() -> TestResult {
    let destination = plain_destination(serde_json::json!({ "kill_grace_ms": 300 }))?;
    let provider = SshProvider::new();
    let session = open(&provider, &destination).await?;
    let helper = open(&provider, &destination).await?;
    let (child, main) = (sleep_marker(), sleep_marker());
    let request = RunnerCommandRequest::shell(
        format!("escape-{}", unique()),
        format!("{}exec sleep {main}", escape(child)),
    );
    let id = request.command_id.clone();
    let outcome = async {
        session
            .start_command(request)
            .await
            .map_err(|e| format!("start_command: {e}"))?;
        wait_sleepers(&helper, child, 1, "after start").await?;
        let state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
        let fresh = SshProvider::new()
            .with_destination(&destination)
            .map_err(|e| format!("with_destination: {e}"))?;
        let rejoined = rejoin(&fresh, state)
            .await
            .map_err(|e| format!("rejoin_session: {e}"))?;
        let cancelled = rejoined
            .cancel_command(&id)
            .await
            .map_err(|e| format!("cancel_command after rejoin: {e}"));
        let ended = match cancelled {
            Ok(true) => {
                wait_sleepers(
                    &helper,
                    child,
                    0,
                    "after cancel_command of the rejoined command",
                )
                .await
            }
            Ok(false) => Err("cancel_command of the adopted command returned false".into()),
            Err(e) => Err(e),
        };
        rejoined.close().await.map_err(|e| format!("close: {e}"))?;
        ended
    }
    .await;
    kill_sleepers(&helper, &[child, main]).await;
    helper.close().await.map_err(|e| format!("close: {e}"))?;
    outcome
}

/// A detached session whose finished command left a setsid child: the sweep
/// that removes the orphan ends the child too.
async fn sweep_ends_setsid_children_of_an_orphan() -> TestResult {
    in_area(|area| async move {
        let destination = area_destination(
            &area,
            serde_json::json!({ "orphan_grace_s": 0, "kill_grace_ms": 300 }),
        )?;
        let provider = SshProvider::new();
        let live = open(&provider, &destination).await?;
        let orphan = open(&provider, &destination).await?;
        let child = sleep_marker();
        let outcome = async {
            sh(&orphan, &format!("{}echo started", escape(child))).await?;
            wait_sleepers(&live, child, 1, "after the command").await?;
            orphan.detach().await.map_err(|e| format!("detach: {e}"))?;
            provider
                .sweep_orphans()
                .await
                .map_err(|e| format!("sweep_orphans: {e}"))?;
            wait_sleepers(&live, child, 0, "after the sweep").await
        }
        .await;
        kill_sleepers(&live, &[child]).await;
        live.close().await.map_err(|e| format!("close: {e}"))?;
        outcome
    })
    .await
}

fn main() -> ExitCode {
    BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    )
    .run(vec![
        async_trial(
            "rejoin_takes_settings_from_the_destination",
            rejoin_takes_settings_from_the_destination,
        ),
        async_trial(
            "rejoin_refuses_foreign_hosts_and_paths",
            rejoin_refuses_foreign_hosts_and_paths,
        ),
        async_trial(
            "resume_takes_the_snapshot_from_the_destination",
            resume_takes_the_snapshot_from_the_destination,
        ),
        async_trial(
            "sweep_leaves_what_forged_markers_name",
            sweep_leaves_what_forged_markers_name,
        ),
        async_trial(
            "fifo_read_refused_and_channel_keeps_working",
            fifo_read_refused_and_channel_keeps_working,
        ),
        async_trial(
            "fifo_swapped_in_fails_fast_and_files_keep_working",
            fifo_swapped_in_fails_fast_and_files_keep_working,
        ),
        async_trial(
            "upload_above_max_upload_bytes_refused",
            upload_above_max_upload_bytes_refused,
        ),
        async_trial(
            "manifest_entry_through_a_symlink_refused",
            manifest_entry_through_a_symlink_refused,
        ),
        async_trial(
            "cancel_ends_setsid_children_despite_forged_marks",
            cancel_ends_setsid_children_despite_forged_marks,
        ),
        async_trial("timeout_ends_setsid_children", timeout_ends_setsid_children),
        async_trial(
            "rejoined_cancel_ends_setsid_children",
            rejoined_cancel_ends_setsid_children,
        ),
        async_trial(
            "sweep_ends_setsid_children_of_an_orphan",
            sweep_ends_setsid_children_of_an_orphan,
        ),
    ])
}
