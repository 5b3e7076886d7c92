//! The read-path cache: merged read models of recent windows, kept until the projectors fold
//! more records.
//!
//! Cache-aside: a range query first asks every node for its partition positions (a small
//! answer), which gives the *offsets version*, a digest of every node's partitions and next
//! offsets. The merged read model of (tenant, projection, window) is cached under that version,
//! so it is used only while no partition moved: any record folded anywhere changes the version,
//! and the entry is never read again (it ages out). The freshness of a cached answer comes from
//! the positions just read, so it is as current as an uncached one.
//!
//! Items never seen are cheap and certain: a cached membership filter answers "absent" for any
//! item, and a cached top sketch answers the count of any item, without asking the nodes again.
//!
//! Bounds: at most [`MAX_CACHE_BYTES`] of read-model bytes, least recently used first out.
//! Nothing is cached while some node does not answer (the version would not cover its
//! partitions). Hits and misses are counted in `query_api_cache_hits_total` and
//! `query_api_cache_misses_total`.

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use readmodel::{Kind, ReadModel};

use crate::nodes::{NodeAnswer, PartitionsBody};
use crate::params::TimeRange;

/// Most read-model bytes the cache holds.
pub const MAX_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most entries, whatever their size (an upper bound for the LRU's bookkeeping).
const MAX_CACHE_ENTRIES: usize = 4_096;

pub const CACHE_HITS_TOTAL: &str = "query_api_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "query_api_cache_misses_total";

/// What a cached window holds: the projection's kind and the merge of every node, or `None`
/// when no node held a bucket of the window.
#[derive(Debug)]
pub(crate) struct CachedModel {
    pub kind: Kind,
    pub read_model: Option<ReadModel>,
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    tenant: String,
    projection: String,
    from: Option<i64>,
    to: Option<i64>,
    version: u64,
}

/// The cache, shared by every request.
pub(crate) struct ModelCache {
    entries: Mutex<Entries>,
}

struct Entries {
    lru: LruCache<CacheKey, Arc<CachedModel>>,
    bytes: usize,
}

impl ModelCache {
    pub fn new() -> ModelCache {
        ModelCache {
            entries: Mutex::new(Entries {
                lru: LruCache::new(NonZeroUsize::new(MAX_CACHE_ENTRIES).expect("not zero")),
                bytes: 0,
            }),
        }
    }

    /// The cached model of a window at `version`, counting the hit or miss.
    pub fn get(
        &self,
        tenant: &str,
        projection: &str,
        range: TimeRange,
        version: u64,
    ) -> Option<Arc<CachedModel>> {
        let key = key(tenant, projection, range, version);
        let found = self
            .entries
            .lock()
            .expect("cache lock poisoned")
            .lru
            .get(&key)
            .cloned();
        match found {
            Some(_) => metrics::counter!(CACHE_HITS_TOTAL).increment(1),
            None => metrics::counter!(CACHE_MISSES_TOTAL).increment(1),
        }
        found
    }

    /// Caches the merged model of a window read at `version`.
    pub fn put(
        &self,
        tenant: &str,
        projection: &str,
        range: TimeRange,
        version: u64,
        kind: Kind,
        read_model: Option<ReadModel>,
    ) -> Arc<CachedModel> {
        let bytes = read_model.as_ref().map_or(0, |m| m.to_bytes().len()) + 128;
        let entry = Arc::new(CachedModel {
            kind,
            read_model,
            bytes,
        });
        if bytes > MAX_CACHE_BYTES / 4 {
            return entry;
        }
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        let key = key(tenant, projection, range, version);
        // `push` gives back the entry it replaced, or the one it dropped for the entry bound.
        if let Some((_, old)) = entries.lru.push(key, entry.clone()) {
            entries.bytes -= old.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > MAX_CACHE_BYTES {
            match entries.lru.pop_lru() {
                Some((_, evicted)) => entries.bytes -= evicted.bytes,
                None => break,
            }
        }
        entry
    }
}

fn key(tenant: &str, projection: &str, range: TimeRange, version: u64) -> CacheKey {
    CacheKey {
        tenant: tenant.to_owned(),
        projection: projection.to_owned(),
        from: range.from,
        to: range.to,
        version,
    }
}

/// The offsets version of the nodes' partition answers: `None` when some node did not answer,
/// since the version would then not cover every partition.
pub(crate) fn offsets_version(answers: &[NodeAnswer<PartitionsBody>]) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for answer in answers {
        let body = answer.result.as_ref().ok()?;
        answer.node.hash(&mut hasher);
        body.partition_count.hash(&mut hasher);
        for partition in &body.partitions {
            partition.partition.hash(&mut hasher);
            partition.next_offset.hash(&mut hasher);
            partition.lost_records.hash(&mut hasher);
            partition.stalled.is_some().hash(&mut hasher);
        }
    }
    Some(hasher.finish())
}
