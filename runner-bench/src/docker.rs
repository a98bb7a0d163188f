//! docker against the docker CLI on the same daemon and image.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use runner_api::{RemoteRunnerSession, RunnerDestination};
use runner_docker::DockerProvider;

use crate::cli;
use crate::generic::{Target, round_trip, write_read};
use crate::local::pattern;
use crate::stats::{Better, Group, Spec, time_ms};
use crate::{Figures, Plan};

const FILE_BYTES: usize = 100 << 20;

/// The docker target on the image named by `RUNNER_TEST_DOCKER_IMAGE`.
pub(crate) fn target() -> anyhow::Result<Target> {
    Ok(image_target("docker", image()?))
}

/// The docker target on the Debian image (`RUNNER_TEST_DOCKER_DEBIAN_IMAGE`)
/// when `RUNNER_TEST_DOCKER_DEBIAN=1` asks for it.
pub(crate) fn debian_target() -> anyhow::Result<Option<Target>> {
    if !cli::requested("RUNNER_TEST_DOCKER_DEBIAN") {
        return Ok(None);
    }
    let image = cli::var("RUNNER_TEST_DOCKER_DEBIAN_IMAGE")?;
    Ok(Some(image_target("docker-debian", image)))
}

fn image_target(label: &str, image: String) -> Target {
    Target {
        label: label.into(),
        provider: Arc::new(DockerProvider::default()),
        destination: RunnerDestination {
            id: format!("bench-{label}"),
            provider_id: "docker".into(),
            config: serde_json::json!({ "image": image }),
            default_manifest: Default::default(),
            artifacts: None,
        },
    }
}

/// The image of a docker target.
pub(crate) fn target_image(target: &Target) -> anyhow::Result<String> {
    target.destination.config["image"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the {} destination names no image", target.label))
}

fn image() -> anyhow::Result<String> {
    cli::var("RUNNER_TEST_DOCKER_IMAGE")
}

/// Starts a container of `image` with the CLI, as a user would
/// (`docker run -d --init IMAGE sleep …`), and returns its id.
pub(crate) async fn cli_container(image: &str) -> anyhow::Result<String> {
    cli::capture(
        "docker",
        &["run", "-d", "--init", image, "sleep", "2147483647"],
    )
    .await
}

/// Removes a container [`cli_container`] started.
pub(crate) async fn remove_cli_container(id: &str) -> anyhow::Result<()> {
    cli::run("docker", &["rm", "-f", id]).await
}

/// Session creation, command round trip, 100 MiB upload and download.
pub(crate) async fn run(plan: &Plan, target: &Target, scratch: &std::path::Path) -> Figures {
    let mut group = Group::new("docker");
    let image = image()?;

    let created = Mutex::new(Vec::new());
    let ours = time_ms(plan.session_reps, |_| async {
        let session = target.session().await?;
        lock(&created).push(session);
        Ok(())
    })
    .await;
    let created = created.into_inner().unwrap_or_else(|p| p.into_inner());
    for session in created {
        session.close().await?;
    }
    let ours = ours?;
    let started = Mutex::new(Vec::new());
    let baseline = time_ms(plan.session_reps, |_| async {
        let id = cli_container(&image).await?;
        lock(&started).push(id);
        Ok(())
    })
    .await;
    let started = started.into_inner().unwrap_or_else(|p| p.into_inner());
    for id in started {
        remove_cli_container(&id).await?;
    }
    group.add(
        Spec {
            name: "create_session",
            unit: "ms",
            better: Better::Lower,
            baseline: "docker run -d (CLI)",
        },
        &ours,
        &baseline?,
        0,
    );

    let session = target.session().await?;
    let container = container_id(&session)?;
    let ours = round_trip(&session, plan.round_trips).await?;
    let exec = ["exec", &container, "true"];
    let baseline = time_ms(plan.round_trips, |_| cli::run("docker", &exec)).await?;
    group.add(
        Spec {
            name: "run_command(true) round trip",
            unit: "ms",
            better: Better::Lower,
            baseline: "docker exec (CLI)",
        },
        &ours,
        &baseline,
        0,
    );

    let contents = Arc::new(pattern(FILE_BYTES));
    let (upload, download) =
        write_read(&session, "bench-100mib.bin", &contents, plan.file_reps).await?;
    let local = scratch.join("docker-100mib.bin");
    tokio::fs::write(&local, contents.as_slice()).await?;
    let (local, back) = (local.to_string_lossy(), format!("{}.back", local.display()));
    let remote = format!("{container}:/tmp/cp-100mib.bin");
    let reps = plan.file_reps;
    let cp_up = cli::copy_times("docker", &["cp"], &local, &remote, reps).await?;
    let cp_down = cli::copy_times("docker", &["cp"], &remote, &back, reps).await?;
    session.close().await?;
    group.add_transfers(
        FILE_BYTES as u64,
        [
            (
                "upload 100 MiB (write_file)",
                &upload,
                &cp_up,
                "docker cp host → container",
            ),
            (
                "download 100 MiB (read_file)",
                &download,
                &cp_down,
                "docker cp container → host",
            ),
        ],
    );
    Ok(group.into_figures())
}

/// The container of a docker session, from its state.
pub(crate) fn container_id(session: &Arc<dyn RemoteRunnerSession>) -> anyhow::Result<String> {
    session.state().metadata["container_id"]
        .as_str()
        .map(str::to_string)
        .context("the docker session state names no container_id")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
