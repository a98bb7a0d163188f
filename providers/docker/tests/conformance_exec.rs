//! The docker provider against the whole conformance kit over the exec
//! transport (`"transport": "exec"`: one docker exec of `runner-agent
//! connect` per connection, what a remote daemon gets), on a real dockerd
//! with the busybox test image, as the image's user (root).

mod support;

fn main() -> std::process::ExitCode {
    support::run(support::Run {
        label: "docker-exec",
        gate: support::DOCKER_GATE,
        image: support::BUSYBOX_IMAGE,
        extra: serde_json::json!({ "transport": "exec" }),
        select: support::all,
    })
}
