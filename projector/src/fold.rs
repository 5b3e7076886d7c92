//! Folding records into read models, one micro-batch at a time.
//!
//! A [`Folder`] holds the sketches touched since the last write, the event ids folded (for
//! dropping retried duplicates) and the next offset of every partition it folded from.
//! [`Folder::write`] turns all of that into one atomic store batch, so a batch is either
//! entirely in the store (sketches, ids and offsets) or not at all.
//!
//! A record that cannot be folded (not a record of the supported format, or too large) is a
//! poison record: [`Folder::fold`] reports it and leaves its offset alone. The caller decides
//! when the partition may move past it ([`Folder::skip`]): after the record is safely in the
//! dead-letter topic.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use foldhash::HashMap;

use readmodel::{ProjectionFile, ReadModel};
use schemas::Record;

use crate::config::Config;
use crate::dedup::Dedup;
use crate::store::{ChunkDigests, ModelKey, PartitionOffset, Store, StoreBatch, StoreError};

/// Sketches kept in memory between batches before the cache is dropped and reloaded from the
/// store on demand.
const MAX_CACHED_MODELS: usize = 20_000;

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// Decoded and applied to every projection that reads it.
    Applied,
    /// Its event id was already folded within the dedup window; skipped.
    Duplicate,
    /// Cannot be folded; the offset did not move. The reason says why, for the dead letter.
    Poison { reason: String },
}

/// A read model in the folder's cache.
struct Cached {
    model: ReadModel,
    /// Digests of its chunks as stored; `None` when it is not in the store yet.
    stored: Option<ChunkDigests>,
    /// Changed since the last write (and listed in `Folder::dirty`).
    dirty: bool,
}

/// Which projections read a record, found once per record by its event type instead of by
/// comparing it with every projection's.
struct Readers {
    /// Indexes of the projections reading each event type, in file order.
    by_type: HashMap<String, Vec<usize>>,
    /// Indexes of the projections reading every event type.
    any_type: Vec<usize>,
    /// Every projection's name, shared by the read-model keys.
    names: Vec<Arc<str>>,
}

impl Readers {
    fn new(projections: &ProjectionFile) -> Readers {
        let mut readers = Readers {
            by_type: HashMap::default(),
            any_type: Vec::new(),
            names: Vec::new(),
        };
        for (index, projection) in projections.projections.iter().enumerate() {
            match &projection.event_type {
                Some(event_type) => readers
                    .by_type
                    .entry(event_type.clone())
                    .or_default()
                    .push(index),
                None => readers.any_type.push(index),
            }
            readers.names.push(Arc::from(projection.name.as_str()));
        }
        readers
    }
}

/// Pending state of one micro-batch, plus a cache of recently used sketches.
pub struct Folder {
    projections: Arc<ProjectionFile>,
    readers: Arc<Readers>,
    store: Store,
    dedup: Dedup,
    /// Largest record value folded; larger ones are poison.
    max_record_bytes: usize,
    /// Sketches read or changed recently, with the digests of their stored chunks; `dirty`
    /// lists those changed since the last write (each once; their `Cached::dirty` is set).
    models: HashMap<ModelKey, Cached>,
    dirty: Vec<ModelKey>,
    /// Position reached in each partition by the pending batch.
    positions: BTreeMap<i32, PartitionOffset>,
    /// Offset ranges lost to retention, to record with the batch.
    lost: Vec<(i32, i64, i64)>,
    /// Records folded since the last write.
    pending_records: usize,
    /// Membership filters already reported past their capacity.
    over_capacity: HashSet<ModelKey>,
    /// Grouped read models already reported at their `max_groups`.
    past_max_groups: HashSet<ModelKey>,
    /// When the first record of the pending batch was folded.
    pending_since: Option<Instant>,
}

