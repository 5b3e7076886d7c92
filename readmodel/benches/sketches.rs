//! Criterion benchmarks of the sketch read models and of the raw DataSketches kernels under
//! them: nanoseconds per update (hashing included), per merge (two read models, and a month of
//! 720 hourly distinct read models), per serialization and per deserialization.
//!
//! Run with `cargo bench -p readmodel --bench sketches` (deploy/bench-sketches.sh runs it and
//! turns the results into docs/sketch-benchmarks.md). Measurement times are short so the whole
//! run stays near two minutes on two cores. Benchmark ids are `<group>/<subject>`, where the
//! subject starts with `readmodel_` (the public `ReadModel` API) or `kernel_` (the
//! `datasketches` crate called directly, without the read model around it).
//!
//! Guarantee: every benchmark works on values shaped like the pipeline's (e-mail-like visitor
//! ids and URL paths of 30 to 40 bytes, a Zipf-skewed path stream for top), on sketches already
//! filled to their working state, and only through public APIs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use datasketches::bloom::{BloomFilter, BloomFilterBuilder};
use datasketches::countmin::CountMinSketch;
use datasketches::frequencies::FrequentItemsSketch;
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use readmodel::{Kind, ReadModel, SketchParams};

/// Pre-generated values cycled through by the update benchmarks (a power of two).
const VALUES: usize = 1 << 16;
/// Hours in a 30-day month, and distinct visitors per hour out of the month's pool.
const HOURS: usize = 720;
const VISITORS_PER_HOUR: usize = 3_000;
const VISITOR_POOL: u64 = 200_000;
/// Bloom filter seed of membership read models (docs/read-model-format.md).
const MEMBERSHIP_SEED: u64 = 9001;

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1_000))
        .sample_size(20);
    targets = update, merge, merge_month, serialize, deserialize
}
criterion_main!(benches);

fn update(c: &mut Criterion) {
    let values = Values::new();
    let mean_len = |v: &[String]| v.iter().map(String::len).sum::<usize>() as f64 / v.len() as f64;
    println!(
        "bench-sketches: mean value length visitors {:.1} bytes, paths {:.1} bytes",
        mean_len(&values.visitors),
        mean_len(&values.paths)
    );
    let mut group = c.benchmark_group("update");
    group.throughput(Throughput::Elements(1));

    for lg_k in [12, 14] {
        let model = filled(SketchParams::Distinct { lg_k }, &values.visitors);
        bench_updates(
            &mut group,
            &format!("readmodel_distinct_lg{lg_k}"),
            model,
            &values.visitors,
        );
    }
    let top = filled(SketchParams::default_for(Kind::Top), &values.paths);
    bench_updates(&mut group, "readmodel_top", top, &values.paths);
    let membership = filled(
        SketchParams::default_for(Kind::Membership),
        &values.visitors,
    );
    bench_updates(
        &mut group,
        "readmodel_membership",
        membership,
        &values.visitors,
    );

    for (name, hll_type) in [
        ("kernel_hll8_lg12", HllType::Hll8),
        ("kernel_hll4_lg12", HllType::Hll4),
    ] {
        let mut sketch = HllSketch::new(12, hll_type).expect("lg_k 12");
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                sketch.update(raw_bytes::from_str(black_box(
                    &values.visitors[i & (VALUES - 1)],
                )));
                i += 1;
            })
        });
    }
    let mut counts = CountMinSketch::<u64>::new(5, 1024).expect("5 x 1024");
    let mut i = 0;
    group.bench_function("kernel_countmin_1024x5", |b| {
        b.iter(|| {
            counts.update(raw_bytes::from_str(black_box(
                &values.paths[i & (VALUES - 1)],
            )));
            i += 1;
        })
    });
    let mut heavy = FrequentItemsSketch::<String>::new(1024).expect("map 1024");
    let mut i = 0;
    group.bench_function("kernel_frequent_items_1024", |b| {
        b.iter(|| {
            heavy.update_ref(black_box(values.paths[i & (VALUES - 1)].as_str()));
            i += 1;
        })
    });
    let mut filter = bloom(1_000_000);
    let mut i = 0;
    group.bench_function("kernel_bloom_1m_1pct", |b| {
        b.iter(|| {
            filter.insert(raw_bytes::from_str(black_box(
                &values.visitors[i & (VALUES - 1)],
            )));
            i += 1;
        })
    });
    group.finish();
}

