//! Ingest against a real Kafka broker: events posted as a JSON object, a JSON array, NDJSON and
//! gzip are acknowledged with 202 only once they are in the topic, and each is found exactly
//! once, on partition `partition_for(key, n)`, with its tenant, key and `schema-version` header.
//! Also: a missing topic stops `serve` at start with a message naming the fix.
//!
//! The broker address comes from `KAFKA_BOOTSTRAP` (e.g. `KAFKA_PORT=19192 deploy/kafka.sh
//! start`, then `KAFKA_BOOTSTRAP=127.0.0.1:19192`); the tests fail when it is unset. Each test
//! creates its own topic.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use ingest::{Config, SCHEMA_VERSION_HEADER};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use schemas::tenant::api_key_sha256_hex;
use schemas::{Record, SCHEMA_VERSION, partition_for};

const PARTITIONS: u32 = 4;
const WEBLOG_KEY: &str = "weblog-kafka-test-0001";
const WIKI_KEY: &str = "wiki-kafka-test-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_accepted_events_are_in_kafka_once_on_their_partition() {
    let brokers = bootstrap();
    let topic = unique_name("accepted");
    create_topic(&brokers, &topic, PARTITIONS).await;
    let ingest = Ingest::start(&brokers, &topic, "accepted").await;

    let ready = ingest
        .client
        .get(ingest.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let mut sent: HashMap<String, (String, String)> = HashMap::new();
    let mut batch = |tenant: &str, prefix: &str, count: usize| -> Vec<Value> {
        (0..count)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                let key = format!("{prefix}-user-{}", i % 17);
                sent.insert(id.clone(), (tenant.to_owned(), key.clone()));
                json!({"id": id, "type": "page_view", "key": key, "properties": {"i": i}})
            })
            .collect()
    };

    let single = batch("weblog", "single", 1).remove(0);
    let array = batch("weblog", "array", 50);
    let ndjson = batch("wiki", "ndjson", 30);
    let gzipped = batch("weblog", "gzip", 20);
    let ndjson_body: String = ndjson.iter().map(|event| format!("{event}\n")).collect();

    let posts = [
        (
            WEBLOG_KEY,
            "application/json",
            None,
            single.to_string().into_bytes(),
            1,
        ),
        (
            WEBLOG_KEY,
            "application/json",
            None,
            serde_json::to_vec(&array).unwrap(),
            50,
        ),
        (
            WIKI_KEY,
            "application/x-ndjson",
            None,
            ndjson_body.into_bytes(),
            30,
        ),
        (
            WEBLOG_KEY,
            "application/json",
            Some("gzip"),
            gzip(&serde_json::to_vec(&gzipped).unwrap()),
            20,
        ),
    ];
    for (key, content_type, encoding, body, count) in posts {
        let mut request = ingest
            .client
            .post(ingest.url("/v1/events"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{content_type} {encoding:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "accepted": count }));
    }

    // A 202 means acknowledged: the records are in the log now, without waiting.
    let expected = sent.len();
    let topic_name = topic.clone();
    let brokers_name = brokers.clone();
    let written = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&brokers_name);
        (0..PARTITIONS as i32)
            .map(|partition| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic_name, partition, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum::<i64>()
    })
    .await
    .unwrap();
    assert_eq!(written, expected as i64);

    let found = read_topic(&brokers, &topic, PARTITIONS, expected).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in &found {
        let record = Record::from_bytes(&message.value).unwrap();
        let id = record.id.clone().expect("every test event has an id");
        *seen.entry(id.clone()).or_default() += 1;
        let (tenant, key) = &sent[&id];
        assert_eq!(&record.tenant, tenant, "{id}");
        assert_eq!(&record.key, key, "{id}");
        assert_eq!(message.key, key.as_bytes(), "{id}");
        assert_eq!(message.partition, partition_for(key, PARTITIONS), "{id}");
        assert_eq!(record.v, SCHEMA_VERSION);
        assert_eq!(
            message.schema_version.as_deref(),
            Some(SCHEMA_VERSION.to_string().as_bytes()),
            "{id}"
        );
    }
    assert_eq!(seen.len(), expected, "every event arrived");
    assert!(
        seen.values().all(|&count| count == 1),
        "no event arrived twice"
    );

    let metrics = ingest
        .client
        .get(ingest.url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("ingest_events_accepted_total"), "{text}");
    assert!(text.contains("ingest_produce_latency_seconds"), "{text}");
    assert!(
        text.contains("ingest_requests_total{status=\"202\"}"),
        "{text}"
    );

    ingest.stop().await;
    delete_topic(&brokers, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_invalid_and_rate_limited_requests_write_nothing() {
    let brokers = bootstrap();
    let topic = unique_name("refused");
    create_topic(&brokers, &topic, 2).await;
    let ingest = Ingest::start(&brokers, &topic, "refused").await;

    let bad = json!([{"type": "page_view", "key": "k-1"}, {"type": "page_view"}]);
    let response = ingest.post(WEBLOG_KEY, bad.to_string()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The `tiny` tenant has a burst of 3 events.
    let three = json!([
        {"type": "a", "key": "k-1"}, {"type": "a", "key": "k-2"}, {"type": "a", "key": "k-3"}
    ]);
    let response = ingest.post("tiny-kafka-test-0001", three.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = ingest.post("tiny-kafka-test-0001", three.to_string()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let found = read_topic(&brokers, &topic, 2, 3).await;
    assert_eq!(found.len(), 3);
    // Nothing more arrives after the three admitted events.
    let later = read_topic_for(&brokers, &topic, 2, Duration::from_secs(2)).await;
    assert_eq!(later.len(), 3);

    ingest.stop().await;
    delete_topic(&brokers, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_serve_refuses_to_start_without_the_topic() {
    let brokers = bootstrap();
    let topic = unique_name("missing");
    let config = config(&brokers, &topic, "missing");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = ingest::serve(config, listener, metrics_handle().clone(), async {})
        .await
        .expect_err("serve must fail when the topic does not exist");
    let message = format!("{error:#}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("create-topic"), "{message}");
    assert!(message.contains(&topic), "{message}");

    // Asking for the topic's metadata did not create it on the broker.
    let admin = admin(&brokers);
    let name = topic.clone();
    let present = tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&name), Duration::from_secs(5))
            .unwrap();
        metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none())
    })
    .await
    .unwrap();
    assert!(!present, "topic {topic} was created by ingest");
}

/// One message read back from the topic.
struct Found {
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    schema_version: Option<Vec<u8>>,
}

/// `ingest::serve` running on a loopback port until [`Ingest::stop`].
struct Ingest {
    address: std::net::SocketAddr,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    served: JoinHandle<anyhow::Result<()>>,
}

impl Ingest {
    async fn start(brokers: &str, topic: &str, label: &str) -> Ingest {
        let config = config(brokers, topic, label);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(ingest::serve(
            config,
            listener,
            metrics_handle().clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(!served.is_finished(), "ingest stopped during start");
            let health = client.get(format!("http://{address}/healthz")).send().await;
            if health.is_ok_and(|response| response.status() == StatusCode::OK) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ingest did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ingest {
            address,
            client,
            stop,
            served,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn post(&self, key: &str, body: String) -> reqwest::Response {
        self.client
            .post(self.url("/v1/events"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Signals shutdown and checks that `serve` returns cleanly.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        let served = tokio::time::timeout(Duration::from_secs(30), self.served)
            .await
            .expect("serve stops within 30 s of the shutdown signal")
            .unwrap();
        served.unwrap();
    }
}

/// The broker to test against; the tests fail without one rather than pass unchecked.
fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: start a broker (KAFKA_PORT=19192 deploy/kafka.sh start) \
         and run with KAFKA_BOOTSTRAP=127.0.0.1:19192",
    )
}

fn config(brokers: &str, topic: &str, label: &str) -> Config {
    let tenants_file = tenants_file(label);
    let text = format!(
        "listen = \"127.0.0.1:0\"\nbrokers = {brokers:?}\ntopic = {topic:?}\n\
         tenants_file = {:?}\nrequest_deadline_ms = 10000\nmetadata_refresh_ms = 500\n\
         shutdown_flush_ms = 2000\n",
        tenants_file.display().to_string()
    );
    Config::from_toml(&text).unwrap()
}

fn tenants_file(label: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ingest-kafka-test-tenants-{}-{label}.toml",
        std::process::id()
    ));
    let text = format!(
        "[[tenant]]\nname = \"weblog\"\napi_key_sha256 = [\"{}\"]\n\
         [[tenant]]\nname = \"wiki\"\napi_key_sha256 = [\"{}\"]\n\
         [[tenant]]\nname = \"tiny\"\napi_key_sha256 = [\"{}\"]\n\
         events_per_second = 1\nburst_events = 3\n",
        api_key_sha256_hex(WEBLOG_KEY),
        api_key_sha256_hex(WIKI_KEY),
        api_key_sha256_hex("tiny-kafka-test-0001"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn unique_name(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ingest-test-{label}-{}-{nanos}", std::process::id())
}

/// An admin client that never creates topics by asking for their metadata.
fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap()
}

/// Creates `topic` and waits until its metadata shows every partition.
async fn create_topic(brokers: &str, topic: &str, partitions: u32) {
    let admin = admin(brokers);
    let new_topic = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin.create_topics([&new_topic], &options).await.unwrap();
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code}"));
    }
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .unwrap();
            let known = metadata.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
            });
            if known {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

async fn delete_topic(brokers: &str, topic: &str) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin(brokers)
        .delete_topics(&[topic], &options)
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot delete topic {name}: {code}"));
    }
}

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Reads every partition from the start until `expected` messages arrived (30 s at most).
async fn read_topic(brokers: &str, topic: &str, partitions: u32, expected: usize) -> Vec<Found> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        read(
            &brokers,
            &topic,
            partitions,
            |found| found.len() >= expected,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
}

/// Reads every partition from the start for `duration`.
async fn read_topic_for(
    brokers: &str,
    topic: &str,
    partitions: u32,
    duration: Duration,
) -> Vec<Found> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read(&brokers, &topic, partitions, |_| false, duration))
        .await
        .unwrap()
}

fn read(
    brokers: &str,
    topic: &str,
    partitions: u32,
    done: impl Fn(&[Found]) -> bool,
    limit: Duration,
) -> Vec<Found> {
    let consumer = consumer(brokers);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + limit;
    let mut found = Vec::new();
    while !done(&found) && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let schema_version = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == SCHEMA_VERSION_HEADER)
                .and_then(|header| header.value.map(<[u8]>::to_vec))
        });
        found.push(Found {
            partition: message.partition(),
            key: message.key().unwrap_or_default().to_vec(),
            value: message.payload().unwrap_or_default().to_vec(),
            schema_version,
        });
    }
    found
}

/// The test process's recorder: installed once here, as a binary would, never by the library.
fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
