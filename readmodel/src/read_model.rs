//! Sketch read models: one mergeable sketch (or pair of sketches) plus the exact number of
//! values folded into it, the answers they give with their bounds, and the versioned bytes they
//! are stored as.
//!
//! # Stored bytes (format version 2)
//!
//! All integers little-endian:
//!
//! | offset | size | content                                                     |
//! |--------|------|-------------------------------------------------------------|
//! | 0      | 2    | magic `b"RM"`                                               |
//! | 2      | 1    | format version, `2`                                         |
//! | 3      | 1    | kind: `1` distinct, `2` top, `3` membership; `0x80`: grouped; `0x40`: top with item filter |
//! | 4      | 8    | events: exact number of values folded in, u64               |
//! | 12     | ...  | the kind's payloads, each a u32 length then that many bytes |
//!
//! * distinct: one DataSketches HLL image with HLL_4 registers (see `distinct`);
//! * top: this crate's conservative-update count-min sketch (see `count_min`), then a
//!   DataSketches frequent-items image of UTF-8 strings, then, with `0x40` set, the item
//!   filter: a membership configuration and its stages, as for membership (see `top`);
//! * membership: a 17-byte configuration (`expected_items` u64, `false_positive_rate` f64 bits,
//!   stage count u8), then one DataSketches Bloom image per stage (see `membership`).
//!
//! * grouped (kind byte with its high bit set, `0x80`): the kind's payloads hold the total,
//!   and one more payload holds the groups (see `groups`).
//!
//! Order-free entries (HLL coupons, frequent items) are written sorted, so the same content has
//! the same bytes. Nothing may follow the last payload. `docs/read-model-format.md` is the full
//! description, with every check the reader makes.
//!
//! # Counting limits
//!
//! `events` and the count-min and frequent-items totals are exact u64 values. A merge whose sum
//! would overflow is an error that changes nothing. An update cannot fail: a read model that has
//! counted `u64::MAX` values (584 years at a billion a second) is saturated, ignores further
//! values and says so through [`ReadModel::saturated`]; nothing wraps around.
//!
//! Guarantee: [`ReadModel::merge`] of two read models of the same kind and parameters gives a
//! read model of the combined stream whose answers keep their guarantees (HLL registers equal
//! those of one sketch fed both streams; counts never under-report; Bloom filters miss no
//! member); distinct counts of different `lg_k` merge down to the smaller; any other difference
//! is an error that leaves the target unchanged. [`ReadModel::from_bytes`] rejects, with the
//! reason, bytes that are not a read model of this format or whose header disagrees with its
//! sketches, and `to_bytes(from_bytes(b)) == b` for every `b` that `to_bytes` wrote.

use serde::Serialize;

use crate::count_min::Overflow;
use crate::distinct::Distinct;
use crate::groups::{GroupUpdate, Groups};
use crate::membership::Membership;
use crate::projection::{Kind, ParamsError, SketchParams};
use crate::top::Top;

/// First two bytes of every stored read model.
pub const MAGIC: [u8; 2] = *b"RM";

/// The stored-bytes format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;

/// Bytes before the first payload: magic, version, kind, events.
const HEADER_LEN: usize = 12;

/// Bit of the kind byte set when the read model is grouped.
pub(crate) const GROUPED: u8 = 0x80;

/// How every corrupt-payload error ends.
pub(crate) const REBUILD_HINT: &str = "; rebuild the read model from the event log";

/// Bit of the kind byte set when a top read model carries its item filter.
const ITEM_FILTER: u8 = 0x40;

/// One sketch read model and the exact number of values folded into it.
#[derive(Clone)]
pub struct ReadModel {
    events: u64,
    sketch: Sketch,
    /// Per-group read models of a projection with `group_by`.
    pub(crate) groups: Option<Box<Groups>>,
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

/// The most frequent values of a `top` read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopList {
    /// At most `k` values, ranked by `estimate` descending, then `lower_bound` descending,
    /// then by value.
    pub items: Vec<TopItem>,
    /// The frequent-items sketch's maximum error: the most by which any true count can exceed
    /// its `lower_bound`, and the most that any value missing from the list can have occurred.
    /// 0 means every count is exact and every value is listed.
    pub maximum_error: u64,
}

/// One candidate heavy hitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopItem {
    /// The value.
    pub item: String,
    /// The count-min estimate (conservative update), lowered to the frequent-items bound
    /// `lower_bound + maximum_error` when that is smaller: the same number the `count` answer
    /// gives. Never below the true count, so it is also `upper_bound`.
    pub estimate: u64,
    /// Guaranteed lower bound of the true count (the frequent-items count).
    pub lower_bound: u64,
    /// Guaranteed upper bound of the true count; equal to `estimate`.
    pub upper_bound: u64,
    /// `lower_bound > maximum_error`: the value certainly occurred more often than the error
    /// threshold, and so more often than any value the sketch lost track of; it is a heavy
    /// hitter with no possible false positive.
    pub guaranteed: bool,
}

/// How often one value occurred.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountEstimate {
    /// The value asked about.
    pub item: String,
    /// Count-min estimate (conservative update), lowered to the frequent-items upper bound
    /// when that is smaller. Never below the true count.
    pub estimate: u64,
    /// Guaranteed lower bound of the true count, from the frequent-items sketch; 0 when the
    /// value is not among its tracked values.
    pub lower_bound: u64,
    /// Guaranteed upper bound of the true count; equal to `estimate`, which never
    /// under-reports.
    pub upper_bound: u64,
    /// Additive count-min error, `ceil(e / width * total)`: the true count is at least
    /// `estimate - error_bound` with probability `confidence`.
    pub error_bound: u64,
    /// The item filter reports the value absent: it was certainly never counted, and the count
    /// of 0 is exact (no count-min error applies).
    pub never_seen: bool,
    /// `1 - e^-depth`, the probability that `error_bound` holds.
    pub confidence: f64,
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
    /// The filter holds more distinct values (estimated) than it was configured for; it has
    /// grown to keep its rate bounded (under twice the configured rate).
    pub over_capacity: bool,
}

/// Why read models could not be merged or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadModelError {
    /// The two read models have different kinds or parameters.
    #[error(
        "cannot merge a read model with {theirs} into one with {ours}; only read models of the \
         same kind and parameters merge (distinct counts also across lg_k), so rebuild one of \
         them with the other's parameters"
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
         {FORMAT_VERSION}); rebuild the store with `projector replay` or run a build that reads it"
    )]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// An unknown kind byte.
    #[error(
        "read model kind byte {found:#04x} is unknown (0x01 distinct, 0x02 top, 0x03 membership; 0x40 added for a top read model with its item filter, 0x80 for a grouped distinct or top); the bytes are corrupt"
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
    InvalidParams(#[from] ParamsError),
}

/// The kind-specific sketches.
#[derive(Clone)]
enum Sketch {
    Distinct(Distinct),
    Top(Top),
    Membership(Membership),
}

