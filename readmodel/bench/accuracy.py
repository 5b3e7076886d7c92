#!/usr/bin/env python3
"""Accuracy and size of Apache DataSketches C++ (PyPI `datasketches`, pinned 5.2.0) on the
same streams and at the same memory as readmodel/examples/accuracy.rs, printed as markdown
tables (and written as JSON with --json, for deploy/bench-sketches.sh).

* distinct: HLL_4 and HLL_8 at lg_k 12 and 14, single-stream and merged from 16 partitions
  (hll_union), values `u<trial>-<i>` exactly as the Rust harness builds them; Python is slower,
  so fewer trials reach the largest cardinalities (the table says how many);
* frequencies: count_min_sketch and frequent_strings_sketch with the read models' parameters,
  on the same Zipf streams (seeded splitmix64 + inverse CDF, bit for bit the Rust generator:
  compare the stream fingerprints) and on the two real data sets;
* memory: serialized bytes of the same sketches.

The Python package has no Bloom filter, so membership has no counterpart here.
"""

import argparse
import bisect
import gzip
import json
import math
import multiprocessing
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

PIP_HINT = "pip install datasketches==5.2.0"
try:
    import datasketches as ds
except ImportError:
    sys.stderr.write(f"accuracy.py: the Python package datasketches is missing; run `{PIP_HINT}`\n")
    sys.exit(2)

