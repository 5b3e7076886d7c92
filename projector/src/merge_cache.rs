//! Merged read models of a range of buckets, kept for the next read of the same range.
//!
//! A dashboard asks for the same 30 days over and over while events stream in. Each read merges
//! every bucket of the range (720 hourly sketches per partition), yet between two reads only the
//! buckets being written change, usually the current hour's. The cache keeps, per range, tenant
//! and set of partitions, the merge of the buckets that were quiet when it was made (the cold
//! part) and the list of those written lately (the hot part: by one of the last [`HOT_WRITES`]
//! writes, in the last [`HOT_FOR`]), which every read merges afresh from the store.
//!
//! It learns what changed from the store's own writes: each write of read models gets the next
//! number, and each bucket it touched is stamped with that number. An entry made
//! when the last write was number `n` stays good while no bucket of its range outside its hot
//! part carries a stamp above `n`; a stamp is put on after its write is applied, so an entry can
//! only be thrown away too early, never used too late.
//!
//! One read fills an entry at a time: others asking for the same range meanwhile wait for it
//! ([`Plan::Wait`]) rather than merging the same buckets side by side.
//!
//! Guarantee: a read through the cache merges the same stored read models a fresh merge of the
//! range would read then, only in another order: distinct counts, count-min counts and
//! membership come out the same; the frequent-items part of a top read model can differ the way
//! any two merge orders of it differ, within the bounds the answer states. Memory is bounded by
//! [`MergeCache::new`]'s limit, counted in serialized bytes of the cached models, least recently
//! used first out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use readmodel::ReadModel;

/// A bucket written by one of this many last writes is read afresh on every read rather than
/// cached. The projector writes a batch every second or every few thousand records, so a bucket
/// that still receives events stays hot, and one that received a late event goes cold soon.
pub const HOT_WRITES: u64 = 64;

/// ...and in this long: once the writes stop (a node that caught up with a quiet log), every
/// bucket goes cold.
pub const HOT_FOR: Duration = Duration::from_secs(10);

/// Most hot buckets a cached range may have; a range with more is merged without the cache.
pub const MAX_HOT_BUCKETS: usize = 16;

/// Stamps older than this many writes are forgotten, every this many writes, with the entries
/// made before them (which could no longer be checked): the cache remembers the buckets written
/// lately, not every bucket ever written.
pub const REMEMBERED_WRITES: u64 = 10_000;

/// The range a read asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeKey {
    pub projection: String,
    pub tenant: String,
    pub from: i64,
    pub to: i64,
    /// The partitions read, sorted.
    pub partitions: Vec<i32>,
}

/// What a read should do.
#[derive(Debug)]
pub enum Plan {
    /// Merge the hot buckets from the store into `cold`.
    Cached {
        cold: Option<Arc<ReadModel>>,
        hot: Vec<i64>,
    },
    /// Merge the range; keep the merge of every bucket but `hot`, made as of write `seq`, with
    /// [`MergeCache::insert`].
    Fill { seq: u64, hot: Vec<i64> },
    /// Merge the range without keeping anything: too many of its buckets are being written.
    Bypass,
    /// Another read is filling this range's entry: wait for it, then plan again.
    Wait,
}

/// The last write of a bucket: its number and when it was applied.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    seq: u64,
    at: Instant,
}

/// The last write of each bucket start of one projection and tenant.
type BucketStamps = BTreeMap<i64, Stamp>;

struct Entry {
    seq: u64,
    hot: Vec<i64>,
    cold: Option<Arc<ReadModel>>,
    bytes: usize,
}

