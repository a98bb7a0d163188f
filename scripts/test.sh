#!/usr/bin/env bash
# Runs every check of the workspace on this machine, provisioning what the tests
# need first: formatting, clippy, every test (unit, integration, conformance:
# docker's on busybox, as a non-root user and on the Debian image), the
# quickstart example, and finally the conformance report.
# RUNNER_TEST_DOCKER_DEBIAN=0 skips building and testing the Debian image
# (scripts/provision/docker-debian.sh).
#
# Usage: scripts/test.sh          every check and test
#        scripts/test.sh --bench  provision the backends, then run the benchmarks
#                                 (runner-bench; results in target/bench/results.json)
#
# Works on a fresh Debian machine as root (packages come from apt). Backends that
# are requested and cannot be provisioned fail the run; nothing passes by skipping.
set -euo pipefail

MODE=test
case "${1:-}" in
  "") ;;
  --bench) MODE=bench ;;
  *) printf 'usage: scripts/test.sh [--bench]\n' >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_DIR=target/test-logs
mkdir -p "$LOG_DIR"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
# ensure_packages PKG... : installs missing Debian packages (root only).
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}: install them or run as root"
  if [ "$APT_UPDATED" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step "toolchain"
cargo --version
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is not installed (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || die "clippy is not installed (rustup component add clippy)"

step "provision: programs the conformance checks run inside unix-local sessions"
# The ports checks serve HTTP with busybox httpd (python3 is the fallback).
if command -v apt-get >/dev/null 2>&1; then
  ensure_packages busybox-static
fi
command -v busybox >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 \
  || die "neither busybox nor python3 is available for the ports checks"

step "provision: the static runner agent the docker and ssh sessions run"
# A static-pie binary (runs in an image without a C library); an explicit
# --target keeps build scripts dynamic and this build out of target/debug.
# runner-testprog is the one program of the image that holds nothing else.
# runner-agent-skewed (feature skewed-fixture) is the same agent speaking the
# next protocol version: the kit's version-mismatch check delivers it.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
  --target x86_64-unknown-linux-gnu -p runner-agent -p runner-testprog \
  --features runner-agent/skewed-fixture
static_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/x86_64-unknown-linux-gnu/release"
RUNNER_AGENT_BINARY="$static_dir/runner-agent"
RUNNER_AGENT_SKEWED_BINARY="$static_dir/runner-agent-skewed"
RUNNER_TEST_PROGRAM="$static_dir/runner-testprog"
export RUNNER_AGENT_BINARY RUNNER_AGENT_SKEWED_BINARY RUNNER_TEST_PROGRAM

# Each backend's script provisions it (installing packages, starting the
# daemon) and exports the RUNNER_TEST_<BACKEND>=1 switch plus its settings.
# docker-debian builds the Debian image on the daemon docker started.
for backend in docker docker-debian sshd azurite; do
  if [ -f "scripts/provision/$backend.sh" ]; then
    step "provision: $backend"
    # shellcheck source=/dev/null
    source "scripts/provision/$backend.sh"
  fi
done

if [ "$MODE" = bench ]; then
  step "benchmarks (release build)"
  cargo run --release --quiet -p runner-bench | tee "$LOG_DIR/bench.log"
  exit "${PIPESTATUS[0]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (every crate, every test, conformance runs included)"
# Variables no command may inherit from this process (exec_host_env_not_inherited).
RUNNER_CONFORMANCE_HOST_MARKER="host-marker-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
RUNNER_SECRET_CONFORMANCE_TOKEN_KEY="secret-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
export RUNNER_CONFORMANCE_HOST_MARKER RUNNER_SECRET_CONFORMANCE_TOKEN_KEY
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$LOG_DIR/test.log"
test_status=${PIPESTATUS[0]}
set -e

step "quickstart example"
cargo run --quiet --example quickstart | tee "$LOG_DIR/quickstart.log"
grep -q '^session closed$' "$LOG_DIR/quickstart.log" || die "the quickstart did not finish"

step "conformance report"
summary_line='^[a-z0-9][a-z0-9-]*: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$'
report=$(grep -E "$summary_line" "$LOG_DIR/test.log" || true)
[ -n "$report" ] || die "no conformance summary line found in the test output"
printf '%s\n' "$report"
if [ "$test_status" -ne 0 ]; then
  die "cargo test failed (exit $test_status); see $LOG_DIR/test.log"
fi
