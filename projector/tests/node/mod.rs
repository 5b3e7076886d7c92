//! What the projector's fault tests share: the real `projector` binary run as a node of its own,
//! read through its internal endpoint and `/metrics`, and records written straight to the event
//! topic the way ingest writes them (same value format, key, partition and `schema-version`
//! header).
//!
//! Every wait polls until a generous deadline and then fails with the last state it saw.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use readmodel::ReadModel;
use schemas::{Record, SCHEMA_VERSION, partition_for};
use serde_json::Value;
use testkit::bootstrap;

/// A name no other run shares: `<prefix>-<pid>-<epoch ms>`.
pub fn unique(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("{prefix}-{}-{millis}", std::process::id())
}

/// A fresh directory under the system temp dir holding the projection file the nodes read.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("projections.toml"), testkit::VIEW_PROJECTIONS).unwrap();
    dir
}

/// Writes `dir/live.toml`, the config of a store `dir/live` folding `topic`, for commands run
/// without a node (`projector replay`); returns its path.
pub fn write_config(dir: &Path, topic: &str) -> PathBuf {
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "brokers = \"{}\"\ntopic = \"{topic}\"\ngroup_id = \"{topic}-group\"\n\
             store_path = \"{}\"\nprojections_file = \"{}\"\n\
             internal_listen = \"127.0.0.1:0\"\n",
            bootstrap(),
            dir.join("live").display(),
            dir.join("projections.toml").display(),
        ),
    )
    .unwrap();
    config
}

