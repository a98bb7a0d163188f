//! Connection behaviour against a real sshd on 127.0.0.1: the master dying
//! mid-session (commands, files and port forwards recover), the channel to
//! the agent dying mid-command (the next call reconnects, nothing is lost),
//! host key mismatch, an unreachable host, background output that survives
//! a dropped connection and a rejoin from a new provider (also with the
//! command still running), read-only manifest entries refused by the file
//! API before and after a rejoin, and a host without an agent binary for
//! its platform refused up front.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerManifest,
    RunnerManifestEntry, RunnerOutputStream, RunnerPortRequest, RunnerProcessState, RunnerResult,
};
use runner_ssh::{SshConfig, SshProvider};
use runner_testkit::{BackendGate, async_trial, http_fetch};

mod support;

type TestResult = Result<(), String>;

fn config(overrides: serde_json::Value) -> Result<serde_json::Value, String> {
    support::config(overrides)
}

fn destination(config: serde_json::Value) -> RunnerDestination {
    support::destination("ssh-tests", config)
}

/// The pid of the mux master behind `config`'s sessions, from `ssh -O check`.
async fn master_pid(provider: &SshProvider, config: &serde_json::Value) -> Result<u32, String> {
    let typed = SshConfig::from_value(config).map_err(|e| e.to_string())?;
    let socket: PathBuf = provider
        .control_socket(&typed)
        .await
        .ok_or("no master is connected")?;
    let out = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-O", "check", "-S"])
        .arg(&socket)
        .arg("runner-test-master")
        .output()
        .await
        .map_err(|e| format!("running ssh -O check: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| format!("ssh -O check said {text:?}"))
}

async fn kill_master(provider: &SshProvider, config: &serde_json::Value) -> TestResult {
    let pid = master_pid(provider, config).await?;
    let status = tokio::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("kill {pid}: {e}"))?;
    if !status.success() {
        return Err(format!("kill -9 {pid} failed"));
    }
    // Wait until the master is really gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn echo(session: &dyn RemoteRunnerSession, id: &str, text: &str) -> Result<String, String> {
    let result = session
        .run_command(RunnerCommandRequest::new(id, "echo", [text]))
        .await
        .map_err(|e| format!("run_command {id}: {e}"))?;
    if !result.success() {
        return Err(format!("run_command {id}: {result:?}"));
    }
    Ok(result.stdout)
}

/// Killing the master mid-session: the next command and the next file
/// operation reconnect once and succeed.
async fn master_killed_mid_session() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let before = master_pid(&provider, &config).await?;
    if echo(session.as_ref(), "before", "one").await? != "one\n" {
        return Err("echo before the kill".into());
    }
    kill_master(&provider, &config).await?;
    let out = echo(session.as_ref(), "after", "two").await?;
    if out != "two\n" {
        return Err(format!("echo after the kill printed {out:?}"));
    }
    let after = master_pid(&provider, &config).await?;
    if after == before {
        return Err(format!("the master pid {before} did not change"));
    }
    kill_master(&provider, &config).await?;
    session
        .write_file(RunnerFileWriteRequest::new(
            "after-kill.txt",
            b"sftp again".to_vec(),
        ))
        .await
        .map_err(|e| format!("write_file after a second kill: {e}"))?;
    let read = session
        .read_file(RunnerFileReadRequest::new("after-kill.txt"))
        .await
        .map_err(|e| format!("read_file: {e}"))?;
    if read.contents != b"sftp again" {
        return Err(format!("read back {:?}", read.contents));
    }
    session.close().await.map_err(|e| format!("close: {e}"))
}

/// Starts `busybox httpd` serving `dir` (relative to the workspace) on a
/// free remote port as a background command; returns the port.
async fn start_httpd(session: &dyn RemoteRunnerSession, dir: &str) -> Result<u16, String> {
    let mut last = String::new();
    for attempt in 0..5u16 {
        let port = 20_000 + (std::process::id() as u16 % 10_000) + attempt * 1_013;
        let id = format!("httpd-{port}");
        session
            .start_command(RunnerCommandRequest::new(
                &id,
                "busybox",
                ["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", dir],
            ))
            .await
            .map_err(|e| format!("start_command {id}: {e}"))?;
        // A server that cannot bind exits at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let info = session
            .command_status(&id)
            .await
            .map_err(|e| format!("command_status {id}: {e}"))?;
        if info.state == RunnerProcessState::Running {
            return Ok(port);
        }
        last = format!("httpd on port {port} exited at once: {info:?}");
    }
    Err(last)
}

