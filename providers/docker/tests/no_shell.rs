//! A session on an image whose rootfs holds only the static
//! `runner-testprog` binary (no shell, no busybox, no C library, no
//! `/etc/passwd`): commands, files and a forwarded port work there, because
//! every operation is the delivered runner agent's.
//!
//! The binary is the one `scripts/test.sh` builds and names in
//! `RUNNER_TEST_PROGRAM`; when the docker backend is requested without it,
//! the test fails.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerFileKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerManifest,
    RunnerPortRequest,
};
use runner_docker::DockerProvider;
use runner_testkit::{BackendGate, async_trial, http_fetch};

type TestResult = Result<(), String>;

/// The image this test imports (and removes afterwards).
const IMAGE: &str = "runners-test-noshell:latest";

/// Where the program is in the image.
const PROGRAM: &str = "/bin/runner-testprog";

fn fail(what: &str) -> impl FnOnce(runner_api::RunnerError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The rootfs: `bin/` and the program, nothing else.
fn rootfs() -> Result<Vec<u8>, String> {
    let path = std::env::var_os("RUNNER_TEST_PROGRAM").ok_or(
        "RUNNER_TEST_DOCKER is set but RUNNER_TEST_PROGRAM names no runner-testprog binary \
         (scripts/test.sh builds it)",
    )?;
    let program = std::fs::read(&path).map_err(|e| {
        format!(
            "reading RUNNER_TEST_PROGRAM {}: {e}",
            Path::new(&path).display()
        )
    })?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "bin", std::io::empty())
        .map_err(|e| e.to_string())?;
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(program.len() as u64);
    builder
        .append_data(
            &mut file,
            PROGRAM.trim_start_matches('/'),
            program.as_slice(),
        )
        .map_err(|e| e.to_string())?;
    builder.into_inner().map_err(|e| e.to_string())
}

/// `docker import` of [`rootfs`] as [`IMAGE`].
async fn import(docker: &Docker) -> TestResult {
    let (repo, tag) = IMAGE.split_once(':').unwrap_or((IMAGE, "latest"));
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut import = docker.create_image(
        Some(options),
        Some(bollard::body_full(rootfs()?.into())),
        None,
    );
    while let Some(step) = import.next().await {
        step.map_err(|e| format!("importing {IMAGE}: {e}"))?;
    }
    Ok(())
}

fn destination() -> RunnerDestination {
    RunnerDestination {
        id: "docker-no-shell".into(),
        provider_id: "docker".into(),
        config: serde_json::json!({ "image": IMAGE, "network": "none" }),
        default_manifest: RunnerManifest::default(),
        artifacts: None,
    }
}

async fn checks(session: &dyn RemoteRunnerSession) -> TestResult {
    let echoed = session
        .run_command(RunnerCommandRequest::new(
            "echo",
            "runner-testprog",
            ["echo", "hi"],
        ))
        .await
        .map_err(fail("run_command runner-testprog echo hi"))?;
    if !echoed.success() || echoed.stdout != "hi\n" {
        return Err(format!("runner-testprog echo hi: {echoed:?}"));
    }
    session
        .write_file(RunnerFileWriteRequest::new(
            "dir/a.txt",
            b"contents".to_vec(),
        ))
        .await
        .map_err(fail("write_file dir/a.txt"))?;
    let read = session
        .read_file(RunnerFileReadRequest::new("dir/a.txt"))
        .await
        .map_err(fail("read_file dir/a.txt"))?;
    if read.contents != b"contents" {
        return Err(format!("read_file dir/a.txt: {:?}", read.contents));
    }
    let listed = session
        .list_dir(Path::new("dir"))
        .await
        .map_err(fail("list_dir dir"))?;
    if listed.len() != 1 || listed[0].name != "a.txt" {
        return Err(format!("list_dir dir: {listed:?}"));
    }
    let stat = session
        .stat(Path::new("dir/a.txt"))
        .await
        .map_err(fail("stat dir/a.txt"))?;
    if stat.kind != RunnerFileKind::File || stat.size != 8 {
        return Err(format!("stat dir/a.txt: {stat:?}"));
    }
    let body = uuid::Uuid::new_v4().simple().to_string();
    session
        .start_command(RunnerCommandRequest::new(
            "http",
            "runner-testprog",
            ["serve-http", "8080", body.as_str()],
        ))
        .await
        .map_err(fail("start_command runner-testprog serve-http"))?;
    let exposed = session
        .expose_port(RunnerPortRequest {
            port: 8080,
            label: None,
        })
        .await
        .map_err(fail("expose_port 8080"))?;
    let url = exposed.url.ok_or("expose_port 8080 gave no URL")?;
    let got = http_fetch(&url, "", Duration::from_secs(15)).await?;
    if got != body {
        return Err(format!("GET {url}: expected {body:?}, got {got:?}"));
    }
    Ok(())
}

/// Commands, files and a port in the image that holds only `runner-testprog`.
async fn image_with_one_program() -> TestResult {
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    import(&docker).await?;
    let provider = DockerProvider::new();
    let outcome = async {
        let session = provider
            .create_session(destination())
            .await
            .map_err(fail("create_session"))?;
        let outcome = checks(session.as_ref()).await;
        session.close().await.map_err(fail("close"))?;
        outcome
    }
    .await;
    let remove = RemoveImageOptionsBuilder::new().force(true).build();
    let _ = docker.remove_image(IMAGE, Some(remove), None).await;
    outcome
}

fn main() -> ExitCode {
    let gate = BackendGate::new(
        "RUNNER_TEST_DOCKER",
        "scripts/test.sh starts dockerd and builds runner-testprog (RUNNER_TEST_PROGRAM)",
    );
    gate.run(vec![async_trial(
        "image_with_one_program",
        image_with_one_program,
    )])
}