impl Folder {
    /// A folder of `projections` into `store`, with the record and dedup bounds of `config`.
    pub fn new(projections: Arc<ProjectionFile>, store: Store, config: &Config) -> Folder {
        Folder {
            readers: Arc::new(Readers::new(&projections)),
            projections,
            store,
            dedup: Dedup::new(config.dedup_window_ms, config.dedup_max_ids),
            max_record_bytes: config.max_record_bytes,
            models: HashMap::default(),
            dirty: Vec::new(),
            positions: BTreeMap::new(),
            lost: Vec::new(),
            pending_records: 0,
            over_capacity: HashSet::new(),
            past_max_groups: HashSet::new(),
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
        let record = match payload {
            None => Err("record has no value".to_owned()),
            Some(bytes) if bytes.len() > self.max_record_bytes => Err(format!(
                "record value is {} bytes, more than max_record_bytes ({})",
                bytes.len(),
                self.max_record_bytes
            )),
            Some(bytes) => Record::from_bytes(bytes).map_err(|e| e.to_string()),
        };
        let record = match record {
            Ok(record) => record,
            Err(reason) => return Ok(Folded::Poison { reason }),
        };

        self.pending_since.get_or_insert_with(Instant::now);
        self.pending_records += 1;
        let mut position = self.position(partition)?;
        let first = match &record.id {
            Some(id) => self.dedup.first_sighting(
                &self.store,
                partition,
                &record.tenant,
                id,
                record.received_ms,
            )?,
            None => true,
        };
        if first {
            self.apply(partition, &record)?;
            position.last_event_ms = position.last_event_ms.max(record.time_ms);
        }
        position.next_offset = offset + 1;
        self.positions.insert(partition, position);
        Ok(if first {
            Folded::Applied
        } else {
            Folded::Duplicate
        })
    }

    /// Moves `partition` past the record at `offset` without folding it.
    pub fn skip(&mut self, partition: i32, offset: i64) -> Result<(), StoreError> {
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending_records += 1;
        let mut position = self.position(partition)?;
        position.next_offset = offset + 1;
        self.positions.insert(partition, position);
        Ok(())
    }

    /// Moves `partition` to `offset` when the offsets before it hold no record to fold: a
    /// transaction's commit or abort marker, or the records of an aborted transaction, which the
    /// consumer reads past without handing them over.
    pub fn pass_to(&mut self, partition: i32, offset: i64) -> Result<(), StoreError> {
        let mut position = self.position(partition)?;
        if offset > position.next_offset {
            self.pending_since.get_or_insert_with(Instant::now);
            position.next_offset = offset;
            self.positions.insert(partition, position);
        }
        Ok(())
    }

    /// Records that offsets `[from, to)` of `partition` were deleted before they were folded,
    /// and moves the partition to `to`.
    pub fn lose(&mut self, partition: i32, from: i64, to: i64) -> Result<(), StoreError> {
        self.pending_since.get_or_insert_with(Instant::now);
        let mut position = self.position(partition)?;
        position.next_offset = position.next_offset.max(to);
        self.positions.insert(partition, position);
        self.lost.push((partition, from, to));
        Ok(())
    }

    /// The offset `partition` will fold next.
    pub fn next_offset(&self, partition: i32) -> Result<i64, StoreError> {
        Ok(self.position(partition)?.next_offset)
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
            let Cached { model, stored, .. } =
                self.models.get_mut(key).expect("dirty models are cached");
            *stored = Some(batch.put_model(key, model, stored.as_deref()));
            if model.past_max_groups() > 0 && self.past_max_groups.insert(key.clone()) {
                // Said once per read model: values of groups past the cap are in the total
                // only.
                metrics::counter!("projector_group_cap_reached_total", "projection" => key.projection.clone())
                    .increment(1);
                tracing::warn!(
                    projection = %key.projection,
                    tenant = %key.tenant,
                    partition = key.partition,
                    bucket_start = key.bucket_start,
                    max_groups = model.max_groups(),
                    "read model reached max_groups; values of further groups count in the total only: raise max_groups or group by a field with fewer values"
                );
            }
            if model.over_capacity() && self.over_capacity.insert(key.clone()) {
                // Said once per filter: past its design capacity a Bloom filter grows a stage
                // and its false positive rate rises toward its bound.
                metrics::counter!("projector_membership_over_capacity_total", "projection" => key.projection.clone())
                    .increment(1);
                tracing::warn!(
                    projection = %key.projection,
                    tenant = %key.tenant,
                    partition = key.partition,
                    bucket_start = key.bucket_start,
                    "membership filter is past its expected_items; raise expected_items for this projection"
                );
            }
        }
        for (&partition, &position) in &self.positions {
            batch.put_offset(partition, position);
        }
        for &(partition, from, to) in &self.lost {
            batch.put_lost_range(partition, from, to);
        }
        self.dedup.stage(&mut batch);
        self.store.write(batch)?;

        for key in self.dirty.drain(..) {
            if let Some(cached) = self.models.get_mut(&key) {
                cached.dirty = false;
            }
        }
        self.lost.clear();
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
        self.lost
            .retain(|(partition, _, _)| !gone.contains(partition));
        self.dedup.forget(partitions);
        for partition in partitions {
            self.positions.remove(partition);
        }
    }

