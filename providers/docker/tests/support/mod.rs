//! The conformance runs of the docker provider: on a real dockerd with the
//! busybox test image (`scripts/provision/docker.sh` builds it), network
//! `none`, with the in-process S3 server of `runner-testkit` for the mounts
//! and artifacts areas; afterwards the snapshot images the run took are
//! removed.

// Each test target uses part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use runner_api::{RemoteRunnerProvider, RunnerDestination};
use runner_docker::{DockerProvider, LABEL_MARKER, LABEL_OWNER, MARKER_VALUE};
use runner_testkit::libtest_mimic::Arguments;
use runner_testkit::{
    BackendGate, Conformance, S3TestServer, checks, skewed_agent_destination, socket_breaker,
    state_socket,
};

/// The variable requesting the docker runs.
pub(crate) const DOCKER_GATE: (&str, &str) = (
    "RUNNER_TEST_DOCKER",
    "scripts/test.sh starts dockerd and builds the test image",
);

/// The busybox test image and the variable that may name another.
pub(crate) const BUSYBOX_IMAGE: (&str, Option<&str>) = (
    "RUNNER_TEST_DOCKER_IMAGE",
    Some("runners-test-busybox:latest"),
);

/// One conformance run of the docker provider.
pub(crate) struct Run {
    /// The name of the run in its summary line (`docker`, `docker-nonroot`, …).
    pub(crate) label: &'static str,
    /// The variable that requests the run, and how it is provided.
    pub(crate) gate: (&'static str, &'static str),
    /// The variable naming the image, and the image without it (`None`: the
    /// variable must be set when the run is requested).
    pub(crate) image: (&'static str, Option<&'static str>),
    /// Keys added to the destination config (an object).
    pub(crate) extra: serde_json::Value,
    /// The checks of the run (the command line may narrow them further).
    pub(crate) select: fn(&str) -> bool,
}

/// Every check.
pub(crate) fn all(_: &str) -> bool {
    true
}

/// Runs `run`'s checks on a destination of its image.
pub(crate) fn run(run: Run) -> ExitCode {
    let gate = BackendGate::new(run.gate.0, run.gate.1);
    if !gate.requested() {
        // Lists every check as ignored, with the reason; the suite is not built.
        return gate.conformance(run.label, || {
            unreachable!("the suite is built only when the backend is requested")
        });
    }
    // The mounts and artifacts areas run against an in-process S3 server; their
    // data passes through the file API, so network `none` is fine.
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    let (variable, default) = run.image;
    let image = match (std::env::var(variable), default) {
        (Ok(image), _) => image,
        (Err(_), Some(default)) => default.to_string(),
        (Err(_), None) => panic!("{} is requested but {variable} names no image", run.gate.0),
    };
    let extra = run.extra;
    let select = run.select;
    let mut config = serde_json::json!({ "image": image, "network": "none" });
    if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    let destination = RunnerDestination {
        id: "conformance".into(),
        provider_id: "docker".into(),
        config,
        default_manifest: Default::default(),
        artifacts: None,
    };
    let provider = DockerProvider::new();
    let args = arguments(select);
    let skewed = skewed_agent_destination(&destination).expect("the skewed agent fixture");
    let summary = Conformance::new(Arc::new(provider), destination)
        .with_object_store(server.target())
        .with_skewed_agent(skewed)
        .with_connection_breaker(socket_breaker(state_socket))
        .with_label(run.label)
        .run_with(args);
    drop(server);
    remove_leftovers();
    summary.exit_code()
}

/// The process's libtest arguments, narrowed to the checks `select` keeps:
/// libtest-mimic takes one filter, so the checks not to run are skipped by
/// their exact names, a filter and skips of the command line included.
fn arguments(select: fn(&str) -> bool) -> Arguments {
    let mut args = Arguments::from_args();
    let matches = |name: &str, pattern: &str| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    let asked = |name: &str| {
        args.filter.as_deref().is_none_or(|f| matches(name, f))
            && !args.skip.iter().any(|s| matches(name, s))
    };
    let skip: Vec<String> = checks()
        .into_iter()
        .map(|check| check.name)
        .filter(|name| !(select(name) && asked(name)))
        .map(String::from)
        .collect();
    args.skip = skip;
    args.filter = None;
    args.exact = true;
    args
}

/// Snapshots outlive their sessions by design: remove the ones this run took,
/// and whatever earlier runs that died left behind.
fn remove_leftovers() {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    runtime.block_on(async {
        let provider = DockerProvider::new().with_orphan_grace(Duration::ZERO);
        if let Err(e) = provider.sweep_orphans().await {
            eprintln!("sweep_orphans after the conformance run: {e}");
        }
        let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
            return;
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_MARKER}={MARKER_VALUE}")],
        )]);
        let options = ListImagesOptionsBuilder::new().filters(&filters).build();
        let pid = std::process::id().to_string();
        for image in docker.list_images(Some(options)).await.unwrap_or_default() {
            let ours = image
                .labels
                .get(LABEL_OWNER)
                .is_some_and(|owner| owner.split('/').nth(2) == Some(pid.as_str()));
            if ours {
                let remove = RemoveImageOptionsBuilder::new().force(true).build();
                let _ = docker.remove_image(&image.id, Some(remove), None).await;
            }
        }
    });
}
