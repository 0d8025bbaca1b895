#!/usr/bin/env bash
# Runs every percore test from a fresh clone: installs what the tests need, then
# runs the unit and integration tests (release build: the end-to-end tests push
# real load through loopback, and debug builds make deadlines flaky).
set -euo pipefail
cd "$(dirname "$0")/.."

# glommio needs locked memory for io_uring: ~1 MiB per executor, 4-6 executors per test.
if [ "$(ulimit -l)" != "unlimited" ] && [ "$(ulimit -l)" -lt 8192 ]; then
  ulimit -l 8192 2>/dev/null || echo "warning: ulimit -l is $(ulimit -l) KiB; glommio executors may fail to start" >&2
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# tests/report_html.rs opens report.html in headless Chromium: Debian's package.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium for tests/report_html.rs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# tests/gateway.rs routes calls through a real nginx (grpc_pass), which it starts
# itself from examples/nginx/percore-gateway.conf: Debian's package.
if [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx for tests/gateway.rs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi

# tests/mlserver.rs runs a real inference server (MLServer) and a data source written
# in Python (examples/python/): a venv in this checkout's target/, with the pins of
# examples/python/requirements.txt, made again only when they change, and the gRPC
# stubs generated into examples/python/generated/. The tests find it by
# PERCORE_TEST_VENV; one given that way is used as it is, never rebuilt here.
venv="${PERCORE_TEST_VENV:-$PWD/target/percore-venv}"
requirements=examples/python/requirements.txt
venv_stamp="$venv/.percore-requirements"
if [ -z "${PERCORE_TEST_VENV:-}" ] && { [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv_stamp"; }; then
  echo "setting up $venv for tests/mlserver.rs:" $(grep -v '^#' "$requirements") >&2
  rm -rf "$venv"
  venv_python=python3
  # Debian's python3 makes no venv without python3-venv (no ensurepip).
  if ! "$venv_python" -m venv "$venv" >/dev/null 2>&1; then
    echo "installing python3-venv for tests/mlserver.rs" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    rm -rf "$venv"
    venv_python=/usr/bin/python3
    "$venv_python" -m venv "$venv"
  fi
  venv_started=$SECONDS
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$venv_stamp"
  echo "venv ready in $((SECONDS - venv_started)) s" >&2
fi
"$venv/bin/python" examples/python/generate_stubs.py
export PERCORE_TEST_VENV="$venv"

# tests/postgres.rs runs against a real PostgreSQL: a throwaway server started here,
# as the unprivileged `postgres` user the Debian package creates, in a temporary
# directory, on a free loopback port; stopped and removed when this script exits.
pg_bin=""
find_pg_bin() {
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/pg_ctl" ]
}
if ! find_pg_bin; then
  echo "installing postgresql for tests/postgres.rs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  find_pg_bin || { echo "error: no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2; exit 1; }
fi
pg_dir="$(mktemp -d /tmp/percore-pg.XXXXXX)"
pg_data="$pg_dir/data"
# PostgreSQL refuses to run as root: as root, run it as `postgres`; otherwise as us.
pg_os_user="$(id -un)"
if [ "$(id -u)" = 0 ]; then pg_os_user=postgres; fi
# From /, which `postgres` can enter (it may not read this checkout).
pg_as() { (cd / && if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi); }
stop_pg() {
  pg_as "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap stop_pg EXIT
chown "$pg_os_user": "$pg_dir"
pg_as "$pg_bin/initdb" -D "$pg_data" -U percore_admin -A trust --no-sync >"$pg_dir/initdb.log" 2>&1 ||
  { cat "$pg_dir/initdb.log" >&2; exit 1; }
# Trust for the test roles; a password (SCRAM) for the role the wrong-credentials
# test logs in as. Loopback only.
cat >"$pg_data/pg_hba.conf" <<'HBA'
local all all                         trust
host  all percore_password 127.0.0.1/32 scram-sha-256
host  all all              127.0.0.1/32 trust
HBA
pg_port=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))"
  # In postgresql.conf, so a test's plain `pg_ctl -D … start` comes back on the same port.
  # fsync off: a throwaway server; a stopped server (any mode) still loses nothing.
  cat >"$pg_data/percore-test.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pg_dir'
max_connections = 200
fsync = off
CONF
  grep -q "^include 'percore-test.conf'" "$pg_data/postgresql.conf" ||
    echo "include 'percore-test.conf'" >>"$pg_data/postgresql.conf"
  if pg_as "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_dir/server.log" -w -t 30 start >/dev/null; then
    pg_port="$port"
    break
  fi
done
[ -n "$pg_port" ] || { echo "error: the test PostgreSQL did not start:" >&2; cat "$pg_dir/server.log" >&2; exit 1; }
pg_password="percore-test-$RANDOM$RANDOM"
"$pg_bin/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U percore_admin -d postgres <<SQL
CREATE ROLE percore_test LOGIN CREATEDB;
CREATE ROLE percore_password LOGIN PASSWORD '$pg_password';
SQL
export PERCORE_TEST_PG_URL="postgresql://percore_test@127.0.0.1:$pg_port/postgres"
export PERCORE_TEST_PG_PASSWORD_USER=percore_password
export PERCORE_TEST_PG_PASSWORD="$pg_password"
# So a test can stop and start the server: `runuser -u $PERCORE_TEST_PG_OS_USER --
# $PERCORE_TEST_PG_CTL -D $PERCORE_TEST_PG_DATA -m fast stop` (and `-w start`).
export PERCORE_TEST_PG_CTL="$pg_bin/pg_ctl"
export PERCORE_TEST_PG_DATA="$pg_data"
export PERCORE_TEST_PG_OS_USER="$pg_os_user"
echo "test PostgreSQL on 127.0.0.1:$pg_port (data in $pg_data)" >&2

# tests/cluster_*.rs run against a real etcd (Debian's etcd-server, 3.4): each test
# starts its own members on free loopback ports (tests/common/etcd.rs), so only the
# binary is needed here. PERCORE_TEST_ETCD names another one.
if [ -z "${PERCORE_TEST_ETCD:-}" ] && ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd-server for tests/cluster_*.rs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  # The package may start a system etcd on the default ports; the tests use their own.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
fi

# Two test processes at a time: each starts shard and mock executors pinned to the
# two cores, and the locked-memory budget is per process.
cargo nextest run --release --no-fail-fast --test-threads 2 "$@"
