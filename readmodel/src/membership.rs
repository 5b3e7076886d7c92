//! Membership: a scalable Bloom filter that grows instead of silently degrading.
//!
//! A series of DataSketches Bloom filters ("stages", Almeida, Baquero, Preguiça and Hutchison,
//! "Scalable Bloom Filters", 2007). Stage `i` is sized for `expected_items * 2^i` distinct values
//! at false-positive rate `false_positive_rate * 2^-i`. Values go into the last stage; once its
//! estimated number of distinct values reaches its capacity, the next new value opens the next
//! stage. A value already reported present by some stage is not inserted again.
//!
//! Rates: within the configured `expected_items` only stage 0 exists and the false-positive rate
//! is the configured one. Past it, the filter grows and the rate stays below
//! `1 - prod(1 - p * 2^-i) < 2p`, however many values arrive, where a single filter's rate would
//! climb towards 1 (a merge can overfill a stage; the estimated rate shows it). Growth stops when another stage would take the filter past 2^32 bits in all
//! (or past 64 stages); from then on the last stage keeps filling and its rate rises, which
//! [`Membership::estimated_false_positive_rate`] shows.
//!
//! Sizing: the library's own sizing rounds the number of hash functions up (`ceil(m/n ln 2)`),
//! which for some rates costs more than 10% over the target (at `p = 0.497`, two hashes where
//! one is optimal give 0.557). Here each stage takes the smallest bit count, in whole 64-bit
//! words, for which the better of the two integers around the optimal hash count meets the
//! stage's rate at its capacity, and that hash count.
//!
//! Merging ORs stage `i` with stage `i` (the stage geometry is a function of the parameters and
//! the index, so equal parameters give equal geometry); stages that only one side has are kept
//! as they are. The result has the larger stage count, is the same whatever the order of the
//! merges, and reports every value either side held.
//!
//! Guarantee: [`Membership::contains`] is true for every value ever inserted into this filter or
//! any filter merged into it (no false negatives); within the configured capacity a false
//! positive occurs at about the configured rate; every stage of a decoded filter has exactly the
//! geometry its parameters and index give.

use datasketches::bloom::{BloomFilter, BloomFilterBuilder};
use datasketches::hash::value::raw_bytes;

/// Seed of every stage: the DataSketches default, so stage 0 matches a filter of the same bit
/// and hash counts built by the Java or C++ library with defaults.
pub(crate) const SEED: u64 = 9001;

/// Capacity factor from one stage to the next.
const GROWTH: u64 = 2;

/// Rate factor from one stage to the next.
const TIGHTENING: f64 = 0.5;

/// Most bits of all stages together (512 MiB).
pub(crate) const MAX_TOTAL_BITS: u64 = 1 << 32;

/// Most stages.
const MAX_STAGES: usize = 64;

/// Length of the configuration payload: expected items, rate, stage count.
pub(crate) const CONFIG_LEN: usize = 8 + 8 + 1;

/// Bit count, hash count and design point of one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    /// Distinct values the stage is sized for.
    pub(crate) capacity: u64,
    /// False-positive rate at `capacity` values.
    pub(crate) rate: f64,
    /// Bits, a multiple of 64.
    pub(crate) bits: u64,
    /// Hash functions.
    pub(crate) hashes: u16,
}

/// A scalable Bloom filter of UTF-8 values.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    expected_items: u64,
    false_positive_rate: f64,
    /// At least one stage; stage `i` has `Geometry::stage(.., i)`.
    stages: Vec<Stage>,
}

/// One filter of the series and the geometry it was built with.
#[derive(Debug, Clone)]
struct Stage {
    geometry: Geometry,
    filter: BloomFilter,
}