/// A port exposed before the master dies is forwarded again, at the same
/// local port, once a command has reconnected: the URL given out keeps
/// working.
async fn port_forward_survives_reconnect() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let body = format!("served over a forward {}\n", std::process::id());
    session
        .write_file(RunnerFileWriteRequest::new(
            "www/index.txt",
            body.clone().into_bytes(),
        ))
        .await
        .map_err(|e| format!("write_file: {e}"))?;
    let port = start_httpd(session.as_ref(), "www").await?;
    let url = session
        .expose_port(RunnerPortRequest { port, label: None })
        .await
        .map_err(|e| format!("expose_port {port}: {e}"))?
        .url
        .ok_or("expose_port gave no URL")?;
    let before = http_fetch(&url, "index.txt", Duration::from_secs(60)).await?;
    if before != body {
        return Err(format!("before the kill {url} served {before:?}"));
    }
    kill_master(&provider, &config).await?;
    // The next command (or the follower of the background server) finds the
    // master gone and reconnects.
    echo(session.as_ref(), "reconnect", "again").await?;
    let after = http_fetch(&url, "index.txt", Duration::from_secs(60)).await?;
    if after != body {
        return Err(format!("after the reconnect {url} served {after:?}"));
    }
    let again = session
        .expose_port(RunnerPortRequest { port, label: None })
        .await
        .map_err(|e| format!("expose_port {port} again: {e}"))?
        .url;
    if again.as_deref() != Some(url.as_str()) {
        return Err(format!("exposing {port} again gave {again:?}, not {url}"));
    }
    session.close().await.map_err(|e| format!("close: {e}"))
}

fn expect_read_only<T: std::fmt::Debug>(
    what: &str,
    result: RunnerResult<T>,
    names: &str,
) -> TestResult {
    match result {
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {
            if e.message().contains(names) && e.message().contains("is read-only") {
                Ok(())
            } else {
                Err(format!("{what}: the message does not name {names}: {e}"))
            }
        }
        other => Err(format!("{what}: expected PermissionDenied, got {other:?}")),
    }
}

/// Every file-API write under a read-only entry is refused, naming the path,
/// and the file is unchanged.
async fn assert_read_only(session: &dyn RemoteRunnerSession, when: &str) -> TestResult {
    let file = Path::new("ref/data.txt");
    expect_read_only(
        &format!("write_file {when}"),
        session
            .write_file(RunnerFileWriteRequest::new(file, b"changed".to_vec()))
            .await,
        "ref/data.txt",
    )?;
    expect_read_only(
        &format!("remove {when}"),
        session.remove(file, false).await,
        "ref/data.txt",
    )?;
    expect_read_only(
        &format!("make_dir {when}"),
        session.make_dir(Path::new("ref/sub")).await,
        "ref/sub",
    )?;
    expect_read_only(
        &format!("rename out of it {when}"),
        session.rename(file, Path::new("moved.txt")).await,
        "ref/data.txt",
    )?;
    expect_read_only(
        &format!("rename into it {when}"),
        session
            .rename(Path::new("free.txt"), Path::new("ref/free.txt"))
            .await,
        "ref/free.txt",
    )?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "data.txt", &b"tar"[..])
        .map_err(|e| e.to_string())?;
    let archive = builder.into_inner().map_err(|e| e.to_string())?;
    expect_read_only(
        &format!("upload_archive {when}"),
        session.upload_archive(Path::new("ref"), archive).await,
        "ref",
    )?;
    // A symlink made afterwards does not lead around the entry: the agent
    // checks where it resolves the path.
    let alias = format!("alias-{}", when.replace(' ', "-"));
    session
        .run_command(RunnerCommandRequest::shell(
            "mk-alias",
            format!("ln -sfn ref {alias}"),
        ))
        .await
        .map_err(|e| format!("ln -s {when}: {e}"))?;
    match session
        .write_file(RunnerFileWriteRequest::new(
            format!("{alias}/data.txt"),
            b"around".to_vec(),
        ))
        .await
    {
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
        other => {
            return Err(format!(
                "write_file through a symlink to the entry {when}: expected PermissionDenied, \
                 got {other:?}"
            ));
        }
    }
    let read = session
        .read_file(RunnerFileReadRequest::new(file))
        .await
        .map_err(|e| format!("read_file {when}: {e}"))?;
    if read.contents != b"original" {
        return Err(format!(
            "{when}: the read-only file now holds {:?}",
            read.contents
        ));
    }
    let listed = session
        .list_dir(Path::new("ref"))
        .await
        .map_err(|e| format!("list_dir {when}: {e}"))?;
    if listed.len() != 1 {
        return Err(format!("{when}: ref/ now holds {listed:?}"));
    }
    Ok(())
}

