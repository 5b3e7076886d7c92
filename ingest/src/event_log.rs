//! The Kafka topic events are appended to: the producer, its settings, the partition count and
//! the readiness flag.
//!
//! Guarantee: [`EventLog::append`] returns `Ok` only after Kafka acknowledged every record of
//! the batch with `acks=all` from an idempotent producer, each record on partition
//! `schemas::partition_for(key, partitions)`, keyed by the event key, valued by
//! `Record::to_bytes` and carrying the header `schema-version` (the decimal
//! `schemas::SCHEMA_VERSION`). On `Err` some records of the batch may have been written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};

use schemas::{Record, SCHEMA_VERSION, partition_for};

use crate::config::Config;
use crate::error::ApiError;
use crate::telemetry;

/// Name of the Kafka header that carries the record format version.
pub const SCHEMA_VERSION_HEADER: &str = "schema-version";

/// Largest key plus value of one record: below librdkafka's default `message.max.bytes`
/// (1000000) and the broker's default `max.message.bytes` (1048588), leaving room for the
/// record framing and header.
pub const MAX_RECORD_BYTES: usize = 900_000;

/// How often librdkafka reports its statistics to [`ProducerEvents::stats`].
const STATISTICS_INTERVAL_MS: &str = "1000";

/// The producer for one topic, with what ingest knows about the topic.
pub struct EventLog {
    producer: FutureProducer<ProducerEvents>,
    topic: String,
    brokers: String,
    /// Partition count from the last metadata read; 0 until one succeeded.
    partitions: AtomicU32,
    /// Whether the last metadata read succeeded.
    ready: AtomicBool,
    /// Set once the producer reported a fatal error.
    fatal: Arc<AtomicBool>,
    metadata_timeout: Duration,
    schema_version: String,
}

/// Receives librdkafka's own logs and error reports and sends them to `tracing`. While a broker
/// is down, librdkafka reports the same connection error several times a second;
/// [`watch_metadata`] logs the change of readiness once, so those reports go to debug. A fatal
/// error (the idempotent producer can no longer guarantee order) is logged as an error and
/// makes the service unready for good: restart it.
struct ProducerEvents {
    fatal: Arc<AtomicBool>,
}

/// Why topic metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "cannot read metadata of topic {topic:?} from kafka at {brokers}: {source}; start the \
         broker or fix `brokers`"
    )]
    Unreachable {
        topic: String,
        brokers: String,
        source: Box<KafkaError>,
    },
    #[error(
        "topic {topic:?} does not exist on kafka at {brokers}: create it first, e.g. \
         `deploy/kafka.sh create-topic {topic} 4` or `kafka-topics.sh --bootstrap-server \
         {brokers} --create --topic {topic} --partitions 4`"
    )]
    TopicMissing { topic: String, brokers: String },
    #[error("kafka reported an error for topic {topic:?}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("kafka reported no partitions for topic {topic:?}")]
    NoPartitions { topic: String },
}

/// Why a batch was not fully acknowledged.
#[derive(Debug)]
pub enum AppendError {
    /// The partition count is not known yet.
    NoMetadata,
    /// The producer queue (`queue_max_messages`) is full.
    QueueFull,
    /// Record `index` of the batch would be `bytes` long, over [`MAX_RECORD_BYTES`]; nothing
    /// was sent.
    RecordTooLarge { index: usize, bytes: usize },
    /// Not every acknowledgement arrived before the deadline.
    Timeout(Duration),
    /// Kafka or the producer refused a record.
    Kafka(KafkaError),
}

