//! The read-model store: one sled tree holding, per partition, the sketches folded from that
//! partition and the next offset to read from it.
//!
//! Guarantee: [`Store::write`] applies a [`StoreBatch`] atomically, so the sketches and the offset
//! they were folded up to always move together. After a crash the store holds the state of some
//! completed batch; the records after its offsets are read again from Kafka and folded once.
//! sled flushes its log on its own timer (every 500 ms by default), so a crash may lose the last
//! batches, never half of one; they are rebuilt from the log. Only the projector process opens the
//! store.
//!
//! Key layout (all in the tree `state`):
//! - `o` + partition (u32, big endian) -> [`PartitionOffset`]
//! - `d` + projection name -> the projection's definition the state was built with
//! - `m` + projection + tenant (each u16-length-prefixed) + bucket start (i64, big endian with the
//!   sign bit flipped so that keys sort by time) + partition (u32, big endian) + chunk (u16, big
//!   endian) -> one chunk of at most [`CHUNK_BYTES`] of the read-model bytes. Values stay small
//!   because sled 0.34 keeps large values in blob files of their own, rewritten whole on every
//!   change; and a write stores only the chunks whose bytes changed, so a large, mostly unchanged
//!   sketch (a Bloom filter that saw a few new values) costs a few chunks per batch.
//! - `i` + partition + run sequence number (u64, big endian) + chunk (u16, big endian) -> the
//!   newest receive time of the run (i64 LE) followed by up to [`RUN_CHUNK_IDS`] id
//!   fingerprints (u64 LE): the ids folded from a partition in one batch, for dropping retried
//!   duplicates (see `dedup`)
//! - `l` + partition + first lost offset (sortable) -> end of the lost range (i64 LE): records
//!   deleted by retention before they were folded
//! - `f` -> the text of the projection file the state was built with, so that a node started
//!   with a changed file can keep serving the old definitions while it rebuilds the new ones

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use readmodel::{Projection, ProjectionFile, ReadModel};

use crate::merge_cache::{MergeCache, Plan, RangeKey};

/// Where a partition's folded state stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffset {
    /// The offset of the next record to fold.
    pub next_offset: i64,
    /// Event time of the last record folded, epoch ms; `i64::MIN` when none carried one.
    pub last_event_ms: i64,
}

/// The address of one stored sketch. The names are shared, not copied: the folder makes one
/// key per record and projection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    pub projection: Arc<str>,
    pub tenant: Arc<str>,
    pub bucket_start: i64,
    pub partition: i32,
}

/// Changes written together by [`Store::write`].
#[derive(Default)]
pub struct StoreBatch {
    batch: sled::Batch,
    empty: bool,
    /// The buckets whose read models the batch changes: projection, tenant, bucket start.
    changed: Vec<(Arc<str>, Arc<str>, i64)>,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the read-model store at {path}: {source}{hint}")]
    Open {
        path: String,
        source: sled::Error,
        /// What to check, after the error: empty when there is nothing to add.
        hint: &'static str,
    },
    #[error("the read-model store at {path} is damaged ({reason}); it can be rebuilt from the log")]
    Damaged { path: String, reason: String },
    #[error("read-model store i/o failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored bytes under {key} are unreadable: {reason}; rebuild with `projector replay`")]
    Corrupt { key: String, reason: String },
    #[error(
        "projection {name:?} changed since its state was built (stored: {stored}; now: {now}); \
         run `projector replay` to rebuild the read models, or restore the old definition"
    )]
    DefinitionChanged {
        name: String,
        stored: String,
        now: String,
    },
}

/// A handle on the store; cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    /// Merges of bucket ranges kept for repeated reads; told of every write of read models.
    merges: Arc<Mutex<MergeCache>>,
    /// Signalled when a read finishes or gives up filling a range of the merge cache.
    filled: Arc<Condvar>,
}

/// Most bytes of merged read models a store keeps for repeated range reads.
pub const MERGE_CACHE_BYTES: usize = 64 * 1024 * 1024;

const OFFSET_PREFIX: u8 = b'o';
const DEFINITION_PREFIX: u8 = b'd';
const MODEL_PREFIX: u8 = b'm';
const ID_PREFIX: u8 = b'i';
const LOST_PREFIX: u8 = b'l';
const PROJECTION_FILE_KEY: &[u8] = b"f";

/// Most bytes of one stored chunk of a read model.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Most id fingerprints in one stored chunk of an id run: a chunk stays within [`CHUNK_BYTES`].
pub const RUN_CHUNK_IDS: usize = (CHUNK_BYTES - 8) / 8;

/// The fingerprints of the event ids folded from a partition in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRun {
    /// Runs of a partition are numbered in the order they were written.
    pub seq: u64,
    /// The newest receive time among the run's ids, epoch ms.
    pub newest_ms: i64,
    pub fingerprints: Vec<u64>,
}