/// See the module documentation.
pub struct MergeCache {
    limit_bytes: usize,
    /// Number of the last write of read models.
    seq: u64,
    /// The last write of each bucket, by projection and tenant.
    stamps: HashMap<Arc<str>, HashMap<Arc<str>, BucketStamps>>,
    /// The last write that replaced a projection's read models wholesale.
    replaced: HashMap<String, u64>,
    /// Bounded by bytes, not by count: see [`MergeCache::insert`].
    entries: LruCache<RangeKey, Entry>,
    /// Ranges a read is filling (it was handed [`Plan::Fill`]).
    filling: HashSet<RangeKey>,
    bytes: usize,
    hits: u64,
    fills: u64,
}

impl MergeCache {
    /// A cache holding at most `limit_bytes` of serialized read models; 0 keeps nothing.
    pub fn new(limit_bytes: usize) -> MergeCache {
        MergeCache {
            limit_bytes,
            seq: 0,
            stamps: HashMap::new(),
            replaced: HashMap::new(),
            entries: LruCache::unbounded(),
            filling: HashSet::new(),
            bytes: 0,
            hits: 0,
            fills: 0,
        }
    }

    /// Stamps the buckets a write changed; called once the write is applied.
    pub fn written<'k>(
        &mut self,
        buckets: impl IntoIterator<Item = (&'k Arc<str>, &'k Arc<str>, i64)>,
    ) {
        self.seq += 1;
        let stamp = Stamp {
            seq: self.seq,
            at: Instant::now(),
        };
        for (projection, tenant, bucket) in buckets {
            let tenants = match self.stamps.get_mut(projection) {
                Some(tenants) => tenants,
                None => self.stamps.entry(Arc::clone(projection)).or_default(),
            };
            let buckets = match tenants.get_mut(tenant) {
                Some(buckets) => buckets,
                None => tenants.entry(Arc::clone(tenant)).or_default(),
            };
            buckets.insert(bucket, stamp);
        }
        if self.seq % REMEMBERED_WRITES == 0 {
            self.forget_before(self.seq - REMEMBERED_WRITES);
        }
    }

    /// Drops the stamps of writes up to `seq` and the entries made before them.
    fn forget_before(&mut self, seq: u64) {
        for tenants in self.stamps.values_mut() {
            for buckets in tenants.values_mut() {
                buckets.retain(|_, stamp| stamp.seq > seq);
            }
            tenants.retain(|_, buckets| !buckets.is_empty());
        }
        self.stamps.retain(|_, tenants| !tenants.is_empty());
        let stale: Vec<RangeKey> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.seq < seq)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(gone) = self.entries.pop(&key) {
                self.bytes -= gone.bytes;
            }
        }
    }

    /// Voids every entry of `projection`; called once its read models were replaced.
    pub fn replaced(&mut self, projection: &str) {
        self.seq += 1;
        self.replaced.insert(projection.to_owned(), self.seq);
    }

    /// How to read `key`'s range now.
    pub fn plan(&mut self, key: &RangeKey) -> Plan {
        let stamps = self
            .stamps
            .get(key.projection.as_str())
            .and_then(|tenants| tenants.get(key.tenant.as_str()));
        let in_range = |from: i64, to: i64| {
            stamps
                .into_iter()
                .flat_map(move |buckets| buckets.range(from..to))
        };
        if let Some(entry) = self.entries.get_mut(key) {
            let replaced = self
                .replaced
                .get(&key.projection)
                .is_some_and(|&seq| seq > entry.seq);
            let changed = in_range(key.from, key.to)
                .any(|(bucket, stamp)| stamp.seq > entry.seq && !entry.hot.contains(bucket));
            if !replaced && !changed {
                self.hits += 1;
                return Plan::Cached {
                    cold: entry.cold.clone(),
                    hot: entry.hot.clone(),
                };
            }
            let gone = self.entries.pop(key).expect("entry just found");
            self.bytes -= gone.bytes;
        }
        if self.limit_bytes == 0 {
            return Plan::Bypass;
        }
        if self.filling.contains(key) {
            return Plan::Wait;
        }
        let now = Instant::now();
        let hot: Vec<i64> = in_range(key.from, key.to)
            .filter(|(_, stamp)| {
                stamp.seq + HOT_WRITES > self.seq && now.duration_since(stamp.at) < HOT_FOR
            })
            .map(|(&bucket, _)| bucket)
            .take(MAX_HOT_BUCKETS + 1)
            .collect();
        if hot.len() > MAX_HOT_BUCKETS {
            return Plan::Bypass;
        }
        self.filling.insert(key.clone());
        self.fills += 1;
        Plan::Fill { seq: self.seq, hot }
    }

    /// Gives up a fill handed out by [`MergeCache::plan`] without keeping anything (the merge
    /// failed), so that the reads waiting for it plan again.
    pub fn abandon(&mut self, key: &RangeKey) {
        self.filling.remove(key);
    }

    /// Keeps the merge `cold` of `key`'s range without its `hot` buckets, made as of write `seq`
    /// (from [`Plan::Fill`]), unless a write since then already voided it or it alone is
    /// larger than the limit.
    pub fn insert(&mut self, key: RangeKey, seq: u64, hot: Vec<i64>, cold: Option<ReadModel>) {
        self.filling.remove(&key);
        let bytes = cold.as_ref().map_or(0, |model| model.to_bytes().len()) + 64;
        if bytes > self.limit_bytes {
            return;
        }
        if let Some(old) = self.entries.pop(&key) {
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.limit_bytes {
            let Some((_, gone)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= gone.bytes;
        }
        self.bytes += bytes;
        let entry = Entry {
            seq,
            hot,
            cold: cold.map(Arc::new),
            bytes,
        };
        self.entries.put(key, entry);
    }

    /// Entries held and their bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    /// Reads answered from an entry so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Fills handed out so far.
    pub fn fills(&self) -> u64 {
        self.fills
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(from: i64, to: i64) -> RangeKey {
        RangeKey {
            projection: "p".into(),
            tenant: "t".into(),
            from,
            to,
            partitions: vec![0, 1],
        }
    }

    fn write(cache: &mut MergeCache, buckets: &[i64]) {
        let (projection, tenant): (Arc<str>, Arc<str>) = ("p".into(), "t".into());
        cache.written(buckets.iter().map(|&b| (&projection, &tenant, b)));
    }

    #[test]
    fn test_an_entry_holds_until_a_bucket_outside_its_hot_part_is_written() {
        let mut cache = MergeCache::new(1 << 20);
        write(&mut cache, &[0, 10, 20]);
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("a first read fills");
        };
        assert_eq!(hot, [0, 10, 20], "all written by the last write");
        cache.insert(key(0, 30), seq, hot, None);
        // Writes to the hot buckets and outside the range leave it good.
        write(&mut cache, &[20, 30, -10]);
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
        // Another range, or other partitions, are other entries.
        let mut other = key(0, 30);
        other.partitions = vec![0];
        assert!(matches!(cache.plan(&other), Plan::Fill { .. }));
        assert!(matches!(cache.plan(&key(0, 20)), Plan::Fill { .. }));
        // While one read fills a range, the others wait for it.
        assert!(matches!(cache.plan(&other), Plan::Wait));
        cache.abandon(&other);
        assert!(matches!(cache.plan(&other), Plan::Fill { .. }));
        // A write to another tenant or projection leaves it good.
        let (p, q, t): (Arc<str>, Arc<str>, Arc<str>) = ("p".into(), "q".into(), "u".into());
        cache.written([(&p, &t, 5), (&q, &t, 5)]);
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
        assert_eq!(cache.size().0, 1);
    }

    #[test]
    fn test_a_write_to_a_cold_bucket_or_a_replacement_voids_the_entry() {
        let mut cache = MergeCache::new(1 << 20);
        let Plan::Fill { hot, .. } = cache.plan(&key(0, 30)) else {
            panic!("a first read fills");
        };
        assert!(hot.is_empty(), "nothing written yet");
        cache.abandon(&key(0, 30));
        // A bucket last written before the last HOT_WRITES writes is cold again.
        write(&mut cache, &[20]);
        for _ in 0..HOT_WRITES {
            write(&mut cache, &[99]);
        }
        let Plan::Fill { hot, .. } = cache.plan(&key(0, 30)) else {
            panic!("no entry yet");
        };
        assert!(hot.is_empty(), "bucket 20 went cold: {hot:?}");
        cache.abandon(&key(0, 30));
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("no entry yet");
        };
        cache.insert(key(0, 30), seq, hot.clone(), None);
        write(&mut cache, &[10]);
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("bucket 10 was cold");
        };
        assert_eq!(hot, [10]);
        assert_eq!(cache.size().0, 0, "the void entry is dropped");
        cache.insert(key(0, 30), seq, hot, None);
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
        cache.replaced("p");
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Fill { .. }));
    }

    #[test]
    fn test_a_merge_made_before_a_write_is_not_kept_as_if_after_it() {
        // The read plans (as of write n), a write lands while it merges, then it inserts: the
        // entry carries n, so the write's stamp (n + 1) voids it at the next read.
        let mut cache = MergeCache::new(1 << 20);
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("a first read fills");
        };
        write(&mut cache, &[10]);
        cache.insert(key(0, 30), seq, hot, None);
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Fill { .. }));
    }

    #[test]
    fn test_old_stamps_are_forgotten_with_the_entries_that_needed_them() {
        let mut cache = MergeCache::new(1 << 20);
        write(&mut cache, &[10]);
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("a first read fills");
        };
        cache.insert(key(0, 30), seq, hot, None);
        for _ in 1..REMEMBERED_WRITES * 2 {
            write(&mut cache, &[99]);
        }
        assert_eq!(cache.size().0, 0, "the entry could not be checked any more");
        let buckets: usize = cache
            .stamps
            .values()
            .flat_map(|t| t.values())
            .map(BTreeMap::len)
            .sum();
        assert_eq!(buckets, 1, "only bucket 99's stamp is left");
        // An entry made after the horizon survives it.
        let Plan::Fill { seq, hot } = cache.plan(&key(0, 30)) else {
            panic!("no entry");
        };
        cache.insert(key(0, 30), seq, hot, None);
        for _ in 0..REMEMBERED_WRITES {
            write(&mut cache, &[99]);
        }
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
    }

    #[test]
    fn test_a_range_with_too_many_hot_buckets_is_not_cached() {
        let mut cache = MergeCache::new(1 << 20);
        let buckets: Vec<i64> = (0..=MAX_HOT_BUCKETS as i64).collect();
        write(&mut cache, &buckets);
        assert!(matches!(cache.plan(&key(0, 100)), Plan::Bypass));
        assert!(matches!(cache.plan(&key(0, 5)), Plan::Fill { .. }));
        assert!(matches!(MergeCache::new(0).plan(&key(0, 5)), Plan::Bypass));
    }

    #[test]
    fn test_the_least_recently_read_entry_goes_first_past_the_limit() {
        let mut cache = MergeCache::new(200);
        for from in [0, 1, 2] {
            let Plan::Fill { seq, hot } = cache.plan(&key(from, 30)) else {
                panic!("a first read fills");
            };
            cache.insert(key(from, 30), seq, hot, None);
        }
        // 64 bytes an empty entry: three fit in 200.
        assert_eq!(cache.size(), (3, 192));
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
        let Plan::Fill { seq, hot } = cache.plan(&key(3, 30)) else {
            panic!("a first read fills");
        };
        cache.insert(key(3, 30), seq, hot, None);
        assert_eq!(cache.size(), (3, 192));
        assert!(matches!(cache.plan(&key(0, 30)), Plan::Cached { .. }));
        assert!(
            matches!(cache.plan(&key(1, 30)), Plan::Fill { .. }),
            "1 went"
        );
    }
}