/// Read-only manifest entries: copied in, refused by the file API (in the
/// session, in a fork restored from its snapshot, after a rejoin from a new
/// provider), also through a symlink made later, and left without write bits
/// on disk.
async fn read_only_entry_refuses_file_writes() -> TestResult {
    let local = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ref_dir = local.path().join("ref");
    std::fs::create_dir(&ref_dir).map_err(|e| e.to_string())?;
    std::fs::write(ref_dir.join("data.txt"), b"original").map_err(|e| e.to_string())?;
    std::fs::write(local.path().join("free.txt"), b"free").map_err(|e| e.to_string())?;
    let mut destination = destination(config(serde_json::json!({}))?);
    destination.default_manifest = RunnerManifest {
        entries: vec![
            RunnerManifestEntry {
                source: ref_dir,
                target: "ref".into(),
                writable: false,
            },
            RunnerManifestEntry {
                source: local.path().join("free.txt"),
                target: "free.txt".into(),
                writable: true,
            },
        ],
        mounts: Vec::new(),
    };
    // Through the layer stack, as users get it: the workspace layer resolves
    // paths before the session's read-only check sees them.
    let provider = runner_stack::stacked(SshProvider::new());
    provider
        .validate_destination(&destination)
        .await
        .map_err(|e| format!("validate_destination: {e}"))?;
    let session = provider
        .create_session(destination.clone())
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    assert_read_only(session.as_ref(), "after create").await?;
    session
        .write_file(RunnerFileWriteRequest::new("free.txt", b"changed".to_vec()))
        .await
        .map_err(|e| format!("write_file of a writable entry: {e}"))?;
    let mut forked_state = session.state();
    forked_state.snapshot = Some(
        session
            .snapshot()
            .await
            .map_err(|e| format!("snapshot: {e}"))?,
    );
    let fork = provider
        .resume_session(forked_state)
        .await
        .map_err(|e| format!("resume_session from a snapshot: {e}"))?;
    assert_read_only(fork.as_ref(), "in a fork").await?;
    fork.close()
        .await
        .map_err(|e| format!("close the fork: {e}"))?;
    let state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
    drop(session);
    let fresh = runner_stack::stacked(SshProvider::new());
    fresh.trust_destination(&destination);
    let rejoined = fresh
        .rejoin_session(state)
        .await
        .map_err(|e| format!("rejoin_session: {e}"))?;
    assert_read_only(rejoined.as_ref(), "after rejoin").await?;
    // On disk too the entry lost its write bits: a command of the login
    // user cannot write there either.
    let result = rejoined
        .run_command(RunnerCommandRequest::shell(
            "cmd-write",
            "printf cmd > ref/data.txt; cat ref/data.txt",
        ))
        .await
        .map_err(|e| format!("run_command: {e}"))?;
    if result.stdout != "original" {
        return Err(format!("a command writing under ref/: {result:?}"));
    }
    rejoined.close().await.map_err(|e| format!("close: {e}"))
}