impl Geometry {
    /// The smallest whole-word geometry whose rate at `capacity` values is at most `rate`.
    /// `None` when it would need more bits than a DataSketches image holds.
    pub(crate) fn for_target(capacity: u64, rate: f64) -> Option<Geometry> {
        let n = capacity as f64;
        let ln2_squared = std::f64::consts::LN_2 * std::f64::consts::LN_2;
        // The continuous optimum; an integer hash count can only need more bits.
        let ideal_bits = (-n * rate.ln() / ln2_squared).max(64.0);
        let mut low = (ideal_bits / 64.0).ceil() as u64;
        if low > MAX_WORDS {
            return None;
        }
        if best_hashes(low * 64, capacity).1 <= rate {
            return Some(Geometry::of(capacity, rate, low * 64));
        }
        // The best integer hash count is within a few percent of the continuous optimum, so
        // doubling always suffices; search the least passing word count in (low, high].
        let mut high = (low * 2).min(MAX_WORDS);
        if best_hashes(high * 64, capacity).1 > rate {
            return None;
        }
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if best_hashes(middle * 64, capacity).1 <= rate {
                high = middle;
            } else {
                low = middle;
            }
        }
        Some(Geometry::of(capacity, rate, high * 64))
    }

    /// Stage `index` of a filter configured for `expected_items` at `false_positive_rate`.
    pub(crate) fn stage(
        expected_items: u64,
        false_positive_rate: f64,
        index: usize,
    ) -> Option<Geometry> {
        let factor = GROWTH.checked_pow(u32::try_from(index).ok()?)?;
        let capacity = expected_items.checked_mul(factor)?;
        let rate = false_positive_rate * TIGHTENING.powi(i32::try_from(index).ok()?);
        Geometry::for_target(capacity, rate)
    }

    fn of(capacity: u64, rate: f64, bits: u64) -> Geometry {
        Geometry {
            capacity,
            rate,
            bits,
            hashes: best_hashes(bits, capacity).0,
        }
    }

    /// The false-positive rate of `bits` bits and `hashes` hashes holding `items` values:
    /// `(1 - e^(-k n / m))^k`.
    pub(crate) fn rate_at(bits: u64, hashes: u16, items: u64) -> f64 {
        let k = f64::from(hashes);
        let fill = -(-k * items as f64 / bits as f64).exp_m1();
        fill.powf(k)
    }
}

/// Most 64-bit words of one DataSketches Bloom image (its length field is an i32 less the
/// preamble).
const MAX_WORDS: u64 = i32::MAX as u64 - 4;

/// The hash count, among the integers around `bits / items * ln 2`, with the lowest rate at
/// `items` values, and that rate (ties go to fewer hashes).
fn best_hashes(bits: u64, items: u64) -> (u16, f64) {
    let ideal = bits as f64 / items.max(1) as f64 * std::f64::consts::LN_2;
    let clamp = |k: f64| k.clamp(1.0, f64::from(i16::MAX)) as u16;
    let (fewer, more) = (clamp(ideal.floor()), clamp(ideal.ceil()));
    let (rate_fewer, rate_more) = (
        Geometry::rate_at(bits, fewer, items),
        Geometry::rate_at(bits, more, items),
    );
    if rate_more < rate_fewer {
        (more, rate_more)
    } else {
        (fewer, rate_fewer)
    }
}

impl Membership {
    /// An empty filter; the parameters are validated by the caller (stage 0 must fit).
    pub(crate) fn new(expected_items: u64, false_positive_rate: f64) -> Membership {
        let geometry = Geometry::stage(expected_items, false_positive_rate, 0)
            .expect("membership parameters are validated by SketchParams");
        Membership {
            expected_items,
            false_positive_rate,
            stages: vec![Stage::new(geometry)],
        }
    }

    pub(crate) fn expected_items(&self) -> u64 {
        self.expected_items
    }

    pub(crate) fn false_positive_rate(&self) -> f64 {
        self.false_positive_rate
    }

    #[cfg(test)]
    pub(crate) fn stage_count(&self) -> usize {
        self.stages.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.stages[0].filter.is_empty()
    }

    /// Inserts a value, opening the next stage first when the last one is full and no stage
    /// reports the value present.
    pub(crate) fn insert(&mut self, value: &str) {
        let key = raw_bytes::from_str(value);
        let (last, earlier) = self.stages.split_last_mut().expect("at least one stage");
        if earlier.iter().any(|stage| stage.filter.contains(&key)) {
            return;
        }
        // Inserting a value the last stage already reports present changes no bit.
        if last.estimated_items() < last.geometry.capacity as f64 || last.filter.contains(&key) {
            last.filter.insert(key);
            return;
        }
        if let Some(next) = self.next_stage() {
            self.stages.push(next);
        }
        self.stages
            .last_mut()
            .expect("at least one stage")
            .filter
            .insert(key);
    }

