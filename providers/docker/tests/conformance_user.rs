//! The docker provider against the kit's file checks and its run-as-user
//! checks as a non-root session user (`nobody`, uid 65534, of the busybox
//! test image), so `files_write_permission_denied` and `exec_run_as_user`
//! take their non-root branches and every file operation shows it needs no
//! root.
//!
//! Not the whole kit: the `paths_` checks plant a file outside the workspace
//! (`/conformance-outside-…`) with a command of the session, which a non-root
//! user may not create. The other checks pass as this user too (with `select`
//! keeping every name but `paths_…`), but that run takes minutes, and the
//! root run covers them.

mod support;

/// The checks of this run.
fn select(name: &str) -> bool {
    name.starts_with("files_") || matches!(name, "exec_run_as_user" | "capabilities_run_as_user")
}

fn main() -> std::process::ExitCode {
    support::run(support::Run {
        label: "docker-nonroot",
        gate: support::DOCKER_GATE,
        image: support::BUSYBOX_IMAGE,
        extra: serde_json::json!({ "user": "65534:65534" }),
        select,
    })
}
