//! Count-min sketch with conservative update: how often each value occurred, never less than the
//! truth.
//!
//! `depth` rows of `width` u64 counters; a value maps to one counter per row (XXH64 of its UTF-8
//! bytes, seed `COUNT_MIN_SEED + row`). Its estimate is the smallest of its counters.
//!
//! Conservative update (Estan and Varghese, 2002): adding weight `w` to a value whose estimate
//! is `e` raises each of its counters to `max(counter, e + w)` instead of adding `w` to all of
//! them. Every counter of a value still holds at least that value's count, so the estimate never
//! under-reports; and no counter ever exceeds the one a plain count-min sketch would hold, so
//! the plain sketch's bound carries over: the estimate exceeds the true count by more than
//! `ceil(e / width * total)` with probability at most `e^-depth`.
//!
//! Merging adds counters element-wise. For every value and row, the sum of the sketches'
//! counters is at least the sum of the value's counts in each, so a merged sketch never
//! under-reports either; each summand is at most the plain sketch's counter, so the sum is at
//! most the plain sketch of the combined stream and the same error bound holds. (A merged sketch
//! is not the conservative sketch of the combined stream, which may be smaller.)
//!
//! Guarantee: every counter and the total stay exact u64 values. An update or merge that would
//! overflow the total (every counter is at most the total, so nothing else can overflow) is
//! refused with [`Overflow`] and changes nothing; nothing wraps or saturates silently.
//!
//! Stored form (all integers little-endian): `width` u32, `depth` u8, `total` u64, the number of
//! non-zero counters u32, then for each non-zero counter in row-major order the number of zero
//! counters before it (since the previous non-zero one) and its value, both as LEB128 varints.
//! Sparse buckets cost a few bytes per value instead of 8 bytes per counter.

use xxhash_rust::xxh64::xxh64;

/// Seed of row 0; row `r` hashes with `COUNT_MIN_SEED + r`.
pub(crate) const COUNT_MIN_SEED: u64 = 9001;

/// Bytes before the counters: width, depth, total, non-zero count.
const HEADER_LEN: usize = 4 + 1 + 8 + 4;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

/// A count-min sketch with conservative update and checked arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CountMin {
    width: u32,
    depth: u8,
    /// Sum of all weights added; every counter is at most this.
    total: u64,
    /// `depth` rows of `width` counters, row-major.
    counters: Box<[u64]>,
}