CARDINALITIES = [10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000]
LG_KS = [12, 14]
TYPES = {"HLL_4": ds.HLL_4, "HLL_8": ds.HLL_8}
PARTITIONS = 16
POOLED_FROM = 100_000
ZIPF_EVENTS = 1_000_000
ZIPF_ITEMS = 100_000
ZIPF_SKEWS = [0.8, 1.0, 1.2]
ZIPF_SEED = 20_150_517
RANDOM_ITEMS = 1_000
RANDOM_SEED = 9_001
CM_SEED = 9001
MASK = (1 << 64) - 1
REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOP = {"width": 1024, "depth": 5, "max_map_size": 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--access-log", type=Path)
    parser.add_argument("--wikipedia", type=Path)
    parser.add_argument("--projections", type=Path, default=REPO / "deploy" / "projections.toml")
    parser.add_argument("--json", type=Path, help="also write every number here as JSON")
    parser.add_argument(
        "--ours",
        type=Path,
        help="JSON of readmodel/examples/accuracy.rs: take each stream's top parameters from it, "
        "so both sides use the same memory",
    )
    parser.add_argument("--trials", type=int, default=100, help="distinct trials up to 100k")
    parser.add_argument("--trials-1m", type=int, default=10, help="of those, how many reach 1M")
    parser.add_argument("--trials-10m", type=int, default=1, help="of those, how many reach 10M")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    access_log = args.access_log or args.data_dir / "access-log-2015-05.log.gz"
    wikipedia = args.wikipedia or args.data_dir / "wikipedia-edits-2015-09-12.ndjson.gz"
    if not args.trials_10m <= args.trials_1m <= args.trials:
        sys.exit("accuracy.py: need --trials-10m <= --trials-1m <= --trials")
    projections = load_projections(args.projections)
    ours = json.loads(args.ours.read_text()) if args.ours else None

    started = time.perf_counter()
    version = metadata.version("datasketches")
    print(f"# DataSketches C++ accuracy (Python datasketches {version})\n")
    distinct = distinct_section(args)
    frequencies = frequency_section(access_log, wikipedia, projections, ours)
    memory = memory_section(ours_top_params(ours))
    print("Membership: the Python package has no Bloom filter; no counterpart measured.\n")
    elapsed = time.perf_counter() - started
    print(f"_Harness run time: {elapsed:.1f} s._")
    if args.json:
        report = {
            "implementation": f"DataSketches C++ (Python datasketches {version})",
            "distinct": distinct,
            "frequencies": frequencies,
            "memory": memory,
            "run_seconds": elapsed,
        }
        args.json.write_text(json.dumps(report, indent=1))


class SplitMix64:
    """The generator of readmodel/examples/accuracy.rs, on Python integers."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_unit(self):
        return (self.next_u64() >> 11) / float(1 << 53)


# ----------------------------------------------------------------------------------- distinct


def distinct_section(args):
    print("## Distinct counts (HyperLogLog)\n")
    print(
        f"Same values and partitioning as ours. Trials: {args.trials} up to 100k values, "
        f"{args.trials_1m} of them to 1M, {args.trials_10m} to 10M.\n"
    )
    jobs = []
    for trial in range(args.trials):
        if trial < args.trials_10m:
            max_n = 10_000_000
        elif trial < args.trials_1m:
            max_n = 1_000_000
        else:
            max_n = 100_000
        jobs.append((trial, max_n))
    jobs.sort(key=lambda job: -job[1])
    with multiprocessing.Pool(max(1, args.processes)) as pool:
        trials = pool.map(distinct_trial, jobs, chunksize=1)

    report = {}
    for lg_k in LG_KS:
        single_err = abs(ds.hll_sketch.get_rel_err(True, False, lg_k, 1))
        merged_err = abs(ds.hll_sketch.get_rel_err(True, True, lg_k, 1))
        entry = {"cpp_rel_err_single": single_err, "cpp_rel_err_merged": merged_err, "types": {}}
        for type_name in TYPES:
            print(
                f"### lg_k {lg_k}, {type_name}: C++ get_rel_err {single_err:.3%} single-stream, "
                f"{merged_err:.3%} merged\n"
            )
            print(
                "| n | trials | single median | single p95 | single max | single RSE | single bias "
                "| merged median | merged p95 | merged max | merged RSE |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            rows = []
            pooled = ([], [])
            for n in CARDINALITIES:
                points = sorted(
                    (t["trial"], t["points"][f"{lg_k}/{type_name}"][n])
                    for t in trials
                    if n in t["points"][f"{lg_k}/{type_name}"]
                )
                if not points:
                    continue
                single = [p[1][0] / n - 1 for p in points]
                merged = [p[1][1] / n - 1 for p in points]
                if n >= POOLED_FROM:
                    pooled[0].extend(single)
                    pooled[1].extend(merged)
                s, m = summary(single), summary(merged)
                print(
                    f"| {n:,} | {s['trials']} | {pct(s['median'])} | {pct(s['p95'])} | "
                    f"{pct(s['max'])} | {pct(s['rse'])} | {100 * s['bias']:+.3f}% | "
                    f"{pct(m['median'])} | {pct(m['p95'])} | {pct(m['max'])} | {pct(m['rse'])} |"
                )
                rows.append(
                    {
                        "n": n,
                        "single": s,
                        "merged": m,
                        "trials": [p[0] for p in points],
                        "single_estimates": [p[1][0] for p in points],
                        "merged_estimates": [p[1][1] for p in points],
                    }
                )
            ps, pm = summary(pooled[0]), summary(pooled[1])
            print(
                f"\nPooled over n >= {POOLED_FROM:,}: single RSE {pct(ps['rse'])} "
                f"({ps['trials']} estimates), merged RSE {pct(pm['rse'])}.\n"
            )
            entry["types"][type_name] = {
                "rows": rows,
                "pooled_single": ps,
                "pooled_merged": pm,
            }
        report[str(lg_k)] = entry
    return report


def distinct_trial(job):
    """One trial: every lg_k and type, single-stream and 16 partitions, read at checkpoints."""
    trial, max_n = job
    configs = [(lg_k, name, tgt) for lg_k in LG_KS for name, tgt in TYPES.items()]
    singles = [ds.hll_sketch(lg_k, tgt) for lg_k, _, tgt in configs]
    parts = [[ds.hll_sketch(lg_k, tgt) for _ in range(PARTITIONS)] for lg_k, _, tgt in configs]
    single_updates = [s.update for s in singles]
    part_updates = [tuple(parts[c][j].update for c in range(len(configs))) for j in range(PARTITIONS)]
    a, b, c, d = single_updates
    checkpoints = [n for n in CARDINALITIES if n <= max_n]
    points = {f"{lg_k}/{name}": {} for lg_k, name, _ in configs}
    start = 0
    for n in checkpoints:
        for i in range(start, n):
            value = f"u{trial:03d}-{i:09d}"
            a(value)
            b(value)
            c(value)
            d(value)
            w, x, y, z = part_updates[i & 15]
            w(value)
            x(value)
            y(value)
            z(value)
        start = n
        for index, (lg_k, name, tgt) in enumerate(configs):
            union = ds.hll_union(lg_k)
            for part in parts[index]:
                union.update(part)
            merged = union.get_result(tgt).get_estimate()
            points[f"{lg_k}/{name}"][n] = (singles[index].get_estimate(), merged)
    return {"trial": trial, "points": points}


# -------------------------------------------------------------------------------- frequencies


def frequency_section(access_log, wikipedia, projections, ours):
    print("## Frequencies and top-k (count_min_sketch + frequent_strings_sketch)\n")
    print(
        "Metrics as in ours; estimates from count_min_sketch.get_estimate (the JSON also holds "
        "them capped by frequent_strings_sketch.get_upper_bound), top-k from "
        "frequent_strings_sketch.get_frequent_items(NO_FALSE_NEGATIVES) sorted by estimate.\n"
    )
    streams = []
    for index, skew in enumerate(ZIPF_SKEWS):
        events, fingerprint = zipf_stream(skew, ZIPF_SEED + index)
        name = (
            f"Zipf s={skew:g} ({ZIPF_EVENTS:,} events, {ZIPF_ITEMS:,} items, "
            f"stream {fingerprint:016x})"
        )
        streams.append((name, events, ours_top_params(ours)))
    log = read_access_log(access_log)
    edits = read_wikipedia(wikipedia)
    streams.append(("access log: path", [line[1] for line in log], top_params(projections, "top_paths")))
    streams.append(("Wikipedia: page", [e["page"] for e in edits], top_params(projections, "top_pages")))
    streams.append(
        ("Wikipedia: channel", [e["channel"] for e in edits], top_params(projections, "top_channels"))
    )
    print(
        "| stream | params (width×depth, map) | events | distinct | top-100 mean abs | top-100 max "
        "abs | top-100 mean rel | top-100 max rel | random mean abs | random max abs | random "
        "mean rel | random max rel | never under | e·N/width | recall@10 | precision@10 | "
        "recall@100 | precision@100 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    if ours:
        ours_params = {
            row["stream"]: {key: row[key] for key in DEFAULT_TOP} for row in ours["frequencies"]
        }
        streams = [(name, events, ours_params.get(name, p)) for name, events, p in streams]
    report = [frequency_report(name, events, params) for name, events, params in streams]
    print()
    return report


def frequency_report(name, events, params):
    width, depth, map_size = params["width"], params["depth"], params["max_map_size"]
    counts = ds.count_min_sketch(depth, width, CM_SEED)
    heavy = ds.frequent_strings_sketch(int(math.log2(map_size)))
    exact = {}
    for event in events:
        if not event:
            continue
        counts.update(event)
        heavy.update(event)
        exact[event] = exact.get(event, 0) + 1
    n_events = sum(exact.values())
    ranked = sorted(exact.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    items = sorted(exact, key=lambda item: item.encode())

    def estimate(item):
        return int(counts.get_estimate(item))

    def combined(item):
        """Count-min estimate capped by the frequent-items upper bound (both guaranteed)."""
        return min(estimate(item), int(heavy.get_upper_bound(item)))

    top100 = [(count, estimate(item)) for item, count in ranked[:100]]
    top100_combined = [(count, combined(item)) for item, count in ranked[:100]]
    rng = SplitMix64(RANDOM_SEED)
    random_items = [items[rng.next_u64() % len(items)] for _ in range(RANDOM_ITEMS)]
    random_pairs = [(exact[item], estimate(item)) for item in random_items]
    random_combined = [(exact[item], combined(item)) for item in random_items]
    never_under = sum(1 for item, count in exact.items() if estimate(item) >= count)
    never_under_combined = sum(1 for item, count in exact.items() if combined(item) >= count)
    bound = math.e * n_events / width
    rows = heavy.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
    rows.sort(key=lambda row: (-row[1], row[0].encode()))

    def top_k(k):
        answered = rows[:k]
        threshold = ranked[min(k, len(ranked)) - 1][1] if ranked else 0
        correct = sum(1 for row in answered if exact.get(row[0], 0) >= max(threshold, 1))
        precision = correct / len(answered) if answered else 0.0
        wanted = min(k, len(ranked))
        return min(correct, wanted) / wanted, precision

    recall10, precision10 = top_k(10)
    recall100, precision100 = top_k(100)
    top, rnd = count_errors(top100), count_errors(random_pairs)
    print(
        f"| {name} | {width}×{depth}, {map_size} | {n_events:,} | {len(exact):,} | "
        f"{top['mean_abs']:.1f} | {top['max_abs']} | {pct(top['mean_rel'])} | {pct(top['max_rel'])} | "
        f"{rnd['mean_abs']:.1f} | {rnd['max_abs']} | {pct(rnd['mean_rel'])} | {pct(rnd['max_rel'])} | "
        f"{never_under}/{len(exact)} ({pct(never_under / len(exact))}) | {bound:.0f} | "
        f"{recall10:.2f} | {precision10:.2f} | {recall100:.2f} | {precision100:.2f} |"
    )
    return {
        "stream": name,
        "width": width,
        "depth": depth,
        "max_map_size": map_size,
        "events": n_events,
        "distinct": len(exact),
        "top100": top,
        "random": rnd,
        "never_under": never_under,
        "never_under_fraction": never_under / len(exact),
        "top100_combined": count_errors(top100_combined),
        "random_combined": count_errors(random_combined),
        "never_under_combined_fraction": never_under_combined / len(exact),
        "cm_bound": bound,
        "recall10": recall10,
        "precision10": precision10,
        "recall100": recall100,
        "precision100": precision100,
        "bytes": counts.get_serialized_size_bytes() + heavy.get_serialized_size_bytes(),
    }


def zipf_stream(skew, seed):
    """Item names and fingerprint, as zipf_stream in readmodel/examples/accuracy.rs."""
    cumulative = []
    total = 0.0
    for rank in range(ZIPF_ITEMS):
        total += float(rank + 1) ** -skew
        cumulative.append(total)
    rng = SplitMix64(seed)
    fingerprint = 0
    events = []
    last = ZIPF_ITEMS - 1
    for _ in range(ZIPF_EVENTS):
        rank = min(bisect.bisect_right(cumulative, rng.next_unit() * total), last)
        fingerprint = (fingerprint * 0x00000100000001B3 + rank + 1) & MASK
        events.append(f"/catalog/item-{rank}.html")
    return events, fingerprint


def count_errors(pairs):
    abs_errors = [abs(e - t) for t, e in pairs]
    rel = [abs(e - t) / t for t, e in pairs if t > 0]
    return {
        "items": len(pairs),
        "mean_abs": sum(abs_errors) / max(1, len(abs_errors)),
        "max_abs": max(abs_errors, default=0),
        "mean_rel": sum(rel) / max(1, len(rel)),
        "max_rel": max(rel, default=0.0),
    }


# ------------------------------------------------------------------------------------- memory


def memory_section(top):
    print("## Memory (serialized bytes)\n")
    print("| sketch | n | compact bytes | updatable bytes |")
    print("|---|---:|---:|---:|")
    rows = []
    for lg_k in LG_KS:
        for name, tgt in TYPES.items():
            sketch = ds.hll_sketch(lg_k, tgt)
            start = 0
            for n in CARDINALITIES[:-1]:
                for i in range(start, n):
                    sketch.update(f"m-{i:09d}")
                start = n
                compact = len(sketch.serialize_compact())
                updatable = len(sketch.serialize_updatable())
                print(f"| hll_sketch lg_k {lg_k} {name} | {n:,} | {compact:,} | {updatable:,} |")
                rows.append(
                    {"sketch": f"{name}", "lg_k": lg_k, "n": n, "bytes": compact, "updatable": updatable}
                )
    events, _ = zipf_stream(1.0, ZIPF_SEED + 1)
    counts = ds.count_min_sketch(top["depth"], top["width"], CM_SEED)
    heavy = ds.frequent_strings_sketch(int(math.log2(top["max_map_size"])))
    for event in events:
        counts.update(event)
        heavy.update(event)
    cm_bytes = counts.get_serialized_size_bytes()
    fi_bytes = heavy.get_serialized_size_bytes()
    cm_name = f"count_min_sketch {top['width']}×{top['depth']}"
    fi_name = f"frequent_strings_sketch map {top['max_map_size']}"
    print(f"| {cm_name} | {len(events):,} | {cm_bytes:,} | |")
    print(f"| {fi_name} | {len(events):,} | {fi_bytes:,} | |")
    rows.append({"sketch": cm_name, "n": len(events), "bytes": cm_bytes})
    rows.append({"sketch": fi_name, "n": len(events), "bytes": fi_bytes})
    print()
    return rows


# ------------------------------------------------------------------------------------ helpers


def summary(errors):
    magnitudes = sorted(abs(e) for e in errors)
    n = len(magnitudes)
    return {
        "trials": n,
        "median": quantile(magnitudes, 0.5),
        "p95": quantile(magnitudes, 0.95),
        "max": magnitudes[-1],
        "rse": math.sqrt(sum(e * e for e in errors) / n),
        "bias": sum(errors) / n,
    }


def quantile(sorted_values, q):
    rank = min(max(math.ceil(q * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]


def pct(fraction):
    if abs(fraction) >= 10:
        return f"{round(100 * fraction):,}%"
    return f"{100 * fraction:.3f}%"


def load_projections(path):
    with open(path, "rb") as file:
        return {p["name"]: p for p in tomllib.load(file).get("projection", [])}


def ours_top_params(ours):
    """The default top parameters the Rust harness measured, else the documented defaults."""
    for row in (ours or {}).get("memory", {}).get("rows", []):
        if row.get("read_model") == "top":
            return {key: row[key] for key in DEFAULT_TOP}
    return DEFAULT_TOP


def top_params(projections, name):
    projection = projections.get(name, {})
    return {key: projection.get(key, value) for key, value in DEFAULT_TOP.items()}


def read_access_log(path):
    """(client, path) of every combined-log-format line."""
    lines = []
    with gzip.open(path, "rt", encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            client, _, rest = line.rstrip("\n").partition(" ")
            after_time = rest[rest.index("]") + 1 :]
            request = after_time.split('"')[1]
            parts = request.split(" ")
            if len(parts) < 2:
                sys.exit(f"accuracy.py: {path} line {number}: request has no path")
            lines.append((client, parts[1]))
    return lines


def read_wikipedia(path):
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [
            {key: edit.get(key) or "" for key in ("user", "page", "channel")}
            for edit in map(json.loads, file)
        ]


if __name__ == "__main__":
    main()
