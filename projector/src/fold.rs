//! Folding records into read models, one micro-batch at a time.
//!
//! A [`Folder`] holds the sketches touched since the last write and the next offset of every
//! partition it folded from. [`Folder::write`] turns all of that into one atomic store batch, so a
//! batch is either entirely in the store (sketches and offsets) or not at all.
//!
//! Records that cannot be decoded are counted and skipped: their offset still advances, so one
//! bad record never stalls its partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use readmodel::{ProjectionFile, ReadModel};
use schemas::Record;

use crate::store::{ModelKey, PartitionOffset, Store, StoreBatch, StoreError};

/// Sketches kept in memory between batches before the cache is dropped and reloaded from the
/// store on demand.
const MAX_CACHED_MODELS: usize = 20_000;

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// Decoded and applied to every projection that reads it.
    Applied,
    /// Not a record of the supported format; skipped.
    Undecodable,
}

/// Pending state of one micro-batch, plus a cache of recently used sketches.
pub struct Folder {
    projections: Arc<ProjectionFile>,
    store: Store,
    /// Sketches read or changed recently; `dirty` marks those to write.
    models: HashMap<ModelKey, ReadModel>,
    dirty: HashSet<ModelKey>,
    /// Position reached in each partition by the pending batch.
    positions: BTreeMap<i32, PartitionOffset>,
    /// Records folded since the last write.
    pending_records: usize,
    /// When the first record of the pending batch was folded.
    pending_since: Option<Instant>,
}

impl Folder {
    pub fn new(projections: Arc<ProjectionFile>, store: Store) -> Folder {
        Folder {
            projections,
            store,
            models: HashMap::new(),
            dirty: HashSet::new(),
            positions: BTreeMap::new(),
            pending_records: 0,
            pending_since: None,
        }
    }

    /// Folds the record at `offset` of `partition`.
    pub fn fold(
        &mut self,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) -> Result<Folded, StoreError> {
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending_records += 1;
        let last_event_ms = self.position(partition)?.last_event_ms;
        let record = payload.map(Record::from_bytes);
        let (outcome, last_event_ms) = match record {
            Some(Ok(record)) => {
                self.apply(partition, &record)?;
                (Folded::Applied, last_event_ms.max(record.time_ms))
            }
            Some(Err(_)) | None => (Folded::Undecodable, last_event_ms),
        };
        self.positions.insert(
            partition,
            PartitionOffset {
                next_offset: offset + 1,
                last_event_ms,
            },
        );
        Ok(outcome)
    }

    /// Records folded since the last write.
    pub fn pending_records(&self) -> usize {
        self.pending_records
    }

    /// How long the oldest pending record has waited.
    pub fn pending_age(&self) -> Option<std::time::Duration> {
        self.pending_since.map(|since| since.elapsed())
    }

    /// Writes the pending batch atomically and returns the positions it stored.
    pub fn write(&mut self) -> Result<BTreeMap<i32, PartitionOffset>, StoreError> {
        if self.positions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut batch = StoreBatch::default();
        for key in &self.dirty {
            batch.put_model(key, &self.models[key]);
        }
        for (&partition, &position) in &self.positions {
            batch.put_offset(partition, position);
        }
        self.store.write(batch)?;

        self.dirty.clear();
        self.pending_records = 0;
        self.pending_since = None;
        if self.models.len() > MAX_CACHED_MODELS {
            self.models.clear();
        }
        Ok(std::mem::take(&mut self.positions))
    }

    /// Drops everything pending and cached for `partitions`: their state in the store is the
    /// truth from now on. Used when partitions are assigned or revoked.
    pub fn forget(&mut self, partitions: &[i32]) {
        let gone: HashSet<i32> = partitions.iter().copied().collect();
        self.models.retain(|key, _| !gone.contains(&key.partition));
        self.dirty.retain(|key| !gone.contains(&key.partition));
        for partition in partitions {
            self.positions.remove(partition);
        }
    }

    fn apply(&mut self, partition: i32, record: &Record) -> Result<(), StoreError> {
        let projections = Arc::clone(&self.projections);
        for projection in &projections.projections {
            let Some(value) = projection.value_of(record) else {
                continue;
            };
            let key = ModelKey {
                projection: projection.name.clone(),
                tenant: record.tenant.clone(),
                bucket_start: projection.bucket_start(record.time_ms),
                partition,
            };
            if !self.models.contains_key(&key) {
                let model = match self.store.read_model(&key)? {
                    Some(model) => model,
                    None => projection.new_read_model(),
                };
                self.models.insert(key.clone(), model);
            }
            self.models
                .get_mut(&key)
                .expect("inserted above")
                .update(&value);
            self.dirty.insert(key);
        }
        Ok(())
    }

    /// The position of a partition: pending if it has one, else stored, else the start.
    fn position(&self, partition: i32) -> Result<PartitionOffset, StoreError> {
        if let Some(position) = self.positions.get(&partition) {
            return Ok(*position);
        }
        Ok(self.store.offset(partition)?.unwrap_or(PartitionOffset {
            next_offset: 0,
            last_event_ms: i64::MIN,
        }))
    }
}
