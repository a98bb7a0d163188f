//! The docker provider against the whole conformance kit, on a real dockerd
//! with the busybox test image, as the image's user (root).

mod support;

fn main() -> std::process::ExitCode {
    support::run("as the image's user (root)", serde_json::json!({}), |_| {
        true
    })
}
