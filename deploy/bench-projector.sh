#!/usr/bin/env bash
# deploy/bench-projector.sh [EVENTS]: projector throughput (events folded and persisted per
# second) side by side with Kafka's own ConsumerPerformance, on the same broker, topic and
# machine; and the time to rebuild the read models of the two real data sets.
#
# It starts its own broker (BENCH_KAFKA_PORT, default 19892), produces EVENTS synthetic page
# views (default 10,000,000) straight to a 4-partition topic, reads them with
# ConsumerPerformance, with `projector replay --threads 1` and with `projector replay` (a thread
# per core; every projection of deploy/projections.toml, sled writes included), then with
# ConsumerPerformance again, then loads both real data files into a second topic and replays
# that. The results go to stdout and to docs/projector-benchmark.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
events=${1:-10000000}
data_dir=${DATA_DIR:-$root/../shared/data}
export KAFKA_PORT=${BENCH_KAFKA_PORT:-19892}
brokers=127.0.0.1:$KAFKA_PORT
run_dir=$root/var/bench
bin=${CARGO_TARGET_DIR:-$root/target}/release
say() { printf 'bench: %s\n' "$*" >&2; }

say "building the release binaries"
cargo build --release --quiet -p projector -p produce

cleanup() {
  local status=$?
  deploy/kafka.sh stop || true
  exit "$status"
}
trap cleanup EXIT INT TERM
KAFKA_FRESH=1 KAFKA_HEAP=${KAFKA_HEAP:-1g} deploy/kafka.sh start
rm -rf "$run_dir"
mkdir -p "$run_dir"

projector_config() {
  local topic=$1 store=$2
  cat > "$run_dir/$store.toml" <<TOML
brokers = "$brokers"
topic = "$topic"
group_id = "bench-$topic"
store_path = "$run_dir/$store"
projections_file = "deploy/projections.toml"
internal_listen = "127.0.0.1:0"
TOML
  echo "$run_dir/$store.toml"
}

seconds() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

# Synthetic stream.
deploy/kafka.sh create-topic bench 4
deploy/kafka.sh create-topic bench.dead-letter 1
say "producing $events synthetic events"
start=$(seconds)
"$bin/produce" synthetic --count "$events" --kafka "$brokers" --topic bench >/dev/null
produce_s=$(calc "$(seconds) - $start")

# ConsumerPerformance runs before and after the replays, since its rate varies with what else
# the machine does; the ratio is taken against the faster of its two runs.
consumer_perf() {
  deploy/kafka.sh consumer-perf --bootstrap-server "$brokers" --topic bench \
    --num-records "$events" --timeout 120000 2>/dev/null | tail -n 1
}
# start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
perf_rate() { echo "$1" | awk -F', *' '{ printf "%.0f", $6 }'; }
perf_mb() { echo "$1" | awk -F', *' '{ printf "%.1f", $4 }'; }

say "ConsumerPerformance over the same topic"
perf_before=$(consumer_perf)

# One replay per thread setting, each into a store of its own; the rate counts records read,
# folded and written to sled, from process start to the summary.
config=$(projector_config bench synthetic-store)
replay_rate() {
  local threads=$1 start summary seconds replayed
  rm -rf "$run_dir/synthetic-store"
  start=$(seconds)
  summary=$("$bin/projector" replay --config "$config" ${threads:+--threads "$threads"})
  seconds=$(calc "$(seconds) - $start")
  replayed=$(echo "$summary" | sed -E 's/^replayed ([0-9]+) records.*/\1/')
  echo "$replayed $seconds $(awk "BEGIN { printf \"%.0f\", $replayed / $seconds }")"
}
say "projector replay over the same topic, one thread"
read -r replayed_1 replay_s_1 rate_1 < <(replay_rate 1)
say "projector replay over the same topic, default threads ($(nproc) cores)"
read -r replayed replay_s projector_rate < <(replay_rate "")
store_bytes=$(du -sb "$run_dir/synthetic-store" | cut -f1)

say "ConsumerPerformance again"
perf_after=$(consumer_perf)
consumer_rate=$(perf_rate "$perf_before")
consumer_mb=$(perf_mb "$perf_before")
if [ "$(perf_rate "$perf_after")" -gt "$consumer_rate" ]; then
  consumer_rate=$(perf_rate "$perf_after")
  consumer_mb=$(perf_mb "$perf_after")
fi

# The real data sets.
deploy/kafka.sh create-topic real 4
deploy/kafka.sh create-topic real.dead-letter 1
"$bin/produce" send --format access-log "$data_dir/access-log-2015-05.log.gz" \
  --kafka "$brokers" --topic real --tenant weblog >/dev/null
"$bin/produce" send --format wikipedia "$data_dir/wikipedia-edits-2015-09-12.ndjson.gz" \
  --kafka "$brokers" --topic real --tenant wiki >/dev/null
config=$(projector_config real real-store)
start=$(seconds)
real_summary=$("$bin/projector" replay --config "$config")
real_s=$(calc "$(seconds) - $start")

ratio=$(calc "$projector_rate / $consumer_rate")
report=$(cat <<REPORT
# Projector throughput

Produced by \`deploy/bench-projector.sh $events\` on $(date -u +%Y-%m-%d), $(nproc) cores
($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), one local Kafka
$(ls ~/.cache/stream-pipeline/kafka 2>/dev/null | tail -n 1) broker, topic of 4 partitions.
Projections: every projection of \`deploy/projections.toml\` that reads page views (distinct
visitors, top paths, known clients), plus dropping duplicates by event id; the projector writes
every batch to sled with its offsets, as in service.

| reader | events | seconds | events/s |
|---|---:|---:|---:|
| Kafka ConsumerPerformance, before the replays | $events | - | $(perf_rate "$perf_before") |
| Kafka ConsumerPerformance, after the replays | $events | - | $(perf_rate "$perf_after") |
| \`projector replay --threads 1\` (fold + persist) | $replayed_1 | $(printf %.1f "$replay_s_1") | $rate_1 |
| \`projector replay\` (default: a thread per core, $(nproc)) | $replayed | $(printf %.1f "$replay_s") | $projector_rate |

Projector (default threads) / the faster raw consumer run (${consumer_mb} MB/s): **$ratio**
(goal: 0.5 or more); with one thread: $(calc "$rate_1 / $consumer_rate"). Store size after the replay:
$((store_bytes / 1048576)) MiB. Producing the stream took $(printf %.1f "$produce_s") s.

Real data sets (10,000 access-log lines and 39,244 Wikipedia edits in one topic), rebuilt with
\`projector replay\`: $(printf %.2f "$real_s") s wall clock, including process start and topic
metadata. The replay said: $real_summary
REPORT
)
echo "$report"
echo "$report" > docs/projector-benchmark.md
