#!/usr/bin/env bash
# deploy/test-dashboard.sh: the dashboard page in a real headless Chromium against a real
# pipeline. Starts its own Kafka broker, projector and query API on their own ports (never the
# demo's), loads the demo's Wikipedia edits into tenant wiki straight to the topic, runs
# query-api/dashboard/tests/dashboard.test.mjs, which compares what the page draws with the
# API's answers and saves docs/dashboard.png, and stops everything it started on exit.
#
# Needs: Node 20 and npm (for playwright-core), Chromium (Debian's package is installed with
# apt-get when missing and running as root), Java and Maven for deploy/kafka.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

data_dir=${DATA_DIR:-$root/../shared/data}
edits=$data_dir/wikipedia-edits-2015-09-12.ndjson.gz
export KAFKA_PORT=${DASHBOARD_KAFKA_PORT:-49092}
export KAFKA_DATA_DIR=${TMPDIR:-/tmp}/stream-pipeline-kafka-dashboard-$KAFKA_PORT
projector_port=${DASHBOARD_PROJECTOR_PORT:-48082}
query_port=${DASHBOARD_QUERY_API_PORT:-48083}
screenshot=${SCREENSHOT:-$root/docs/dashboard.png}
bin=${CARGO_TARGET_DIR:-$root/target}/release
wiki_key=wiki-demo-key-0001

say() { printf 'test-dashboard: %s\n' "$*" >&2; }

[ -r "$edits" ] || { say "cannot read $edits (set DATA_DIR to the folder holding it)"; exit 1; }
for port in "$KAFKA_PORT" "$((KAFKA_PORT + 1))" "$projector_port" "$query_port"; do
  if ss -ltn "( sport = :$port )" | grep -q LISTEN; then
    say "port $port is taken: set DASHBOARD_KAFKA_PORT, DASHBOARD_PROJECTOR_PORT or DASHBOARD_QUERY_API_PORT"
    exit 1
  fi
done

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    say "chromium is missing: install it (apt-get install chromium) or set CHROMIUM"
    exit 1
  fi
fi

say "npm ci in query-api/dashboard"
(cd query-api/dashboard && npm ci --no-audit --no-fund --silent)

say "building the release binaries"
cargo build --release --quiet -p projector -p query-api -p produce

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/test-dashboard.XXXXXX")
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  deploy/kafka.sh stop || true
  if [ "$status" != 0 ]; then
    say "failed; last lines of the service logs:"
    tail -n 20 "$run_dir"/*.log >&2 || true
  fi
  rm -rf "$run_dir"
  exit "$status"
}
trap cleanup EXIT INT TERM

say "starting a fresh Kafka broker on 127.0.0.1:$KAFKA_PORT"
KAFKA_FRESH=1 deploy/kafka.sh start
deploy/kafka.sh create-topic events 4
deploy/kafka.sh create-topic events.dead-letter 1

brokers=127.0.0.1:$KAFKA_PORT
sed -e "s/^brokers = .*/brokers = \"$brokers\"/" \
  -e "s#^store_path = .*#store_path = \"$run_dir/projector\"#" \
  -e "s/^internal_listen = .*/internal_listen = \"127.0.0.1:$projector_port\"/" \
  deploy/projector.toml > "$run_dir/projector.toml"

"$bin/projector" run --config "$run_dir/projector.toml" >"$run_dir/projector.log" 2>&1 &
pids+=($!)
"$bin/query-api" --config deploy/query-api.toml --listen "127.0.0.1:$query_port" \
  --projector-url "http://127.0.0.1:$projector_port" >"$run_dir/query-api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$query_port/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done

say "loading $(basename "$edits") into tenant wiki"
"$bin/produce" send --format wikipedia "$edits" --kafka "$brokers" --tenant wiki >/dev/null

known_editor=$( (zcat "$edits" || true) | head -n 1 | node -e \
  'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).user))')

say "running the browser test"
QUERY_API_URL=http://127.0.0.1:$query_port API_KEY=$wiki_key SCREENSHOT=$screenshot \
  KNOWN_EDITOR=$known_editor CHROMIUM=$chromium \
  node query-api/dashboard/tests/dashboard.test.mjs