/// A known_hosts file with another key for the server: `PermissionDenied`.
async fn host_key_mismatch() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = dir.path().join("other");
    let status = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .await
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !status.success() {
        return Err("ssh-keygen failed".into());
    }
    let public = std::fs::read_to_string(key.with_extension("pub")).map_err(|e| e.to_string())?;
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let known = dir.path().join("known_hosts");
    let line = format!(
        "[{}]:{} {}\n",
        support::var("RUNNER_TEST_SSH_HOST")?,
        support::var("RUNNER_TEST_SSH_PORT")?,
        public.join(" ")
    );
    std::fs::write(&known, line).map_err(|e| e.to_string())?;
    for policy in ["strict", "accept-new"] {
        let config = config(serde_json::json!({
            "known_hosts_file": known, "host_key_policy": policy
        }))?;
        match SshProvider::new().create_session(destination(config)).await {
            Ok(session) => {
                let _ = session.close().await;
                return Err(format!("{policy}: a mismatched host key was accepted"));
            }
            Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {
                if !e.message().contains("host key") {
                    return Err(format!("{policy}: unclear message: {e}"));
                }
            }
            Err(e) => return Err(format!("{policy}: expected PermissionDenied, got {e}")),
        }
    }
    Ok(())
}

/// An unknown host is refused under the default strict policy and added to
/// the known_hosts file under `accept-new`.
async fn unknown_host_policy() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, "").map_err(|e| e.to_string())?;
    let strict = config(serde_json::json!({ "known_hosts_file": known }))?;
    match SshProvider::new().create_session(destination(strict)).await {
        Err(e) if e.kind() == RunnerErrorKind::PermissionDenied => {}
        Err(e) => return Err(format!("strict: expected PermissionDenied, got {e}")),
        Ok(session) => {
            let _ = session.close().await;
            return Err("strict: an unknown host was accepted".into());
        }
    }
    let accept = config(serde_json::json!({
        "known_hosts_file": known, "host_key_policy": "accept-new"
    }))?;
    let session = SshProvider::new()
        .create_session(destination(accept))
        .await
        .map_err(|e| format!("accept-new: {e}"))?;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    let added = std::fs::read_to_string(&known).map_err(|e| e.to_string())?;
    if !added.contains("ssh-ed25519") {
        return Err(format!("accept-new did not record the host key: {added:?}"));
    }
    Ok(())
}

/// Nothing listens on the port: `Unavailable`, within the connect timeout.
async fn unreachable_host() -> TestResult {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    drop(listener);
    let config = config(serde_json::json!({ "port": port, "connect_timeout_ms": 3000 }))?;
    let attempt = tokio::time::timeout(
        Duration::from_secs(60),
        SshProvider::new().create_session(destination(config)),
    )
    .await
    .map_err(|_| "create_session did not give up".to_string())?;
    match attempt {
        Ok(session) => {
            let _ = session.close().await;
            Err("connected to a closed port".into())
        }
        Err(e) if e.kind() == RunnerErrorKind::Unavailable => Ok(()),
        Err(e) => Err(format!("expected Unavailable, got {e}")),
    }
}

