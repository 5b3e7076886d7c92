//! Rebuilding read models from the log while the node is stopped.
//!
//! A full replay reads each partition from its first retained record (or, with `from_ms`, from
//! the first record appended at or after that time, found with Kafka's offsets-for-times) up
//! to the high watermark seen when the replay starts, into a fresh store beside the live one,
//! then swaps the fresh store in. The live store is locked for the whole replay (a running node
//! holding it makes the replay refuse to start), and it is replaced only once the rebuild
//! completed, so a failed replay leaves the old state untouched. Records appended after the
//! replay started are folded by the node when it starts again, from the offsets the replay
//! stored.
//!
//! A replay of one projection (`projection`) rebuilds only that projection's sketches, up to
//! exactly the offsets the live store holds, and puts them into the live store in one write; the
//! other projections are not touched. With `from_ms` it rebuilds only the buckets starting at or
//! after the bucket holding that time, from the records appended since that bucket began; older
//! buckets stay as they are.
//!
//! The partitions are dealt out to several threads (one per core by default), each folding its
//! own with a consumer and a [`Folder`] of its own, since everything folded is kept per
//! partition.
//!
//! Nothing is hidden: records a full replay leaves out, because retention deleted them or
//! because they precede `from_ms`, are stored as lost ranges, so query answers count them in
//! `lost_records`; and where the log no longer reaches back as far as asked, the summary says
//! INCOMPLETE.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use readmodel::ProjectionFile;
use tracing::{info, warn};

use crate::config::Config;
use crate::consumer::{standalone_consumer, topic_partitions};
use crate::fold::{Folded, Folder};
use crate::store::{Store, StoreError};

/// Records per batch during a replay, at least.
const REPLAY_BATCH_RECORDS: usize = 50_000;

/// Give up when no record arrives for this long while partitions are still short of their
/// target.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What to rebuild.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Start from the first record appended at or after this time (epoch ms) instead of from
    /// the start of the log.
    pub from_ms: Option<i64>,
    /// Rebuild only this projection, into the live store.
    pub projection: Option<String>,
    /// Threads folding partitions side by side; by default one per core, never more than
    /// there are partitions to read.
    pub threads: Option<NonZeroUsize>,
}

/// What a replay did.
#[derive(Debug)]
pub struct ReplaySummary {
    pub partitions: usize,
    pub records: u64,
    pub undecodable: u64,
    /// Partitions where the log no longer reaches back as far as the replay was asked to
    /// start: (partition, first retained offset).
    pub truncated_partitions: Vec<(i32, i64)>,
    /// Records a full replay left out by starting at `from_ms`, over all partitions.
    pub left_out: i64,
    /// The one projection rebuilt, with the number of sketches written for it.
    pub projection: Option<(String, usize)>,
    pub elapsed: Duration,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {} records ({} undecodable, skipped) from {} partitions in {:.1}s",
            self.records,
            self.undecodable,
            self.partitions,
            self.elapsed.as_secs_f64()
        )?;
        if let Some((name, sketches)) = &self.projection {
            write!(
                f,
                " into projection {name} only ({sketches} sketches written)"
            )?;
        }
        if self.left_out > 0 {
            write!(
                f,
                "; {} earlier records left out by --from (reported as lost_records)",
                self.left_out
            )?;
        }
        if !self.truncated_partitions.is_empty() {
            write!(
                f,
                "; INCOMPLETE: the log no longer reaches back as far as asked in partitions {:?} \
                 (partition, first retained offset)",
                self.truncated_partitions
            )?;
        }
        Ok(())
    }
}

