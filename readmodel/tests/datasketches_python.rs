//! Interop of distinct read models with Apache DataSketches C++, through its Python package
//! (`datasketches` 5.2.0 on PyPI), in both directions.
//!
//! Rust to C++: the HLL image inside a distinct read model (taken out of the envelope as
//! docs/read-model-format.md lays it out) is read by C++ with lg_k and estimate unchanged, and a
//! C++ sketch of the same strings has the same estimate. C++ to Rust: HLL_4, HLL_6 and HLL_8
//! images written by C++, compact and updatable, in LIST, SET and HLL mode, are read by the
//! `datasketches` crate with the C++ estimate, and wrapped in a read model envelope they are
//! read by `ReadModel::from_bytes` (always for the register type read models store) and merge
//! with read models built here.
//!
//! Guarantee: the test fails, and says to run `pip install datasketches==5.2.0`, when python3 or
//! its datasketches module is missing; it never skips.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use datasketches::hll::{HllSketch, HllType};
use readmodel::{FORMAT_VERSION, MAGIC, ReadModel, ReadModelError, SketchParams};
use serde_json::{Value, json};

const PIP_HINT: &str = "pip install datasketches==5.2.0";

/// Read models written here for C++ to read: (lg_k, distinct values), covering the LIST, SET
/// and HLL modes of the sketch.
const RUST_CASES: [(u8, usize); 5] = [(12, 5), (12, 700), (12, 50_000), (14, 20_000), (8, 100_000)];

/// Envelope header: magic, version, kind, events (docs/read-model-format.md).
const HEADER_LEN: usize = 12;
const KIND_DISTINCT: u8 = 1;

