# Provisions Azurite, Microsoft's Azure Storage emulator, on 127.0.0.1 for the
# tests of az:// mounts and artifact stores. Sourced by scripts/test.sh (which
# defines `ensure_packages`, `step` and `die`); idempotent: a second run reuses
# the running emulator or restarts its own.
#
# - installs nodejs and npm with apt when `node` or `npm` is missing;
# - installs pinned versions of azurite and @azure/storage-blob (the official
#   JavaScript SDK, used here only to create the test container) with npm into
#   /opt/runners-test-azurite, off PATH;
# - starts azurite-blob on a free 127.0.0.1 port with its data under
#   /tmp/runners-test-azurite (telemetry off, API version check skipped, since
#   object_store may send a newer x-ms-version than the emulator knows);
# - creates the container `runners-test` with the well-known development
#   account and exports RUNNER_TEST_AZURITE=1 with RUNNER_TEST_AZURITE_ENDPOINT,
#   _ACCOUNT, _KEY and _CONTAINER.
#
# The account key is Azurite's documented development key, the same on every
# installation; it is exported for the tests but never printed. Nothing listens
# beyond loopback.

AZURITE_VERSION=3.35.0
AZURITE_SDK_VERSION=12.27.0
AZURITE_PREFIX=/opt/runners-test-azurite
AZURITE_TEST_DIR=/tmp/runners-test-azurite
AZURITE_TEST_ACCOUNT=devstoreaccount1
AZURITE_TEST_CONTAINER=runners-test
# Azurite's well-known development account key (public, documented by Microsoft).
AZURITE_TEST_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# Debian 12 ships node 18; azurite 3.35 and the SDK below run on 18 and newer.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "node and npm are not installed and apt-get is not available"
  command -v node >/dev/null 2>&1 || ensure_packages nodejs
  command -v npm >/dev/null 2>&1 || ensure_packages npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]') || die "node does not run"
[ "$node_major" -ge 18 ] || die "azurite $AZURITE_VERSION needs node 18 or newer (found $(node --version))"

# azurite_installed PACKAGE VERSION : whether the prefix holds that exact version.
azurite_installed() {
  local manifest="$AZURITE_PREFIX/node_modules/$1/package.json"
  [ -f "$manifest" ] && [ "$(node -p "require('$manifest').version" 2>/dev/null)" = "$2" ]
}

if ! azurite_installed azurite "$AZURITE_VERSION" \
  || ! azurite_installed @azure/storage-blob "$AZURITE_SDK_VERSION"; then
  mkdir -p "$AZURITE_PREFIX" 2>/dev/null && [ -w "$AZURITE_PREFIX" ] \
    || die "cannot write $AZURITE_PREFIX to install azurite: run as root"
  echo "installing azurite $AZURITE_VERSION and @azure/storage-blob $AZURITE_SDK_VERSION into $AZURITE_PREFIX"
  npm install --prefix "$AZURITE_PREFIX" --no-audit --no-fund --omit=dev --save-exact --loglevel=error \
    "azurite@$AZURITE_VERSION" "@azure/storage-blob@$AZURITE_SDK_VERSION" >/dev/null \
    || die "npm could not install azurite $AZURITE_VERSION into $AZURITE_PREFIX"
fi
AZURITE_BLOB="$AZURITE_PREFIX/node_modules/.bin/azurite-blob"
[ -x "$AZURITE_BLOB" ] || die "$AZURITE_BLOB is missing after the install"

