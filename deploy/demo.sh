#!/usr/bin/env bash
# deploy/demo.sh: the main job. Brings up Kafka, ingest, projector and query API on this machine,
# loads the two real data sets into two tenants through ingest, and prints the read models'
# answers next to the exact values computed from the files.
#
# Every run starts from an empty broker and an empty store, so the numbers are those of the
# files alone. Everything it started is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

data_dir=${DATA_DIR:-$root/../shared/data}
access_log=$data_dir/access-log-2015-05.log.gz
edits=$data_dir/wikipedia-edits-2015-09-12.ndjson.gz
export KAFKA_PORT=${KAFKA_PORT:-9092}
run_dir=$root/var/demo
bin=${CARGO_TARGET_DIR:-$root/target}/release

for file in "$access_log" "$edits"; do
  [ -r "$file" ] || { echo "demo: cannot read $file (set DATA_DIR to the folder holding it)" >&2; exit 1; }
done

say() { printf 'demo: %s\n' "$*" >&2; }

if ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "demo: curl is missing: install it" >&2
    exit 1
  fi
fi

say "building the release binaries"
cargo build --release --quiet -p ingest -p projector -p query-api -p produce

pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  deploy/kafka.sh stop || true
  exit "$status"
}
trap cleanup EXIT INT TERM

say "starting a fresh Kafka broker on 127.0.0.1:$KAFKA_PORT"
KAFKA_FRESH=1 deploy/kafka.sh start
deploy/kafka.sh create-topic events 4
deploy/kafka.sh create-topic events.dead-letter 1

rm -rf "$run_dir"
mkdir -p "$run_dir/logs"
brokers=127.0.0.1:$KAFKA_PORT
sed "s/^brokers = .*/brokers = \"$brokers\"/; s#^store_path = .*#store_path = \"var/demo/projector-1\"#" \
  deploy/projector.toml > "$run_dir/projector.toml"
sed "s/^brokers = .*/brokers = \"$brokers\"/" deploy/ingest.toml > "$run_dir/ingest.toml"

"$bin/ingest" --config "$run_dir/ingest.toml" >"$run_dir/logs/ingest.log" 2>&1 &
pids+=($!)
"$bin/projector" run --config "$run_dir/projector.toml" >"$run_dir/logs/projector.log" 2>&1 &
pids+=($!)
"$bin/query-api" --config deploy/query-api.toml >"$run_dir/logs/query-api.log" 2>&1 &
pids+=($!)

wait_for() {
  local url=$1 name=$2
  for _ in $(seq 1 120); do
    if curl -fsS "$url" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  say "$name did not become ready at $url; its log:"
  tail -n 30 "$run_dir/logs/$name.log" >&2
  return 1
}
wait_for http://127.0.0.1:8081/readyz ingest
wait_for http://127.0.0.1:8082/healthz projector
wait_for http://127.0.0.1:8083/healthz query-api
say "services up; logs in var/demo/logs"

weblog_key=weblog-demo-key-0001
wiki_key=wiki-demo-key-0001

say "loading $(basename "$access_log") into tenant weblog through ingest"
"$bin/produce" send --format access-log "$access_log" --ingest http://127.0.0.1:8081 --api-key "$weblog_key" >/dev/null
say "loading $(basename "$edits") into tenant wiki through ingest"
"$bin/produce" send --format wikipedia "$edits" --ingest http://127.0.0.1:8081 --api-key "$wiki_key" >/dev/null

say "waiting for the read models to catch up, then comparing with exact values"
echo
"$bin/produce" report --format access-log "$access_log" --query-api http://127.0.0.1:8083 \
  --api-key "$weblog_key" --tenant weblog
echo
"$bin/produce" report --format wikipedia "$edits" --query-api http://127.0.0.1:8083 \
  --api-key "$wiki_key" --tenant wiki