/// Digests of the stored chunks of one read model, in chunk order: what a later write compares
/// against to skip unchanged chunks.
pub type ChunkDigests = Vec<u64>;

impl Store {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`.
    ///
    /// A store whose files are damaged is reported as [`StoreError::Damaged`], including when
    /// sled panics while reading them, so the caller can rebuild it from the log.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let damaged = |reason: String| StoreError::Damaged {
            path: path.display().to_string(),
            reason,
        };
        let opened = std::panic::catch_unwind(|| {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .open()?;
            let state = db.open_tree("state")?;
            Ok::<_, sled::Error>((db, state))
        });
        match opened {
            Ok(Ok((db, state))) => Ok(Store {
                db,
                state,
                merges: Arc::new(Mutex::new(MergeCache::new(MERGE_CACHE_BYTES))),
                filled: Arc::new(Condvar::new()),
            }),
            Ok(Err(source @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => {
                Err(damaged(source.to_string()))
            }
            Ok(Err(source)) => {
                let hint = if path.exists() && !path.is_dir() {
                    " (store_path must name a directory, or nothing yet: it is created)"
                } else if source.to_string().contains("lock") {
                    " (is another projector using it? each node needs its own store_path)"
                } else {
                    ""
                };
                Err(StoreError::Open {
                    path: path.display().to_string(),
                    source,
                    hint,
                })
            }
            Err(panic) => Err(damaged(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "sled panicked while reading it".into()),
            )),
        }
    }

    /// Records the definition of every projection on first use and refuses to serve state that
    /// was built from a different definition of the same name.
    pub fn check_definitions(&self, projections: &ProjectionFile) -> Result<(), StoreError> {
        for projection in &projections.projections {
            let key = definition_key(&projection.name);
            let now = definition_of(projection);
            match self.state.get(&key)? {
                Some(stored) if stored.as_ref() != now.as_bytes() => {
                    return Err(StoreError::DefinitionChanged {
                        name: projection.name.clone(),
                        stored: String::from_utf8_lossy(&stored).into_owned(),
                        now,
                    });
                }
                Some(_) => {}
                None => {
                    self.state.insert(key, now.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Whether the stored state was built with exactly the definitions of `projections`: the
    /// same names, each with the same definition. A store that recorded none matches anything.
    pub fn definitions_match(&self, projections: &ProjectionFile) -> Result<bool, StoreError> {
        let mut stored = BTreeMap::new();
        for entry in self.state.scan_prefix([DEFINITION_PREFIX]) {
            let (key, value) = entry?;
            stored.insert(key[1..].to_vec(), value.to_vec());
        }
        if stored.is_empty() {
            return Ok(true);
        }
        let wanted: BTreeMap<Vec<u8>, Vec<u8>> = projections
            .projections
            .iter()
            .map(|p| (p.name.as_bytes().to_vec(), definition_of(p).into_bytes()))
            .collect();
        Ok(stored == wanted)
    }

    /// Records `projections` (parsed from `text`) as the definitions of this store's state,
    /// replacing any recorded before. For a store that holds no state yet.
    pub fn record_definitions(
        &self,
        projections: &ProjectionFile,
        text: &str,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for entry in self.state.scan_prefix([DEFINITION_PREFIX]) {
            batch.remove(entry?.0);
        }
        for projection in &projections.projections {
            batch.insert(
                definition_key(&projection.name),
                definition_of(projection).as_bytes(),
            );
        }
        batch.insert(PROJECTION_FILE_KEY, text.as_bytes());
        self.state.apply_batch(batch)?;
        Ok(())
    }

    /// The text of the projection file the state was built with, if it was recorded.
    pub fn projection_file_text(&self) -> Result<Option<String>, StoreError> {
        match self.state.get(PROJECTION_FILE_KEY)? {
            Some(bytes) => {
                String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt {
                        key: "projection file".into(),
                        reason: "not UTF-8".into(),
                    })
            }
            None => Ok(None),
        }
    }

    /// Whether any record was folded into this store.
    pub fn has_state(&self) -> Result<bool, StoreError> {
        Ok(self
            .state
            .scan_prefix([OFFSET_PREFIX])
            .next()
            .transpose()?
            .is_some())
    }

    /// The stored position of one partition, if anything was folded from it.
    pub fn offset(&self, partition: i32) -> Result<Option<PartitionOffset>, StoreError> {
        let key = offset_key(partition);
        match self.state.get(key)? {
            Some(bytes) => decode_offset(&bytes)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("offset of partition {partition}"),
                    reason: format!("expected 16 bytes, found {}", bytes.len()),
                }),
            None => Ok(None),
        }
    }

    /// Every stored partition position.
    pub fn offsets(&self) -> Result<BTreeMap<i32, PartitionOffset>, StoreError> {
        let mut offsets = BTreeMap::new();
        for entry in self.state.scan_prefix([OFFSET_PREFIX]) {
            let (key, value) = entry?;
            let partition = key
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(|b: [u8; 4]| u32::from_be_bytes(b) as i32);
            match (partition, decode_offset(&value)) {
                (Some(partition), Some(offset)) => {
                    offsets.insert(partition, offset);
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        key: format!("{key:?}"),
                        reason: "malformed partition offset entry".into(),
                    });
                }
            }
        }
        Ok(offsets)
    }

    /// One stored sketch.
    pub fn read_model(&self, key: &ModelKey) -> Result<Option<ReadModel>, StoreError> {
        Ok(self.read_model_chunks(key)?.map(|(model, _)| model))
    }

    /// One stored sketch with the digests of its stored chunks.
    pub fn read_model_chunks(
        &self,
        key: &ModelKey,
    ) -> Result<Option<(ReadModel, ChunkDigests)>, StoreError> {
        let prefix = encode_model_key(key);
        let mut bytes = Vec::new();
        let mut digests = Vec::new();
        for entry in self.state.scan_prefix(&prefix) {
            let (_, chunk) = entry?;
            digests.push(schemas::key_hash(&chunk));
            bytes.extend_from_slice(&chunk);
        }
        if digests.is_empty() {
            return Ok(None);
        }
        let model = ReadModel::from_bytes(&bytes).map_err(|e| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: e.to_string(),
        })?;
        Ok(Some((model, digests)))
    }

    /// Merges the sketches of `projection` for `tenant` whose bucket starts lie in `[from, to)`,
    /// over the partitions for which `include` is true. `None` when there are none.
    pub fn merged_range(
        &self,
        projection: &str,
        tenant: &str,
        from: i64,
        to: i64,
        include: impl Fn(i32) -> bool,
    ) -> Result<Option<ReadModel>, StoreError> {
        let mut merged = None;
        self.merge_range_into(&mut merged, projection, tenant, from, to, |partition, _| {
            include(partition)
        })?;
        Ok(merged)
    }

    /// [`Store::merged_range`] over `partitions`, through the merge cache (see
    /// [`crate::merge_cache`]): a range read again while only a few of its buckets are being
    /// written costs the merge of those few.
    pub fn merged_range_cached(
        &self,
        projection: &str,
        tenant: &str,
        from: i64,
        to: i64,
        partitions: &[i32],
    ) -> Result<Option<ReadModel>, StoreError> {
        let mut partitions = partitions.to_vec();
        partitions.sort_unstable();
        partitions.dedup();
        let key = RangeKey {
            projection: projection.to_owned(),
            tenant: tenant.to_owned(),
            from,
            to,
            partitions,
        };
        let included = |partition: i32| key.partitions.binary_search(&partition).is_ok();
        let plan = {
            let mut merges = self.merges();
            loop {
                match merges.plan(&key) {
                    Plan::Wait => {
                        merges = self
                            .filled
                            .wait(merges)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    plan => break plan,
                }
            }
        };
        let (result, hot) = match plan {
            Plan::Wait => unreachable!("waited for above"),
            Plan::Bypass => {
                metrics::counter!("projector_merge_cache_reads_total", "result" => "bypass")
                    .increment(1);
                return self.merged_range(projection, tenant, from, to, included);
            }
            Plan::Cached { cold, hot } => {
                metrics::counter!("projector_merge_cache_reads_total", "result" => "hit")
                    .increment(1);
                (cold.map(Arc::unwrap_or_clone), hot)
            }
            Plan::Fill { seq, hot } => {
                metrics::counter!("projector_merge_cache_reads_total", "result" => "miss")
                    .increment(1);
                // Whatever happens to this merge, the reads waiting for it must plan again.
                let filling = Filling {
                    store: self,
                    key: Some(&key),
                };
                let mut cold = None;
                self.merge_range_into(&mut cold, projection, tenant, from, to, |p, bucket| {
                    included(p) && !hot.contains(&bucket)
                })?;
                let result = cold.clone();
                let mut merges = self.merges();
                merges.insert(key.clone(), seq, hot.clone(), cold);
                filling.done();
                let (entries, bytes) = merges.size();
                drop(merges);
                metrics::gauge!("projector_merge_cache_entries").set(entries as f64);
                metrics::gauge!("projector_merge_cache_bytes").set(bytes as f64);
                (result, hot)
            }
        };
        let mut merged = result;
        for bucket in hot {
            self.merge_range_into(
                &mut merged,
                projection,
                tenant,
                bucket,
                bucket.saturating_add(1),
                |partition, _| included(partition),
            )?;
        }
        Ok(merged)
    }

    /// Merges into `merged` the sketches of `projection` for `tenant` whose bucket starts lie in
    /// `[from, to)` and whose partition and bucket start `include` accepts.
    fn merge_range_into(
        &self,
        merged: &mut Option<ReadModel>,
        projection: &str,
        tenant: &str,
        from: i64,
        to: i64,
        include: impl Fn(i32, i64) -> bool,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let prefix = model_prefix(projection, tenant);
        let mut start = prefix.clone();
        start.extend_from_slice(&sortable_i64(from));
        let mut end = prefix;
        end.extend_from_slice(&sortable_i64(to));
        for model in ModelChunks::new(self.state.range(start..end)) {
            let (partition, bucket, value) = model?;
            if !include(partition, bucket) {
                continue;
            }
            let corrupt = |e: readmodel::ReadModelError| StoreError::Corrupt {
                key: format!("{projection}/{tenant}/partition {partition}/bucket {bucket}"),
                reason: e.to_string(),
            };
            let model = ReadModel::from_bytes(&value).map_err(corrupt)?;
            match merged.as_mut() {
                Some(merged) => merged.merge(&model).map_err(corrupt)?,
                None => *merged = Some(model),
            }
        }
        Ok(())
    }

    fn merges(&self) -> MutexGuard<'_, MergeCache> {
        // The cache holds no invariant a panic elsewhere could have broken half-way.
        self.merges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every stored id run of a partition, oldest first.
    pub fn id_runs(&self, partition: i32) -> Result<Vec<IdRun>, StoreError> {
        let mut runs: Vec<IdRun> = Vec::new();
        for entry in self
            .state
            .scan_prefix(partition_prefix(ID_PREFIX, partition))
        {
            let (key, value) = entry?;
            let corrupt = || StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: "malformed id run chunk".into(),
            };
            let seq_bytes: [u8; 8] = key
                .get(5..13)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)?;
            let seq = u64::from_be_bytes(seq_bytes);
            let newest: [u8; 8] = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)?;
            let ids = value
                .get(8..)
                .filter(|ids| ids.len() % 8 == 0)
                .ok_or_else(corrupt)?;
            let fingerprints = ids
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            match runs.last_mut() {
                Some(run) if run.seq == seq => run.fingerprints.extend(fingerprints),
                _ => runs.push(IdRun {
                    seq,
                    newest_ms: i64::from_le_bytes(newest),
                    fingerprints: fingerprints.collect(),
                }),
            }
        }
        Ok(runs)
    }

    /// Records lost to retention in a partition, as half-open offset ranges.
    pub fn lost_ranges(&self, partition: i32) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut ranges = Vec::new();
        for entry in self
            .state
            .scan_prefix(partition_prefix(LOST_PREFIX, partition))
        {
            let (key, value) = entry?;
            let from = key
                .get(5..13)
                .and_then(|b| b.try_into().ok())
                .map(|b: [u8; 8]| (u64::from_be_bytes(b) ^ (1 << 63)) as i64);
            let to = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_le_bytes);
            match (from, to) {
                (Some(from), Some(to)) => ranges.push((from, to)),
                _ => {
                    return Err(StoreError::Corrupt {
                        key: format!("{key:?}"),
                        reason: "malformed lost-range entry".into(),
                    });
                }
            }
        }
        Ok(ranges)
    }

    /// Replaces the sketches of `projection` whose bucket starts at or after `from_bucket` by
    /// those `source` holds for it (from the same bucket on), and records `definition` for it,
    /// in one atomic write. Sketches of earlier buckets, and of other projections, stay.
    pub fn replace_projection(
        &self,
        projection: &Projection,
        from_bucket: i64,
        source: &Store,
    ) -> Result<usize, StoreError> {
        let prefix = projection_prefix(&projection.name);
        let mut batch = sled::Batch::default();
        for entry in self.state.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if model_key_bucket(&key).is_some_and(|bucket| bucket >= from_bucket) {
                batch.remove(key);
            }
        }
        let mut copied = 0;
        for entry in source.state.scan_prefix(&prefix) {
            let (key, value) = entry?;
            if model_key_bucket(&key).is_some_and(|bucket| bucket >= from_bucket) {
                batch.insert(key, value);
                copied += 1;
            }
        }
        batch.insert(
            definition_key(&projection.name),
            definition_of(projection).as_bytes(),
        );
        self.state.apply_batch(batch)?;
        self.merges().replaced(&projection.name);
        Ok(copied)
    }

    /// The recorded definition text of every projection, by name.
    pub fn definitions(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut definitions = BTreeMap::new();
        for entry in self.state.scan_prefix([DEFINITION_PREFIX]) {
            let (key, value) = entry?;
            definitions.insert(
                String::from_utf8_lossy(&key[1..]).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
        Ok(definitions)
    }

    /// Records `text` as the projection file the state was built with.
    pub fn record_projection_file(&self, text: &str) -> Result<(), StoreError> {
        self.state.insert(PROJECTION_FILE_KEY, text.as_bytes())?;
        Ok(())
    }

    /// Every entry except the id runs, in key order: the state that depends only on the log
    /// folded, whatever the batches were. Two stores folded from the same log compare equal
    /// here byte for byte; their id runs hold the same ids ([`Store::remembered_ids`]) split
    /// into different runs.
    pub fn state_entries(&self) -> Result<Vec<StoreEntry>, StoreError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(key, _)| key.first() != Some(&ID_PREFIX))
            .collect())
    }

    /// The fingerprints of the event ids remembered for each partition.
    pub fn remembered_ids(
        &self,
    ) -> Result<BTreeMap<i32, std::collections::BTreeSet<u64>>, StoreError> {
        let mut remembered = BTreeMap::new();
        for partition in self.offsets()?.into_keys() {
            let ids = self
                .id_runs(partition)?
                .into_iter()
                .flat_map(|run| run.fingerprints)
                .collect();
            remembered.insert(partition, ids);
        }
        Ok(remembered)
    }

    /// Every entry of the store, in key order: for comparing two stores byte for byte.
    pub fn entries(&self) -> Result<Vec<StoreEntry>, StoreError> {
        self.state
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// Applies a batch atomically.
    pub fn write(&self, batch: StoreBatch) -> Result<(), StoreError> {
        if !batch.empty {
            self.state.apply_batch(batch.batch)?;
        }
        if !batch.changed.is_empty() {
            // After the write: a read that misses this stamp has seen the write.
            self.merges().written(
                batch
                    .changed
                    .iter()
                    .map(|(projection, tenant, bucket)| (projection, tenant, *bucket)),
            );
        }
        Ok(())
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A fill of the merge cache in progress: dropped without [`Filling::done`] (the merge failed or
/// panicked), it gives the fill up; either way it wakes the reads waiting for it.
struct Filling<'s> {
    store: &'s Store,
    key: Option<&'s RangeKey>,
}

impl Filling<'_> {
    /// The entry was inserted (with the merge cache locked by the caller).
    fn done(mut self) {
        self.key = None;
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.store.merges().abandon(key);
        }
        self.store.filled.notify_all();
    }
}

impl StoreBatch {
    /// Stages a sketch, in chunks of at most [`CHUNK_BYTES`]. With the digests of the stored
    /// chunks (`stored`), only chunks that changed are written, and chunks past the new end are
    /// removed; without them every chunk is written. Returns the digests of the new chunks.
    pub fn put_model(
        &mut self,
        key: &ModelKey,
        model: &ReadModel,
        stored: Option<&[u64]>,
    ) -> ChunkDigests {
        let bytes = model.to_bytes();
        let base = encode_model_key(key);
        let mut digests = Vec::with_capacity(bytes.len().div_ceil(CHUNK_BYTES));
        for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let digest = schemas::key_hash(chunk);
            digests.push(digest);
            if stored.and_then(|s| s.get(index)) != Some(&digest) {
                self.batch.insert(chunk_key(&base, index), chunk);
                self.empty = false;
            }
        }
        let old_chunks = stored.map_or(0, <[u64]>::len);
        for index in digests.len()..old_chunks {
            self.batch.remove(chunk_key(&base, index));
            self.empty = false;
        }
        if stored != Some(&digests[..]) {
            self.changed.push((
                Arc::clone(&key.projection),
                Arc::clone(&key.tenant),
                key.bucket_start,
            ));
        }
        digests
    }

    /// Stages a partition position.
    pub fn put_offset(&mut self, partition: i32, offset: PartitionOffset) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&offset.next_offset.to_le_bytes());
        value[8..].copy_from_slice(&offset.last_event_ms.to_le_bytes());
        self.batch.insert(&offset_key(partition)[..], &value[..]);
        self.empty = false;
    }

    /// Stages a run of event ids of a partition.
    pub fn put_id_run(&mut self, partition: i32, run: &IdRun) {
        for (index, ids) in run.fingerprints.chunks(RUN_CHUNK_IDS).enumerate() {
            let mut value = Vec::with_capacity(8 + ids.len() * 8);
            value.extend_from_slice(&run.newest_ms.to_le_bytes());
            for id in ids {
                value.extend_from_slice(&id.to_le_bytes());
            }
            self.batch
                .insert(id_run_key(partition, run.seq, index), value);
            self.empty = false;
        }
    }

    /// Stages the removal of a run of event ids that left the dedup window.
    pub fn remove_id_run(&mut self, partition: i32, run: &IdRun) {
        for index in 0..run.fingerprints.len().div_ceil(RUN_CHUNK_IDS) {
            self.batch.remove(id_run_key(partition, run.seq, index));
            self.empty = false;
        }
    }

    /// Stages a range of offsets `[from, to)` of a partition lost to retention.
    pub fn put_lost_range(&mut self, partition: i32, from: i64, to: i64) {
        let mut key = partition_prefix(LOST_PREFIX, partition);
        key.extend_from_slice(&sortable_i64(from));
        self.batch.insert(key, &to.to_le_bytes()[..]);
        self.empty = false;
    }
}

/// Renames a damaged store directory to `<name>.damaged-<unix seconds>` beside it, and returns
/// the new path.
pub fn move_aside(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{seconds}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// One raw key and value of the store.
pub type StoreEntry = (Vec<u8>, Vec<u8>);

/// The version of a projection's definition: 16 hex digits of the XXH64 of its canonical text,
/// so equal definitions have equal versions on every node and across restarts.
pub fn definition_version(projection: &Projection) -> String {
    format!(
        "{:016x}",
        schemas::key_hash(definition_of(projection).as_bytes())
    )
}

/// The canonical text of a definition: what, if changed, makes stored state incompatible.
pub fn definition_text(projection: &Projection) -> String {
    definition_of(projection)
}

fn definition_of(projection: &Projection) -> String {
    let mut text = format!(
        "kind={:?} field={} event_type={:?} bucket_ms={} params={:?}",
        projection.kind,
        projection.field,
        projection.event_type,
        projection.bucket_ms,
        projection.params
    );
    // Ungrouped definitions keep the text they had before grouping existed.
    if let Some(group_by) = &projection.group_by {
        text.push_str(&format!(
            " group_by={} max_groups={}",
            group_by.field, group_by.max_groups
        ));
    }
    text
}

fn definition_key(name: &str) -> Vec<u8> {
    let mut key = vec![DEFINITION_PREFIX];
    key.extend_from_slice(name.as_bytes());
    key
}

fn offset_key(partition: i32) -> [u8; 5] {
    let mut key = [OFFSET_PREFIX, 0, 0, 0, 0];
    key[1..].copy_from_slice(&(partition as u32).to_be_bytes());
    key
}

fn decode_offset(bytes: &[u8]) -> Option<PartitionOffset> {
    let next_offset = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let last_event_ms = i64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16).then_some(PartitionOffset {
        next_offset,
        last_event_ms,
    })
}

fn partition_prefix(prefix: u8, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    key.push(prefix);
    key.extend_from_slice(&(partition as u32).to_be_bytes());
    key
}

fn id_run_key(partition: i32, seq: u64, chunk: usize) -> Vec<u8> {
    let mut key = partition_prefix(ID_PREFIX, partition);
    key.extend_from_slice(&seq.to_be_bytes());
    // A run holds one batch's ids: far fewer than 65536 chunks of 2047.
    key.extend_from_slice(&(chunk as u16).to_be_bytes());
    key
}

fn model_prefix(projection: &str, tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + projection.len() + tenant.len() + 12);
    key.push(MODEL_PREFIX);
    for part in [projection, tenant] {
        key.extend_from_slice(&(part.len() as u16).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The common start of every model key of `projection`.
fn projection_prefix(projection: &str) -> Vec<u8> {
    let mut key = vec![MODEL_PREFIX];
    key.extend_from_slice(&(projection.len() as u16).to_be_bytes());
    key.extend_from_slice(projection.as_bytes());
    key
}

/// The bucket start of a model chunk key: the 8 bytes before the partition and chunk index.
fn model_key_bucket(key: &[u8]) -> Option<i64> {
    let end = key.len().checked_sub(6)?;
    let bytes: [u8; 8] = key.get(end.checked_sub(8)?..end)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The key of chunk `index` of the model whose key is `base`.
fn chunk_key(base: &[u8], index: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(base.len() + 2);
    key.extend_from_slice(base);
    // A read model of more than 65536 chunks (1 GiB) cannot be built: sketches are bounded.
    key.extend_from_slice(&(index as u16).to_be_bytes());
    key
}

/// Consecutive model chunks put back together: each item is a partition, a bucket start and the
/// whole value of one read model, read from a key range of model chunk keys.
struct ModelChunks<I: Iterator> {
    entries: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> ModelChunks<I> {
    fn new(entries: I) -> ModelChunks<I> {
        ModelChunks {
            entries: entries.peekable(),
        }
    }
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> Iterator for ModelChunks<I> {
    type Item = Result<(i32, i64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, first) = match self.entries.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e.into())),
        };
        let (Some(base_len), Some(bucket)) = (key.len().checked_sub(6), model_key_bucket(&key))
        else {
            return Some(Err(StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: "model chunk key too short".into(),
            }));
        };
        let base = key[..base_len + 4].to_vec();
        let partition_bytes: [u8; 4] = base[base_len..].try_into().expect("4 bytes");
        let partition = u32::from_be_bytes(partition_bytes) as i32;
        let mut value = first.to_vec();
        while let Some(Ok((next, _))) = self.entries.peek() {
            if next.len() != base.len() + 2 || !next.starts_with(&base) {
                break;
            }
            match self.entries.next()? {
                Ok((_, chunk)) => value.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e.into())),
            }
        }
        Some(Ok((partition, bucket, value)))
    }
}

fn encode_model_key(key: &ModelKey) -> Vec<u8> {
    let mut bytes = model_prefix(&key.projection, &key.tenant);
    bytes.extend_from_slice(&sortable_i64(key.bucket_start));
    bytes.extend_from_slice(&(key.partition as u32).to_be_bytes());
    bytes
}

/// Big-endian bytes that sort like the signed value.
fn sortable_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// A store in a new folder under the system's temp dir, for unit tests; the test removes the
/// folder it is given back.
#[cfg(test)]
pub(crate) fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "projector-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    (Store::open(&dir, 1 << 20).unwrap(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages a fresh read model of `projection` holding `values` under the given key.
    fn put_new(
        batch: &mut StoreBatch,
        projection: &Projection,
        tenant: &str,
        bucket_start: i64,
        partition: i32,
        values: impl IntoIterator<Item = String>,
    ) {
        let mut model = projection.new_read_model();
        for value in values {
            model.update(&value);
        }
        let key = ModelKey {
            projection: projection.name.as_str().into(),
            tenant: tenant.into(),
            bucket_start,
            partition,
        };
        batch.put_model(&key, &model, None);
    }

    fn projections() -> ProjectionFile {
        ProjectionFile::from_toml(
            r#"
            [[projection]]
            name = "visitors"
            kind = "distinct"
            field = "key"
            bucket = "1h"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn test_large_models_are_chunked_and_rewrite_only_changed_chunks() {
        let (store, dir) = temp_store("store-test");
        let projection = ProjectionFile::from_toml(
            "[[projection]]\nname = \"seen\"\nkind = \"membership\"\nfield = \"key\"\n\
             bucket = \"1d\"\nexpected_items = 100000\n",
        )
        .unwrap()
        .projections
        .remove(0);
        let mut model = projection.new_read_model();
        model.update("a");
        let key = ModelKey {
            projection: "seen".into(),
            tenant: "t".into(),
            bucket_start: 0,
            partition: 1,
        };
        let mut batch = StoreBatch::default();
        let digests = batch.put_model(&key, &model, None);
        store.write(batch).unwrap();
        assert!(
            digests.len() > 4,
            "{} bytes in {} chunks",
            model.to_bytes().len(),
            digests.len()
        );
        let base = encode_model_key(&key);
        for entry in store.state.scan_prefix(&base) {
            assert!(entry.unwrap().1.len() <= CHUNK_BYTES);
        }

        let (read, stored) = store.read_model_chunks(&key).unwrap().unwrap();
        assert_eq!(read.to_bytes(), model.to_bytes());
        assert_eq!(stored, digests);

        // One more value sets a few bits (one per hash function, and the count in the header):
        // only the chunks holding them change.
        model.update("b");
        let mut batch = StoreBatch::default();
        let after = batch.put_model(&key, &model, Some(&stored));
        let changed = after.iter().zip(&stored).filter(|(a, b)| a != b).count();
        assert!(
            (1..digests.len()).contains(&changed),
            "{changed} of {} chunks changed",
            digests.len()
        );
        store.write(batch).unwrap();
        let read = store.read_model(&key).unwrap().unwrap();
        assert_eq!(read.to_bytes(), model.to_bytes());
        assert_eq!(
            store
                .merged_range("seen", "t", i64::MIN, i64::MAX, |_| true)
                .unwrap()
                .unwrap()
                .to_bytes(),
            model.to_bytes()
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_store_batch_writes_models_and_offsets_together() {
        let (store, dir) = temp_store("store-test");
        let projection = projections().projections.remove(0);
        let mut model = projection.new_read_model();
        model.update("a");
        model.update("b");
        let key = ModelKey {
            projection: "visitors".into(),
            tenant: "t".into(),
            bucket_start: 3_600_000,
            partition: 2,
        };
        let mut batch = StoreBatch::default();
        batch.put_model(&key, &model, None);
        batch.put_offset(
            2,
            PartitionOffset {
                next_offset: 17,
                last_event_ms: 3_600_001,
            },
        );
        store.write(batch).unwrap();

        let read = store.read_model(&key).unwrap().unwrap();
        assert_eq!(read.to_bytes(), model.to_bytes());
        assert_eq!(store.offset(2).unwrap().unwrap().next_offset, 17);
        assert_eq!(store.offset(3).unwrap(), None);
        assert_eq!(store.offsets().unwrap().len(), 1);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_store_merged_range_respects_time_and_partitions() {
        let (store, dir) = temp_store("store-test");
        let projection = projections().projections.remove(0);
        let mut batch = StoreBatch::default();
        // Buckets at -1h, 0h, 1h, 2h on partitions 0 and 1; one value per sketch.
        for (i, bucket) in [-3_600_000i64, 0, 3_600_000, 7_200_000].iter().enumerate() {
            for partition in 0..2 {
                let value = format!("v{i}-{partition}");
                put_new(&mut batch, &projection, "t", *bucket, partition, [value]);
            }
        }
        store.write(batch).unwrap();

        let all = store
            .merged_range("visitors", "t", i64::MIN, i64::MAX, |_| true)
            .unwrap()
            .unwrap();
        assert_eq!(all.events(), 8);
        let window = store
            .merged_range("visitors", "t", -3_600_000, 3_600_000, |_| true)
            .unwrap()
            .unwrap();
        assert_eq!(window.events(), 4);
        let one_partition = store
            .merged_range("visitors", "t", i64::MIN, i64::MAX, |p| p == 1)
            .unwrap()
            .unwrap();
        assert_eq!(one_partition.events(), 4);
        assert!(
            store
                .merged_range("visitors", "other", i64::MIN, i64::MAX, |_| true)
                .unwrap()
                .is_none()
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_cached_range_reads_equal_fresh_merges_while_buckets_are_written() {
        let (store, dir) = temp_store("merge-cache-test");
        let projection = projections().projections.remove(0);
        let hour = 3_600_000i64;
        // xorshift64: a fixed sequence of writes and reads.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let windows = [(0, 24 * hour), (12 * hour, 24 * hour), (0, 12 * hour)];
        let partition_sets: [&[i32]; 2] = [&[0, 1, 2], &[2, 0]];
        for step in 0..600 {
            // Mostly the last two hours, as a live stream writes; now and then a late event.
            let mut batch = StoreBatch::default();
            for _ in 0..next(3) {
                let hours = if next(8) == 0 { next(24) } else { 22 + next(2) };
                let key = ModelKey {
                    projection: "visitors".into(),
                    tenant: "t".into(),
                    bucket_start: hours as i64 * hour,
                    partition: next(3) as i32,
                };
                let (mut model, stored) = match store.read_model_chunks(&key).unwrap() {
                    Some((model, digests)) => (model, Some(digests)),
                    None => (projection.new_read_model(), None),
                };
                model.update(&format!("v{step}-{}", next(1_000)));
                batch.put_model(&key, &model, stored.as_deref());
            }
            store.write(batch).unwrap();
            let (from, to) = windows[next(3) as usize];
            let partitions = partition_sets[next(2) as usize];
            let cached = store
                .merged_range_cached("visitors", "t", from, to, partitions)
                .unwrap();
            let fresh = store
                .merged_range("visitors", "t", from, to, |p| partitions.contains(&p))
                .unwrap();
            assert_eq!(
                cached.map(|m| m.to_bytes()),
                fresh.map(|m| m.to_bytes()),
                "step {step}, window {from}..{to}, partitions {partitions:?}"
            );
        }
        let hits = store.merges().hits();
        assert!(hits > 100, "only {hits} of 600 reads came from the cache");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_reads_of_one_range_at_once_merge_it_once() {
        let (store, dir) = temp_store("merge-cache-once");
        let projection = projections().projections.remove(0);
        let mut batch = StoreBatch::default();
        for hour in 0..300i64 {
            for partition in 0..4 {
                let values = (0..20).map(|n| format!("v{hour}-{partition}-{n}"));
                put_new(
                    &mut batch,
                    &projection,
                    "t",
                    hour * 3_600_000,
                    partition,
                    values,
                );
            }
        }
        store.write(batch).unwrap();
        // Writes of another tenant until those buckets are no longer among the last writes.
        for n in 0..crate::merge_cache::HOT_WRITES {
            let mut batch = StoreBatch::default();
            put_new(
                &mut batch,
                &projection,
                "other",
                0,
                0,
                [format!("other-{n}")],
            );
            store.write(batch).unwrap();
        }
        let fresh = store
            .merged_range("visitors", "t", i64::MIN, i64::MAX, |_| true)
            .unwrap()
            .map(|m| m.to_bytes());
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    start.wait();
                    let cached = store
                        .merged_range_cached("visitors", "t", i64::MIN, i64::MAX, &[0, 1, 2, 3])
                        .unwrap();
                    assert_eq!(cached.map(|m| m.to_bytes()), fresh);
                });
            }
        });
        let merges = store.merges();
        assert_eq!((merges.fills(), merges.hits()), (1, 3));
        drop(merges);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_store_refuses_changed_definition() {
        let (store, dir) = temp_store("store-test");
        store.check_definitions(&projections()).unwrap();
        store.check_definitions(&projections()).unwrap();
        let changed = ProjectionFile::from_toml(
            r#"
            [[projection]]
            name = "visitors"
            kind = "distinct"
            field = "key"
            bucket = "1d"
            "#,
        )
        .unwrap();
        let err = store.check_definitions(&changed).unwrap_err().to_string();
        assert!(err.contains("projector replay"), "{err}");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_sortable_i64_orders_like_signed() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in values.windows(2) {
            assert!(sortable_i64(pair[0]) < sortable_i64(pair[1]));
        }
    }
}
