//! The consumer-group member: reads the event topic and folds it into the store in
//! micro-batches.
//!
//! Guarantee: a record's effect and the offset after it are stored in the same atomic write, and
//! every assignment resumes from the offsets in the store (Kafka's committed offsets are written
//! only as a hint for lag tools and never read back). So after any crash or rebalance each
//! record is folded exactly once into the stored state of this node.
//!
//! Where the guarantee ends, and what is done instead of hiding it:
//! - Records deleted by retention before they were folded are lost to the read models. The
//!   consumer runs with `auto.offset.reset=error`, so this is detected (at assignment, against
//!   the partition's low watermark, and when the broker answers "offset out of range"), stored
//!   as a lost range, counted in `projector_records_lost_total` and reported with every answer.
//! - A record that cannot be folded (poison) goes to the dead-letter topic with the reason and
//!   its origin in headers, and the partition moves past it only once the broker acknowledged
//!   that write. If the write fails, the partition pauses and reports itself stalled, retrying
//!   every few seconds; it neither loops nor skips. Only the first attempt waits for the broker;
//!   retries run beside the loop, so the other partitions keep folding meanwhile.
//!
//! Everything runs on one thread: librdkafka calls the rebalance callback from inside `poll`, so
//! the pending batch is never touched by two threads at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    DeliveryFuture, FutureProducer, FutureRecord, Producer, future_producer::OwnedDeliveryResult,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use tracing::{debug, error, info, warn};

use crate::assignment::Assignment;
use crate::config::Config;
use crate::fold::{Folded, Folder};
use crate::store::{PartitionOffset, Store};

/// Bytes of a poison record's value kept in its dead letter; the rest is cut so that the dead
/// letter always fits the broker's message size limit.
const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;

/// How long one `poll` waits for a record before the loop checks its timers and shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a stalled partition retries its dead-letter write.
const STALL_RETRY: Duration = Duration::from_secs(5);
/// Bound on a watermark lookup made while handling a rebalance or an error.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

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
        beyond_end: Mutex::new(Vec::new()),
    };
    // Checked before the consumer joins its group, so a refusal exits at once: a node that
    // refused after subscribing was once seen still running 60 s later, its consumer closing
    // while its first assignment was served.
    let dead_letters = DeadLetters::new(config)?;
    let consumer: BaseConsumer<ProjectorContext> = consumer_config(config)
        .create_with_context(context)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.topic])
        .with_context(|| format!("cannot subscribe to topic {}", config.topic))?;
    info!(topic = %config.topic, group = %config.group_id, node = %config.node_name, "projector consuming");

    let batch_interval = Duration::from_millis(config.batch_interval_ms);
    let mut stalled: HashMap<i32, Poison> = HashMap::new();
    let result = loop {
        if shutdown.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(reason) = consumer.context().fatal.lock().expect("poisoned").take() {
            break Err(anyhow::anyhow!(reason));
        }
        stalled.retain(|&partition, _| assignment.contains(partition));
        if let Err(e) = retry_stalled(&consumer, &dead_letters, &mut stalled, &config.topic) {
            break Err(e);
        }
        pause_beyond_end(&consumer, &config.topic);

        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if !assignment.contains(partition) || stalled.contains_key(&partition) {
                    // Left over from a revoked partition, or behind a stalled record: its
                    // offset must not move.
                    continue;
                }
                let mut folder = consumer.context().folder.lock().expect("poisoned");
                let folded = folder.fold(partition, message.offset(), message.payload());
                match folded {
                    Ok(Folded::Applied) => {
                        metrics::counter!("projector_records_applied_total").increment(1);
                    }
                    Ok(Folded::Duplicate) => {}
                    Ok(Folded::Poison { reason }) => {
                        let poison = Poison {
                            partition,
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            payload: message.payload().map(<[u8]>::to_vec),
                            reason,
                            next_try: Instant::now(),
                            writing: None,
                        };
                        match dead_letters.send(&config.topic, &poison) {
                            Ok(()) => {
                                if let Err(e) = folder.skip(partition, poison.offset) {
                                    break Err(e).context("cannot read the store");
                                }
                            }
                            Err(e) => {
                                drop(folder);
                                stall(&consumer, &assignment, poison, &e, &mut stalled);
                            }
                        }
                    }
                    Err(e) => break Err(e).context("cannot read a sketch from the store"),
                }
            }
            Some(Err(e)) if is_out_of_range(&e) => {
                if let Err(e) = recover_lost_records(&consumer, &config.topic) {
                    break Err(e);
                }
            }
            Some(Err(e)) => {
                metrics::counter!("projector_consumer_errors_total").increment(1);
                // A fatal error (for example this node fenced by another with the same
                // node_name) means the partitions are no longer ours: stop serving them.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    break Err(anyhow::anyhow!(
                        "fatal kafka consumer error {code:?}: {reason} (is another node running \
                         with node_name {:?}? each node needs its own)",
                        config.node_name
                    ));
                }
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
        // Static membership: a node that restarts (or is killed and restarted) under the same
        // name takes its partitions back at once instead of waiting for a rebalance.
        .set("group.instance.id", &config.node_name)
        // How soon the partitions of a node that died move to the others.
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        // Offsets live in the store with the state; Kafka's are only a hint for lag tools.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Every assignment carries an explicit offset; a stored offset that fell below the log
        // start (retention) must be an error, never a silent jump.
        .set("auto.offset.reset", "error")
        // Incremental rebalances move only the partitions that change owner.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set_log_level(RDKafkaLogLevel::Warning);
    client
}

