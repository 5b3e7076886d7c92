#!/usr/bin/env bash
# deploy/bench-ingest.sh [BOOTSTRAP]: end-to-end load benchmark of ingest's POST /v1/events side
# by side with Kafka's own ProducerPerformance on the same broker, for the producer settings
# ingest's config exposes: linger_ms (BENCH_LINGER_MS, at deploy/ingest.toml's compression) and
# compression (BENCH_COMPRESSION, at deploy/ingest.toml's linger_ms).
#
# For each setting it creates a fresh topic of BENCH_PARTITIONS partitions, starts the release
# ingest on it with a bench tenant whose rate limit never refuses, and measures with oha:
#   1. single events, closed loop at maximum load (BENCH_SINGLE_CONNECTIONS connections);
#   2. batches of 100 events, closed loop at maximum load (BENCH_BATCH_CONNECTIONS connections);
#   3. batches of 100 at half the rate measured in 2, open loop (oha -q, latency counted from
#      the scheduled send time, so a stall is not hidden by the requests it delays);
# then runs ProducerPerformance on a second fresh topic of the same partition count, with the
# average size (key plus value) of the records ingest wrote, keys drawn from 100 values,
# --throughput -1, acks=all, idempotence and the same linger.ms and compression.
#
# Without BOOTSTRAP it starts its own broker (BENCH_KAFKA_PORT, data in a temp dir removed on
# exit); with it, it uses that broker and deletes the topics it created. Everything it starts is
# stopped on exit. oha is installed when missing (pinned version, into BENCH_TOOLS_DIR, outside
# the repository). Before each setting it waits until no rustc runs and the cores are mostly
# idle, since the load generator, ingest and the broker share them. The report goes to stdout
# and, unless BENCH_WRITE_DOC=0, replaces the measured section of docs/ingest-benchmarks.md.
# Raw outputs (oha JSON, ProducerPerformance output, ingest logs) stay in var/bench-ingest.
# With the defaults it takes about 12 minutes.
#
# environment (defaults in brackets):
#   BENCH_LINGER_MS           linger_ms values to try ["0 1 5 20"]
#   BENCH_COMPRESSION         compression values to try ["lz4 none snappy gzip"]
#   BENCH_PARTITIONS          partitions of each topic [6]
#   BENCH_ROUNDS              times every setting is measured; the report gives medians [3]
#   BENCH_DURATION_S          seconds of each oha run [15]
#   BENCH_SINGLE_CONNECTIONS  connections for single events [128]
#   BENCH_BATCH_CONNECTIONS   connections for batches of 100 [32]
#   BENCH_PERF_RECORDS        records per ProducerPerformance run, the first fifth warm-up
#                             [4000000]
#   BENCH_KAFKA_PORT          client port of the broker this script starts [29092]
#   BENCH_INGEST_PORT         port ingest listens on [28081]
#   BENCH_TOOLS_DIR           cargo install root for oha [$HOME/.cache/stream-pipeline/tools]
#   BENCH_WAIT_FOR_QUIET      1: wait (at most 30 minutes) for a quiet machine; 0: measure
#                             whatever else runs [1]
#   BENCH_WRITE_DOC           1: write docs/ingest-benchmarks.md [1]
#   BENCH_INGEST_PRELOAD      a shared library ingest runs with (LD_PRELOAD), e.g. another
#                             malloc, to try it without a rebuild; named in the report [none]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

readonly OHA_VERSION=1.10.0
readonly BATCH_EVENTS=100
bootstrap=${1:-}
lingers=${BENCH_LINGER_MS:-"0 1 5 20"}
compressions=${BENCH_COMPRESSION:-"lz4 none snappy gzip"}
partitions=${BENCH_PARTITIONS:-6}
duration_s=${BENCH_DURATION_S:-15}
rounds=${BENCH_ROUNDS:-3}
single_connections=${BENCH_SINGLE_CONNECTIONS:-128}
batch_connections=${BENCH_BATCH_CONNECTIONS:-32}
perf_records=${BENCH_PERF_RECORDS:-4000000}
kafka_port=${BENCH_KAFKA_PORT:-29092}
ingest_port=${BENCH_INGEST_PORT:-28081}
tools_dir=${BENCH_TOOLS_DIR:-$HOME/.cache/stream-pipeline/tools}
wait_for_quiet=${BENCH_WAIT_FOR_QUIET:-1}
write_doc=${BENCH_WRITE_DOC:-1}
ingest_preload=${BENCH_INGEST_PRELOAD:-}
oha=$tools_dir/bin/oha
bin=${CARGO_TARGET_DIR:-$root/target}/release
out_dir=$root/var/bench-ingest
page=$root/docs/ingest-benchmarks.md