    /// Bits of all stages together.
    pub(crate) fn bits(&self) -> u64 {
        self.stages.iter().map(|stage| stage.geometry.bits).sum()
    }

    /// `false`: certainly never inserted; `true`: inserted, or a false positive.
    pub(crate) fn contains(&self, value: &str) -> bool {
        let key = raw_bytes::from_str(value);
        self.stages.iter().any(|stage| stage.filter.contains(&key))
    }

    /// Distinct values held, estimated from how many bits each stage has set.
    pub(crate) fn estimated_items(&self) -> f64 {
        self.stages.iter().map(Stage::estimated_items).sum()
    }

    /// Whether more distinct values (estimated) are held than the filter was configured for.
    pub(crate) fn over_capacity(&self) -> bool {
        self.estimated_items() > self.expected_items as f64
    }

    /// Probability that a value never inserted is reported present, from the current fill:
    /// `1 - prod(1 - fill_i^k_i)`.
    pub(crate) fn estimated_false_positive_rate(&self) -> f64 {
        let all_miss: f64 = self
            .stages
            .iter()
            .map(|stage| 1.0 - stage.filter.estimated_fpp())
            .product();
        1.0 - all_miss
    }

    /// ORs `other` in stage by stage. The caller checks that the parameters are equal.
    pub(crate) fn merge(&mut self, other: &Membership) {
        assert!(
            self.expected_items == other.expected_items
                && self.false_positive_rate.to_bits() == other.false_positive_rate.to_bits(),
            "membership parameters differ"
        );
        for (index, theirs) in other.stages.iter().enumerate() {
            match self.stages.get_mut(index) {
                Some(ours) => ours
                    .filter
                    .union(&theirs.filter)
                    .expect("equal parameters give equal stage geometry"),
                None => self.stages.push(theirs.clone()),
            }
        }
    }

    /// The configuration payload: `expected_items` u64, `false_positive_rate` as f64 bits,
    /// stage count u8, all little-endian.
    pub(crate) fn encode_config(&self) -> Vec<u8> {
        let mut config = Vec::with_capacity(CONFIG_LEN);
        config.extend_from_slice(&self.expected_items.to_le_bytes());
        config.extend_from_slice(&self.false_positive_rate.to_bits().to_le_bytes());
        config.push(u8::try_from(self.stages.len()).expect("at most 64 stages"));
        config
    }

    /// The DataSketches image of each stage, in order.
    pub(crate) fn encode_stages(&self) -> Vec<Vec<u8>> {
        self.stages
            .iter()
            .map(|stage| stage.filter.serialize())
            .collect()
    }

    /// Reads the configuration payload: parameters and stage count. The caller validates the
    /// parameters before decoding stages.
    pub(crate) fn decode_config(config: &[u8]) -> Result<(u64, f64, usize), String> {
        if config.len() != CONFIG_LEN {
            return Err(format!("it is {} bytes, not {CONFIG_LEN}", config.len()));
        }
        let expected_items = u64::from_le_bytes(config[..8].try_into().expect("8 bytes"));
        let rate = f64::from_bits(u64::from_le_bytes(
            config[8..16].try_into().expect("8 bytes"),
        ));
        let stages = usize::from(config[16]);
        if !(1..=MAX_STAGES).contains(&stages) {
            return Err(format!(
                "it lists {stages} stages; a filter has 1 to {MAX_STAGES}"
            ));
        }
        Ok((expected_items, rate, stages))
    }

