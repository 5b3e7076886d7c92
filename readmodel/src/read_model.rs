//! Sketch read models: one mergeable sketch (or pair of sketches) plus the exact number of
//! values folded into it, and the versioned bytes they are stored as.
//!
//! # Stored bytes (format version 1)
//!
//! All integers little-endian:
//!
//! | offset | size | content                                                   |
//! |--------|------|-----------------------------------------------------------|
//! | 0      | 2    | magic `b"RM"`                                             |
//! | 2      | 1    | format version, `1`                                       |
//! | 3      | 1    | kind: `1` distinct, `2` top, `3` membership               |
//! | 4      | 8    | events: exact number of values folded in, u64             |
//! | 12     | ...  | the kind's payloads, each a u32 length then that many bytes |
//!
//! Payloads per kind, each in the DataSketches serialized format of the library:
//!
//! * distinct: one HLL sketch (HLL_8 registers);
//! * top: a count-min sketch of u64 counters (seed 9001), then a frequent-items sketch of
//!   UTF-8 strings;
//! * membership: a Bloom filter (seed 9001), then a 16-byte configuration payload holding
//!   `expected_items` (u64) and `false_positive_rate` (f64 bits), which the filter's bytes do
//!   not carry.
//!
//! The order-free entries of the HLL coupon list/set and of the frequent-items sketch are
//! written sorted (see the `canonical` module), so that the same sketch content always has the
//! same bytes. Nothing may follow the last payload. The full description, with the checks the
//! reader makes, is in `docs/read-model-format.md`.
//!
//! # Hashing
//!
//! Values are hashed as their raw UTF-8 bytes (the library's `raw_bytes` path), which is how
//! DataSketches C++ and Java hash strings, so HLL sketches and Bloom filters match theirs
//! value for value. Those libraries ignore empty strings, and so does [`ReadModel::update`].
//! (Count-min counters are placed by this library's own scheme, which its C++ counterpart does
//! not share; the bytes are still readable there.)
//!
//! Guarantee: [`ReadModel::merge`] of two read models with the same kind and parameters gives the
//! read model of the combined stream (counts and Bloom bits exactly; the HLL registers equal
//! those of a sketch of the union; heavy-hitter bounds stay guaranteed); a mismatch is an error
//! and leaves the target unchanged. [`ReadModel::from_bytes`] rejects, with the reason, bytes that
//! are not a read model of this format or whose header disagrees with its sketches, and
//! `to_bytes(from_bytes(b)) == b` for every `b` that `to_bytes` wrote.

use datasketches::bloom::{BloomFilter, BloomFilterBuilder};
use datasketches::common::NumStdDev;
use datasketches::countmin::CountMinSketch;
use datasketches::frequencies::{ErrorType, FrequentItemsSketch};
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use serde::Serialize;

use crate::canonical;
use crate::projection::{Kind, SketchParams};

/// First two bytes of every stored read model.
pub const MAGIC: [u8; 2] = *b"RM";

/// The stored-bytes format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the first payload: magic, version, kind, events.
const HEADER_LEN: usize = 12;

/// HLL register type of distinct read models; see [`SketchParams`] for why.
const DISTINCT_HLL_TYPE: HllType = HllType::Hll8;

/// Bloom filter seed shared by every membership read model, so any two can be OR-merged. It is
/// the DataSketches default seed, so filters built by C++ or Java with defaults also match.
const MEMBERSHIP_SEED: u64 = 9001;

/// Standard deviations of the distinct-count bounds.
const DISTINCT_STD_DEVS: NumStdDev = NumStdDev::Two;

/// Length of the membership configuration payload.
const MEMBERSHIP_CONFIG_LEN: usize = 16;

/// One sketch read model and the exact number of values folded into it.
#[derive(Clone)]
pub struct ReadModel {
    events: u64,
    sketch: Sketch,
}

/// Approximate distinct count with a two-standard-deviation confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistinctEstimate {
    /// Estimated number of distinct values.
    pub estimate: f64,
    /// Lower bound of the interval.
    pub lower_bound: f64,
    /// Upper bound of the interval.
    pub upper_bound: f64,
    /// Probability that the interval holds the true count, about 0.954.
    pub confidence: f64,
}

/// One heavy hitter from the frequent-items sketch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopItem {
    /// The value.
    pub item: String,
    /// Estimated count (equal to the upper bound, as the library reports it).
    pub estimate: u64,
    /// Guaranteed lower bound of the true count.
    pub lower_bound: u64,
    /// Guaranteed upper bound of the true count.
    pub upper_bound: u64,
}

/// Count-min estimate of how often one value occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountEstimate {
    /// The value asked about.
    pub item: String,
    /// Count-min estimate; never below the true count.
    pub estimate: u64,
    /// Guaranteed lower bound of the true count, from the frequent-items sketch; 0 when the
    /// value is not among its tracked items.
    pub lower_bound: u64,
    /// The estimate plus the count-min error, as the library reports it.
    pub upper_bound: u64,
    /// Total number of values counted.
    pub total: u64,
}

/// Whether a value may have been seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembershipAnswer {
    /// The value asked about.
    pub item: String,
    /// `false` means certainly never inserted; `true` means inserted or a false positive.
    pub maybe_present: bool,
    /// The false-positive rate the filter was sized for at its expected item count.
    pub configured_false_positive_rate: f64,
    /// The false-positive rate implied by the filter's current fill.
    pub estimated_false_positive_rate: f64,
}