impl EventLog {
    /// Creates the producer. It does not contact Kafka: call [`EventLog::refresh_metadata`]
    /// (as [`crate::serve`] does) or [`EventLog::set_partition_count`] before appending.
    pub fn new(config: &Config) -> Result<EventLog, KafkaError> {
        let fatal = Arc::new(AtomicBool::new(false));
        let producer: FutureProducer<ProducerEvents> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", "ingest")
            // Default in librdkafka already, stated because a 202 promises the record is on
            // every in-sync replica.
            .set("acks", "all")
            // Producer retries must not duplicate or reorder records within a partition.
            .set("enable.idempotence", "true")
            // Bounds how long a record may wait for delivery (default 300 s), so memory and
            // shutdown are bounded when Kafka is down.
            .set(
                "message.timeout.ms",
                config.message_timeout.as_millis().to_string(),
            )
            // Bounds the records held in memory; past it requests are answered 503 instead of
            // queueing without end.
            .set(
                "queue.buffering.max.messages",
                config.queue_max_messages.to_string(),
            )
            // Batching window: operators trade a few milliseconds of latency for throughput.
            .set("linger.ms", config.linger.as_millis().to_string())
            // Events are repetitive JSON; lz4 (the default) shrinks them cheaply on the wire
            // and on disk. docs/ingest-benchmarks.md compares the codecs.
            .set("compression.type", config.compression.as_str())
            // The producer default is true: a missing topic must be an error that names the fix,
            // not a topic silently created with the broker's default partition count.
            .set("allow.auto.create.topics", "false")
            // Statistics feed the `ingest_kafka_brokers_up` gauge (see `ProducerEvents::stats`).
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(ProducerEvents {
                fatal: Arc::clone(&fatal),
            })?;
        Ok(EventLog {
            producer,
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
            partitions: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            fatal,
            metadata_timeout: config.metadata_timeout,
            schema_version: SCHEMA_VERSION.to_string(),
        })
    }

    /// The topic records are appended to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition count of the topic, once known.
    pub fn partition_count(&self) -> Option<u32> {
        match self.partitions.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// Sets the partition count without asking Kafka, for callers that created the topic
    /// themselves; the next successful metadata read replaces it.
    pub fn set_partition_count(&self, partitions: u32) {
        self.partitions.store(partitions, Ordering::Release);
    }

    /// Records in the producer (queued, being sent, or waiting for their acknowledgement), plus
    /// librdkafka's callbacks (statistics, errors) its poll thread has not served yet.
    pub fn queued_records(&self) -> u32 {
        u32::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Whether the last metadata read succeeded (Kafka reachable, topic present) and the
    /// producer has not failed fatally.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.fatal.load(Ordering::Acquire)
    }

    /// Reads topic metadata, records the partition count and readiness, and returns the count.
    pub async fn refresh_metadata(&self) -> Result<u32, MetadataError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let timeout = self.metadata_timeout;
        // rd_kafka_metadata blocks its thread for up to `timeout`.
        let read = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await;
        let result = match read {
            Ok(Ok(metadata)) => self.partitions_in(&metadata),
            Ok(Err(source)) => Err(MetadataError::Unreachable {
                topic: self.topic.clone(),
                brokers: self.brokers.clone(),
                source: Box::new(source),
            }),
            Err(join) => {
                tracing::error!(error = %join, "metadata read task failed");
                Err(MetadataError::Unreachable {
                    topic: self.topic.clone(),
                    brokers: self.brokers.clone(),
                    source: Box::new(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail)),
                })
            }
        };
        match &result {
            Ok(partitions) => {
                let previous = self.partitions.swap(*partitions, Ordering::AcqRel);
                if previous != 0 && previous != *partitions {
                    tracing::warn!(
                        topic = %self.topic,
                        previous,
                        partitions = *partitions,
                        "partition count of the topic changed: keys now map to other partitions"
                    );
                }
                self.set_ready(true);
            }
            Err(_) => self.set_ready(false),
        }
        result
    }

    /// Appends every record and waits, at most `deadline` in all, for Kafka to acknowledge
    /// each of them. Records too large for Kafka are found before any record is sent.
    pub async fn append(&self, records: &[Record], deadline: Duration) -> Result<(), AppendError> {
        let Some(partitions) = self.partition_count() else {
            return Err(AppendError::NoMetadata);
        };
        let payloads: Vec<Vec<u8>> = records.iter().map(Record::to_bytes).collect();
        for (index, (record, payload)) in records.iter().zip(&payloads).enumerate() {
            let bytes = record.key.len() + payload.len();
            if bytes > MAX_RECORD_BYTES {
                return Err(AppendError::RecordTooLarge { index, bytes });
            }
        }
        let started = Instant::now();
        let give_up_at = tokio::time::Instant::from_std(started + deadline);
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, payload) in records.iter().zip(&payloads) {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: SCHEMA_VERSION_HEADER,
                value: Some(self.schema_version.as_str()),
            });
            let message = FutureRecord::to(&self.topic)
                .partition(partition_for(&record.key, partitions))
                .key(record.key.as_bytes())
                .payload(payload)
                // The broker checks timestamps against its clock; the arrival time is near it,
                // while the event's own time may be far in the past.
                .timestamp(record.received_ms)
                .headers(headers);
            match self.producer.send_result(message) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(AppendError::QueueFull);
                }
                Err((error, _)) => return Err(AppendError::Kafka(error)),
            }
        }
        let acknowledged = async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => return Err(AppendError::Kafka(error)),
                    Err(_canceled) => return Err(AppendError::Kafka(KafkaError::Canceled)),
                }
            }
            Ok(())
        };
        let result = tokio::time::timeout_at(give_up_at, acknowledged)
            .await
            .unwrap_or(Err(AppendError::Timeout(deadline)));
        metrics::histogram!(telemetry::PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
        result
    }

    /// Waits at most `bound` for queued records to be delivered and returns how many were not;
    /// those are then purged, so dropping the producer does not wait for them.
    pub async fn flush(&self, bound: Duration) -> i32 {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let result = producer.flush(bound);
            let left = producer.in_flight_count();
            if left > 0 {
                producer.purge(PurgeConfig::default().queue().inflight());
            }
            (result, left)
        })
        .await;
        match flushed {
            Ok((Ok(()), left)) => left,
            Ok((Err(error), left)) => {
                tracing::warn!(error = %error, "producer flush did not complete");
                left
            }
            Err(error) => {
                tracing::error!(error = %error, "producer flush task failed");
                self.producer.in_flight_count()
            }
        }
    }

    fn partitions_in(&self, metadata: &rdkafka::metadata::Metadata) -> Result<u32, MetadataError> {
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(self.topic_missing());
        };
        match topic.error() {
            None => {}
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                return Err(self.topic_missing());
            }
            Some(code) => {
                return Err(MetadataError::Topic {
                    topic: self.topic.clone(),
                    code: code.into(),
                });
            }
        }
        match u32::try_from(topic.partitions().len()) {
            Ok(0) | Err(_) => Err(MetadataError::NoPartitions {
                topic: self.topic.clone(),
            }),
            Ok(n) => Ok(n),
        }
    }

    fn topic_missing(&self) -> MetadataError {
        MetadataError::TopicMissing {
            topic: self.topic.clone(),
            brokers: self.brokers.clone(),
        }
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        let ready = self.is_ready();
        metrics::gauge!(telemetry::KAFKA_READY).set(if ready { 1.0 } else { 0.0 });
    }
}

