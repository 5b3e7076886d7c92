#!/usr/bin/env bash
# deploy/test.sh: every check of the project. Formatting, lints with warnings denied, then the
# whole test suite, whose end-to-end tests run against a real Kafka broker that this script
# starts on its own port (KAFKA_PORT, default 19092) and stops on exit. The shared rate-limit
# tests need a Redis server: one is started on TEST_REDIS_PORT (default 16379), without
# persistence, unless one already answers there, and stopped on exit; REDIS_URL points the tests
# at it. Then deploy/schemathesis.sh checks the running query API against its OpenAPI document
# (schemathesis, installed into a venv under ~/.cache/stream-pipeline; needs python3-venv), and
# deploy/test-dashboard.sh runs the dashboard page in headless Chromium against the Wikipedia
# edits in ../shared/data (DATA_DIR elsewhere; needs Node and npm).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export KAFKA_PORT=${TEST_KAFKA_PORT:-19092}
redis_port=${TEST_REDIS_PORT:-16379}
export REDIS_URL=redis://127.0.0.1:$redis_port/

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy (warnings denied)" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings

results=$(mktemp)
redis_dir=$(mktemp -d)
cleanup() {
  local status=$?
  deploy/kafka.sh stop || true
  # Only the Redis server this script started, by the pid it wrote.
  if [ -s "$redis_dir/redis.pid" ]; then
    kill "$(cat "$redis_dir/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$redis_dir"
  # One closing line for the whole run: the sum of every test binary's result line.
  if [ -s "$results" ]; then
    awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
  fi
  rm -f "$results"
  exit "$status"
}
trap cleanup EXIT INT TERM
KAFKA_FRESH=1 deploy/kafka.sh start

if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  echo "test: using the redis server already answering on 127.0.0.1:$redis_port" >&2
else
  if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian's redis-server" >&2
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  command -v redis-server >/dev/null || {
    echo "test: redis-server is missing: install it (apt-get install redis-server)" >&2
    exit 1
  }
  echo "test: starting redis on 127.0.0.1:$redis_port" >&2
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log" \
    --dir "$redis_dir"
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping >/dev/null || {
    echo "test: redis did not start on port $redis_port; its log:" >&2
    cat "$redis_dir/redis.log" >&2
    exit 1
  }
fi

python3 -c 'import datasketches' 2>/dev/null || pip install --quiet datasketches==5.2.0
# deploy/schemathesis.sh makes a venv, which needs ensurepip (Debian's python3-venv).
if ! python3 -c 'import ensurepip, venv' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing Debian's python3-venv" >&2
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
echo "test: cargo test against the broker at 127.0.0.1:$KAFKA_PORT and $REDIS_URL" >&2
cargo_status=0
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT cargo test --workspace --no-fail-fast -- --test-threads 2 2>&1 |
  tee "$results" || cargo_status=$?

# The query API against its OpenAPI document (deploy/schemathesis.sh). It counts as one test in
# the closing line: passed if schemathesis found no failure in any operation, failed otherwise.
echo "test: schemathesis against the query API, broker 127.0.0.1:$KAFKA_PORT" >&2
schemathesis_status=0
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT deploy/schemathesis.sh || schemathesis_status=$?
if [ "$schemathesis_status" = 0 ]; then
  echo "test result: ok. 1 passed; 0 failed (deploy/schemathesis.sh)" >>"$results"
else
  echo "test result: FAILED. 0 passed; 1 failed (deploy/schemathesis.sh)" >>"$results"
fi
# The dashboard page in a real headless Chromium against a pipeline fed with the Wikipedia edits
# (deploy/test-dashboard.sh, its own broker and ports); one test in the closing line. It needs
# Node and npm, and installs Debian's chromium when missing. Its screenshot goes to a temp file,
# so a test run leaves docs/dashboard.png alone.
echo "test: the dashboard in headless Chromium (deploy/test-dashboard.sh)" >&2
dashboard_status=0
SCREENSHOT=$redis_dir/dashboard.png deploy/test-dashboard.sh || dashboard_status=$?
if [ "$dashboard_status" = 0 ]; then
  echo "test result: ok. 1 passed; 0 failed (deploy/test-dashboard.sh)" >>"$results"
else
  echo "test result: FAILED. 0 passed; 1 failed (deploy/test-dashboard.sh)" >>"$results"
fi
[ "$cargo_status" = 0 ] && [ "$schemathesis_status" = 0 ] && [ "$dashboard_status" = 0 ]
