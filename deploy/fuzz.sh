#!/usr/bin/env bash
# deploy/fuzz.sh [SECONDS]: fuzzes what ingest reads from clients (the `read_events` target of
# ingest/fuzz: headers, gzip, event parsing and validation, tenant rules) for SECONDS (default
# 60), with libFuzzer and AddressSanitizer. See docs/fuzzing.md.
#
# Installs cargo-fuzz into ~/.cache/stream-pipeline/tools when it is missing and needs the
# nightly toolchain. Builds into FUZZ_TARGET_DIR (default ~/.cache/stream-pipeline/fuzz-target),
# apart from target/, because sanitizer flags rebuild every crate. Inputs the fuzzer finds
# interesting go to var/fuzz/corpus/read_events (kept between runs, not in git); the seeds in
# ingest/fuzz/corpus/read_events are only read. A crash stops the run, exits non-zero and leaves
# its input in ingest/fuzz/artifacts/read_events/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
target=read_events
cache=${HOME}/.cache/stream-pipeline
tools=$cache/tools
cargo_fuzz_version=0.13.2
say() { printf 'fuzz: %s\n' "$*" >&2; }

if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  say "usage: deploy/fuzz.sh [SECONDS]; SECONDS is a whole number of seconds, got '$seconds'"
  exit 2
fi

if ! rustup run nightly rustc --version > /dev/null 2>&1; then
  say "installing the nightly toolchain (cargo fuzz builds with sanitizer flags only nightly has)"
  rustup toolchain install nightly --profile minimal
fi

export PATH=$tools/bin:$PATH
if ! cargo fuzz --version 2> /dev/null | grep -q "$cargo_fuzz_version"; then
  say "installing cargo-fuzz $cargo_fuzz_version into $tools"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi

export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$cache/fuzz-target}
corpus=$root/var/fuzz/corpus/$target
mkdir -p "$corpus"

cd "$root/ingest"
say "fuzzing $target for $seconds s (corpus $corpus, build in $CARGO_TARGET_DIR)"
# The first corpus folder receives new inputs; the committed seeds are only read.
cargo +nightly fuzz run "$target" "$corpus" "fuzz/corpus/$target" -- \
  -dict="fuzz/$target.dict" \
  -max_total_time="$seconds" \
  -max_len=65536 \
  -rss_limit_mb=2048 \
  -print_final_stats=1
