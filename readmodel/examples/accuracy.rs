//! Accuracy and size of the sketch read models against exact answers, printed as markdown
//! tables (and written as JSON with `--json`, for `deploy/bench-sketches.sh`).
//!
//! Run in release: `cargo run --release -p readmodel --example accuracy`. Sections:
//!
//! * distinct: relative error of `ReadModel::distinct` over many trials at cardinalities 10 to
//!   10M, for lg_k 12 and 14, single-stream and merged from 16 partitions, next to the relative
//!   standard error DataSketches publishes;
//! * frequencies: `ReadModel::count` and `ReadModel::top` on Zipf streams and on the two real
//!   data sets, against exact counts;
//! * membership: Bloom false-positive rate at 50%, 100% and 200% of the configured capacity;
//! * memory: stored bytes, and the library's in-memory estimate, per read model.
//!
//! Guarantee: every number is measured on this run, through the public `readmodel` API (the
//! `datasketches` crate only decodes the payloads of the documented envelope and sizes HLL_4
//! and HLL_8 sketches of the same values, for the memory table). The streams are deterministic:
//! values are built from the trial number and position, and Zipf ranks come from a seeded
//! splitmix64 and an inverse-CDF table, exactly as `readmodel/bench/accuracy.py` builds them, so
//! the Python run sees the same values.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use datasketches::bloom::BloomFilter;
use datasketches::frequencies::FrequentItemsSketch;
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType};
use flate2::read::GzDecoder;
use readmodel::{Kind, MembershipAnswer, ProjectionFile, ReadModel, SketchParams};
use serde_json::{Value, json};

/// Cardinalities at which distinct estimates are read.
const CARDINALITIES: [u64; 7] = [10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];
/// lg_k values measured.
const LG_KS: [u8; 2] = [12, 14];
/// Partitions whose read models are merged for the merged estimate.
const PARTITIONS: usize = 16;
/// Cardinalities pooled for the asymptotic RSE (the sketch is in HLL mode there).
const POOLED_FROM: u64 = 100_000;
/// HIP estimator RSE factor (sqrt(ln 2)) and composite (merged) factor, as DataSketches
/// documents them: RSE = factor / sqrt(k).
const HIP_RSE_FACTOR: f64 = 0.832_554_6;
const COMPOSITE_RSE_FACTOR: f64 = 1.038_96;
/// Zipf streams: events, item universe, skews, and the seed of the first skew.
const ZIPF_EVENTS: usize = 1_000_000;
const ZIPF_ITEMS: usize = 100_000;
const ZIPF_SKEWS: [f64; 3] = [0.8, 1.0, 1.2];
const ZIPF_SEED: u64 = 20_150_517;
/// Items whose count estimates are checked at random, and the seed choosing them.
const RANDOM_ITEMS: usize = 1_000;
const RANDOM_SEED: u64 = 9_001;
/// Bloom filter: capacity, configured rate, fill levels, non-member probes.
const BLOOM_CAPACITY: u64 = 100_000;
const BLOOM_RATE: f64 = 0.01;
const BLOOM_FILLS: [f64; 3] = [0.5, 1.0, 2.0];
const BLOOM_PROBES: u64 = 1_000_000;
/// Redis's dense HyperLogLog: 16384 six-bit registers, 0.81% standard error.
const REDIS_HLL_BYTES: usize = 12 * 1024;