/// Rebuilds what `options` asks for from the log of `config.topic`.
pub fn replay(config: &Config, options: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let (projections, projections_text) = crate::read_projection_file(&config.projections_file)?;

    // Holding the live store proves no node is using it, and keeps one from starting. A damaged
    // one is moved aside: a full rebuild replaces it anyway.
    let live = match Store::open(&config.store_path, config.store_cache_bytes) {
        Ok(store) => Some(store),
        Err(StoreError::Damaged { reason, .. }) if options.projection.is_none() => {
            let aside = crate::store::move_aside(&config.store_path)?;
            warn!(moved_to = %aside.display(), error = %reason, "live store is damaged; moved aside");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let fresh_path = sibling(&config.store_path, "replay");
    if fresh_path.exists() {
        std::fs::remove_dir_all(&fresh_path)
            .with_context(|| format!("cannot remove {}", fresh_path.display()))?;
    }
    let fresh = Store::open(&fresh_path, config.store_cache_bytes)?;

    let consumer = standalone_consumer(config, "replay")?;
    let partitions = topic_partitions(&consumer, &config.topic)?;

    // What to fold, and where each partition starts and stops.
    let (folded, from_bucket, targets) = match &options.projection {
        None => (projections.clone(), None, None),
        Some(name) => {
            let live = live
                .as_ref()
                .context("no live store to rebuild a projection into")?;
            let projection = projections.get(name).with_context(|| {
                format!(
                    "no projection named {name:?} in {}",
                    config.projections_file.display()
                )
            })?;
            check_others_unchanged(live, &projections, name)?;
            let targets: BTreeMap<i32, i64> = live
                .offsets()?
                .into_iter()
                .map(|(partition, offset)| (partition, offset.next_offset))
                .collect();
            let from_bucket = options.from_ms.map(|ms| projection.bucket_start(ms));
            let only = ProjectionFile {
                projections: vec![projection.clone()],
            };
            (Arc::new(only), from_bucket, Some(targets))
        }
    };
    // A projection's buckets are rebuilt whole: start from the records of its first bucket.
    let start_ms = from_bucket.or(options.from_ms);
    let starts = start_offsets(&consumer, &config.topic, &partitions, start_ms)?;

    // A one-projection rebuild stops at the live store's offsets; past the end of the log (the
    // topic was recreated or truncated) it could never reach them.
    if let Some(targets) = &targets {
        let beyond: Vec<(i32, i64, i64)> = starts
            .iter()
            .filter_map(|(&partition, start)| {
                let target = targets.get(&partition).copied().unwrap_or(0);
                (target > start.high).then_some((partition, target, start.high))
            })
            .collect();
        if !beyond.is_empty() {
            bail!(
                "the live store stands past the end of the log in partitions {beyond:?} \
                 (partition, store offset, log end): the topic was recreated or truncated, so a \
                 rebuild of one projection cannot reach the store's offsets; run `projector \
                 replay` without --projection to rebuild every projection from the log as it is"
            );
        }
    }
    let replay_batch = config.batch_max_records.max(REPLAY_BATCH_RECORDS);
    let mut ranges = Vec::new();
    let mut truncated = Vec::new();
    let mut left_out = 0;
    for (&partition, start) in &starts {
        let end = match &targets {
            Some(targets) => targets.get(&partition).copied().unwrap_or(0),
            None => start.high,
        };
        if start.low > 0 && start.offset == start.low {
            truncated.push((partition, start.low));
        }
        // A full replay records what it leaves out as lost, so answers count it.
        let lost_before = (targets.is_none() && start.offset > 0).then_some(start.offset);
        if let Some(offset) = lost_before {
            left_out += offset - start.low;
        }
        ranges.push(PartitionRange {
            partition,
            start: start.offset,
            end,
            lost_before,
        });
    }
    let shares = split_into_shares(ranges, options.threads);
    info!(
        partitions = partitions.len(),
        threads = shares.len(),
        "replay started"
    );
    drop(consumer);

    // Each share is folded by a thread of its own, with its own consumer and folder: read
    // models, offsets and event ids are all kept per partition, so the threads share nothing
    // but the store, and each writes its partitions' batches atomically, as one thread would.
    let failed = AtomicBool::new(false);
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .iter()
            .map(|share| {
                let (folded, fresh, failed) = (folded.clone(), fresh.clone(), &failed);
                scope.spawn(move || {
                    let counted = fold_share(config, folded, fresh, share, replay_batch, failed);
                    if counted.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    counted
                })
            })
            .collect();
        let results: Vec<anyhow::Result<Counts>> = workers
            .into_iter()
            .map(|worker| worker.join().expect("a replay thread panicked"))
            .collect();
        // The error to report is the one that stopped the others, not their giving up.
        let (mut counts, mut abandoned) = (Vec::new(), None);
        for result in results {
            match result {
                Ok(counted) => counts.push(counted),
                Err(e) if e.is::<Abandoned>() => abandoned = Some(e),
                Err(e) => return Err(e),
            }
        }
        abandoned.map_or(Ok(counts), Err)
    })?;
    let records = counts.iter().map(|c| c.records).sum();
    let undecodable = counts.iter().map(|c| c.undecodable).sum();

    let mut summary = ReplaySummary {
        partitions: partitions.len(),
        records,
        undecodable,
        truncated_partitions: truncated,
        left_out,
        projection: None,
        elapsed: Duration::ZERO,
    };
    match &options.projection {
        Some(name) => {
            let live = live.expect("checked above");
            let projection = folded.projections[0].clone();
            let written =
                live.replace_projection(&projection, from_bucket.unwrap_or(i64::MIN), &fresh)?;
            if live.definitions_match(&projections)? {
                live.record_projection_file(&projections_text)?;
            }
            live.flush()?;
            drop(fresh);
            std::fs::remove_dir_all(&fresh_path)
                .with_context(|| format!("cannot remove {}", fresh_path.display()))?;
            summary.projection = Some((name.clone(), written));
        }
        None => {
            fresh.record_definitions(&projections, &projections_text)?;
            fresh.flush()?;
            drop(fresh);
            swap_in(config, live, &fresh_path)?;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Where one partition's replay starts.
/// What a replay reads of one partition: from `start` up to `end` (exclusive); offsets below
/// `lost_before` are recorded as lost.
struct PartitionRange {
    partition: i32,
    start: i64,
    end: i64,
    lost_before: Option<i64>,
}

impl PartitionRange {
    /// Offsets to read.
    fn len(&self) -> i64 {
        (self.end - self.start).max(0)
    }
}

/// Why a replay thread stopped early: another one failed.
#[derive(Debug, thiserror::Error)]
#[error("replay abandoned: another replay thread failed")]
struct Abandoned;

/// Records a replay thread read, and how many of them it could not decode.
struct Counts {
    records: u64,
    undecodable: u64,
}

/// Deals the partitions out to `threads` threads (by default one per core, never more than
/// there are partitions with records to read): the longest first, each to the thread with the
/// fewest offsets to read so far, so that busy partitions do not end up in one thread.
fn split_into_shares(
    mut ranges: Vec<PartitionRange>,
    threads: Option<NonZeroUsize>,
) -> Vec<Vec<PartitionRange>> {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let with_records = ranges.iter().filter(|r| r.end > r.start).count();
    let threads = threads
        .map_or(cores, NonZeroUsize::get)
        .min(with_records)
        .max(1);
    ranges.sort_by_key(|range| (std::cmp::Reverse(range.len()), range.partition));
    let mut shares: Vec<(i64, Vec<PartitionRange>)> =
        (0..threads).map(|_| (0, Vec::new())).collect();
    for range in ranges {
        let share = shares
            .iter_mut()
            .min_by_key(|(offsets, _)| *offsets)
            .expect("at least one thread");
        share.0 += range.len();
        share.1.push(range);
    }
    shares.into_iter().map(|(_, share)| share).collect()
}

/// Folds the partitions of `share` into `store`, in batches of `batch` records, with a consumer
/// of its own. Gives up, without writing its pending batch, once `failed` is set by another
/// thread.
fn fold_share(
    config: &Config,
    projections: Arc<ProjectionFile>,
    store: Store,
    share: &[PartitionRange],
    batch: usize,
    failed: &AtomicBool,
) -> anyhow::Result<Counts> {
    let consumer = standalone_consumer(config, "replay")?;
    let mut folder = Folder::new(projections, store, config);
    let mut remaining = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for range in share {
        if let Some(offset) = range.lost_before {
            folder.lose(range.partition, 0, offset)?;
        }
        if range.end > range.start {
            remaining.insert(range.partition, range.end);
            assignment.add_partition_offset(
                &config.topic,
                range.partition,
                Offset::Offset(range.start),
            )?;
        }
    }
    consumer.assign(&assignment)?;

    let mut counts = Counts {
        records: 0,
        undecodable: 0,
    };
    // Progress is checked only when a poll comes back empty or with a record past its target:
    // a clock read per record cost more than a twentieth of a replay.
    let mut progress = Progress::new();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(&end) = remaining.get(&partition) else {
                    // Past its target (a one-projection replay stops at the live offsets, and
                    // records may still be arriving): the other partitions must still move.
                    progress.check(&consumer, &mut folder, &mut remaining, counts.records)?;
                    continue;
                };
                // Poison records were dead-lettered by the live node; a rebuild only skips them.
                if let Folded::Poison { .. } =
                    folder.fold(partition, message.offset(), message.payload())?
                {
                    folder.skip(partition, message.offset())?;
                    counts.undecodable += 1;
                }
                counts.records += 1;
                if message.offset() + 1 >= end {
                    remaining.remove(&partition);
                }
                if folder.pending_records() >= batch {
                    if failed.load(Ordering::Relaxed) {
                        return Err(Abandoned.into());
                    }
                    folder.write()?;
                }
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => bail!(
                "records the replay was about to read were deleted (retention or delete-records) \
                 while it ran; run it again: it starts from what the log still holds and reports \
                 the rest as lost"
            ),
            Some(Err(e)) => bail!("kafka error during replay: {e}"),
            None if failed.load(Ordering::Relaxed) => return Err(Abandoned.into()),
            None => progress.check(&consumer, &mut folder, &mut remaining, counts.records)?,
        }
    }
    folder.write()?;
    Ok(counts)
}

/// Watches a replay thread's partitions that are short of their target.
struct Progress {
    checked: Instant,
    moved: Instant,
    records_then: u64,
}

impl Progress {
    /// How often positions are read while records do not come.
    const EVERY: Duration = Duration::from_millis(200);

    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            checked: now,
            moved: now,
            records_then: 0,
        }
    }

    /// At most every [`Progress::EVERY`]: ends the partitions whose consumer position reached
    /// their target, and fails once no record of `remaining`'s partitions was folded for
    /// [`STALL_TIMEOUT`]; `records` is how many have been folded so far.
    ///
    /// Offsets that hold no record to fold (a transaction's markers, the records of an aborted
    /// transaction) are never handed over, so a partition whose last offsets are such ends
    /// here, by its position, rather than by its last record.
    fn check(
        &mut self,
        consumer: &BaseConsumer,
        folder: &mut Folder,
        remaining: &mut BTreeMap<i32, i64>,
        records: u64,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        if now.duration_since(self.checked) < Self::EVERY {
            return Ok(());
        }
        self.checked = now;
        let positions = consumer
            .position()
            .context("cannot read the replay consumer's positions")?;
        for element in positions.elements() {
            let (partition, Offset::Offset(position)) = (element.partition(), element.offset())
            else {
                continue;
            };
            if let Some(&end) = remaining.get(&partition) {
                if position >= end {
                    folder.pass_to(partition, end)?;
                    remaining.remove(&partition);
                }
            }
        }
        if records != self.records_then {
            (self.moved, self.records_then) = (now, records);
        } else if !remaining.is_empty() && now.duration_since(self.moved) > STALL_TIMEOUT {
            bail!(
                "replay stalled: no record for {}s while partitions {remaining:?} (partition: \
                 target offset) were short of their target; is the broker reachable and does \
                 the log still hold them?",
                STALL_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }
}

struct Start {
    low: i64,
    high: i64,
    /// First offset to fold: the low watermark, or the first at or after the start time.
    offset: i64,
}

/// The watermarks of each partition and the offset its replay starts at: the first record
/// appended at or after `from_ms`, or the low watermark.
fn start_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    from_ms: Option<i64>,
) -> anyhow::Result<BTreeMap<i32, Start>> {
    let mut starts = BTreeMap::new();
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("cannot read the watermarks of partition {partition}"))?;
        starts.insert(
            partition,
            Start {
                low,
                high,
                offset: low,
            },
        );
    }
    if let Some(from_ms) = from_ms {
        let mut times = TopicPartitionList::new();
        for &partition in partitions {
            times.add_partition_offset(topic, partition, Offset::Offset(from_ms))?;
        }
        let found = consumer
            .offsets_for_times(times, Duration::from_secs(10))
            .context("cannot look up the offsets for the start time")?;
        for element in found.elements() {
            let start = starts
                .get_mut(&element.partition())
                .expect("asked for this partition");
            start.offset = match element.offset() {
                Offset::Offset(offset) => offset.clamp(start.low, start.high),
                // No record at or after the time: nothing to fold.
                _ => start.high,
            };
        }
    }
    Ok(starts)
}