    fn apply(&mut self, partition: i32, record: &Record) -> Result<(), StoreError> {
        let projections = Arc::clone(&self.projections);
        let readers = Arc::clone(&self.readers);
        let typed = readers.by_type.get(record.event_type.as_str());
        let mut tenant: Option<Arc<str>> = None;
        for &index in typed.into_iter().flatten().chain(&readers.any_type) {
            let projection = &projections.projections[index];
            let Some(value) = projection.field_value(record) else {
                continue;
            };
            let group = projection.group_of(record);
            let key = ModelKey {
                projection: Arc::clone(&readers.names[index]),
                tenant: Arc::clone(tenant.get_or_insert_with(|| Arc::from(record.tenant.as_str()))),
                bucket_start: projection.bucket_start(record.time_ms),
                partition,
            };
            let cached = match self.models.entry(key) {
                Entry::Occupied(entry) => {
                    if !entry.get().dirty {
                        self.dirty.push(entry.key().clone());
                    }
                    entry.into_mut()
                }
                Entry::Vacant(entry) => {
                    let (model, stored) = match self.store.read_model_chunks(entry.key())? {
                        Some((model, digests)) => (model, Some(digests)),
                        None => (projection.new_read_model(), None),
                    };
                    self.dirty.push(entry.key().clone());
                    entry.insert(Cached {
                        model,
                        stored,
                        dirty: false,
                    })
                }
            };
            cached.dirty = true;
            cached.model.update_in(&value, group.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECTIONS: &str = "
[[projection]]
name = \"viewers\"
kind = \"distinct\"
field = \"key\"
event_type = \"view\"
bucket = \"1d\"

[[projection]]
name = \"everyone\"
kind = \"distinct\"
field = \"key\"
bucket = \"1d\"

[[projection]]
name = \"clickers\"
kind = \"distinct\"
field = \"key\"
event_type = \"click\"
bucket = \"1d\"
";

    fn record(n: usize, event_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": schemas::SCHEMA_VERSION,
            "tenant": "t",
            "type": event_type,
            "key": format!("user-{n}"),
            "time_ms": 1_000,
            "received_ms": 1_000,
        }))
        .unwrap()
    }

    #[test]
    fn test_each_projection_folds_its_event_type_and_untyped_ones_fold_all() {
        let (store, dir) = crate::store::temp_store("fold-test");
        let config = Config::from_toml(
            "brokers = \"127.0.0.1:9\"\ntopic = \"events\"\ngroup_id = \"g\"\n\
             store_path = \"unused\"\nprojections_file = \"unused\"\n\
             internal_listen = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let projections = Arc::new(ProjectionFile::from_toml(PROJECTIONS).unwrap());
        let mut folder = Folder::new(projections, store.clone(), &config);
        let types = ["view", "click", "view", "purchase", "view"];
        for (offset, event_type) in types.iter().enumerate() {
            let payload = record(offset, event_type);
            let folded = folder.fold(0, offset as i64, Some(&payload)).unwrap();
            assert_eq!(folded, Folded::Applied);
        }
        folder.write().unwrap();

        for (projection, expected) in [("viewers", 3), ("everyone", 5), ("clickers", 1)] {
            let key = ModelKey {
                projection: projection.into(),
                tenant: "t".into(),
                bucket_start: 0,
                partition: 0,
            };
            let (model, _) = store.read_model_chunks(&key).unwrap().expect("stored");
            assert_eq!(model.events(), expected, "{projection}");
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
