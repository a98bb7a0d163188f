//! The docker provider against the whole conformance kit on the Debian image
//! (`scripts/provision/docker-debian.sh` builds it: minbase with python3), as
//! the image's user (root): the same checks as on busybox, with GNU coreutils,
//! dash and python3 in place of busybox.

mod support;

fn main() -> std::process::ExitCode {
    support::run(support::Run {
        label: "docker-debian",
        gate: (
            "RUNNER_TEST_DOCKER_DEBIAN",
            "scripts/test.sh builds the Debian test image (scripts/provision/docker-debian.sh)",
        ),
        image: ("RUNNER_TEST_DOCKER_DEBIAN_IMAGE", None),
        extra: serde_json::json!({}),
        select: support::all,
    })
}
