#!/usr/bin/env bash
# deploy/schemathesis.sh: checks the query API against its own OpenAPI document with
# schemathesis, on real answers. It creates a fresh topic (and its dead-letter topic) on the
# broker at KAFKA_BOOTSTRAP, loads synthetic page views for one tenant, starts one projector node
# and the query API with a tenant file holding the SHA-256 of a key made for this run, waits
# until the projector has folded every event, then runs schemathesis with a fixed seed and a
# bounded number of examples per operation. Projection names, time bounds and steps are drawn
# from small dictionaries (schemathesis.toml, written below) as well as generated, so many
# requests hit projections that exist and get 200 with data.
#
# Guarantees: exit 0 only if schemathesis found no failure; every process it starts is stopped
# on exit; nothing is written into the repository. Uses the debug binaries (which
# `cargo test` has mostly built already). schemathesis is installed from the pinned
# deploy/requirements-schemathesis.txt into $SCHEMATHESIS_VENV
# (default ~/.cache/stream-pipeline/schemathesis-venv).
#
# Environment: KAFKA_BOOTSTRAP (required, e.g. 127.0.0.1:19092), SCHEMATHESIS_EXAMPLES
# (examples per operation, default 50), SCHEMATHESIS_SEED (default 20240101),
# SCHEMATHESIS_EVENTS (events loaded, default 2000).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

log() { echo "schemathesis.sh: $*" >&2; }
die() {
  log "$*"
  exit 1
}

[[ -n ${KAFKA_BOOTSTRAP:-} ]] ||
  die "KAFKA_BOOTSTRAP is unset: point it at a running broker, e.g. KAFKA_PORT=49392 deploy/kafka.sh start; KAFKA_BOOTSTRAP=127.0.0.1:49392 $0"
