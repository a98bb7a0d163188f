//! Behaviour of the docker provider beyond the conformance kit, on real
//! daemons: an absent image, a daemon that stops in the middle of a session,
//! orphan removal, published and forwarded ports, manifests and mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerManifest,
    RunnerManifestEntry, RunnerMount, RunnerMountIntent, RunnerMountKind, RunnerPortRequest,
};
use runner_docker::{DockerProvider, LABEL_OWNER};
use runner_testkit::{BackendGate, async_trial, http_fetch};

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
        let snapshot = match session.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                eprintln!("snapshot: {e}");
                return ExitCode::FAILURE;
            }
        };
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
            snapshot.snapshot_id
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// A session whose process died is removed by `sweep_orphans` (container and
/// snapshot); a live session and an unmarked container are left alone.
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
    let (Some(orphan), Some(orphan_image)) = (ids.next(), ids.next()) else {
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
        sh(live.as_ref(), "echo alive")
            .await
            .map_err(|e| format!("the live session after the sweep: {e}"))?;
        Ok(())
    }
    .await;
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(&bystander, Some(remove)).await;
    live.close().await.map_err(fail("close"))?;
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
        async_trial("daemon_stopped_mid_session", daemon_stopped_mid_session),
    ])
}