impl ReadModel {
    /// An empty read model with these parameters.
    pub fn new(params: &SketchParams) -> Result<ReadModel, ReadModelError> {
        params.validate()?;
        let sketch = match *params {
            SketchParams::Distinct { lg_k } => Sketch::Distinct(Distinct::new(lg_k)),
            SketchParams::Top {
                width,
                depth,
                max_map_size,
            } => Sketch::Top(Top::new(width, depth, max_map_size)),
            SketchParams::Membership {
                expected_items,
                false_positive_rate,
            } => Sketch::Membership(Membership::new(expected_items, false_positive_rate)),
        };
        Ok(ReadModel {
            events: 0,
            sketch,
            groups: None,
        })
    }

    /// An empty grouped read model: a total with these parameters and room for `max_groups`
    /// groups (see `groups`).
    pub fn new_grouped(
        params: &SketchParams,
        max_groups: u32,
    ) -> Result<ReadModel, ReadModelError> {
        if !(1..=crate::groups::MAX_GROUPS).contains(&max_groups) {
            return Err(ReadModelError::InvalidParams(ParamsError {
                field: "max_groups",
                problem: format!(
                    "is {max_groups}; use a value in 1..={} ({} is the default)",
                    crate::groups::MAX_GROUPS,
                    crate::groups::DEFAULT_MAX_GROUPS
                ),
            }));
        }
        let mut model = ReadModel::new(params)?;
        model.groups = Some(Box::new(Groups::new(max_groups)));
        Ok(model)
    }

    /// The total alone: the same read model without its groups (a copy when not grouped).
    pub fn total(&self) -> ReadModel {
        ReadModel {
            events: self.events,
            sketch: self.sketch.clone(),
            groups: None,
        }
    }

    /// Whether the read model is split by group.
    pub fn is_grouped(&self) -> bool {
        self.groups.is_some()
    }

    /// The read model of each group, by group name; `None` unless grouped.
    pub fn groups(&self) -> Option<&std::collections::BTreeMap<String, ReadModel>> {
        self.groups.as_ref().map(|groups| &groups.models)
    }

    /// The read model of one group: the group's, an empty one of the same parameters when the
    /// group holds nothing, or `None` unless grouped.
    pub fn group(&self, name: &str) -> Option<ReadModel> {
        let groups = self.groups.as_ref()?;
        Some(match groups.models.get(name) {
            Some(model) => model.clone(),
            None => {
                ReadModel::new(&self.params()).expect("the parameters of a read model are valid")
            }
        })
    }

    /// Values of a grouped read model whose record had no group value (0 unless grouped).
    pub fn without_group(&self) -> u64 {
        self.groups
            .as_ref()
            .map_or(0, |groups| groups.without_group)
    }

    /// Values of a grouped read model whose group would have been one more than `max_groups`
    /// (0 unless grouped): counted in the total, in no group.
    pub fn past_max_groups(&self) -> u64 {
        self.groups
            .as_ref()
            .map_or(0, |groups| groups.past_max_groups)
    }

    /// The most groups one fold creates (see `groups`); `None` unless grouped.
    pub fn max_groups(&self) -> Option<u32> {
        self.groups.as_ref().map(|groups| groups.max_groups)
    }

    /// What this read model computes.
    pub fn kind(&self) -> Kind {
        match self.sketch {
            Sketch::Distinct(_) => Kind::Distinct,
            Sketch::Top(_) => Kind::Top,
            Sketch::Membership(_) => Kind::Membership,
        }
    }

    /// The sketch parameters, recovered from the sketches themselves.
    pub fn params(&self) -> SketchParams {
        match &self.sketch {
            Sketch::Distinct(hll) => SketchParams::Distinct { lg_k: hll.lg_k() },
            Sketch::Top(top) => SketchParams::Top {
                width: top.width(),
                depth: top.depth(),
                max_map_size: top.max_map_size(),
            },
            Sketch::Membership(filter) => SketchParams::Membership {
                expected_items: filter.expected_items(),
                false_positive_rate: filter.false_positive_rate(),
            },
        }
    }

    /// Whether `other` can be merged into this read model: the same kind and parameters, or
    /// two distinct counts (which merge down to the smaller `lg_k`).
    pub fn params_compatible(&self, other: &ReadModel) -> bool {
        if self.is_grouped() != other.is_grouped() {
            return false;
        }
        match (&self.sketch, &other.sketch) {
            (Sketch::Distinct(_), Sketch::Distinct(_)) => true,
            _ => self.params() == other.params(),
        }
    }

    /// Exact number of values folded in; merges add it up.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether `u64::MAX` values have been counted: the read model then ignores further values
    /// (see the module documentation).
    pub fn saturated(&self) -> bool {
        self.events == u64::MAX
    }

    /// Whether a membership filter holds more distinct values (estimated from its fill) than
    /// its configured `expected_items`; it has then grown extra stages. Always `false` for
    /// other kinds.
    pub fn over_capacity(&self) -> bool {
        match &self.sketch {
            Sketch::Membership(filter) => filter.over_capacity(),
            _ => false,
        }
    }

    /// Folds one value in and counts it. An empty value is ignored and not counted, as the
    /// DataSketches string updates ignore it; [`crate::Projection::value_of`] never yields one.
    /// A saturated read model ignores the value.
    pub fn update(&mut self, value: &str) {
        self.update_in(value, None);
    }

    /// Folds one value of group `group` in (see `groups`): into the total, as
    /// [`ReadModel::update`] does, and into the group's read model. Returns where the value
    /// went, `None` when it was ignored (empty or saturated) or the read model is not grouped.
    pub fn update_in(&mut self, value: &str, group: Option<&str>) -> Option<GroupUpdate> {
        if value.is_empty() || self.saturated() {
            return None;
        }
        let params = self.groups.is_some().then(|| self.params());
        if let (Some(groups), Some(params)) = (self.groups.as_mut(), params) {
            let placed = groups.update(value, group, || {
                ReadModel::new(&params).expect("the parameters of a read model are valid")
            });
            self.update_total(value);
            return Some(placed);
        }
        self.update_total(value);
        None
    }

    /// Kind and parameters, for error messages.
    fn describe(&self) -> String {
        let mut text = describe(&self.params());
        if self.is_grouped() {
            text.push_str(", grouped");
        }
        text
    }

    fn update_total(&mut self, value: &str) {
        match &mut self.sketch {
            Sketch::Distinct(hll) => hll.update(value),
            Sketch::Top(top) => top
                .update(value)
                .expect("the top total equals the event count, which is below u64::MAX"),
            Sketch::Membership(filter) => filter.insert(value),
        }
        self.events += 1;
    }