async fn wait_exited(session: &dyn RemoteRunnerSession, id: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = session
            .command_status(&id.to_string())
            .await
            .map_err(|e| format!("command_status: {e}"))?;
        if info.state == RunnerProcessState::Exited {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{id} still running after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Background output keeps being recorded while the master is dead, and a
/// new provider instance rejoining the detached session reads the same
/// numbered chunks.
async fn background_output_survives() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let id = "durable".to_string();
    session
        .start_command(RunnerCommandRequest::shell(
            &id,
            "echo one; sleep 1; echo two >&2; sleep 1; echo three; sleep 1; echo four >&2",
        ))
        .await
        .map_err(|e| format!("start_command: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill_master(&provider, &config).await?;
    wait_exited(session.as_ref(), &id).await?;
    let live = session
        .command_output(&id, 0)
        .await
        .map_err(|e| format!("command_output: {e}"))?;
    let text = |stream| {
        live.chunks
            .iter()
            .filter(|c| c.stream == stream)
            .flat_map(|c| c.bytes.clone())
            .collect::<Vec<u8>>()
    };
    if text(RunnerOutputStream::Stdout) != b"one\nthree\n"
        || text(RunnerOutputStream::Stderr) != b"two\nfour\n"
    {
        return Err(format!("output after the master died: {live:?}"));
    }
    let state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
    drop(session);
    drop(provider);
    let fresh = SshProvider::new()
        .with_destination(&destination(config.clone()))
        .map_err(|e| format!("with_destination: {e}"))?;
    let rejoined = fresh
        .rejoin_session(state)
        .await
        .map_err(|e| format!("rejoin_session: {e}"))?;
    let back = rejoined
        .command_output(&id, 0)
        .await
        .map_err(|e| format!("command_output after rejoin: {e}"))?;
    let ended = |o: &runner_api::RunnerCommandOutput| o.status.map(|s| (s.exit_code, s.signal));
    if back.chunks != live.chunks || ended(&back) != ended(&live) {
        return Err(format!("after rejoin: {back:?}\nlive: {live:?}"));
    }
    let second = live.chunks.first().map_or(0, |c| c.seq);
    let tail = rejoined
        .command_output(&id, second)
        .await
        .map_err(|e| format!("command_output after seq {second}: {e}"))?;
    if tail.chunks.as_slice() != &live.chunks[1..] {
        return Err(format!("resuming after seq {second}: {tail:?}"));
    }
    rejoined.close().await.map_err(|e| format!("close: {e}"))
}

/// The host's `runner-agent connect` processes whose arguments name
/// `socket` (they run as the test user on 127.0.0.1).
fn connect_processes(socket: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let named = args.contains(&b"connect".as_slice()) && args.contains(&socket.as_bytes());
            named.then_some(pid)
        })
        .collect()
}

/// The bytes of every chunk of `output`, in order.
fn joined(output: &runner_api::RunnerCommandOutput) -> Vec<u8> {
    output.chunks.iter().flat_map(|c| c.bytes.clone()).collect()
}

/// Killing the channel a session's connection runs over (its `runner-agent
/// connect` process on the host) mid-command loses nothing: the next call
/// reconnects on its own, and `command_output` after the last sequence
/// number seen returns the rest of the output.
async fn dropped_agent_channel_reconnects() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let socket = session.state().metadata["socket"]
        .as_str()
        .ok_or("the state names no agent socket")?
        .to_string();
    let id = "ticker".to_string();
    session
        .start_command(RunnerCommandRequest::shell(
            &id,
            "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.3; done",
        ))
        .await
        .map_err(|e| format!("start_command: {e}"))?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = session
        .command_output(&id, 0)
        .await
        .map_err(|e| format!("command_output: {e}"))?;
    let last = before.chunks.last().map_or(0, |c| c.seq);
    let pids = connect_processes(&socket);
    if pids.is_empty() {
        return Err(format!("no runner-agent connect process names {socket}"));
    }
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_exited(session.as_ref(), &id).await?;
    let rest = session
        .command_output(&id, last)
        .await
        .map_err(|e| format!("command_output after seq {last}: {e}"))?;
    let mut all = joined(&before);
    all.extend(joined(&rest));
    let expected: String = (1..=8).map(|i| format!("line-{i}\n")).collect();
    if all != expected.as_bytes() {
        return Err(format!(
            "output across the dropped channel: {:?}",
            String::from_utf8_lossy(&all)
        ));
    }
    if connect_processes(&socket)
        .iter()
        .any(|pid| pids.contains(pid))
    {
        return Err("the killed connect process still runs".into());
    }
    session.close().await.map_err(|e| format!("close: {e}"))
}