say() { printf 'bench-ingest: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

for value in "$partitions" "$duration_s" "$rounds" "$single_connections" "$batch_connections" \
  "$perf_records" "$kafka_port" "$ingest_port"; do
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "'$value' is not a positive integer; check the BENCH_* variables"
done
for linger in $lingers; do
  [[ $linger =~ ^[0-9]+$ ]] ||
    die "BENCH_LINGER_MS holds '$linger'; give whole milliseconds separated by spaces"
done
for compression in $compressions; do
  [[ $compression =~ ^(none|gzip|snappy|lz4)$ ]] ||
    die "BENCH_COMPRESSION holds '$compression'; ingest knows none, gzip, snappy and lz4"
done
[[ -z $ingest_preload || -r $ingest_preload ]] ||
  die "BENCH_INGEST_PRELOAD names $ingest_preload, which is not a readable file"
command -v jq >/dev/null || die "jq is needed to read oha's JSON output; install it (apt-get install jq)"
command -v curl >/dev/null || die "curl is needed; install it"

# The headline is ingest's shipped configuration.
default_linger=$(sed -n 's/^linger_ms *= *\([0-9][0-9]*\).*/\1/p' deploy/ingest.toml)
default_compression=$(sed -n 's/^compression *= *"\([a-z0-9]*\)".*/\1/p' deploy/ingest.toml)
[[ -n $default_linger && -n $default_compression ]] ||
  die "deploy/ingest.toml lacks a linger_ms or compression line to take the defaults from"
# Settings as "linger_ms compression": the linger values at the default compression, then the
# other codecs at the default linger; the default setting is measured once, first.
settings=("$default_linger $default_compression")
for linger in $lingers; do
  [[ $linger == "$default_linger" ]] || settings+=("$linger $default_compression")
done
for compression in $compressions; do
  [[ $compression == "$default_compression" ]] || settings+=("$default_linger $compression")
done

# --- tools and binaries ----------------------------------------------------------------------

if [[ ! -x $oha ]] || ! "$oha" --version | grep -qF " $OHA_VERSION"; then
  say "installing oha $OHA_VERSION into $tools_dir (a few minutes)"
  cargo install oha --version "$OHA_VERSION" --locked --root "$tools_dir"
fi
say "building the release ingest"
cargo build --release --quiet -p ingest

# Percent of CPU time spent idle, over all cores, during the next 3 seconds.
idle_percent() {
  local -a before after
  read -ra before </proc/stat
  sleep 3
  read -ra after </proc/stat
  # Fields after "cpu": user nice system idle iowait irq softirq steal.
  local i total=0 idle
  for i in 1 2 3 4 5 6 7 8; do total=$((total + after[i] - before[i])); done
  idle=$((after[4] - before[4] + after[5] - before[5]))
  echo $((total > 0 ? idle * 100 / total : 100))
}

# The load generator, ingest and the broker share this machine's cores: a compiler or anything
# else busy meanwhile takes cycles from all three and the numbers mean nothing. Waits until no
# rustc runs and the cores are at least 85% idle (the idle broker takes a few percent).
wait_until_quiet() {
  [[ $wait_for_quiet == 1 ]] || return 0
  local give_up=$((SECONDS + 1800)) idle reported=-60
  while :; do
    if pgrep -x rustc >/dev/null; then
      idle="(rustc running)"
    else
      idle=$(idle_percent)
      ((idle >= 85)) && return 0
      idle="$idle% idle"
    fi
    ((SECONDS < give_up)) ||
      die "the machine stayed busy for 30 minutes ($idle); stop the other work or set BENCH_WAIT_FOR_QUIET=0"
    if ((SECONDS - reported >= 60)); then
      say "machine busy ($idle); waiting for it to quieten before measuring"
      reported=$SECONDS
    fi
    sleep 5
  done
}

# --- broker, work dir and cleanup ------------------------------------------------------------

work=$(mktemp -d /tmp/bench-ingest.XXXXXX)
rm -rf "$out_dir"
mkdir -p "$out_dir"
started_broker=0
ingest_pid=
created_topics=()

kafka() { KAFKA_PORT=$kafka_port KAFKA_DATA_DIR=$work/kafka deploy/kafka.sh "$@"; }
topics() { kafka tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@"; }

delete_topics() {
  local topic
  for topic in "${created_topics[@]}"; do
    topics --delete --topic "$topic" >/dev/null 2>&1 || say "could not delete topic $topic"
  done
  created_topics=()
}

stop_ingest() {
  [[ -n $ingest_pid ]] || return 0
  kill -TERM "$ingest_pid" 2>/dev/null || true
  wait "$ingest_pid" 2>/dev/null || true
  ingest_pid=
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_ingest
  if [[ $started_broker == 1 ]]; then
    kafka stop || true
  else
    delete_topics
  fi
  rm -rf "$work"
  ((status == 0)) || say "failed; outputs and ingest logs are in $out_dir"
  exit "$status"
}
trap cleanup EXIT INT TERM

if [[ -z $bootstrap ]]; then
  KAFKA_FRESH=1 KAFKA_HEAP=${KAFKA_HEAP:-1g} kafka start
  started_broker=1
  bootstrap=127.0.0.1:$kafka_port
fi

create_topic() {
  local topic=$1
  topics --create --topic "$topic" --partitions "$partitions" >/dev/null ||
    die "cannot create topic $topic on $bootstrap"
  created_topics+=("$topic")
}

# --- bodies, tenant and config ---------------------------------------------------------------

# A page view shaped like the access-log mapping of `produce` (docs: README, Data mapping), with
# an id, an event time and six properties. Event i has key 10.0.0.i.
page_view() {
  local i=$1
  local paths=(/ /articles/ssh-security/ /blog/tags/release?flav=rss20
    /presentations/monitoring-2013/images/dashboard-search.png /images/web/2009/banner.png)
  local agents=("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/32.0.1700.77 Safari/537.36"
    "Mozilla/5.0 (compatible; ExampleBot/2.1; +http://www.example.com/bot.html)"
    "Feed Reader/1.11 (http://feeds.example.org/)")
  printf '{"id":"bench-%03d","type":"page_view","key":"10.0.0.%d","time":"2015-05-17T10:05:%02dZ","properties":{"path":"%s","method":"GET","status":200,"bytes":%d,"referrer":"http://www.example.com/","agent":"%s"}}' \
    "$i" "$i" $((i % 60)) "${paths[i % 5]}" $((1000 + i * 997 % 200000)) "${agents[i % 3]}"
}

page_view 1 >"$out_dir/single.json"
{
  printf '['
  for ((i = 1; i <= BATCH_EVENTS; i++)); do
    ((i == 1)) || printf ','
    page_view "$i"
  done
  printf ']'
} >"$out_dir/batch.json"

api_key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
cat >"$work/tenants.toml" <<TOML
# The bench tenant: a rate limit far above anything this machine can send, so it never refuses.
[[tenant]]
name = "bench"
api_key_sha256 = ["$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)"]
events_per_second = 1000000000
burst_events = 1000000000
TOML

start_ingest() {
  local linger=$1 compression=$2 topic=$3 log=$out_dir/ingest-$4.log
  cat >"$work/ingest.toml" <<TOML
listen = "127.0.0.1:$ingest_port"
brokers = "$bootstrap"
topic = "$topic"
tenants_file = "$work/tenants.toml"
linger_ms = $linger
compression = "$compression"
TOML
  LD_PRELOAD=$ingest_preload "$bin/ingest" --config "$work/ingest.toml" >"$log" 2>&1 &
  ingest_pid=$!
  local deadline=$((SECONDS + 30))
  until curl -sf "http://127.0.0.1:$ingest_port/readyz" >/dev/null; do
    kill -0 "$ingest_pid" 2>/dev/null || die "ingest exited at start; see $log"
    ((SECONDS < deadline)) || die "ingest was not ready within 30 s; see $log"
    sleep 0.2
  done
}

post_once() {
  local body=$1 answer
  answer=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$ingest_port/v1/events" \
    -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' --data-binary "@$body")
  [[ $answer == *' 202' ]] || die "ingest answered '$answer' to $body instead of 202"
}

# --- measurements ----------------------------------------------------------------------------

# usage: load NAME BODY CONNECTIONS [REQUESTS_PER_S]
# Runs oha for duration_s and keeps its JSON as $out_dir/NAME.json.
load() {
  local name=$1 body=$2 connections=$3 rate=${4:-}
  local -a args=(--no-tui --output-format json -z "${duration_s}s" -c "$connections" -m POST
    -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' -D "$body")
  [[ -z $rate ]] || args+=(-q "$rate" --latency-correction)
  "$oha" "${args[@]}" "http://127.0.0.1:$ingest_port/v1/events" >"$out_dir/$name.json"
}

# usage: summarize NAME EVENTS_PER_REQUEST
# Prints: requests/s events/s p50 p90 p99 max (ms) and the count of answers other than 202.
# Requests/s and events/s count only 202 answers.
summarize() {
  local name=$1 events=$2
  jq -r --argjson events "$events" '
    def ms: . * 10000 | round / 10;
    (.statusCodeDistribution["202"] // 0) as $ok
    | ([.statusCodeDistribution | to_entries[] | select(.key != "202") | .value] | add // 0)
      as $other
    | ([.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value]
      | add // 0) as $errors
    | [($ok / .summary.total | round), ($ok * $events / .summary.total | round),
       (.latencyPercentiles.p50 | ms), (.latencyPercentiles.p90 | ms),
       (.latencyPercentiles.p99 | ms), (.summary.slowest | ms), ($other + $errors)]
    | @tsv' "$out_dir/$name.json"
}

# Average bytes of key plus value of the first N records of TOPIC.
record_bytes() {
  local topic=$1 count=$2
  kafka tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$bootstrap" \
    --topic "$topic" --from-beginning --max-messages "$count" --timeout-ms 30000 \
    --formatter-property print.key=true --formatter-property key.separator=$'\t' 2>/dev/null >"$out_dir/records.tsv"
  LC_ALL=C awk -F'\t' -v want="$count" '
    { bytes += length($1) + length($2); n++ }
    END {
      if (n != want) { print "read " n " records, wanted " want > "/dev/stderr"; exit 1 }
      printf "%.0f\n", bytes / n
    }' "$out_dir/records.tsv"
}

# usage: producer_perf NAME TOPIC LINGER COMPRESSION RECORD_BYTES [PRODUCER_PROPERTY...]
# Prints the steady-state records/s, p50, p99 and max latency (ms) of ProducerPerformance.
producer_perf() {
  local name=$1 topic=$2 linger=$3 compression=$4 size=$5
  shift 5
  kafka producer-perf --bootstrap-server "$bootstrap" --topic "$topic" \
    --num-records "$perf_records" --warmup-records $((perf_records / 5)) \
    --record-size "$size" --throughput -1 \
    --key-distribution random --record-key-range "$BATCH_EVENTS" \
    --command-property acks=all enable.idempotence=true "compression.type=$compression" \
    "linger.ms=$linger" "$@" >"$out_dir/$name.txt" 2>&1 ||
    die "ProducerPerformance failed; see $out_dir/$name.txt"
  # Last line: "N steady state records sent, R records/sec (M MB/sec), A ms avg latency,
  # X ms max latency, P ms 50th, P ms 95th, P ms 99th, P ms 99.9th."
  grep 'records/sec' "$out_dir/$name.txt" | tail -n 1 | sed -E \
    's/.* records sent, ([0-9.]+) records\/sec .*, ([0-9.]+) ms max latency, ([0-9.]+) ms 50th, [0-9.]+ ms 95th, ([0-9.]+) ms 99th.*/\1\t\3\t\4\t\2/' |
    awk -F'\t' 'NF == 4 { printf "%.0f\t%.1f\t%.1f\t%.1f\n", $1, $2, $3, $4; ok = 1 }
      END { exit !ok }' || die "cannot read the summary line of $out_dir/$name.txt"
}

# CPU time, in clock ticks, that process PID has used (user plus system); 0 once it is gone.
process_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
    echo 0
    return
  }
  # Fields after "pid (comm) ": state is [0], utime [11], stime [12], cutime [13], cstime [14].
  local -a fields
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}

# CPU ticks of this shell's children that have ended and were waited for: oha runs, the Kafka
# tools, ProducerPerformance, and ingest once stopped.
children_ticks() {
  local stat
  local -a fields
  stat=$(cat "/proc/$$/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[13] + fields[14]))
}

# CPU ticks the whole machine has spent busy (all but idle and iowait), over all cores.
machine_busy_ticks() {
  local -a fields
  read -ra fields </proc/stat
  echo $((fields[1] + fields[2] + fields[3] + fields[6] + fields[7] + fields[8]))
}

broker_ticks() {
  if [[ $started_broker == 1 ]]; then process_ticks "$(cat "$work/kafka/kafka.pid")"; else echo 0; fi
}

# usage: per_event TICKS EVENTS: CPU microseconds per event.
per_event() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }

# One line per run: linger compression run connections, then for oha runs requests/s events/s
# p50 p90 p99 max (ms) non-202 [rate], for ProducerPerformance records/s p50 p99 max (ms).
results=$out_dir/results.tsv
: >"$results"
record_size=
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# usage: measure_setting LINGER COMPRESSION LARGE WARM_UP_S: every run of one setting in this
# round, its result lines written to $work/setting.tsv; LARGE (1 or 0) adds ProducerPerformance
# with large batches.
measure_setting() {
  local linger=$1 compression=$2 large=$3 warm_up_s=$4
  local name=linger$linger-$compression-r$round
  local topic=ingest-bench-$name
  local -a start end cpu_before cpu_after
  start=("$(machine_busy_ticks)" "$(children_ticks)" "$(broker_ticks)" "$SECONDS")
  say "$name: topic $topic ($partitions partitions)"
  create_topic "$topic"
  start_ingest "$linger" "$compression" "$topic" "$name"
  if [[ -z $record_size ]]; then
    # The batch body once into the empty topic: its records are the topic's first ones.
    post_once "$out_dir/batch.json"
    record_size=$(record_bytes "$topic" "$BATCH_EVENTS") || die "cannot measure the record size"
    say "records ingest writes for the batch body: $record_size bytes (key plus value) on average"
  fi
  post_once "$out_dir/single.json"
  # Warm-up: connections, producer batches and the page cache settle before anything counts.
  "$oha" --no-tui -z "${warm_up_s}s" -c "$batch_connections" -m POST -H "Authorization: Bearer $api_key" \
    -H 'Content-Type: application/json' -D "$out_dir/batch.json" \
    "http://127.0.0.1:$ingest_port/v1/events" >/dev/null

  say "$name: single events, $single_connections connections, ${duration_s}s"
  load "single-$name" "$out_dir/single.json" "$single_connections"
  local single batch half half_rate events
  single=$(summarize "single-$name" 1)
  say "$name: batches of $BATCH_EVENTS, $batch_connections connections, ${duration_s}s"
  cpu_before=("$(process_ticks "$ingest_pid")" "$(children_ticks)" "$(broker_ticks)")
  load "batch-$name" "$out_dir/batch.json" "$batch_connections"
  cpu_after=("$(process_ticks "$ingest_pid")" "$(children_ticks)" "$(broker_ticks)")
  batch=$(summarize "batch-$name" "$BATCH_EVENTS")
  events=$(jq '(.statusCodeDistribution["202"] // 0) * '"$BATCH_EVENTS" "$out_dir/batch-$name.json")
  local cpu_ingest cpu_oha cpu_broker
  cpu_ingest=$(per_event $((cpu_after[0] - cpu_before[0])) "$events")
  cpu_oha=$(per_event $((cpu_after[1] - cpu_before[1])) "$events")
  cpu_broker=$(per_event $((cpu_after[2] - cpu_before[2])) "$events")
  half_rate=$(awk -v rps="$(cut -f1 <<<"$batch")" 'BEGIN { printf "%d", rps / 2 }')
  ((half_rate > 0)) || die "no batch was accepted with $name; see $out_dir/batch-$name.json"
  say "$name: batches of $BATCH_EVENTS at $half_rate requests/s, ${duration_s}s"
  load "half-$name" "$out_dir/batch.json" "$batch_connections" "$half_rate"
  half=$(summarize "half-$name" "$BATCH_EVENTS")
  stop_ingest

  say "$name: ProducerPerformance, $perf_records records of $record_size bytes"
  create_topic "perf-bench-$name"
  cpu_before=("$(children_ticks)" "$(broker_ticks)")
  local perf cpu_perf cpu_perf_broker
  perf=$(producer_perf "perf-$name" "perf-bench-$name" "$linger" "$compression" "$record_size")
  cpu_after=("$(children_ticks)" "$(broker_ticks)")
  # Over all records sent, warm-up included.
  cpu_perf=$(per_event $((cpu_after[0] - cpu_before[0])) "$perf_records")
  cpu_perf_broker=$(per_event $((cpu_after[1] - cpu_before[1])) "$perf_records")
  : >"$work/setting.tsv"
  if [[ $large == 1 ]]; then
    # The Java producer batches at most 16 KiB per partition by default, librdkafka up to 1 MB
    # (batch.size 1000000): once more with librdkafka's batch size, for the default setting.
    say "$name: ProducerPerformance with batch.size=1000000"
    create_topic "perf-large-bench-$name"
    local perf_large
    perf_large=$(producer_perf "perf-large-$name" "perf-large-bench-$name" "$linger" \
      "$compression" "$record_size" batch.size=1000000)
    printf '%s\t%s\tperf-large\t-\t%s\n' "$linger" "$compression" "$perf_large" >>"$work/setting.tsv"
  fi
  # The next setting starts on empty topics; the broker's disk holds one setting's records.
  delete_topics

  # Share of the machine's CPU that processes other than this script's children (oha, ingest
  # once stopped, the Kafka tools) and the broker took over the whole setting: what else ran
  # meanwhile (near 0 on a quiet machine).
  end=("$(machine_busy_ticks)" "$(children_ticks)" "$(broker_ticks)" "$SECONDS")
  local ours=$((end[1] - start[1] + end[2] - start[2]))
  local cpu_other
  cpu_other=$(awk -v t=$((end[0] - start[0] - ours)) -v hz="$(getconf CLK_TCK)" \
    -v s=$((end[3] - start[3])) -v n="$(nproc)" \
    'BEGIN { p = t * 100 / (hz * s * n); printf "%.0f", p < 0 ? 0 : p }')
  {
    printf '%s\t%s\tsingle\t%s\t%s\n' "$linger" "$compression" "$single_connections" "$single"
    printf '%s\t%s\tbatch\t%s\t%s\n' "$linger" "$compression" "$batch_connections" "$batch"
    printf '%s\t%s\thalf\t%s\t%s\t%s\n' "$linger" "$compression" "$batch_connections" "$half" \
      "$half_rate"
    printf '%s\t%s\tperf\t-\t%s\n' "$linger" "$compression" "$perf"
    printf '%s\t%s\tcpu\t-\t%s\t%s\t%s\t%s\t%s\t%s\n' "$linger" "$compression" "$cpu_ingest" \
      "$cpu_oha" "$cpu_broker" "$cpu_perf" "$cpu_perf_broker" "$cpu_other"
  } >>"$work/setting.tsv"
}

# Every setting is measured once per round, the rounds one after the other, so that a slow
# spell of the machine does not fall on one setting only; the report gives medians. A setting
# during which other processes took more than 5% of the machine is measured again, up to twice,
# unless BENCH_WAIT_FOR_QUIET=0; the report shows that share either way.
for ((round = 1; round <= rounds; round++)); do
  for setting in "${settings[@]}"; do
    read -r linger compression <<<"$setting"
    large=$([[ $setting == "${settings[0]}" ]] && echo 1 || echo 0)
    # The very first run also warms the broker's JVM up, hence longer.
    warm_up_s=$([[ $round == 1 && $large == 1 ]] && echo 15 || echo 3)
    for attempt in 1 2 3; do
      wait_until_quiet
      say "round $round of $rounds"
      measure_setting "$linger" "$compression" "$large" "$warm_up_s"
      other=$(awk -F'\t' '$3 == "cpu" { print $10 }' "$work/setting.tsv")
      if [[ $wait_for_quiet == 0 ]] || ((other <= 5 || attempt == 3)); then break; fi
      say "other processes took $other% of the CPU while linger_ms=$linger, $compression was measured; measuring it again"
    done
    cat "$work/setting.tsv" >>"$results"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------

# usage: field LINGER COMPRESSION RUN COLUMN, columns counted after the run's name:
# oha runs 1 connections, 2 requests/s, 3 events/s, 4 p50, 5 p90, 6 p99, 7 max, 8 non-202,
# 9 rate (half only); ProducerPerformance 2 records/s, 3 p50, 4 p99, 5 max; CPU microseconds
# per event 2 ingest, 3 oha, 4 broker (batched run), 5 ProducerPerformance, 6 broker (its run),
# and 7 the percent of the machine other processes took during the setting.
# field prints the median over the rounds, span "min-max".
values() {
  awk -F'\t' -v linger="$1" -v compression="$2" -v run="$3" -v column="$4" \
    '$1 == linger && $2 == compression && $3 == run { print $(column + 3) }' "$results" | sort -g
}
field() {
  values "$@" | awk '{ v[NR] = $1; if ($1 !~ /^[0-9]+$/) whole = 0 } BEGIN { whole = 1 } END {
    if (NR == 0) { print "-"; exit }
    if (v[1] !~ /^[0-9.]+$/) { print v[1]; exit }
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print (whole ? sprintf("%.0f", m) : sprintf("%.1f", m))
  }'
}
span() { values "$@" | awk 'NR == 1 { low = $1 } { high = $1 } END { print low "-" high }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# usage: verdict VALUE at-least|below GOAL
verdict() {
  awk -v value="$1" -v kind="$2" -v goal="$3" 'BEGIN {
    met = kind == "at-least" ? value >= goal : value < goal
    print (met ? "met" : "not met")
  }'
}
# usage: row LABEL LINGER COMPRESSION RUN: one table row of an oha run.
row() {
  local label=$1 linger=$2 compression=$3 run=$4 column cells=
  for column in 1 2 3 4 5 6 7 8; do cells+=" $(field "$linger" "$compression" "$run" "$column") |"; done
  printf '| %s |%s\n' "$label" "$cells"
}

dl=$default_linger
dc=$default_compression
headline_ratio=$(ratio "$(field "$dl" "$dc" batch 3)" "$(field "$dl" "$dc" perf 2)")
headline_ratio_large=$(ratio "$(field "$dl" "$dc" batch 3)" "$(field "$dl" "$dc" perf-large 2)")
headline_half_p99=$(field "$dl" "$dc" half 6)
sweep=$(for setting in "${settings[@]}"; do
  read -r linger compression <<<"$setting"
  printf '| %s | %s | %s | %s | %s (%s) | %s | %s (%s) | %s | %s | %s%% |\n' "$linger" "$compression" \
    "$(field "$linger" "$compression" single 3)" "$(field "$linger" "$compression" single 6)" \
    "$(field "$linger" "$compression" batch 3)" "$(span "$linger" "$compression" batch 3)" \
    "$(field "$linger" "$compression" batch 6)" \
    "$(field "$linger" "$compression" half 6)" "$(span "$linger" "$compression" half 6)" \
    "$(field "$linger" "$compression" perf 2)" \
    "$(ratio "$(field "$linger" "$compression" batch 3)" "$(field "$linger" "$compression" perf 2)")" \
    "$(span "$linger" "$compression" cpu 7)"
done)
medians=$(for setting in "${settings[@]}"; do
  read -r linger compression <<<"$setting"
  printf '%s\t%s\t%s\t%s\n' "$linger" "$compression" "$(field "$linger" "$compression" batch 3)" \
    "$(field "$linger" "$compression" half 6)"
done)
best_batch=$(sort -t$'\t' -k3,3gr <<<"$medians" | head -n 1 |
  awk -F'\t' '{ print "linger_ms = " $1 ", " $2 " (" $3 " events/s)" }')
best_half=$(sort -t$'\t' -k4,4g <<<"$medians" | head -n 1 |
  awk -F'\t' '{ print "linger_ms = " $1 ", " $2 " (" $4 " ms)" }')
non_202=$(awk -F'\t' '$3 ~ /^(single|batch|half)$/ { sum += $11 } END { print sum + 0 }' "$results")
revision=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- ingest schemas Cargo.lock 2>/dev/null || revision="$revision with local changes"
kafka_tools=$(kafka tool org.apache.kafka.tools.TopicCommand --version 2>/dev/null | head -n 1 || true)
if [[ $started_broker == 1 ]]; then
  broker="a single-node KRaft broker (Kafka $kafka_tools) on loopback, started by the script"
else
  broker="the broker at $bootstrap"
fi

report=$(cat <<REPORT
<!-- measured:begin (written by deploy/bench-ingest.sh; edits between the markers are lost) -->
Measured by \`deploy/bench-ingest.sh\` on $(date -u +%Y-%m-%d).
Ingest at revision $revision${ingest_preload:+, run with LD_PRELOAD=$ingest_preload}; $broker;
topics of $partitions partitions.
$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), shared by the load generator (oha $OHA_VERSION), ingest (release build),
the broker and ProducerPerformance; load average $load_before before, $load_after after.
Every setting was measured $rounds times, in $rounds rounds over all settings; the tables give the
median of the rounds, and ranges where they say so. Each oha run lasts ${duration_s} s after a warm-up (15 s
for the very first, 3 s for the others). ProducerPerformance sends $perf_records records and
reports the last $((perf_records - perf_records / 5)) (steady state).

Bodies: one page view ($(wc -c <"$out_dir/single.json") bytes: id, type, key, time and six properties), and a
JSON array of $BATCH_EVENTS such page views with $BATCH_EVENTS distinct keys ($(wc -c <"$out_dir/batch.json") bytes).
The records ingest writes for them average **$record_size bytes** (key plus value, read back
from the topic), plus the \`schema-version\` header. ProducerPerformance sends records of that
size (random capital letters) with keys drawn from $BATCH_EVENTS values.

### Ingest's defaults (linger_ms = $dl, compression = $dc)

| load | connections | requests/s | events/s | p50 ms | p90 ms | p99 ms | max ms | non-202 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
$(row "single events, closed loop" "$dl" "$dc" single)
$(row "batches of $BATCH_EVENTS, closed loop" "$dl" "$dc" batch)
$(row "batches of $BATCH_EVENTS at $(field "$dl" "$dc" half 9) requests/s (half)" "$dl" "$dc" half)
| ProducerPerformance, $record_size-byte records | - | - | $(field "$dl" "$dc" perf 2) | $(field "$dl" "$dc" perf 3) | - | $(field "$dl" "$dc" perf 4) | $(field "$dl" "$dc" perf 5) | - |
| the same with batch.size=1000000 | - | - | $(field "$dl" "$dc" perf-large 2) | $(field "$dl" "$dc" perf-large 3) | - | $(field "$dl" "$dc" perf-large 4) | $(field "$dl" "$dc" perf-large 5) | - |

Latencies of the oha rows are per HTTP request, until the 202; ProducerPerformance's are per
record, from send to acknowledgement, and it prints no 90th percentile. ProducerPerformance's
figure is records/s.

CPU time per event, read from /proc during the batched run and the ProducerPerformance run
(the broker's only when this script started it):

| run | ingest or ProducerPerformance | load generator (oha) | broker |
|---|---:|---:|---:|
| ingest, batches of $BATCH_EVENTS | $(field "$dl" "$dc" cpu 2) µs | $(field "$dl" "$dc" cpu 3) µs | $(field "$dl" "$dc" cpu 4) µs |
| ProducerPerformance | $(field "$dl" "$dc" cpu 5) µs | - | $(field "$dl" "$dc" cpu 6) µs |

- Batched ingest events/s / ProducerPerformance records/s: **$headline_ratio** (goal: 0.5 or
  more: $(verdict "$headline_ratio" at-least 0.5); rounds: $(span "$dl" "$dc" batch 3) events/s and
  $(span "$dl" "$dc" perf 2) records/s); against ProducerPerformance with
  batch.size=1000000: **$headline_ratio_large**.
- p99 of batches of $BATCH_EVENTS at half the maximum rate: **$headline_half_p99 ms** (goal:
  under 20 ms: $(verdict "$headline_half_p99" below 20); rounds: $(span "$dl" "$dc" half 6) ms).

### Settings tried

linger_ms at compression $dc, then each codec at linger_ms $dl; ProducerPerformance ran with the
same linger.ms and compression.type each time, and the ratio is batched events/s over its
records/s. The last column is the share of the machine's CPU that processes other than oha,
ingest, the broker and ProducerPerformance took while the setting was measured: near 0% when
nothing else disturbed it. A setting above 5% is measured again, up to twice.

| linger_ms | compression | single events/s | single p99 ms | batched events/s (range) | batched p99 ms | half-rate p99 ms (range) | ProducerPerformance records/s | ratio | other processes |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|
$sweep

Best batched throughput: $best_batch. Lowest p99 at half rate: $best_half.
Answers other than 202 over all runs: $non_202.
<!-- measured:end -->
REPORT
)
echo "$report"

if [[ $write_doc == 1 ]]; then
  { grep -q '^<!-- measured:begin' "$page" && grep -q '^<!-- measured:end -->' "$page"; } ||
    die "$page lacks the measured:begin and measured:end lines; the report above was not written"
  printf '%s\n' "$report" >"$work/report.md"
  awk -v report="$work/report.md" '
    /^<!-- measured:begin/ { while ((getline line < report) > 0) print line; skip = 1; next }
    /^<!-- measured:end -->/ { skip = 0; next }
    !skip { print }' "$page" >"$work/page.md"
  mv "$work/page.md" "$page"
  say "wrote the measured section of $page"
fi
