//! The docker provider against the whole conformance kit, on a real dockerd
//! with the busybox test image, as the image's user (root).

mod support;

fn main() -> std::process::ExitCode {
    support::run(support::Run {
        label: "docker",
        gate: support::DOCKER_GATE,
        image: support::BUSYBOX_IMAGE,
        extra: serde_json::json!({}),
        select: support::all,
    })
}
