//! Distinct counts: a HyperLogLog sketch kept as HLL_8 in memory and stored as HLL_4.
//!
//! HLL_8 (one byte per register) is what updates and the library's union work in, so folding
//! and merging need no conversion. The stored image is HLL_4 (four bits per register plus an
//! exception table for the rare register more than 14 above the minimum), about half the bytes:
//! lg_k 14 (0.81% relative standard error) is stored in 8 KiB and 40 bytes instead of 16 KiB, less
//! than the 12 KiB of a Redis HyperLogLog of the same precision. Both are DataSketches images
//! (family 7) that the Java, C++ and Python libraries read. The conversion is lossless: it keeps
//! every register and the estimator state (the HIP accumulator of an unmerged sketch).
//!
//! Merging sketches of different `lg_k` gives the sketch of the smaller `lg_k` (registers fold
//! by masking their slot, which the 64-bit hash makes exact: a register's value comes from a
//! hash word separate from its slot). A merge of two non-empty sketches that ends in HLL mode
//! answers with the composite estimator, which depends only on the registers (sparse results
//! count their coupons), so merges are commutative and associative to the byte.
//!
//! Guarantee: the registers of a merge equal those of one sketch of the smaller `lg_k` fed both
//! streams; decoding what [`Distinct::encode`] wrote gives back the same registers and estimate,
//! and encoding again gives the same bytes.

use datasketches::common::NumStdDev;
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType, HllUnion};

use crate::canonical;

/// Register type of the stored image.
const STORED_TYPE: HllType = HllType::Hll4;

/// Register type in memory.
const MEMORY_TYPE: HllType = HllType::Hll8;

/// Standard deviations of the reported bounds.
const STD_DEVS: NumStdDev = NumStdDev::Two;

/// A HyperLogLog sketch of UTF-8 values.
#[derive(Debug, Clone)]
pub(crate) struct Distinct {
    /// Always HLL_8.
    hll: HllSketch,
}

/// Estimate and bounds of a distinct count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bounds {
    pub(crate) estimate: f64,
    pub(crate) lower_bound: f64,
    pub(crate) upper_bound: f64,
    pub(crate) confidence: f64,
}

impl Distinct {
    /// An empty sketch; `lg_k` is validated by the caller (4..=21).
    pub(crate) fn new(lg_k: u8) -> Distinct {
        Distinct {
            hll: HllSketch::new(lg_k, MEMORY_TYPE).expect("lg_k is validated by SketchParams"),
        }
    }

    pub(crate) fn lg_k(&self) -> u8 {
        self.hll.lg_config_k()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hll.is_empty()
    }

    /// Adds a value, hashed as its raw UTF-8 bytes as the other DataSketches libraries do.
    pub(crate) fn update(&mut self, value: &str) {
        self.hll.update(raw_bytes::from_str(value));
    }

    /// Merges `other` in; the result has the smaller of the two `lg_k`.
    pub(crate) fn merge(&mut self, other: &Distinct) {
        let lg_k = self.lg_k().min(other.lg_k());
        if other.is_empty() && lg_k == self.lg_k() {
            return;
        }
        if self.is_empty() && lg_k == other.lg_k() {
            self.hll = other.hll.clone();
            return;
        }
        let mut union = HllUnion::new(lg_k).expect("lg_k of an existing sketch is valid");
        union.update(&self.hll);
        union.update(&other.hll);
        // Merging the result into itself changes no register, but in HLL mode it switches the
        // union to the composite estimator, which depends on the registers alone. Without it the
        // HIP accumulator of a sketch promoted during the merge would depend on merge order.
        let merged = union.to_sketch(MEMORY_TYPE);
        union.update(&merged);
        self.hll = union.to_sketch(MEMORY_TYPE);
    }

    /// The stored image: HLL_4, coupons in canonical order.
    pub(crate) fn encode(&self) -> Vec<u8> {
        canonical::hll_image(convert(&self.hll, STORED_TYPE).serialize())
    }

    /// Decodes a stored image, which must be HLL_4.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Distinct, String> {
        let stored = HllSketch::deserialize(bytes).map_err(|error| error.to_string())?;
        if stored.target_type() != STORED_TYPE {
            return Err(format!(
                "register type is {:?}, but distinct read models store HLL_4",
                stored.target_type()
            ));
        }
        Ok(Distinct {
            hll: convert(&stored, MEMORY_TYPE),
        })
    }

    /// Estimate with two-standard-deviation bounds.
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            estimate: self.hll.estimate(),
            lower_bound: self.hll.lower_bound(STD_DEVS),
            upper_bound: self.hll.upper_bound(STD_DEVS),
            confidence: 1.0 - 2.0 * STD_DEVS.tail_probability(),
        }
    }

    #[cfg(test)]
    pub(crate) fn sketch(&self) -> &HllSketch {
        &self.hll
    }
}