/// Why read models could not be merged or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadModelError {
    /// The two read models have different kinds or parameters.
    #[error(
        "cannot merge a read model with {theirs} into one with {ours}; only read models of the \
         same projection parameters merge, so rebuild one of them with the other's parameters"
    )]
    Mismatch {
        /// Description of the target's kind and parameters.
        ours: String,
        /// Description of the other's kind and parameters.
        theirs: String,
    },
    /// The combined event count would not fit in a u64.
    #[error("merging would overflow the event count ({ours} + {theirs}); split the range queried")]
    Overflow {
        /// The target's event count.
        ours: u64,
        /// The other's event count.
        theirs: u64,
    },
    /// The bytes end early.
    #[error(
        "read model bytes are truncated: {what} needs {needed} bytes but {available} remain; \
         the stored value is incomplete, rebuild it from the event log"
    )]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The bytes do not start with the magic.
    #[error(
        "bytes start with {found:02x?}, not the read model magic \"RM\"; this is not a read model"
    )]
    BadMagic {
        /// The first two bytes.
        found: [u8; 2],
    },
    /// A format version this build does not read.
    #[error(
        "read model format version {found} is not supported (this build reads version \
         {FORMAT_VERSION}); run a build that knows it or rebuild the read model"
    )]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// An unknown kind byte.
    #[error(
        "read model kind byte {found} is unknown (1 distinct, 2 top, 3 membership); the bytes are corrupt"
    )]
    UnknownKind {
        /// The kind byte.
        found: u8,
    },
    /// Bytes after the last payload.
    #[error("{count} unexpected bytes after the last sketch payload; the bytes are corrupt")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A payload is not a valid sketch of the expected form.
    #[error("corrupt {sketch} payload: {reason}; rebuild the read model from the event log")]
    CorruptSketch {
        /// Which payload.
        sketch: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Sketch parameters outside the supported ranges.
    #[error("invalid sketch parameters: {0}")]
    InvalidParams(#[from] crate::projection::ParamsError),
}

/// The kind-specific sketches.
#[derive(Clone)]
enum Sketch {
    Distinct(HllSketch),
    Top {
        counts: CountMinSketch<u64>,
        heavy: FrequentItemsSketch<String>,
    },
    Membership {
        filter: BloomFilter,
        expected_items: u64,
        false_positive_rate: f64,
    },
}

impl ReadModel {
    /// An empty read model with these parameters.
    pub fn new(params: &SketchParams) -> Result<ReadModel, ReadModelError> {
        params.validate()?;
        let library = |error: datasketches::error::Error| {
            ReadModelError::InvalidParams(crate::projection::ParamsError {
                field: "params",
                problem: error.to_string(),
            })
        };
        let sketch = match *params {
            SketchParams::Distinct { lg_k } => {
                Sketch::Distinct(HllSketch::new(lg_k, DISTINCT_HLL_TYPE).map_err(library)?)
            }
            SketchParams::Top {
                width,
                depth,
                max_map_size,
            } => Sketch::Top {
                counts: CountMinSketch::new(depth, width).map_err(library)?,
                heavy: FrequentItemsSketch::new(max_map_size).map_err(library)?,
            },
            SketchParams::Membership {
                expected_items,
                false_positive_rate,
            } => Sketch::Membership {
                filter: build_filter(expected_items, false_positive_rate).map_err(library)?,
                expected_items,
                false_positive_rate,
            },
        };
        Ok(ReadModel { events: 0, sketch })
    }

    /// What this read model computes.
    pub fn kind(&self) -> Kind {
        match self.sketch {
            Sketch::Distinct(_) => Kind::Distinct,
            Sketch::Top { .. } => Kind::Top,
            Sketch::Membership { .. } => Kind::Membership,
        }
    }

    /// The sketch parameters, recovered from the sketches themselves.
    pub fn params(&self) -> SketchParams {
        match &self.sketch {
            Sketch::Distinct(hll) => SketchParams::Distinct {
                lg_k: hll.lg_config_k(),
            },
            Sketch::Top { counts, heavy } => SketchParams::Top {
                width: counts.num_buckets(),
                depth: counts.num_hashes(),
                max_map_size: heavy.max_map_size(),
            },
            Sketch::Membership {
                expected_items,
                false_positive_rate,
                ..
            } => SketchParams::Membership {
                expected_items: *expected_items,
                false_positive_rate: *false_positive_rate,
            },
        }
    }

    /// Whether `other` can be merged into this read model: same kind and parameters.
    pub fn params_compatible(&self, other: &ReadModel) -> bool {
        self.params() == other.params()
    }

    /// Exact number of values folded in; merges add it up.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Folds one value in and counts it. An empty value is ignored and not counted, as the
    /// DataSketches string updates ignore it; [`crate::Projection::value_of`] never yields one.
    pub fn update(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        match &mut self.sketch {
            Sketch::Distinct(hll) => hll.update(raw_bytes::from_str(value)),
            Sketch::Top { counts, heavy } => {
                counts.update(raw_bytes::from_str(value));
                heavy.update_ref(value);
            }
            Sketch::Membership { filter, .. } => filter.insert(raw_bytes::from_str(value)),
        }
        self.events += 1;
    }

    /// Merges `other` into this read model. Different kinds or parameters, or an event count
    /// that would overflow, are errors that leave this read model unchanged.
    pub fn merge(&mut self, other: &ReadModel) -> Result<(), ReadModelError> {
        if !self.params_compatible(other) {
            return Err(ReadModelError::Mismatch {
                ours: describe(&self.params()),
                theirs: describe(&other.params()),
            });
        }
        let events = self
            .events
            .checked_add(other.events)
            .ok_or(ReadModelError::Overflow {
                ours: self.events,
                theirs: other.events,
            })?;
        match (&mut self.sketch, &other.sketch) {
            (Sketch::Distinct(ours), Sketch::Distinct(theirs)) => {
                let mut union = HllUnion::new(ours.lg_config_k())
                    .expect("lg_k of an existing sketch is in the valid range");
                union.update(ours);
                union.update(theirs);
                *ours = union.to_sketch(DISTINCT_HLL_TYPE);
            }
            (
                Sketch::Top { counts, heavy },
                Sketch::Top {
                    counts: their_counts,
                    heavy: their_heavy,
                },
            ) => {
                // Sketch totals equal the event counts, so the overflow check above covers
                // them and neither merge can fail or panic here.
                counts
                    .merge(their_counts)
                    .expect("count-min parameters were checked to match");
                heavy.merge(their_heavy);
            }
            (
                Sketch::Membership { filter, .. },
                Sketch::Membership {
                    filter: their_filter,
                    ..
                },
            ) => filter
                .union(their_filter)
                .expect("bloom filter geometry follows from the matching parameters"),
            _ => unreachable!("matching parameters imply matching kinds"),
        }
        self.events = events;
        Ok(())
    }

    /// The stored bytes; see the module documentation for the layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = match &self.sketch {
            Sketch::Distinct(hll) => vec![canonical::hll_image(hll.serialize())],
            Sketch::Top { counts, heavy } => vec![
                counts.serialize(),
                canonical::frequent_items_image(heavy.serialize()),
            ],
            Sketch::Membership {
                filter,
                expected_items,
                false_positive_rate,
            } => {
                let mut config = Vec::with_capacity(MEMBERSHIP_CONFIG_LEN);
                config.extend_from_slice(&expected_items.to_le_bytes());
                config.extend_from_slice(&false_positive_rate.to_bits().to_le_bytes());
                vec![filter.serialize(), config]
            }
        };
        let payload_len: usize = payloads.iter().map(|p| 4 + p.len()).sum();
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload_len);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(kind_byte(self.kind()));
        bytes.extend_from_slice(&self.events.to_le_bytes());
        for payload in payloads {
            // Parameter limits keep every sketch far below 4 GiB (the largest, a Bloom
            // filter, is at most 512 MiB).
            let len = u32::try_from(payload.len()).expect("sketch payloads are below 4 GiB");
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes
    }

    /// Decodes stored bytes, rejecting anything [`ReadModel::to_bytes`] would not produce.
    pub fn from_bytes(bytes: &[u8]) -> Result<ReadModel, ReadModelError> {
        let mut reader = Reader { bytes };
        let magic = reader.take("magic", 2)?;
        if magic != MAGIC {
            return Err(ReadModelError::BadMagic {
                found: [magic[0], magic[1]],
            });
        }
        let version = reader.take("format version", 1)?[0];
        if version != FORMAT_VERSION {
            return Err(ReadModelError::UnsupportedVersion { found: version });
        }
        let kind = match reader.take("kind", 1)?[0] {
            1 => Kind::Distinct,
            2 => Kind::Top,
            3 => Kind::Membership,
            found => return Err(ReadModelError::UnknownKind { found }),
        };
        let events =
            u64::from_le_bytes(reader.take("event count", 8)?.try_into().expect("8 bytes"));

        let sketch = match kind {
            Kind::Distinct => {
                let hll = HllSketch::deserialize(reader.payload("hll sketch")?)
                    .map_err(corrupt("hll sketch"))?;
                if hll.target_type() != DISTINCT_HLL_TYPE {
                    return Err(ReadModelError::CorruptSketch {
                        sketch: "hll sketch",
                        reason: format!(
                            "register type is {:?}, but distinct read models use HLL_8",
                            hll.target_type()
                        ),
                    });
                }
                consistent("hll sketch", events, hll.is_empty())?;
                Sketch::Distinct(hll)
            }
            Kind::Top => {
                let counts =
                    CountMinSketch::<u64>::deserialize(reader.payload("count-min sketch")?)
                        .map_err(corrupt("count-min sketch"))?;
                let heavy = FrequentItemsSketch::<String>::deserialize(
                    reader.payload("frequent items sketch")?,
                )
                .map_err(corrupt("frequent items sketch"))?;
                same_total("count-min sketch", events, counts.total_weight())?;
                same_total("frequent items sketch", events, heavy.total_weight())?;
                Sketch::Top { counts, heavy }
            }
            Kind::Membership => {
                let filter = BloomFilter::deserialize(reader.payload("bloom filter")?)
                    .map_err(corrupt("bloom filter"))?;
                let config = reader.payload("membership configuration")?;
                if config.len() != MEMBERSHIP_CONFIG_LEN {
                    return Err(ReadModelError::CorruptSketch {
                        sketch: "membership configuration",
                        reason: format!(
                            "it is {} bytes, not {MEMBERSHIP_CONFIG_LEN}",
                            config.len()
                        ),
                    });
                }
                let expected_items = u64::from_le_bytes(config[..8].try_into().expect("8 bytes"));
                let false_positive_rate =
                    f64::from_bits(u64::from_le_bytes(config[8..].try_into().expect("8 bytes")));
                SketchParams::Membership {
                    expected_items,
                    false_positive_rate,
                }
                .validate()?;
                if filter.seed() != MEMBERSHIP_SEED {
                    return Err(ReadModelError::CorruptSketch {
                        sketch: "bloom filter",
                        reason: format!(
                            "seed is {}, not the fixed membership seed {MEMBERSHIP_SEED}",
                            filter.seed()
                        ),
                    });
                }
                let expected = build_filter(expected_items, false_positive_rate)
                    .map_err(corrupt("membership configuration"))?;
                if !expected.is_compatible(&filter) {
                    return Err(ReadModelError::CorruptSketch {
                        sketch: "bloom filter",
                        reason: format!(
                            "{} bits and {} hashes do not match {expected_items} expected items at \
                             false positive rate {false_positive_rate} ({} bits, {} hashes)",
                            filter.capacity(),
                            filter.num_hashes(),
                            expected.capacity(),
                            expected.num_hashes()
                        ),
                    });
                }
                consistent("bloom filter", events, filter.is_empty())?;
                Sketch::Membership {
                    filter,
                    expected_items,
                    false_positive_rate,
                }
            }
        };
        if !reader.bytes.is_empty() {
            return Err(ReadModelError::TrailingBytes {
                count: reader.bytes.len(),
            });
        }
        let model = ReadModel { events, sketch };
        model.params().validate()?;
        Ok(model)
    }

    /// Distinct-count estimate with two-standard-deviation bounds; `None` unless distinct.
    pub fn distinct(&self) -> Option<DistinctEstimate> {
        let Sketch::Distinct(hll) = &self.sketch else {
            return None;
        };
        Some(DistinctEstimate {
            estimate: hll.estimate(),
            lower_bound: hll.lower_bound(DISTINCT_STD_DEVS),
            upper_bound: hll.upper_bound(DISTINCT_STD_DEVS),
            confidence: 1.0 - 2.0 * DISTINCT_STD_DEVS.tail_probability(),
        })
    }

    /// The `k` items with the largest estimates among the frequent-items sketch's candidates
    /// (no false negatives: every value above the sketch's error threshold is a candidate),
    /// largest first, ties by item; `None` unless top.
    pub fn top(&self, k: usize) -> Option<Vec<TopItem>> {
        let Sketch::Top { heavy, .. } = &self.sketch else {
            return None;
        };
        let mut rows = heavy.frequent_items(ErrorType::NoFalseNegatives);
        rows.sort_by(|a, b| {
            b.estimate()
                .cmp(&a.estimate())
                .then_with(|| a.item().cmp(b.item()))
        });
        Some(
            rows.into_iter()
                .take(k)
                .map(|row| TopItem {
                    item: row.item().clone(),
                    estimate: row.estimate(),
                    lower_bound: row.lower_bound(),
                    upper_bound: row.upper_bound(),
                })
                .collect(),
        )
    }

    /// Count-min estimate of how often `item` occurred; `None` unless top.
    pub fn count(&self, item: &str) -> Option<CountEstimate> {
        let Sketch::Top { counts, heavy } = &self.sketch else {
            return None;
        };
        let key = raw_bytes::from_str(item);
        let estimate = counts.estimate(key);
        Some(CountEstimate {
            item: item.to_string(),
            estimate,
            // Count-min's own lower bound is its estimate, which can exceed the true count;
            // the frequent-items lower bound is a guaranteed one.
            lower_bound: heavy.lower_bound(item).min(estimate),
            upper_bound: counts.upper_bound(key),
            total: counts.total_weight(),
        })
    }

    /// Whether `item` may have been inserted; `None` unless membership.
    pub fn contains(&self, item: &str) -> Option<MembershipAnswer> {
        let Sketch::Membership {
            filter,
            false_positive_rate,
            ..
        } = &self.sketch
        else {
            return None;
        };
        Some(MembershipAnswer {
            item: item.to_string(),
            maybe_present: !item.is_empty() && filter.contains(&raw_bytes::from_str(item)),
            configured_false_positive_rate: *false_positive_rate,
            estimated_false_positive_rate: filter.estimated_fpp(),
        })
    }
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("kind", &self.kind())
            .field("events", &self.events)
            .field("params", &self.params())
            .finish()
    }
}

