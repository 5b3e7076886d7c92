//! Rebuilding every projection from the start of the topic.
//!
//! The rebuild reads each partition from its first retained record up to the high watermark
//! seen when the replay starts, into a fresh store beside the live one, then swaps the fresh
//! store in. The live store is locked for the whole replay (a running node holding it makes the
//! replay refuse to start), and it is replaced only once the rebuild completed, so a failed
//! replay leaves the old state untouched. Records appended after the replay started are folded by
//! the node when it starts again, from the offsets the replay stored.
//!
//! Where the log no longer starts at offset 0 (retention deleted its head), the summary says so:
//! the rebuilt read models then cover only what the log still holds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Config;
use crate::fold::{Folded, Folder};
use crate::store::{Store, StoreError};

/// Records per batch during a replay, at least.
const REPLAY_BATCH_RECORDS: usize = 50_000;

/// Give up when no record arrives for this long while partitions are still short of their
/// target.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a replay did.
#[derive(Debug)]
pub struct ReplaySummary {
    pub partitions: usize,
    pub records: u64,
    pub undecodable: u64,
    /// Partitions whose first retained offset was above 0: their oldest records are gone.
    pub truncated_partitions: Vec<(i32, i64)>,
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
        if !self.truncated_partitions.is_empty() {
            write!(
                f,
                "; INCOMPLETE: the log no longer starts at offset 0 in partitions {:?} \
                 (partition, first retained offset)",
                self.truncated_partitions
            )?;
        }
        Ok(())
    }
}

/// Rebuilds every projection into fresh state and swaps it in place of the store at
/// `config.store_path`.
pub fn replay(config: &Config) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let (projections, projections_text) = crate::read_projection_file(&config.projections_file)?;

    // Holding the live store proves no node is using it, and keeps one from starting. A damaged
    // one is moved aside: the rebuild replaces it anyway.
    let live = match Store::open(&config.store_path, config.store_cache_bytes) {
        Ok(store) => Some(store),
        Err(StoreError::Damaged { reason, .. }) => {
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
    fresh.record_definitions(&projections, &projections_text)?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-replay", config.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create()
        .context("cannot create the Kafka consumer for replay")?;
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), Duration::from_secs(10))
        .context("cannot read topic metadata")?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == config.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {} does not exist", config.topic))?;

    // Target: the high watermark of each partition now.
    let mut remaining = BTreeMap::new();
    let mut truncated = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        let id = partition.id();
        let (low, high) = consumer
            .fetch_watermarks(&config.topic, id, Duration::from_secs(10))
            .with_context(|| format!("cannot read the watermarks of partition {id}"))?;
        if low > 0 {
            truncated.push((id, low));
        }
        if high > low {
            remaining.insert(id, high);
            assignment.add_partition_offset(&config.topic, id, Offset::Beginning)?;
        }
    }
    let partitions = topic.partitions().len();
    consumer.assign(&assignment)?;
    info!(partitions, to_read = ?remaining, "replay started");

    // Nobody reads the fresh store until the swap, so batches can be large: each write then
    // carries every touched sketch once for many more records.
    let replay_batch = config.batch_max_records.max(REPLAY_BATCH_RECORDS);
    let mut folder = Folder::new(
        projections,
        fresh.clone(),
        config.dedup_window_ms,
        config.max_record_bytes,
    );
    let (mut records, mut undecodable) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                // Poison records were dead-lettered by the live node; a rebuild only skips them.
                if let Folded::Poison { .. } =
                    folder.fold(partition, message.offset(), message.payload())?
                {
                    folder.skip(partition, message.offset())?;
                    undecodable += 1;
                }
                records += 1;
                if remaining
                    .get(&partition)
                    .is_some_and(|&high| message.offset() + 1 >= high)
                {
                    remaining.remove(&partition);
                }
                if folder.pending_records() >= replay_batch {
                    folder.write()?;
                }
            }
            Some(Err(e)) => bail!("kafka error during replay: {e}"),
            None if last_progress.elapsed() > STALL_TIMEOUT => {
                bail!(
                    "replay stalled: no record for 60s while partitions {remaining:?} were short of their target"
                );
            }
            None => {}
        }
    }
    folder.write()?;
    fresh.flush()?;
    drop(folder);
    drop(fresh);
    drop(consumer);

    // Swap: live -> old, fresh -> live, then drop old.
    let old_path = sibling(&config.store_path, "old");
    drop(live);
    if old_path.exists() {
        std::fs::remove_dir_all(&old_path)?;
    }
    if config.store_path.exists() {
        std::fs::rename(&config.store_path, &old_path)
            .with_context(|| format!("cannot move {} aside", config.store_path.display()))?;
    }
    std::fs::rename(&fresh_path, &config.store_path).with_context(|| {
        format!(
            "cannot move the rebuilt store to {}",
            config.store_path.display()
        )
    })?;
    if old_path.exists() {
        std::fs::remove_dir_all(&old_path)?;
    }

    Ok(ReplaySummary {
        partitions,
        records,
        undecodable,
        truncated_partitions: truncated,
        elapsed: started.elapsed(),
    })
}

/// `path` with `.suffix` appended to its last component.
fn sibling(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}
