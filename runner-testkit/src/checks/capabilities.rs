//! capabilities: every flag is honest in both directions.
//!
//! Each check runs for every provider: when the flag is false the matching
//! operations must return `Unsupported`; when it is true a basic call must work.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_api::{
    RunnerArtifactExportRequest, RunnerCapabilities, RunnerCommandRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileKind, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerPortRequest, RunnerProcessEvent, RunnerResult, RunnerSignal, RunnerSnapshotRef,
};

use crate::catalogue::{Area, Capability, Check};
use crate::commands::{quote, sh_ok, shell, unique_id, wait_exited};
use crate::context::{Cx, Session};
use crate::fixtures::http::random_port;
use crate::fixtures::tree::{self, Node, Tree};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Capabilities;
    vec![
        Check::new(
            "capabilities_session_matches_provider",
            a,
            &[],
            "RemoteRunnerSession::capabilities: \"What this session can do (normally the provider's capabilities)\"; artifact_export may be less (it needs a store).",
            |cx| Box::pin(session_matches_provider(cx)),
        ),
        Check::new(
            "capabilities_command_exec",
            a,
            &[],
            "command_exec: \"run_command works\"; false → run_command is Unsupported.",
            |cx| Box::pin(command_exec(cx)),
        ),
        Check::new(
            "capabilities_file_read",
            a,
            &[],
            "file_read: \"read_file works\"; false → read_file is Unsupported.",
            |cx| Box::pin(file_read(cx)),
        ),
        Check::new(
            "capabilities_file_write",
            a,
            &[],
            "file_write: \"write_file works\"; false → write_file is Unsupported.",
            |cx| Box::pin(file_write(cx)),
        ),
        Check::new(
            "capabilities_port_preview",
            a,
            &[],
            "port_preview: \"expose_port returns a URL\"; false → expose_port is Unsupported.",
            |cx| Box::pin(port_preview(cx)),
        ),
        Check::new(
            "capabilities_snapshots",
            a,
            &[],
            "snapshots: \"snapshot captures the workspace\"; false → snapshot is Unsupported.",
            |cx| Box::pin(snapshots(cx)),
        ),
        Check::new(
            "capabilities_cancellation",
            a,
            &[],
            "cancellation: \"cancel_command kills a running command's process tree\"; false → Unsupported.",
            |cx| Box::pin(cancellation(cx)),
        ),
        Check::new(
            "capabilities_artifact_export",
            a,
            &[],
            "artifact_export, per session: without RunnerDestination.artifacts a session does not claim it and export_artifact is Unsupported; with a store it claims it (when the provider does) and exports.",
            |cx| Box::pin(artifact_export(cx)),
        ),
        Check::new(
            "capabilities_pausable",
            a,
            &[],
            "pausable: \"pause and resume stop and continue the session\"; false → both Unsupported.",
            |cx| Box::pin(pausable(cx)),
        ),
        Check::new(
            "capabilities_detachable",
            a,
            &[],
            "detachable: \"detach keeps the sandbox alive for a later rejoin_session\"; false → both Unsupported.",
            |cx| Box::pin(detachable(cx)),
        ),
        Check::new(
            "capabilities_streaming",
            a,
            &[],
            "streaming: \"stream_command yields live output events\"; false → stream_command is Unsupported.",
            |cx| Box::pin(streaming(cx)),
        ),
        Check::new(
            "capabilities_background_processes",
            a,
            &[],
            "background_processes: start/list/status/output/signal work; false → each is Unsupported.",
            |cx| Box::pin(background_processes(cx)),
        ),
        Check::new(
            "capabilities_stdin",
            a,
            &[],
            "stdin: \"RunnerCommandRequest::stdin is delivered and write_stdin works\"; false → both Unsupported.",
            |cx| Box::pin(stdin(cx)),
        ),
        Check::new(
            "capabilities_file_management",
            a,
            &[],
            "file_management: list_dir/stat/remove/make_dir/rename/canonicalize work; false → each is Unsupported.",
            |cx| Box::pin(file_management(cx)),
        ),
        Check::new(
            "capabilities_archive_transfer",
            a,
            &[],
            "archive_transfer: \"upload_archive and download_archive work\"; false → both Unsupported.",
            |cx| Box::pin(archive_transfer(cx)),
        ),
        Check::new(
            "capabilities_snapshot_restore",
            a,
            &[],
            "snapshot_restore: \"resume_session with a snapshot creates a new session\"; false → Unsupported.",
            |cx| Box::pin(snapshot_restore(cx)),
        ),
        Check::new(
            "capabilities_port_listing",
            a,
            &[],
            "port_listing: \"list_listening_ports works\"; false → list_listening_ports is Unsupported.",
            |cx| Box::pin(port_listing(cx)),
        ),
    ]
}