examples=${SCHEMATHESIS_EXAMPLES:-50}
seed=${SCHEMATHESIS_SEED:-20240101}
events=${SCHEMATHESIS_EVENTS:-2000}
for var in examples seed events; do
  [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive whole number, got '${!var}'"
done
venv=${SCHEMATHESIS_VENV:-${HOME:?HOME is unset; set SCHEMATHESIS_VENV}/.cache/stream-pipeline/schemathesis-venv}

work=$(mktemp -d -t stream-pipeline-schemathesis.XXXXXX)
pids=()
cleanup() {
  local status=$?
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $status != 0 && -d $work ]]; then
    for f in "$work"/*.log; do
      [[ -f $f ]] || continue
      log "last lines of $(basename "$f"):"
      tail -n 20 "$f" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

# --- schemathesis, pinned ----------------------------------------------------------------------
requirements=$root/deploy/requirements-schemathesis.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/schemathesis || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
  python3 -m venv --help >/dev/null 2>&1 ||
    die "python3 venv is missing: install it (apt-get install python3-venv)"
  log "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi

# --- binaries ----------------------------------------------------------------------------------
log "building produce, projector and query-api (debug)"
cargo build --quiet -p produce -p projector -p query-api --bins
bin=${CARGO_TARGET_DIR:-$root/target}/debug

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- topic and data ----------------------------------------------------------------------------
topic=schemathesis-$(date +%s)-$$
tenant=schemathesis
for name in "$topic" "$topic.dead-letter"; do
  deploy/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --create --topic "$name" --partitions 2 --replication-factor 1 >"$work/topic.log" 2>&1 ||
    die "could not create topic $name on $KAFKA_BOOTSTRAP: $(tail -n 3 "$work/topic.log")"
done
log "loading $events page views for tenant $tenant into $topic on $KAFKA_BOOTSTRAP"
"$bin/produce" synthetic --count "$events" --span-days 2 --keys 500 --paths 200 \
  --kafka "$KAFKA_BOOTSTRAP" --topic "$topic" --tenant "$tenant" >"$work/produce.log" 2>&1 ||
  die "produce synthetic failed: $(tail -n 3 "$work/produce.log")"

# --- projector and query API ------------------------------------------------------------------
key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
digest=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
cat >"$work/tenants.toml" <<TOML
[[tenant]]
name = "$tenant"
api_key_sha256 = ["$digest"]
events_per_second = 50000
burst_events = 100000
TOML

# The deployed projections, plus grouped ones the page views feed, so that the groups, group=
# and overlap queries are asked of data and not only refused.
cat "$root/deploy/projections.toml" - >"$work/projections.toml" <<TOML

[[projection]]
name = "visitors_by_path"
kind = "distinct"
field = "key"
event_type = "page_view"
bucket = "1h"
group_by = "properties.path"

[[projection]]
name = "paths_by_visitor"
kind = "top"
field = "properties.path"
event_type = "page_view"
bucket = "1d"
group_by = "key"
TOML

projector_port=$(free_port)
cat >"$work/projector.toml" <<TOML
brokers = "$KAFKA_BOOTSTRAP"
topic = "$topic"
group_id = "$topic"
node_name = "schemathesis-1"
store_path = "$work/store"
projections_file = "$work/projections.toml"
internal_listen = "127.0.0.1:$projector_port"
batch_max_records = 5000
batch_interval_ms = 100
store_cache_bytes = 16777216
watermark_interval_ms = 500
projections_poll_ms = 2000
rebuild_switch_lag = 1000
dedup_window_ms = 86400000
dedup_max_ids = 100000
TOML
"$bin/projector" run --config "$work/projector.toml" >"$work/projector.log" 2>&1 &
pids+=($!)

api_port=$(free_port)
cat >"$work/query-api.toml" <<TOML
listen = "127.0.0.1:$api_port"
projector_urls = ["http://127.0.0.1:$projector_port"]
tenants_file = "$work/tenants.toml"
projector_timeout_ms = 2000
TOML
"$bin/query-api" --config "$work/query-api.toml" >"$work/query-api.log" 2>&1 &
pids+=($!)
api=http://127.0.0.1:$api_port

# Caught up: the top_paths read model, which every page view feeds, has folded every event.
log "waiting for the projector to fold all $events events"
folded=0
for _ in $(seq 120); do
  folded=$(curl -sf -H "Authorization: Bearer $key" "$api/v1/projections/top_paths/top?k=1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["events"])' 2>/dev/null) || folded=0
  [[ $folded == "$events" ]] && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a process it started (pid $pid) exited early"
  done
  sleep 0.5
done
[[ $folded == "$events" ]] || die "the projector folded $folded of $events events within 60s"

# --- schemathesis ------------------------------------------------------------------------------
# Dictionaries give the generator values the data answers to; it still generates its own too.
# 2024-01-01T00:00:00Z is 1704067200000 ms; the data spans two days from there.
cat >"$work/schemathesis.toml" <<TOML
[dictionaries.projections]
values = ["visitors", "top_paths", "known_clients", "editors", "top_channels", "known_editors", "visitors_by_path", "paths_by_visitor"]
[dictionaries.distinct_projections]
values = ["visitors", "editors", "visitors_by_path"]
[dictionaries.top_projections]
values = ["top_paths", "top_channels", "paths_by_visitor"]
[dictionaries.grouped_projections]
values = ["visitors_by_path", "paths_by_visitor"]
[dictionaries.groups]
values = ["/page/1", "/page/2", "/page/50", "user-1", "user-7"]
[dictionaries.membership_projections]
values = ["known_clients", "known_editors"]
[dictionaries.times]
values = [1704067200000, 1704153600000, 1704240000000, "2024-01-01T00:00:00Z", "2024-01-02T12:00:00Z", "2024-01-03T00:00:00Z"]
[dictionaries.steps]
values = ["1h", "6h", "1d"]
[dictionaries.items]
values = ["/page/1", "/page/2", "/page/50"]

[parameters]
"path.name" = { dictionary = "projections", probability = 0.8 }
"query.from" = { dictionary = "times", probability = 0.5 }
"query.to" = { dictionary = "times", probability = 0.5 }
"query.step" = { dictionary = "steps", probability = 0.7 }
"query.item" = { dictionary = "items", probability = 0.5 }
"query.group" = { dictionary = "groups", probability = 0.5 }

# Each query asked mostly of projections of a kind that answers it (the rest get 400).
[[operations]]
include-operation-id = "distinct"
parameters = { "path.name" = { dictionary = "distinct_projections", probability = 0.8 } }
[[operations]]
include-operation-id-regex = "^(top|count)$"
parameters = { "path.name" = { dictionary = "top_projections", probability = 0.8 } }
[[operations]]
include-operation-id = "contains"
parameters = { "path.name" = { dictionary = "membership_projections", probability = 0.8 } }
[[operations]]
include-operation-id = "groups"
parameters = { "path.name" = { dictionary = "grouped_projections", probability = 0.8 } }
[[operations]]
include-operation-id = "overlap"
parameters = { "query.a" = { dictionary = "distinct_projections", probability = 0.9 }, "query.b" = { dictionary = "distinct_projections", probability = 0.9 }, "query.a_group" = { dictionary = "groups", probability = 0.5 }, "query.b_group" = { dictionary = "groups", probability = 0.5 } }
TOML

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
log "running schemathesis against $api ($examples examples per operation, seed $seed)"
# From the temp dir: schemathesis and hypothesis keep their caches in the working directory.
(cd "$work" && "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$api/openapi.json" \
  -H "Authorization: Bearer $key" --checks "$checks" --max-examples "$examples" --seed "$seed" \
  --workers 2 --no-color --report har --report-har-path "$work/run.har")

# How many answers of each status every operation got, so a run that only saw errors shows.
python3 - "$work/run.har" <<'PY' >&2
import collections, json, sys, urllib.parse
tally = collections.defaultdict(collections.Counter)
for entry in json.load(open(sys.argv[1]))["log"]["entries"]:
    path = urllib.parse.urlsplit(entry["request"]["url"]).path
    if path.startswith("/v1/projections/"):
        path = "/v1/projections/{name}/" + path.rsplit("/", 1)[-1]
    tally[path][entry["response"]["status"]] += 1
print("answers by operation and status:")
for path in sorted(tally):
    print(f"  {path:36} " + ", ".join(f"{s}: {n}" for s, n in sorted(tally[path].items())))
PY