/// A session detached while a command runs keeps running in its agent; a
/// new provider rejoining it sees the command still running, then its
/// whole output and exit status.
async fn detach_rejoin_with_a_running_command() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let session = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let id = "outlives".to_string();
    session
        .start_command(RunnerCommandRequest::shell(
            &id,
            "echo before; sleep 2; echo after; exit 3",
        ))
        .await
        .map_err(|e| format!("start_command: {e}"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = session.detach().await.map_err(|e| format!("detach: {e}"))?;
    drop(session);
    drop(provider);
    let fresh = SshProvider::new()
        .with_destination(&destination(config.clone()))
        .map_err(|e| format!("with_destination: {e}"))?;
    let rejoined = fresh
        .rejoin_session(state)
        .await
        .map_err(|e| format!("rejoin_session: {e}"))?;
    let info = rejoined
        .command_status(&id)
        .await
        .map_err(|e| format!("command_status after rejoin: {e}"))?;
    if info.state != RunnerProcessState::Running {
        return Err(format!("the command did not outlive the detach: {info:?}"));
    }
    wait_exited(rejoined.as_ref(), &id).await?;
    let output = rejoined
        .command_output(&id, 0)
        .await
        .map_err(|e| format!("command_output: {e}"))?;
    let code = output.status.and_then(|s| s.exit_code);
    if joined(&output) != b"before\nafter\n" || code != Some(3) {
        return Err(format!("after rejoin: {output:?}"));
    }
    rejoined.close().await.map_err(|e| format!("close: {e}"))
}

/// Sessions of one destination share one master; a command round trip over
/// it is reported (no assertion on time: speed belongs in benchmarks).
async fn sessions_share_one_master() -> TestResult {
    let config = config(serde_json::json!({}))?;
    let provider = SshProvider::new();
    let connecting = Instant::now();
    let first = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    eprintln!(
        "ssh create_session with a new master (handshake, sftp, directories): {:.1} ms",
        connecting.elapsed().as_secs_f64() * 1000.0
    );
    let pid = master_pid(&provider, &config).await?;
    let second = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    if master_pid(&provider, &config).await? != pid {
        return Err("the second session started its own master".into());
    }
    let rounds = 50;
    let started = Instant::now();
    for i in 0..rounds {
        echo(second.as_ref(), &format!("rt-{i}"), "x").await?;
    }
    eprintln!(
        "ssh command round trip over the shared master: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
    );
    first.close().await.map_err(|e| format!("close: {e}"))?;
    second.close().await.map_err(|e| format!("close: {e}"))
}

/// `sweep_orphans` removes a detached session past the grace period and
/// leaves a live session alone.
async fn sweep_removes_only_orphans() -> TestResult {
    let config = config(serde_json::json!({ "orphan_grace_s": 0 }))?;
    let provider = SshProvider::new();
    let live = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let gone = provider
        .create_session(destination(config.clone()))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let state = gone.detach().await.map_err(|e| format!("detach: {e}"))?;
    let report = provider
        .sweep_orphans()
        .await
        .map_err(|e| format!("sweep_orphans: {e}"))?;
    if !report.removed.iter().any(|r| r.contains(&state.session_id)) {
        return Err(format!("the detached session was not swept: {report:?}"));
    }
    if report
        .removed
        .iter()
        .any(|r| r.contains(&live.state().session_id))
    {
        return Err(format!("the live session was swept: {report:?}"));
    }
    match provider.rejoin_session(state).await {
        Err(e) if e.kind() == RunnerErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "rejoin after the sweep: expected NotFound, got {e}"
            ));
        }
        Ok(_) => return Err("rejoined a swept session".into()),
    }
    echo(live.as_ref(), "still-there", "ok").await?;
    live.close().await.map_err(|e| format!("close: {e}"))
}

/// The stdout of `script` run in a fresh session of the default
/// destination (closed after).
async fn on_the_host(script: String) -> Result<String, String> {
    let session = SshProvider::new()
        .create_session(destination(config(serde_json::json!({}))?))
        .await
        .map_err(|e| format!("create_session: {e}"))?;
    let found = session
        .run_command(RunnerCommandRequest::shell("look", script))
        .await
        .map_err(|e| format!("run_command: {e}"));
    session.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(found?.stdout)
}

/// Set (to a remote directory, relative to the home) only for the child
/// of `no_agent_binary_is_unsupported_up_front`, which runs without
/// `RUNNER_AGENT_BINARY`.
const NO_AGENT_AREA_ENV: &str = "RUNNER_SSH_NO_AGENT_AREA";

/// The child's side: with no agent binary for the host's platform,
/// `validate_destination` and `create_session` are `Unsupported` naming the
/// platform and the build command.
async fn no_agent_child(area: String) -> TestResult {
    let destination = destination(config(serde_json::json!({
        "workspace_root": format!("{area}/workspaces"),
        "state_dir": format!("{area}/sessions"),
        "snapshot_dir": format!("{area}/snapshots"),
    }))?);
    let provider = SshProvider::new();
    let check = |what: &str, result: Result<(), runner_api::RunnerError>| match result {
        Err(e)
            if e.kind() == runner_api::RunnerErrorKind::Unsupported
                && e.message().contains("linux/")
                && e.message().contains("cargo build") =>
        {
            Ok(())
        }
        other => Err(format!(
            "{what}: expected Unsupported with the build command, got {other:?}"
        )),
    };
    check(
        "validate_destination",
        provider.validate_destination(&destination).await,
    )?;
    check(
        "create_session",
        provider.create_session(destination).await.map(|_| ()),
    )
}