/// `result` must be `Unsupported` because `flag` is false.
pub(crate) fn unsupported<T: Debug>(
    result: RunnerResult<T>,
    op: &str,
    flag: Capability,
) -> CheckResult {
    result
        .fails_with(
            RunnerErrorKind::Unsupported,
            format!("{op} with {flag} = false"),
        )
        .map(|_| ())
}

/// `result` must not be `Unsupported` (any other outcome shows the op is implemented).
fn not_unsupported<T: Debug>(result: RunnerResult<T>, op: &str, flag: Capability) -> CheckResult {
    match result {
        Err(e) if e.kind() == RunnerErrorKind::Unsupported => Err(format!(
            "{op} with {flag} = true returned Err(unsupported): {}",
            e.message()
        )),
        _ => Ok(()),
    }
}

/// A file with known contents, made with `write_file` or a command; `None`
/// when the session can do neither.
async fn known_file(cx: &Cx, s: &Session) -> CheckResult<Option<PathBuf>> {
    let path = cx.scratch(s).join("known.txt");
    if cx.caps.file_write {
        s.write_file(RunnerFileWriteRequest::new(&path, b"known".to_vec()))
            .await
            .or_fail("write_file")?;
    } else if cx.caps.command_exec {
        let dir = path.parent().unwrap_or(Path::new("."));
        sh_ok(
            s.as_ref(),
            &format!(
                "mkdir -p {} && printf known > {}",
                quote(&dir.display().to_string()),
                quote(&path.display().to_string())
            ),
        )
        .await?;
    } else {
        return Ok(None);
    }
    Ok(Some(path))
}

/// The session declares the provider's capabilities, except that it may
/// claim `artifact_export` when the provider does not.
async fn session_matches_provider(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let claimed = s.capabilities();
    ensure!(
        !claimed.artifact_export || cx.caps.artifact_export,
        "the session claims artifact_export, which the provider does not"
    );
    let provider = RunnerCapabilities {
        artifact_export: claimed.artifact_export,
        ..cx.caps.clone()
    };
    ensure_eq!(
        claimed,
        provider,
        "session capabilities against provider capabilities (artifact_export aside)"
    );
    s.close().await.or_fail("close")
}

