//! Behaviour of the docker provider beyond the conformance kit, on real
//! daemons: an absent image, a daemon that stops in the middle of a session,
//! orphan removal, published and forwarded ports, manifests and mounts, and
//! the defences against hostile input: file operations as the session user,
//! processes that leave their group, and states that name someone else's
//! container or carry settings of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerByteStream, RunnerCommandRequest,
    RunnerDestination, RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerManifest, RunnerManifestEntry, RunnerMount, RunnerMountIntent, RunnerMountKind,
    RunnerPortRequest,
};
use runner_docker::{DockerProvider, LABEL_OWNER};
use runner_testkit::{BackendGate, async_trial, http_fetch};
use sha2::Digest;

/// Set in the child process of the orphan test.
const ORPHAN_CHILD: &str = "RUNNER_DOCKER_TEST_ORPHAN_CHILD";

type TestResult = Result<(), String>;

fn image() -> String {
    std::env::var("RUNNER_TEST_DOCKER_IMAGE")
        .unwrap_or_else(|_| "runners-test-busybox:latest".to_string())
}

fn destination(config: serde_json::Value) -> RunnerDestination {
    RunnerDestination {
        id: "docker-tests".into(),
        provider_id: "docker".into(),
        config,
        default_manifest: RunnerManifest::default(),
        artifacts: None,
    }
}