    /// Rebuilds a filter from validated parameters and its stage images, checking that each
    /// stage has its index's geometry and seed, that the stages fit the bit budget, and that
    /// no stage after the first is empty (a stage opens with a value).
    pub(crate) fn decode(
        expected_items: u64,
        false_positive_rate: f64,
        images: &[&[u8]],
    ) -> Result<Membership, String> {
        let mut stages: Vec<Stage> = Vec::with_capacity(images.len());
        let mut total_bits = 0u64;
        for (index, image) in images.iter().enumerate() {
            let geometry = Geometry::stage(expected_items, false_positive_rate, index)
                .ok_or_else(|| format!("stage {index} cannot exist for these parameters"))?;
            total_bits += geometry.bits;
            if index > 0 && total_bits > MAX_TOTAL_BITS {
                return Err(format!("stage {index} takes the filter past 2^32 bits"));
            }
            // The word count sits at bytes 16..20; check it before the library allocates.
            let words = image
                .get(16..20)
                .map(|w| i32::from_le_bytes(w.try_into().expect("4 bytes")));
            if words != Some((geometry.bits / 64) as i32) {
                return Err(format!(
                    "stage {index} does not hold the {} bits that {expected_items} expected \
                     items at false positive rate {false_positive_rate} give",
                    geometry.bits
                ));
            }
            let filter = BloomFilter::deserialize(image)
                .map_err(|error| format!("stage {index}: {error}"))?;
            if filter.seed() != SEED {
                return Err(format!(
                    "stage {index} has seed {}, not the fixed membership seed {SEED}",
                    filter.seed()
                ));
            }
            if filter.capacity() as u64 != geometry.bits || filter.num_hashes() != geometry.hashes {
                return Err(format!(
                    "stage {index} has {} bits and {} hashes, but {expected_items} expected \
                     items at false positive rate {false_positive_rate} give {} bits and {} \
                     hashes",
                    filter.capacity(),
                    filter.num_hashes(),
                    geometry.bits,
                    geometry.hashes
                ));
            }
            if index > 0 && filter.is_empty() {
                return Err(format!("stage {index} is empty"));
            }
            stages.push(Stage { geometry, filter });
        }
        if stages.is_empty() {
            return Err("no stage".to_string());
        }
        Ok(Membership {
            expected_items,
            false_positive_rate,
            stages,
        })
    }

    /// The stage that the next value would open, if the budget allows one.
    fn next_stage(&self) -> Option<Stage> {
        let used: u64 = self.stages.iter().map(|stage| stage.geometry.bits).sum();
        next_geometry(
            self.expected_items,
            self.false_positive_rate,
            self.stages.len(),
            used,
        )
        .map(Stage::new)
    }
}

/// Geometry of stage `index` when the stages before it take `used_bits`, unless that would pass
/// the stage or bit budget.
fn next_geometry(
    expected_items: u64,
    false_positive_rate: f64,
    index: usize,
    used_bits: u64,
) -> Option<Geometry> {
    if index >= MAX_STAGES {
        return None;
    }
    let geometry = Geometry::stage(expected_items, false_positive_rate, index)?;
    (used_bits + geometry.bits <= MAX_TOTAL_BITS).then_some(geometry)
}

impl Stage {
    fn new(geometry: Geometry) -> Stage {
        let filter = BloomFilterBuilder::with_size(geometry.bits, geometry.hashes)
            .seed(SEED)
            .build()
            .expect("geometry is within the image limits");
        Stage { geometry, filter }
    }

    /// Distinct values inserted, estimated from the set bits (Swamidass and Baldi, 2007):
    /// `-(m / k) ln(1 - X / m)`.
    fn estimated_items(&self) -> f64 {
        let bits = self.filter.capacity() as f64;
        let set = self.filter.bits_used() as f64;
        if set >= bits {
            return f64::INFINITY;
        }
        -(bits / f64::from(self.geometry.hashes)) * (-set / bits).ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filled(
        expected_items: u64,
        rate: f64,
        values: impl IntoIterator<Item = String>,
    ) -> Membership {
        let mut filter = Membership::new(expected_items, rate);
        for value in values {
            filter.insert(&value);
        }
        filter
    }

    fn range(prefix: &str, range: std::ops::Range<u64>) -> impl Iterator<Item = String> + '_ {
        range.map(move |i| format!("{prefix}{i}"))
    }

    /// Fraction of `queries` never-inserted values reported present.
    fn measured_rate(filter: &Membership, prefix: &str, queries: u64) -> f64 {
        let hits = range(prefix, 0..queries)
            .filter(|value| filter.contains(value))
            .count();
        hits as f64 / queries as f64
    }

    fn bytes(filter: &Membership) -> Vec<Vec<u8>> {
        let mut all = vec![filter.encode_config()];
        all.extend(filter.encode_stages());
        all
    }