/// librdkafka stops fetching a partition whose local queue holds `queued.min.messages` and
/// fetches it again only after `fetch.queue.backoff.ms`, a second by default: a consumer that
/// drains its queue faster than that sits idle, which held replays to a third of their speed.
/// Every consumer of the projector sets this instead.
pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// A consumer for partitions it assigns itself (replay, rebuild): in no group, committing
/// nothing, and never resetting an offset silently. `role` names its group id and errors.
pub(crate) fn standalone_consumer(config: &Config, role: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-{role}", config.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set_log_level(RDKafkaLogLevel::Warning)
        .create()
        .with_context(|| format!("cannot create the Kafka consumer for the {role}"))
}

/// The partitions of `topic`; an error when it does not exist.
pub(crate) fn topic_partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("cannot read topic metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {topic} does not exist"))?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect())
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
    let started = Instant::now();
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

fn is_out_of_range(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
}

/// After "offset out of range": finds the partitions whose position fell below the log start,
/// records the lost ranges and restarts them at the log start.
fn recover_lost_records(
    consumer: &BaseConsumer<ProjectorContext>,
    topic: &str,
) -> anyhow::Result<()> {
    let context = consumer.context();
    for partition in context.assignment.partitions() {
        let mut folder = context.folder.lock().expect("poisoned");
        if let Some(low) = context.record_loss(consumer, &mut folder, partition)? {
            drop(folder);
            restart_fetch(consumer, topic, partition, low)
                .with_context(|| format!("cannot move partition {partition} to offset {low}"))?;
        }
    }
    Ok(())
}

/// Makes the consumer fetch `partition` from `offset` again. With `auto.offset.reset=error`
/// librdkafka stops fetching a partition whose offset is out of range and refuses to seek it
/// ("Local: Erroneous state"); taking it out of the local assignment and back in at `offset`
/// starts it again. The group's assignment does not change.
fn restart_fetch(
    consumer: &BaseConsumer<ProjectorContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.incremental_unassign(&partitions)?;
    consumer.incremental_assign(&partitions)?;
    Ok(())
}

/// A record that could not be folded, kept until the dead-letter topic has it.
struct Poison {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: String,
    /// When to write the dead letter again, while no write is under way.
    next_try: Instant,
    /// The retried dead-letter write, until the broker answers it.
    writing: Option<DeliveryFuture>,
}