    /// Merges `other` into this read model. Different kinds or parameters (other than the
    /// `lg_k` of distinct counts), or an event count that would overflow, are errors that leave
    /// this read model unchanged.
    pub fn merge(&mut self, other: &ReadModel) -> Result<(), ReadModelError> {
        if !self.params_compatible(other) {
            return Err(ReadModelError::Mismatch {
                ours: self.describe(),
                theirs: other.describe(),
            });
        }
        let overflow = ReadModelError::Overflow {
            ours: self.events,
            theirs: other.events,
        };
        let events = self
            .events
            .checked_add(other.events)
            .ok_or(overflow.clone())?;
        match (&mut self.sketch, &other.sketch) {
            (Sketch::Distinct(ours), Sketch::Distinct(theirs)) => ours.merge(theirs),
            // Sketch totals equal the event counts, which were checked above; an overflow
            // would still be refused before anything changed.
            (Sketch::Top(ours), Sketch::Top(theirs)) => {
                ours.merge(theirs).map_err(|Overflow| overflow)?
            }
            (Sketch::Membership(ours), Sketch::Membership(theirs)) => ours.merge(theirs),
            _ => unreachable!("compatible parameters imply the same kind"),
        }
        let params = self.params();
        if let (Some(ours), Some(theirs)) = (self.groups.as_mut(), other.groups.as_ref()) {
            ours.merge(theirs, &params);
        }
        self.events = events;
        Ok(())
    }

    /// The stored bytes; see the module documentation for the layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = match &self.sketch {
            Sketch::Distinct(hll) => vec![hll.encode()],
            Sketch::Top(top) => top.encode(),
            Sketch::Membership(filter) => {
                let mut payloads = vec![filter.encode_config()];
                payloads.extend(filter.encode_stages());
                payloads
            }
        };
        let mut payloads = payloads;
        let mut kind = kind_byte(self.kind());
        if matches!(&self.sketch, Sketch::Top(top) if top.has_item_filter()) {
            kind |= ITEM_FILTER;
        }
        if let Some(groups) = &self.groups {
            payloads.push(groups.encode());
            kind |= GROUPED;
        }
        let payload_len: usize = payloads.iter().map(|p| 4 + p.len()).sum();
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload_len);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&self.events.to_le_bytes());
        for payload in payloads {
            // Parameter limits keep every payload far below 4 GiB (a Bloom stage is at most
            // 512 MiB).
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
        let kind_byte = reader.take("kind", 1)?[0];
        let grouped = kind_byte & GROUPED != 0;
        let item_filter = kind_byte & ITEM_FILTER != 0;
        let kind = match (kind_byte & !(GROUPED | ITEM_FILTER), item_filter) {
            (1, false) => Kind::Distinct,
            (2, _) => Kind::Top,
            (3, false) if !grouped => Kind::Membership,
            _ => return Err(ReadModelError::UnknownKind { found: kind_byte }),
        };
        let events =
            u64::from_le_bytes(reader.take("event count", 8)?.try_into().expect("8 bytes"));

        let sketch = match kind {
            Kind::Distinct => {
                let hll = Distinct::decode(reader.payload("hll sketch")?)
                    .map_err(corrupt("hll sketch"))?;
                SketchParams::Distinct { lg_k: hll.lg_k() }.validate()?;
                consistent("hll sketch", events, hll.is_empty())?;
                Sketch::Distinct(hll)
            }
            Kind::Top => {
                let counts = reader.payload("count-min sketch")?;
                let heavy = reader.payload("frequent items sketch")?;
                check_frequent_items_header(heavy)?;
                let mut stages = Vec::new();
                if item_filter {
                    let config = reader.payload("item filter configuration")?;
                    let count = Top::decode_item_filter_config(config)
                        .map_err(corrupt("item filter configuration"))?;
                    for _ in 0..count {
                        stages.push(reader.payload("item filter")?);
                    }
                }
                let top = Top::decode(
                    counts,
                    heavy,
                    item_filter.then_some(stages.as_slice()),
                    SketchParams::MAX_COUNTERS,
                )
                .map_err(|(sketch, reason)| ReadModelError::CorruptSketch { sketch, reason })?;
                if top.total() != events {
                    return Err(ReadModelError::CorruptSketch {
                        sketch: "count-min sketch",
                        reason: format!(
                            "the header counts {events} events but the sketch totals {}",
                            top.total()
                        ),
                    });
                }
                Sketch::Top(top)
            }
            Kind::Membership => {
                let config = reader.payload("membership configuration")?;
                let (expected_items, false_positive_rate, stages) =
                    Membership::decode_config(config)
                        .map_err(corrupt("membership configuration"))?;
                SketchParams::Membership {
                    expected_items,
                    false_positive_rate,
                }
                .validate()?;
                let mut images = Vec::with_capacity(stages);
                for _ in 0..stages {
                    images.push(reader.payload("bloom filter")?);
                }
                let filter = Membership::decode(expected_items, false_positive_rate, &images)
                    .map_err(corrupt("bloom filter"))?;
                consistent("bloom filter", events, filter.is_empty())?;
                Sketch::Membership(filter)
            }
        };
        let groups = if grouped {
            Some(reader.payload("groups")?)
        } else {
            None
        };
        if !reader.bytes.is_empty() {
            return Err(ReadModelError::TrailingBytes {
                count: reader.bytes.len(),
            });
        }
        let mut model = ReadModel {
            events,
            sketch,
            groups: None,
        };
        model.params().validate()?;
        if let Some(payload) = groups {
            model.groups = Some(Box::new(Groups::decode(payload, &model)?));
        }
        Ok(model)
    }

    /// Distinct-count estimate with two-standard-deviation bounds; `None` unless distinct.
    pub fn distinct(&self) -> Option<DistinctEstimate> {
        let Sketch::Distinct(hll) = &self.sketch else {
            return None;
        };
        let bounds = hll.bounds();
        Some(DistinctEstimate {
            estimate: bounds.estimate,
            lower_bound: bounds.lower_bound,
            upper_bound: bounds.upper_bound,
            confidence: bounds.confidence,
        })
    }

    /// The `k` most frequent values with guaranteed bounds; `None` unless top. Candidates are
    /// every value the frequent-items sketch tracks (no heavy hitter is missed: a value it does
    /// not track occurred at most `maximum_error` times).
    pub fn top(&self, k: usize) -> Option<TopList> {
        let Sketch::Top(top) = &self.sketch else {
            return None;
        };
        Some(top.top(k))
    }

    /// How often `item` occurred; `None` unless top.
    pub fn count(&self, item: &str) -> Option<CountEstimate> {
        let Sketch::Top(top) = &self.sketch else {
            return None;
        };
        Some(top.count(item))
    }

    /// Whether `item` may have been inserted; `None` unless membership.
    pub fn contains(&self, item: &str) -> Option<MembershipAnswer> {
        let Sketch::Membership(filter) = &self.sketch else {
            return None;
        };
        Some(MembershipAnswer {
            item: item.to_string(),
            maybe_present: !item.is_empty() && filter.contains(item),
            configured_false_positive_rate: filter.false_positive_rate(),
            estimated_false_positive_rate: filter.estimated_false_positive_rate(),
            over_capacity: filter.over_capacity(),
        })
    }
}

