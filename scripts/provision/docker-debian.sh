# Provisions a Debian image for the docker provider's tests: a real distribution
# with python3, so the commands agents typically run (`python3 -c`, scripts,
# `python3 -m unittest`, `python3 -m http.server`) are exercised, where the
# busybox image has none. Packages: Debian's minbase variant plus python3 and
# netcat-traditional: the docker provider's expose_port runs `nc` in the
# container for each connection, and netcat-openbsd's nc (Debian's default)
# keeps a connection open after the server closed it until its own stdin ends.
# Sourced by scripts/test.sh after scripts/provision/docker.sh (which sets
# DOCKER_CLI and DOCKER_SOCKET; scripts/test.sh defines `ensure_packages`, `step`
# and `die`); idempotent and cached:
#
# - reuses the image $DEBIAN_TEST_IMAGE when it carries the label
#   io.runners.test-image=$DEBIAN_TEST_IMAGE_REVISION;
# - otherwise imports the root filesystem tar cached under
#   $RUNNER_TEST_CACHE_DIR (default /var/cache/runners-test) when it is there;
# - otherwise installs debootstrap with apt, runs `debootstrap --variant=minbase
#   --include=$DEBIAN_TEST_PACKAGES bookworm` from the Debian mirror apt uses on
#   this machine (RUNNER_TEST_DEBIAN_MIRROR overrides it), keeps the tar in the
#   cache and imports it with `docker import`;
# - exports RUNNER_TEST_DOCKER_DEBIAN=1 and RUNNER_TEST_DOCKER_DEBIAN_IMAGE.
#
# Requested unless RUNNER_TEST_DOCKER_DEBIAN=0 is set before the run; when
# requested and impossible (no root, no mirror, debootstrap fails) the run fails.
# A first build downloads about 45 MiB of packages and takes one to two
# minutes here; later runs reuse the image (or the cached tar) in a second or two.

DEBIAN_TEST_SUITE=bookworm
# Bumped whenever the image's contents change, so an older image and tar are rebuilt.
DEBIAN_TEST_IMAGE_REVISION=1
DEBIAN_TEST_IMAGE="runners-test-debian:$DEBIAN_TEST_SUITE-r$DEBIAN_TEST_IMAGE_REVISION"
DEBIAN_TEST_CACHE_DIR=${RUNNER_TEST_CACHE_DIR:-/var/cache/runners-test}
DEBIAN_TEST_PACKAGES=python3,netcat-traditional
DEBIAN_TEST_ROOTFS_TAR="$DEBIAN_TEST_CACHE_DIR/debian-$DEBIAN_TEST_SUITE-r$DEBIAN_TEST_IMAGE_REVISION.tar"

# debian_apt_mirror: prints the first Debian archive URI apt's sources name for
# the suite's main component (one-line .list entries and deb822 .sources
# stanzas), without the security and updates archives.
debian_apt_mirror() {
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    awk -v suite="$DEBIAN_TEST_SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        uri = $i; dist = $(i + 1)
        if (dist != suite) next
        for (j = i + 2; j <= NF; j++) if ($j == "main") { print uri; exit }
      }' "$file"
  done
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$DEBIAN_TEST_SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && suites ~ ("(^| )" suite "( |$)") \
            && components ~ /(^| )main( |$)/) { split(uris, u, " "); print u[1]; found = 1 }
        types = uris = suites = components = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); if (found) exit; next }
      {
        key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
        if (key == "types") types = $0
        else if (key == "uris") uris = $0
        else if (key == "suites") suites = $0
        else if (key == "components") components = $0
        else if (key == "enabled") enabled = tolower($0)
      }
      END { if (!found) flush() }' "$file"
  done
}

