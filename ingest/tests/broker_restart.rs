//! The broker stopped and restarted while clients post continuously: afterwards every event of
//! every request answered 202 is in the topic exactly once, every other request was answered
//! with an error (never left hanging), ingest reports the broker down while it is (`/readyz` 503,
//! `ingest_kafka_brokers_up` 0), and it becomes ready again by itself.
//!
//! This stops and starts the broker at `KAFKA_BOOTSTRAP` with `deploy/kafka.sh` (same port,
//! same data), so it is the only test of its binary: cargo runs test binaries one at a time, and
//! no other test sees the broker go away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusBuilder;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use schemas::Record;
use schemas::tenant::api_key_sha256_hex;
use testkit::{bootstrap, create_topic};

const PARTITIONS: i32 = 4;
const API_KEY: &str = "restart-test-key-0001";
const CLIENTS: usize = 3;

/// Runs `deploy/kafka.sh <command>` for the broker at `KAFKA_BOOTSTRAP`.
fn kafka_script(command: &str) {
    let port = bootstrap()
        .rsplit(':')
        .next()
        .expect("KAFKA_BOOTSTRAP is host:port")
        .to_owned();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .env("KAFKA_PORT", port)
        .status()
        .expect("run deploy/kafka.sh");
    assert!(status.success(), "deploy/kafka.sh {command} failed");
}

/// Every event id in the topic, with how many times it occurs.
fn ids_in_topic(topic: &str) -> HashMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        ends.insert(partition, high);
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut ids = HashMap::new();
    let mut done: HashMap<i32, bool> = ends.iter().map(|(&p, &h)| (p, h == 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.values().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "could not read the topic to its end"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("readable record");
        let record = Record::from_bytes(message.payload().expect("value")).expect("a record");
        *ids.entry(record.id.expect("id")).or_insert(0) += 1;
        if message.offset() + 1 >= ends[&message.partition()] {
            done.insert(message.partition(), true);
        }
    }
    ids
}

/// What one request got.
struct Outcome {
    status: u16,
    ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_broker_restart_under_load_loses_no_accepted_event() {
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topic = format!("restart-{unique}");
    create_topic(&topic, PARTITIONS).await;

    let dir = std::env::temp_dir().join(format!("ingest-restart-{unique}"));
    std::fs::create_dir_all(&dir).unwrap();
    let tenants = dir.join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nname = \"restart\"\napi_key_sha256 = [\"{}\"]\n\
             events_per_second = 1000000\nburst_events = 1000000\n",
            api_key_sha256_hex(API_KEY)
        ),
    )
    .unwrap();
    let config = ingest::Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
         tenants_file = \"{}\"\nrequest_deadline_ms = 3000\nmessage_timeout_ms = 2000\n\
         metadata_refresh_ms = 500\nmetadata_timeout_ms = 1000\n",
        bootstrap(),
        tenants.display()
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_ingest, stopped) = tokio::sync::oneshot::channel::<()>();
    // Installed, so the gauges the producer sets reach `/metrics` (the only test of this binary).
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let service = tokio::spawn(ingest::serve(config, listener, metrics, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < ready_deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Clients post batches of five events until told to stop.
    let posting = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, url, posting) = (http.clone(), url.clone(), posting.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while posting.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..5).map(|i| format!("c{client}-{n}-{i}")).collect();
                let events: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "type": "view", "key": format!("k-{id}")}))
                    .collect();
                let response = http
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(API_KEY)
                    .json(&events)
                    .send()
                    .await
                    .expect("every request is answered within 20 s");
                let status = response.status().as_u16();
                if status != 202 {
                    assert!(
                        response.headers().contains_key("retry-after"),
                        "a {status} without Retry-After"
                    );
                    let body: Value = response.json().await.expect("a JSON error");
                    assert!(body["error"]["code"].is_string(), "{body}");
                }
                outcomes.push(Outcome { status, ids });
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(|| kafka_script("stop"))
        .await
        .unwrap();
    // While no broker answers, ingest says so: unready, and no broker up.
    let noticed = Instant::now() + Duration::from_secs(20);
    loop {
        let unready = http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE);
        if unready && brokers_up(&http, &url).await == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < noticed,
            "ingest did not report the broker down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(|| kafka_script("start"))
        .await
        .unwrap();
    // Ingest finds the broker again by itself.
    let recovered = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < recovered,
            "ingest did not become ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counted = Instant::now() + Duration::from_secs(20);
    while brokers_up(&http, &url).await != Some(1.0) {
        assert!(
            Instant::now() < counted,
            "ingest_kafka_brokers_up did not return to 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    posting.store(false, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for client in clients {
        let mine = client.await.unwrap();
        // Each client's last requests went to a broker that was back.
        assert_eq!(
            mine.last().map(|o| o.status),
            Some(202),
            "requests were not accepted again after the restart"
        );
        outcomes.extend(mine);
    }

    let in_topic = ids_in_topic(&topic);
    let accepted: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 202).collect();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 202).collect();
    for outcome in &accepted {
        for id in &outcome.ids {
            assert_eq!(
                in_topic.get(id).copied().unwrap_or(0),
                1,
                "event {id} was acknowledged with 202 but is in the topic {} times",
                in_topic.get(id).copied().unwrap_or(0)
            );
        }
    }
    let refused_events: usize = refused.iter().map(|o| o.ids.len()).sum();
    let refused_but_written: usize = refused
        .iter()
        .flat_map(|o| &o.ids)
        .filter(|id| in_topic.contains_key(*id))
        .count();
    eprintln!(
        "broker restart: {} requests accepted ({} events, all in the topic once), {} refused \
         ({refused_events} events, of which {refused_but_written} reached the topic anyway)",
        accepted.len(),
        accepted.len() * 5,
        refused.len()
    );
    assert!(
        !refused.is_empty(),
        "no request failed: the broker stop was not felt"
    );

    let _ = stop_ingest.send(());
    service.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of `ingest_kafka_brokers_up` on ingest's `/metrics`, once it was set.
async fn brokers_up(http: &reqwest::Client, url: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ingest_kafka_brokers_up "))
        .and_then(|value| value.trim().parse().ok())
}
