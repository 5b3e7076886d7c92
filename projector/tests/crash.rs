//! The projector killed with SIGKILL at random moments while events stream in: after catch-up
//! its exact counts equal the number of distinct events, and its whole store equals, byte for
//! byte, the store built by a clean replay of the same log.
//!
//! Runs the real `projector` binary against the real broker at `KAFKA_BOOTSTRAP`. The stream
//! holds retried duplicates (the same event id sent twice) and poison records, so the test also
//! covers dropping duplicates and dead-lettering across crashes. Top projections here see fewer
//! distinct items than their frequent-items map holds: past that, that sketch's purges depend on
//! its in-memory layout, so only its guarantees (not its bytes) survive a reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use readmodel::ReadModel;
use schemas::{Record, partition_for};
use serde_json::Value;
use testkit::{bootstrap, create_topic};

const PARTITIONS: i32 = 3;
const KILLS: usize = 20;
const TENANT: &str = "crash-tenant";

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, topic: &str, store: &str, port: u16) -> PathBuf {
    let path = dir.join(format!("{store}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
            brokers = "{}"
            topic = "{topic}"
            group_id = "{topic}-group"
            node_name = "crash-node"
            store_path = "{}"
            projections_file = "{}"
            internal_listen = "127.0.0.1:{port}"
            batch_max_records = 300
            batch_interval_ms = 50
            watermark_interval_ms = 200
            session_timeout_ms = 6000
            "#,
            bootstrap(),
            dir.join(store).display(),
            dir.join("projections.toml").display(),
        ),
    )
    .unwrap();
    path
}

fn start_projector(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the projector binary")
}

/// Record `i` of the stream: a page view of one of 500 users on one of 40 paths.
fn record(i: usize) -> Record {
    serde_json::from_value(serde_json::json!({
        "v": 1,
        "tenant": TENANT,
        "id": format!("event-{i}"),
        "type": "view",
        "key": format!("user-{}", i % 500),
        "time_ms": 1_700_000_000_000i64 + (i as i64) * 600,
        "received_ms": 1_700_000_000_000i64 + (i as i64) * 600,
        "properties": { "path": format!("/p/{}", (i * 7) % 40) },
    }))
    .unwrap()
}

async fn create_topics(topic: &str) {
    create_topic(topic, PARTITIONS).await;
    create_topic(&format!("{topic}.dead-letter"), 1).await;
}

