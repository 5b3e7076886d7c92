//! Dropping retried duplicates: an event that carries an `id` is folded once per tenant and id
//! within the dedup window.
//!
//! A client that retries a request after a timeout may send events that are already in the log;
//! ingest cannot tell, so the projector drops them. The ids folded from each partition are kept
//! in the store, written in the same atomic batch as the sketches they went into, so a crash
//! never separates "counted" from "remembered as counted". In front of that exact store sits an
//! in-memory Bloom filter per partition: "certainly new" (the common case) costs no store read,
//! and only a "maybe" is checked exactly.
//!
//! The window: an id is remembered while its receive time is within `dedup_window_ms` of the
//! newest receive time folded from its partition; older ids are deleted as batches are written.
//! A duplicate that arrives later than that is counted again. Events without an id are never
//! dropped. Retries land on the same partition because the partition is a function of the event
//! key; adding partitions to the topic moves keys and breaks that for ids received before.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use datasketches::bloom::{BloomFilter, BloomFilterBuilder};

use crate::store::{Store, StoreBatch, StoreError};

/// Ids a partition's Bloom filter is sized for at least; a filter is sized for twice the ids
/// stored when it is built, and rebuilt from the store (which holds only the ids still in the
/// window) once it holds more than it was sized for.
const MIN_BLOOM_CAPACITY: u64 = 1_000_000;
/// False positive rate of the Bloom filter: the share of new ids that cost a store read.
const BLOOM_FALSE_POSITIVE_RATE: f64 = 0.01;
/// Expired ids deleted per partition per batch, so one batch never grows without bound.
const MAX_EXPIRED_PER_BATCH: usize = 10_000;

/// The ids of every partition this node folds.
pub struct Dedup {
    window_ms: i64,
    partitions: HashMap<i32, PartitionIds>,
}

/// One partition's recent ids.
struct PartitionIds {
    /// Every id stored or pending (and possibly some expired ones, which only cost a read).
    bloom: BloomFilter,
    /// Ids inserted into `bloom` since it was built.
    inserted: u64,
    /// Ids `bloom` was sized for.
    capacity: u64,
    /// Ids (tenant, id) folded in the pending batch, not yet in the store, with their receive
    /// times.
    pending: HashMap<(String, String), i64>,
    /// Newest receive time folded from the partition, for expiry.
    newest_received_ms: i64,
}

impl Dedup {
    pub fn new(window_ms: i64) -> Dedup {
        Dedup {
            window_ms,
            partitions: HashMap::new(),
        }
    }

    /// True when `id` of `tenant` has not been folded from `partition` within the window; it
    /// then counts as folded from now on.
    pub fn first_sighting(
        &mut self,
        store: &Store,
        partition: i32,
        tenant: &str,
        id: &str,
        received_ms: i64,
    ) -> Result<bool, StoreError> {
        let ids = match self.partitions.entry(partition) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(PartitionIds::load(store, partition)?),
        };
        let bloom_key = (tenant, id);
        let owned = (tenant.to_owned(), id.to_owned());
        if ids.bloom.contains(&bloom_key) {
            if ids.pending.contains_key(&owned) || store.has_id(partition, tenant, id)? {
                metrics::counter!("projector_duplicates_dropped_total").increment(1);
                return Ok(false);
            }
            metrics::counter!("projector_dedup_bloom_false_positives_total").increment(1);
        }
        ids.bloom.insert(bloom_key);
        ids.inserted += 1;
        ids.pending.insert(owned, received_ms);
        ids.newest_received_ms = ids.newest_received_ms.max(received_ms);
        Ok(true)
    }

    /// Adds the pending ids, and the removal of ids that left the window, to `batch`.
    pub fn stage(&mut self, store: &Store, batch: &mut StoreBatch) -> Result<(), StoreError> {
        for (&partition, ids) in &mut self.partitions {
            for ((tenant, id), received_ms) in ids.pending.drain() {
                batch.put_id(partition, &tenant, &id, received_ms);
            }
            if ids.newest_received_ms == i64::MIN {
                continue;
            }
            let cutoff = ids.newest_received_ms.saturating_sub(self.window_ms);
            for expired in store.expired_ids(partition, cutoff, MAX_EXPIRED_PER_BATCH)? {
                batch.remove_id(&expired);
            }
        }
        // A filter past its capacity is dropped now and rebuilt from the store, which after
        // this batch holds exactly the ids in the window.
        self.partitions
            .retain(|_, ids| ids.inserted <= ids.capacity);
        Ok(())
    }

    /// Drops what is kept for `partitions` (their stored ids are the truth from now on).
    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }
}

impl PartitionIds {
    /// Builds the Bloom filter of a partition from its stored ids.
    fn load(store: &Store, partition: i32) -> Result<PartitionIds, StoreError> {
        let stored = store.ids(partition)?;
        let capacity = MIN_BLOOM_CAPACITY.max(2 * stored.len() as u64);
        let mut bloom = BloomFilterBuilder::with_accuracy(capacity, BLOOM_FALSE_POSITIVE_RATE)
            .build()
            .expect("Bloom parameters are valid");
        for (tenant, id) in &stored {
            bloom.insert((tenant.as_str(), id.as_str()));
        }
        Ok(PartitionIds {
            bloom,
            inserted: stored.len() as u64,
            capacity,
            pending: HashMap::new(),
            newest_received_ms: i64::MIN,
        })
    }
}
