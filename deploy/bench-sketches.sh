#!/usr/bin/env bash
# deploy/bench-sketches.sh: measures the sketch read models in one go and writes
# docs/sketch-benchmarks.md (also printed at the end):
#   1. criterion benchmarks (readmodel/benches/sketches.rs): ns per update, merge, serialize,
#      deserialize, for ReadModel and the raw DataSketches kernels;
#   2. the accuracy harness in release (readmodel/examples/accuracy.rs): distinct, frequency,
#      top-k, membership and memory numbers against exact answers;
#   3. the same accuracy numbers for Apache DataSketches C++ through its Python package
#      (readmodel/bench/accuracy.py), on the same streams at the same memory;
#   4. readmodel/bench/report.py: goals judged from those numbers, and the tables.
# Takes about 4 to 6 minutes on 2 cores. DATA_DIR points at the folder of the two data sets
# (default ../shared/data); intermediate outputs are kept in var/bench-sketches.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

data_dir=${DATA_DIR:-$root/../shared/data}
out_dir=$root/var/bench-sketches
page=$root/docs/sketch-benchmarks.md
target_dir=${CARGO_TARGET_DIR:-$root/target}

say() { printf 'bench-sketches: %s\n' "$*" >&2; }

for file in "$data_dir/access-log-2015-05.log.gz" "$data_dir/wikipedia-edits-2015-09-12.ndjson.gz"; do
  [ -r "$file" ] || { say "cannot read $file (set DATA_DIR to the folder holding it)"; exit 1; }
done
python3 -c 'import datasketches' 2>/dev/null || pip install --quiet datasketches==5.2.0

mkdir -p "$out_dir"
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

say "criterion benchmarks (cargo bench -p readmodel --bench sketches)"
cargo bench -p readmodel --bench sketches 2>&1 | tee "$out_dir/criterion.log"

say "accuracy harness, ours (cargo run --release -p readmodel --example accuracy)"
cargo run --release --quiet -p readmodel --example accuracy -- \
  --data-dir "$data_dir" --json "$out_dir/ours.json" | tee "$out_dir/ours.md"

say "accuracy harness, DataSketches C++ (python3 readmodel/bench/accuracy.py)"
python3 readmodel/bench/accuracy.py --data-dir "$data_dir" --ours "$out_dir/ours.json" \
  --json "$out_dir/theirs.json" | tee "$out_dir/theirs.md"

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
say "writing $page"
python3 readmodel/bench/report.py \
  --criterion "$target_dir/criterion" --since "$started" \
  --ours-json "$out_dir/ours.json" --ours-md "$out_dir/ours.md" \
  --theirs-json "$out_dir/theirs.json" --theirs-md "$out_dir/theirs.md" \
  --bench-log "$out_dir/criterion.log" \
  --load-before "$load_before" --load-after "$load_after" \
  --command "${DATA_DIR:+DATA_DIR=$DATA_DIR }deploy/bench-sketches.sh" --out "$page"
cat "$page"