# azurite_port_answers PORT : whether something accepts TCP connections on 127.0.0.1:PORT.
azurite_port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether our emulator (this version, this data directory) is up and answering.
azurite_running() {
  [ -f "$AZURITE_TEST_DIR/azurite.pid" ] && [ -f "$AZURITE_TEST_DIR/port" ] || return 1
  [ "$(cat "$AZURITE_TEST_DIR/version" 2>/dev/null)" = "$AZURITE_VERSION" ] || return 1
  local pid
  pid=$(cat "$AZURITE_TEST_DIR/azurite.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--location $AZURITE_TEST_DIR/data" \
    && azurite_port_answers "$(cat "$AZURITE_TEST_DIR/port")"
}

mkdir -p "$AZURITE_TEST_DIR/data"
if azurite_running; then
  AZURITE_TEST_PORT=$(cat "$AZURITE_TEST_DIR/port")
  echo "reusing azurite on 127.0.0.1:$AZURITE_TEST_PORT (pid $(cat "$AZURITE_TEST_DIR/azurite.pid"))"
else
  # Stop a previous emulator of ours that no longer answers or is outdated.
  if [ -f "$AZURITE_TEST_DIR/azurite.pid" ]; then
    old=$(cat "$AZURITE_TEST_DIR/azurite.pid")
    if [ -n "$old" ] && tr '\0' ' ' 2>/dev/null <"/proc/$old/cmdline" \
      | grep -qF -- "--location $AZURITE_TEST_DIR/data"; then
      kill "$old" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$old" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -f "$AZURITE_TEST_DIR/azurite.pid"
  fi
  AZURITE_TEST_PORT=
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if ! azurite_port_answers "$candidate"; then
      AZURITE_TEST_PORT=$candidate
      break
    fi
  done
  [ -n "$AZURITE_TEST_PORT" ] || die "no free 127.0.0.1 port found for azurite"
  nohup "$AZURITE_BLOB" --blobHost 127.0.0.1 --blobPort "$AZURITE_TEST_PORT" \
    --location "$AZURITE_TEST_DIR/data" --silent --skipApiVersionCheck --disableTelemetry \
    </dev/null >"$AZURITE_TEST_DIR/azurite.log" 2>&1 &
  echo "$!" >"$AZURITE_TEST_DIR/azurite.pid"
  for _ in $(seq 1 300); do
    azurite_port_answers "$AZURITE_TEST_PORT" && break
    kill -0 "$(cat "$AZURITE_TEST_DIR/azurite.pid")" 2>/dev/null || break
    sleep 0.1
  done
  azurite_port_answers "$AZURITE_TEST_PORT" \
    || die "azurite did not start on 127.0.0.1:$AZURITE_TEST_PORT (see $AZURITE_TEST_DIR/azurite.log)"
  echo "$AZURITE_TEST_PORT" >"$AZURITE_TEST_DIR/port"
  echo "$AZURITE_VERSION" >"$AZURITE_TEST_DIR/version"
  echo "started azurite $AZURITE_VERSION on 127.0.0.1:$AZURITE_TEST_PORT (log: $AZURITE_TEST_DIR/azurite.log)"
fi

# Azurite serves accounts path-style: the account is the URL's first segment.
AZURITE_TEST_ENDPOINT="http://127.0.0.1:$AZURITE_TEST_PORT/$AZURITE_TEST_ACCOUNT"

# Creating a container needs a signed request: the SDK signs it. The key goes
# through the environment, not the command line. Node 18 has no global
# `crypto`, which the SDK's HTTP runtime expects; the polyfill is Node's own.
AZURITE_KEY="$AZURITE_TEST_KEY" NODE_PATH="$AZURITE_PREFIX/node_modules" node -e '
globalThis.crypto ??= require("node:crypto").webcrypto;
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");
const [endpoint, account, container] = process.argv.slice(1);
const credential = new StorageSharedKeyCredential(account, process.env.AZURITE_KEY);
new BlobServiceClient(endpoint, credential, { retryOptions: { maxTries: 5 } })
  .getContainerClient(container)
  .createIfNotExists()
  .then(
    (created) => console.log(`container ${container}: ${created.succeeded ? "created" : "exists"}`),
    (error) => { console.error(`creating container ${container}: ${error.message}`); process.exit(1); });
' "$AZURITE_TEST_ENDPOINT" "$AZURITE_TEST_ACCOUNT" "$AZURITE_TEST_CONTAINER" \
  || die "could not create the container $AZURITE_TEST_CONTAINER on azurite (see $AZURITE_TEST_DIR/azurite.log)"

export RUNNER_TEST_AZURITE=1
export RUNNER_TEST_AZURITE_ENDPOINT="$AZURITE_TEST_ENDPOINT"
export RUNNER_TEST_AZURITE_ACCOUNT="$AZURITE_TEST_ACCOUNT"
export RUNNER_TEST_AZURITE_KEY="$AZURITE_TEST_KEY"
export RUNNER_TEST_AZURITE_CONTAINER="$AZURITE_TEST_CONTAINER"