# build_debian_rootfs_tar: debootstraps the root filesystem and writes it to
# $DEBIAN_TEST_ROOTFS_TAR (through a temporary name, so a failed build leaves
# no tar behind).
build_debian_rootfs_tar() {
  [ "$(id -u)" -eq 0 ] || die "building $DEBIAN_TEST_IMAGE with debootstrap needs root"
  command -v apt-get >/dev/null 2>&1 || die "debootstrap is needed to build $DEBIAN_TEST_IMAGE and apt-get is not available"
  ensure_packages debootstrap
  local mirror=${RUNNER_TEST_DEBIAN_MIRROR:-}
  [ -n "$mirror" ] || mirror=$(debian_apt_mirror | head -n 1)
  [ -n "$mirror" ] || die "no Debian mirror for $DEBIAN_TEST_SUITE main in /etc/apt/sources.list{,.d/*}; set RUNNER_TEST_DEBIAN_MIRROR"
  # debootstrap fetches with wget, which checks an https mirror's certificate.
  case "$mirror" in https:*) ensure_packages ca-certificates ;; esac
  mkdir -p "$DEBIAN_TEST_CACHE_DIR"
  local build
  build=$(mktemp -d "$DEBIAN_TEST_CACHE_DIR/build.XXXXXX")
  mkdir -p target/test-logs
  echo "debootstrap $DEBIAN_TEST_SUITE (minbase + $DEBIAN_TEST_PACKAGES) from $mirror (log: target/test-logs/debootstrap.log)"
  if ! debootstrap --variant=minbase --include="$DEBIAN_TEST_PACKAGES" "$DEBIAN_TEST_SUITE" "$build/rootfs" "$mirror" \
      >target/test-logs/debootstrap.log 2>&1; then
    rm -rf "$build"
    die "debootstrap of $DEBIAN_TEST_SUITE from $mirror failed; see target/test-logs/debootstrap.log"
  fi
  # Downloaded packages and package lists only make the image larger.
  rm -rf "$build/rootfs/var/cache/apt/archives/"*.deb "$build/rootfs/var/lib/apt/lists/"*
  tar -C "$build/rootfs" -c . >"$build/rootfs.tar" || { rm -rf "$build"; die "packing the $DEBIAN_TEST_SUITE root filesystem failed"; }
  mv -f "$build/rootfs.tar" "$DEBIAN_TEST_ROOTFS_TAR"
  rm -rf "$build"
}

if [ "${RUNNER_TEST_DOCKER_DEBIAN:-1}" = 0 ]; then
  echo "RUNNER_TEST_DOCKER_DEBIAN=0: the Debian image is not built and its tests are not run"
else
  [ -n "${DOCKER_CLI:-}" ] || die "scripts/provision/docker-debian.sh needs scripts/provision/docker.sh sourced first"
  current_revision=$("$DOCKER_CLI" -H "unix://$DOCKER_SOCKET" image inspect \
    -f '{{ index .Config.Labels "io.runners.test-image" }}' "$DEBIAN_TEST_IMAGE" 2>/dev/null || true)
  if [ "$current_revision" != "$DEBIAN_TEST_IMAGE_REVISION" ]; then
    [ -s "$DEBIAN_TEST_ROOTFS_TAR" ] || build_debian_rootfs_tar
    echo "importing $DEBIAN_TEST_IMAGE from $DEBIAN_TEST_ROOTFS_TAR"
    "$DOCKER_CLI" -H "unix://$DOCKER_SOCKET" import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/bash"]' \
      -c "LABEL io.runners.test-image=$DEBIAN_TEST_IMAGE_REVISION" \
      "$DEBIAN_TEST_ROOTFS_TAR" "$DEBIAN_TEST_IMAGE" >/dev/null \
      || die "docker import of $DEBIAN_TEST_IMAGE from $DEBIAN_TEST_ROOTFS_TAR failed"
  fi
  export RUNNER_TEST_DOCKER_DEBIAN=1
  export RUNNER_TEST_DOCKER_DEBIAN_IMAGE="$DEBIAN_TEST_IMAGE"
fi
