//! Building the read models of a changed projection file beside the serving ones, while the
//! node keeps serving the old definitions.
//!
//! A [`Rebuild`] folds the whole log, every partition from offset 0, into a fresh store at
//! `<store_path>.next` with the new definitions, and follows the log until every partition is
//! within `rebuild_switch_lag` records of its high watermark. It then reports itself ready; the
//! node stops its serving consumer (which writes its pending batch), tells the rebuild to
//! [`Rebuild::finish`], which reads every partition up to the high watermark of that moment and
//! flushes, and swaps the stores ([`switch_stores`]). The node resumes from the offsets of the
//! new store. Queries are answered from the old store until the swap, and from the new one after
//! it; between the two, for as long as the consumer takes to rejoin its group, the partitions
//! are reported missing rather than answered from either.
//!
//! Where the log no longer starts at offset 0 in some partition (retention deleted its head),
//! the new definitions cannot be built from the whole log: the rebuild refuses, reports why, and
//! the node keeps serving the old definitions. `projector replay` rebuilds such a log knowingly.
//!
//! Guarantee: the serving store is never written by a rebuild, and is replaced only by a new
//! store whose every partition was folded from offset 0 up to a point at or past where the
//! serving consumer stopped; a switch interrupted by a crash is completed or undone at the next
//! start ([`recover_switch`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use readmodel::ProjectionFile;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::consumer::{standalone_consumer, topic_partitions};
use crate::fold::{Folded, Folder};
use crate::store::Store;

/// How long one poll waits before the loop checks its flags.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the high watermarks are read to measure the rebuild's lag.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one watermark or metadata read.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Records per batch at least: nobody reads the new store before the switch.
const REBUILD_BATCH_RECORDS: usize = 50_000;

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// Folding the log; some partition is further behind than `rebuild_switch_lag`.
    Building,
    /// Every partition is within `rebuild_switch_lag` of its high watermark: ready to switch.
    Ready,
    /// Reading up to the high watermarks of the switch.
    Finishing,
    /// The new store is complete, flushed and closed.
    Done,
    /// Gave up; `error` says why. The serving definitions stay.
    Failed,
}

/// What the internal endpoint reports about a rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildStatus {
    pub state: RebuildState,
    /// The projections being built, with their versions.
    pub projections: BTreeMap<String, String>,
    /// Records folded so far.
    pub records: u64,
    /// Per partition: high watermark minus the next offset of the rebuild, at the last check.
    pub lag: BTreeMap<i32, i64>,
    pub error: Option<String>,
}

/// A rebuild running on its own thread.
pub struct Rebuild {
    /// The projection file text being built.
    pub text: String,
    pub projections: Arc<ProjectionFile>,
    status: Arc<Mutex<RebuildStatus>>,
    cancel: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    path: PathBuf,
}

impl Rebuild {
    /// Starts building `projections` (parsed from `text`) into `<store_path>.next`.
    pub fn start(config: &Config, projections: Arc<ProjectionFile>, text: String) -> Rebuild {
        let path = next_path(&config.store_path);
        let status = Arc::new(Mutex::new(RebuildStatus {
            state: RebuildState::Building,
            projections: projections
                .projections
                .iter()
                .map(|p| (p.name.clone(), crate::store::definition_version(p)))
                .collect(),
            records: 0,
            lag: BTreeMap::new(),
            error: None,
        }));
        let cancel = Arc::new(AtomicBool::new(false));
        let finish = Arc::new(AtomicBool::new(false));
        let thread = {
            let (config, projections, text, path) = (
                config.clone(),
                projections.clone(),
                text.clone(),
                path.clone(),
            );
            let (status, cancel, finish) = (status.clone(), cancel.clone(), finish.clone());
            std::thread::Builder::new()
                .name("rebuild".into())
                .spawn(move || {
                    let result = build(
                        &config,
                        projections,
                        &text,
                        &path,
                        &status,
                        &cancel,
                        &finish,
                    );
                    let mut status = status.lock().expect("poisoned");
                    match &result {
                        Ok(()) if !cancel.load(Ordering::Relaxed) => {
                            status.state = RebuildState::Done;
                        }
                        Ok(()) => {}
                        Err(e) => {
                            status.state = RebuildState::Failed;
                            status.error = Some(format!("{e:#}"));
                        }
                    }
                    result
                })
                .expect("cannot start the rebuild thread")
        };
        info!(store = %path.display(), "rebuilding the read models of the changed projection file beside the serving ones");
        Rebuild {
            text,
            projections,
            status,
            cancel,
            finish,
            thread: Some(thread),
            path,
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> RebuildStatus {
        self.status.lock().expect("poisoned").clone()
    }

    /// A handle on the status that stays valid while the rebuild runs.
    pub fn status_handle(&self) -> Arc<Mutex<RebuildStatus>> {
        self.status.clone()
    }

    /// Asks the rebuild to read up to the current high watermarks and close its store, and
    /// waits for it. Call once the serving consumer stopped.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.finish.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the rebuild thread panicked"))??;
        Ok(self.path.clone())
    }

    /// Stops the rebuild and removes what it built.
    pub fn cancel(mut self) {
        self.stop_and_remove();
    }

    fn stop_and_remove(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if self.path.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            warn!(error = %e, path = %self.path.display(), "cannot remove the abandoned rebuild");
        }
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_and_remove();
        }
    }
}

