# Provisions an OpenSSH server on 127.0.0.1 for the ssh provider's tests.
# Sourced by scripts/test.sh (which defines `ensure_packages`, `step` and `die`);
# idempotent: a second run reuses the running server or restarts its own.
#
# - installs openssh-server and openssh-client with apt when they are missing;
# - creates the test user `runner-test` (shell /bin/sh, unlocked for key login);
# - generates a throwaway host key and client key under /tmp/runners-test-sshd;
# - starts /usr/sbin/sshd on a free 127.0.0.1 port with its own sshd_config
#   (KexAlgorithms curve25519-sha256, keys only, TCP forwarding allowed);
# - writes a known_hosts file for it and exports RUNNER_TEST_SSH=1 with
#   RUNNER_TEST_SSH_HOST, _PORT, _USER, _KEY (identity file) and _KNOWN_HOSTS.
#
# Needs root (it adds a user and runs sshd). Nothing listens beyond loopback.

SSHD_TEST_DIR=/tmp/runners-test-sshd
SSHD_TEST_USER=runner-test

[ "$(id -u)" -eq 0 ] || die "provisioning sshd needs root (it creates the user $SSHD_TEST_USER)"
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "openssh is not installed and apt-get is not available"
  ensure_packages openssh-server openssh-client
fi
[ -x /usr/lib/openssh/sftp-server ] || die "/usr/lib/openssh/sftp-server is missing (package openssh-sftp-server)"

if ! getent passwd "$SSHD_TEST_USER" >/dev/null; then
  useradd --create-home --shell /bin/sh "$SSHD_TEST_USER"
fi
# With UsePAM no a locked account is refused: give it a password hash that
# matches nothing, which unlocks key logins only.
usermod -s /bin/sh -p '*' "$SSHD_TEST_USER"
SSHD_TEST_HOME=$(getent passwd "$SSHD_TEST_USER" | cut -d: -f6)
mkdir -p "$SSHD_TEST_HOME"
chown "$SSHD_TEST_USER:" "$SSHD_TEST_HOME"

mkdir -p "$SSHD_TEST_DIR" /run/sshd
chmod 755 "$SSHD_TEST_DIR"
[ -f "$SSHD_TEST_DIR/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C runners-test-host -f "$SSHD_TEST_DIR/host_key"
[ -f "$SSHD_TEST_DIR/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C runners-test-client -f "$SSHD_TEST_DIR/client_key"
chmod 600 "$SSHD_TEST_DIR/host_key" "$SSHD_TEST_DIR/client_key"
cp "$SSHD_TEST_DIR/client_key.pub" "$SSHD_TEST_DIR/authorized_keys"
chmod 644 "$SSHD_TEST_DIR/authorized_keys"

# port_answers PORT : whether something accepts TCP connections on 127.0.0.1:PORT.
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sshd_running() {
  [ -f "$SSHD_TEST_DIR/sshd.pid" ] && [ -f "$SSHD_TEST_DIR/port" ] || return 1
  local pid
  pid=$(cat "$SSHD_TEST_DIR/sshd.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && grep -q "sshd_config" "/proc/$pid/cmdline" 2>/dev/null \
    && port_answers "$(cat "$SSHD_TEST_DIR/port")"
}

if sshd_running; then
  SSHD_TEST_PORT=$(cat "$SSHD_TEST_DIR/port")
  echo "reusing sshd on 127.0.0.1:$SSHD_TEST_PORT (pid $(cat "$SSHD_TEST_DIR/sshd.pid"))"
else
  # Stop a previous server of ours that no longer answers.
  if [ -f "$SSHD_TEST_DIR/sshd.pid" ]; then
    old=$(cat "$SSHD_TEST_DIR/sshd.pid")
    if [ -n "$old" ] && grep -q "$SSHD_TEST_DIR/sshd_config" "/proc/$old/cmdline" 2>/dev/null; then
      kill "$old" 2>/dev/null || true
    fi
    rm -f "$SSHD_TEST_DIR/sshd.pid"
  fi
  SSHD_TEST_PORT=
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if ! port_answers "$candidate"; then
      SSHD_TEST_PORT=$candidate
      break
    fi
  done
  [ -n "$SSHD_TEST_PORT" ] || die "no free 127.0.0.1 port found for sshd"
  cat >"$SSHD_TEST_DIR/sshd_config" <<EOF
Port $SSHD_TEST_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_TEST_DIR/host_key
PidFile $SSHD_TEST_DIR/sshd.pid
AuthorizedKeysFile $SSHD_TEST_DIR/authorized_keys
KexAlgorithms curve25519-sha256
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers $SSHD_TEST_USER
AllowTcpForwarding yes
MaxSessions 200
MaxStartups 100:30:200
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  /usr/sbin/sshd -t -f "$SSHD_TEST_DIR/sshd_config" || die "the test sshd_config is invalid"
  /usr/sbin/sshd -f "$SSHD_TEST_DIR/sshd_config" -E "$SSHD_TEST_DIR/sshd.log"
  for _ in $(seq 1 100); do
    port_answers "$SSHD_TEST_PORT" && break
    sleep 0.1
  done
  port_answers "$SSHD_TEST_PORT" || die "sshd did not start on 127.0.0.1:$SSHD_TEST_PORT (see $SSHD_TEST_DIR/sshd.log)"
  echo "$SSHD_TEST_PORT" >"$SSHD_TEST_DIR/port"
  echo "started sshd on 127.0.0.1:$SSHD_TEST_PORT (log: $SSHD_TEST_DIR/sshd.log)"
fi

printf '[127.0.0.1]:%s %s\n' "$SSHD_TEST_PORT" "$(cut -d' ' -f1-2 "$SSHD_TEST_DIR/host_key.pub")" \
  >"$SSHD_TEST_DIR/known_hosts"

export RUNNER_TEST_SSH=1
export RUNNER_TEST_SSH_HOST=127.0.0.1
export RUNNER_TEST_SSH_PORT="$SSHD_TEST_PORT"
export RUNNER_TEST_SSH_USER="$SSHD_TEST_USER"
export RUNNER_TEST_SSH_KEY="$SSHD_TEST_DIR/client_key"
export RUNNER_TEST_SSH_KNOWN_HOSTS="$SSHD_TEST_DIR/known_hosts"