impl TopList {
    /// The ranked items.
    pub fn iter(&self) -> std::slice::Iter<'_, TopItem> {
        self.items.iter()
    }

    /// How many items were returned.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item was returned (nothing was counted, or `k` was 0).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("kind", &self.kind())
            .field("events", &self.events)
            .field("params", &self.params())
            .field(
                "groups",
                &self.groups.as_ref().map(|groups| groups.models.len()),
            )
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

/// Refuses a frequent-items image whose map sizes exceed the supported `max_map_size` before
/// the library allocates its map (byte 3 is log2 of the maximum map size, byte 4 log2 of the
/// current one).
fn check_frequent_items_header(image: &[u8]) -> Result<(), ReadModelError> {
    let max_lg = SketchParams::MAX_MAX_MAP_SIZE.trailing_zeros() as u8;
    if let [_, _, _, lg_max, lg_cur, ..] = *image {
        if lg_max > max_lg || lg_cur > lg_max {
            return Err(ReadModelError::CorruptSketch {
                sketch: "frequent items sketch",
                reason: format!(
                    "map sizes 2^{lg_max} (maximum) and 2^{lg_cur} (current) are outside the \
                     supported 2^{max_lg}"
                ),
            });
        }
    }
    Ok(())
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

fn corrupt(sketch: &'static str) -> impl FnOnce(String) -> ReadModelError {
    move |reason| ReadModelError::CorruptSketch { sketch, reason }
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::io::BufRead;

    use datasketches::bloom::BloomFilterBuilder;
    use datasketches::frequencies::FrequentItemsSketch;
    use datasketches::hash::value::raw_bytes;
    use datasketches::hll::{HllSketch, HllType};
    use proptest::prelude::*;

    use super::*;
    use crate::membership::Geometry;

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
            Sketch::Distinct(hll) => hll.sketch(),
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

    /// The envelope with the given payloads, for hand-made bytes.
    fn envelope(kind: u8, events: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = vec![b'R', b'M', FORMAT_VERSION, kind];
        bytes.extend_from_slice(&events.to_le_bytes());
        for payload in payloads {
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        bytes
    }

    /// The payloads of stored bytes.
    fn payloads(bytes: &[u8]) -> Vec<&[u8]> {
        let mut reader = Reader {
            bytes: &bytes[HEADER_LEN..],
        };
        let mut all = Vec::new();
        while !reader.bytes.is_empty() {
            all.push(reader.payload("payload").unwrap());
        }
        all
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
        let list = t.top(3).unwrap();
        assert!(list.is_empty());
        assert_eq!(list.maximum_error, 0);
        assert_eq!(t.count("a").unwrap().estimate, 0);
        assert!(t.distinct().is_none() && t.contains("a").is_none());

        let m = membership(1000);
        assert_eq!(m.kind(), Kind::Membership);
        let answer = m.contains("a").unwrap();
        assert!(!answer.maybe_present && !answer.over_capacity);
        assert_eq!(answer.estimated_false_positive_rate, 0.0);
        assert!(m.distinct().is_none() && m.top(1).is_none() && m.count("a").is_none());
        for model in [d, t, m] {
            assert!(!model.over_capacity() && !model.saturated());
        }
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
        // The stored and reloaded read model gives the same answer.
        let back = ReadModel::from_bytes(&model.to_bytes()).unwrap();
        assert_eq!(back.distinct(), model.distinct());
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
    fn distinct_merges_down_to_the_smaller_lg_k() {
        let mut fine = folded(distinct(14), &values("d", 0..20_000));
        let coarse = folded(distinct(11), &values("d", 10_000..30_000));
        assert!(fine.params_compatible(&coarse) && coarse.params_compatible(&fine));
        fine.merge(&coarse).unwrap();
        assert_eq!(fine.params(), SketchParams::Distinct { lg_k: 11 });
        assert_eq!(fine.events(), 40_000);
        let direct = folded(distinct(11), &values("d", 0..30_000));
        assert_eq!(
            hll(&fine).composite_estimate(),
            hll(&direct).composite_estimate()
        );
        let estimate = fine.distinct().unwrap();
        assert!(estimate.lower_bound <= 30_000.0 && 30_000.0 <= estimate.upper_bound);
        assert_round_trips(&fine);
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
        assert!(top.maximum_error > 0, "the map of 64 must have purged");
        let items: Vec<&str> = top.iter().map(|t| t.item.as_str()).collect();
        assert_eq!(items, ["/", "/index.html", "/about", "/contact"]);
        for (row, (_, count)) in top.iter().zip(heavy) {
            assert!(
                row.lower_bound <= count && count <= row.upper_bound,
                "{row:?}"
            );
            assert_eq!(row.estimate, row.upper_bound);
            assert!(row.lower_bound + top.maximum_error >= row.upper_bound);
            assert!(
                row.guaranteed,
                "{row:?} with maximum error {}",
                top.maximum_error
            );
        }
        assert!(model.top(0).unwrap().is_empty());
    }

    #[test]
    fn top_marks_only_values_above_the_maximum_error_as_guaranteed() {
        // A map of 8 tracks at most 6 values; 200 distinct values force purges.
        let mut stream = Vec::new();
        for i in 0..200u32 {
            stream.push(format!("tail-{i}"));
            if i % 2 == 0 {
                stream.push("hot".to_string());
            }
        }
        let model = folded(small_top(8), &stream);
        let list = model.top(usize::MAX).unwrap();
        assert!(list.maximum_error > 0);
        let truth = |item: &str| stream.iter().filter(|v| *v == item).count() as u64;
        for row in list.iter() {
            assert_eq!(
                row.guaranteed,
                row.lower_bound > list.maximum_error,
                "{row:?}"
            );
            assert!(row.lower_bound <= truth(&row.item) && truth(&row.item) <= row.upper_bound);
        }
        let hot = list.iter().find(|row| row.item == "hot").unwrap();
        assert!(
            hot.guaranteed,
            "{hot:?}, maximum error {}",
            list.maximum_error
        );
        assert!(list.iter().any(|row| !row.guaranteed));
        // Every value not listed occurred at most maximum_error times.
        let listed: HashSet<&str> = list.iter().map(|row| row.item.as_str()).collect();
        for value in stream.iter().filter(|v| !listed.contains(v.as_str())) {
            assert!(truth(value) <= list.maximum_error);
        }

        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["maximum_error"], list.maximum_error);
        assert!(json["items"][0]["guaranteed"].is_boolean());
    }

    #[test]
    fn top_breaks_ties_by_item() {
        let model = folded(top(), &["b", "a", "c", "a", "b", "c"].map(String::from));
        let list = model.top(10).unwrap();
        let items: Vec<&str> = list.iter().map(|t| t.item.as_str()).collect();
        assert_eq!(items, ["a", "b", "c"]);
        assert_eq!(list.maximum_error, 0);
        assert!(list.iter().all(|t| t.guaranteed && t.estimate == 2));
    }

    #[test]
    fn top_of_merged_long_tail_buckets_ranks_the_true_leaders() {
        // The Wikipedia sample: 39244 edits of 35143 pages, folded as the projector does (one
        // read model per hour and partition: 96) and merged as a query does. Only a few pages
        // stand out (the largest has 33 edits), so a small map purges them away in the merge.
        // DATA_DIR as for deploy/demo.sh, else ../shared/data beside the repository.
        let data_dir = std::env::var_os("DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
            });
        let path = data_dir.join("wikipedia-edits-2015-09-12.ndjson.gz");
        let file = std::fs::File::open(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; the shared data sets sit in ../shared/data beside the repository, \
                 or set DATA_DIR to the folder holding them",
                path.display()
            )
        });
        let mut edits = Vec::new();
        for line in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
            let edit: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let hour: u32 = edit["time"].as_str().unwrap()[11..13].parse().unwrap();
            let partition = schemas::partition_for(edit["user"].as_str().unwrap(), 4);
            edits.push((hour, partition, edit["page"].as_str().unwrap().to_string()));
        }
        let mut truth: HashMap<&str, u64> = HashMap::new();
        for (_, _, page) in &edits {
            *truth.entry(page).or_default() += 1;
        }
        let mut counts: Vec<u64> = truth.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!((edits.len(), truth.len(), counts[0]), (39_244, 35_143, 33));

        let correct_in_top_10 = |params: SketchParams| {
            let mut buckets: BTreeMap<(u32, i32), ReadModel> = BTreeMap::new();
            for (hour, partition, page) in &edits {
                buckets
                    .entry((*hour, *partition))
                    .or_insert_with(|| ReadModel::new(&params).unwrap())
                    .update(page);
            }
            assert_eq!(buckets.len(), 96);
            let mut merged = ReadModel::new(&params).unwrap();
            for model in buckets.values() {
                merged.merge(model).unwrap();
            }
            let list = merged.top(10).unwrap();
            for row in list.iter() {
                let count = truth[row.item.as_str()];
                assert!(
                    row.lower_bound <= count && count <= row.upper_bound,
                    "{row:?}"
                );
            }
            let correct = list
                .iter()
                .filter(|row| truth[row.item.as_str()] >= counts[9]);
            (
                correct.count(),
                list.iter().filter(|row| row.guaranteed).count(),
            )
        };

        let (correct, guaranteed) = correct_in_top_10(SketchParams::default_for(Kind::Top));
        assert!(correct >= 9, "defaults: {correct} of the true top 10");
        assert_eq!(guaranteed, 10, "defaults: {guaranteed} guaranteed");
        let (correct, guaranteed) = correct_in_top_10(SketchParams::Top {
            width: 1024,
            depth: 5,
            max_map_size: 1024,
        });
        assert!(correct <= 6, "a map of 1024: {correct} of the true top 10");
        assert_eq!(guaranteed, 0);
    }

    #[test]
    fn count_never_under_reports_and_reports_its_error_bound() {
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
            assert_eq!(estimate.upper_bound, estimate.estimate);
            assert!(estimate.lower_bound <= *count);
            assert_eq!(estimate.total, 5_000);
            // e / 64 * 5000 = 212.4; depth 3.
            assert_eq!(estimate.error_bound, 213);
            assert!((estimate.confidence - (1.0 - (-3.0f64).exp())).abs() < 1e-12);
        }
        let json = serde_json::to_value(model.count("page-0").unwrap()).unwrap();
        assert_eq!(json["item"], "page-0");
        assert_eq!(json["total"], 5_000);
        assert_eq!(json["error_bound"], 213);
    }

    #[test]
    fn count_is_exact_for_few_values_with_the_default_width() {
        let model = folded(top(), &["x", "x", "y"].map(String::from));
        let x = model.count("x").unwrap();
        assert_eq!(
            (x.estimate, x.lower_bound, x.upper_bound, x.total),
            (2, 2, 2, 3)
        );
        let z = model.count("z").unwrap();
        assert_eq!((z.estimate, z.lower_bound), (0, 0));
    }

    #[test]
    fn a_saturated_read_model_ignores_values_and_says_so() {
        for mut model in [distinct(12), membership(100)] {
            model.update("a");
            model.events = u64::MAX - 1;
            model.update("b");
            assert!(model.saturated());
            let before = model.to_bytes();
            model.update("c");
            assert_eq!(model.to_bytes(), before);
            assert_eq!(model.events(), u64::MAX);
        }

        let mut model = top();
        let Sketch::Top(sketch) = &mut model.sketch else {
            unreachable!()
        };
        sketch.update_with_weight("a", u64::MAX - 1).unwrap();
        model.events = u64::MAX - 1;
        model.update("b");
        assert!(model.saturated());
        model.update("c");
        assert_eq!(model.count("c").unwrap().estimate, 0);
        assert_eq!(model.count("a").unwrap().estimate, u64::MAX - 1);
        assert_round_trips(&model);
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
        let false_positives = values("192.168.", 0..20_000)
            .iter()
            .filter(|v| model.contains(v).unwrap().maybe_present)
            .count();
        // 1% of 20000 is 200 with a standard deviation of 14.
        assert!(
            (150..=250).contains(&false_positives),
            "{false_positives} false positives"
        );
        let estimated = model.contains("x").unwrap().estimated_false_positive_rate;
        assert!((estimated - 0.01).abs() < 0.001, "{estimated}");
    }

    #[test]
    fn membership_flags_and_survives_going_past_capacity() {
        let mut model = membership(1_000);
        let first = values("m", 0..900);
        for value in &first {
            model.update(value);
        }
        assert!(!model.over_capacity());
        assert!(!model.contains("m1").unwrap().over_capacity);

        let more = values("n", 0..9_000);
        for value in &more {
            model.update(value);
        }
        assert!(model.over_capacity());
        let answer = model.contains("m1").unwrap();
        assert!(answer.maybe_present && answer.over_capacity);
        // Still bounded: under twice the configured rate, where one filter would be near 1.
        assert!(answer.estimated_false_positive_rate < 0.02, "{answer:?}");
        for value in first.iter().chain(&more) {
            assert!(model.contains(value).unwrap().maybe_present);
        }
        assert_round_trips(&model);
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
            assert_eq!(merged.count(&item).unwrap().estimate, truth);
        }
        assert_eq!(merged.top(7), direct.top(7));
        assert_eq!(merged.top(1).unwrap().items[0].estimate, 429 + 400);
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
    fn membership_merges_filters_of_different_stage_counts() {
        let grown = folded(membership(100), &values("g", 0..1_000));
        let small = folded(membership(100), &values("s", 0..50));
        let mut merged = small.clone();
        merged.merge(&grown).unwrap();
        let mut other_way = grown.clone();
        other_way.merge(&small).unwrap();
        assert_eq!(merged.to_bytes(), other_way.to_bytes());
        assert!(merged.over_capacity());
        for value in values("g", 0..1_000).iter().chain(&values("s", 0..50)) {
            assert!(merged.contains(value).unwrap().maybe_present);
        }
        assert_round_trips(&merged);
    }

    #[test]
    fn merge_rejects_other_kinds_and_parameters_and_leaves_the_target_unchanged() {
        let mut target = folded(distinct(12), &values("x", 0..50));
        let before = target.to_bytes();
        for other in [top(), membership(100)] {
            assert!(!target.params_compatible(&other));
            let error = target.merge(&other).unwrap_err();
            assert!(matches!(error, ReadModelError::Mismatch { .. }), "{error}");
            assert!(
                error.to_string().contains("kind distinct, lg_k 12"),
                "{error}"
            );
            assert_eq!(target.to_bytes(), before);
        }

        let mut t = folded(top(), &values("t", 0..10));
        let before = t.to_bytes();
        for (width, depth, max_map_size) in [(1024, 5, 512), (1000, 5, 16_384), (1024, 4, 16_384)] {
            let other = ReadModel::new(&SketchParams::Top {
                width,
                depth,
                max_map_size,
            })
            .unwrap();
            let error = t.merge(&other).unwrap_err();
            assert!(
                error.to_string().contains(&format!(
                    "width {width}, depth {depth}, max_map_size {max_map_size}"
                )),
                "{error}"
            );
            assert_eq!(t.to_bytes(), before);
        }

        let mut m = membership(100);
        for other in [
            SketchParams::Membership {
                expected_items: 100,
                false_positive_rate: 0.05,
            },
            SketchParams::Membership {
                expected_items: 101,
                false_positive_rate: 0.01,
            },
        ] {
            assert!(matches!(
                m.merge(&ReadModel::new(&other).unwrap()),
                Err(ReadModelError::Mismatch { .. })
            ));
        }
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

        // Counters: two top read models that each counted just over half of u64::MAX.
        let mut half = top();
        let Sketch::Top(sketch) = &mut half.sketch else {
            unreachable!()
        };
        sketch.update_with_weight("a", u64::MAX / 2 + 1).unwrap();
        half.events = u64::MAX / 2 + 1;
        let mut target = half.clone();
        let before = target.to_bytes();
        assert!(matches!(
            target.merge(&half),
            Err(ReadModelError::Overflow { .. })
        ));
        assert_eq!(target.to_bytes(), before);
    }

    #[test]
    fn merging_empty_read_models_changes_nothing() {
        for model in [
            folded(distinct(12), &values("a", 0..100)),
            folded(distinct(12), &values("a", 0..10_000)),
            folded(top(), &values("a", 0..100)),
            folded(membership(1000), &values("a", 0..100)),
        ] {
            let empty = ReadModel::new(&model.params()).unwrap();
            let mut merged = model.clone();
            merged.merge(&empty).unwrap();
            assert_eq!(merged.to_bytes(), model.to_bytes());
            let mut merged = empty.clone();
            merged.merge(&model).unwrap();
            assert_eq!(merged.to_bytes(), model.to_bytes());
        }
    }

    #[test]
    fn bytes_have_the_documented_header_and_payloads() {
        let model = folded(top(), &values("a", 0..3));
        let bytes = model.to_bytes();
        assert_eq!(&bytes[..2], b"RM");
        assert_eq!(bytes[2], 2);
        assert_eq!(bytes[3], 0x42, "top with its item filter");
        assert_eq!(u64::from_le_bytes(bytes[4..12].try_into().unwrap()), 3);
        let Sketch::Top(sketch) = &model.sketch else {
            unreachable!()
        };
        let encoded = sketch.encode();
        assert_eq!(
            payloads(&bytes),
            encoded.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        let [counts, heavy, filter_config, _stage] = encoded.as_slice() else {
            panic!("counts, frequent items, filter configuration, one stage");
        };
        assert_eq!(
            u64::from_le_bytes(filter_config[..8].try_into().unwrap()),
            1024
        );
        // Count-min: width, depth, total, non-zero counters (3 values in 5 rows).
        assert_eq!(u32::from_le_bytes(counts[0..4].try_into().unwrap()), 1024);
        assert_eq!(counts[4], 5);
        assert_eq!(u64::from_le_bytes(counts[5..13].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(counts[13..17].try_into().unwrap()), 15);
        // Frequent items: family 10.
        assert_eq!(heavy[2], 10);

        let d = folded(distinct(12), &values("d", 0..10)).to_bytes();
        assert_eq!(d[3], 1);
        let hll = payloads(&d)[0];
        assert_eq!(
            (hll[2], hll[3], hll[7] >> 2 & 3),
            (7, 12, 0),
            "family 7, lg_k 12, HLL_4"
        );

        let m = folded(membership(10), &values("m", 0..100)).to_bytes();
        assert_eq!(m[3], 3);
        let parts = payloads(&m);
        let config = parts[0];
        assert_eq!(config.len(), 17);
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 10);
        assert_eq!(
            f64::from_bits(u64::from_le_bytes(config[8..16].try_into().unwrap())),
            0.01
        );
        assert_eq!(usize::from(config[16]), parts.len() - 1);
        assert!(parts.len() > 2, "100 values in a filter for 10 open stages");
        for (index, stage) in parts[1..].iter().enumerate() {
            let g = Geometry::stage(10, 0.01, index).unwrap();
            assert_eq!(stage[2], 21, "Bloom family");
            assert_eq!(
                u16::from_le_bytes(stage[4..6].try_into().unwrap()),
                g.hashes
            );
        }
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

        for version in [1, 3] {
            let mut wrong = bytes.clone();
            wrong[2] = version;
            let error = ReadModel::from_bytes(&wrong).unwrap_err();
            assert_eq!(error, ReadModelError::UnsupportedVersion { found: version });
            assert!(error.to_string().contains("projector replay"), "{error}");
        }

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
                sketch: "membership configuration",
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
            folded(membership(10), &values("a", 0..100)),
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
        let mut hll8 = HllSketch::new(12, HllType::Hll8).unwrap();
        hll8.update(raw_bytes::from_str("a"));
        let error = ReadModel::from_bytes(&envelope(1, 1, &[&hll8.serialize()])).unwrap_err();
        assert!(error.to_string().contains("HLL_4"), "{error}");

        let lg_k_22 = {
            let mut bytes = HllSketch::new(12, HllType::Hll4).unwrap().serialize();
            bytes[3] = 22;
            bytes
        };
        let error = ReadModel::from_bytes(&envelope(1, 0, &[&lg_k_22])).unwrap_err();
        assert!(matches!(
            error,
            ReadModelError::CorruptSketch {
                sketch: "hll sketch",
                ..
            }
        ));

        let config = |n: u64, p: f64, stages: u8| {
            let mut c = n.to_le_bytes().to_vec();
            c.extend_from_slice(&p.to_bits().to_le_bytes());
            c.push(stages);
            c
        };
        let g = Geometry::stage(100, 0.01, 0).unwrap();
        let other_seed = BloomFilterBuilder::with_size(g.bits, g.hashes)
            .seed(7)
            .build()
            .unwrap()
            .serialize();
        let error = ReadModel::from_bytes(&envelope(3, 0, &[&config(100, 0.01, 1), &other_seed]))
            .unwrap_err();
        assert!(error.to_string().contains("seed 7"), "{error}");

        // The library's own sizing for 100 items at 0.497 rounds the hash count up to 2.
        let library = BloomFilterBuilder::with_accuracy(100, 0.497)
            .seed(9001)
            .build()
            .unwrap()
            .serialize();
        let error = ReadModel::from_bytes(&envelope(3, 0, &[&config(100, 0.497, 1), &library]))
            .unwrap_err();
        assert!(error.to_string().contains("2 hashes"), "{error}");

        let ours = BloomFilterBuilder::with_size(g.bits, g.hashes)
            .seed(9001)
            .build()
            .unwrap()
            .serialize();
        let error =
            ReadModel::from_bytes(&envelope(3, 0, &[&config(200, 0.01, 1), &ours])).unwrap_err();
        assert!(error.to_string().contains("does not hold"), "{error}");
        let error =
            ReadModel::from_bytes(&envelope(3, 0, &[&config(100, 1.5, 1), &ours])).unwrap_err();
        assert!(matches!(error, ReadModelError::InvalidParams(_)), "{error}");
        let error = ReadModel::from_bytes(&envelope(3, 0, &[&[0; 16], &ours])).unwrap_err();
        assert!(error.to_string().contains("not 17"), "{error}");
        let error =
            ReadModel::from_bytes(&envelope(3, 0, &[&config(100, 0.01, 0), &ours])).unwrap_err();
        assert!(error.to_string().contains("0 stages"), "{error}");

        // A count-min geometry beyond the limits is refused before anything is allocated.
        let mut too_wide = vec![0u8; 17];
        too_wide[0..4].copy_from_slice(&2_000_000u32.to_le_bytes());
        too_wide[4] = 5;
        let fi = FrequentItemsSketch::<String>::new(64).unwrap().serialize();
        let error = ReadModel::from_bytes(&envelope(2, 0, &[&too_wide, &fi])).unwrap_err();
        assert!(error.to_string().contains("geometry"), "{error}");

        // So is a frequent-items map larger than max_map_size allows.
        let cm = CountMinForTests::empty();
        let mut huge_map = fi.clone();
        huge_map[3] = 26;
        let error = ReadModel::from_bytes(&envelope(2, 0, &[&cm, &huge_map])).unwrap_err();
        assert!(error.to_string().contains("2^26"), "{error}");
    }

    /// Stored count-min payloads built by hand.
    struct CountMinForTests;

    impl CountMinForTests {
        fn empty() -> Vec<u8> {
            crate::count_min::CountMin::new(64, 3).encode()
        }
    }

    #[test]
    fn from_bytes_rejects_garbled_payloads() {
        let bytes = folded(top(), &values("a", 0..10)).to_bytes();
        let counts_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        // Family byte of the frequent-items payload.
        let family_at = 16 + counts_len + 4 + 2;
        let mut wrong = bytes.clone();
        wrong[family_at] ^= 0xff;
        let error = ReadModel::from_bytes(&wrong).unwrap_err();
        assert!(
            matches!(
                error,
                ReadModelError::CorruptSketch {
                    sketch: "frequent items sketch",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("rebuild"), "{error}");

        // A count-min counter above the total.
        let mut wrong = bytes.clone();
        wrong[16 + 17 + 1] = 0x7f;
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

    fn truth(stream: &[String]) -> HashMap<&str, u64> {
        let mut counts = HashMap::new();
        for value in stream.iter().filter(|v| !v.is_empty()) {
            *counts.entry(value.as_str()).or_default() += 1;
        }
        counts
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
            prop_assert_eq!(back.distinct(), model.distinct());
            prop_assert_eq!(back.top(usize::MAX), model.top(usize::MAX));
            for value in stream.iter().take(20) {
                prop_assert_eq!(back.count(value), model.count(value));
                prop_assert_eq!(back.contains(value), model.contains(value));
            }
        }

        #[test]
        fn merge_keeps_every_guarantee_of_the_concatenated_stream(
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
            prop_assert_eq!(ReadModel::from_bytes(&bytes).unwrap().to_bytes(), bytes.clone());

            let truth = truth(&all);
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
                        // A merged conservative sketch is not the conservative sketch of the
                        // concatenated stream, but it still never under-reports.
                        let m = merged.count(value).unwrap();
                        prop_assert!(m.lower_bound <= *count && *count <= m.estimate);
                        prop_assert_eq!(m.total, all.iter().filter(|v| !v.is_empty()).count() as u64);
                    }
                    let list = merged.top(usize::MAX).unwrap();
                    for row in list.iter() {
                        let count = truth.get(row.item.as_str()).copied().unwrap_or(0);
                        prop_assert!(row.lower_bound <= count && count <= row.upper_bound);
                        prop_assert!(!row.guaranteed || count > list.maximum_error);
                    }
                    let listed: HashSet<&str> = list.iter().map(|r| r.item.as_str()).collect();
                    for (value, count) in &truth {
                        prop_assert!(listed.contains(value) || *count <= list.maximum_error);
                    }
                }
                Kind::Membership => {
                    if direct.to_bytes() != bytes {
                        // Only growth makes them differ: the direct stream opened stages at
                        // other points than the two halves did.
                        let stages = |m: &ReadModel| payloads(&m.to_bytes()).len();
                        prop_assert!(stages(&direct) > 2 || stages(&merged) > 2);
                    }
                    for value in truth.keys() {
                        prop_assert!(merged.contains(value).unwrap().maybe_present);
                    }
                }
            }
        }

        #[test]
        fn merge_is_commutative_and_associative(
            params in params_strategy(),
            a in stream_strategy(),
            b in stream_strategy(),
            c in stream_strategy(),
        ) {
            let [a, b, c] = [a, b, c].map(|s| folded(ReadModel::new(&params).unwrap(), &s));
            let merge = |x: &ReadModel, y: &ReadModel| {
                let mut merged = x.clone();
                merged.merge(y).unwrap();
                merged
            };
            let (ab, ba) = (merge(&a, &b), merge(&b, &a));
            let (ab_c, a_bc) = (merge(&ab, &c), merge(&a, &merge(&b, &c)));
            if let Sketch::Top(_) = &a.sketch {
                // Counters add exactly in any order. The frequent-items summary depends on the
                // order of its purges, so it is equal only while nothing was purged; its
                // bounds hold either way (see the test above).
                let counts = |m: &ReadModel| payloads(&m.to_bytes())[0].to_vec();
                prop_assert_eq!(counts(&ab), counts(&ba));
                prop_assert_eq!(counts(&ab_c), counts(&a_bc));
                let exact = |m: &ReadModel| m.top(0).unwrap().maximum_error == 0;
                if exact(&ab) && exact(&ba) {
                    prop_assert_eq!(ab.to_bytes(), ba.to_bytes());
                }
                if exact(&ab_c) && exact(&a_bc) {
                    prop_assert_eq!(ab_c.to_bytes(), a_bc.to_bytes());
                }
            } else {
                prop_assert_eq!(ab.to_bytes(), ba.to_bytes());
                prop_assert_eq!(ab_c.to_bytes(), a_bc.to_bytes());
            }
            prop_assert_eq!(ab_c.events(), a.events() + b.events() + c.events());
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
            for (value, count) in truth(&stream) {
                let estimate = model.count(value).unwrap();
                prop_assert!(estimate.estimate >= count);
                prop_assert!(estimate.lower_bound <= count);
                prop_assert_eq!(estimate.upper_bound, estimate.estimate);
            }
        }
    }
}

