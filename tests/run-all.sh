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

# Two test processes at a time: each starts shard and mock executors pinned to the
# two cores, and the locked-memory budget is per process.
cargo nextest run --release --no-fail-fast --test-threads 2 "$@"
