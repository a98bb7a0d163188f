//! Sessions of the unix-local provider: config, manifests and mounts,
//! snapshots and forks, resume, ports, orphan sweeping.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_api::{
    RemoteRunnerProvider, RunnerCommandRequest, RunnerErrorKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerManifest, RunnerManifestEntry, RunnerMount, RunnerMountIntent,
    RunnerMountKind, RunnerPortRequest, RunnerSnapshotRef,
};
use runner_local::LocalProvider;
use serde_json::json;
use support::{Area, destination, destination_with, eventually, kind, session, tree};

fn write(path: &str, contents: &str) -> RunnerFileWriteRequest {
    RunnerFileWriteRequest::new(path, contents.as_bytes().to_vec())
}

fn mount(name: &str, path: &str, uri: &Path, read_only: bool) -> RunnerMount {
    RunnerMount {
        name: name.into(),
        path: path.into(),
        read_only,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::ProviderNative,
            uri: uri.display().to_string(),
            credentials: None,
        },
    }
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let provider = LocalProvider::new();
    for (config, field) in [
        (json!({ "rot": "/tmp/x" }), "rot"),
        (json!({ "root": 7 }), "root"),
        (json!({ "kill_grace_ms": "soon" }), "kill_grace_ms"),
        (json!({ "env": { "K": false } }), "env"),
        (json!({ "snapshot_dir": {} }), "snapshot_dir"),
        (json!({ "workspaces_dir": true }), "workspaces_dir"),
    ] {
        for result in [
            provider
                .validate_destination(&destination(config.clone()))
                .await,
            provider
                .create_session(destination(config.clone()))
                .await
                .map(|_| ()),
        ] {
            let err = result.expect_err("bad config");
            assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
            assert!(err.message().contains(field), "{err}");
        }
    }
    let mut other = destination(json!({}));
    other.provider_id = "docker".into();
    assert_eq!(
        kind(provider.validate_destination(&other).await),
        RunnerErrorKind::InvalidRequest
    );
}