impl AppendError {
    /// Label for `ingest_events_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AppendError::NoMetadata => "no_metadata",
            AppendError::QueueFull => "queue_full",
            AppendError::RecordTooLarge { .. } => "record_too_large",
            AppendError::Timeout(_) => "kafka_timeout",
            AppendError::Kafka(_) => "kafka_error",
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(error: AppendError) -> ApiError {
        match error {
            AppendError::NoMetadata => ApiError::NoMetadata,
            AppendError::QueueFull => ApiError::QueueFull,
            AppendError::RecordTooLarge { index, bytes } => ApiError::RecordTooLarge {
                index,
                bytes,
                limit_bytes: MAX_RECORD_BYTES,
            },
            AppendError::Timeout(deadline) => ApiError::KafkaTimeout { deadline },
            AppendError::Kafka(error) => ApiError::Kafka(error),
        }
    }
}

/// Re-checks readiness and the partition count every `every` until the task is aborted,
/// logging only changes of state.
pub(crate) async fn watch_metadata(log: Arc<EventLog>, every: Duration) {
    let mut was_ready = log.is_ready();
    loop {
        tokio::time::sleep(every).await;
        match log.refresh_metadata().await {
            Ok(partitions) if !was_ready => {
                tracing::info!(topic = %log.topic, partitions, "kafka is reachable again");
                was_ready = true;
            }
            Ok(_) => {}
            Err(error) if was_ready => {
                tracing::warn!(error = %error, "kafka is not reachable: /readyz answers 503");
                was_ready = false;
            }
            Err(_) => {}
        }
    }
}

impl ClientContext for ProducerEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, detail = message, "librdkafka log");
            }
            _ => {
                tracing::debug!(target: "librdkafka", facility, detail = message, "librdkafka log")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::Release);
            tracing::error!(
                error = %error,
                reason,
                "kafka producer failed fatally: ingest stays unready until restarted"
            );
        } else {
            tracing::debug!(target: "librdkafka", error = %error, reason, "librdkafka error report");
        }
    }

    /// Counts the brokers of the cluster the producer is connected to. Bootstrap entries
    /// (node id -1) are left out: they stand for addresses, not brokers.
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .filter(|broker| broker.nodeid >= 0 && broker.state == "UP")
            .count();
        metrics::gauge!(telemetry::KAFKA_BROKERS_UP).set(up as f64);
    }
}
