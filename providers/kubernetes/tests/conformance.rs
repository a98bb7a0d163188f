//! The kubernetes provider against the whole conformance kit, through kube
//! against the test API server (pods as containers of a real dockerd, the
//! busybox test image), or a real cluster with `RUNNER_TEST_KUBERNETES=1`,
//! as user 1000 with the workspace `/tmp/workspace`.

mod support;

use std::sync::Arc;

use runner_kubernetes::KubernetesProvider;
use runner_testkit::{
    Conformance, S3TestServer, skewed_agent_destination, socket_breaker, state_socket,
};

fn main() -> std::process::ExitCode {
    // The workspace compiles rustls with both ring and aws-lc-rs, so kube's
    // client cannot pick one: the test picks ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gate = support::gate();
    if !gate.requested() {
        return gate.conformance("kubernetes", || {
            unreachable!("the suite is built only when the backend is requested")
        });
    }
    // The test server's tasks run on this runtime while the checks run on
    // the harness's own.
    let runtime = tokio::runtime::Runtime::new().expect("build the tokio runtime");
    let cluster = runtime
        .block_on(support::Cluster::start())
        .expect("start the cluster");
    // A non-root user, as the restrictive security context recommends (root
    // with every capability dropped cannot override file modes as POSIX
    // root does), with the workspace in /tmp so that the `paths_` checks
    // can plant their file next to it as that user.
    let store = S3TestServer::start().expect("start the in-process S3 test server");
    let target = store.target();
    let destination = cluster.destination(
        "conformance",
        serde_json::json!({
            "run_as_user": 1000,
            "run_as_group": 1000,
            "workspace_dir": "/tmp/workspace",
            "snapshot_store": target.artifacts_config("kubernetes-conformance-snapshots"),
        }),
    );
    // Snapshots go to the destination's snapshot store, opened with the
    // same credentials the stack gets.
    let provider = KubernetesProvider::new().with_secret_resolver(target.resolver.clone());
    let skewed = skewed_agent_destination(&destination).expect("the skewed agent fixture");
    let mut conformance = Conformance::new(Arc::new(provider), destination)
        .with_object_store(target)
        .with_skewed_agent(skewed)
        .with_label("kubernetes");
    if cluster.server.is_some() {
        // The test server's pods are containers of this host: their
        // `runner-agent connect` processes (one per connection, by the
        // session's socket) can be killed from here, the agent left running.
        conformance = conformance.with_connection_breaker(socket_breaker(state_socket));
    }
    let summary = conformance.run_with(runner_testkit::libtest_mimic::Arguments::from_args());
    drop(store);
    runtime.block_on(cluster.shutdown());
    summary.exit_code()
}
