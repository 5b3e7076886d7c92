//! Heavy hitters and per-value counts: a frequent-items sketch (which values) beside a
//! conservative-update count-min sketch (how often).
//!
//! The frequent-items sketch (DataSketches, Misra-Gries with reverse purge) keeps up to
//! `0.75 * max_map_size` values with a count that is a guaranteed lower bound; its
//! `maximum_error` (the total purged, which merges add up) bounds how far any true count can
//! exceed it, so `count + maximum_error` is a guaranteed upper bound, and a value it does not
//! track occurred at most `maximum_error` times. The count-min estimate is another guaranteed
//! upper bound, often much tighter on long-tail data where merges have made `maximum_error`
//! large; answers use the smaller of the two.
//!
//! Guarantee: for every value, `lower_bound <= true count <= upper_bound` holds without
//! exception, before and after any merge; a value is `guaranteed` only when its true count
//! certainly exceeds `maximum_error`, hence the count of every value the sketch does not track.

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};

use crate::count_min::{CountMin, Overflow};
use crate::read_model::{CountEstimate, TopItem, TopList};

/// The two sketches of a `top` read model; their totals are always equal.
#[derive(Debug, Clone)]
pub(crate) struct Top {
    counts: CountMin,
    heavy: FrequentItemsSketch<String>,
}

impl Top {
    /// Empty sketches; the parameters are validated by the caller.
    pub(crate) fn new(width: u32, depth: u8, max_map_size: usize) -> Top {
        Top {
            counts: CountMin::new(width, depth),
            heavy: FrequentItemsSketch::new(max_map_size)
                .expect("max_map_size is validated by SketchParams"),
        }
    }

    pub(crate) fn width(&self) -> u32 {
        self.counts.width()
    }

    pub(crate) fn depth(&self) -> u8 {
        self.counts.depth()
    }

    pub(crate) fn max_map_size(&self) -> usize {
        self.heavy.max_map_size()
    }

    /// Values counted.
    pub(crate) fn total(&self) -> u64 {
        self.counts.total()
    }

    /// Counts one occurrence of `value`; refused, with nothing changed, when the total would
    /// overflow.
    pub(crate) fn update(&mut self, value: &str) -> Result<(), Overflow> {
        // The frequent-items total equals the count-min total, so this check also keeps the
        // library's update (which panics on overflow) safe.
        self.counts.update(value.as_bytes(), 1)?;
        self.heavy.update_ref(value);
        Ok(())
    }

    /// Counts `weight` occurrences at once, for tests that need totals near `u64::MAX`.
    #[cfg(test)]
    pub(crate) fn update_with_weight(&mut self, value: &str, weight: u64) -> Result<(), Overflow> {
        self.counts.update(value.as_bytes(), weight)?;
        self.heavy.update_with_count_ref(value, weight);
        Ok(())
    }

    /// Adds `other` in; refused, with nothing changed, when the total would overflow. The caller
    /// checks that the parameters are equal.
    pub(crate) fn merge(&mut self, other: &Top) -> Result<(), Overflow> {
        self.counts.merge(&other.counts)?;
        self.heavy.merge(&other.heavy);
        Ok(())
    }

    /// The `k` best candidates; see [`TopList`] for the order.
    pub(crate) fn top(&self, k: usize) -> TopList {
        let maximum_error = self.heavy.maximum_error();
        // Without false negatives: every tracked value whose upper bound passes the error.
        let mut items: Vec<TopItem> = self
            .heavy
            .frequent_items(ErrorType::NoFalseNegatives)
            .into_iter()
            .map(|row| {
                let lower_bound = row.lower_bound();
                let upper_bound = row
                    .upper_bound()
                    .min(self.counts.estimate(row.item().as_bytes()));
                TopItem {
                    item: row.item().clone(),
                    estimate: upper_bound,
                    lower_bound,
                    upper_bound,
                    guaranteed: lower_bound > maximum_error,
                }
            })
            .collect();
        // By the tightened estimate first: where merges have made `maximum_error` large, the
        // frequent-items counts (lower bounds) lose most of their information and the
        // count-min estimate keeps it; see docs/read-model-format.md for the measurements.
        items.sort_by(|a, b| {
            b.estimate
                .cmp(&a.estimate)
                .then_with(|| b.lower_bound.cmp(&a.lower_bound))
                .then_with(|| a.item.cmp(&b.item))
        });
        items.truncate(k);
        TopList {
            items,
            maximum_error,
        }
    }

    /// How often `item` occurred.
    pub(crate) fn count(&self, item: &str) -> CountEstimate {
        // Both are guaranteed upper bounds; an untracked value's is `maximum_error`.
        let upper_bound = self
            .counts
            .estimate(item.as_bytes())
            .min(self.heavy.upper_bound(item));
        CountEstimate {
            item: item.to_string(),
            estimate: upper_bound,
            lower_bound: self.heavy.lower_bound(item).min(upper_bound),
            upper_bound,
            error_bound: self.counts.error_bound(),
            confidence: self.counts.confidence(),
            total: self.total(),
        }
    }

    /// The count-min payload and the frequent-items payload.
    pub(crate) fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.counts.encode(),
            crate::canonical::frequent_items_image(self.heavy.serialize()),
        )
    }

    /// Decodes both payloads; the error names the payload at fault.
    pub(crate) fn decode(
        counts: &[u8],
        heavy: &[u8],
        max_counters: u64,
    ) -> Result<Top, (&'static str, String)> {
        let counts = CountMin::decode(counts, max_counters)
            .map_err(|reason| ("count-min sketch", reason))?;
        let heavy = FrequentItemsSketch::<String>::deserialize(heavy)
            .map_err(|error| ("frequent items sketch", error.to_string()))?;
        if heavy.total_weight() != counts.total() {
            return Err((
                "frequent items sketch",
                format!(
                    "it totals {} but the count-min sketch totals {}",
                    heavy.total_weight(),
                    counts.total()
                ),
            ));
        }
        Ok(Top { counts, heavy })
    }
}
