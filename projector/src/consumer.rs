//! The consumer-group member: reads the event topic and folds it into the store in
//! micro-batches.
//!
//! Guarantee: a record's effect and the offset after it are stored in the same atomic write, and
//! every assignment resumes from the offsets in the store (Kafka's committed offsets are written
//! only as a hint for lag tools and never read back). So after any crash or rebalance each
//! record is folded exactly once into the stored state of this node. The guarantee ends where the
//! log does: records deleted by retention before they were folded are lost to the read models, and
//! with `auto.offset.reset=error` that shows up as a consumer error rather than a silent skip.
//!
//! Everything runs on one thread: librdkafka calls the rebalance callback from inside `poll`, so
//! the pending batch is never touched by two threads at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tracing::{debug, error, info, warn};

use crate::assignment::Assignment;
use crate::config::Config;
use crate::fold::{Folded, Folder};
use crate::store::{PartitionOffset, Store};

/// How long one `poll` waits for a record before the loop checks its timers and shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the consumer loop until `shutdown` is set or a store error stops it.
pub fn run(
    config: &Config,
    folder: Folder,
    store: Store,
    assignment: Assignment,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let context = ProjectorContext {
        topic: config.topic.clone(),
        store,
        folder: Mutex::new(folder),
        assignment: assignment.clone(),
        fatal: Mutex::new(None),
    };
    let consumer: BaseConsumer<ProjectorContext> = consumer_config(config)
        .create_with_context(context)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.topic])
        .with_context(|| format!("cannot subscribe to topic {}", config.topic))?;
    info!(topic = %config.topic, group = %config.group_id, "projector consuming");

    let batch_interval = Duration::from_millis(config.batch_interval_ms);
    let result = loop {
        if shutdown.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(reason) = consumer.context().fatal.lock().expect("poisoned").take() {
            break Err(anyhow::anyhow!(reason));
        }

        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if !assignment.contains(partition) {
                    // Left over from a partition revoked in this poll: its offset must not move.
                    metrics::counter!("projector_records_skipped_revoked_total").increment(1);
                    continue;
                }
                let mut folder = consumer.context().folder.lock().expect("poisoned");
                match folder.fold(partition, message.offset(), message.payload()) {
                    Ok(Folded::Applied) => {
                        metrics::counter!("projector_records_applied_total").increment(1);
                    }
                    Ok(Folded::Undecodable) => {
                        metrics::counter!("projector_records_undecodable_total").increment(1);
                        debug!(
                            partition,
                            offset = message.offset(),
                            "skipped undecodable record"
                        );
                    }
                    Err(e) => break Err(e).context("cannot read a sketch from the store"),
                }
            }
            Some(Err(e)) => {
                metrics::counter!("projector_consumer_errors_total").increment(1);
                warn!(error = %e, "kafka consumer error");
            }
            None => {}
        }

        let mut folder = consumer.context().folder.lock().expect("poisoned");
        let due = folder.pending_records() >= config.batch_max_records
            || folder
                .pending_age()
                .is_some_and(|age| age >= batch_interval);
        if due && let Err(e) = write_batch(&mut folder, &assignment, &consumer, &config.topic) {
            break Err(e);
        }
    };

    // Keep what was folded before stopping; the next start resumes after it.
    let mut folder = consumer.context().folder.lock().expect("poisoned");
    if result.is_ok() {
        write_batch(&mut folder, &assignment, &consumer, &config.topic)?;
    }
    drop(folder);
    consumer.unsubscribe();
    assignment.clear();
    info!("projector consumer stopped");
    result
}

/// The librdkafka settings of the projector's consumer.
fn consumer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", &config.node_name)
        // Offsets live in the store with the state; Kafka's are only a hint for lag tools.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Every assignment carries an explicit offset; a stored offset that fell below the log
        // start (retention) must be an error, never a silent jump.
        .set("auto.offset.reset", "error")
        // Incremental rebalances move only the partitions that change owner.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set_log_level(RDKafkaLogLevel::Warning);
    client
}