/// The total weight would not fit in a u64; the sketch is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl CountMin {
    /// An empty sketch. The caller validates `width` and `depth` (see `SketchParams`).
    pub(crate) fn new(width: u32, depth: u8) -> CountMin {
        let len = width as usize * depth as usize;
        CountMin {
            width,
            depth,
            total: 0,
            counters: vec![0; len].into_boxed_slice(),
        }
    }

    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn depth(&self) -> u8 {
        self.depth
    }

    /// Sum of all weights added.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Adds `weight` occurrences of `value` with conservative update.
    pub(crate) fn update(&mut self, value: &[u8], weight: u64) -> Result<(), Overflow> {
        let total = self.total.checked_add(weight).ok_or(Overflow)?;
        let cells = self.cells(value);
        let estimate = cells
            .iter()
            .map(|&cell| self.counters[cell])
            .min()
            .unwrap_or(0);
        // The estimate is at most the old total, so this fits whenever the new total does.
        let target = estimate + weight;
        for cell in cells {
            let counter = &mut self.counters[cell];
            *counter = (*counter).max(target);
        }
        self.total = total;
        Ok(())
    }

    /// The smallest counter of `value`: at least its true count, always.
    pub(crate) fn estimate(&self, value: &[u8]) -> u64 {
        self.cells(value)
            .into_iter()
            .map(|cell| self.counters[cell])
            .min()
            .unwrap_or(0)
    }

    /// `e / width`: the estimate exceeds the true count by more than this fraction of the total
    /// with probability at most `e^-depth`.
    pub(crate) fn epsilon(&self) -> f64 {
        std::f64::consts::E / f64::from(self.width)
    }

    /// `1 - e^-depth`: the probability that the error stays within [`CountMin::error_bound`].
    pub(crate) fn confidence(&self) -> f64 {
        1.0 - (-f64::from(self.depth)).exp()
    }

    /// `ceil(epsilon * total)`, the additive error bound of every estimate.
    pub(crate) fn error_bound(&self) -> u64 {
        // An f64 to u64 cast saturates; the product is far below u64::MAX in practice.
        (self.epsilon() * self.total as f64).ceil() as u64
    }

    /// Whether `other` has the same geometry (and so the same hashing).
    pub(crate) fn compatible(&self, other: &CountMin) -> bool {
        self.width == other.width && self.depth == other.depth
    }

    /// Adds `other`'s counters. Refused, with nothing changed, when the total would overflow.
    /// The caller checks [`CountMin::compatible`].
    pub(crate) fn merge(&mut self, other: &CountMin) -> Result<(), Overflow> {
        assert!(self.compatible(other), "count-min geometries differ");
        let total = self.total.checked_add(other.total).ok_or(Overflow)?;
        for (ours, theirs) in self.counters.iter_mut().zip(other.counters.iter()) {
            // Each counter is at most its sketch's total, so each sum is at most `total`.
            *ours += theirs;
        }
        self.total = total;
        Ok(())
    }

    /// The stored form; see the module documentation.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let nonzero = self.counters.iter().filter(|&&c| c != 0).count();
        let mut bytes = Vec::with_capacity(HEADER_LEN + nonzero * 3);
        bytes.extend_from_slice(&self.width.to_le_bytes());
        bytes.push(self.depth);
        bytes.extend_from_slice(&self.total.to_le_bytes());
        // At most width * depth <= 2^22 counters.
        bytes.extend_from_slice(&(nonzero as u32).to_le_bytes());
        let mut gap = 0u64;
        for &counter in self.counters.iter() {
            if counter == 0 {
                gap += 1;
            } else {
                put_varint(&mut bytes, gap);
                put_varint(&mut bytes, counter);
                gap = 0;
            }
        }
        bytes
    }

    /// Decodes [`CountMin::encode`]'s output. `max_counters` bounds `width * depth` before
    /// anything is allocated. Checks that every counter lies where the geometry allows, is
    /// non-zero when listed, and that no row sums to more than the total (conservative update
    /// raises a row by at most the weight added, and merges add rows and totals alike).
    pub(crate) fn decode(bytes: &[u8], max_counters: u64) -> Result<CountMin, String> {
        let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
            format!(
                "the count-min header needs {HEADER_LEN} bytes but {} remain",
                bytes.len()
            )
        })?;
        let width = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let depth = header[4];
        let total = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
        let nonzero = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes")) as usize;
        let cells = u64::from(width) * u64::from(depth);
        if width == 0 || depth == 0 || cells > max_counters {
            return Err(format!(
                "width {width} and depth {depth} are outside the supported geometry"
            ));
        }
        let cells = cells as usize;
        if nonzero > cells {
            return Err(format!(
                "{nonzero} non-zero counters listed, but the sketch has {cells}"
            ));
        }

        let mut counters = vec![0u64; cells].into_boxed_slice();
        let mut reader = &bytes[HEADER_LEN..];
        let mut at = 0usize;
        for _ in 0..nonzero {
            let gap = take_varint(&mut reader)?;
            let value = take_varint(&mut reader)?;
            let cell = usize::try_from(gap)
                .ok()
                .and_then(|gap| at.checked_add(gap))
                .filter(|&cell| cell < cells)
                .ok_or_else(|| "a counter lies beyond the last row".to_string())?;
            if value == 0 || value > total {
                return Err(format!(
                    "counter {cell} is {value}, but listed counters are between 1 and the \
                     total {total}"
                ));
            }
            counters[cell] = value;
            at = cell + 1;
        }
        if !reader.is_empty() {
            return Err(format!("{} bytes follow the last counter", reader.len()));
        }
        for (row, counts) in counters.chunks_exact(width as usize).enumerate() {
            let sum = counts
                .iter()
                .try_fold(0u64, |sum, &c| sum.checked_add(c))
                .filter(|&sum| sum <= total);
            if sum.is_none() {
                return Err(format!("row {row} sums to more than the total {total}"));
            }
        }
        Ok(CountMin {
            width,
            depth,
            total,
            counters,
        })
    }

    /// The counter index of `value` in each row.
    fn cells(&self, value: &[u8]) -> Vec<usize> {
        (0..self.depth)
            .map(|row| {
                let hash = xxh64(value, COUNT_MIN_SEED + u64::from(row));
                // Multiply-shift maps the 64-bit hash onto 0..width without a division.
                let bucket = ((u128::from(hash) * u128::from(self.width)) >> 64) as usize;
                row as usize * self.width as usize + bucket
            })
            .collect()
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn take_varint(reader: &mut &[u8]) -> Result<u64, String> {
    let bytes: &[u8] = reader;
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(MAX_VARINT_LEN) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if shift == 63 && bits > 1 {
            return Err("a counter varint overflows a u64".to_string());
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            *reader = &bytes[index + 1..];
            return Ok(value);
        }
    }
    Err("a counter varint is truncated or longer than 10 bytes".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A plain count-min sketch with the same hashing: every weight added to every cell.
    fn plain(width: u32, depth: u8, stream: &[String]) -> CountMin {
        let mut sketch = CountMin::new(width, depth);
        for value in stream {
            for cell in sketch.cells(value.as_bytes()) {
                sketch.counters[cell] += 1;
            }
            sketch.total += 1;
        }
        sketch
    }

    fn conservative(width: u32, depth: u8, stream: &[String]) -> CountMin {
        let mut sketch = CountMin::new(width, depth);
        for value in stream {
            sketch.update(value.as_bytes(), 1).unwrap();
        }
        sketch
    }

    fn truth(stream: &[String]) -> HashMap<&str, u64> {
        let mut counts = HashMap::new();
        for value in stream {
            *counts.entry(value.as_str()).or_default() += 1;
        }
        counts
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0u32..6).prop_map(|i| format!("hot-{i}")),
                2 => (0u32..400).prop_map(|i| format!("tail-{i}")),
            ],
            0..400,
        )
    }

    #[test]
    fn a_lone_value_is_counted_exactly() {
        let mut sketch = CountMin::new(64, 4);
        for _ in 0..5 {
            sketch.update(b"x", 1).unwrap();
        }
        sketch.update(b"x", 10).unwrap();
        assert_eq!(sketch.estimate(b"x"), 15);
        assert_eq!(sketch.total(), 15);
        assert_eq!(sketch.estimate(b"y"), 0);
    }

    #[test]
    fn conservative_update_is_tighter_than_plain_on_a_skewed_stream() {
        let stream: Vec<String> = (0..20_000u32)
            .map(|i| format!("v{}", (i * 7919) % (i % 97 + 1)))
            .collect();
        let cu = conservative(64, 3, &stream);
        let cm = plain(64, 3, &stream);
        let counts = truth(&stream);
        let (mut cu_error, mut cm_error) = (0u64, 0u64);
        for (value, count) in &counts {
            let (c, p) = (cu.estimate(value.as_bytes()), cm.estimate(value.as_bytes()));
            assert!(
                *count <= c && c <= p,
                "{value}: true {count}, cu {c}, plain {p}"
            );
            cu_error += c - count;
            cm_error += p - count;
        }
        // The point of conservative update: clearly less over-counting on the same hashing.
        assert!(cu_error * 2 < cm_error, "cu {cu_error} vs plain {cm_error}");
    }

    #[test]
    fn update_refuses_to_overflow_and_changes_nothing() {
        let mut sketch = CountMin::new(16, 2);
        sketch.update(b"a", u64::MAX - 1).unwrap();
        let before = sketch.clone();
        assert_eq!(sketch.update(b"b", 2), Err(Overflow));
        assert_eq!(sketch, before);
        sketch.update(b"a", 1).unwrap();
        assert_eq!(sketch.estimate(b"a"), u64::MAX);
        assert_eq!(sketch.total(), u64::MAX);
        assert_eq!(sketch.update(b"a", 1), Err(Overflow));
    }

    #[test]
    fn merge_refuses_to_overflow_and_changes_nothing() {
        let mut left = CountMin::new(16, 2);
        left.update(b"a", u64::MAX / 2 + 1).unwrap();
        let right = left.clone();
        let before = left.clone();
        assert_eq!(left.merge(&right), Err(Overflow));
        assert_eq!(left, before);
    }

    #[test]
    fn error_bound_and_confidence_follow_width_and_depth() {
        let mut sketch = CountMin::new(1000, 5);
        sketch.update(b"a", 10_000).unwrap();
        // e / 1000 * 10000 = 27.18...
        assert_eq!(sketch.error_bound(), 28);
        assert!((sketch.confidence() - (1.0 - (-5.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn encoding_is_sparse_and_round_trips() {
        let sketch = conservative(1024, 5, &["a".to_string(), "b".to_string()]);
        let bytes = sketch.encode();
        // Header, then at most 10 non-zero counters of a 1- or 2-byte gap and a 1-byte value.
        assert!(bytes.len() <= HEADER_LEN + 10 * 3, "{} bytes", bytes.len());
        assert_eq!(CountMin::decode(&bytes, 1 << 22).unwrap(), sketch);

        let empty = CountMin::new(1024, 5);
        assert_eq!(empty.encode().len(), HEADER_LEN);
        assert_eq!(CountMin::decode(&empty.encode(), 1 << 22).unwrap(), empty);
    }

    #[test]
    fn decode_rejects_inconsistent_counters() {
        let sketch = conservative(8, 2, &["a".to_string(), "a".to_string()]);
        let good = sketch.encode();

        let mut lower_total = good.clone();
        lower_total[5..13].copy_from_slice(&1u64.to_le_bytes());
        let error = CountMin::decode(&lower_total, 1 << 22).unwrap_err();
        assert!(error.contains("between 1 and the total 1"), "{error}");

        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = CountMin::decode(&huge, 1 << 22).unwrap_err();
        assert!(error.contains("geometry"), "{error}");

        let mut extra = good.clone();
        extra.push(0);
        assert!(
            CountMin::decode(&extra, 1 << 22)
                .unwrap_err()
                .contains("follow")
        );

        for len in 0..good.len() {
            assert!(
                CountMin::decode(&good[..len], 1 << 22).is_err(),
                "length {len}"
            );
        }

        // Two rows each summing to 2 with a total of 2 is fine; a third count in one row is not.
        let mut over = CountMin::new(8, 2);
        over.total = 2;
        over.counters[0] = 2;
        over.counters[1] = 1;
        over.counters[8] = 2;
        let error = CountMin::decode(&over.encode(), 1 << 22).unwrap_err();
        assert!(error.contains("row 0 sums to more"), "{error}");
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, value);
            let mut reader = bytes.as_slice();
            assert_eq!(take_varint(&mut reader), Ok(value));
            assert!(reader.is_empty());
        }
        let mut too_long: &[u8] = &[0xff; 11];
        assert!(take_varint(&mut too_long).is_err());
        let mut overflowing: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(take_varint(&mut overflowing).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn never_under_reports_and_never_exceeds_plain(
            stream in stream_strategy(),
            width in 3u32..40,
            depth in 1u8..5,
        ) {
            let cu = conservative(width, depth, &stream);
            let cm = plain(width, depth, &stream);
            prop_assert_eq!(cu.total(), stream.len() as u64);
            for (cell, (c, p)) in cu.counters.iter().zip(cm.counters.iter()).enumerate() {
                prop_assert!(c <= p, "cell {}: cu {} > plain {}", cell, c, p);
            }
            for (value, count) in truth(&stream) {
                prop_assert!(cu.estimate(value.as_bytes()) >= count);
            }
            let bytes = cu.encode();
            prop_assert_eq!(CountMin::decode(&bytes, 1 << 22).unwrap(), cu);
        }

        #[test]
        fn a_merged_sketch_never_under_reports_and_stays_within_the_plain_bound(
            parts in prop::collection::vec(stream_strategy(), 1..5),
            width in 3u32..40,
            depth in 1u8..5,
        ) {
            let mut merged = CountMin::new(width, depth);
            for part in &parts {
                merged.merge(&conservative(width, depth, part)).unwrap();
            }
            let all: Vec<String> = parts.concat();
            let cm = plain(width, depth, &all);
            prop_assert_eq!(merged.total(), all.len() as u64);
            for (c, p) in merged.counters.iter().zip(cm.counters.iter()) {
                prop_assert!(c <= p);
            }
            for (value, count) in truth(&all) {
                prop_assert!(merged.estimate(value.as_bytes()) >= count);
            }
            let bytes = merged.encode();
            prop_assert_eq!(CountMin::decode(&bytes, 1 << 22).unwrap(), merged);
        }

        #[test]
        fn merge_is_commutative_and_associative(
            a in stream_strategy(),
            b in stream_strategy(),
            c in stream_strategy(),
        ) {
            let (a, b, c) = (conservative(31, 3, &a), conservative(31, 3, &b), conservative(31, 3, &c));
            let mut ab = a.clone();
            ab.merge(&b).unwrap();
            let mut ba = b.clone();
            ba.merge(&a).unwrap();
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(&c).unwrap();
            let mut bc = b.clone();
            bc.merge(&c).unwrap();
            let mut a_bc = a.clone();
            a_bc.merge(&bc).unwrap();
            prop_assert_eq!(ab_c, a_bc);
        }
    }
}