#[cfg(test)]
mod item_filter_tests {
    use super::*;

    fn top_of(values: impl IntoIterator<Item = String>) -> ReadModel {
        let mut model = ReadModel::new(&SketchParams::default_for(Kind::Top)).unwrap();
        for value in values {
            model.update(&value);
        }
        model
    }

    fn pages(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
        range.map(|i| format!("/page/{i}"))
    }

    #[test]
    fn values_never_counted_get_an_exact_zero_and_counted_ones_never_do() {
        let model = top_of(pages(0..500).chain(pages(0..100)));
        for i in 0..500 {
            let count = model.count(&format!("/page/{i}")).unwrap();
            assert!(
                !count.never_seen,
                "a counted value is never reported unseen"
            );
            assert!(count.upper_bound >= if i < 100 { 2 } else { 1 });
        }
        let unseen = (1000..3000)
            .map(|i| model.count(&format!("/page/{i}")).unwrap())
            .filter(|count| {
                if count.never_seen {
                    assert_eq!(
                        (count.estimate, count.lower_bound, count.upper_bound),
                        (0, 0, 0)
                    );
                }
                count.never_seen
            })
            .count();
        // Within the filter's 1024 values the false-positive rate is about 1%.
        assert!(
            unseen >= 1940,
            "{unseen} of 2000 unseen values reported never seen"
        );
    }