#[test]
fn hll_images_are_apache_datasketches_images_both_ways() {
    require_python();
    let dir = scratch_dir();

    // Rust -> C++.
    let mut cases = Vec::new();
    for (lg_k, count) in RUST_CASES {
        let prefix = format!("rs{lg_k}x{count}");
        let model = distinct_model(lg_k, &prefix, count);
        let bytes = model.to_bytes();
        let image = distinct_image(&bytes);
        let estimate = model.distinct().expect("a distinct read model").estimate;
        let raw = HllSketch::deserialize(image).expect("our HLL image reads back in the library");
        assert_eq!(raw.lg_config_k(), lg_k);
        assert_eq!(
            raw.estimate(),
            estimate,
            "{prefix}: library and read model disagree"
        );
        let file = format!("rust-{prefix}.hll");
        fs::write(dir.join(&file), image).expect("write the HLL image");
        cases.push(json!({
            "name": prefix,
            "file": file,
            "lg_k": lg_k,
            "count": count,
            "prefix": prefix,
            "type": type_name(raw.target_type()),
            "estimate": estimate,
        }));
    }
    fs::write(
        dir.join("rust.json"),
        serde_json::to_vec_pretty(&json!({ "cases": cases })).expect("manifest"),
    )
    .expect("write the manifest");

    run_interop_script(&dir);

    // C++ -> Rust.
    let stored_type = {
        let model = distinct_model(12, "stored-type", 100_000);
        HllSketch::deserialize(distinct_image(&model.to_bytes()))
            .expect("our HLL image")
            .target_type()
    };
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("python.json")).expect("python.json written"))
            .expect("python.json is JSON");
    let sketches = manifest["sketches"].as_array().expect("a sketches array");
    assert!(
        sketches.len() >= 30,
        "the script wrote {} sketches",
        sketches.len()
    );
    let mut wrapped_of_stored_type = 0;
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    for entry in sketches {
        let file = entry["file"].as_str().expect("file");
        let lg_k = u8::try_from(entry["lg_k"].as_u64().expect("lg_k")).expect("small lg_k");
        let count = entry["count"].as_u64().expect("count");
        let prefix = entry["prefix"].as_str().expect("prefix");
        let kind = entry["type"].as_str().expect("type");
        let cpp_estimate = entry["estimate"].as_f64().expect("estimate");
        let image = fs::read(dir.join(file)).expect("C++ image written");

        let raw = HllSketch::deserialize(&image)
            .unwrap_or_else(|error| panic!("{file}: the library cannot read a C++ image: {error}"));
        assert_eq!(raw.lg_config_k(), lg_k, "{file}");
        assert_eq!(type_name(raw.target_type()), kind, "{file}");
        assert_close(
            raw.estimate(),
            cpp_estimate,
            &format!("{file}: Rust reading C++ bytes"),
        );

        let ours = distinct_model(lg_k, prefix, count as usize);
        let our_estimate = ours.distinct().expect("distinct").estimate;
        assert_close(
            our_estimate,
            cpp_estimate,
            &format!("{file}: read model of same strings"),
        );

        match ReadModel::from_bytes(&envelope(count, &image)) {
            Ok(model) => {
                assert_eq!(model.events(), count, "{file}");
                let estimate = model.distinct().expect("distinct").estimate;
                assert_close(
                    estimate,
                    cpp_estimate,
                    &format!("{file}: wrapped in a read model"),
                );
                if raw.target_type() == stored_type {
                    wrapped_of_stored_type += 1;
                }
                // A C++ sketch merges with a read model of other values built here.
                let mut merged = model.clone();
                merged
                    .merge(&distinct_model(lg_k, "merge-partner", 1_000))
                    .unwrap_or_else(|error| panic!("{file}: merge failed: {error}"));
                let union = merged.distinct().expect("distinct").estimate;
                let truth = (count + 1_000) as f64;
                // Three standard errors of a merged HLL sketch: 3 * 1.04 / sqrt(k).
                let tolerance = 3.0 * 1.04 / f64::from(1u32 << lg_k).sqrt();
                assert!(
                    (union / truth - 1.0).abs() <= tolerance,
                    "{file}: merged estimate {union} is more than 3 standard errors from {truth}"
                );
            }
            Err(error) => {
                assert_ne!(
                    raw.target_type(),
                    stored_type,
                    "{file}: a C++ image of the register type read models store is rejected: {error}"
                );
                assert!(
                    matches!(error, ReadModelError::CorruptSketch { .. }),
                    "{file}: rejected for an unexpected reason: {error}"
                );
                *rejected.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
    }
    for (kind, count) in &rejected {
        println!(
            "note: {count} C++ {kind} images are not accepted in a read model envelope, which \
             stores {}",
            type_name(stored_type)
        );
    }
    let per_type = sketches
        .iter()
        .filter(|e| e["type"] == type_name(stored_type))
        .count();
    assert_eq!(
        wrapped_of_stored_type, per_type,
        "every C++ image of the stored register type must be accepted in a read model"
    );
    fs::remove_dir_all(&dir).expect("remove the scratch folder");
}

/// Panics with the install hint unless `python3 -c 'import datasketches'` works.
fn require_python() {
    match Command::new("python3")
        .args(["-c", "import datasketches"])
        .output()
    {
        Err(error) => panic!(
            "python3 could not be started ({error}); install Python 3, then run `{PIP_HINT}`"
        ),
        Ok(output) if !output.status.success() => panic!(
            "python3 cannot import the datasketches module ({}); run `{PIP_HINT}`",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Ok(_) => {}
    }
}

fn run_interop_script(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/hll_interop.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{} failed ({}); if the module is missing run `{PIP_HINT}`\n{stdout}\n{stderr}",
        script.display(),
        output.status
    );
}

fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("datasketches-python-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("clear the scratch folder");
    }
    fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

/// The same strings as `value` in bench/hll_interop.py.
fn value(prefix: &str, i: usize) -> String {
    format!("{prefix}-visitor-{i:07}@tenant-ü.example")
}

fn distinct_model(lg_k: u8, prefix: &str, count: usize) -> ReadModel {
    let mut model = ReadModel::new(&SketchParams::Distinct { lg_k }).expect("valid lg_k");
    for i in 0..count {
        model.update(&value(prefix, i));
    }
    model
}

/// The HLL image of a distinct read model: the first payload after the 12-byte header.
fn distinct_image(bytes: &[u8]) -> &[u8] {
    assert_eq!(bytes[..2], MAGIC, "read model magic");
    assert_eq!(
        bytes[3], KIND_DISTINCT,
        "kind byte of a distinct read model"
    );
    let len = u32::from_le_bytes(
        bytes[HEADER_LEN..HEADER_LEN + 4]
            .try_into()
            .expect("4 bytes"),
    );
    &bytes[HEADER_LEN + 4..HEADER_LEN + 4 + len as usize]
}

/// A distinct read model envelope of this format version around a foreign HLL image.
fn envelope(events: u64, image: &[u8]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&[FORMAT_VERSION, KIND_DISTINCT]);
    bytes.extend_from_slice(&events.to_le_bytes());
    bytes.extend_from_slice(
        &u32::try_from(image.len())
            .expect("small image")
            .to_le_bytes(),
    );
    bytes.extend_from_slice(image);
    bytes
}

fn type_name(hll_type: HllType) -> &'static str {
    match hll_type {
        HllType::Hll4 => "HLL_4",
        HllType::Hll6 => "HLL_6",
        HllType::Hll8 => "HLL_8",
    }
}

fn assert_close(ours: f64, theirs: f64, what: &str) {
    let tolerance = 1e-12 * ours.abs().max(theirs.abs());
    assert!(
        (ours - theirs).abs() <= tolerance,
        "{what}: estimate {ours:?} here, {theirs:?} in C++"
    );
}
