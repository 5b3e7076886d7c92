#!/usr/bin/env bash
# Query latency and throughput of the query API over 30 days of hourly buckets.
#
# Starts its own broker (BENCH_KAFKA_PORT, default 19992), produces EVENTS synthetic page views
# (default 1,000,000) spread evenly over 30 days, folds them with a projector node (release
# build, deploy/projections.toml), starts the query API in front of it, and measures with oha:
#   - distinct over 1 day and over 30 days, top-10 paths over 30 days, and a 30-day series with
#     1-day steps, closed loop with BENCH_CONNECTIONS connections (the same URL again and again,
#     as a dashboard asks: answered from the query API's cache while no partition moves);
#   - the 30-day distinct query with a different `to` on every request (so the cache never
#     answers: every request merges the nodes' read models again);
#   - the 30-day distinct query at BENCH_RATE requests/s, open loop (latency counted from the
#     scheduled send time);
#   - the 30-day distinct query and series again, closed loop and at BENCH_RATE, while a second
#     producer streams BENCH_STREAM events a second into the window's last hour, as a live
#     dashboard sees: every partition moves, so the query API's cache never answers.
# Prints a table and rewrites the measured section of docs/query-benchmark.md.
#
# usage: deploy/bench-query.sh [EVENTS]
# environment: BENCH_KAFKA_PORT [19992], BENCH_DURATION_S [15], BENCH_CONNECTIONS [16],
#   BENCH_RATE [1000], BENCH_STREAM [2000], BENCH_TOOLS_DIR [$HOME/.cache/stream-pipeline/tools]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
events=${1:-1000000}
export KAFKA_PORT=${BENCH_KAFKA_PORT:-19992}
brokers=127.0.0.1:$KAFKA_PORT
duration_s=${BENCH_DURATION_S:-15}
connections=${BENCH_CONNECTIONS:-16}
rate=${BENCH_RATE:-1000}
stream=${BENCH_STREAM:-2000}
tools_dir=${BENCH_TOOLS_DIR:-$HOME/.cache/stream-pipeline/tools}
OHA_VERSION=1.10.0
oha=$tools_dir/bin/oha
run_dir=$root/var/bench-query
bin=${CARGO_TARGET_DIR:-$root/target}/release
say() { printf 'bench-query: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v jq >/dev/null || die "jq is needed to read oha's JSON output; install it (apt-get install jq)"
if [[ ! -x $oha ]] || ! "$oha" --version | grep -qF " $OHA_VERSION"; then
  say "installing oha $OHA_VERSION into $tools_dir (a few minutes)"
  cargo install oha --version "$OHA_VERSION" --locked --root "$tools_dir"
fi
say "building the release binaries"
cargo build --release --quiet -p projector -p query-api -p produce

pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  deploy/kafka.sh stop || true
  exit "$status"
}
trap cleanup EXIT INT TERM
KAFKA_FRESH=1 deploy/kafka.sh start
rm -rf "$run_dir"
mkdir -p "$run_dir"

deploy/kafka.sh create-topic qbench 4
deploy/kafka.sh create-topic qbench.dead-letter 1
say "producing $events synthetic events over 30 days"
"$bin/produce" synthetic --count "$events" --kafka "$brokers" --topic qbench --tenant bench \
  --span-days 30 >/dev/null

key=bench-query-key-$RANDOM$RANDOM
cat >"$run_dir/tenants.toml" <<TOML
[[tenant]]
name = "bench"
api_key_sha256 = ["$(printf %s "$key" | sha256sum | cut -d' ' -f1)"]
events_per_second = 1000
burst_events = 1000
TOML
projector_port=18982
query_port=18983
cat >"$run_dir/projector.toml" <<TOML
brokers = "$brokers"
topic = "qbench"
group_id = "bench-query"
store_path = "$run_dir/store"
projections_file = "deploy/projections.toml"
internal_listen = "127.0.0.1:$projector_port"
TOML
cat >"$run_dir/query-api.toml" <<TOML
listen = "127.0.0.1:$query_port"
projector_urls = ["http://127.0.0.1:$projector_port"]
tenants_file = "$run_dir/tenants.toml"
TOML

say "folding with a projector node"
RUST_LOG=warn "$bin/projector" run --config "$run_dir/projector.toml" 2>"$run_dir/projector.log" &
pids+=($!)
for _ in $(seq 600); do
  lag=$(curl -sf "http://127.0.0.1:$projector_port/internal/v1/partitions" |
    jq '(.partitions | length) as $n | [.partitions[] | select(.lag == null or .lag > 0)] | length + (if $n < 4 then 1 else 0 end)' || echo 1)
  [[ $lag == 0 ]] && break
  sleep 1
done
[[ $lag == 0 ]] || die "the projector did not catch up; see $run_dir/projector.log"
RUST_LOG=warn "$bin/query-api" --config "$run_dir/query-api.toml" 2>"$run_dir/query-api.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$query_port/healthz" >/dev/null && break
  sleep 0.2
done

day_from=1704067200000           # 2024-01-01T00:00:00Z
day_to=$((day_from + 86400000))
month_to=$((day_from + 30 * 86400000))
base="http://127.0.0.1:$query_port/v1/projections"
auth=(-H "Authorization: Bearer $key")
# Sanity: the 30-day distinct answer covers every event.
folded=$(curl -sf "${auth[@]}" "$base/visitors/distinct?from=$day_from&to=$month_to" | jq .events)
[[ $folded == "$events" ]] || die "the 30-day window holds $folded events, not $events"