/// The rebuild's loop: fold from offset 0, report lag, finish on request.
fn build(
    config: &Config,
    projections: Arc<ProjectionFile>,
    text: &str,
    path: &Path,
    status: &Mutex<RebuildStatus>,
    cancel: &AtomicBool,
    finish: &AtomicBool,
) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove the old rebuild at {}", path.display()))?;
    }
    let store = Store::open(path, config.store_cache_bytes)?;
    store.record_definitions(&projections, text)?;

    let consumer = standalone_consumer(config, "rebuild")?;
    let partitions = topic_partitions(&consumer, &config.topic)?;
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, _) = consumer
            .fetch_watermarks(&config.topic, partition, KAFKA_TIMEOUT)
            .with_context(|| format!("cannot read the watermarks of partition {partition}"))?;
        if low > 0 {
            bail!(
                "partition {partition} of {} starts at offset {low}: retention deleted the records \
                 before it, so the new definitions cannot be built from the whole log; keep the \
                 old projection file, or rebuild knowingly incomplete with `projector replay`",
                config.topic
            );
        }
        assignment.add_partition_offset(&config.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    // Watermarks are read through a client of their own: on the consumer's connection each read
    // would queue behind its fetch long-poll (up to fetch.wait.max.ms), and the reads every
    // LAG_INTERVAL would leave a quiet log folding about one record per round.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("{}-rebuild-watermarks", config.group_id),
        )
        .set_log_level(RDKafkaLogLevel::Warning)
        .create()
        .context("cannot create the Kafka client for the rebuild's watermarks")?;

    let batch_records = config.batch_max_records.max(REBUILD_BATCH_RECORDS);
    let mut folder = Folder::new(projections, store.clone(), config);
    let mut records = 0u64;
    let mut last_lag_check: Option<Instant> = None;
    // The high watermarks to reach once finishing.
    let mut targets: Option<BTreeMap<i32, i64>> = None;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        if targets.is_none() && finish.load(Ordering::Relaxed) {
            targets = Some(high_watermarks(&watermarks, &config.topic, &partitions)?);
            status.lock().expect("poisoned").state = RebuildState::Finishing;
        }
        if let Some(targets) = &targets {
            let mut reached = true;
            for (&partition, &high) in targets {
                if folder.next_offset(partition)? < high {
                    reached = false;
                    break;
                }
            }
            if reached {
                folder.write()?;
                store.flush()?;
                info!(records, "rebuild complete");
                return Ok(());
            }
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                // The serving node dead-lettered poison records; a rebuild only skips them.
                if let Folded::Poison { .. } =
                    folder.fold(partition, message.offset(), message.payload())?
                {
                    folder.skip(partition, message.offset())?;
                }
                records += 1;
                if folder.pending_records() >= batch_records {
                    folder.write()?;
                }
            }
            Some(Err(e)) => bail!("kafka error during the rebuild: {e}"),
            None => {
                // Quiet log: keep what was folded, so the lag measured below is real.
                if folder.pending_records() > 0 {
                    folder.write()?;
                }
            }
        }
        if targets.is_none() && last_lag_check.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
            last_lag_check = Some(Instant::now());
            let highs = high_watermarks(&watermarks, &config.topic, &partitions)?;
            let mut lag = BTreeMap::new();
            for (&partition, &high) in &highs {
                lag.insert(partition, (high - folder.next_offset(partition)?).max(0));
            }
            let ready = lag.values().all(|&l| l <= config.rebuild_switch_lag);
            let mut status = status.lock().expect("poisoned");
            status.records = records;
            status.lag = lag;
            status.state = if ready {
                RebuildState::Ready
            } else {
                RebuildState::Building
            };
        }
    }
}

fn high_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, i64>> {
    partitions
        .iter()
        .map(|&partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
                .with_context(|| format!("cannot read the watermarks of partition {partition}"))?;
            Ok((partition, high))
        })
        .collect()
}

/// `<store_path>.next`: where a rebuild builds.
pub fn next_path(store_path: &Path) -> PathBuf {
    sibling(store_path, "next")
}

/// `<store_path>.old`: where the replaced store waits for removal during a switch.
fn old_path(store_path: &Path) -> PathBuf {
    sibling(store_path, "old")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Replaces the store at `store_path` by the finished rebuild at `built`: the serving store is
/// renamed to `<store_path>.old`, the rebuild to `store_path`, and the old one removed. Handles
/// on the old store stay valid until dropped (their files are unlinked, not truncated).
pub fn switch_stores(store_path: &Path, built: &Path) -> anyhow::Result<()> {
    let old = old_path(store_path);
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove {}", old.display()))?;
    }
    std::fs::rename(store_path, &old)
        .with_context(|| format!("cannot move {} aside", store_path.display()))?;
    std::fs::rename(built, store_path)
        .with_context(|| format!("cannot move the rebuild to {}", store_path.display()))?;
    std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    Ok(())
}

/// Completes or undoes a switch that a crash interrupted, before the store is opened: with no
/// store at `store_path` but a replaced one at `.old`, the rename of the rebuild did not happen,
/// so the old store goes back (the rebuild starts again). A leftover `.old` beside a store is
/// removed, and so is an unfinished rebuild.
pub fn recover_switch(store_path: &Path) -> anyhow::Result<()> {
    let old = old_path(store_path);
    if !store_path.exists() && old.exists() {
        warn!(store = %store_path.display(), "a store switch was interrupted; restoring the serving store");
        std::fs::rename(&old, store_path)?;
    } else if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    let next = next_path(store_path);
    if next.exists() {
        std::fs::remove_dir_all(&next)?;
    }
    Ok(())
}