/// Refuses a one-projection replay when other projections of the live store differ from the
/// file: their state would then belong to other definitions than the file says.
fn check_others_unchanged(
    live: &Store,
    projections: &ProjectionFile,
    name: &str,
) -> anyhow::Result<()> {
    let stored = live.definitions()?;
    let wanted: BTreeMap<String, String> = projections
        .projections
        .iter()
        .map(|p| (p.name.clone(), crate::store::definition_text(p)))
        .collect();
    let differing: Vec<&String> = stored
        .keys()
        .chain(wanted.keys())
        .filter(|other| other.as_str() != name && stored.get(*other) != wanted.get(*other))
        .collect();
    if !differing.is_empty() {
        bail!(
            "projections {differing:?} also differ between the live store and the projection file: \
             rebuild them all with a full `projector replay`"
        );
    }
    Ok(())
}

/// Swap: live -> old, fresh -> live, then drop old.
fn swap_in(
    config: &Config,
    live: Option<Store>,
    fresh_path: &std::path::Path,
) -> anyhow::Result<()> {
    let old_path = sibling(&config.store_path, "old");
    drop(live);
    if old_path.exists() {
        std::fs::remove_dir_all(&old_path)?;
    }
    if config.store_path.exists() {
        std::fs::rename(&config.store_path, &old_path)
            .with_context(|| format!("cannot move {} aside", config.store_path.display()))?;
    }
    std::fs::rename(fresh_path, &config.store_path).with_context(|| {
        format!(
            "cannot move the rebuilt store to {}",
            config.store_path.display()
        )
    })?;
    if old_path.exists() {
        std::fs::remove_dir_all(&old_path)?;
    }
    Ok(())
}