# usage: measure NAME URL [oha args...]; keeps oha's JSON in $run_dir/NAME.json
measure() {
  local name=$1 url=$2
  shift 2
  # oha leaves the requests in flight at the end of a run to the server; let them finish first,
  # or the next run starts against a busy server (a slow series run's tail is seconds of CPU).
  sleep 2
  say "$name"
  "$oha" --no-tui --output-format json -z "${duration_s}s" "${auth[@]}" "$@" "$url" >"$run_dir/$name.json"
}
# Warm the page cache and the query API's cache.
"$oha" --no-tui -z 3s -c "$connections" "${auth[@]}" "$base/visitors/distinct?from=$day_from&to=$month_to" >/dev/null
measure distinct-1d "$base/visitors/distinct?from=$day_from&to=$day_to" -c "$connections"
measure distinct-30d "$base/visitors/distinct?from=$day_from&to=$month_to" -c "$connections"
measure top-30d "$base/top_paths/top?k=10&from=$day_from&to=$month_to" -c "$connections"
measure series-30d "$base/visitors/series?from=$day_from&to=$month_to&step=1d" -c "$connections"
# A different `to` within the last hour every time: the same buckets, a new cache key. oha reads
# the whole URL as a regular expression here (with `.` taken literally), so `?` is escaped.
last_hour=$((month_to - 3600000))
measure distinct-30d-uncached \
  "http://127.0.0.1:$query_port/v1/projections/visitors/distinct\?from=$day_from&to=${last_hour:0:7}[6-9][0-9]{5}" \
  -c "$connections" --rand-regex-url
measure distinct-30d-rate "$base/visitors/distinct?from=$day_from&to=$month_to" -c "$connections" -q "$rate"

# A second producer adds $stream events a second, 10 ms apart in event time, to the last hour of
# the window (180 seconds of it fit), with ids past those already sent.
streamer() {
  local second=0 sent=0
  while ((second < 180)); do
    "$bin/produce" synthetic --count "$stream" --kafka "$brokers" --topic qbench --tenant bench \
      --start-ms $((last_hour + second * stream * 10)) --first-id $((events + sent)) >/dev/null
    sent=$((sent + stream))
    echo "$sent" >"$run_dir/streamed"
    second=$((second + 1))
    sleep 1
  done
}
say "streaming into the window's last hour"
stream_start=$(date +%s.%N)
streamer &
streamer_pid=$!
pids+=("$streamer_pid")
sleep 3
measure distinct-30d-streaming "$base/visitors/distinct?from=$day_from&to=$month_to" -c "$connections"
measure series-30d-streaming "$base/visitors/series?from=$day_from&to=$month_to&step=1d" -c "$connections"
measure distinct-30d-rate-streaming "$base/visitors/distinct?from=$day_from&to=$month_to" -c "$connections" -q "$rate"
kill "$streamer_pid" 2>/dev/null || true
streamed=$(cat "$run_dir/streamed" 2>/dev/null || echo 0)
stream_rate=$(awk -v n="$streamed" -v s="$stream_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", n / (e - s) }')

row() {
  jq -r --arg name "$1" --arg what "$2" '
    def ms: . * 1000 | . * 100 | round / 100;
    [$what, (.summary.requestsPerSec | round), (.latencyPercentiles.p50 | ms),
     (.latencyPercentiles.p99 | ms), (.summary.slowest | ms),
     ([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)]
    | "| " + join(" | ") + " |"' "$run_dir/$1.json"
}
table=$(
  echo "| query | requests/s | p50 ms | p99 ms | max ms | non-200 |"
  echo "|---|---:|---:|---:|---:|---:|"
  row distinct-1d "distinct, 1 day (24 hourly buckets)"
  row distinct-30d "distinct, 30 days (720 hourly buckets)"
  row top-30d "top 10 paths, 30 days"
  row series-30d "distinct series, 30 days in 1-day steps"
  row distinct-30d-uncached "distinct, 30 days, a new window every request (no cache)"
  row distinct-30d-rate "distinct, 30 days, at $rate requests/s (open loop)"
  row distinct-30d-streaming "distinct, 30 days, while events stream in"
  row series-30d-streaming "distinct series, 30 days in 1-day steps, while events stream in"
  row distinct-30d-rate-streaming "distinct, 30 days, at $rate requests/s while events stream in (open loop)"
)
printf '%s\n' "$table"

doc=docs/query-benchmark.md
measured=$(
  cat <<EOF
<!-- measured:begin (written by deploy/bench-query.sh; edits between the markers are lost) -->
Measured by \`deploy/bench-query.sh $events\` on $(date -u +%Y-%m-%d), revision
$(git rev-parse --short HEAD), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),
load average $(cut -d' ' -f1-3 /proc/loadavg) at the end. oha $OHA_VERSION, $connections connections,
${duration_s} s per run, on the same machine as the query API, the projector node and the broker.
$events synthetic page views over 30 days (deploy/projections.toml: \`visitors\` and
\`top_paths\` in hourly buckets), one projector node, 4 partitions. The rows "while events
stream in" had a second producer adding $streamed events to the window's last hour during
them ($stream_rate events/s on average).

$table
<!-- measured:end -->
EOF
)
if [[ -f $doc ]] && grep -q 'measured:begin' "$doc"; then
  python3 - "$doc" "$measured" <<'PY'
import re, sys
path, measured = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"<!-- measured:begin.*?<!-- measured:end -->", lambda _: measured, text, flags=re.S)
open(path, "w").write(text)
PY
else
  printf '%s\n' "$measured" >>"$doc"
fi
say "wrote $doc"