    #[test]
    fn the_filter_is_stored_merged_and_dropped_with_an_older_read_model() {
        let left = top_of(pages(0..300));
        let right = top_of(pages(200..600));
        let bytes = left.to_bytes();
        assert_eq!(bytes[3], 0x42);
        let back = ReadModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);

        let mut merged = left.clone();
        merged.merge(&right).unwrap();
        for i in 0..600 {
            assert!(!merged.count(&format!("/page/{i}")).unwrap().never_seen);
        }
        assert!(merged.count("/elsewhere").unwrap().never_seen);

        // A read model written before the filter: kind 2, the two counter payloads only.
        let old_payloads = {
            let mut reader = Reader {
                bytes: &bytes[HEADER_LEN..],
            };
            [
                reader.payload("counts").unwrap().to_vec(),
                reader.payload("heavy").unwrap().to_vec(),
            ]
        };
        let mut old = bytes[..HEADER_LEN].to_vec();
        old[3] = 2;
        for payload in &old_payloads {
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            old.extend_from_slice(payload);
        }
        let old = ReadModel::from_bytes(&old).unwrap();
        assert!(!old.count("/elsewhere").unwrap().never_seen);
        assert_eq!(old.to_bytes()[3], 2, "an old read model keeps its bytes");

        let mut mixed = left.clone();
        mixed.merge(&old).unwrap();
        assert_eq!(mixed.to_bytes()[3], 2, "the merge drops the filter");
        assert!(!mixed.count("/elsewhere").unwrap().never_seen);
    }

    #[test]
    fn a_filter_of_other_parameters_or_fill_is_refused() {
        let model = top_of(pages(0..10));
        let bytes = model.to_bytes();
        let mut reader = Reader {
            bytes: &bytes[HEADER_LEN..],
        };
        let counts = reader.payload("counts").unwrap().to_vec();
        let heavy = reader.payload("heavy").unwrap().to_vec();
        let config = reader.payload("config").unwrap().to_vec();
        let stage = reader.payload("stage").unwrap().to_vec();
        let rebuilt = |config: &[u8], stage: &[u8]| {
            let mut out = bytes[..HEADER_LEN].to_vec();
            for payload in [&counts[..], &heavy[..], config, stage] {
                out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                out.extend_from_slice(payload);
            }
            ReadModel::from_bytes(&out)
        };
        assert!(rebuilt(&config, &stage).is_ok());

        let mut other = config.clone();
        other[..8].copy_from_slice(&2048u64.to_le_bytes());
        let error = rebuilt(&other, &stage).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("an item filter is sized for 1024"),
            "{error}"
        );

        let empty = top_of(std::iter::empty());
        let empty_bytes = empty.to_bytes();
        let mut reader = Reader {
            bytes: &empty_bytes[HEADER_LEN..],
        };
        let _ = reader.payload("counts").unwrap();
        let _ = reader.payload("heavy").unwrap();
        let _ = reader.payload("config").unwrap();
        let empty_stage = reader.payload("stage").unwrap().to_vec();
        let error = rebuilt(&config, &empty_stage).unwrap_err();
        assert!(error.to_string().contains("item filter"), "{error}");
    }

    #[test]
    fn the_item_filter_is_dropped_rather_than_grown_past_its_bound() {
        let mut model = top_of(std::iter::empty());
        let mut dropped_at = None;
        for i in 0..20_000u32 {
            model.update(&format!("/page/{i}"));
            let Sketch::Top(top) = &model.sketch else {
                unreachable!()
            };
            if !top.has_item_filter() {
                dropped_at = Some(i + 1);
                break;
            }
        }
        let dropped_at = dropped_at.expect("a filter past its bound is dropped");
        assert!(
            (7_000..=8_000).contains(&dropped_at),
            "dropped after {dropped_at} distinct values"
        );
        // Without the filter, a count is the counters' bound again, and the bytes say so.
        assert!(!model.count("/elsewhere").unwrap().never_seen);
        let bytes = model.to_bytes();
        assert_eq!(bytes[3], 2);
        assert_eq!(ReadModel::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    }
}