/// The same sketch with another register type. A union of the sketch's own `lg_k` copies its
/// registers and estimator state; converting back out of it keeps both.
fn convert(sketch: &HllSketch, to: HllType) -> HllSketch {
    let mut union =
        HllUnion::new(sketch.lg_config_k()).expect("lg_k of an existing sketch is valid");
    union.update(sketch);
    union.to_sketch(to)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bytes before the registers of an HLL_8 image in HLL mode.
    const HLL8_PREAMBLE: usize = 40;

    fn sketch(lg_k: u8, values: impl IntoIterator<Item = String>) -> Distinct {
        let mut sketch = Distinct::new(lg_k);
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            sketch.update(&value);
        }
        sketch
    }

    fn range(prefix: &str, range: std::ops::Range<u32>) -> impl Iterator<Item = String> + '_ {
        range.map(move |i| format!("{prefix}{i}"))
    }

    /// The register values of a sketch, whatever its mode: coupons fold onto their slot.
    fn registers(distinct: &Distinct) -> Vec<u8> {
        let k = 1usize << distinct.lg_k();
        let image = distinct.hll.serialize();
        match image[7] & 0x3 {
            // HLL mode: the register bytes follow the preamble.
            2 => image[HLL8_PREAMBLE..].to_vec(),
            mode => {
                let start = if mode == 0 { 8 } else { 12 };
                let mut registers = vec![0u8; k];
                for coupon in image[start..].chunks_exact(4) {
                    let coupon = u32::from_le_bytes(coupon.try_into().unwrap());
                    if coupon != 0 {
                        let slot = (coupon & ((1 << 26) - 1)) as usize & (k - 1);
                        registers[slot] = registers[slot].max((coupon >> 26) as u8);
                    }
                }
                registers
            }
        }
    }

    fn relative_standard_error(lg_k: u8) -> f64 {
        1.04 / f64::from(1u32 << lg_k).sqrt()
    }

    #[test]
    fn storage_is_hll4_and_about_half_of_hll8() {
        let mut sizes = Vec::new();
        for lg_k in [12u8, 14] {
            let full = sketch(lg_k, range("v", 0..200_000));
            let stored = full.encode();
            let hll8 = full.hll.serialize();
            assert_eq!(stored[7] & 0x3, 2, "HLL mode");
            assert_eq!(stored[7] >> 2 & 0x3, 0, "target type HLL_4");
            sizes.push((lg_k, stored.len(), hll8.len()));
            assert!(stored.len() < hll8.len() / 2 + 64, "{sizes:?}");
        }
        // lg_k 14: well under the 12 KiB (12288 bytes) of a Redis HyperLogLog.
        let (_, lg14_stored, _) = sizes[1];
        assert!(lg14_stored < 12 * 1024, "{sizes:?}");
    }

    #[test]
    fn stored_bytes_round_trip_registers_estimate_and_bytes() {
        for (lg_k, n) in [
            (4u8, 3u32),
            (4, 200_000),
            (12, 7),
            (12, 300),
            (12, 5_000),
            (14, 50_000),
        ] {
            let original = sketch(lg_k, range("r", 0..n));
            let bytes = original.encode();
            let back = Distinct::decode(&bytes).unwrap();
            assert_eq!(registers(&back), registers(&original), "lg_k {lg_k}, n {n}");
            assert_eq!(back.bounds(), original.bounds(), "lg_k {lg_k}, n {n}");
            assert_eq!(back.encode(), bytes, "lg_k {lg_k}, n {n}");
        }
    }

    #[test]
    fn decode_rejects_other_register_types() {
        let mut hll8 = HllSketch::new(12, HllType::Hll8).unwrap();
        hll8.update(raw_bytes::from_str("a"));
        let error = Distinct::decode(&hll8.serialize()).unwrap_err();
        assert!(error.contains("HLL_4"), "{error}");
    }

    #[test]
    fn small_cardinalities_are_counted_almost_exactly() {
        // Linear counting and the sparse (coupon) modes: a sketch that mishandles small
        // cardinalities (a missing small-range correction, as in the original HyperLogLog
        // paper's raw estimate) is off by a large factor here.
        for lg_k in [4u8, 8, 12] {
            let mut model = Distinct::new(lg_k);
            let tolerance = 3.0 * relative_standard_error(lg_k);
            for n in 1..=1000u32 {
                model.update(&format!("small-{n}"));
                let estimate = model.bounds().estimate;
                let error = (estimate - f64::from(n)).abs();
                assert!(
                    error <= 1.0 || error <= tolerance * f64::from(n),
                    "lg_k {lg_k}: n {n} estimated {estimate}"
                );
            }
        }
    }

    #[test]
    fn the_estimate_does_not_jump_when_the_sketch_turns_dense() {
        for lg_k in [8u8, 11, 14] {
            let mut model = Distinct::new(lg_k);
            let mut previous = (0.0f64, 0u8);
            let mut switched_at = None;
            for n in 1..=(1u32 << lg_k) {
                model.update(&format!("switch-{n}"));
                let mode = model.hll.serialize()[7] & 0x3;
                let estimate = model.bounds().estimate;
                if mode == 2 && previous.1 != 2 && n > 1 {
                    switched_at = Some(n);
                    // One more value changes the estimate by about one, not by a step.
                    let step = estimate - previous.0;
                    assert!(
                        (0.0..=3.0).contains(&step),
                        "lg_k {lg_k}: estimate went from {} to {estimate} at n {n}",
                        previous.0
                    );
                    // The stored and reloaded sketch answers the same across the switch.
                    let back = Distinct::decode(&model.encode()).unwrap();
                    assert_eq!(back.bounds().estimate, estimate);
                }
                previous = (estimate, mode);
            }
            let n = switched_at.unwrap_or_else(|| panic!("lg_k {lg_k} never turned dense"));
            assert!(n > 8, "lg_k {lg_k} switched at {n}");
        }
    }

    #[test]
    fn register_values_use_more_than_32_hash_bits() {
        // A coupon keeps 26 bits of slot and a 6-bit register value. With a 32-bit hash only 6
        // bits would be left for the value, capping it at 7, and the sketch would saturate
        // near 2^32 distinct values. The value here comes from a separate 64-bit hash word;
        // among 20000 values about 78 reach 9 or more.
        let model = sketch(21, range("wide-", 0..20_000));
        let image = model.hll.serialize();
        assert_eq!(image[7] & 0x3, 1, "expected a SET mode sketch");
        let max_value = image[12..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) >> 26)
            .max()
            .unwrap();
        assert!(max_value >= 9, "largest register value {max_value}");
    }

    #[test]
    fn merging_different_lg_k_folds_down_to_the_smaller() {
        for (left_n, right_n) in [(10u32, 20u32), (500, 700), (20_000, 30_000), (30, 40_000)] {
            let left_values: Vec<String> = range("m", 0..left_n).collect();
            let right_values: Vec<String> = range("m", left_n / 2..left_n / 2 + right_n).collect();
            let small = sketch(10, left_values.clone());
            let large = sketch(14, right_values.clone());
            let direct = sketch(10, left_values.iter().chain(&right_values).cloned());

            let mut down = small.clone();
            down.merge(&large);
            let mut up = large.clone();
            up.merge(&small);
            for merged in [&down, &up] {
                assert_eq!(merged.lg_k(), 10);
                assert_eq!(
                    registers(merged),
                    registers(&direct),
                    "{left_n} + {right_n}"
                );
            }
            assert_eq!(down.encode(), up.encode());

            let unique = f64::from(left_n / 2 + right_n);
            let bounds = down.bounds();
            assert!(
                bounds.lower_bound <= unique && unique <= bounds.upper_bound,
                "{bounds:?} vs {unique}"
            );
        }
    }

    #[test]
    fn merging_an_empty_sketch_of_the_same_lg_k_changes_nothing() {
        let full = sketch(12, range("e", 0..3_000));
        let mut merged = full.clone();
        merged.merge(&Distinct::new(12));
        assert_eq!(merged.encode(), full.encode());
        let mut merged = Distinct::new(12);
        merged.merge(&full);
        assert_eq!(merged.encode(), full.encode());
        assert_eq!(merged.bounds(), full.bounds());
    }

    fn stream() -> impl Strategy<Value = Vec<String>> {
        prop_oneof![
            prop::collection::vec("[a-z]{0,3}", 0..60),
            (0u32..3_000, 0u32..100_000)
                .prop_map(|(n, offset)| { (offset..offset + n).map(|i| i.to_string()).collect() }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn merge_is_commutative_associative_and_the_sketch_of_the_union(
            lg_ks in (4u8..=12, 4u8..=12, 4u8..=12),
            a in stream(),
            b in stream(),
            c in stream(),
        ) {
            let (a_values, b_values, c_values) = (a, b, c);
            let a = sketch(lg_ks.0, a_values.clone());
            let b = sketch(lg_ks.1, b_values.clone());
            let c = sketch(lg_ks.2, c_values.clone());

            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(ab.encode(), ba.encode());

            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c.encode(), a_bc.encode());

            let lg_k = lg_ks.0.min(lg_ks.1).min(lg_ks.2);
            let all = a_values.iter().chain(&b_values).chain(&c_values).cloned();
            let direct = sketch(lg_k, all);
            prop_assert_eq!(ab_c.lg_k(), lg_k);
            prop_assert_eq!(registers(&ab_c), registers(&direct));

            let bytes = ab_c.encode();
            let back = Distinct::decode(&bytes).unwrap();
            prop_assert_eq!(back.encode(), bytes);
            prop_assert_eq!(back.bounds(), ab_c.bounds());
        }
    }
}