/// A cursor over stored bytes that reports truncation precisely.
struct Reader<'b> {
    bytes: &'b [u8],
}

impl<'b> Reader<'b> {
    fn take(&mut self, what: &'static str, len: usize) -> Result<&'b [u8], ReadModelError> {
        if self.bytes.len() < len {
            return Err(ReadModelError::Truncated {
                what,
                needed: len,
                available: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn payload(&mut self, what: &'static str) -> Result<&'b [u8], ReadModelError> {
        let len = u32::from_le_bytes(self.take(what, 4)?.try_into().expect("4 bytes"));
        self.take(what, len as usize)
    }
}

fn build_filter(
    expected_items: u64,
    false_positive_rate: f64,
) -> Result<BloomFilter, datasketches::error::Error> {
    BloomFilterBuilder::with_accuracy(expected_items, false_positive_rate)
        .seed(MEMBERSHIP_SEED)
        .build()
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Distinct => 1,
        Kind::Top => 2,
        Kind::Membership => 3,
    }
}

fn describe(params: &SketchParams) -> String {
    match params {
        SketchParams::Distinct { lg_k } => format!("kind distinct, lg_k {lg_k}"),
        SketchParams::Top {
            width,
            depth,
            max_map_size,
        } => format!("kind top, width {width}, depth {depth}, max_map_size {max_map_size}"),
        SketchParams::Membership {
            expected_items,
            false_positive_rate,
        } => format!(
            "kind membership, expected_items {expected_items}, false_positive_rate \
             {false_positive_rate}"
        ),
    }
}

fn corrupt(sketch: &'static str) -> impl FnOnce(datasketches::error::Error) -> ReadModelError {
    move |error| ReadModelError::CorruptSketch {
        sketch,
        reason: error.to_string(),
    }
}

/// Every counted value updates the sketch, so a sketch is empty exactly when no event counted.
fn consistent(sketch: &'static str, events: u64, is_empty: bool) -> Result<(), ReadModelError> {
    if (events == 0) != is_empty {
        return Err(ReadModelError::CorruptSketch {
            sketch,
            reason: format!(
                "the header counts {events} events but the sketch is {}",
                if is_empty { "empty" } else { "not empty" }
            ),
        });
    }
    Ok(())
}

/// Each counted value adds one to a top sketch's total weight.
fn same_total(sketch: &'static str, events: u64, total: u64) -> Result<(), ReadModelError> {
    if events != total {
        return Err(ReadModelError::CorruptSketch {
            sketch,
            reason: format!("the header counts {events} events but the sketch totals {total}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    fn distinct(lg_k: u8) -> ReadModel {
        ReadModel::new(&SketchParams::Distinct { lg_k }).unwrap()
    }

    fn top() -> ReadModel {
        ReadModel::new(&SketchParams::default_for(Kind::Top)).unwrap()
    }

    fn small_top(max_map_size: usize) -> ReadModel {
        ReadModel::new(&SketchParams::Top {
            width: 64,
            depth: 3,
            max_map_size,
        })
        .unwrap()
    }

    fn membership(expected_items: u64) -> ReadModel {
        ReadModel::new(&SketchParams::Membership {
            expected_items,
            false_positive_rate: 0.01,
        })
        .unwrap()
    }

    fn folded(mut model: ReadModel, values: &[String]) -> ReadModel {
        for value in values {
            model.update(value);
        }
        model
    }

    fn values(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("{prefix}{i}")).collect()
    }

    fn hll(model: &ReadModel) -> &HllSketch {
        match &model.sketch {
            Sketch::Distinct(hll) => hll,
            _ => panic!("not a distinct read model"),
        }
    }

    fn assert_round_trips(model: &ReadModel) {
        let bytes = model.to_bytes();
        let back = ReadModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.kind(), model.kind());
        assert_eq!(back.events(), model.events());
        assert_eq!(back.params(), model.params());
    }

    #[test]
    fn new_read_models_are_empty_and_answer_only_their_kind() {
        let d = distinct(12);
        assert_eq!(d.kind(), Kind::Distinct);
        assert_eq!(d.events(), 0);
        assert_eq!(d.distinct().unwrap().estimate, 0.0);
        assert!(d.top(3).is_none() && d.count("a").is_none() && d.contains("a").is_none());

        let t = top();
        assert_eq!(t.kind(), Kind::Top);
        assert_eq!(t.top(3).unwrap(), vec![]);
        assert_eq!(t.count("a").unwrap().estimate, 0);
        assert!(t.distinct().is_none() && t.contains("a").is_none());

        let m = membership(1000);
        assert_eq!(m.kind(), Kind::Membership);
        assert!(!m.contains("a").unwrap().maybe_present);
        assert!(m.distinct().is_none() && m.top(1).is_none() && m.count("a").is_none());
    }

    #[test]
    fn new_rejects_invalid_params() {
        let error = ReadModel::new(&SketchParams::Distinct { lg_k: 22 }).unwrap_err();
        assert!(error.to_string().contains("lg_k"), "{error}");
        let error = ReadModel::new(&SketchParams::Top {
            width: 100,
            depth: 3,
            max_map_size: 100,
        })
        .unwrap_err();
        assert!(error.to_string().contains("max_map_size"), "{error}");
    }

    #[test]
    fn empty_values_are_ignored() {
        for mut model in [distinct(12), top(), membership(100)] {
            model.update("");
            assert_eq!(model.events(), 0);
            assert_round_trips(&model);
        }
        assert!(!membership(100).contains("").unwrap().maybe_present);
    }

    #[test]
    fn distinct_estimates_ten_thousand_values_within_bounds() {
        let mut model = distinct(12);
        for round in 0..3 {
            for value in values("user-", 0..10_000) {
                model.update(&value);
            }
            assert_eq!(model.events(), 10_000 * (round + 1));
        }
        let estimate = model.distinct().unwrap();
        assert!(estimate.lower_bound <= 10_000.0 && 10_000.0 <= estimate.upper_bound);
        assert!(
            estimate.lower_bound <= estimate.estimate && estimate.estimate <= estimate.upper_bound
        );
        // lg_k 12 has a relative standard error of about 1.6%; allow 4 standard errors.
        assert!((estimate.estimate - 10_000.0).abs() < 650.0, "{estimate:?}");
        assert!((estimate.confidence - 0.9545).abs() < 0.001, "{estimate:?}");
    }

    #[test]
    fn distinct_is_exact_for_a_few_values() {
        let model = folded(distinct(12), &values("v", 0..10));
        let estimate = model.distinct().unwrap();
        assert!((estimate.estimate - 10.0).abs() < 0.01, "{estimate:?}");
    }

    #[test]
    fn distinct_hashes_strings_as_datasketches_cpp_and_java_do() {
        // Raw UTF-8 bytes: a sketch updated through the library's raw_bytes path is identical.
        let mut library = HllSketch::new(12, HllType::Hll8).unwrap();
        let mut model = distinct(12);
        for value in values("client-", 0..500) {
            library.update(raw_bytes::from_str(&value));
            model.update(&value);
        }
        assert_eq!(hll(&model).serialize(), library.serialize());

        let mut rust_hash = HllSketch::new(12, HllType::Hll8).unwrap();
        rust_hash.update("client-1");
        let mut single = distinct(12);
        single.update("client-1");
        assert_ne!(hll(&single).serialize(), rust_hash.serialize());
    }

    #[test]
    fn top_finds_the_heavy_hitters_of_a_skewed_stream_exactly() {
        let mut model = small_top(64);
        let heavy = [
            ("/", 5_000u64),
            ("/index.html", 3_000),
            ("/about", 2_000),
            ("/contact", 1_000),
        ];
        let mut expected_total = 0;
        // Interleave the heavy values with 20000 values seen once each.
        for i in 0..20_000u32 {
            model.update(&format!("/noise/{i}"));
            expected_total += 1;
            for (value, count) in heavy {
                if u64::from(i) < count {
                    model.update(value);
                    expected_total += 1;
                }
            }
        }
        assert_eq!(model.events(), expected_total);
        let top = model.top(4).unwrap();
        let items: Vec<&str> = top.iter().map(|t| t.item.as_str()).collect();
        assert_eq!(items, ["/", "/index.html", "/about", "/contact"]);
        for (row, (_, count)) in top.iter().zip(heavy) {
            assert!(
                row.lower_bound <= count && count <= row.upper_bound,
                "{row:?}"
            );
            assert!(row.lower_bound <= row.estimate && row.estimate <= row.upper_bound);
        }
        assert!(model.top(0).unwrap().is_empty());
    }

    #[test]
    fn top_breaks_ties_by_item() {
        let model = folded(top(), &["b", "a", "c", "a", "b", "c"].map(String::from));
        let items: Vec<String> = model.top(10).unwrap().into_iter().map(|t| t.item).collect();
        assert_eq!(items, ["a", "b", "c"]);
    }

    #[test]
    fn count_never_under_reports_and_bounds_hold() {
        let mut model = small_top(16);
        let mut truth: HashMap<String, u64> = HashMap::new();
        for i in 0..5_000u32 {
            let value = format!("page-{}", (i * 7919) % 701 % (i % 50 + 1));
            model.update(&value);
            *truth.entry(value).or_default() += 1;
        }
        for (value, count) in &truth {
            let estimate = model.count(value).unwrap();
            assert!(estimate.estimate >= *count, "{estimate:?} true {count}");
            assert!(estimate.upper_bound >= estimate.estimate);
            assert!(estimate.lower_bound <= estimate.estimate);
            assert_eq!(estimate.total, 5_000);
        }
        let json = serde_json::to_value(model.count("page-0").unwrap()).unwrap();
        assert_eq!(json["item"], "page-0");
        assert_eq!(json["total"], 5_000);
    }

    #[test]
    fn count_is_exact_for_few_values_with_the_default_width() {
        let model = folded(top(), &["x", "x", "y"].map(String::from));
        let x = model.count("x").unwrap();
        assert_eq!((x.estimate, x.lower_bound, x.total), (2, 2, 3));
        assert!(x.upper_bound >= 2);
        assert_eq!(model.count("z").unwrap().lower_bound, 0);
    }

    #[test]
    fn membership_never_misses_an_inserted_value() {
        let inserted = values("10.0.", 0..5_000);
        let model = folded(membership(5_000), &inserted);
        for value in &inserted {
            let answer = model.contains(value).unwrap();
            assert!(answer.maybe_present, "{value} missing");
            assert_eq!(answer.configured_false_positive_rate, 0.01);
        }
        let false_positives = values("192.168.", 0..5_000)
            .iter()
            .filter(|v| model.contains(v).unwrap().maybe_present)
            .count();
        // 1% expected; 3% would be far beyond chance.
        assert!(false_positives < 150, "{false_positives} false positives");
        let estimated = model.contains("x").unwrap().estimated_false_positive_rate;
        assert!(estimated > 0.001 && estimated < 0.03, "{estimated}");
    }

    #[test]
    fn membership_hashes_strings_as_datasketches_cpp_and_java_do() {
        let mut library = build_filter(1000, 0.01).unwrap();
        let mut model = membership(1000);
        for value in values("k", 0..100) {
            library.insert(raw_bytes::from_str(&value));
            model.update(&value);
        }
        let Sketch::Membership { filter, .. } = &model.sketch else {
            unreachable!()
        };
        assert_eq!(filter.serialize(), library.serialize());
        assert_eq!(filter.seed(), 9001);
    }

    #[test]
    fn distinct_merge_equals_the_sketch_of_the_union() {
        for (left_n, right_n) in [(10u32, 20u32), (300, 400), (20_000, 30_000)] {
            // The halves overlap by a third of the left side.
            let left_values = values("u", 0..left_n);
            let right_values = values("u", left_n * 2 / 3..left_n * 2 / 3 + right_n);
            let mut merged = folded(distinct(12), &left_values);
            merged.merge(&folded(distinct(12), &right_values)).unwrap();
            let mut all = left_values.clone();
            all.extend(right_values.iter().cloned());
            let direct = folded(distinct(12), &all);

            assert_eq!(merged.events(), direct.events());
            // Same registers, so the same order-independent estimate.
            assert_eq!(
                hll(&merged).composite_estimate(),
                hll(&direct).composite_estimate()
            );
            let (m, d) = (merged.distinct().unwrap(), direct.distinct().unwrap());
            let unique = all.iter().collect::<HashSet<_>>().len() as f64;
            if unique < 100.0 {
                assert_eq!(m.estimate, d.estimate);
            }
            assert!(
                m.lower_bound <= unique && unique <= m.upper_bound,
                "{m:?} vs {unique}"
            );
            assert_round_trips(&merged);
        }
    }

    #[test]
    fn top_merge_adds_counts() {
        let left_values: Vec<String> = (0..3_000).map(|i| format!("c{}", i % 7)).collect();
        let right_values: Vec<String> = (0..2_000).map(|i| format!("c{}", i % 5)).collect();
        let mut merged = folded(top(), &left_values);
        merged.merge(&folded(top(), &right_values)).unwrap();
        let mut all = left_values.clone();
        all.extend(right_values.iter().cloned());
        let direct = folded(top(), &all);

        assert_eq!(merged.events(), 5_000);
        for i in 0..7 {
            let item = format!("c{i}");
            let truth = all.iter().filter(|v| **v == item).count() as u64;
            assert_eq!(merged.count(&item), direct.count(&item));
            assert!(merged.count(&item).unwrap().estimate >= truth);
        }
        assert_eq!(merged.top(7), direct.top(7));
        assert_eq!(merged.top(1).unwrap()[0].estimate, 429 + 400);
        assert_round_trips(&merged);
    }

    #[test]
    fn membership_merge_finds_every_member_of_either_side() {
        let left_values = values("a", 0..2_000);
        let right_values = values("b", 0..2_000);
        let mut merged = folded(membership(10_000), &left_values);
        merged
            .merge(&folded(membership(10_000), &right_values))
            .unwrap();
        for value in left_values.iter().chain(&right_values) {
            assert!(merged.contains(value).unwrap().maybe_present, "{value}");
        }
        let mut all = left_values.clone();
        all.extend(right_values);
        assert_eq!(
            merged.to_bytes(),
            folded(membership(10_000), &all).to_bytes()
        );
        assert_round_trips(&merged);
    }

    #[test]
    fn merge_rejects_other_kinds_and_parameters_and_leaves_the_target_unchanged() {
        let mut target = folded(distinct(12), &values("x", 0..50));
        let before = target.to_bytes();
        let others = [
            distinct(11),
            top(),
            membership(100),
            folded(distinct(14), &values("y", 0..5)),
        ];
        for other in &others {
            assert!(!target.params_compatible(other));
            let error = target.merge(other).unwrap_err();
            assert!(matches!(error, ReadModelError::Mismatch { .. }), "{error}");
            assert!(
                error.to_string().contains("kind distinct, lg_k 12"),
                "{error}"
            );
            assert_eq!(target.to_bytes(), before);
        }

        let mut t = top();
        let other = ReadModel::new(&SketchParams::Top {
            width: 1024,
            depth: 5,
            max_map_size: 512,
        })
        .unwrap();
        assert!(
            t.merge(&other)
                .unwrap_err()
                .to_string()
                .contains("max_map_size 512")
        );

        let mut m = membership(100);
        let other = ReadModel::new(&SketchParams::Membership {
            expected_items: 100,
            false_positive_rate: 0.05,
        })
        .unwrap();
        assert!(matches!(
            m.merge(&other),
            Err(ReadModelError::Mismatch { .. })
        ));
    }

    #[test]
    fn merge_rejects_event_count_overflow() {
        let mut target = folded(membership(100), &values("a", 0..3));
        target.events = u64::MAX - 1;
        let other = folded(membership(100), &values("b", 0..3));
        let error = target.merge(&other).unwrap_err();
        assert_eq!(
            error,
            ReadModelError::Overflow {
                ours: u64::MAX - 1,
                theirs: 3
            }
        );
        assert_eq!(target.events(), u64::MAX - 1);
    }

    #[test]
    fn merging_empty_read_models_changes_nothing() {
        for model in [
            folded(distinct(12), &values("a", 0..100)),
            folded(top(), &values("a", 0..100)),
            folded(membership(1000), &values("a", 0..100)),
        ] {
            let mut merged = model.clone();
            merged
                .merge(&ReadModel::new(&model.params()).unwrap())
                .unwrap();
            assert_eq!(merged.events(), model.events());
            if model.kind() != Kind::Distinct {
                assert_eq!(merged.to_bytes(), model.to_bytes());
            }
        }
    }

    #[test]
    fn bytes_have_the_documented_header() {
        let model = folded(top(), &values("a", 0..3));
        let bytes = model.to_bytes();
        assert_eq!(&bytes[..2], b"RM");
        assert_eq!(bytes[2], 1);
        assert_eq!(bytes[3], 2);
        assert_eq!(u64::from_le_bytes(bytes[4..12].try_into().unwrap()), 3);
        let Sketch::Top { counts, heavy } = &model.sketch else {
            unreachable!()
        };
        let cm = counts.serialize();
        let fi = canonical::frequent_items_image(heavy.serialize());
        let cm_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(cm_len, cm.len());
        assert_eq!(&bytes[16..16 + cm_len], cm.as_slice());
        let fi_at = 16 + cm_len;
        let fi_len = u32::from_le_bytes(bytes[fi_at..fi_at + 4].try_into().unwrap()) as usize;
        assert_eq!(&bytes[fi_at + 4..], fi.as_slice());
        assert_eq!(fi_len, fi.len());

        let d = distinct(12).to_bytes();
        assert_eq!(d[3], 1);
        let m = membership(10).to_bytes();
        assert_eq!(m[3], 3);
        let config = &m[m.len() - 16..];
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 10);
        assert_eq!(
            f64::from_bits(u64::from_le_bytes(config[8..].try_into().unwrap())),
            0.01
        );
    }

    #[test]
    fn from_bytes_rejects_bad_headers() {
        let bytes = folded(distinct(12), &values("a", 0..10)).to_bytes();

        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert_eq!(
            ReadModel::from_bytes(&wrong).unwrap_err(),
            ReadModelError::BadMagic { found: *b"XM" }
        );

        let mut wrong = bytes.clone();
        wrong[2] = 2;
        let error = ReadModel::from_bytes(&wrong).unwrap_err();
        assert_eq!(error, ReadModelError::UnsupportedVersion { found: 2 });
        assert!(
            error.to_string().contains("version 2 is not supported"),
            "{error}"
        );

        for kind in [0, 4, 255] {
            let mut wrong = bytes.clone();
            wrong[3] = kind;
            assert_eq!(
                ReadModel::from_bytes(&wrong).unwrap_err(),
                ReadModelError::UnknownKind { found: kind }
            );
        }

        // Right magic and version but the payload of another kind.
        let mut wrong = bytes.clone();
        wrong[3] = 3;
        assert!(matches!(
            ReadModel::from_bytes(&wrong).unwrap_err(),
            ReadModelError::CorruptSketch {
                sketch: "bloom filter",
                ..
            }
        ));

        assert!(matches!(
            ReadModel::from_bytes(&[]).unwrap_err(),
            ReadModelError::Truncated { what: "magic", .. }
        ));
    }

    #[test]
    fn from_bytes_rejects_every_truncation() {
        for model in [
            folded(distinct(12), &values("a", 0..10)),
            folded(distinct(8), &values("a", 0..1_000)),
            folded(top(), &values("a", 0..10)),
            folded(membership(100), &values("a", 0..10)),
        ] {
            let bytes = model.to_bytes();
            for len in 0..bytes.len() {
                let error = ReadModel::from_bytes(&bytes[..len]).unwrap_err();
                assert!(
                    matches!(error, ReadModelError::Truncated { .. }),
                    "length {len} of {}: {error}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn from_bytes_rejects_trailing_bytes() {
        let mut bytes = folded(top(), &values("a", 0..10)).to_bytes();
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            ReadModel::from_bytes(&bytes).unwrap_err(),
            ReadModelError::TrailingBytes { count: 2 }
        );
    }

    #[test]
    fn from_bytes_rejects_an_event_count_the_sketches_disagree_with() {
        for model in [
            folded(distinct(12), &values("a", 0..10)),
            folded(top(), &values("a", 0..10)),
            folded(membership(100), &values("a", 0..10)),
        ] {
            let mut bytes = model.to_bytes();
            bytes[4..12].copy_from_slice(&0u64.to_le_bytes());
            let error = ReadModel::from_bytes(&bytes).unwrap_err();
            assert!(
                matches!(error, ReadModelError::CorruptSketch { .. }),
                "{error}"
            );
        }
        let mut bytes = folded(top(), &values("a", 0..10)).to_bytes();
        bytes[4..12].copy_from_slice(&11u64.to_le_bytes());
        let error = ReadModel::from_bytes(&bytes).unwrap_err();
        assert!(
            error.to_string().contains("header counts 11 events"),
            "{error}"
        );
    }

    #[test]
    fn from_bytes_rejects_sketches_this_format_does_not_produce() {
        let envelope = |kind: u8, events: u64, payloads: &[Vec<u8>]| {
            let mut bytes = vec![b'R', b'M', 1, kind];
            bytes.extend_from_slice(&events.to_le_bytes());
            for payload in payloads {
                bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                bytes.extend_from_slice(payload);
            }
            bytes
        };

        let mut hll4 = HllSketch::new(12, HllType::Hll4).unwrap();
        hll4.update(raw_bytes::from_str("a"));
        let error = ReadModel::from_bytes(&envelope(1, 1, &[hll4.serialize()])).unwrap_err();
        assert!(error.to_string().contains("HLL_8"), "{error}");

        let lg_k_22 = {
            let mut bytes = HllSketch::new(12, HllType::Hll8).unwrap().serialize();
            bytes[3] = 22;
            bytes
        };
        let error = ReadModel::from_bytes(&envelope(1, 0, &[lg_k_22])).unwrap_err();
        assert!(matches!(
            error,
            ReadModelError::CorruptSketch {
                sketch: "hll sketch",
                ..
            }
        ));

        let config = |n: u64, p: f64| {
            let mut c = n.to_le_bytes().to_vec();
            c.extend_from_slice(&p.to_bits().to_le_bytes());
            c
        };
        let other_seed = BloomFilterBuilder::with_accuracy(100, 0.01)
            .seed(7)
            .build()
            .unwrap()
            .serialize();
        let error =
            ReadModel::from_bytes(&envelope(3, 0, &[other_seed, config(100, 0.01)])).unwrap_err();
        assert!(error.to_string().contains("seed is 7"), "{error}");

        let filter = build_filter(100, 0.01).unwrap().serialize();
        let error = ReadModel::from_bytes(&envelope(3, 0, &[filter.clone(), config(200, 0.01)]))
            .unwrap_err();
        assert!(error.to_string().contains("do not match"), "{error}");
        let error = ReadModel::from_bytes(&envelope(3, 0, &[filter.clone(), config(100, 1.5)]))
            .unwrap_err();
        assert!(matches!(error, ReadModelError::InvalidParams(_)), "{error}");
        let error = ReadModel::from_bytes(&envelope(3, 0, &[filter, vec![0; 8]])).unwrap_err();
        assert!(error.to_string().contains("not 16"), "{error}");

        let too_narrow = CountMinSketch::<u64>::new(5, 2_000_000)
            .unwrap()
            .serialize();
        let fi = FrequentItemsSketch::<String>::new(64).unwrap().serialize();
        let error = ReadModel::from_bytes(&envelope(2, 0, &[too_narrow, fi])).unwrap_err();
        assert!(matches!(error, ReadModelError::InvalidParams(_)), "{error}");
    }

    #[test]
    fn from_bytes_rejects_garbled_payloads() {
        let bytes = folded(top(), &values("a", 0..10)).to_bytes();
        // Family byte of the count-min payload (header 12 + length 4 + offset 2).
        let mut wrong = bytes.clone();
        wrong[18] ^= 0xff;
        let error = ReadModel::from_bytes(&wrong).unwrap_err();
        assert!(
            matches!(
                error,
                ReadModelError::CorruptSketch {
                    sketch: "count-min sketch",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("rebuild"), "{error}");
    }

    fn params_strategy() -> impl Strategy<Value = SketchParams> {
        prop_oneof![
            (4u8..=14).prop_map(|lg_k| SketchParams::Distinct { lg_k }),
            (3u32..200, 1u8..6, 3u32..8).prop_map(|(width, depth, lg_map)| SketchParams::Top {
                width,
                depth,
                max_map_size: 1 << lg_map,
            }),
            (1u64..5_000, 0.001f64..0.5).prop_map(|(expected_items, false_positive_rate)| {
                SketchParams::Membership {
                    expected_items,
                    false_positive_rate,
                }
            }),
        ]
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<String>> {
        // A mix of a few repeated values and many distinct ones, including non-ASCII text.
        prop::collection::vec(
            prop_oneof![
                3 => (0u32..8).prop_map(|i| format!("hot-{i}")),
                1 => "[a-z0-9é/._-]{0,12}",
            ],
            0..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bytes_round_trip_exactly(params in params_strategy(), stream in stream_strategy()) {
            let model = folded(ReadModel::new(&params).unwrap(), &stream);
            let expected_events = stream.iter().filter(|v| !v.is_empty()).count() as u64;
            prop_assert_eq!(model.events(), expected_events);
            let bytes = model.to_bytes();
            let back = ReadModel::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.to_bytes(), bytes);
            prop_assert_eq!(back.params(), params);
            prop_assert_eq!(back.events(), expected_events);
        }

        #[test]
        fn merge_equals_the_read_model_of_the_concatenated_stream(
            params in params_strategy(),
            left in stream_strategy(),
            right in stream_strategy(),
        ) {
            let mut merged = folded(ReadModel::new(&params).unwrap(), &left);
            merged.merge(&folded(ReadModel::new(&params).unwrap(), &right)).unwrap();
            let all: Vec<String> = left.iter().chain(&right).cloned().collect();
            let direct = folded(ReadModel::new(&params).unwrap(), &all);
            prop_assert_eq!(merged.events(), direct.events());
            let bytes = merged.to_bytes();
            prop_assert_eq!(ReadModel::from_bytes(&bytes).unwrap().to_bytes(), bytes);

            let mut truth: HashMap<&str, u64> = HashMap::new();
            for value in all.iter().filter(|v| !v.is_empty()) {
                *truth.entry(value.as_str()).or_default() += 1;
            }
            match merged.kind() {
                Kind::Distinct => {
                    prop_assert_eq!(
                        hll(&merged).composite_estimate(),
                        hll(&direct).composite_estimate()
                    );
                    let m = merged.distinct().unwrap();
                    prop_assert!(m.lower_bound <= m.estimate && m.estimate <= m.upper_bound);
                }
                Kind::Top => {
                    for (value, count) in &truth {
                        // Count-min counters add exactly; the frequent-items part of the lower
                        // bound may differ, as a merged Misra-Gries summary need not equal the
                        // direct one, but it stays a true lower bound.
                        let m = merged.count(value).unwrap();
                        let d = direct.count(value).unwrap();
                        prop_assert_eq!(
                            (m.estimate, m.upper_bound, m.total),
                            (d.estimate, d.upper_bound, d.total)
                        );
                        prop_assert!(m.lower_bound <= *count && *count <= m.estimate);
                    }
                    for row in merged.top(usize::MAX).unwrap() {
                        let count = truth.get(row.item.as_str()).copied().unwrap_or(0);
                        prop_assert!(row.lower_bound <= count && count <= row.upper_bound);
                    }
                }
                Kind::Membership => {
                    prop_assert_eq!(merged.to_bytes(), direct.to_bytes());
                    for value in truth.keys() {
                        prop_assert!(merged.contains(value).unwrap().maybe_present);
                    }
                }
            }
        }

        #[test]
        fn from_bytes_never_panics_on_garbled_bytes(
            params in params_strategy(),
            stream in stream_strategy(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let mut bytes = folded(ReadModel::new(&params).unwrap(), &stream).to_bytes();
            for (index, mask) in flips {
                let at = index.index(bytes.len());
                bytes[at] ^= mask;
            }
            // Either a clear error, or bytes that still decode to a model that re-encodes.
            if let Ok(model) = ReadModel::from_bytes(&bytes) {
                let again = model.to_bytes();
                prop_assert_eq!(ReadModel::from_bytes(&again).unwrap().to_bytes(), again);
            }
        }

        #[test]
        fn count_never_under_reports(stream in stream_strategy(), width in 3u32..50) {
            let params = SketchParams::Top { width, depth: 2, max_map_size: 8 };
            let model = folded(ReadModel::new(&params).unwrap(), &stream);
            let mut truth: HashMap<&str, u64> = HashMap::new();
            for value in stream.iter().filter(|v| !v.is_empty()) {
                *truth.entry(value.as_str()).or_default() += 1;
            }
            for (value, count) in truth {
                let estimate = model.count(value).unwrap();
                prop_assert!(estimate.estimate >= count);
                prop_assert!(estimate.lower_bound <= estimate.estimate);
                prop_assert!(estimate.upper_bound >= estimate.estimate);
            }
        }
    }
}