/// Runs `projector replay --config <config> <args>` to its end.
pub fn replay(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["replay", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// [`replay`], failing the test unless it succeeded; its summary (stdout).
pub fn replay_ok(config: &Path, args: &[&str]) -> String {
    let output = replay(config, args);
    assert!(
        output.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `check` until it gives `Ok`, failing after `timeout` with the last `Err` it gave (a
/// description of what it saw).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running `projector run` process with its own store, internal port and log file.
pub struct Node {
    child: Child,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    http: reqwest::Client,
}

impl Node {
    /// Writes the node's config into `dir` (store `dir/<store>`, a free internal port) and
    /// starts the binary. `extra` is appended to the config as TOML lines.
    pub fn start(dir: &Path, topic: &str, store: &str, extra: &str) -> Node {
        let port = free_port();
        let config = dir.join(format!("{store}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
                brokers = "{}"
                topic = "{topic}"
                group_id = "{topic}-group"
                node_name = "{store}"
                store_path = "{}"
                projections_file = "{}"
                internal_listen = "127.0.0.1:{port}"
                batch_max_records = 200
                batch_interval_ms = 50
                watermark_interval_ms = 200
                session_timeout_ms = 6000
                {extra}
                "#,
                bootstrap(),
                dir.join(store).display(),
                dir.join("projections.toml").display(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{store}.log"));
        let child = spawn(&config, &log);
        Node {
            child,
            port,
            config,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Starts the same node again (same config, store and port) after [`Node::stop`].
    pub fn restart(&mut self) {
        assert!(!self.alive(), "restart of a node that still runs");
        self.child = spawn(&self.config, &self.log);
    }

    /// The process id, to show a node was not replaced.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Fails the test with the end of the node's log unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "projector exited ({status}); end of its log:\n{}",
                self.log_tail()
            );
        }
    }

    /// Everything the node (and its earlier runs) logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for the process to exit by itself and returns whether it succeeded.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "projector still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (a name `kill` knows, such as `STOP` or `CONT`) to the node.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Stops the node with SIGTERM and checks that it wrote its batch and exited cleanly.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let exit = self.child.wait().unwrap();
        assert!(
            exit.success(),
            "projector did not stop cleanly: {exit}; end of its log:\n{}",
            self.log_tail()
        );
    }

    async fn get_json(&self, path: &str) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}: {body}"));
        }
        Ok(body)
    }

    /// The status of every partition the node serves, by partition.
    pub async fn partitions(&self) -> Result<HashMap<i32, Value>, String> {
        let answer = self.get_json("/internal/v1/partitions").await?;
        let partitions = answer["partitions"]
            .as_array()
            .ok_or_else(|| format!("no partitions in {answer}"))?;
        Ok(partitions
            .iter()
            .map(|p| (p["partition"].as_i64().unwrap() as i32, p.clone()))
            .collect())
    }

    /// Waits until the node serves partitions `0..highs.len()` and has folded each up to its
    /// entry in `highs`; returns their statuses.
    pub async fn wait_caught_up(&self, highs: &[i64]) -> HashMap<i32, Value> {
        wait_for(
            &format!("the node to fold every partition up to {highs:?}"),
            Duration::from_secs(120),
            async || {
                let partitions = self.partitions().await?;
                let folded: Vec<Option<i64>> = (0..highs.len() as i32)
                    .map(|p| partitions.get(&p).and_then(|s| s["next_offset"].as_i64()))
                    .collect();
                if folded.iter().zip(highs).all(|(f, h)| *f == Some(*h)) {
                    Ok(partitions)
                } else {
                    Err(format!("folded up to {folded:?}"))
                }
            },
        )
        .await
    }

    /// The answer of the internal read-model endpoint for one projection and tenant.
    pub async fn read_model_answer(&self, projection: &str, tenant: &str) -> Result<Value, String> {
        self.get_json(&format!(
            "/internal/v1/read-models/{projection}?tenant={tenant}"
        ))
        .await
    }

    /// Events folded into `projection` for `tenant`, over every partition the node serves.
    pub async fn events(&self, projection: &str, tenant: &str) -> Result<u64, String> {
        let answer = self.read_model_answer(projection, tenant).await?;
        let Some(encoded) = answer["read_model"].as_str() else {
            return Ok(0);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| e.to_string())?;
        let model = ReadModel::from_bytes(&bytes).map_err(|e| e.to_string())?;
        Ok(model.events())
    }

    /// The value of a metric with a `partition` label on `/metrics`; `None` while it has never
    /// been set.
    pub async fn partition_metric(
        &self,
        name: &str,
        partition: i32,
    ) -> Result<Option<f64>, String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let prefix = format!("{name}{{partition=\"{partition}\"}} ");
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.trim().parse().expect("a metric value")))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test must not leave the process running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the projector binary")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Event keys that [`partition_for`] places on `partition` of a `partitions`-partition topic.
pub fn keys_on(partition: i32, partitions: i32, prefix: &str) -> impl Iterator<Item = String> {
    (0u64..)
        .map(move |n| format!("{prefix}-{n}"))
        .filter(move |key| partition_for(key, partitions as u32) == partition)
}

/// A view event of `tenant` with key `key`, id `id` (if any) and path `/p/<n % 10>`.
pub fn view(tenant: &str, key: &str, id: Option<String>, n: usize) -> Record {
    let time_ms = 1_700_000_000_000i64 + (n as i64) * 1_000;
    serde_json::from_value(serde_json::json!({
        "v": SCHEMA_VERSION,
        "tenant": tenant,
        "id": id,
        "type": "view",
        "key": key,
        "time_ms": time_ms,
        "received_ms": time_ms,
        "properties": { "path": format!("/p/{}", n % 10) },
    }))
    .unwrap()
}

/// An idempotent producer waiting for every replica, as ingest's.
pub fn producer(message_timeout: Duration) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .create()
        .unwrap()
}

/// The headers ingest puts on a record: the schema version, decimal.
pub fn version_header(version: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "schema-version",
        value: Some(version),
    })
}

/// Writes `record` as ingest would: keyed by its key, on its key's partition, with the
/// `schema-version` header. Returns the partition and offset the broker acknowledged.
pub async fn send_record(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    record: &Record,
) -> (i32, i64) {
    let partition = partition_for(&record.key, partitions as u32);
    send_raw(
        producer,
        topic,
        partition,
        Some(record.kafka_key()),
        &record.to_bytes(),
        version_header(&SCHEMA_VERSION.to_string()),
    )
    .await
}

/// Writes any bytes to one partition and waits for the acknowledgement.
pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
) -> (i32, i64) {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(value)
        .headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("the broker did not take a record: {e}"));
    (delivery.partition, delivery.offset)
}

/// A client for metadata and watermarks.
pub fn metadata_client() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap()
}

/// Low and high watermark of each partition `0..partitions` of `topic`.
pub fn watermarks(topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let client = metadata_client();
    (0..partitions)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
        })
        .collect()
}

/// One record read back from a topic.
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Every record of partitions `0..partitions` of `topic`, from the log start to the high
/// watermark read when called.
pub fn read_topic(topic: &str, partitions: i32) -> Vec<Stored> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for (partition, (low, high)) in watermarks(topic, partitions).into_iter().enumerate() {
        let partition = partition as i32;
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end; partitions left: {ends:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("a readable record");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Stored {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
        if ends
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            ends.remove(&message.partition());
        }
    }
    records
}
