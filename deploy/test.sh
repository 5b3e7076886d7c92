#!/usr/bin/env bash
# deploy/test.sh: every check of the project. Formatting, lints with warnings denied, then the
# whole test suite, whose end-to-end tests run against a real Kafka broker that this script
# starts on its own port (KAFKA_PORT, default 19092) and stops on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export KAFKA_PORT=${TEST_KAFKA_PORT:-19092}

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy (warnings denied)" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings

results=$(mktemp)
cleanup() {
  local status=$?
  deploy/kafka.sh stop || true
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

echo "test: cargo test against the broker at 127.0.0.1:$KAFKA_PORT" >&2
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT cargo test --workspace -- --test-threads 2 2>&1 | tee "$results"