/// Sends the stream in waves until the projector has been killed for the last time (and for at
/// least 20 waves): every event once, about one in ten a second time (a client's retry), and a
/// poison record now and then. Returns the number of distinct events and of poison records sent.
async fn produce_stream(topic: String, kills_done: Arc<AtomicBool>) -> (usize, usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut random = Lcg(7);
    let (mut distinct, mut poison) = (0usize, 0usize);
    let mut wave = 0;
    while wave < 20 || !kills_done.load(Ordering::Relaxed) {
        let mut sends = Vec::new();
        for i in wave * 300..(wave + 1) * 300 {
            let mut payloads = vec![record(i)];
            if random.below(10) == 0 && i > 0 {
                payloads.push(record(random.below(i as u64) as usize));
            }
            distinct += 1;
            for record in payloads {
                let partition = partition_for(&record.key, PARTITIONS as u32);
                let bytes = record.to_bytes();
                let key = record.key.clone();
                sends.push((partition, Some(key), bytes));
            }
            if random.below(500) == 0 {
                poison += 1;
                let partition = random.below(PARTITIONS as u64) as i32;
                sends.push((partition, None, b"{not json".to_vec()));
            }
        }
        let mut deliveries = Vec::new();
        for (partition, key, bytes) in &sends {
            let mut record = FutureRecord::<str, [u8]>::to(&topic)
                .payload(bytes)
                .partition(*partition);
            if let Some(key) = key {
                record = record.key(key);
            }
            deliveries.push(producer.send(record, Duration::from_secs(10)));
        }
        for delivery in deliveries {
            delivery.await.expect("broker took the record");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        wave += 1;
    }
    (distinct, poison)
}

fn high_watermarks(topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect()
}

/// Waits until the node reports every partition folded up to `highs`.
async fn wait_caught_up(port: u16, highs: &[i64]) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer: Option<Value> = match client
            .get(format!("http://127.0.0.1:{port}/internal/v1/partitions"))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let folded: Vec<i64> = answer
            .as_ref()
            .and_then(|a| a["partitions"].as_array())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["next_offset"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        if folded.as_slice() == highs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projector did not catch up: folded {folded:?}, log ends at {highs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_model(port: u16, projection: &str) -> ReadModel {
    let answer: Value = reqwest::get(format!(
        "http://127.0.0.1:{port}/internal/v1/read-models/{projection}?tenant={TENANT}"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["read_model"].as_str().expect("read model present"))
        .unwrap();
    ReadModel::from_bytes(&bytes).unwrap()
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "projector did not stop cleanly: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_projector_killed_twenty_times_equals_a_clean_replay() {
    let unique = format!(
        "crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let dir = std::env::temp_dir().join(&unique);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("projections.toml"),
        format!("{}expected_items = 10000\n", testkit::VIEW_PROJECTIONS),
    )
    .unwrap();
    let topic = format!("events-{unique}");
    create_topics(&topic).await;
    let started = Instant::now();
    let port = free_port();
    let live_config = write_config(&dir, &topic, "live", port);
    let log = dir.join("projector.log");

    // Kill the node at random moments while the stream is being produced.
    let kills_done = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(produce_stream(topic.clone(), kills_done.clone()));
    let mut random = Lcg(42);
    for _ in 0..KILLS {
        let mut child = start_projector(&live_config, &log);
        tokio::time::sleep(Duration::from_millis(300 + random.below(1_200))).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    kills_done.store(true, Ordering::Relaxed);
    eprintln!(
        "crash test: {KILLS} kills done after {:?}",
        started.elapsed()
    );
    let (distinct, poison) = producing.await.unwrap();
    eprintln!("crash test: stream produced after {:?}", started.elapsed());

    // Catch up, then check exact counts.
    let child = start_projector(&live_config, &log);
    let highs = high_watermarks(&topic, PARTITIONS);
    wait_caught_up(port, &highs).await;
    eprintln!("crash test: caught up after {:?}", started.elapsed());
    let visitors = read_model(port, "visitors").await;
    assert_eq!(
        visitors.events(),
        distinct as u64,
        "each distinct event counted once"
    );
    let top = read_model(port, "top_paths").await;
    assert_eq!(top.events(), distinct as u64);
    terminate(child);

    // Every poison record was dead-lettered, once per crash-free attempt at least.
    let dead_letters = high_watermarks(&format!("{topic}.dead-letter"), 1);
    assert!(
        dead_letters[0] >= poison as i64,
        "{} dead letters for {poison} poison records",
        dead_letters[0]
    );

    // A clean replay of the same log builds the same store, byte for byte.
    let replay_config = write_config(&dir, &topic, "replayed", free_port());
    let replay = Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["replay", "--config"])
        .arg(&replay_config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let live = projector::store::Store::open(&dir.join("live"), 1 << 20).unwrap();
    let replayed = projector::store::Store::open(&dir.join("replayed"), 1 << 20).unwrap();
    let live_entries = live.state_entries().unwrap();
    let replayed_entries = replayed.state_entries().unwrap();
    assert_eq!(
        live.remembered_ids().unwrap(),
        replayed.remembered_ids().unwrap(),
        "the stores remember different event ids"
    );
    let live_keys: HashSet<&Vec<u8>> = live_entries.iter().map(|(k, _)| k).collect();
    let replayed_keys: HashSet<&Vec<u8>> = replayed_entries.iter().map(|(k, _)| k).collect();
    assert_eq!(
        live_keys.symmetric_difference(&replayed_keys).count(),
        0,
        "the stores hold different keys"
    );
    for ((key, live_value), (_, replayed_value)) in live_entries.iter().zip(&replayed_entries) {
        assert!(
            live_value == replayed_value,
            "value of key {key:?} differs between the crashed and the replayed store"
        );
    }
    drop((live, replayed));
    let _ = std::fs::remove_dir_all(&dir);
}
