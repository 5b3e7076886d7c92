//! Dropping retried duplicates: an event that carries an `id` is folded once per tenant and id
//! within the dedup window.
//!
//! A client that retries a request after a timeout may send events that are already in the log;
//! ingest cannot tell, so the projector drops them. Each partition keeps, in memory, an exact map
//! from the 64-bit fingerprint of every (tenant, id) folded within the window to the run it was
//! stored in. The ids of each batch are stored as one *run* (their fingerprints, packed into
//! chunks of at most `CHUNK_BYTES`) in the same atomic write as the sketches they went into, so a
//! crash never separates "counted" from "remembered as counted", and a restarted node rebuilds
//! the map from the stored runs.
//!
//! Why not one store entry per id: sled 0.34 copies a leaf node on every insert, so the two
//! entries per id an earlier design wrote (id, and an expiry index) took three quarters of a
//! replay's time, and a Bloom filter in front of them saved reads, not those writes. A run costs
//! a few entries per batch whatever its size, and an exact in-memory map needs no filter in front.
//!
//! Bounds, all documented to operators:
//! - The window: a run is dropped once its newest receive time is more than `dedup_window_ms`
//!   older than the newest receive time folded from its partition, so an id is remembered for
//!   at least the window (and at most one batch longer). A duplicate arriving later is counted
//!   again. Events without an id are never dropped.
//! - Memory: at most `dedup_max_ids` ids per partition are remembered (about 30 bytes each);
//!   past that the oldest runs are dropped early and counted in `projector_dedup_evicted_total`.
//! - Fingerprints: two different ids of a partition with the same 64-bit fingerprint would drop
//!   the second as a duplicate; with 10 million ids remembered that chance is about 5 in 10^13
//!   per event.
//!
//! Retries land on the same partition because the partition is a function of the event key;
//! adding partitions to the topic moves keys and breaks that for ids received before.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use foldhash::HashMap as FastMap;

use crate::store::{IdRun, Store, StoreBatch, StoreError};

/// Seed of the id fingerprint, distinct from the key hash's, so the two never correlate.
const FINGERPRINT_SEED: u64 = 0x6465_6475_7020_6964;

/// The ids of every partition this node folds.
pub struct Dedup {
    window_ms: i64,
    max_ids: usize,
    partitions: HashMap<i32, PartitionIds>,
}

/// One partition's recent ids.
struct PartitionIds {
    /// Fingerprint of every id remembered, with the sequence number of the run holding it (or
    /// of the pending run).
    seen: FastMap<u64, u64>,
    /// Stored runs, oldest first.
    runs: VecDeque<IdRun>,
    /// Fingerprints folded since the last write, and their newest receive time.
    pending: Vec<u64>,
    pending_newest_ms: i64,
    /// Sequence number the next run is stored under.
    next_seq: u64,
    /// Newest receive time folded from the partition, for expiry.
    newest_received_ms: i64,
}

impl Dedup {
    pub fn new(window_ms: i64, max_ids: usize) -> Dedup {
        Dedup {
            window_ms,
            max_ids,
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
        let fingerprint = fingerprint(tenant, id);
        match ids.seen.entry(fingerprint) {
            Entry::Occupied(_) => {
                metrics::counter!("projector_duplicates_dropped_total").increment(1);
                Ok(false)
            }
            Entry::Vacant(entry) => {
                entry.insert(ids.next_seq);
                ids.pending.push(fingerprint);
                ids.pending_newest_ms = ids.pending_newest_ms.max(received_ms);
                ids.newest_received_ms = ids.newest_received_ms.max(received_ms);
                Ok(true)
            }
        }
    }

    /// Adds the pending ids as one run per partition, and the removal of runs that left the
    /// window or the memory bound, to `batch`.
    pub fn stage(&mut self, batch: &mut StoreBatch) {
        for (&partition, ids) in &mut self.partitions {
            if !ids.pending.is_empty() {
                let run = IdRun {
                    seq: ids.next_seq,
                    newest_ms: ids.pending_newest_ms,
                    fingerprints: std::mem::take(&mut ids.pending),
                };
                batch.put_id_run(partition, &run);
                ids.runs.push_back(run);
                ids.next_seq += 1;
                ids.pending_newest_ms = i64::MIN;
            }
            let cutoff = ids.newest_received_ms.saturating_sub(self.window_ms);
            while let Some(oldest) = ids.runs.front() {
                let expired = oldest.newest_ms < cutoff;
                let over = ids.seen.len() > self.max_ids && ids.runs.len() > 1;
                if !expired && !over {
                    break;
                }
                let run = ids.runs.pop_front().expect("front exists");
                if !expired {
                    metrics::counter!("projector_dedup_evicted_total")
                        .increment(run.fingerprints.len() as u64);
                }
                for fingerprint in &run.fingerprints {
                    // A fingerprint seen again after its run expired belongs to a newer run.
                    if ids.seen.get(fingerprint) == Some(&run.seq) {
                        ids.seen.remove(fingerprint);
                    }
                }
                batch.remove_id_run(partition, &run);
            }
        }
        let remembered: usize = self.partitions.values().map(|ids| ids.seen.len()).sum();
        metrics::gauge!("projector_dedup_ids").set(remembered as f64);
    }

    /// Drops what is kept for `partitions` (their stored runs are the truth from now on).
    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }
}