/// Without an agent binary for the host's platform (no `agent_binaries`,
/// no `RUNNER_AGENT_BINARY`), validation and session creation fail up front
/// with `Unsupported`, and nothing is created on the host. Runs this test
/// binary again as a child without the variable.
async fn no_agent_binary_is_unsupported_up_front() -> TestResult {
    let area = format!(".runners/no-agent-{}", uuid::Uuid::new_v4().simple());
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let output = tokio::process::Command::new(exe)
        .env(NO_AGENT_AREA_ENV, &area)
        .env_remove("RUNNER_AGENT_BINARY")
        .output()
        .await
        .map_err(|e| format!("running the child: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the child without an agent binary: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let found = on_the_host(format!(
        "test -e \"$HOME/{area}\" && echo created || echo nothing"
    ))
    .await?;
    if found != "nothing\n" {
        return Err(format!("the refused session left $HOME/{area} on the host"));
    }
    Ok(())
}

/// An agent binary of another protocol version (the `runner-agent-skewed`
/// fixture) is refused when its copy reports its version, before it
/// starts: `Unsupported` naming both versions, and no session directory,
/// workspace or agent process left on the host.
async fn skewed_agent_is_refused_before_it_starts() -> TestResult {
    let area = format!(".runners/skewed-{}", uuid::Uuid::new_v4().simple());
    let plain = destination(config(serde_json::json!({
        "workspace_root": format!("{area}/workspaces"),
        "state_dir": format!("{area}/sessions"),
        "snapshot_dir": format!("{area}/snapshots"),
    }))?);
    let skewed = runner_testkit::skewed_agent_destination(&plain)?;
    let provider = SshProvider::new();
    match provider.create_session(skewed).await {
        Err(e)
            if e.kind() == runner_api::RunnerErrorKind::Unsupported
                && e.message().contains("protocol mismatch") => {}
        Err(e) => return Err(format!("create_session: expected Unsupported, got {e}")),
        Ok(_) => return Err("create_session with a skewed agent succeeded".into()),
    }
    let found = on_the_host(format!(
        "cd \"$HOME/{area}\" && ls sessions; ls workspaces 2>/dev/null; \
         ps -e -o args | grep -c '[r]unner-agent-.* serve .*{area}'; rm -rf \"$HOME/{area}\""
    ))
    .await?;
    if found != "bin\n0\n" {
        return Err(format!(
            "the refused session left something on the host (expected only the delivered \
             binaries and no agent process): {found:?}"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(area) = std::env::var_os(NO_AGENT_AREA_ENV) {
        let area = area.to_string_lossy().into_owned();
        let outcome = tokio::runtime::Runtime::new()
            .map_err(|e| format!("runtime: {e}"))
            .and_then(|runtime| runtime.block_on(no_agent_child(area)));
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    BackendGate::new(
        "RUNNER_TEST_SSH",
        "scripts/test.sh starts sshd on 127.0.0.1",
    )
    .run(vec![
        async_trial("master_killed_mid_session", master_killed_mid_session),
        async_trial(
            "port_forward_survives_reconnect",
            port_forward_survives_reconnect,
        ),
        async_trial(
            "read_only_entry_refuses_file_writes",
            read_only_entry_refuses_file_writes,
        ),
        async_trial("host_key_mismatch", host_key_mismatch),
        async_trial("unreachable_host", unreachable_host),
        async_trial("unknown_host_policy", unknown_host_policy),
        async_trial("background_output_survives", background_output_survives),
        async_trial("sessions_share_one_master", sessions_share_one_master),
        async_trial(
            "dropped_agent_channel_reconnects",
            dropped_agent_channel_reconnects,
        ),
        async_trial(
            "detach_rejoin_with_a_running_command",
            detach_rejoin_with_a_running_command,
        ),
        async_trial(
            "no_agent_binary_is_unsupported_up_front",
            no_agent_binary_is_unsupported_up_front,
        ),
        async_trial(
            "skewed_agent_is_refused_before_it_starts",
            skewed_agent_is_refused_before_it_starts,
        ),
        async_trial("sweep_removes_only_orphans", sweep_removes_only_orphans),
    ])
}