#[tokio::test]
async fn validate_destination_checks_manifest_sources_and_kinds() {
    let area = Area::new();
    let provider = LocalProvider::new();
    let missing_source = RunnerManifest {
        entries: vec![RunnerManifestEntry {
            source: area.path("no-such-source"),
            target: "x".into(),
            writable: true,
        }],
        mounts: vec![],
    };
    let err = provider
        .validate_destination(&destination_with(area.rooted_config(), missing_source))
        .await
        .expect_err("missing source");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("no-such-source"), "{err}");
    let missing_mount = RunnerManifest {
        entries: vec![],
        mounts: vec![mount("cache", "cache", &area.path("no-such-dir"), false)],
    };
    let err = provider
        .create_session(destination_with(area.rooted_config(), missing_mount))
        .await
        .map(|_| ())
        .expect_err("missing host path");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("cache"), "{err}");
    // Azure Blob is advertised only with the `azure` feature, by the stack.
    let mut azure = mount("bucket", "b", Path::new("az://container"), false);
    azure.intent.kind = RunnerMountKind::AzureBlob;
    let manifest = RunnerManifest {
        entries: vec![],
        mounts: vec![azure],
    };
    let with_azure = destination_with(area.rooted_config(), manifest);
    // Object-store kinds are the layer stack's: the bare provider refuses
    // them; the stacked one takes Azure Blob with the `azure` feature.
    assert_eq!(
        kind(provider.validate_destination(&with_azure).await),
        RunnerErrorKind::Unsupported
    );
    let result = runner_stack::stacked(LocalProvider::new())
        .validate_destination(&with_azure)
        .await;
    if runner_mounts::store_mount_kinds().azure_blob {
        result.expect("azure_blob with the azure feature");
    } else {
        assert_eq!(kind(result), RunnerErrorKind::Unsupported);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_native_mounts_and_read_only_entries() {
    let area = Area::new();
    let ro_host = area.path("ro-host");
    let rw_host = area.path("rw-host");
    std::fs::create_dir_all(ro_host.join("sub")).expect("ro host");
    std::fs::create_dir_all(&rw_host).expect("rw host");
    std::fs::write(ro_host.join("data.txt"), "host data").expect("host file");
    let src = area.path("src");
    std::fs::create_dir_all(src.join("lib")).expect("src");
    std::fs::write(src.join("lib/tool.txt"), "tool").expect("tool");
    std::fs::write(area.path("notes.txt"), "notes").expect("notes");
    let manifest = RunnerManifest {
        entries: vec![
            RunnerManifestEntry {
                source: src.clone(),
                target: "vendor/src".into(),
                writable: false,
            },
            RunnerManifestEntry {
                source: area.path("notes.txt"),
                target: "notes.txt".into(),
                writable: true,
            },
        ],
        mounts: vec![
            mount("reference", "mnt/ro", &ro_host, true),
            mount("scratch", "mnt/rw", &rw_host, false),
        ],
    };
    let provider = LocalProvider::new();
    let dest = destination_with(area.rooted_config(), manifest);
    provider.validate_destination(&dest).await.expect("valid");
    let s = provider.create_session(dest).await.expect("create");
    let before = tree(&ro_host);
    let denied = RunnerErrorKind::PermissionDenied;

    // Read-only mount: reads work, every write is refused, the host is untouched.
    let read = s
        .read_file(RunnerFileReadRequest::new("mnt/ro/data.txt"))
        .await
        .expect("read through the mount");
    assert_eq!(read.contents, b"host data");
    let listed = s.list_dir(Path::new("mnt/ro")).await.expect("list mount");
    assert_eq!(listed.len(), 2);
    let err = s
        .write_file(write("mnt/ro/data.txt", "x"))
        .await
        .expect_err("ro");
    assert_eq!(err.kind(), denied);
    assert!(err.message().contains("reference"), "{err}");
    assert_eq!(
        kind(s.write_file(write("mnt/ro/new.txt", "x")).await),
        denied
    );
    assert_eq!(
        kind(s.remove(Path::new("mnt/ro/data.txt"), false).await),
        denied
    );
    assert_eq!(kind(s.make_dir(Path::new("mnt/ro/d")).await), denied);
    assert_eq!(
        kind(
            s.rename(Path::new("mnt/ro/data.txt"), Path::new("stolen.txt"))
                .await
        ),
        denied
    );
    assert_eq!(
        kind(s.upload_archive(Path::new("mnt/ro"), Vec::new()).await),
        denied
    );
    assert_eq!(kind(s.remove(Path::new("mnt/ro"), true).await), denied);
    assert_eq!(kind(s.remove(Path::new("mnt"), true).await), denied);
    assert_eq!(tree(&ro_host), before);
    // Paths under a mount stay confined to the host directory.
    assert_eq!(
        kind(
            s.read_file(RunnerFileReadRequest::new(
                "mnt/ro/../../../ro-host/data.txt"
            ))
            .await
        ),
        denied
    );
    assert_eq!(
        s.canonicalize(Path::new("mnt/ro/sub"))
            .await
            .expect("canonical"),
        s.workspace_root().join("mnt/ro/sub")
    );

    // Commands see the mounts; the writable one takes writes through the API.
    let res = s
        .run_command(RunnerCommandRequest::shell("cat", "cat mnt/ro/data.txt"))
        .await
        .expect("run");
    assert_eq!(res.stdout, "host data");
    s.write_file(write("mnt/rw/out.txt", "written"))
        .await
        .expect("rw write");
    assert_eq!(
        std::fs::read_to_string(rw_host.join("out.txt")).expect("host"),
        "written"
    );

    // Read-only entry: copied, refused for writes; a writable entry is fine.
    let tool = s
        .read_file(RunnerFileReadRequest::new("vendor/src/lib/tool.txt"))
        .await
        .expect("entry copied");
    assert_eq!(tool.contents, b"tool");
    assert_eq!(
        kind(s.write_file(write("vendor/src/lib/tool.txt", "x")).await),
        denied
    );
    assert_eq!(kind(s.remove(Path::new("vendor"), true).await), denied);
    s.write_file(write("notes.txt", "edited"))
        .await
        .expect("writable entry");
    assert_eq!(
        std::fs::read_to_string(area.path("notes.txt")).expect("source"),
        "notes"
    );

    let root = s.workspace_root();
    s.close().await.expect("close");
    assert!(root.join("notes.txt").exists(), "a configured root stays");
    assert!(!root.join("mnt/ro").exists(), "the mount link is gone");
    assert_eq!(tree(&ro_host), before, "the host directory is intact");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_snapshot_equals_its_source_and_diverges_independently() {
    let area = Area::new();
    let provider = LocalProvider::new();
    let s = provider
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    s.write_file(write("a.txt", "alpha")).await.expect("a");
    let mut script = write("bin/run.sh", "#!/bin/sh\necho run\n");
    script.mode = Some(0o755);
    s.write_file(script).await.expect("script");
    s.write_file(write("deep/er/x.bin", "x"))
        .await
        .expect("deep");
    s.run_command(RunnerCommandRequest::shell(
        "ln",
        "ln -s a.txt link && ln -s /usr/bin/env abs",
    ))
    .await
    .expect("links");
    let snap = s.snapshot().await.expect("snapshot");
    assert_eq!(snap.provider_id, "unix-local");
    let tar_path = PathBuf::from(snap.metadata["path"].as_str().expect("path"));
    assert!(tar_path.starts_with(area.path("snapshots")));
    assert_eq!(
        snap.metadata["size"].as_u64(),
        Some(std::fs::metadata(&tar_path).expect("tar").len())
    );

    let mut state = s.state();
    state.snapshot = Some(snap.clone());
    let fork = provider.resume_session(state).await.expect("fork");
    assert_ne!(fork.workspace_root(), s.workspace_root());
    assert_eq!(tree(&fork.workspace_root()), tree(&s.workspace_root()));

    fork.write_file(write("a.txt", "changed in fork"))
        .await
        .expect("fork write");
    s.write_file(write("only-original.txt", "o"))
        .await
        .expect("orig write");
    let orig_a = s
        .read_file(RunnerFileReadRequest::new("a.txt"))
        .await
        .expect("a");
    assert_eq!(orig_a.contents, b"alpha");
    assert_eq!(
        kind(fork.stat(Path::new("only-original.txt")).await),
        RunnerErrorKind::NotFound
    );
    let ran = fork
        .run_command(RunnerCommandRequest::new(
            "r",
            "bin/run.sh",
            Vec::<String>::new(),
        ))
        .await
        .expect("restored script keeps its mode");
    assert_eq!(ran.stdout, "run\n");

    let fork_root = fork.workspace_root();
    fork.close().await.expect("close fork");
    assert!(!fork_root.exists());
    assert!(
        s.workspace_root().join("a.txt").exists(),
        "the original goes on"
    );

    // A missing snapshot, another provider's snapshot.
    let mut state = s.state();
    state.snapshot = Some(RunnerSnapshotRef {
        provider_id: "unix-local".into(),
        snapshot_id: "snap-missing".into(),
        metadata: json!({}),
    });
    let err = provider
        .resume_session(state.clone())
        .await
        .map(|_| ())
        .expect_err("missing");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("snap-missing"), "{err}");
    state.provider_id = "docker".into();
    assert_eq!(
        kind(provider.resume_session(state).await.map(|_| ())),
        RunnerErrorKind::InvalidRequest
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_without_snapshot_reopens_the_same_root() {
    let area = Area::new();
    let provider = LocalProvider::new();
    let s = provider
        .create_session(destination(area.rooted_config()))
        .await
        .expect("create");
    s.write_file(write("kept.txt", "kept"))
        .await
        .expect("write");
    let state = s.state();
    assert_eq!(state.metadata["owned"], json!(false));
    assert!(
        state.metadata.get("config").is_none() && state.metadata.get("mounts").is_none(),
        "the state carries no config: {}",
        state.metadata
    );
    s.close().await.expect("close");
    let again = provider.resume_session(state).await.expect("resume");
    assert_eq!(again.workspace_root(), s.workspace_root());
    let read = again
        .read_file(RunnerFileReadRequest::new("kept.txt"))
        .await
        .expect("read");
    assert_eq!(read.contents, b"kept");
    again.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_takes_root_and_mounts_from_the_destination_never_from_the_state() {
    let area = Area::new();
    let host = area.path("host");
    std::fs::create_dir_all(&host).expect("host dir");
    std::fs::write(host.join("shared.txt"), "from the destination's mount").expect("seed");
    let elsewhere = area.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::fs::write(elsewhere.join("private.txt"), "not for the session").expect("seed");
    let tool = area.path("tool.txt");
    std::fs::write(&tool, "read-only entry").expect("seed");
    let manifest = RunnerManifest {
        entries: vec![RunnerManifestEntry {
            source: tool,
            target: "tools/tool.txt".into(),
            writable: false,
        }],
        mounts: vec![mount("data", "mnt", &host, false)],
    };
    let rooted = destination_with(area.rooted_config(), manifest);
    let provider = LocalProvider::new();
    let s = provider
        .create_session(rooted.clone())
        .await
        .expect("create");
    let state = s.state();
    s.close().await.expect("close");

    // A state naming another root is refused.
    let mut forged = state.clone();
    forged.metadata["root"] = json!(elsewhere);
    let err = provider
        .resume_session(forged)
        .await
        .map(|_| ())
        .expect_err("another root");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("elsewhere"), "{err}");

    // Config, mounts and dropped read-only paths in the state are ignored:
    // the destination's apply.
    let mut forged = state.clone();
    forged.metadata["read_only"] = json!([]);
    forged.metadata["config"] = json!({ "root": elsewhere });
    forged.metadata["mounts"] = json!([
        { "name": "data", "path": "mnt", "read_only": false, "host": elsewhere }
    ]);
    let again = provider.resume_session(forged).await.expect("resume");
    assert_eq!(again.workspace_root(), s.workspace_root());
    let read = again
        .read_file(RunnerFileReadRequest::new("mnt/shared.txt"))
        .await
        .expect("the destination's mount");
    assert_eq!(read.contents, b"from the destination's mount");
    assert_eq!(
        kind(
            again
                .read_file(RunnerFileReadRequest::new("mnt/private.txt"))
                .await
        ),
        RunnerErrorKind::NotFound
    );
    again.close().await.expect("close");

    // A destination this provider never saw is refused; declared, it resumes.
    assert_eq!(
        kind(
            LocalProvider::new()
                .resume_session(state.clone())
                .await
                .map(|_| ())
        ),
        RunnerErrorKind::NotFound
    );
    let declared = LocalProvider::new()
        .with_destination(&rooted)
        .expect("a unix-local destination")
        .resume_session(state.clone())
        .await
        .expect("resume on a declared destination");
    assert_eq!(declared.workspace_root(), s.workspace_root());
    declared.close().await.expect("close");
    // The trait form: a destination of another provider under the same id is
    // ignored, the unix-local one is trusted.
    let trusting = LocalProvider::new();
    let mut foreign = rooted.clone();
    foreign.provider_id = "docker".into();
    trusting.trust_destination(&foreign);
    assert_eq!(
        kind(trusting.resume_session(state.clone()).await.map(|_| ())),
        RunnerErrorKind::NotFound
    );
    trusting.trust_destination(&rooted);
    let trusted = trusting
        .resume_session(state)
        .await
        .expect("resume on a trusted destination");
    assert_eq!(trusted.workspace_root(), s.workspace_root());
    trusted.close().await.expect("close");

    // Owned workspaces: only one this destination created in its workspaces_dir.
    let owned = provider
        .create_session(destination(area.owned_config()))
        .await
        .expect("create owned");
    let state = owned.state();
    let planted = area.path("workspaces").join("planted");
    std::fs::create_dir_all(&planted).expect("planted");
    for named in [&elsewhere, &planted] {
        let mut forged = state.clone();
        forged.metadata["root"] = json!(named);
        let err = provider
            .resume_session(forged)
            .await
            .map(|_| ())
            .expect_err("not an owned workspace");
        assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    }
    let resumed = provider.resume_session(state).await.expect("resume owned");
    assert_eq!(resumed.workspace_root(), owned.workspace_root());
    resumed.close().await.expect("close");
    assert!(elsewhere.join("private.txt").exists() && planted.exists());

    // A snapshot comes from the destination's snapshot_dir, whatever path the
    // reference names.
    let owned = provider
        .create_session(destination(area.owned_config()))
        .await
        .expect("create owned");
    owned
        .write_file(write("real.txt", "snapshot"))
        .await
        .expect("write");
    let mut snap = owned.snapshot().await.expect("snapshot");
    let fake = area.path("fake");
    std::fs::create_dir_all(&fake).expect("fake dir");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(7);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "planted.txt", &b"planted"[..])
        .expect("tar");
    let fake_tar = fake.join(format!("{}.tar", snap.snapshot_id));
    std::fs::write(&fake_tar, builder.into_inner().expect("tar")).expect("fake tar");
    snap.metadata["path"] = json!(fake_tar);
    let mut state = owned.state();
    state.snapshot = Some(snap);
    let fork = provider.resume_session(state).await.expect("fork");
    assert!(fork.workspace_root().join("real.txt").exists());
    assert!(!fork.workspace_root().join("planted.txt").exists());
    fork.close().await.expect("close");
    owned.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_ports_of_the_session_and_exposed_urls() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let outsider = std::net::TcpListener::bind("127.0.0.1:0").expect("outside listener");
    let outsider_port = outsider.local_addr().expect("addr").port();
    let script = "import socket, time\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', 0))\n\
                  s.listen()\n\
                  print(s.getsockname()[1], flush=True)\n\
                  time.sleep(1000)\n";
    s.start_command(RunnerCommandRequest::new("srv", "python3", ["-c", script]))
        .await
        .expect("start listener");
    let id = "srv".to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let port: u16 = loop {
        let out = s.command_output(&id, 0).await.expect("output");
        if let Ok(port) = out.stdout.trim().parse() {
            break port;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener printed no port: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = s.list_listening_ports().await.expect("ports");
        if listed.iter().any(|p| p.port == port) {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} not listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let entry = listed.iter().find(|p| p.port == port).expect("listed");
    assert_eq!(entry.address, "127.0.0.1");
    assert_eq!(entry.protocol, "tcp");
    assert!(entry.pid.is_some());
    assert!(
        listed.iter().all(|p| p.port != outsider_port),
        "not the test's own socket"
    );

    let url = s
        .expose_port(RunnerPortRequest { port, label: None })
        .await
        .expect("expose");
    assert_eq!(
        url.url.as_deref(),
        Some(format!("http://127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        kind(
            s.expose_port(RunnerPortRequest {
                port: 0,
                label: None
            })
            .await
        ),
        RunnerErrorKind::InvalidRequest
    );
    s.close().await.expect("close");
    drop(outsider);
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_removes_only_workspaces_of_sessions_that_are_gone() {
    let provider = LocalProvider::new().with_sweep(runner_local::SweepConfig {
        grace: Duration::ZERO,
        ..Default::default()
    });
    let dropped = provider
        .create_session(destination(json!({})))
        .await
        .expect("create");
    let live = provider
        .create_session(destination(json!({})))
        .await
        .expect("create");
    let dropped_root = dropped.workspace_root();
    let res = dropped
        .run_command(RunnerCommandRequest::shell("bg", "sleep 1000 & echo $!"))
        .await
        .expect("run");
    let pid: i32 = res.stdout.trim().parse().expect("pid");
    drop(dropped);
    assert!(
        eventually(
            Duration::from_secs(5),
            || async move { !support::alive(pid) }
        )
        .await,
        "dropping a session kills its processes"
    );
    assert!(dropped_root.exists(), "dropping keeps the workspace");
    let report = provider.sweep_orphans().await.expect("sweep");
    assert!(
        report.removed.contains(&dropped_root.display().to_string()),
        "{report:?}"
    );
    assert!(!dropped_root.exists());
    assert!(
        live.workspace_root().exists(),
        "a live session's workspace stays"
    );
    live.close().await.expect("close");
}