/// Command line.
#[derive(Parser)]
#[command(about = "Accuracy and size of the sketch read models, as markdown tables")]
struct Args {
    /// Folder holding the two data sets [default: <repo>/../shared/data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The web access log (combined log format, gzip) [default: <data-dir>/access-log-2015-05.log.gz].
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// The Wikipedia edits (NDJSON, gzip) [default: <data-dir>/wikipedia-edits-2015-09-12.ndjson.gz].
    #[arg(long)]
    wikipedia: Option<PathBuf>,
    /// Projection file whose parameters the real data sets use [default: <repo>/deploy/projections.toml].
    #[arg(long)]
    projections: Option<PathBuf>,
    /// Also write every measured number here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Distinct trials up to 1M values.
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// Of those, how many go on to 10M values.
    #[arg(long, default_value_t = 5)]
    trials_10m: usize,
    /// Worker threads for the distinct trials.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("readmodel lives in the workspace root")?
        .to_path_buf();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| repo.join("../shared/data"));
    let access_log = args
        .access_log
        .clone()
        .unwrap_or_else(|| data_dir.join("access-log-2015-05.log.gz"));
    let wikipedia = args
        .wikipedia
        .clone()
        .unwrap_or_else(|| data_dir.join("wikipedia-edits-2015-09-12.ndjson.gz"));
    let projections_path = args
        .projections
        .clone()
        .unwrap_or_else(|| repo.join("deploy/projections.toml"));
    let projections = ProjectionFile::load(&projections_path)
        .with_context(|| format!("cannot load {}", projections_path.display()))?;
    if args.trials_10m > args.trials {
        bail!(
            "--trials-10m ({}) cannot exceed --trials ({})",
            args.trials_10m,
            args.trials
        );
    }

    let started = Instant::now();
    println!("# Read model accuracy (ours: readmodel over datasketches 0.6.0)\n");
    let distinct = distinct_section(&args)?;
    let frequencies = frequency_section(&access_log, &wikipedia, &projections)?;
    let real_distinct = real_distinct_section(&access_log, &wikipedia, &projections)?;
    let membership = membership_section()?;
    let memory = memory_section()?;
    println!(
        "_Harness run time: {:.1} s._",
        started.elapsed().as_secs_f64()
    );

    if let Some(path) = &args.json {
        let report = json!({
            "implementation": "readmodel (datasketches crate 0.6.0)",
            "distinct": distinct,
            "frequencies": frequencies,
            "real_distinct": real_distinct,
            "membership": membership,
            "memory": memory,
            "run_seconds": started.elapsed().as_secs_f64(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A seeded splitmix64 generator, identical to the one in readmodel/bench/accuracy.py.
struct SplitMix64 {
    state: u64,
}

/// Zipf sampler over ranks 0..n by inverse CDF: P(rank r) proportional to (r + 1)^-skew.
struct Zipf {
    cumulative: Vec<f64>,
}

/// Distinct estimates of one trial: (cardinality, single-stream, merged) per checkpoint.
struct DistinctTrial {
    lg_k: u8,
    trial: usize,
    points: Vec<(u64, f64, f64)>,
}

/// Error summary of estimates of one cardinality.
struct ErrorSummary {
    trials: usize,
    median: f64,
    p95: f64,
    max: f64,
    rse: f64,
    bias: f64,
}

/// Absolute and relative error of count estimates over a set of items.
struct CountErrors {
    items: usize,
    mean_abs: f64,
    max_abs: u64,
    mean_rel: f64,
    max_rel: f64,
}

/// The fields of one access log line that the projections read.
struct AccessLine {
    client: String,
    path: String,
}

/// The fields of one Wikipedia edit that the projections read.
struct Edit {
    user: String,
    page: String,
    channel: String,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Zipf {
    fn new(items: usize, skew: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..items)
            .map(|rank| {
                total += ((rank + 1) as f64).powf(-skew);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let target = rng.next_unit() * self.cumulative[self.cumulative.len() - 1];
        self.cumulative
            .partition_point(|&c| c <= target)
            .min(self.cumulative.len() - 1)
    }
}

impl ErrorSummary {
    /// From signed relative errors.
    fn of(errors: &[f64]) -> ErrorSummary {
        let mut magnitudes: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        magnitudes.sort_by(f64::total_cmp);
        let n = magnitudes.len();
        ErrorSummary {
            trials: n,
            median: quantile(&magnitudes, 0.5),
            p95: quantile(&magnitudes, 0.95),
            max: magnitudes[n - 1],
            rse: (errors.iter().map(|e| e * e).sum::<f64>() / n as f64).sqrt(),
            bias: errors.iter().sum::<f64>() / n as f64,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "trials": self.trials, "median": self.median, "p95": self.p95, "max": self.max,
            "rse": self.rse, "bias": self.bias,
        })
    }
}

impl CountErrors {
    /// From (true count, estimate) pairs; relative errors only over items that occurred.
    fn of(pairs: &[(u64, u64)]) -> CountErrors {
        let abs: Vec<u64> = pairs.iter().map(|&(t, e)| e.abs_diff(t)).collect();
        let rel: Vec<f64> = pairs
            .iter()
            .filter(|&&(t, _)| t > 0)
            .map(|&(t, e)| e.abs_diff(t) as f64 / t as f64)
            .collect();
        CountErrors {
            items: pairs.len(),
            mean_abs: abs.iter().sum::<u64>() as f64 / abs.len().max(1) as f64,
            max_abs: abs.iter().copied().max().unwrap_or(0),
            mean_rel: rel.iter().sum::<f64>() / rel.len().max(1) as f64,
            max_rel: rel.iter().copied().fold(0.0, f64::max),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "items": self.items, "mean_abs": self.mean_abs, "max_abs": self.max_abs,
            "mean_rel": self.mean_rel, "max_rel": self.max_rel,
        })
    }
}

// ------------------------------------------------------------------------------ distinct

fn distinct_section(args: &Args) -> Result<Value> {
    println!("## Distinct counts (HyperLogLog)\n");
    println!(
        "Values `u<trial>-<i>`; trial t feeds values i = 0.. into one read model (single) and \
         into {PARTITIONS} read models by i mod {PARTITIONS}, merged at each checkpoint \
         (merged). {} trials up to 1M values, the first {} of them on to 10M. Error = \
         |estimate - n| / n; RSE = root mean square of the signed error.\n",
        args.trials, args.trials_10m
    );
    let trials = run_distinct_trials(args)?;
    let mut report = serde_json::Map::new();
    for lg_k in LG_KS {
        let k = f64::from(1u32 << lg_k);
        let published_single = HIP_RSE_FACTOR / k.sqrt();
        let published_merged = COMPOSITE_RSE_FACTOR / k.sqrt();
        println!(
            "### lg_k {lg_k}: published RSE {:.3}% single-stream (HIP), {:.3}% merged\n",
            100.0 * published_single,
            100.0 * published_merged
        );
        println!(
            "| n | trials | single median | single p95 | single max | single RSE | single bias \
             | merged median | merged p95 | merged max | merged RSE |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut rows = Vec::new();
        let mut pooled = (Vec::new(), Vec::new());
        for n in CARDINALITIES {
            let (single, merged) = errors_at(&trials, lg_k, n);
            if single.is_empty() {
                continue;
            }
            if n >= POOLED_FROM {
                pooled.0.extend_from_slice(&single);
                pooled.1.extend_from_slice(&merged);
            }
            let s = ErrorSummary::of(&single);
            let m = ErrorSummary::of(&merged);
            println!(
                "| {} | {} | {} | {} | {} | {} | {:+.3}% | {} | {} | {} | {} |",
                thousands(n),
                s.trials,
                pct(s.median),
                pct(s.p95),
                pct(s.max),
                pct(s.rse),
                100.0 * s.bias,
                pct(m.median),
                pct(m.p95),
                pct(m.max),
                pct(m.rse)
            );
            let estimates = |pick: fn(&(u64, f64, f64)) -> f64| -> Vec<Value> {
                let mut of_n: Vec<(usize, f64)> = trials
                    .iter()
                    .filter(|t| t.lg_k == lg_k)
                    .filter_map(|t| {
                        t.points
                            .iter()
                            .find(|p| p.0 == n)
                            .map(|p| (t.trial, pick(p)))
                    })
                    .collect();
                of_n.sort_by_key(|&(trial, _)| trial);
                of_n.into_iter().map(|(_, e)| json!(e)).collect()
            };
            rows.push(json!({
                "n": n,
                "single": s.to_json(),
                "merged": m.to_json(),
                "single_estimates": estimates(|p| p.1),
                "merged_estimates": estimates(|p| p.2),
            }));
        }
        let pooled_single = ErrorSummary::of(&pooled.0);
        let pooled_merged = ErrorSummary::of(&pooled.1);
        println!(
            "\nPooled over n >= {}: single RSE {} ({} estimates, 95% interval {}), merged RSE {} \
             (95% interval {}).\n",
            thousands(POOLED_FROM),
            pct(pooled_single.rse),
            pooled_single.trials,
            rse_interval(&pooled_single),
            pct(pooled_merged.rse),
            rse_interval(&pooled_merged)
        );
        report.insert(
            lg_k.to_string(),
            json!({
                "published_single_rse": published_single,
                "published_merged_rse": published_merged,
                "rows": rows,
                "pooled_from": POOLED_FROM,
                "pooled_single": pooled_single.to_json(),
                "pooled_merged": pooled_merged.to_json(),
            }),
        );
    }
    Ok(Value::Object(report))
}

/// Runs every (lg_k, trial) on `args.threads` threads, longest first.
fn run_distinct_trials(args: &Args) -> Result<Vec<DistinctTrial>> {
    let mut jobs: Vec<(u8, usize, u64)> = Vec::new();
    for lg_k in LG_KS {
        for trial in 0..args.trials {
            let max_n = if trial < args.trials_10m {
                10_000_000
            } else {
                1_000_000
            };
            jobs.push((lg_k, trial, max_n));
        }
    }
    jobs.sort_by_key(|&(lg_k, trial, max_n)| (std::cmp::Reverse(max_n), lg_k, trial));
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(lg_k, trial, max_n)) = jobs.get(index) else {
                        break;
                    };
                    match distinct_trial(lg_k, trial, max_n) {
                        Ok(done) => results.lock().expect("results lock").push(done),
                        Err(error) => {
                            *failure.lock().expect("failure lock") = Some(error);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().expect("failure lock") {
        return Err(error);
    }
    Ok(results.into_inner().expect("results lock"))
}

fn distinct_trial(lg_k: u8, trial: usize, max_n: u64) -> Result<DistinctTrial> {
    let params = SketchParams::Distinct { lg_k };
    let mut single = ReadModel::new(&params)?;
    let mut parts = (0..PARTITIONS)
        .map(|_| ReadModel::new(&params))
        .collect::<Result<Vec<_>, _>>()?;
    let mut points = Vec::new();
    let mut value = String::new();
    let mut checkpoints = CARDINALITIES
        .iter()
        .copied()
        .filter(|&n| n <= max_n)
        .peekable();
    for i in 0..max_n {
        value.clear();
        write!(value, "u{trial:03}-{i:09}").expect("write to a String");
        single.update(&value);
        parts[(i % PARTITIONS as u64) as usize].update(&value);
        if checkpoints.peek() == Some(&(i + 1)) {
            let n = checkpoints.next().expect("peeked");
            let mut merged = ReadModel::new(&params)?;
            for part in &parts {
                merged.merge(part)?;
            }
            points.push((n, estimate(&single)?, estimate(&merged)?));
        }
    }
    Ok(DistinctTrial {
        lg_k,
        trial,
        points,
    })
}

fn estimate(model: &ReadModel) -> Result<f64> {
    Ok(model
        .distinct()
        .context("a distinct read model answers distinct")?
        .estimate)
}

/// Signed relative errors of every trial at (lg_k, n): (single, merged).
fn errors_at(trials: &[DistinctTrial], lg_k: u8, n: u64) -> (Vec<f64>, Vec<f64>) {
    let exact = n as f64;
    trials
        .iter()
        .filter(|t| t.lg_k == lg_k)
        .filter_map(|t| t.points.iter().find(|p| p.0 == n))
        .map(|&(_, single, merged)| (single / exact - 1.0, merged / exact - 1.0))
        .unzip()
}

/// Approximate 95% interval of an RSE measured from m samples: RSE (1 +- 1.96 / sqrt(2m)).
fn rse_interval(summary: &ErrorSummary) -> String {
    let half = 1.96 / (2.0 * summary.trials as f64).sqrt();
    format!(
        "{} to {}",
        pct(summary.rse * (1.0 - half)),
        pct(summary.rse * (1.0 + half))
    )
}

// --------------------------------------------------------------------------- frequencies

fn frequency_section(
    access_log: &Path,
    wikipedia: &Path,
    projections: &ProjectionFile,
) -> Result<Value> {
    println!("## Frequencies and top-k (count-min + frequent items)\n");
    println!(
        "Count errors are `ReadModel::count` estimates minus exact counts, for the 100 most \
         frequent items and for {RANDOM_ITEMS} items drawn at random (seeded) from the distinct \
         items of the stream; relative error only over items that occurred. Never under: items \
         whose estimate is at least the exact count, over every distinct item. Top-k from \
         `ReadModel::top(k)`: an answered item is correct when its exact count is at least that \
         of the k-th most frequent item (ties count as correct); precision = correct / answered, \
         recall = min(correct, k) / k. e·N/width is the count-min error bound (probability \
         1 - e^-depth).\n"
    );
    let default_top = SketchParams::default_for(Kind::Top);
    let mut streams: Vec<(String, Vec<String>, SketchParams)> = Vec::new();
    for (index, skew) in ZIPF_SKEWS.into_iter().enumerate() {
        let (events, fingerprint) = zipf_stream(skew, ZIPF_SEED + index as u64);
        streams.push((
            format!(
                "Zipf s={skew} ({} events, {} items, stream {fingerprint:016x})",
                thousands(ZIPF_EVENTS as u64),
                thousands(ZIPF_ITEMS as u64)
            ),
            events,
            default_top,
        ));
    }
    let paths = read_access_log(access_log)?
        .into_iter()
        .map(|line| line.path)
        .collect();
    streams.push((
        "access log: path".to_string(),
        paths,
        params_of(projections, "top_paths", default_top),
    ));
    let edits = read_wikipedia(wikipedia)?;
    streams.push((
        "Wikipedia: page".to_string(),
        edits.iter().map(|e| e.page.clone()).collect(),
        params_of(projections, "top_pages", default_top),
    ));
    streams.push((
        "Wikipedia: channel".to_string(),
        edits.iter().map(|e| e.channel.clone()).collect(),
        params_of(projections, "top_channels", default_top),
    ));

    println!(
        "| stream | params (width×depth, map) | events | distinct | top-100 mean abs | top-100 max \
         abs | top-100 mean rel | top-100 max rel | random mean abs | random max abs | random \
         mean rel | random max rel | never under | e·N/width | recall@10 | precision@10 | \
         recall@100 | precision@100 |"
    );
    println!(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut report = Vec::new();
    for (name, events, params) in &streams {
        report.push(frequency_report(name, events, params)?);
    }
    println!();
    Ok(Value::Array(report))
}

fn frequency_report(name: &str, events: &[String], params: &SketchParams) -> Result<Value> {
    let SketchParams::Top {
        width,
        depth,
        max_map_size,
    } = *params
    else {
        bail!("{name}: top parameters expected, got {params:?}");
    };
    let mut model = ReadModel::new(params)?;
    let mut exact: HashMap<&str, u64> = HashMap::new();
    let mut counted = 0u64;
    // Empty values are not counted by read models (nor by DataSketches), so not here either.
    for event in events.iter().filter(|e| !e.is_empty()) {
        model.update(event);
        *exact.entry(event.as_str()).or_default() += 1;
        counted += 1;
    }
    let mut ranked: Vec<(&str, u64)> = exact.iter().map(|(&item, &count)| (item, count)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut sorted_items: Vec<&str> = exact.keys().copied().collect();
    sorted_items.sort_unstable();

    let estimate = |item: &str| -> Result<u64> {
        Ok(model
            .count(item)
            .context("a top read model answers count")?
            .estimate)
    };
    let top100 = ranked
        .iter()
        .take(100)
        .map(|&(item, count)| Ok((count, estimate(item)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut rng = SplitMix64::new(RANDOM_SEED);
    let random = (0..RANDOM_ITEMS)
        .map(|_| {
            let item = sorted_items[(rng.next_u64() % sorted_items.len() as u64) as usize];
            Ok((exact[item], estimate(item)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut never_under = 0;
    for (&item, &count) in &exact {
        if estimate(item)? >= count {
            never_under += 1;
        }
    }
    let bound = std::f64::consts::E * counted as f64 / f64::from(width);
    let top_k = |k: usize| -> Result<(f64, f64)> {
        let answered = model.top(k).context("a top read model answers top")?;
        let threshold = ranked.get(k - 1).or(ranked.last()).map_or(0, |r| r.1);
        let correct = answered
            .iter()
            .filter(|row| exact.get(row.item.as_str()).copied().unwrap_or(0) >= threshold.max(1))
            .count();
        let precision = if answered.is_empty() {
            0.0
        } else {
            correct as f64 / answered.len() as f64
        };
        let wanted = k.min(ranked.len());
        Ok((correct.min(wanted) as f64 / wanted as f64, precision))
    };
    let (recall10, precision10) = top_k(10)?;
    let (recall100, precision100) = top_k(100)?;
    let top = CountErrors::of(&top100);
    let rnd = CountErrors::of(&random);
    println!(
        "| {name} | {width}×{depth}, {max_map_size} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} \
         | {} | {} | {}/{} ({}) | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        thousands(counted),
        thousands(exact.len() as u64),
        top.mean_abs,
        top.max_abs,
        pct(top.mean_rel),
        pct(top.max_rel),
        rnd.mean_abs,
        rnd.max_abs,
        pct(rnd.mean_rel),
        pct(rnd.max_rel),
        never_under,
        exact.len(),
        pct(never_under as f64 / exact.len() as f64),
        bound,
        recall10,
        precision10,
        recall100,
        precision100
    );
    Ok(json!({
        "stream": name,
        "width": width, "depth": depth, "max_map_size": max_map_size,
        "events": counted, "distinct": exact.len(),
        "top100": top.to_json(), "random": rnd.to_json(),
        "never_under": never_under, "never_under_fraction": never_under as f64 / exact.len() as f64,
        "cm_bound": bound,
        "recall10": recall10, "precision10": precision10,
        "recall100": recall100, "precision100": precision100,
        "bytes": model.to_bytes().len(),
    }))
}

/// A Zipf stream of item names and its fingerprint (the same in readmodel/bench/accuracy.py).
fn zipf_stream(skew: f64, seed: u64) -> (Vec<String>, u64) {
    let zipf = Zipf::new(ZIPF_ITEMS, skew);
    let mut rng = SplitMix64::new(seed);
    let mut fingerprint = 0u64;
    let events = (0..ZIPF_EVENTS)
        .map(|_| {
            let rank = zipf.sample(&mut rng);
            fingerprint = fingerprint
                .wrapping_mul(0x0000_0100_0000_01B3)
                .wrapping_add(rank as u64 + 1);
            zipf_item(rank)
        })
        .collect();
    (events, fingerprint)
}

fn zipf_item(rank: usize) -> String {
    format!("/catalog/item-{rank}.html")
}

fn params_of(projections: &ProjectionFile, name: &str, fallback: SketchParams) -> SketchParams {
    projections.get(name).map_or(fallback, |p| p.params)
}

// ------------------------------------------------------------------------- real distinct

fn real_distinct_section(
    access_log: &Path,
    wikipedia: &Path,
    projections: &ProjectionFile,
) -> Result<Value> {
    println!("## Distinct counts on the real data sets (whole file, one read model)\n");
    println!("| data set: field | lg_k | exact | estimate | error |");
    println!("|---|---:|---:|---:|---:|");
    let default = SketchParams::default_for(Kind::Distinct);
    let log = read_access_log(access_log)?;
    let edits = read_wikipedia(wikipedia)?;
    let cases: Vec<(&str, Vec<&str>, SketchParams)> = vec![
        (
            "access log: client",
            log.iter().map(|l| l.client.as_str()).collect(),
            params_of(projections, "visitors", default),
        ),
        (
            "access log: path",
            log.iter().map(|l| l.path.as_str()).collect(),
            default,
        ),
        (
            "Wikipedia: user",
            edits.iter().map(|e| e.user.as_str()).collect(),
            params_of(projections, "editors", default),
        ),
        (
            "Wikipedia: page",
            edits.iter().map(|e| e.page.as_str()).collect(),
            params_of(projections, "pages_edited", default),
        ),
    ];
    let mut report = Vec::new();
    for (name, values, params) in cases {
        let mut model = ReadModel::new(&params)?;
        for value in &values {
            model.update(value);
        }
        let exact = values
            .iter()
            .filter(|v| !v.is_empty())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let estimate = estimate(&model)?;
        let SketchParams::Distinct { lg_k } = params else {
            bail!("{name}: distinct parameters expected");
        };
        let error = estimate / exact as f64 - 1.0;
        println!(
            "| {name} | {lg_k} | {} | {estimate:.1} | {:+.3}% |",
            thousands(exact as u64),
            100.0 * error
        );
        report.push(json!({"case": name, "lg_k": lg_k, "exact": exact, "estimate": estimate}));
    }
    println!();
    Ok(Value::Array(report))
}

// ---------------------------------------------------------------------------- membership

fn membership_section() -> Result<Value> {
    println!("## Membership (Bloom filter)\n");
    println!(
        "Configured for {} items at {}; {} non-member probes per fill level.\n",
        thousands(BLOOM_CAPACITY),
        pct(BLOOM_RATE),
        thousands(BLOOM_PROBES)
    );
    println!(
        "| fill | inserted | false positives | measured FPR | reported FPR | over capacity | false \
         negatives | stored bytes |"
    );
    println!("|---:|---:|---:|---:|---:|---|---:|---:|");
    let params = SketchParams::Membership {
        expected_items: BLOOM_CAPACITY,
        false_positive_rate: BLOOM_RATE,
    };
    let mut report = Vec::new();
    for fill in BLOOM_FILLS {
        let inserted = (BLOOM_CAPACITY as f64 * fill) as u64;
        let mut model = ReadModel::new(&params)?;
        let mut value = String::new();
        for i in 0..inserted {
            value.clear();
            write!(value, "member-{i}").expect("write to a String");
            model.update(&value);
        }
        let mut false_negatives = 0u64;
        for i in 0..inserted {
            value.clear();
            write!(value, "member-{i}").expect("write to a String");
            if !contains(&model, &value)?.maybe_present {
                false_negatives += 1;
            }
        }
        let mut positives = 0u64;
        for i in 0..BLOOM_PROBES {
            value.clear();
            write!(value, "stranger-{i}").expect("write to a String");
            positives += u64::from(contains(&model, &value)?.maybe_present);
        }
        let answer = contains(&model, "stranger-0")?;
        let reported = answer.estimated_false_positive_rate;
        let measured = positives as f64 / BLOOM_PROBES as f64;
        let bytes = model.to_bytes().len();
        println!(
            "| {:.0}% | {} | {} | {} | {} | {} | {false_negatives} | {} |",
            100.0 * fill,
            thousands(inserted),
            thousands(positives),
            pct(measured),
            pct(reported),
            if answer.over_capacity { "yes" } else { "no" },
            thousands(bytes as u64)
        );
        report.push(json!({
            "fill": fill, "inserted": inserted, "false_positives": positives,
            "expected_items": BLOOM_CAPACITY, "false_positive_rate": BLOOM_RATE,
            "probes": BLOOM_PROBES,
            "measured_fpr": measured, "reported_fpr": reported,
            "over_capacity": answer.over_capacity,
            "false_negatives": false_negatives, "bytes": bytes,
        }));
    }
    println!();
    Ok(Value::Array(report))
}

fn contains(model: &ReadModel, value: &str) -> Result<MembershipAnswer> {
    model
        .contains(value)
        .context("a membership read model answers contains")
}

// -------------------------------------------------------------------------------- memory

fn memory_section() -> Result<Value> {
    println!("## Memory\n");
    println!(
        "Stored = `ReadModel::to_bytes` length, envelope included. Distinct: the HLL image is \
         the payload (docs/read-model-format.md); in memory = the library's `estimated_size` of \
         an HLL_4 and of an HLL_8 sketch of the same values (which form a read model keeps in \
         memory is internal to the crate). Top: in memory = 8 bytes × width × depth of u64 \
         counters plus the library's `estimated_size` of the decoded frequent-items image. \
         Membership: in memory = the library's `estimated_size` of every decoded Bloom image. \
         Redis keeps a dense HyperLogLog in {} bytes (16384 six-bit registers, 0.81% standard \
         error).\n",
        thousands(REDIS_HLL_BYTES as u64)
    );
    println!("| read model | n | stored bytes | sketch image | in memory (bytes) |");
    println!("|---|---:|---:|---|---:|");
    let mut report = Vec::new();
    for lg_k in LG_KS {
        let mut model = ReadModel::new(&SketchParams::Distinct { lg_k })?;
        let mut hll4 = HllSketch::new(lg_k, HllType::Hll4)?;
        let mut hll8 = HllSketch::new(lg_k, HllType::Hll8)?;
        let mut value = String::new();
        let mut i = 0u64;
        for n in CARDINALITIES.into_iter().filter(|&n| n <= 1_000_000) {
            while i < n {
                value.clear();
                write!(value, "m-{i:09}").expect("write to a String");
                model.update(&value);
                hll4.update(raw_bytes::from_str(&value));
                hll8.update(raw_bytes::from_str(&value));
                i += 1;
            }
            let bytes = model.to_bytes();
            let image = payloads(&bytes).first().and_then(|p| {
                HllSketch::deserialize(p)
                    .ok()
                    .map(|h| (p.len(), h.target_type()))
            });
            let image_text = image.map_or("not an HLL image".to_string(), |(len, hll_type)| {
                format!("{hll_type:?}, {} bytes", thousands(len as u64))
            });
            let in_memory = format!(
                "{} (HLL_4), {} (HLL_8)",
                thousands(hll4.estimated_size() as u64),
                thousands(hll8.estimated_size() as u64)
            );
            memory_row(
                &format!("distinct lg_k {lg_k}"),
                n,
                bytes.len(),
                &image_text,
                &in_memory,
            );
            report.push(json!({
                "read_model": "distinct", "lg_k": lg_k, "n": n, "bytes": bytes.len(),
                "image_bytes": image.map(|(len, _)| len),
                "image_type": image.map(|(_, t)| format!("{t:?}")),
                "in_memory_hll4": hll4.estimated_size(), "in_memory_hll8": hll8.estimated_size(),
            }));
        }
    }

    let top_params = SketchParams::default_for(Kind::Top);
    let SketchParams::Top {
        width,
        depth,
        max_map_size,
    } = top_params
    else {
        bail!("top parameters expected");
    };
    let mut top = ReadModel::new(&top_params)?;
    let (events, _) = zipf_stream(1.0, ZIPF_SEED + 1);
    for event in &events {
        top.update(event);
    }
    let bytes = top.to_bytes();
    let parts = payloads(&bytes);
    let heavy = parts
        .get(1)
        .and_then(|p| FrequentItemsSketch::<String>::deserialize(p).ok());
    let counters = 8 * width as usize * depth as usize;
    let in_memory = heavy.as_ref().map(|h| counters + h.estimated_size());
    let image_text = format!(
        "count-min {} bytes, frequent items {} bytes",
        thousands(parts.first().map_or(0, |p| p.len()) as u64),
        thousands(parts.get(1).map_or(0, |p| p.len()) as u64)
    );
    memory_row(
        &format!("top {}", describe(&top_params)),
        events.len() as u64,
        bytes.len(),
        &image_text,
        &in_memory.map_or("n/a".to_string(), |b| thousands(b as u64)),
    );
    report.push(json!({
        "read_model": "top", "params": describe(&top_params), "n": events.len(),
        "width": width, "depth": depth, "max_map_size": max_map_size,
        "bytes": bytes.len(), "in_memory": in_memory,
    }));

    for (params, fill) in [
        (SketchParams::default_for(Kind::Membership), 1.0),
        (
            SketchParams::Membership {
                expected_items: BLOOM_CAPACITY,
                false_positive_rate: BLOOM_RATE,
            },
            1.0,
        ),
        (
            SketchParams::Membership {
                expected_items: BLOOM_CAPACITY,
                false_positive_rate: BLOOM_RATE,
            },
            2.0,
        ),
    ] {
        let mut model = ReadModel::new(&params)?;
        let SketchParams::Membership { expected_items, .. } = params else {
            bail!("membership parameters expected");
        };
        let inserted = (expected_items as f64 * fill) as u64;
        let mut value = String::new();
        for i in 0..inserted {
            value.clear();
            write!(value, "member-{i}").expect("write to a String");
            model.update(&value);
        }
        let bytes = model.to_bytes();
        let filters: Vec<BloomFilter> = payloads(&bytes)
            .into_iter()
            .filter_map(|p| BloomFilter::deserialize(p).ok())
            .collect();
        let in_memory: usize = filters.iter().map(BloomFilter::estimated_size).sum();
        let image_text = format!("{} Bloom image(s)", filters.len());
        memory_row(
            &format!("membership {}", describe(&params)),
            inserted,
            bytes.len(),
            &image_text,
            &if filters.is_empty() {
                "n/a".to_string()
            } else {
                thousands(in_memory as u64)
            },
        );
        report.push(json!({
            "read_model": "membership", "params": describe(&params), "n": inserted,
            "bytes": bytes.len(), "in_memory": in_memory, "bloom_images": filters.len(),
        }));
    }
    println!();
    Ok(json!({ "redis_hll_bytes": REDIS_HLL_BYTES, "rows": report }))
}

fn memory_row(label: &str, n: u64, bytes: usize, image: &str, in_memory: &str) {
    println!(
        "| {label} | {} | {} | {image} | {in_memory} |",
        thousands(n),
        thousands(bytes as u64)
    );
}

fn describe(params: &SketchParams) -> String {
    match *params {
        SketchParams::Distinct { lg_k } => format!("lg_k {lg_k}"),
        SketchParams::Top {
            width,
            depth,
            max_map_size,
        } => format!("{width}×{depth}, map {max_map_size}"),
        SketchParams::Membership {
            expected_items,
            false_positive_rate,
        } => format!(
            "{} items at {}",
            thousands(expected_items),
            pct(false_positive_rate)
        ),
    }
}

/// The length-prefixed payloads after the 12-byte envelope header (docs/read-model-format.md).
fn payloads(bytes: &[u8]) -> Vec<&[u8]> {
    let mut found = Vec::new();
    let mut at = 12;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(payload) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        found.push(payload);
        at += 4 + len;
    }
    found
}

// ----------------------------------------------------------------------------- data sets

/// Client and request path of every combined-log-format line.
fn read_access_log(path: &Path) -> Result<Vec<AccessLine>> {
    let mut lines = Vec::new();
    for (number, line) in gzip_lines(path)?.enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let parsed = parse_access_line(&line).with_context(|| {
            format!(
                "{} line {}: not combined log format",
                path.display(),
                number + 1
            )
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}

/// `client - - [time] "METHOD PATH PROTO" status bytes "referrer" "agent"`.
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (client, rest) = line.split_once(' ')?;
    let after_time = &rest[rest.find(']')? + 1..];
    let open = after_time.find('"')?;
    let request = &after_time[open + 1..];
    let request = &request[..request.find('"')?];
    let path = request.split(' ').nth(1)?;
    Some(AccessLine {
        client: client.to_string(),
        path: path.to_string(),
    })
}

fn read_wikipedia(path: &Path) -> Result<Vec<Edit>> {
    let mut edits = Vec::new();
    for (number, line) in gzip_lines(path)?.enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let edit: Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
        let field = |name: &str| edit[name].as_str().unwrap_or_default().to_string();
        edits.push(Edit {
            user: field("user"),
            page: field("page"),
            channel: field("channel"),
        });
    }
    Ok(edits)
}

fn gzip_lines(path: &Path) -> Result<std::io::Lines<BufReader<GzDecoder<File>>>> {
    let file = File::open(path).with_context(|| {
        format!(
            "cannot open {}; pass --data-dir (or --access-log / --wikipedia)",
            path.display()
        )
    })?;
    Ok(BufReader::new(GzDecoder::new(file)).lines())
}

// ------------------------------------------------------------------------------ printing

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn pct(fraction: f64) -> String {
    if fraction.abs() >= 10.0 {
        format!("{}%", thousands((100.0 * fraction).round() as u64))
    } else {
        format!("{:.3}%", 100.0 * fraction)
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