    #[test]
    fn sizing_meets_the_rate_with_the_fewest_whole_words() {
        for capacity in [1u64, 7, 100, 1_000, 20_000, 1_000_000] {
            for rate in [0.5, 0.497, 0.3, 0.1, 0.05, 0.01, 0.001, 1e-6] {
                let g = Geometry::for_target(capacity, rate).unwrap();
                assert_eq!(g.bits % 64, 0);
                assert!(
                    Geometry::rate_at(g.bits, g.hashes, capacity) <= rate,
                    "{g:?}"
                );
                if g.bits > 64 {
                    let fewer = g.bits - 64;
                    let (_, best) = best_hashes(fewer, capacity);
                    assert!(best > rate, "{capacity} at {rate}: {fewer} bits would do");
                }
            }
        }
    }

    #[test]
    fn the_hash_count_is_rounded_to_the_better_integer_not_up() {
        // The library's with_accuracy rounds ceil(m/n ln 2) up: at 0.497 that is 2 hashes for
        // an optimum of 1.01, and a rate of 0.557 at capacity, 12% over. Measure both.
        let (capacity, rate) = (20_000u64, 0.497);
        let library = BloomFilterBuilder::with_accuracy(capacity, rate)
            .seed(SEED)
            .build()
            .unwrap();
        assert_eq!(library.num_hashes(), 2);
        let ours = Geometry::for_target(capacity, rate).unwrap();
        assert_eq!(ours.hashes, 1);

        let mut library = library;
        for value in range("in-", 0..capacity) {
            library.insert(raw_bytes::from_str(&value));
        }
        let queries = 100_000u64;
        let library_rate = range("out-", 0..queries)
            .filter(|v| library.contains(&raw_bytes::from_str(v)))
            .count() as f64
            / queries as f64;
        assert!(library_rate > rate * 1.1, "library rate {library_rate}");

        let filter = filled(capacity, rate, range("in-", 0..capacity));
        let ours = measured_rate(&filter, "out-", queries);
        assert!((ours - rate).abs() < rate * 0.1, "our rate {ours}");
    }

    #[test]
    fn the_measured_rate_at_capacity_is_within_ten_percent_of_the_configured_one() {
        // 20000 values, 400000 queries per rate. At 1% the count of false positives has a
        // standard deviation of about 63 on 4000 (1.6%), so a 10% band is over 6 deviations
        // wide and a filter sized even 10% wrong fails.
        for rate in [0.2, 0.05, 0.01] {
            let capacity = 20_000;
            let filter = filled(capacity, rate, range("member-", 0..capacity));
            let queries = 400_000;
            let measured = measured_rate(&filter, "stranger-", queries);
            assert!(
                (measured - rate).abs() <= rate * 0.1,
                "configured {rate}, measured {measured}"
            );
            // The estimate from the fill agrees with the measurement.
            let estimated = filter.estimated_false_positive_rate();
            assert!(
                (estimated - rate).abs() <= rate * 0.1,
                "estimated {estimated}"
            );
        }
    }

    #[test]
    fn never_misses_an_inserted_value_even_far_past_capacity() {
        let values: Vec<String> = range("v", 0..50_000).collect();
        let filter = filled(1_000, 0.01, values.iter().cloned());
        assert!(filter.stage_count() > 1);
        for value in &values {
            assert!(filter.contains(value), "{value} missing");
        }
    }

    #[test]
    fn grows_past_capacity_and_keeps_the_rate_bounded() {
        let (capacity, rate) = (1_000u64, 0.01);
        let mut filter = Membership::new(capacity, rate);
        for value in range("g", 0..capacity * 9 / 10) {
            filter.insert(&value);
        }
        assert_eq!(filter.stage_count(), 1);
        assert!(!filter.over_capacity());

        for value in range("h", 0..capacity * 50) {
            filter.insert(&value);
        }
        // 51000 values into a filter for 1000: capacities 1000, 2000, 4000, ... 32000 hold
        // 63000, so six stages.
        assert_eq!(filter.stage_count(), 6);
        assert!(filter.over_capacity());
        let estimated = filter.estimated_items();
        assert!(
            (estimated - 50_900.0).abs() < 50_900.0 * 0.05,
            "{estimated}"
        );

        // A single filter this full would report almost everything; the series stays under 2p.
        let measured = measured_rate(&filter, "never-", 200_000);
        assert!(measured < 2.0 * rate, "measured {measured}");
        let estimated = filter.estimated_false_positive_rate();
        assert!(estimated < 2.0 * rate, "estimated {estimated}");

        let mut single = BloomFilterBuilder::with_size(
            Geometry::for_target(capacity, rate).unwrap().bits,
            Geometry::for_target(capacity, rate).unwrap().hashes,
        )
        .seed(SEED)
        .build()
        .unwrap();
        for value in range("h", 0..capacity * 50) {
            single.insert(raw_bytes::from_str(&value));
        }
        assert!(single.estimated_fpp() > 0.99);
    }

