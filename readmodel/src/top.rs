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
//! Beside them, an item filter (a scalable Bloom filter of every value counted, see
//! `membership`) answers lookups of values never seen: where it reports a value absent, the
//! value was certainly never counted and its count is exactly 0, however much the count-min
//! over-reports on a busy bucket. Read models written before the filter existed have none;
//! merging one of them drops the filter (absence would no longer be certain).
//!
//! Guarantee: for every value, `lower_bound <= true count <= upper_bound` holds without
//! exception, before and after any merge; a value is `guaranteed` only when its true count
//! certainly exceeds `maximum_error`, hence the count of every value the sketch does not track;
//! a count is `never_seen` only when the value was never counted.

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};

use crate::count_min::{CountMin, Overflow};
use crate::membership::Membership;
use crate::read_model::{CountEstimate, TopItem, TopList};

/// Distinct values the item filter's first stage is sized for; it grows past them.
pub(crate) const ITEM_FILTER_EXPECTED_ITEMS: u64 = 1024;

/// False-positive rate of the item filter within its first stage.
pub(crate) const ITEM_FILTER_RATE: f64 = 0.01;

/// Most bits of an item filter: 16 KiB, room for three stages (7,168 distinct values). A read
/// model that counts more distinct values drops its filter rather than grow it further: the
/// filter would outgrow the counters it stands beside (23 times their size at a million values).
pub(crate) const ITEM_FILTER_MAX_BITS: u64 = 1 << 17;

/// The sketches of a `top` read model; the two counters' totals are always equal.
#[derive(Clone)]
pub(crate) struct Top {
    counts: CountMin,
    heavy: FrequentItemsSketch<String>,
    /// Every value counted; `None` in read models written before it existed.
    seen: Option<Membership>,
}

impl std::fmt::Debug for Top {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Top")
            .field("counts", &self.counts)
            .field("heavy", &self.heavy)
            .field("item_filter", &self.seen.is_some())
            .finish()
    }
}

impl Top {
    /// Empty sketches; the parameters are validated by the caller.
    pub(crate) fn new(width: u32, depth: u8, max_map_size: usize) -> Top {
        Top {
            counts: CountMin::new(width, depth),
            heavy: FrequentItemsSketch::new(max_map_size)
                .expect("max_map_size is validated by SketchParams"),
            seen: Some(Membership::new(
                ITEM_FILTER_EXPECTED_ITEMS,
                ITEM_FILTER_RATE,
            )),
        }
    }

    /// Whether lookups of values never seen are answered with certainty.
    pub(crate) fn has_item_filter(&self) -> bool {
        self.seen.is_some()
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
        self.note_seen(value);
        Ok(())
    }

    /// Counts `weight` occurrences at once, for tests that need totals near `u64::MAX`.
    #[cfg(test)]
    pub(crate) fn update_with_weight(&mut self, value: &str, weight: u64) -> Result<(), Overflow> {
        self.counts.update(value.as_bytes(), weight)?;
        self.heavy.update_with_count_ref(value, weight);
        self.note_seen(value);
        Ok(())
    }

    /// Inserts `value` into the item filter, which is dropped once past its bound.
    fn note_seen(&mut self, value: &str) {
        if let Some(seen) = &mut self.seen {
            seen.insert(value);
            if seen.bits() > ITEM_FILTER_MAX_BITS {
                self.seen = None;
            }
        }
    }

    /// Adds `other` in; refused, with nothing changed, when the total would overflow. The caller
    /// checks that the parameters are equal.
    pub(crate) fn merge(&mut self, other: &Top) -> Result<(), Overflow> {
        self.counts.merge(&other.counts)?;
        self.heavy.merge(&other.heavy);
        match (&mut self.seen, &other.seen) {
            (Some(ours), Some(theirs)) => ours.merge(theirs),
            // Values of the side without a filter were counted but are in no filter.
            _ => self.seen = None,
        }
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
        if self.seen.as_ref().is_some_and(|seen| !seen.contains(item)) {
            return CountEstimate {
                item: item.to_string(),
                estimate: 0,
                lower_bound: 0,
                upper_bound: 0,
                error_bound: self.counts.error_bound(),
                confidence: self.counts.confidence(),
                total: self.total(),
                never_seen: true,
            };
        }
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
            never_seen: false,
        }
    }

    /// The count-min payload, the frequent-items payload and, when there is an item filter,
    /// its configuration payload and one payload per stage.
    pub(crate) fn encode(&self) -> Vec<Vec<u8>> {
        let mut payloads = vec![
            self.counts.encode(),
            crate::canonical::frequent_items_image(self.heavy.serialize()),
        ];
        if let Some(seen) = &self.seen {
            payloads.push(seen.encode_config());
            payloads.extend(seen.encode_stages());
        }
        payloads
    }

    /// Decodes an item filter's configuration and stages for [`Top::decode`]: the stage count
    /// comes from the configuration.
    pub(crate) fn decode_item_filter_config(config: &[u8]) -> Result<usize, String> {
        let (expected_items, rate, stages) = Membership::decode_config(config)?;
        if expected_items != ITEM_FILTER_EXPECTED_ITEMS
            || rate.to_bits() != ITEM_FILTER_RATE.to_bits()
        {
            return Err(format!(
                "it is sized for {expected_items} values at rate {rate}; an item filter is \
                 sized for {ITEM_FILTER_EXPECTED_ITEMS} at {ITEM_FILTER_RATE}"
            ));
        }
        Ok(stages)
    }

    /// Decodes both payloads; the error names the payload at fault.
    pub(crate) fn decode(
        counts: &[u8],
        heavy: &[u8],
        item_filter: Option<&[&[u8]]>,
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
        let seen = match item_filter {
            None => None,
            Some(stages) => {
                let seen = Membership::decode(ITEM_FILTER_EXPECTED_ITEMS, ITEM_FILTER_RATE, stages)
                    .map_err(|reason| ("item filter", reason))?;
                if seen.bits() > ITEM_FILTER_MAX_BITS {
                    return Err((
                        "item filter",
                        format!(
                            "it has {} bits, more than the {ITEM_FILTER_MAX_BITS} an item filter \
                             may have",
                            seen.bits()
                        ),
                    ));
                }
                if seen.is_empty() != (counts.total() == 0) {
                    return Err((
                        "item filter",
                        format!(
                            "it is {} but the sketch counts {} values",
                            if seen.is_empty() {
                                "empty"
                            } else {
                                "not empty"
                            },
                            counts.total()
                        ),
                    ));
                }
                Some(seen)
            }
        };
        Ok(Top {
            counts,
            heavy,
            seen,
        })
    }
}