fn merge(c: &mut Criterion) {
    let values = Values::new();
    let (left_visitors, right_visitors) = values.visitors.split_at(VALUES / 2);
    let (left_paths, right_paths) = values.paths.split_at(VALUES / 2);
    let mut group = c.benchmark_group("merge");

    let pairs = [
        (
            "readmodel_distinct_lg12",
            SketchParams::Distinct { lg_k: 12 },
            left_visitors,
            right_visitors,
        ),
        (
            "readmodel_top",
            SketchParams::default_for(Kind::Top),
            left_paths,
            right_paths,
        ),
        (
            "readmodel_membership",
            SketchParams::default_for(Kind::Membership),
            left_visitors,
            right_visitors,
        ),
    ];
    for (name, params, left, right) in pairs {
        let left = filled(params, left);
        let right = filled(params, right);
        group.bench_function(name, |b| {
            b.iter_batched(
                || left.clone(),
                |mut target| {
                    target.merge(black_box(&right)).expect("same parameters");
                    target
                },
                BatchSize::LargeInput,
            )
        });
    }

    let left = hll(12, HllType::Hll8, left_visitors);
    let right = hll(12, HllType::Hll8, right_visitors);
    group.bench_function("kernel_hll_union_lg12", |b| {
        b.iter(|| {
            let mut union = HllUnion::new(12).expect("lg_k 12");
            union.update(black_box(&left));
            union.update(black_box(&right));
            union.to_sketch(HllType::Hll8)
        })
    });
    let mut left = CountMinSketch::<u64>::new(5, 1024).expect("5 x 1024");
    let mut right = left.clone();
    left_paths
        .iter()
        .for_each(|p| left.update(raw_bytes::from_str(p)));
    right_paths
        .iter()
        .for_each(|p| right.update(raw_bytes::from_str(p)));
    group.bench_function("kernel_countmin_1024x5", |b| {
        b.iter_batched(
            || left.clone(),
            |mut target| {
                target.merge(black_box(&right)).expect("same shape");
                target
            },
            BatchSize::LargeInput,
        )
    });
    let mut left = bloom(1_000_000);
    let mut right = left.clone();
    left_visitors
        .iter()
        .for_each(|v| left.insert(raw_bytes::from_str(v)));
    right_visitors
        .iter()
        .for_each(|v| right.insert(raw_bytes::from_str(v)));
    group.bench_function("kernel_bloom_1m_1pct", |b| {
        b.iter_batched(
            || left.clone(),
            |mut target| {
                target.union(black_box(&right)).expect("same shape");
                target
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A month of hourly distinct read models (lg_k 12, each in HLL mode) merged into one.
fn merge_month(c: &mut Criterion) {
    let params = SketchParams::Distinct { lg_k: 12 };
    let mut rng = 0x0720_u64;
    let hourly: Vec<ReadModel> = (0..HOURS)
        .map(|_| {
            let mut model = ReadModel::new(&params).expect("lg_k 12");
            for _ in 0..VISITORS_PER_HOUR {
                model.update(&visitor((next(&mut rng) % VISITOR_POOL) as usize));
            }
            model
        })
        .collect();
    let stored: Vec<Vec<u8>> = hourly.iter().map(ReadModel::to_bytes).collect();
    // The same hourly values again (same seed), straight into the kernel.
    let mut rng = 0x0720_u64;
    let kernels: Vec<HllSketch> = (0..HOURS)
        .map(|_| {
            let mut sketch = HllSketch::new(12, HllType::Hll8).expect("lg_k 12");
            for _ in 0..VISITORS_PER_HOUR {
                let value = visitor((next(&mut rng) % VISITOR_POOL) as usize);
                sketch.update(raw_bytes::from_str(&value));
            }
            sketch
        })
        .collect();

    let mut group = c.benchmark_group("merge_720_hourly");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("readmodel_distinct_lg12", |b| {
        b.iter(|| {
            let mut month = ReadModel::new(&params).expect("lg_k 12");
            for hour in &hourly {
                month.merge(black_box(hour)).expect("same parameters");
            }
            month
        })
    });
    group.bench_function("readmodel_distinct_lg12_from_bytes", |b| {
        b.iter(|| {
            let mut month = ReadModel::new(&params).expect("lg_k 12");
            for bytes in &stored {
                let hour = ReadModel::from_bytes(black_box(bytes)).expect("stored read model");
                month.merge(&hour).expect("same parameters");
            }
            month
        })
    });
    group.bench_function("kernel_hll_union_lg12", |b| {
        b.iter(|| {
            let mut union = HllUnion::new(12).expect("lg_k 12");
            for sketch in &kernels {
                union.update(black_box(sketch));
            }
            union.to_sketch(HllType::Hll8)
        })
    });
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut group = c.benchmark_group("serialize");
    for (name, model) in &subjects.models {
        group.bench_function(*name, |b| b.iter(|| black_box(model).to_bytes()));
    }
    for (name, sketch) in &subjects.hlls {
        group.bench_function(*name, |b| b.iter(|| black_box(sketch).serialize()));
    }
    group.bench_function("kernel_countmin_1024x5", |b| {
        b.iter(|| black_box(&subjects.counts).serialize())
    });
    group.bench_function("kernel_frequent_items_1024", |b| {
        b.iter(|| black_box(&subjects.heavy).serialize())
    });
    group.bench_function("kernel_bloom_1m_1pct", |b| {
        b.iter(|| black_box(&subjects.filter).serialize())
    });
    group.finish();
}

fn deserialize(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut group = c.benchmark_group("deserialize");
    for (name, model) in &subjects.models {
        let bytes = model.to_bytes();
        group.bench_function(*name, |b| {
            b.iter(|| ReadModel::from_bytes(black_box(&bytes)).expect("valid bytes"))
        });
    }
    for (name, sketch) in &subjects.hlls {
        let bytes = sketch.serialize();
        group.bench_function(*name, |b| {
            b.iter(|| HllSketch::deserialize(black_box(&bytes)).expect("valid image"))
        });
    }
    let bytes = subjects.counts.serialize();
    group.bench_function("kernel_countmin_1024x5", |b| {
        b.iter(|| CountMinSketch::<u64>::deserialize(black_box(&bytes)).expect("valid image"))
    });
    let bytes = subjects.heavy.serialize();
    group.bench_function("kernel_frequent_items_1024", |b| {
        b.iter(|| FrequentItemsSketch::<String>::deserialize(black_box(&bytes)).expect("valid"))
    });
    let bytes = subjects.filter.serialize();
    group.bench_function("kernel_bloom_1m_1pct", |b| {
        b.iter(|| BloomFilter::deserialize(black_box(&bytes)).expect("valid image"))
    });
    group.finish();
}

/// Values for the update benchmarks.
struct Values {
    /// Distinct visitor ids, e.g. `visitor-0000002a@tenant-3.example` (33 bytes).
    visitors: Vec<String>,
    /// A Zipf(1.0) stream over 10k URL paths, e.g. `/articles/2015/05/sketch-0042.html` (34 bytes).
    paths: Vec<String>,
}

/// Filled sketches whose bytes are written and read.
struct Subjects {
    models: Vec<(&'static str, ReadModel)>,
    hlls: Vec<(&'static str, HllSketch)>,
    counts: CountMinSketch<u64>,
    heavy: FrequentItemsSketch<String>,
    filter: BloomFilter,
}

impl Values {
    fn new() -> Values {
        let visitors: Vec<String> = (0..VALUES).map(visitor).collect();
        let cumulative: Vec<f64> = (1..=10_000u32)
            .scan(0.0, |total, rank| {
                *total += 1.0 / f64::from(rank);
                Some(*total)
            })
            .collect();
        let mut rng = 0x5EED_u64;
        let paths = (0..VALUES)
            .map(|_| {
                let target = unit(&mut rng) * cumulative[cumulative.len() - 1];
                let rank = cumulative.partition_point(|&c| c <= target);
                format!("/articles/2015/05/sketch-{rank:04}.html")
            })
            .collect();
        Values { visitors, paths }
    }
}

impl Subjects {
    fn new() -> Subjects {
        let values = Values::new();
        let sparse = &values.visitors[..100];
        let models = vec![
            (
                "readmodel_distinct_lg12",
                filled(SketchParams::Distinct { lg_k: 12 }, &values.visitors),
            ),
            (
                "readmodel_distinct_lg12_100_values",
                filled(SketchParams::Distinct { lg_k: 12 }, sparse),
            ),
            (
                "readmodel_top",
                filled(SketchParams::default_for(Kind::Top), &values.paths),
            ),
            (
                "readmodel_membership",
                filled(
                    SketchParams::default_for(Kind::Membership),
                    &values.visitors,
                ),
            ),
        ];
        let hlls = vec![
            ("kernel_hll8_lg12", hll(12, HllType::Hll8, &values.visitors)),
            ("kernel_hll4_lg12", hll(12, HllType::Hll4, &values.visitors)),
        ];
        let mut counts = CountMinSketch::<u64>::new(5, 1024).expect("5 x 1024");
        let mut heavy = FrequentItemsSketch::<String>::new(1024).expect("map 1024");
        for path in &values.paths {
            counts.update(raw_bytes::from_str(path));
            heavy.update_ref(path.as_str());
        }
        let mut filter = bloom(1_000_000);
        for v in &values.visitors {
            filter.insert(raw_bytes::from_str(v));
        }
        Subjects {
            models,
            hlls,
            counts,
            heavy,
            filter,
        }
    }
}

/// Times `model.update` on `values` in turn, one update per iteration.
fn bench_updates(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut model: ReadModel,
    values: &[String],
) {
    let mut i = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            model.update(black_box(&values[i & (values.len() - 1)]));
            i += 1;
        })
    });
}

fn filled(params: SketchParams, values: &[String]) -> ReadModel {
    let mut model = ReadModel::new(&params).expect("valid parameters");
    for value in values {
        model.update(value);
    }
    model
}

fn hll(lg_k: u8, hll_type: HllType, values: &[String]) -> HllSketch {
    let mut sketch = HllSketch::new(lg_k, hll_type).expect("valid lg_k");
    for value in values {
        sketch.update(raw_bytes::from_str(value));
    }
    sketch
}

fn bloom(expected_items: u64) -> BloomFilter {
    BloomFilterBuilder::with_accuracy(expected_items, 0.01)
        .seed(MEMBERSHIP_SEED)
        .build()
        .expect("valid size")
}

fn visitor(i: usize) -> String {
    format!("visitor-{i:08x}@tenant-{}.example", i % 7)
}

fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}