    #[test]
    fn growth_stops_at_the_bit_budget() {
        // Stage 0 of 100M values at 1e-6 takes 2.9 Gbit; stage 1 (200M at 5e-7) would take the
        // filter past 2^32 bits in all, so it never opens. Checked on the geometry alone, as
        // the filter itself would take 360 MB.
        let stage0 = Geometry::stage(100_000_000, 1e-6, 0).unwrap();
        assert!(stage0.bits <= MAX_TOTAL_BITS);
        assert!(next_geometry(100_000_000, 1e-6, 1, stage0.bits).is_none());

        let small = Geometry::stage(1_000, 0.01, 0).unwrap();
        let next = next_geometry(1_000, 0.01, 1, small.bits).unwrap();
        assert_eq!((next.capacity, next.rate), (2_000, 0.005));
        assert!(next_geometry(1_000, 0.01, MAX_STAGES, small.bits).is_none());
    }

    #[test]
    fn stage_zero_is_a_plain_datasketches_filter() {
        let filter = filled(1_000, 0.01, range("k", 0..100));
        let g = Geometry::for_target(1_000, 0.01).unwrap();
        let mut library = BloomFilterBuilder::with_size(g.bits, g.hashes)
            .seed(9001)
            .build()
            .unwrap();
        for value in range("k", 0..100) {
            library.insert(raw_bytes::from_str(&value));
        }
        assert_eq!(filter.encode_stages(), vec![library.serialize()]);
    }

    #[test]
    fn decode_checks_every_stage() {
        let filter = filled(100, 0.01, range("d", 0..1_000));
        assert!(filter.stage_count() >= 3);
        let stages = filter.encode_stages();
        let views: Vec<&[u8]> = stages.iter().map(Vec::as_slice).collect();
        let back = Membership::decode(100, 0.01, &views).unwrap();
        assert_eq!(bytes(&back), bytes(&filter));

        // The stages of other parameters, out of order, or an empty later stage.
        let error = Membership::decode(200, 0.01, &views).unwrap_err();
        assert!(error.contains("stage 0 does not hold"), "{error}");
        let swapped = [views[1], views[0]];
        let error = Membership::decode(100, 0.01, &swapped).unwrap_err();
        assert!(error.contains("stage 0 does not hold"), "{error}");
        let g = Geometry::stage(100, 0.01, 1).unwrap();
        let empty_stage = BloomFilterBuilder::with_size(g.bits, g.hashes)
            .seed(SEED)
            .build()
            .unwrap()
            .serialize();
        let error = Membership::decode(100, 0.01, &[views[0], &empty_stage]).unwrap_err();
        assert!(error.contains("stage 1 is empty"), "{error}");
        assert!(Membership::decode(100, 0.01, &[]).is_err());

        assert!(
            Membership::decode_config(&[0; 16])
                .unwrap_err()
                .contains("not 17")
        );
        let mut config = filter.encode_config();
        config[16] = 0;
        assert!(Membership::decode_config(&config).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn stagewise_merge_is_commutative_associative_and_misses_nothing(
            expected_items in 1u64..200,
            rate in 0.001f64..0.3,
            parts in prop::collection::vec(prop::collection::vec("[a-z0-9]{1,6}", 0..300), 3),
        ) {
            let [a, b, c] = [0, 1, 2].map(|i| filled(expected_items, rate, parts[i].clone()));

            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(bytes(&ab), bytes(&ba));

            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(bytes(&ab_c), bytes(&a_bc));
            prop_assert_eq!(
                ab_c.stage_count(),
                a.stage_count().max(b.stage_count()).max(c.stage_count())
            );

            for value in parts.iter().flatten() {
                prop_assert!(ab_c.contains(value));
            }

            // Without growth the merge is exactly the filter of the combined stream.
            let direct = filled(expected_items, rate, parts.concat());
            if direct.stage_count() == 1 && ab_c.stage_count() == 1 {
                prop_assert_eq!(bytes(&ab_c), bytes(&direct));
            }
        }
    }
}