impl PartitionIds {
    /// Rebuilds a partition's map from its stored runs.
    fn load(store: &Store, partition: i32) -> Result<PartitionIds, StoreError> {
        let runs: VecDeque<IdRun> = store.id_runs(partition)?.into();
        let mut seen = FastMap::with_capacity_and_hasher(
            runs.iter().map(|r| r.fingerprints.len()).sum(),
            Default::default(),
        );
        for run in &runs {
            for &fingerprint in &run.fingerprints {
                seen.insert(fingerprint, run.seq);
            }
        }
        Ok(PartitionIds {
            seen,
            next_seq: runs.back().map_or(0, |run| run.seq + 1),
            newest_received_ms: runs.iter().map(|r| r.newest_ms).max().unwrap_or(i64::MIN),
            runs,
            pending: Vec::new(),
            pending_newest_ms: i64::MIN,
        })
    }
}

/// The 64-bit fingerprint of an id of a tenant: XXH64 of `tenant`, a zero byte, and `id`.
fn fingerprint(tenant: &str, id: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(FINGERPRINT_SEED);
    hasher.update(tenant.as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_bytes());
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn write(dedup: &mut Dedup, store: &Store) {
        let mut batch = StoreBatch::default();
        dedup.stage(&mut batch);
        store.write(batch).unwrap();
    }

    #[test]
    fn test_an_id_is_folded_once_within_a_batch_across_batches_and_after_a_restart() {
        let (store, dir) = temp_store("dedup-once");
        let mut dedup = Dedup::new(60_000, 1_000);
        assert!(dedup.first_sighting(&store, 0, "t", "a", 1).unwrap());
        assert!(!dedup.first_sighting(&store, 0, "t", "a", 2).unwrap());
        // Same id, other tenant or other partition: not the same event.
        assert!(dedup.first_sighting(&store, 0, "u", "a", 2).unwrap());
        assert!(dedup.first_sighting(&store, 1, "t", "a", 2).unwrap());
        write(&mut dedup, &store);
        assert!(!dedup.first_sighting(&store, 0, "t", "a", 3).unwrap());

        let mut restarted = Dedup::new(60_000, 1_000);
        assert!(!restarted.first_sighting(&store, 0, "t", "a", 4).unwrap());
        assert!(!restarted.first_sighting(&store, 0, "u", "a", 4).unwrap());
        assert!(restarted.first_sighting(&store, 0, "t", "b", 4).unwrap());
        write(&mut restarted, &store);
        let runs = store.id_runs(0).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].seq, runs[0].seq + 1);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_runs_leave_after_the_window_or_past_the_memory_bound() {
        let (store, dir) = temp_store("dedup-window");
        let mut dedup = Dedup::new(1_000, 1_000);
        assert!(dedup.first_sighting(&store, 0, "t", "old", 0).unwrap());
        write(&mut dedup, &store);
        assert!(dedup.first_sighting(&store, 0, "t", "new", 5_000).unwrap());
        write(&mut dedup, &store);
        // The run of "old" ended more than the window before the newest receive time.
        assert_eq!(store.id_runs(0).unwrap().len(), 1);
        assert!(dedup.first_sighting(&store, 0, "t", "old", 5_001).unwrap());
        assert!(!dedup.first_sighting(&store, 0, "t", "new", 5_001).unwrap());

        let mut small = Dedup::new(i64::MAX, 2);
        for (n, id) in ["x", "y", "z"].into_iter().enumerate() {
            assert!(small.first_sighting(&store, 1, "t", id, n as i64).unwrap());
            write(&mut small, &store);
        }
        // Three ids, room for two: the oldest run went early.
        assert_eq!(store.id_runs(1).unwrap().len(), 2);
        assert!(small.first_sighting(&store, 1, "t", "x", 10).unwrap());
        assert!(!small.first_sighting(&store, 1, "t", "z", 10).unwrap());
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_a_large_run_is_stored_in_bounded_chunks() {
        let (store, dir) = temp_store("dedup-chunks");
        let mut dedup = Dedup::new(60_000, 100_000);
        for n in 0..5_000 {
            assert!(
                dedup
                    .first_sighting(&store, 0, "t", &format!("id-{n}"), n)
                    .unwrap()
            );
        }
        write(&mut dedup, &store);
        let runs = store.id_runs(0).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].fingerprints.len(), 5_000);
        assert_eq!(runs[0].newest_ms, 4_999);
        for (_, value) in store.entries().unwrap() {
            assert!(value.len() <= crate::store::CHUNK_BYTES);
        }
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