/// Writes the pending batch, then publishes the new positions to the assignment and, as a hint
/// for lag tools, to Kafka.
fn write_batch(
    folder: &mut Folder,
    assignment: &Assignment,
    consumer: &BaseConsumer<ProjectorContext>,
    topic: &str,
) -> anyhow::Result<()> {
    let records = folder.pending_records();
    let started = std::time::Instant::now();
    let positions = folder
        .write()
        .context("cannot write a batch to the store")?;
    if positions.is_empty() {
        return Ok(());
    }
    metrics::histogram!("projector_batch_write_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("projector_batches_written_total").increment(1);
    debug!(records, partitions = positions.len(), "batch written");

    let mut committed = TopicPartitionList::new();
    for (&partition, position) in &positions {
        assignment.advance(partition, position.next_offset, last_event(position));
        let _ =
            committed.add_partition_offset(topic, partition, Offset::Offset(position.next_offset));
    }
    if let Err(e) = consumer.commit(&committed, CommitMode::Async) {
        debug!(error = %e, "advisory offset commit failed");
    }
    Ok(())
}

fn last_event(position: &PartitionOffset) -> Option<i64> {
    (position.last_event_ms != i64::MIN).then_some(position.last_event_ms)
}

/// Consumer context: resumes assigned partitions from the store, writes or drops pending work
/// for revoked ones.
struct ProjectorContext {
    topic: String,
    store: Store,
    folder: Mutex<Folder>,
    assignment: Assignment,
    /// Set by a callback that cannot go on; the loop stops with it.
    fatal: Mutex<Option<String>>,
}

impl ClientContext for ProjectorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!("projector_kafka_errors_total").increment(1);
        warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ProjectorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.resume_from_store(tpl) {
                    error!(error = %e, "cannot read stored offsets; stopping");
                    *self.fatal.lock().expect("poisoned") = Some(e.to_string());
                    return;
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.release(tpl, consumer);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                error!(error = ?other, "rebalance failed; releasing every partition");
                let all = TopicPartitionList::from_topic_map(
                    &self
                        .assignment
                        .partitions()
                        .into_iter()
                        .map(|p| ((self.topic.clone(), p), Offset::Invalid))
                        .collect(),
                )
                .unwrap_or_default();
                self.release(&all, consumer);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            error!(error = %e, "applying a rebalance failed");
        }
    }
}

impl ProjectorContext {
    /// Sets the offset of every newly assigned partition to the one stored with its state.
    fn resume_from_store(&self, tpl: &mut TopicPartitionList) -> anyhow::Result<()> {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut folder = self.folder.lock().expect("poisoned");
        folder.forget(&partitions);
        for partition in partitions {
            let stored = self.store.offset(partition)?;
            let offset = match stored {
                Some(position) => Offset::Offset(position.next_offset),
                None => Offset::Beginning,
            };
            tpl.set_partition_offset(&self.topic, partition, offset)?;
            let next = stored.map_or(0, |p| p.next_offset);
            self.assignment
                .assign(partition, next, stored.as_ref().and_then(last_event));
            info!(
                partition,
                next_offset = next,
                "partition assigned; resuming from the store"
            );
        }
        Ok(())
    }

    /// Writes what was folded so far (every partition of it was still owned when folded), then
    /// stops serving the revoked partitions.
    fn release(&self, tpl: &TopicPartitionList, consumer: &BaseConsumer<Self>) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut folder = self.folder.lock().expect("poisoned");
        if let Err(e) = write_batch(&mut folder, &self.assignment, consumer, &self.topic) {
            // Dropping the batch keeps the store consistent: it still holds the state of the
            // last written batch and its offsets, and the records are read again.
            error!(error = %e, "cannot write the pending batch on revocation; dropping it");
        }
        folder.forget(&partitions);
        for &partition in &partitions {
            self.assignment.revoke(partition);
            info!(partition, "partition revoked");
        }
    }
}

/// Reads the high watermark of every assigned partition now and then, for lag.
pub fn watch_watermarks(
    config: &Config,
    assignment: Assignment,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set_log_level(RDKafkaLogLevel::Error)
        .create()
        .context("cannot create the Kafka client for watermarks")?;
    let interval = Duration::from_millis(config.watermark_interval_ms);
    while !shutdown.load(Ordering::Relaxed) {
        for partition in assignment.partitions() {
            match client.fetch_watermarks(&config.topic, partition, Duration::from_secs(2)) {
                Ok((_low, high)) => {
                    if let Some(lag) = assignment.set_high_watermark(partition, high) {
                        metrics::gauge!("projector_consumer_lag", "partition" => partition.to_string())
                            .set(lag as f64);
                    }
                }
                Err(e) => debug!(partition, error = %e, "cannot read the high watermark"),
            }
        }
        sleep_unless(&shutdown, interval);
    }
    Ok(())
}

/// Sleeps for `duration`, waking early when `shutdown` is set.
fn sleep_unless(shutdown: &AtomicBool, duration: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < duration && !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}