fn fail(what: &str) -> impl FnOnce(runner_api::RunnerError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn sh(session: &dyn RemoteRunnerSession, script: &str) -> Result<String, String> {
    let request =
        RunnerCommandRequest::shell(format!("t-{}", uuid::Uuid::new_v4().simple()), script)
            .with_timeout_ms(60_000);
    let result = session
        .run_command(request)
        .await
        .map_err(fail("run_command"))?;
    if !result.success() {
        return Err(format!(
            "sh -c {script:?}: exit {:?}, stderr {:?}",
            result.exit_code, result.stderr
        ));
    }
    Ok(result.stdout)
}

/// An image that is not on the daemon is `NotFound`, naming the image.
async fn absent_image_not_found() -> TestResult {
    let missing = format!(
        "runners-test-absent-{}:latest",
        uuid::Uuid::new_v4().simple()
    );
    let provider = DockerProvider::new();
    let err = match provider
        .create_session(destination(serde_json::json!({ "image": missing })))
        .await
    {
        Ok(session) => {
            let _ = session.close().await;
            return Err("create_session with an absent image succeeded".into());
        }
        Err(e) => e,
    };
    if err.kind() != RunnerErrorKind::NotFound || !err.message().contains(&missing) {
        return Err(format!("expected NotFound naming {missing}, got {err}"));
    }
    Ok(())
}

/// busybox httpd in the container, fetched from the host through the
/// forwarded URL and through the port published at creation.
async fn port_served_by_busybox_httpd() -> TestResult {
    let provider = DockerProvider::new();
    let session = provider
        .create_session(destination(serde_json::json!({
            "image": image(), "network": "bridge", "ports": [8080]
        })))
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        let token = uuid::Uuid::new_v4().simple().to_string();
        session
            .write_file(RunnerFileWriteRequest::new("www/index.html", token.clone()))
            .await
            .map_err(fail("write_file"))?;
        let server = RunnerCommandRequest::new(
            "httpd",
            "busybox",
            ["httpd", "-f", "-p", "8080", "-h", "/workspace/www"],
        );
        session
            .start_command(server)
            .await
            .map_err(fail("start_command httpd"))?;
        let exposed = session
            .expose_port(RunnerPortRequest {
                port: 8080,
                label: None,
            })
            .await
            .map_err(fail("expose_port"))?;
        let url = exposed.url.ok_or("expose_port gave no URL")?;
        if !url.starts_with("http://127.0.0.1:") {
            return Err(format!("expose_port URL {url:?} is not on 127.0.0.1"));
        }
        let body = http_fetch(&url, "index.html", Duration::from_secs(15)).await?;
        if body != token {
            return Err(format!("forwarded GET: expected {token:?}, got {body:?}"));
        }
        let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        let container = session.state().metadata["container_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let inspect = docker
            .inspect_container(&container, None)
            .await
            .map_err(|e| e.to_string())?;
        let published = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get("8080/tcp").cloned().flatten())
            .and_then(|b| b.first().cloned())
            .ok_or("port 8080 was not published")?;
        if published.host_ip.as_deref() != Some("127.0.0.1") {
            return Err(format!(
                "published on {:?}, not 127.0.0.1",
                published.host_ip
            ));
        }
        let host_port: u16 = published
            .host_port
            .and_then(|p| p.parse().ok())
            .ok_or("no published host port")?;
        let body = http_fetch(
            &format!("http://127.0.0.1:{host_port}"),
            "index.html",
            Duration::from_secs(15),
        )
        .await?;
        if body != token {
            return Err(format!("published GET: expected {token:?}, got {body:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// Manifest entries are copied in (read-only ones refuse writes) and a
/// provider_native mount is a bind mount of the host directory.
async fn manifest_entries_and_bind_mount() -> TestResult {
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("nested")).map_err(|e| e.to_string())?;
    std::fs::write(src.join("nested/a.txt"), b"entry a").map_err(|e| e.to_string())?;
    std::fs::write(host.path().join("notes.txt"), b"notes").map_err(|e| e.to_string())?;
    let shared = host.path().join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
    std::fs::write(shared.join("from-host.txt"), b"host").map_err(|e| e.to_string())?;
    let mut dest = destination(serde_json::json!({ "image": image(), "network": "none" }));
    dest.default_manifest = RunnerManifest {
        entries: vec![
            RunnerManifestEntry {
                source: src.clone(),
                target: PathBuf::from("project"),
                writable: true,
            },
            RunnerManifestEntry {
                source: host.path().join("notes.txt"),
                target: PathBuf::from("docs/notes.txt"),
                writable: false,
            },
        ],
        mounts: vec![RunnerMount {
            name: "shared".into(),
            path: PathBuf::from("shared"),
            read_only: false,
            intent: RunnerMountIntent {
                kind: RunnerMountKind::ProviderNative,
                uri: shared.display().to_string(),
                credentials: None,
            },
        }],
    };
    let provider = DockerProvider::new();
    let session = provider
        .create_session(dest)
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        let out = sh(
            session.as_ref(),
            "cat project/nested/a.txt docs/notes.txt shared/from-host.txt",
        )
        .await?;
        if out != "entry anoteshost" {
            return Err(format!("manifest contents in the container: {out:?}"));
        }
        let refused = session
            .write_file(RunnerFileWriteRequest::new("docs/notes.txt", b"x".to_vec()))
            .await;
        match refused {
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
            other => return Err(format!("write to a read-only entry: {other:?}")),
        }
        session
            .write_file(RunnerFileWriteRequest::new(
                "shared/from-container.txt",
                b"container".to_vec(),
            ))
            .await
            .map_err(fail("write_file into the bind mount"))?;
        let on_host =
            std::fs::read(shared.join("from-container.txt")).map_err(|e| e.to_string())?;
        if on_host != b"container" {
            return Err(format!("the bind mount on the host holds {on_host:?}"));
        }
        let read = session
            .read_file(RunnerFileReadRequest::new("project/nested/a.txt"))
            .await
            .map_err(fail("read_file"))?;
        if read.contents != b"entry a" {
            return Err(format!("read_file of an entry: {:?}", read.contents));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// With `user` set, commands run as that user and the workspace and the
/// files written through the API belong to it.
async fn configured_user_owns_workspace() -> TestResult {
    let provider = DockerProvider::new();
    let session = provider
        .create_session(destination(serde_json::json!({
            "image": image(), "network": "none", "user": "65534:65534",
            "env": { "GREETING": "hello" }
        })))
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        session
            .write_file(RunnerFileWriteRequest::new("sub/by-api.txt", b"api".to_vec()))
            .await
            .map_err(fail("write_file"))?;
        let out = sh(
            session.as_ref(),
            "id -u; echo $GREETING; stat -c %u . sub/by-api.txt; echo x > by-command.txt && cat by-command.txt",
        )
        .await?;
        if out != "65534\nhello\n65534\n65534\nx\n" {
            return Err(format!("as user 65534: {out:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// The orphan child: creates a session with a running background command and
/// a snapshot, prints their ids, and waits to be killed with SIGKILL (so no
/// close or drop code of the provider runs).
fn orphan_child() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let provider = DockerProvider::new();
        let dest = destination(serde_json::json!({ "image": image(), "network": "none" }));
        let session = match provider.create_session(dest).await {
            Ok(session) => session,
            Err(e) => {
                eprintln!("create_session: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut snapshots = Vec::new();
        // The second one is for a container the test starts by hand.
        for _ in 0..2 {
            match session.snapshot().await {
                Ok(snapshot) => snapshots.push(snapshot.snapshot_id),
                Err(e) => {
                    eprintln!("snapshot: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let background = RunnerCommandRequest::shell("orphan-sleeper", "sleep 600");
        if let Err(e) = session.start_command(background).await {
            eprintln!("start_command: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "{} {}",
            session.state().metadata["container_id"]
                .as_str()
                .unwrap_or_default(),
            snapshots.join(" ")
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// A session whose process died is removed by `sweep_orphans` (container and
/// snapshot); a live session, an unmarked container, and a container started
/// by hand from one of the dead session's snapshot images (which inherits its
/// labels) are left alone.
async fn orphans_removed_by_label() -> TestResult {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .env(ORPHAN_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running the orphan child: {e}"))?;
    let child_stdout = child
        .stdout
        .take()
        .ok_or("the orphan child has no stdout")?;
    let mut stdout = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(child_stdout),
        &mut stdout,
    )
    .await
    .map_err(|e| format!("reading the orphan child's ids: {e}"))?;
    // The embedding process crashes: SIGKILL, no close, no drop.
    child
        .kill()
        .await
        .map_err(|e| format!("killing the orphan child: {e}"))?;
    let mut ids = stdout.split_whitespace();
    let (Some(orphan), Some(orphan_image), Some(kept_image)) = (ids.next(), ids.next(), ids.next())
    else {
        return Err(format!("the orphan child printed {stdout:?}"));
    };
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    // An unmarked container claiming a dead owner must survive.
    let dead_owner = docker
        .inspect_container(orphan, None)
        .await
        .map_err(|e| e.to_string())?
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(LABEL_OWNER).cloned())
        .ok_or("the orphan has no owner label")?;
    let bystander_name = format!("runners-test-bystander-{}", uuid::Uuid::new_v4().simple());
    let bystander = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&bystander_name)
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["true".into()]),
                labels: Some(HashMap::from([(LABEL_OWNER.to_string(), dead_owner)])),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .id;
    // A user's container from a snapshot image of the dead session.
    let by_hand = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&format!(
                        "runners-test-from-snapshot-{}",
                        uuid::Uuid::new_v4().simple()
                    ))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(kept_image.to_string()),
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .id;
    let provider = DockerProvider::new().with_orphan_grace(Duration::ZERO);
    let live = provider
        .create_session(destination(
            serde_json::json!({ "image": image(), "network": "none" }),
        ))
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        let report = provider
            .remove_orphans()
            .await
            .map_err(fail("remove_orphans"))?;
        let removed = report.removed.join("; ");
        if !removed.contains(orphan) || !removed.contains(orphan_image) {
            return Err(format!(
                "sweep report {removed:?} misses container {orphan} or image {orphan_image}"
            ));
        }
        if docker.inspect_container(orphan, None).await.is_ok() {
            return Err(format!("the orphaned container {orphan} still exists"));
        }
        if docker.inspect_image(orphan_image).await.is_ok() {
            return Err(format!("the orphaned snapshot {orphan_image} still exists"));
        }
        docker
            .inspect_container(&bystander, None)
            .await
            .map_err(|e| format!("the unmarked container was removed: {e}"))?;
        docker
            .inspect_container(&by_hand, None)
            .await
            .map_err(|e| {
                format!("the container started by hand from a snapshot image was removed: {e}")
            })?;
        sh(live.as_ref(), "echo alive")
            .await
            .map_err(|e| format!("the live session after the sweep: {e}"))?;
        Ok(())
    }
    .await;
    for container in [&bystander, &by_hand] {
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(container, Some(remove)).await;
    }
    let remove = bollard::query_parameters::RemoveImageOptionsBuilder::new()
        .force(true)
        .build();
    let _ = docker.remove_image(kept_image, Some(remove), None).await;
    live.close().await.map_err(fail("close"))?;
    outcome
}

/// The non-root user of the hostile-input tests (nobody in the test image).
const NOBODY: &str = "65534:65534";

/// A session of `config` and the container it runs in.
async fn session_and_container(
    provider: &DockerProvider,
    config: serde_json::Value,
) -> Result<(std::sync::Arc<dyn RemoteRunnerSession>, String), String> {
    let session = provider
        .create_session(destination(config))
        .await
        .map_err(fail("create_session"))?;
    let container = session.state().metadata["container_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((session, container))
}

/// Runs `script` as root in `container` (test setup the session user may not do).
async fn as_root(docker: &Docker, container: &str, script: &str) -> TestResult {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
                user: Some("0".to_string()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("exec as root: {e}"))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| format!("exec as root: {e}"))?
    {
        while output.next().await.is_some() {}
    }
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("inspecting the root exec: {e}"))?
        .exit_code;
    if code != Some(0) {
        return Err(format!("as root: {script:?} exited {code:?}"));
    }
    Ok(())
}

/// A secret only root may read, written to `/etc/shadow` of `container`.
async fn plant_shadow(docker: &Docker, container: &str) -> Result<String, String> {
    let secret = format!("root:SECRET-{}:19000::::::", uuid::Uuid::new_v4().simple());
    as_root(
        docker,
        container,
        &format!("printf '%s\n' '{secret}' > /etc/shadow && chmod 600 /etc/shadow"),
    )
    .await?;
    Ok(secret)
}

/// With a non-root `user`, file operations resolve paths as that user when
/// they open them: a symlink to `/etc/shadow` is PermissionDenied, a name a
/// command keeps flipping between a regular file and such a symlink never
/// yields the secret, and `download_archive` of it is refused too.
async fn file_operations_act_as_the_session_user() -> TestResult {
    let provider = DockerProvider::new();
    let (session, container) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none", "user": NOBODY }),
    )
    .await?;
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let outcome = async {
        let secret = plant_shadow(&docker, &container).await?;
        sh(
            session.as_ref(),
            "echo public > public.txt && ln -s /etc/shadow link && ln public.txt flip",
        )
        .await?;
        let leaked = |contents: &[u8]| String::from_utf8_lossy(contents).contains("SECRET-");
        match session.read_file(RunnerFileReadRequest::new("link")).await {
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
            Ok(read) if leaked(&read.contents) => {
                return Err("read_file of a symlink to /etc/shadow returned its content".into());
            }
            other => {
                return Err(format!(
                    "read_file of a symlink to /etc/shadow: expected PermissionDenied, got {:?}",
                    other.map(|r| r.contents.len())
                ));
            }
        }
        for path in ["/etc/shadow", "link"] {
            if let Ok(tar) = session.download_archive(Path::new(path)).await
                && String::from_utf8_lossy(&tar).contains(&secret)
            {
                return Err(format!(
                    "download_archive {path} holds /etc/shadow's content"
                ));
            }
        }
        let flipper = RunnerCommandRequest::shell(
            "flipper",
            "while :; do ln -sf /etc/shadow l.tmp && mv -f l.tmp flip; \
             ln -f public.txt r.tmp && mv -f r.tmp flip; done",
        );
        session
            .start_command(flipper)
            .await
            .map_err(fail("start_command flipper"))?;
        let (mut public, mut refused, mut reads) = (0, 0, 0);
        while reads < 150 || public == 0 || refused == 0 {
            if reads >= 1500 {
                return Err(format!(
                    "the flipping name was never seen both ways in {reads} reads ({public} \
                     public, {refused} refused)"
                ));
            }
            reads += 1;
            match session.read_file(RunnerFileReadRequest::new("flip")).await {
                Ok(read) if leaked(&read.contents) => {
                    return Err(format!(
                        "read {reads} of the flipping name returned /etc/shadow's content"
                    ));
                }
                Ok(read) if read.contents == b"public\n" => public += 1,
                Ok(read) => {
                    return Err(format!("read {reads} returned {:?}", read.contents));
                }
                Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => refused += 1,
                // The agent (unix-local) may meet the symlink as its last
                // component while opening without following it: ELOOP.
                Err(e)
                    if e.kind() == RunnerErrorKind::InvalidRequest
                        && e.message().contains("too many levels of symbolic links") =>
                {
                    refused += 1
                }
                // Between the two renames the name may be missing.
                Err(e) if e.kind() == RunnerErrorKind::NotFound => {}
                Err(e) => return Err(format!("read {reads} of the flipping name: {e}")),
            }
        }
        session
            .cancel_command(&"flipper".to_string())
            .await
            .map_err(fail("cancel_command flipper"))?;
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// With a non-root `user`, an uploaded entry claiming uid 0 and mode 4755 is
/// a file of the session user without set-id bits, and `max_upload_bytes`
/// bounds what one upload unpacks.
async fn uploads_belong_to_the_session_user() -> TestResult {
    let provider = DockerProvider::new();
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({
            "image": image(), "network": "none", "user": NOBODY, "max_upload_bytes": 4096
        }),
    )
    .await?;
    let outcome = async {
        let tar = |name: &str, size: usize| -> Result<Vec<u8>, String> {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o4755);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(size as u64);
            builder
                .append_data(&mut header, name, vec![b'#'; size].as_slice())
                .map_err(|e| e.to_string())?;
            builder.into_inner().map_err(|e| e.to_string())
        };
        session
            .upload_archive(Path::new("up"), tar("suid", 16)?)
            .await
            .map_err(fail("upload_archive"))?;
        let owner = sh(session.as_ref(), "stat -c '%u:%g %a' up/suid").await?;
        if owner.trim() != format!("{NOBODY} 755") {
            return Err(format!(
                "uploaded uid 0 mode 4755 entry: expected {NOBODY} 755, got {owner:?}"
            ));
        }
        match session
            .upload_archive(Path::new("big"), tar("big", 8192)?)
            .await
        {
            Err(e) if e.kind() == RunnerErrorKind::InvalidRequest => Ok(()),
            other => Err(format!(
                "an upload of 8192 bytes with max_upload_bytes 4096: expected InvalidRequest, \
                 got {other:?}"
            )),
        }
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// Bytes that differ at every position of a 16 MiB file.
fn bulk_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect()
}

/// Files of 8 MiB and more take the archive API, staged by the agent: they
/// round-trip byte for byte, whole and as a window; the requested mode holds
/// and a replaced file keeps its own; a write through a symlink out of the
/// workspace is refused with nothing written outside; a read over the
/// maximum is refused before a byte moves; nothing stays staged.
async fn large_files_take_the_staged_archive_path() -> TestResult {
    let provider = DockerProvider::new();
    // Staging is the exec transport's (the host socket carries bulk bytes itself).
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none", "transport": "exec" }),
    )
    .await?;
    let outcome = async {
        let bytes = bulk_bytes(16 * 1024 * 1024 + 3);
        let mut request = RunnerFileWriteRequest::new("big/one.bin", bytes.clone());
        request.mode = Some(0o640);
        session.write_file(request).await.map_err(fail("write_file 16 MiB"))?;
        let read = session
            .read_file(RunnerFileReadRequest::new("big/one.bin"))
            .await
            .map_err(fail("read_file 16 MiB"))?;
        if read.contents != bytes || read.size != bytes.len() as u64 {
            return Err(format!(
                "16 MiB round trip: {} bytes back (size {}), equal: {}",
                read.contents.len(),
                read.size,
                read.contents == bytes
            ));
        }
        let mode = sh(session.as_ref(), "stat -c '%u:%g %a' big/one.bin").await?;
        if mode.trim() != "0:0 640" {
            return Err(format!("the staged write's owner and mode: {mode:?}"));
        }
        let mut window = RunnerFileReadRequest::new("big/one.bin");
        window.offset = Some(1024 * 1024);
        window.limit = Some(9 * 1024 * 1024);
        let part = session.read_file(window).await.map_err(fail("read_file window"))?;
        if part.contents != bytes[1024 * 1024..10 * 1024 * 1024] || part.size != bytes.len() as u64 {
            return Err(format!(
                "a 9 MiB window: {} bytes, size {}",
                part.contents.len(),
                part.size
            ));
        }
        sh(session.as_ref(), "printf x > big/kept && chmod 600 big/kept").await?;
        session
            .write_file(RunnerFileWriteRequest::new("big/kept", bytes.clone()))
            .await
            .map_err(fail("replacing a 0600 file"))?;
        let kept = sh(session.as_ref(), "stat -c '%a %s' big/kept").await?;
        if kept.trim() != format!("600 {}", bytes.len()) {
            return Err(format!("a replaced 0600 file: {kept:?}"));
        }
        sh(session.as_ref(), "ln -s /etc out").await?;
        match session
            .write_file(RunnerFileWriteRequest::new("out/bulk", bytes.clone()))
            .await
        {
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
            other => {
                return Err(format!(
                    "a 16 MiB write through a symlink to /etc: expected PermissionDenied, got {other:?}"
                ));
            }
        }
        let outside = sh(session.as_ref(), "ls /etc/bulk 2>/dev/null || echo absent").await?;
        if outside.trim() != "absent" {
            return Err(format!("the refused write left /etc/bulk: {outside:?}"));
        }
        sh(session.as_ref(), "dd if=/dev/zero of=sparse bs=1 count=0 seek=300M 2>/dev/null").await?;
        match session.read_file(RunnerFileReadRequest::new("sparse")).await {
            Err(e) if e.kind() == RunnerErrorKind::InvalidRequest => {}
            other => {
                return Err(format!(
                    "a 300 MiB read without limit: expected InvalidRequest, got {:?}",
                    other.map(|r| r.contents.len())
                ));
            }
        }
        let session_id = session.state().session_id;
        let left = sh(
            session.as_ref(),
            &format!("ls -A /.runner/run/{session_id}/stage"),
        )
        .await?;
        if !left.trim().is_empty() {
            return Err(format!("staged transfers left behind: {left:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// How many processes in `session`'s container run `sleep <seconds>`.
async fn sleepers(session: &dyn RemoteRunnerSession, seconds: u64) -> Result<usize, String> {
    let out = sh(
        session,
        &format!("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -cx {seconds}; :"),
    )
    .await?;
    out.trim()
        .parse()
        .map_err(|e| format!("counting sleepers: {out:?}: {e}"))
}

/// Waits until `sleep <seconds>` runs (`present`) or is gone.
async fn wait_sleepers(
    session: &dyn RemoteRunnerSession,
    seconds: u64,
    present: bool,
    after: &str,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = sleepers(session, seconds).await?;
        if (count > 0) == present {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{after}: {count} `sleep {seconds}` process(es) after 30 s, expected {}",
                if present { "some" } else { "none" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A unique number of seconds to sleep, so the test can count its sleeper.
fn unique_seconds() -> u64 {
    7_000_000
        + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1000
        + u64::from(std::process::id() % 1000)
}

/// `cancel_command` and `timeout_ms` end a child that left the process group
/// with `setsid`, also when the shell that started it exits at once (a
/// subshell: the child's parent is then gone, while the command runs on).
async fn setsid_children_end_with_their_command() -> TestResult {
    let provider = DockerProvider::new();
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none", "user": NOBODY }),
    )
    .await?;
    let outcome = async {
        for (name, template) in [
            ("stays", "setsid sh -c 'sleep SECS' & wait"),
            ("exits", "( setsid sh -c 'sleep SECS' & ); sleep 600"),
        ] {
            let seconds = unique_seconds();
            let script = template.replace("SECS", &seconds.to_string());
            let id = format!("cancel-{name}");
            session
                .start_command(RunnerCommandRequest::shell(id.clone(), script))
                .await
                .map_err(fail("start_command"))?;
            wait_sleepers(session.as_ref(), seconds, true, &format!("{id} started")).await?;
            let cancelled = session
                .cancel_command(&id)
                .await
                .map_err(fail("cancel_command"))?;
            if !cancelled {
                return Err(format!("cancel_command {id}: the command was not running"));
            }
            wait_sleepers(
                session.as_ref(),
                seconds,
                false,
                &format!("cancel_command {id}"),
            )
            .await?;

            let seconds = unique_seconds();
            let script = template.replace("SECS", &seconds.to_string());
            let request = RunnerCommandRequest::shell(format!("timeout-{name}"), script)
                .with_timeout_ms(3_000);
            let result = session
                .run_command(request)
                .await
                .map_err(fail("run_command with timeout"))?;
            if !result.timed_out {
                return Err(format!("timeout-{name}: not timed out: {result:?}"));
            }
            wait_sleepers(session.as_ref(), seconds, false, &format!("timeout-{name}")).await?;
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// `id -u; id -g; id -G` and HOME, USER and LOGNAME of a command run as
/// `user` (with `env`).
async fn identity_as(
    session: &dyn RemoteRunnerSession,
    user: &str,
    env: &[(&str, &str)],
) -> Result<String, runner_api::RunnerError> {
    let mut request = RunnerCommandRequest::shell(
        format!("as-{}", uuid::Uuid::new_v4().simple()),
        "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"",
    )
    .with_timeout_ms(60_000);
    request.user = Some(user.to_string());
    request.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let result = session.run_command(request).await?;
    Ok(format!("{}{}", result.stdout, result.stderr))
}

/// A root session runs a command as another user with that user's uid and
/// primary gid and no supplementary groups (though /etc/group lists it in
/// one), and its HOME, USER and LOGNAME instead of the destination's (a
/// variable of the request still wins); a uid without an /etc/passwd entry
/// is NotFound naming it, a `user:group` refused naming it, and an unknown
/// user in the destination's config NotFound naming it at create_session.
async fn commands_run_as_another_user() -> TestResult {
    let provider = DockerProvider::new();
    let session = provider
        .create_session(destination(serde_json::json!({
            "image": image(), "network": "none", "env": { "HOME": "/workspace" }
        })))
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        sh(session.as_ref(), "echo staff:x:50:nobody >> /etc/group").await?;
        let nobody = identity_as(session.as_ref(), "nobody", &[])
            .await
            .map_err(fail("run_command as nobody"))?;
        if nobody != "65534\n65534\n65534\n/nonexistent nobody nobody\n" {
            return Err(format!("as nobody: {nobody:?}"));
        }
        let by_uid = identity_as(session.as_ref(), "65534", &[("HOME", "/tmp")])
            .await
            .map_err(fail("run_command as 65534"))?;
        if by_uid != "65534\n65534\n65534\n/tmp nobody nobody\n" {
            return Err(format!("as 65534 with HOME=/tmp: {by_uid:?}"));
        }
        let own = identity_as(session.as_ref(), "root", &[])
            .await
            .map_err(fail("run_command as root"))?;
        // Its HOME, USER and LOGNAME are the agent's (unix-local's) choice.
        if !own.starts_with("0\n0\n") {
            return Err(format!("as the session's own user root: {own:?}"));
        }
        // `nobody:root` is no user name: the agent (unix-local) finds no
        // such user; either refusal names it.
        for (user, kinds) in [
            ("4242", &[RunnerErrorKind::NotFound][..]),
            (
                "nobody:root",
                &[RunnerErrorKind::InvalidRequest, RunnerErrorKind::NotFound][..],
            ),
        ] {
            match identity_as(session.as_ref(), user, &[]).await {
                Err(e) if kinds.contains(&e.kind()) && e.message().contains(user) => {}
                other => {
                    return Err(format!(
                        "run_command as {user:?}: expected {kinds:?} naming it, got {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome?;
    let ghost = "runner-no-such-user-5d1c";
    match provider
        .create_session(destination(serde_json::json!({
            "image": image(), "network": "none", "user": ghost
        })))
        .await
    {
        Err(e) if e.kind() == RunnerErrorKind::NotFound && e.message().contains(ghost) => Ok(()),
        Err(e) => Err(format!(
            "create_session as {ghost:?}: expected NotFound naming it, got {e}"
        )),
        Ok(session) => {
            let _ = session.close().await;
            Err(format!(
                "create_session as the unknown user {ghost:?} succeeded"
            ))
        }
    }
}

/// Cancelling a command a root session runs as nobody ends it and a child it
/// left with `setsid`; the signals are sent as nobody, so a process group id
/// the command writes into its own group file (here a root command's) gets
/// no root process signalled.
async fn signals_reach_commands_of_another_user() -> TestResult {
    let provider = DockerProvider::new();
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let outcome = async {
        let victim = unique_seconds();
        session
            .start_command(RunnerCommandRequest::shell(
                "victim",
                format!("echo $$ > /tmp/victim.pgid; exec sleep {victim}"),
            ))
            .await
            .map_err(fail("start_command victim"))?;
        wait_sleepers(session.as_ref(), victim, true, "victim started").await?;
        let escaped = victim + 1;
        let mut forger = RunnerCommandRequest::shell(
            "forger",
            format!(
                "for f in /tmp/.runner/*.pgid; do cat /tmp/victim.pgid > \"$f\"; done 2>/dev/null; \
                 setsid sh -c 'sleep {escaped}' & wait"
            ),
        );
        forger.user = Some("nobody".to_string());
        session
            .start_command(forger)
            .await
            .map_err(fail("start_command forger as nobody"))?;
        wait_sleepers(session.as_ref(), escaped, true, "forger started").await?;
        let owner = sh(
            session.as_ref(),
            &format!(
                "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline | grep -qx 'sleep {escaped} ' \
                 && stat -c %u $p; done; :"
            ),
        )
        .await?;
        if owner.trim() != "65534" {
            return Err(format!("the forger's child runs as {owner:?}, not 65534"));
        }
        let cancelled = session
            .cancel_command(&"forger".to_string())
            .await
            .map_err(fail("cancel_command forger"))?;
        if !cancelled {
            return Err("cancel_command forger: the command was not running".into());
        }
        wait_sleepers(session.as_ref(), escaped, false, "cancel_command forger").await?;
        if sleepers(session.as_ref(), victim).await? == 0 {
            return Err("the root command whose group id the forger wrote was signalled".into());
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// `contents` written at `offset` of `path`, with `mode`.
async fn write_at(
    session: &dyn RemoteRunnerSession,
    path: &str,
    offset: u64,
    mode: Option<u32>,
) -> Result<(), runner_api::RunnerError> {
    let mut request = RunnerFileWriteRequest::new(path, b"abc".to_vec());
    request.offset = Some(offset);
    request.mode = mode;
    session.write_file(request).await
}

/// Writes at an offset as a non-root user: a FIFO is InvalidRequest (and
/// does not block), a 0444 file and a new file in a 0555 directory are
/// PermissionDenied and unchanged, a new file gets its mode masked (644 by
/// default), and an offset past any possible size (of a writable file) is InvalidRequest naming
/// it. A root session's whole-file replace keeps the file's owner and mode.
async fn writes_obey_permissions() -> TestResult {
    let provider = DockerProvider::new();
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none", "user": NOBODY }),
    )
    .await?;
    let outcome = async {
        sh(
            session.as_ref(),
            "mkfifo pipe && echo data > ro && chmod 444 ro && mkdir sealed && chmod 555 sealed \
             && echo data > rw",
        )
        .await?;
        let refusals = [
            ("pipe", 0, RunnerErrorKind::InvalidRequest, "pipe"),
            ("ro", 0, RunnerErrorKind::PermissionDenied, "ro"),
            ("sealed/new", 0, RunnerErrorKind::PermissionDenied, "sealed"),
            (
                "rw",
                u64::MAX,
                RunnerErrorKind::InvalidRequest,
                "18446744073709551615",
            ),
        ];
        for (path, offset, kind, named) in refusals {
            let result = tokio::time::timeout(
                Duration::from_secs(60),
                write_at(session.as_ref(), path, offset, None),
            )
            .await
            .map_err(|_| format!("write_file {path} at offset {offset} still blocks after 60 s"))?;
            match result {
                Err(e) if e.kind() == kind && e.message().contains(named) => {}
                other => {
                    return Err(format!(
                        "write_file {path} at offset {offset}: expected {kind:?} naming \
                         {named:?}, got {other:?}"
                    ));
                }
            }
        }
        write_at(session.as_ref(), "new/plain", 0, None)
            .await
            .map_err(fail("write_file new/plain at offset 0"))?;
        write_at(session.as_ref(), "new/setid", 0, Some(0o4755))
            .await
            .map_err(fail("write_file new/setid at offset 0"))?;
        let after = sh(
            session.as_ref(),
            "cat ro rw; ls -A sealed; stat -c '%a %s %n' new/plain new/setid",
        )
        .await?;
        if after != "data\ndata\n644 3 new/plain\n755 3 new/setid\n" {
            return Err(format!("after the writes at offsets: {after:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome?;

    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let outcome = async {
        sh(
            session.as_ref(),
            "echo old > theirs && chown 65534:65534 theirs && chmod 640 theirs",
        )
        .await?;
        session
            .write_file(RunnerFileWriteRequest::new("theirs", b"new\n".to_vec()))
            .await
            .map_err(fail("write_file theirs as root"))?;
        let after = sh(session.as_ref(), "stat -c '%u:%g %a' theirs; cat theirs").await?;
        if after != format!("{NOBODY} 640\nnew\n") {
            return Err(format!("a file of 65534 root replaced: {after:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// `chunks` chunks of 64 KiB, then `end`: the end of the stream, an error,
/// or a body that never ends.
fn body(chunks: usize, end: BodyEnd) -> RunnerByteStream {
    use futures_util::stream;
    let data = stream::iter((0..chunks).map(|i| Ok(Bytes::from(vec![b'a' + i as u8; 64 << 10]))));
    match end {
        BodyEnd::Done => Box::pin(data),
        BodyEnd::Fails => Box::pin(data.chain(stream::iter([Err(
            runner_api::RunnerError::provider("the body broke off"),
        )]))),
        BodyEnd::Hangs => Box::pin(data.chain(stream::pending())),
    }
}

/// How a test body ends.
#[derive(Clone, Copy)]
enum BodyEnd {
    Done,
    Fails,
    Hangs,
}

/// Names in the workspace directory `dir` and the state directory that a
/// write may have left behind (temp and staging files).
async fn leftovers(session: &dyn RemoteRunnerSession, dir: &str) -> Result<String, String> {
    sh(
        session,
        &format!("ls -A {dir}; ls -A /tmp/.runner | grep -v '\\.pgid$'; true"),
    )
    .await
}

/// A write whose body fails part way fails with the body's error and leaves
/// the target as it was: a new file is not created, an existing one keeps
/// its contents (an atomic replace and a write at an offset alike), and no
/// temp or staging file is left in its directory or the state directory. A
/// write dropped half way (its body never ends) leaves no temp file behind
/// either. A body that ends well writes every chunk.
async fn failing_bodies_leave_no_file() -> TestResult {
    let provider = DockerProvider::new();
    let (session, _) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let outcome = async {
        let s = session.as_ref();
        sh(s, "mkdir -p d && echo old > d/kept").await?;
        let mut at_offset = RunnerFileWriteRequest::new("d/kept", b"new".to_vec());
        at_offset.offset = Some(0);
        let cases = [
            RunnerFileWriteRequest::new("d/new", b"head".to_vec()),
            RunnerFileWriteRequest::new("d/kept", Vec::new()),
            at_offset,
        ];
        for request in cases {
            let what = format!(
                "write_file_stream {} at {:?}",
                request.path.display(),
                request.offset
            );
            match s.write_file_stream(request, body(4, BodyEnd::Fails)).await {
                Err(e) if e.message().contains("the body broke off") => {}
                other => return Err(format!("{what}: expected the body's error, got {other:?}")),
            }
            let left = leftovers(s, "d").await?;
            let kept = sh(s, "cat d/kept").await?;
            if left != "kept\n" || kept != "old\n" {
                return Err(format!(
                    "after {what}: d and the state dir hold {left:?}, d/kept {kept:?}"
                ));
            }
        }

        let dropped = tokio::time::timeout(
            Duration::from_secs(3),
            s.write_file_stream(
                RunnerFileWriteRequest::new("d/dropped", Vec::new()),
                body(2, BodyEnd::Hangs),
            ),
        )
        .await;
        if dropped.is_ok() {
            return Err(format!(
                "a write whose body never ends returned {dropped:?}"
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = leftovers(s, "d").await?;
            if left == "kept\n" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("30 s after a dropped write, d holds {left:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        s.write_file_stream(
            RunnerFileWriteRequest::new("d/whole", b"x".to_vec()),
            body(3, BodyEnd::Done),
        )
        .await
        .map_err(fail("write_file_stream d/whole"))?;
        let whole = sh(s, "wc -c < d/whole; head -c 2 d/whole; tail -c 1 d/whole").await?;
        if whole.split_whitespace().collect::<Vec<_>>() != ["196609", "xac"] {
            return Err(format!("d/whole: {whole:?}"));
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// While paused, a file operation started while a read stream holds the
/// container thawed runs at once (it shares the thaw, it does not wait for
/// the stream), the stream then reads to its end, and the container is
/// paused again once both ended; `resume` continues it.
async fn paused_operations_share_the_thaw() -> TestResult {
    let provider = DockerProvider::new();
    let (session, container) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let outcome = async {
        let s = session.as_ref();
        sh(s, "head -c 3000000 /dev/zero > big").await?;
        s.pause().await.map_err(fail("pause"))?;
        let mut file = s
            .read_file_stream(RunnerFileReadRequest {
                path: "big".into(),
                offset: None,
                limit: None,
            })
            .await
            .map_err(fail("read_file_stream while paused"))?;
        let first = runner_api::next_chunk(&mut file.bytes).await;
        if !matches!(first, Some(Ok(_))) {
            return Err(format!("the first chunk while paused: {first:?}"));
        }
        tokio::time::timeout(Duration::from_secs(60), async {
            s.write_file(RunnerFileWriteRequest::new("beside", b"x".to_vec()))
                .await
                .map_err(fail("write_file while a stream is open"))?;
            s.stat(Path::new("beside")).await.map_err(fail("stat"))
        })
        .await
        .map_err(|_| "a file operation waited for the open stream for 60 s".to_string())??;
        let mut read = first.and_then(|c| c.ok()).map_or(0, |c| c.len());
        while let Some(chunk) = runner_api::next_chunk(&mut file.bytes).await {
            read += chunk.map_err(fail("read the stream"))?.len();
        }
        drop(file);
        if read != 3_000_000 {
            return Err(format!("the stream gave {read} of 3000000 bytes"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = docker
                .inspect_container(&container, None)
                .await
                .map_err(|e| e.to_string())?
                .state
                .unwrap_or_default();
            if state.paused == Some(true) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the container is not paused again 30 s after the operations".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.resume().await.map_err(fail("resume"))?;
        sh(s, "cat beside").await.map(|_| ())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// The id and name of a container that is not a session's.
async fn foreign_container(docker: &Docker) -> Result<String, String> {
    Ok(docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&format!(
                        "runners-test-foreign-{}",
                        uuid::Uuid::new_v4().simple()
                    ))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["sleep".into(), "600".into()]),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .id)
}

/// `rejoin_session` refuses a state naming a container that is not this
/// library's container of that session (a foreign one, another session's),
/// naming it, and leaves it alone.
async fn rejoin_checks_the_container() -> TestResult {
    let provider = DockerProvider::new();
    let config = serde_json::json!({ "image": image(), "network": "none" });
    let (session, container) = session_and_container(&provider, config).await?;
    let (other, other_container) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let foreign = foreign_container(&docker).await?;
    let outcome = async {
        for (what, named) in [
            ("a foreign container", &foreign),
            ("another session's", &other_container),
        ] {
            let mut state = session.state();
            state.metadata["container_id"] = named.as_str().into();
            match provider.rejoin_session(state).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        RunnerErrorKind::NotFound | RunnerErrorKind::PermissionDenied
                    ) && e.message().contains(named.as_str()) => {}
                Err(e) => return Err(format!("rejoin_session with {what}: {e}")),
                Ok(_) => return Err(format!("rejoin_session with {what} succeeded")),
            }
            docker
                .inspect_container(named, None)
                .await
                .map_err(|e| format!("{what} is gone after the refused rejoin: {e}"))?;
        }
        let rejoined = provider
            .rejoin_session(session.state())
            .await
            .map_err(fail("rejoin_session of the session's own state"))?;
        let same = rejoined.state().metadata["container_id"] == container.as_str();
        rejoined
            .close()
            .await
            .map_err(fail("close the rejoined session"))?;
        if !same {
            return Err("the rejoined session has another container".into());
        }
        Ok(())
    }
    .await;
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(&foreign, Some(remove)).await;
    other.close().await.map_err(fail("close"))?;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// `resume_session` and `rejoin_session` take user, daemon, bind mounts and
/// read-only paths from the destination, never from the state: a state
/// claiming user root, another daemon, a bind of the host's `/` and no
/// read-only paths changes nothing; a provider that does not know the
/// destination refuses until it is given.
async fn resume_takes_settings_from_the_destination() -> TestResult {
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(host.path().join("notes.txt"), b"notes").map_err(|e| e.to_string())?;
    let mut dest = destination(serde_json::json!({
        "image": image(), "network": "none", "user": NOBODY
    }));
    dest.default_manifest.entries.push(RunnerManifestEntry {
        source: host.path().join("notes.txt"),
        target: PathBuf::from("notes.txt"),
        writable: false,
    });
    let provider = DockerProvider::new();
    let session = provider
        .create_session(dest.clone())
        .await
        .map_err(fail("create_session"))?;
    let mut forks = Vec::new();
    let mut snapshot_image = None;
    let outcome = async {
        let snapshot = session.snapshot().await.map_err(fail("snapshot"))?;
        snapshot_image = Some(snapshot.snapshot_id.clone());
        if snapshot.metadata.to_string().contains("\"user\"") {
            return Err(format!(
                "the snapshot reference carries config: {}",
                snapshot.metadata
            ));
        }
        let mut state = session.state();
        let container = state.metadata["container_id"].clone();
        state.metadata = serde_json::json!({
            "container_id": container,
            "config": { "image": image(), "user": "0", "docker_host": "tcp://127.0.0.1:9" },
            "binds": ["/:/hostroot"],
            "read_only": [],
        });
        let rejoined = provider
            .rejoin_session(state.clone())
            .await
            .map_err(fail("rejoin_session with a tampered state"))?;
        forks.push(rejoined.clone());
        state.snapshot = Some(snapshot);
        let forked = provider
            .resume_session(state.clone())
            .await
            .map_err(fail("resume_session with a tampered state"))?;
        forks.push(forked.clone());
        for (what, s) in [("rejoined", &rejoined), ("forked", &forked)] {
            let out = sh(s.as_ref(), "id -u; test -e /hostroot && echo bound; :").await?;
            if out != "65534\n" {
                return Err(format!(
                    "the {what} session: `id -u` and /hostroot gave {out:?}"
                ));
            }
            match s
                .write_file(RunnerFileWriteRequest::new("notes.txt", b"x".to_vec()))
                .await
            {
                Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
                other => {
                    return Err(format!(
                        "the {what} session wrote the read-only entry: {other:?}"
                    ));
                }
            }
        }
        let stranger = DockerProvider::new();
        match stranger.rejoin_session(session.state()).await {
            Err(e)
                if e.kind() == RunnerErrorKind::NotFound
                    && e.message().contains("docker-tests") => {}
            other => {
                return Err(format!(
                    "rejoin_session by a provider that does not know the destination: {:?}",
                    other.map(|s| s.state())
                ));
            }
        }
        let stranger = stranger
            .with_destination(&dest)
            .map_err(fail("with_destination"))?;
        let rejoined = stranger
            .rejoin_session(session.state())
            .await
            .map_err(fail("rejoin_session once the destination is given"))?;
        forks.push(rejoined);
        // The trait's form, through the stack: trust_destination reaches
        // the provider (and the stack's own record).
        let stacked = runner_stack::stacked(DockerProvider::new());
        stacked.trust_destination(&dest);
        let rejoined = stacked
            .rejoin_session(session.state())
            .await
            .map_err(fail("rejoin_session once the stack trusts the destination"))?;
        forks.push(rejoined);
        Ok(())
    }
    .await;
    for fork in forks {
        let _ = fork.close().await;
    }
    if let (Some(image), Ok(docker)) = (snapshot_image, Docker::connect_with_local_defaults()) {
        let remove = bollard::query_parameters::RemoveImageOptionsBuilder::new()
            .force(true)
            .build();
        let _ = docker.remove_image(&image, Some(remove), None).await;
    }
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// A dockerd of the test's own, on its own socket, directories and bridge.
///
/// Its bridge is a fresh interface made for it: a daemon started with
/// `--bridge=none` deletes the host's `docker0`, which the shared daemon needs.
struct OwnDaemon {
    dir: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl OwnDaemon {
    fn socket(&self) -> String {
        format!("unix://{}", self.dir.join("d.sock").display())
    }

    fn create_bridge(&self, octet: u8) -> Result<(), String> {
        let address = format!("10.213.{octet}.1/24");
        for args in [
            vec!["link", "add", self.bridge.as_str(), "type", "bridge"],
            vec!["addr", "add", address.as_str(), "dev", self.bridge.as_str()],
            vec!["link", "set", self.bridge.as_str(), "up"],
        ] {
            let status = Command::new("ip").args(&args).status().map_err(|e| {
                format!(
                    "ip {}: {e} (the test needs iproute2 and root)",
                    args.join(" ")
                )
            })?;
            if !status.success() {
                return Err(format!("ip {} failed ({status})", args.join(" ")));
            }
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.socket())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg(format!("--bridge={}", self.bridge))
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting a second dockerd: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) -> Result<Docker, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(docker) = Docker::connect_with_host(&self.socket())
                && docker.ping().await.is_ok()
            {
                return Ok(docker);
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                return Err(format!(
                    "the second dockerd did not answer within 60 s: {log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM, then wait for the daemon to exit (it stops its containers).
    async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the second dockerd did not stop within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", self.bridge.as_str()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A rootfs tar of the host's busybox with one link per applet.
fn busybox_rootfs() -> Result<Vec<u8>, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or("busybox is not installed on the host (package busybox-static)")?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = |name: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        builder.append_data(&mut header, name, std::io::empty())
    };
    for (name, mode) in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)] {
        dir(name, mode).map_err(|e| e.to_string())?;
    }
    let binary = std::fs::read(busybox).map_err(|e| e.to_string())?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    builder
        .append_data(&mut header, "bin/busybox", binary.as_slice())
        .map_err(|e| e.to_string())?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .map_err(|e| e.to_string())?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(passwd.len() as u64);
    builder
        .append_data(&mut header, "etc/passwd", &passwd[..])
        .map_err(|e| e.to_string())?;
    builder.into_inner().map_err(|e| e.to_string())
}

/// A daemon that stops in the middle of a session gives `Unavailable` with a
/// hint; once it is back, a new session works.
async fn daemon_stopped_mid_session() -> TestResult {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let dir = PathBuf::from(format!("/tmp/rdk-{}", &unique[..8]));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut daemon = OwnDaemon {
        dir,
        bridge: format!("rdk{}", &unique[..8]),
        child: None,
    };
    daemon.create_bridge(uuid::Uuid::new_v4().as_bytes()[0])?;
    daemon.start()?;
    let docker = daemon.wait_ready().await?;
    let rootfs = busybox_rootfs()?;
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo("runners-test-busybox")
        .tag("latest")
        .changes(vec!["ENV PATH=/bin".to_string()])
        .build();
    let mut import =
        docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
    while let Some(step) = import.next().await {
        step.map_err(|e| format!("importing the busybox image: {e}"))?;
    }
    let config = serde_json::json!({
        "image": "runners-test-busybox:latest",
        "network": "none",
        "docker_host": daemon.socket(),
    });
    let provider = DockerProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(fail("create_session on the second daemon"))?;
    let before = sh(session.as_ref(), "echo before").await?;
    if before != "before\n" {
        return Err(format!("before the stop: {before:?}"));
    }
    daemon.stop().await?;
    match session
        .run_command(RunnerCommandRequest::shell("while-down", "echo x"))
        .await
    {
        Err(e) if e.kind() == RunnerErrorKind::Unavailable && e.message().contains("dockerd") => {}
        other => {
            return Err(format!(
                "run_command with the daemon stopped: expected Unavailable with a hint, got {other:?}"
            ));
        }
    }
    // Through the connection already made, and through a fresh provider.
    for fresh in [false, true] {
        let provider = if fresh {
            DockerProvider::new()
        } else {
            provider.clone()
        };
        match provider.create_session(destination(config.clone())).await {
            Err(e) if e.kind() == RunnerErrorKind::Unavailable => {}
            Err(e) => return Err(format!("create_session with the daemon stopped: {e}")),
            Ok(_) => return Err("create_session with the daemon stopped succeeded".into()),
        }
    }
    daemon.start()?;
    daemon.wait_ready().await?;
    let again = provider
        .create_session(destination(config))
        .await
        .map_err(fail("create_session after the daemon returned"))?;
    let after = sh(again.as_ref(), "echo after").await?;
    again.close().await.map_err(fail("close the new session"))?;
    if after != "after\n" {
        return Err(format!("after the restart: {after:?}"));
    }
    // The old session's container was stopped with the daemon; closing removes it.
    session
        .close()
        .await
        .map_err(fail("close the old session"))?;
    daemon.stop().await
}

/// The stdout of `chunks`, in order.
fn stdout_of(chunks: &[runner_api::RunnerOutputChunk]) -> String {
    chunks
        .iter()
        .filter(|c| c.stream == runner_api::RunnerOutputStream::Stdout)
        .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
        .collect()
}

/// Exit codes 130 and 255 are exit codes, not signals; a death by SIGTERM or
/// SIGKILL reports the signal and no exit code.
async fn exit_codes_and_signals() -> TestResult {
    let provider = DockerProvider::new();
    let session = provider
        .create_session(destination(
            serde_json::json!({ "image": image(), "network": "none" }),
        ))
        .await
        .map_err(fail("create_session"))?;
    let outcome = async {
        let cases = [
            ("exit 130", Some(130), None),
            ("exit 255", Some(255), None),
            ("kill -TERM $$", None, Some(15)),
            ("kill -KILL $$", None, Some(9)),
        ];
        for (script, exit_code, signal) in cases {
            let result = session
                .run_command(RunnerCommandRequest::shell(
                    format!("exit-{}", uuid::Uuid::new_v4().simple()),
                    script,
                ))
                .await
                .map_err(fail("run_command"))?;
            if result.exit_code != exit_code || result.signal != signal {
                return Err(format!(
                    "sh -c {script:?}: expected exit {exit_code:?} signal {signal:?}, got exit \
                     {:?} signal {:?}",
                    result.exit_code, result.signal
                ));
            }
        }
        Ok(())
    }
    .await;
    session.close().await.map_err(fail("close"))?;
    outcome
}

/// A session detached with a command running is rejoined through the
/// agent, which kept the command: the new handle lists it and reads its
/// output from the start, and closing it ends the command and the container.
async fn rejoin_sees_the_running_command() -> TestResult {
    let provider = DockerProvider::new();
    let (session, container) = session_and_container(
        &provider,
        serde_json::json!({ "image": image(), "network": "none" }),
    )
    .await?;
    let id = "kept".to_string();
    let script = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done";
    if let Err(e) = session
        .start_command(RunnerCommandRequest::shell(&id, script))
        .await
    {
        let _ = session.close().await;
        return Err(format!("start_command: {e}"));
    }
    let state = session.detach().await.map_err(fail("detach"))?;
    drop(session);
    let rejoined = provider
        .rejoin_session(state)
        .await
        .map_err(fail("rejoin_session"))?;
    let outcome = async {
        let s = rejoined.as_ref();
        let listed = s.list_commands().await.map_err(fail("list_commands"))?;
        if !listed
            .iter()
            .any(|p| p.command_id == id && p.state == runner_api::RunnerProcessState::Running)
        {
            return Err(format!("the rejoined handle lists {listed:?}"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = s
                .command_output(&id, 0)
                .await
                .map_err(fail("command_output"))?;
            let text = stdout_of(&output.chunks);
            if text.starts_with("tick-0\n") && text.contains("tick-5\n") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the kept command's output after rejoin: {text:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
    .await;
    rejoined.close().await.map_err(fail("close"))?;
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    if docker.inspect_container(&container, None).await.is_ok() {
        return Err(format!("container {container} is still there after close"));
    }
    outcome
}

/// The containers (running or not) of destination `id`.
async fn containers_of(docker: &Docker, id: &str) -> Result<usize, String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("io.runners.destination={id}")],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .map(|list| list.len())
        .map_err(|e| e.to_string())
}

/// An image of an architecture no agent binary is for is refused up front,
/// by `validate_destination` and by `create_session`, with `Unsupported`
/// naming the platform and the command that builds a binary for it; no
/// container is created.
async fn another_platform_is_unsupported() -> TestResult {
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let image = format!("runners-test-arm64:{}", uuid::Uuid::new_v4().simple());
    // `docker import --platform` keeps the daemon's architecture: load an
    // image archive whose config says arm64 instead.
    let load = |builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data)
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    layer
        .append_data(&mut dir, "bin", std::io::empty())
        .map_err(|e| e.to_string())?;
    let layer = layer.into_inner().map_err(|e| e.to_string())?;
    let sha = |data: &[u8]| hex::encode(sha2::Sha256::digest(data));
    let layer_sha = sha(&layer);
    let config = serde_json::json!({
        "architecture": "arm64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_sha}")] },
    })
    .to_string();
    let config_name = format!("{}.json", sha(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [image], "Layers": [format!("{layer_sha}/layer.tar")],
    }])
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    load(&mut archive, &format!("{layer_sha}/layer.tar"), &layer).map_err(|e| e.to_string())?;
    load(&mut archive, &config_name, config.as_bytes()).map_err(|e| e.to_string())?;
    load(&mut archive, "manifest.json", manifest.as_bytes()).map_err(|e| e.to_string())?;
    let archive = archive.into_inner().map_err(|e| e.to_string())?;
    let mut loading = docker.import_image(
        bollard::query_parameters::ImportImageOptionsBuilder::new().build(),
        bollard::body_full(archive.into()),
        None,
    );
    while let Some(step) = loading.next().await {
        step.map_err(|e| format!("loading {image}: {e}"))?;
    }
    let outcome = async {
        let mut dest = destination(serde_json::json!({ "image": image, "network": "none" }));
        dest.id = format!("docker-arm64-{}", uuid::Uuid::new_v4().simple());
        let provider = DockerProvider::new();
        let check = |what: &str, result: Result<(), runner_api::RunnerError>| match result {
            Err(e)
                if e.kind() == RunnerErrorKind::Unsupported
                    && e.message().contains("linux/aarch64")
                    && e.message().contains("--target aarch64-unknown-linux-gnu") =>
            {
                Ok(())
            }
            other => Err(format!(
                "{what} of an arm64 image: expected Unsupported naming linux/aarch64 and the \
                 build command, got {other:?}"
            )),
        };
        check(
            "validate_destination",
            provider.validate_destination(&dest).await,
        )?;
        let created = provider.create_session(dest.clone()).await;
        if let Ok(session) = &created {
            let _ = session.close().await;
        }
        check("create_session", created.map(|_| ()))?;
        match containers_of(&docker, &dest.id).await? {
            0 => Ok(()),
            n => Err(format!("{n} containers were created for the arm64 image")),
        }
    }
    .await;
    let remove = bollard::query_parameters::RemoveImageOptionsBuilder::new()
        .force(true)
        .build();
    let _ = docker.remove_image(&image, Some(remove), None).await;
    outcome
}

/// When the agent cannot open its session (here: a `provider_native` mount
/// whose host path is a file, which the agent refuses as not a directory),
/// `create_session` returns the agent's error with its kind, and the
/// container is removed.
async fn agent_failure_removes_the_container() -> TestResult {
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = host.path().join("not-a-dir");
    std::fs::write(&file, b"x").map_err(|e| e.to_string())?;
    let mut dest = destination(serde_json::json!({ "image": image(), "network": "none" }));
    dest.id = format!("docker-agent-failure-{}", uuid::Uuid::new_v4().simple());
    dest.default_manifest.mounts = vec![RunnerMount {
        name: "file".into(),
        path: PathBuf::from("file"),
        read_only: false,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::ProviderNative,
            uri: file.display().to_string(),
            credentials: None,
        },
    }];
    let provider = DockerProvider::new();
    match provider.create_session(dest.clone()).await {
        Err(e)
            if e.kind() == RunnerErrorKind::InvalidRequest
                && e.message().contains("not a directory") => {}
        Err(e) => return Err(format!("expected the agent's InvalidRequest, got {e}")),
        Ok(session) => {
            let _ = session.close().await;
            return Err("create_session with a file as a mount succeeded".into());
        }
    }
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    match containers_of(&docker, &dest.id).await? {
        0 => Ok(()),
        n => Err(format!("{n} containers are left after the agent failed")),
    }
}

/// A fork of a root session keeps what the session did to its writable
/// entries, and its read-only entries stay refused by the file API (root
/// would pass any mode check).
async fn fork_keeps_entries() -> TestResult {
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(host.path().join("notes.txt"), b"notes").map_err(|e| e.to_string())?;
    std::fs::write(host.path().join("data.txt"), b"data").map_err(|e| e.to_string())?;
    let mut dest = destination(serde_json::json!({ "image": image(), "network": "none" }));
    dest.default_manifest.entries = vec![
        RunnerManifestEntry {
            source: host.path().join("notes.txt"),
            target: PathBuf::from("notes.txt"),
            writable: false,
        },
        RunnerManifestEntry {
            source: host.path().join("data.txt"),
            target: PathBuf::from("data.txt"),
            writable: true,
        },
    ];
    let provider = DockerProvider::new();
    let session = provider
        .create_session(dest)
        .await
        .map_err(fail("create_session"))?;
    let mut fork = None;
    let mut image = None;
    let outcome = async {
        session
            .write_file(RunnerFileWriteRequest::new("data.txt", b"changed".to_vec()))
            .await
            .map_err(fail("write_file data.txt"))?;
        let snapshot = session.snapshot().await.map_err(fail("snapshot"))?;
        image = Some(snapshot.snapshot_id.clone());
        let mut state = session.state();
        state.snapshot = Some(snapshot);
        let forked = provider
            .resume_session(state)
            .await
            .map_err(fail("resume_session from the snapshot"))?;
        fork = Some(forked.clone());
        let data = forked
            .read_file(RunnerFileReadRequest::new("data.txt"))
            .await
            .map_err(fail("read_file data.txt in the fork"))?;
        if data.contents != b"changed" {
            return Err(format!("data.txt in the fork: {:?}", data.contents));
        }
        match forked
            .write_file(RunnerFileWriteRequest::new("notes.txt", b"x".to_vec()))
            .await
        {
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
            other => return Err(format!("the fork wrote the read-only entry: {other:?}")),
        }
        let notes = forked
            .read_file(RunnerFileReadRequest::new("notes.txt"))
            .await
            .map_err(fail("read_file notes.txt in the fork"))?;
        if notes.contents != b"notes" {
            return Err(format!("notes.txt in the fork: {:?}", notes.contents));
        }
        Ok(())
    }
    .await;
    if let Some(fork) = fork {
        fork.close().await.map_err(fail("close the fork"))?;
    }
    session.close().await.map_err(fail("close"))?;
    if let (Some(image), Ok(docker)) = (image, Docker::connect_with_local_defaults()) {
        let remove = bollard::query_parameters::RemoveImageOptionsBuilder::new()
            .force(true)
            .build();
        let _ = docker.remove_image(&image, Some(remove), None).await;
    }
    outcome
}

/// The `connect` bridges of this host to the agent socket `socket`.
fn connect_processes(socket: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    let raw = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                    args.contains(&b"connect".as_slice()) && args.contains(&socket.as_bytes())
                })
                .count()
        })
        .unwrap_or(0)
}

/// The transport a session's state names, and its agent socket.
fn transport_of(session: &dyn RemoteRunnerSession) -> (String, String) {
    let meta = session.state().metadata;
    (
        meta["transport"].as_str().unwrap_or_default().to_string(),
        meta["socket"].as_str().unwrap_or_default().to_string(),
    )
}

/// A session of `config` that echoes `word` and closes: its transport, the
/// command's output, and the `connect` bridges that ran meanwhile.
async fn echo_in_a_session(
    provider: &DockerProvider,
    config: serde_json::Value,
    word: &str,
) -> Result<(String, Result<String, String>, usize), String> {
    let session = provider
        .create_session(destination(config))
        .await
        .map_err(fail("create_session"))?;
    let (transport, socket) = transport_of(session.as_ref());
    let out = sh(session.as_ref(), &format!("echo {word}")).await;
    let bridges = connect_processes(&socket);
    session.close().await.map_err(fail("close"))?;
    Ok((transport, out, bridges))
}

/// With a local daemon the default transport dials the agent's socket
/// through a private host directory (no `connect` exec while commands
/// run), a rejoin finds it again, and `close` removes the directory;
/// `transport: "exec"` bridges through one exec per connection; a
/// `socket_dir` open to others is refused for `socket` and taken around by
/// `auto`.
async fn transports_socket_and_exec() -> TestResult {
    let provider = DockerProvider::new();
    let base = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socket_dir = base.path().join("sockets");
    let config = serde_json::json!({
        "image": image(), "network": "none", "socket_dir": socket_dir,
    });
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(fail("create_session (auto)"))?;
    let (transport, socket) = transport_of(session.as_ref());
    let session_dir = socket_dir.join(session.state().session_id);
    let outcome = async {
        if transport != "socket" {
            return Err(format!("auto on a local daemon took {transport:?}"));
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&session_dir)
                .map_err(|e| format!("{}: {e}", session_dir.display()))?
                .permissions(),
        );
        if mode & 0o777 != 0o700 {
            return Err(format!("the host socket directory is mode {mode:o}"));
        }
        let out = sh(session.as_ref(), "echo direct").await?;
        if out != "direct\n" || connect_processes(&socket) != 0 {
            return Err(format!(
                "socket transport: {out:?}, {} connect bridges",
                connect_processes(&socket)
            ));
        }
        let state = session.detach().await.map_err(fail("detach"))?;
        let rejoined = provider
            .rejoin_session(state)
            .await
            .map_err(fail("rejoin_session"))?;
        let (again, _) = transport_of(rejoined.as_ref());
        let out = sh(rejoined.as_ref(), "echo rejoined").await;
        rejoined.close().await.map_err(fail("close"))?;
        if again != "socket" || out.as_deref() != Ok("rejoined\n") {
            return Err(format!("the rejoined session: {again:?}, {out:?}"));
        }
        if session_dir.exists() {
            return Err(format!("{} is left after close", session_dir.display()));
        }
        Ok(())
    }
    .await;
    let _ = session.close().await;
    outcome?;

    let mut exec_config = config.clone();
    exec_config["transport"] = "exec".into();
    let (transport, out, bridges) = echo_in_a_session(&provider, exec_config, "bridged").await?;
    if transport != "exec" || out.as_deref() != Ok("bridged\n") || bridges == 0 {
        return Err(format!(
            "exec transport: {transport:?}, {out:?}, {bridges} connect bridges"
        ));
    }

    let open = base.path().join("open");
    std::fs::create_dir(&open).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let mut strict = config.clone();
    strict["socket_dir"] = open.display().to_string().into();
    strict["transport"] = "socket".into();
    match provider.create_session(destination(strict.clone())).await {
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
        Err(e) => return Err(format!("socket transport, open socket_dir: {e}")),
        Ok(session) => {
            let _ = session.close().await;
            return Err("socket transport accepted a socket_dir open to others".into());
        }
    }
    strict["transport"] = "auto".into();
    let (transport, out, _) = echo_in_a_session(&provider, strict, "around").await?;
    if transport != "exec" || out.as_deref() != Ok("around\n") {
        return Err(format!(
            "auto with an open socket_dir: {transport:?}, {out:?}"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(ORPHAN_CHILD).is_some() {
        return orphan_child();
    }
    let gate = BackendGate::new(
        "RUNNER_TEST_DOCKER",
        "scripts/test.sh starts dockerd and builds the test image",
    );
    gate.run(vec![
        async_trial("absent_image_not_found", absent_image_not_found),
        async_trial("transports_socket_and_exec", transports_socket_and_exec),
        async_trial("port_served_by_busybox_httpd", port_served_by_busybox_httpd),
        async_trial(
            "manifest_entries_and_bind_mount",
            manifest_entries_and_bind_mount,
        ),
        async_trial(
            "configured_user_owns_workspace",
            configured_user_owns_workspace,
        ),
        async_trial("orphans_removed_by_label", orphans_removed_by_label),
        async_trial(
            "file_operations_act_as_the_session_user",
            file_operations_act_as_the_session_user,
        ),
        async_trial(
            "uploads_belong_to_the_session_user",
            uploads_belong_to_the_session_user,
        ),
        async_trial(
            "setsid_children_end_with_their_command",
            setsid_children_end_with_their_command,
        ),
        async_trial("commands_run_as_another_user", commands_run_as_another_user),
        async_trial(
            "signals_reach_commands_of_another_user",
            signals_reach_commands_of_another_user,
        ),
        async_trial("writes_obey_permissions", writes_obey_permissions),
        async_trial("failing_bodies_leave_no_file", failing_bodies_leave_no_file),
        async_trial(
            "paused_operations_share_the_thaw",
            paused_operations_share_the_thaw,
        ),
        async_trial("rejoin_checks_the_container", rejoin_checks_the_container),
        async_trial(
            "resume_takes_settings_from_the_destination",
            resume_takes_settings_from_the_destination,
        ),
        async_trial("daemon_stopped_mid_session", daemon_stopped_mid_session),
        async_trial("exit_codes_and_signals", exit_codes_and_signals),
        async_trial(
            "rejoin_sees_the_running_command",
            rejoin_sees_the_running_command,
        ),
        async_trial(
            "another_platform_is_unsupported",
            another_platform_is_unsupported,
        ),
        async_trial(
            "agent_failure_removes_the_container",
            agent_failure_removes_the_container,
        ),
        async_trial("fork_keeps_entries", fork_keeps_entries),
        async_trial(
            "large_files_take_the_staged_archive_path",
            large_files_take_the_staged_archive_path,
        ),
    ])
}
