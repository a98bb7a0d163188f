# Provisions a Docker daemon and the busybox test image for the docker provider's
# tests. Sourced by scripts/test.sh (which defines `ensure_packages`, `step` and
# `die`); idempotent, so it can run before every test run.
#
# - installs docker.io with apt when dockerd is missing (root, Debian);
# - starts dockerd in the background when the socket does not answer, and waits;
# - builds `runners-test-busybox:latest` from Debian's busybox-static with
#   `docker import` when it is missing (no registry is needed);
# - exports RUNNER_TEST_DOCKER=1 and RUNNER_TEST_DOCKER_IMAGE.
#
# The docker CLI is used here only; the provider itself talks to the API.

DOCKER_TEST_IMAGE=runners-test-busybox:latest
DOCKER_SOCKET=/var/run/docker.sock

if ! command -v dockerd >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "dockerd is not installed and apt-get is not available"
  ensure_packages docker.io
fi
if command -v apt-get >/dev/null 2>&1; then
  # iproute2: the daemon-restart test gives its own dockerd a bridge of its own.
  ensure_packages busybox-static iproute2
fi
command -v busybox >/dev/null 2>&1 || die "busybox is not installed (package busybox-static)"

# The CLI shipped with docker.io matches the daemon's API; a newer CLI elsewhere
# on PATH negotiates down, but prefer the packaged one when it is there.
if [ -x /usr/bin/docker ]; then
  DOCKER_CLI=/usr/bin/docker
else
  DOCKER_CLI=$(command -v docker) || die "the docker CLI is not installed (package docker.io)"
fi

docker_answers() { "$DOCKER_CLI" -H "unix://$DOCKER_SOCKET" version >/dev/null 2>&1; }

if ! docker_answers; then
  [ "$(id -u)" -eq 0 ] || die "dockerd is not running and starting it needs root"
  mkdir -p target/test-logs
  echo "starting dockerd (log: target/test-logs/dockerd.log)"
  nohup dockerd --host "unix://$DOCKER_SOCKET" >target/test-logs/dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker_answers && break
    sleep 0.5
  done
  docker_answers || die "dockerd did not answer on $DOCKER_SOCKET within 60 s; see target/test-logs/dockerd.log"
fi

# Bumped whenever the image's contents change, so an older image is rebuilt.
DOCKER_TEST_IMAGE_REVISION=2
current_revision=$("$DOCKER_CLI" -H "unix://$DOCKER_SOCKET" image inspect \
  -f '{{ index .Config.Labels "io.runners.test-image" }}' "$DOCKER_TEST_IMAGE" 2>/dev/null || true)
if [ "$current_revision" != "$DOCKER_TEST_IMAGE_REVISION" ]; then
  echo "building $DOCKER_TEST_IMAGE from busybox-static"
  busybox_bin=$(command -v busybox) || die "busybox is not installed (package busybox-static)"
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/workspace"
  cp "$busybox_bin" "$rootfs/bin/busybox"
  for applet in $("$busybox_bin" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  # busybox has no cksum (the conformance kit checks large stdin with it):
  # add coreutils' with the libraries it links.
  if [ -x /usr/bin/cksum ]; then
    cp /usr/bin/cksum "$rootfs/bin/cksum"
    for lib in $(ldd /usr/bin/cksum | grep -o '/[^ ]*'); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  fi
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  tar -C "$rootfs" -c . | "$DOCKER_CLI" -H "unix://$DOCKER_SOCKET" import \
    -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' \
    -c "LABEL io.runners.test-image=$DOCKER_TEST_IMAGE_REVISION" - "$DOCKER_TEST_IMAGE" >/dev/null \
    || die "docker import of $DOCKER_TEST_IMAGE failed"
  rm -rf "$rootfs"
fi

export RUNNER_TEST_DOCKER=1
export RUNNER_TEST_DOCKER_IMAGE="$DOCKER_TEST_IMAGE"