/// `path` with `.suffix` appended to its last component.
fn sibling(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, records: i64) -> PartitionRange {
        PartitionRange {
            partition,
            start: 100,
            end: 100 + records,
            lost_before: None,
        }
    }

    fn dealt(shares: &[Vec<PartitionRange>]) -> Vec<Vec<i32>> {
        shares
            .iter()
            .map(|share| share.iter().map(|r| r.partition).collect())
            .collect()
    }

    #[test]
    fn test_busy_partitions_are_dealt_to_different_threads() {
        // Records in partitions 0 and 2 only: round robin gave both to one thread.
        let ranges = vec![range(0, 600), range(1, 0), range(2, 600), range(3, 0)];
        let shares = split_into_shares(ranges, NonZeroUsize::new(2));
        assert_eq!(dealt(&shares), [vec![0, 1, 3], vec![2]]);

        let ranges = vec![range(0, 10), range(1, 500), range(2, 300), range(3, 250)];
        let shares = split_into_shares(ranges, NonZeroUsize::new(2));
        assert_eq!(dealt(&shares), [vec![1, 0], vec![2, 3]]);
    }

    #[test]
    fn test_no_more_threads_than_partitions_with_records() {
        let ranges = vec![range(0, 5), range(1, 0), range(2, 0)];
        let shares = split_into_shares(ranges, NonZeroUsize::new(8));
        assert_eq!(dealt(&shares), [vec![0, 1, 2]]);
        let shares = split_into_shares(vec![range(0, 0)], NonZeroUsize::new(3));
        assert_eq!(dealt(&shares), [vec![0]]);
    }
}