/// Pauses the partitions found past the end of their log at assignment.
fn pause_beyond_end(consumer: &BaseConsumer<ProjectorContext>, topic: &str) {
    let partitions = std::mem::take(&mut *consumer.context().beyond_end.lock().expect("poisoned"));
    if partitions.is_empty() {
        return;
    }
    let mut paused = TopicPartitionList::new();
    for partition in partitions {
        let _ = paused.add_partition(topic, partition);
    }
    if let Err(e) = consumer.pause(&paused) {
        warn!(error = %e, "cannot pause partitions found past the end of their log");
    }
}

/// Stops a partition behind a poison record whose dead-letter write failed.
fn stall(
    consumer: &BaseConsumer<ProjectorContext>,
    assignment: &Assignment,
    mut poison: Poison,
    error: &anyhow::Error,
    stalled: &mut HashMap<i32, Poison>,
) {
    let partition = poison.partition;
    error!(partition, offset = poison.offset, error = %error, "cannot dead-letter a poison record; partition stalled");
    metrics::gauge!("projector_partition_stalled", "partition" => partition.to_string()).set(1.0);
    assignment.set_stalled(
        partition,
        Some(format!(
            "record at offset {} cannot be folded ({}) and the dead-letter write failed: {error}",
            poison.offset, poison.reason
        )),
    );
    let mut paused = TopicPartitionList::new();
    let _ = paused.add_partition(&consumer.context().topic, partition);
    if let Err(e) = consumer.pause(&paused) {
        warn!(partition, error = %e, "cannot pause a stalled partition; its records are dropped until it moves");
    }
    poison.next_try = Instant::now() + STALL_RETRY;
    stalled.insert(partition, poison);
}

/// Starts the dead-letter write of every stalled partition that is due and collects the
/// answers of those under way, without waiting for any; once a write is acknowledged the
/// partition moves past its poison record and resumes.
fn retry_stalled(
    consumer: &BaseConsumer<ProjectorContext>,
    dead_letters: &DeadLetters,
    stalled: &mut HashMap<i32, Poison>,
    topic: &str,
) -> anyhow::Result<()> {
    let mut delivered = Vec::new();
    for (&partition, poison) in stalled.iter_mut() {
        let answer = match poison.writing.take() {
            Some(mut writing) => match dead_letters.answer(poison, &mut writing) {
                Poll::Pending => {
                    poison.writing = Some(writing);
                    continue;
                }
                Poll::Ready(answer) => answer,
            },
            None if poison.next_try <= Instant::now() => match dead_letters.start(topic, poison) {
                Ok(writing) => {
                    poison.writing = Some(writing);
                    continue;
                }
                Err(e) => Err(e),
            },
            None => continue,
        };
        match answer {
            Ok(()) => delivered.push(partition),
            Err(e) => {
                debug!(partition, error = %e, "dead-letter write still failing");
                poison.next_try = Instant::now() + STALL_RETRY;
            }
        }
    }

    for partition in delivered {
        let poison = stalled.remove(&partition).expect("collected above");
        let context = consumer.context();
        context
            .folder
            .lock()
            .expect("poisoned")
            .skip(partition, poison.offset)?;
        consumer
            .seek(
                topic,
                partition,
                Offset::Offset(poison.offset + 1),
                WATERMARK_TIMEOUT,
            )
            .with_context(|| format!("cannot move partition {partition} past its poison record"))?;
        let mut resumed = TopicPartitionList::new();
        let _ = resumed.add_partition(topic, partition);
        consumer.resume(&resumed)?;
        context.assignment.set_stalled(partition, None);
        metrics::gauge!("projector_partition_stalled", "partition" => partition.to_string())
            .set(0.0);
        info!(
            partition,
            offset = poison.offset,
            "poison record dead-lettered; partition moving again"
        );
    }
    Ok(())
}

/// Writes poison records to the dead-letter topic and waits for the broker's acknowledgement.
struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    runtime: tokio::runtime::Handle,
}

