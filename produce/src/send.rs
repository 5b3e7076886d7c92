//! Sending mapped events: through ingest over HTTP, or straight to the topic with ingest's
//! partitioning and record format.
//!
//! Through ingest, a batch counts as sent only after a 202; 429 and 503 answers are retried with
//! the same batch (and so the same event ids) after the `Retry-After` the service asked for. A
//! 400 or 401 stops the run: resending would not help.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use schemas::{Limits, Record, partition_for, validate_event};

/// Attempts per batch before giving up.
const MAX_ATTEMPTS: u32 = 30;

/// Posts `events` to ingest in batches, `concurrency` requests at a time.
pub async fn to_ingest(
    events: Vec<Value>,
    url: &str,
    api_key: &str,
    batch_size: usize,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{}/v1/events", url.trim_end_matches('/'));
    let total = events.len() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(total, sent.clone());

    let batches: Vec<Vec<Value>> = events.chunks(batch_size).map(<[Value]>::to_vec).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, endpoint, api_key, queue, sent) = (
            client.clone(),
            endpoint.clone(),
            api_key.to_owned(),
            queue.clone(),
            sent.clone(),
        );
        workers.spawn(async move {
            loop {
                let Some(batch) = queue.lock().expect("poisoned").next() else {
                    return Ok::<(), anyhow::Error>(());
                };
                let body = serde_json::to_vec(&batch)?;
                post_batch(&client, &endpoint, &api_key, body).await?;
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result.context("sender task panicked")??;
    }
    progress.finish();
    Ok(sent.load(Ordering::Relaxed))
}

async fn post_batch(
    client: &reqwest::Client,
    endpoint: &str,
    api_key: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    for attempt in 1..=MAX_ATTEMPTS {
        let response = client
            .post(endpoint)
            .bearer_auth(api_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) if attempt < MAX_ATTEMPTS => {
                eprintln!("produce: request failed ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).context("ingest did not answer"),
        };
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            return Ok(());
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
            continue;
        }
        let text = response.text().await.unwrap_or_default();
        bail!("ingest refused a batch with {status}: {text}");
    }
    bail!("ingest kept refusing a batch after {MAX_ATTEMPTS} attempts")
}

/// Produces `events` of `tenant` straight to `topic`, validated and partitioned as ingest does.
pub async fn to_kafka(
    events: Vec<Value>,
    brokers: &str,
    topic: &str,
    tenant: &str,
) -> anyhow::Result<u64> {
    let received_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let limits = Limits::default();
    let mut records = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match validate_event(
            event,
            &format!("[{index}]"),
            tenant,
            received_ms as i64,
            &limits,
        ) {
            Ok(record) => records.push(record),
            Err(problems) => bail!("event {index} is invalid: {problems:?}"),
        }
    }
    let total = records.len() as u64;
    records_to_kafka(records.into_iter(), total, brokers, topic).await
}

/// Produces records straight to `topic` with ingest's partitioning, as they come from
/// `records` (so a generated stream never has to fit in memory).
pub async fn records_to_kafka(
    records: impl Iterator<Item = Record>,
    total: u64,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Same durability as ingest: every replica in sync, no duplicates from retries.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()
        .context("cannot create the Kafka producer")?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("cannot read topic metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as u32)
        .filter(|&n| n > 0)
        .with_context(|| format!("topic {topic} does not exist"))?;

    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(total, sent.clone());
    let mut deliveries = JoinSet::new();
    for record in records {
        let payload = record.to_bytes();
        let partition = partition_for(&record.key, partitions);
        let producer = producer.clone();
        let topic = topic.to_owned();
        let sent = sent.clone();
        // Bound the records in flight so memory stays flat for large files.
        while deliveries.len() >= 10_000 {
            deliveries.join_next().await.expect("non-empty")??;
        }
        deliveries.spawn(async move {
            let delivery = producer
                .send(
                    FutureRecord::to(&topic)
                        .key(record.key.as_bytes())
                        .payload(&payload)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await;
            delivery.map_err(|(e, _)| anyhow::anyhow!("kafka did not take a record: {e}"))?;
            sent.fetch_add(1, Ordering::Relaxed);
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = deliveries.join_next().await {
        result.context("delivery task panicked")??;
    }
    progress.finish();
    Ok(sent.load(Ordering::Relaxed))
}

/// A progress line on stderr, once a second.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    total: u64,
    sent: Arc<AtomicU64>,
    started: Instant,
}

impl Progress {
    fn start(total: u64, sent: Arc<AtomicU64>) -> Progress {
        let started = Instant::now();
        let task = {
            let sent = sent.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let done = sent.load(Ordering::Relaxed);
                    let rate = done as f64 / started.elapsed().as_secs_f64();
                    eprintln!("produce: {done}/{total} events sent ({rate:.0} events/s)");
                }
            })
        };
        Progress {
            task,
            total,
            sent,
            started,
        }
    }

    fn finish(self) {
        self.task.abort();
        let done = self.sent.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        eprintln!(
            "produce: {done}/{} events sent in {elapsed:.1}s ({:.0} events/s)",
            self.total,
            done as f64 / elapsed
        );
    }
}