async fn command_exec(cx: Cx) -> CheckResult {
    let flag = Capability::CommandExec;
    let s = cx.session().await?;
    if cx.caps.command_exec {
        let out = sh_ok(s.as_ref(), "echo works").await?;
        ensure_eq!(out, "works\n", "stdout of `echo works`");
    } else {
        let request = RunnerCommandRequest::new(unique_id("cap"), "echo", ["x"]);
        unsupported(s.run_command(request).await, "run_command", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn file_read(cx: Cx) -> CheckResult {
    let flag = Capability::FileRead;
    let s = cx.session().await?;
    if cx.caps.file_read {
        match known_file(&cx, &s).await? {
            Some(path) => {
                let got = s
                    .read_file(RunnerFileReadRequest::new(&path))
                    .await
                    .or_fail(format!("read_file {}", path.display()))?;
                same_bytes(&got.contents, b"known", "read_file of a known file")?;
            }
            None => {
                let missing = RunnerFileReadRequest::new(cx.scratch(&s).join("missing"));
                not_unsupported(s.read_file(missing).await, "read_file", flag)?;
            }
        }
    } else {
        unsupported(
            s.read_file(RunnerFileReadRequest::new("x.txt")).await,
            "read_file",
            flag,
        )?;
    }
    s.close().await.or_fail("close")
}

async fn file_write(cx: Cx) -> CheckResult {
    let flag = Capability::FileWrite;
    let s = cx.session().await?;
    let path = cx.scratch(&s).join("written.txt");
    let request = RunnerFileWriteRequest::new(&path, b"written".to_vec());
    if cx.caps.file_write {
        s.write_file(request).await.or_fail("write_file")?;
        if cx.caps.file_read {
            let got = s
                .read_file(RunnerFileReadRequest::new(&path))
                .await
                .or_fail("read_file")?;
            same_bytes(&got.contents, b"written", "read_file after write_file")?;
        }
    } else {
        unsupported(s.write_file(request).await, "write_file", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn port_preview(cx: Cx) -> CheckResult {
    let flag = Capability::PortPreview;
    let s = cx.session().await?;
    let port = random_port();
    let request = RunnerPortRequest { port, label: None };
    if cx.caps.port_preview {
        let exposed = s
            .expose_port(request)
            .await
            .or_fail(format!("expose_port {port}"))?;
        ensure!(
            exposed.url.is_some(),
            "expose_port {port}: expected a URL, got None"
        );
    } else {
        unsupported(s.expose_port(request).await, "expose_port", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn snapshots(cx: Cx) -> CheckResult {
    let flag = Capability::Snapshots;
    let s = cx.session().await?;
    if cx.caps.snapshots {
        let snapshot = s.snapshot().await.or_fail("snapshot")?;
        ensure_eq!(
            snapshot.provider_id,
            cx.provider.id(),
            "provider_id of the snapshot"
        );
    } else {
        unsupported(s.snapshot().await, "snapshot", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn cancellation(cx: Cx) -> CheckResult {
    let flag = Capability::Cancellation;
    let s = cx.session().await?;
    let id = unique_id("never-started");
    if cx.caps.cancellation {
        let cancelled = s
            .cancel_command(&id)
            .await
            .or_fail("cancel_command of an unknown id")?;
        ensure!(
            !cancelled,
            "cancel_command of an unknown id: expected false, got true"
        );
    } else {
        unsupported(s.cancel_command(&id).await, "cancel_command", flag)?;
    }
    s.close().await.or_fail("close")
}

/// `artifact_export` both ways, per session: a destination without an
/// artifact store gives a session that does not claim it, and one with a
/// store (the run's destination's, or the kit's object store) a session that
/// claims it exactly when the provider does.
async fn artifact_export(cx: Cx) -> CheckResult {
    let mut without = cx.destination.clone();
    without.artifacts = None;
    artifact_claim(&cx, without, false, "without an artifact store").await?;
    let with = match (&cx.destination.artifacts, cx.store()) {
        (Some(_), _) => Some(cx.destination.clone()),
        (None, Ok(target)) => Some(RunnerDestination {
            artifacts: Some(target.artifacts_config(&crate::harness::artifacts_prefix())),
            ..cx.destination.clone()
        }),
        (None, Err(_)) => None,
    };
    match with {
        Some(with) => {
            let claim = cx.caps.artifact_export;
            artifact_claim(&cx, with, claim, "with an artifact store").await
        }
        None => Ok(()),
    }
}

/// A session of `destination` claims `artifact_export` exactly when `claim`,
/// and exports (or returns `Unsupported`) accordingly.
async fn artifact_claim(
    cx: &Cx,
    destination: RunnerDestination,
    claim: bool,
    what: &str,
) -> CheckResult {
    let s = cx.session_of(destination).await?;
    ensure_eq!(
        s.capabilities().artifact_export,
        claim,
        "artifact_export claimed by a session {what}"
    );
    if claim {
        let request = match known_file(cx, &s).await? {
            Some(path) => RunnerArtifactExportRequest {
                path,
                recursive: false,
            },
            None => RunnerArtifactExportRequest {
                path: PathBuf::from("."),
                recursive: true,
            },
        };
        let exported = s
            .export_artifact(request.clone())
            .await
            .or_fail(format!("export_artifact {} {what}", request.path.display()))?;
        ensure!(
            !exported.artifact_id.is_empty(),
            "export_artifact {what} returned an empty artifact_id"
        );
    } else {
        let request = RunnerArtifactExportRequest {
            path: PathBuf::from("x.txt"),
            recursive: false,
        };
        s.export_artifact(request).await.fails_with(
            RunnerErrorKind::Unsupported,
            format!("export_artifact of a session {what} that does not claim artifact_export"),
        )?;
    }
    s.close().await.or_fail("close")
}

async fn pausable(cx: Cx) -> CheckResult {
    let flag = Capability::Pausable;
    let s = cx.session().await?;
    if cx.caps.pausable {
        s.pause().await.or_fail("pause")?;
        s.resume().await.or_fail("resume")?;
    } else {
        unsupported(s.pause().await, "pause", flag)?;
        unsupported(s.resume().await, "resume", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn detachable(cx: Cx) -> CheckResult {
    let flag = Capability::Detachable;
    let s = cx.session().await?;
    if cx.caps.detachable {
        let state = s.detach().await.or_fail("detach")?;
        let rejoined = cx
            .provider
            .rejoin_session(state)
            .await
            .or_fail("rejoin_session")?;
        cx.adopt(rejoined.clone());
        rejoined
            .close()
            .await
            .or_fail("close of the rejoined session")
    } else {
        unsupported(s.detach().await, "detach", flag)?;
        let rejoined = cx.provider.rejoin_session(s.state()).await;
        if let Ok(session) = &rejoined {
            cx.adopt(session.clone());
        }
        unsupported(rejoined.map(|r| r.state()), "rejoin_session", flag)?;
        s.close().await.or_fail("close")
    }
}

async fn streaming(cx: Cx) -> CheckResult {
    let flag = Capability::Streaming;
    let s = cx.session().await?;
    if cx.caps.streaming {
        if cx.caps.background_processes && cx.caps.command_exec {
            let request = shell(s.as_ref(), "stream", "echo streamed");
            let id = request.command_id.clone();
            s.start_command(request).await.or_fail("start_command")?;
            let mut stream = s.stream_command(&id, 0).await.or_fail("stream_command")?;
            let mut stdout = Vec::new();
            loop {
                let next = tokio::time::timeout(
                    Duration::from_secs(30),
                    futures_util::StreamExt::next(&mut stream),
                )
                .await
                .map_err(|_| "stream_command: no Exited event within 30 s".to_string())?;
                match next {
                    Some(Ok(RunnerProcessEvent::Stdout { bytes, .. })) => stdout.extend(bytes),
                    Some(Ok(RunnerProcessEvent::Exited { .. })) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("stream_command event: {e}")),
                    None => return Err("stream_command ended without Exited".into()),
                }
            }
            same_bytes(&stdout, b"streamed\n", "streamed stdout")?;
        } else {
            let result = s.stream_command(&unique_id("unknown"), 0).await.map(|_| ());
            not_unsupported(result, "stream_command", flag)?;
        }
    } else {
        let result = s.stream_command(&unique_id("any"), 0).await.map(|_| ());
        unsupported(result, "stream_command", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn background_processes(cx: Cx) -> CheckResult {
    let flag = Capability::BackgroundProcesses;
    let s = cx.session().await?;
    if cx.caps.background_processes {
        let request = shell(s.as_ref(), "bg", "echo background");
        let id = request.command_id.clone();
        s.start_command(request).await.or_fail("start_command")?;
        wait_exited(s.as_ref(), &id, Duration::from_secs(30)).await?;
        let listed = s.list_commands().await.or_fail("list_commands")?;
        ensure!(
            listed.iter().any(|p| p.command_id == id),
            "list_commands does not list {id:?}"
        );
        let out = s.command_output(&id, 0).await.or_fail("command_output")?;
        ensure_eq!(out.stdout, "background\n", "command_output stdout");
    } else {
        let id = unique_id("any");
        let request = RunnerCommandRequest::new(id.clone(), "echo", ["x"]);
        unsupported(s.start_command(request).await, "start_command", flag)?;
        unsupported(s.list_commands().await, "list_commands", flag)?;
        unsupported(s.command_status(&id).await, "command_status", flag)?;
        unsupported(s.command_output(&id, 0).await, "command_output", flag)?;
        unsupported(
            s.signal_command(&id, RunnerSignal::Terminate).await,
            "signal_command",
            flag,
        )?;
    }
    s.close().await.or_fail("close")
}

async fn stdin(cx: Cx) -> CheckResult {
    let flag = Capability::Stdin;
    let s = cx.session().await?;
    let id = unique_id("stdin");
    if cx.caps.stdin {
        if cx.caps.command_exec {
            let request = RunnerCommandRequest::new(id, "cat", Vec::<String>::new())
                .with_cwd(s.workspace_root())
                .with_stdin(b"piped".to_vec())
                .with_timeout_ms(30_000);
            let result = s
                .run_command(request)
                .await
                .or_fail("run_command with stdin")?;
            ensure_eq!(result.stdout, "piped", "stdin echoed by cat");
        } else {
            not_unsupported(
                s.write_stdin(&id, b"x".to_vec(), true).await,
                "write_stdin",
                flag,
            )?;
        }
    } else {
        if cx.caps.command_exec {
            let request = RunnerCommandRequest::new(id.clone(), "cat", Vec::<String>::new())
                .with_cwd(s.workspace_root())
                .with_stdin(b"piped".to_vec())
                .with_timeout_ms(30_000);
            unsupported(s.run_command(request).await, "run_command with stdin", flag)?;
        }
        unsupported(
            s.write_stdin(&id, b"x".to_vec(), true).await,
            "write_stdin",
            flag,
        )?;
    }
    s.close().await.or_fail("close")
}

async fn file_management(cx: Cx) -> CheckResult {
    let flag = Capability::FileManagement;
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    if cx.caps.file_management {
        let made = dir.join("made");
        s.make_dir(&made).await.or_fail("make_dir")?;
        let st = s.stat(&made).await.or_fail("stat")?;
        ensure_eq!(
            st.kind,
            RunnerFileKind::Directory,
            "stat kind of a made directory"
        );
        let names: Vec<String> = s
            .list_dir(&dir)
            .await
            .or_fail("list_dir")?
            .into_iter()
            .map(|e| e.name)
            .collect();
        ensure_eq!(
            names,
            vec!["made".to_string()],
            "list_dir of the scratch directory"
        );
        s.canonicalize(&made).await.or_fail("canonicalize")?;
        let renamed = dir.join("renamed");
        s.rename(&made, &renamed).await.or_fail("rename")?;
        s.remove(&renamed, false).await.or_fail("remove")?;
    } else {
        let (a, b) = (dir.join("a"), dir.join("b"));
        unsupported(s.list_dir(&dir).await, "list_dir", flag)?;
        unsupported(s.stat(&a).await, "stat", flag)?;
        unsupported(s.remove(&a, true).await, "remove", flag)?;
        unsupported(s.make_dir(&a).await, "make_dir", flag)?;
        unsupported(s.rename(&a, &b).await, "rename", flag)?;
        unsupported(s.canonicalize(&a).await, "canonicalize", flag)?;
    }
    s.close().await.or_fail("close")
}

async fn archive_transfer(cx: Cx) -> CheckResult {
    let flag = Capability::ArchiveTransfer;
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let mut small = Tree::new();
    small.insert(
        "hello.txt".into(),
        Node::File {
            contents: b"hello".to_vec(),
            mode: Some(0o644),
        },
    );
    let archive = tree::to_tar(&small)?;
    if cx.caps.archive_transfer {
        s.upload_archive(&dir, archive)
            .await
            .or_fail("upload_archive")?;
        let back = s.download_archive(&dir).await.or_fail("download_archive")?;
        tree::compare(&tree::from_tar(&back)?, &small, "downloaded archive")?;
    } else {
        unsupported(
            s.upload_archive(&dir, archive).await,
            "upload_archive",
            flag,
        )?;
        unsupported(
            s.download_archive(&dir).await.map(|b| b.len()),
            "download_archive",
            flag,
        )?;
    }
    s.close().await.or_fail("close")
}

async fn snapshot_restore(cx: Cx) -> CheckResult {
    let flag = Capability::SnapshotRestore;
    let s = cx.session().await?;
    if cx.caps.snapshot_restore {
        ensure!(
            cx.caps.snapshots,
            "snapshot_restore = true but snapshots = false: nothing to restore from"
        );
        let snapshot = s.snapshot().await.or_fail("snapshot")?;
        let mut state = s.state();
        state.snapshot = Some(snapshot);
        let forked = cx
            .provider
            .resume_session(state)
            .await
            .or_fail("resume_session with a snapshot")?;
        cx.adopt(forked.clone());
        forked
            .close()
            .await
            .or_fail("close of the restored session")?;
    } else {
        let snapshot = if cx.caps.snapshots {
            s.snapshot().await.or_fail("snapshot")?
        } else {
            RunnerSnapshotRef {
                provider_id: cx.provider.id(),
                snapshot_id: "conformance-snapshot".into(),
                metadata: serde_json::Value::Null,
            }
        };
        let mut state = s.state();
        state.snapshot = Some(snapshot);
        let resumed = cx.provider.resume_session(state).await;
        if let Ok(session) = &resumed {
            cx.adopt(session.clone());
        }
        unsupported(
            resumed.map(|r| r.state()),
            "resume_session with a snapshot",
            flag,
        )?;
    }
    s.close().await.or_fail("close")
}

async fn port_listing(cx: Cx) -> CheckResult {
    let flag = Capability::PortListing;
    let s = cx.session().await?;
    if cx.caps.port_listing {
        s.list_listening_ports()
            .await
            .or_fail("list_listening_ports")?;
    } else {
        unsupported(s.list_listening_ports().await, "list_listening_ports", flag)?;
    }
    s.close().await.or_fail("close")
}