impl DeadLetters {
    fn new(config: &Config) -> anyhow::Result<DeadLetters> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            // A dead letter is the only copy of why a record was skipped: every replica.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // A failed write stalls the partition, so give up within the configured bound.
            .set(
                "message.timeout.ms",
                config.dead_letter_timeout_ms.to_string(),
            )
            // Never create the topic by accident under a misspelt name.
            .set("allow.auto.create.topics", "false")
            .create::<FutureProducer>()
            .context("cannot create the dead-letter producer")?;
        let topic = config.dead_letter_topic();
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .context("cannot read the dead-letter topic's metadata")?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            anyhow::bail!(
                "dead-letter topic {topic} does not exist: create it (deploy/kafka.sh \
                 create-topic {topic} 1) or set dead_letter_topic"
            );
        }
        Ok(DeadLetters {
            producer,
            topic,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Sends one poison record and waits for the broker's answer.
    fn send(&self, origin_topic: &str, poison: &Poison) -> anyhow::Result<()> {
        let writing = self.start(origin_topic, poison)?;
        let answer = self.runtime.block_on(writing);
        self.settle(poison, answer.ok())
    }

    /// The broker's answer to a write begun by [`DeadLetters::start`], if it came.
    fn answer(&self, poison: &Poison, writing: &mut DeliveryFuture) -> Poll<anyhow::Result<()>> {
        // Asked again on the loop's next turn, so nothing needs waking.
        let mut context = std::task::Context::from_waker(Waker::noop());
        Pin::new(writing)
            .poll(&mut context)
            .map(|answer| self.settle(poison, answer.ok()))
    }

    /// Queues one poison record, with its reason and origin in headers, for the dead-letter
    /// topic.
    fn start(&self, origin_topic: &str, poison: &Poison) -> anyhow::Result<DeliveryFuture> {
        let partition = poison.partition.to_string();
        let offset = poison.offset.to_string();
        let size = poison.payload.as_ref().map_or(0, Vec::len).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dead-letter-reason",
                value: Some(poison.reason.as_bytes()),
            })
            .insert(Header {
                key: "origin-topic",
                value: Some(origin_topic.as_bytes()),
            })
            .insert(Header {
                key: "origin-partition",
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: "origin-offset",
                value: Some(offset.as_bytes()),
            })
            .insert(Header {
                key: "origin-value-bytes",
                value: Some(size.as_bytes()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &poison.key {
            record = record.key(&key[..key.len().min(DEAD_LETTER_PAYLOAD_BYTES)]);
        }
        if let Some(payload) = &poison.payload {
            // The whole record stays in the event topic (origin headers point at it); the dead
            // letter keeps its head, enough to see what it is.
            let kept = payload.len().min(DEAD_LETTER_PAYLOAD_BYTES);
            record = record.payload(&payload[..kept]);
        }
        self.producer.send_result(record).map_err(|(e, _)| {
            anyhow::anyhow!(
                "dead-letter topic {} did not take the record: {e}",
                self.topic
            )
        })
    }

    /// Counts and logs an acknowledged dead letter, or turns a refusal into an error. `None`:
    /// the producer went away before it answered.
    fn settle(&self, poison: &Poison, answer: Option<OwnedDeliveryResult>) -> anyhow::Result<()> {
        match answer {
            Some(Ok(_)) => {
                metrics::counter!("projector_records_dead_lettered_total").increment(1);
                warn!(
                    partition = poison.partition,
                    offset = poison.offset,
                    reason = %poison.reason,
                    dead_letter_topic = %self.topic,
                    "record cannot be folded; dead-lettered"
                );
                Ok(())
            }
            Some(Err((e, _))) => Err(anyhow::anyhow!(
                "dead-letter topic {} did not take the record: {e}",
                self.topic
            )),
            None => Err(anyhow::anyhow!(
                "the dead-letter producer stopped before the broker answered"
            )),
        }
    }
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
    /// Partitions assigned whose stored position lies past the end of their log: the loop
    /// pauses them once the assignment is in place.
    beyond_end: Mutex<Vec<i32>>,
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
                if let Err(e) = self.resume_from_store(consumer, tpl) {
                    error!(error = %e, "cannot resume assigned partitions; stopping");
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
                let mut all = TopicPartitionList::new();
                for partition in self.assignment.partitions() {
                    let _ = all.add_partition(&self.topic, partition);
                }
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
    /// Sets the offset of every newly assigned partition to the one stored with its state (or
    /// to the log start, recording the gap, when retention deleted records not yet folded).
    fn resume_from_store(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> anyhow::Result<()> {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut folder = self.folder.lock().expect("poisoned");
        folder.forget(&partitions);
        for partition in partitions {
            let stored = self.store.offset(partition)?;
            let lost_before: i64 = self
                .store
                .lost_ranges(partition)?
                .iter()
                .map(|(from, to)| to - from)
                .sum();
            let mut next = stored.map_or(0, |p| p.next_offset);
            self.assignment.assign(
                partition,
                next,
                stored.as_ref().and_then(last_event),
                lost_before,
            );
            if let Some(low) = self.record_loss(consumer, &mut folder, partition)? {
                next = low;
            }
            self.check_log_end(consumer, partition, next)?;
            tpl.set_partition_offset(&self.topic, partition, Offset::Offset(next))?;
            info!(
                partition,
                next_offset = next,
                "partition assigned; resuming from the store"
            );
        }
        Ok(())
    }

    /// A stored position past the end of the log means the log was replaced (the topic deleted
    /// and created again, or truncated): the read models belong to records that are gone, and
    /// folding the new records on top would mix two logs. The partition is reported stalled,
    /// with the fix, and paused.
    fn check_log_end(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: i32,
        next: i64,
    ) -> anyhow::Result<()> {
        let (_low, high) = consumer
            .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
            .with_context(|| format!("cannot read the watermarks of partition {partition}"))?;
        if next <= high {
            return Ok(());
        }
        let reason = format!(
            "the store has folded this partition up to offset {next}, past the end of its log \
             ({high}): the topic was deleted and created again, or truncated, so the read models \
             belong to another log; rebuild them with `projector replay`"
        );
        error!(
            partition,
            next_offset = next,
            high_watermark = high,
            "{reason}"
        );
        metrics::gauge!("projector_partition_stalled", "partition" => partition.to_string())
            .set(1.0);
        self.assignment.set_stalled(partition, Some(reason));
        self.beyond_end.lock().expect("poisoned").push(partition);
        Ok(())
    }

    /// If the log of `partition` now starts after the partition's position, records the
    /// records in between as lost and returns the log start to resume from.
    fn record_loss(
        &self,
        consumer: &BaseConsumer<Self>,
        folder: &mut Folder,
        partition: i32,
    ) -> anyhow::Result<Option<i64>> {
        let (low, _high) = consumer
            .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
            .with_context(|| format!("cannot read the watermarks of partition {partition}"))?;
        let next = folder.next_offset(partition)?;
        if next >= low {
            return Ok(None);
        }
        let lost = low - next;
        error!(
            partition,
            from = next,
            to = low,
            lost,
            "records were deleted by retention before they were folded; the read models miss them"
        );
        metrics::counter!("projector_records_lost_total", "partition" => partition.to_string())
            .increment(lost as u64);
        folder.lose(partition, next, low)?;
        self.assignment.add_lost(partition, lost);
        Ok(Some(low))
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

/// A Kafka client for reading metadata and watermarks.
pub fn metadata_client(config: &Config) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set_log_level(RDKafkaLogLevel::Error)
        .create()
        .context("cannot create the Kafka client for watermarks")
}

/// Reads the topic's partition count into the assignment.
pub fn read_partition_count(client: &BaseConsumer, topic: &str, assignment: &Assignment) {
    match client.fetch_metadata(Some(topic), Duration::from_secs(2)) {
        Ok(metadata) => {
            if let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) {
                assignment.set_partition_count(found.partitions().len() as i32);
            }
        }
        Err(e) => debug!(error = %e, "cannot read the topic metadata"),
    }
}

/// Reads the partition count and the watermarks of every assigned partition now and then, for
/// lag and for naming partitions that no node serves.
pub fn watch_watermarks(
    config: &Config,
    assignment: Assignment,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client = metadata_client(config)?;
    let interval = Duration::from_millis(config.watermark_interval_ms);
    while !shutdown.load(Ordering::Relaxed) {
        read_partition_count(&client, &config.topic, &assignment);
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
