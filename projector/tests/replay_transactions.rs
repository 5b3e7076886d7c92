//! `projector replay` over a log a transactional producer wrote to, against the real broker.
//!
//! A transaction's commit or abort marker takes an offset, and so do the records of an aborted
//! transaction, yet the consumer never hands them over: a partition whose last offsets are such
//! is done once the consumer's position reaches its target, not when a record at the target - 1
//! arrives. Records that keep arriving in another partition during the replay (past its target)
//! must not hide a partition that is short of its target either.

mod node;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use node::{keys_on, producer, send_record, test_dir, unique, view, watermarks, write_config};
use projector::store::Store;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::Record;

const TENANT: &str = "txn-tenant";

fn send_in_transaction(producer: &BaseProducer, topic: &str, records: &[Record]) {
    for record in records {
        let bytes = record.to_bytes();
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(0)
                    .key(record.kafka_key())
                    .payload(&bytes),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_replay_reads_past_transaction_markers_while_records_arrive() {
    let name = unique("replay-txn");
    let dir = test_dir(&name);
    let topic = format!("events-{name}");
    testkit::create_topic(&topic, 2).await;
    testkit::create_topic(&format!("{topic}.dead-letter"), 1).await;

    // Partition 0: five records in a committed transaction, then two in an aborted one, so its
    // last three offsets hold a marker, two aborted records and a marker.
    let keys: Vec<String> = keys_on(0, 2, "txn").take(7).collect();
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| view(TENANT, key, Some(format!("t-{n}")), n))
        .collect();
    let transactional: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", testkit::bootstrap())
        .set("transactional.id", format!("{name}-tx"))
        .create()
        .unwrap();
    transactional
        .init_transactions(Duration::from_secs(30))
        .unwrap();
    transactional.begin_transaction().unwrap();
    send_in_transaction(&transactional, &topic, &records[..5]);
    transactional
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    transactional.begin_transaction().unwrap();
    send_in_transaction(&transactional, &topic, &records[5..]);
    transactional
        .abort_transaction(Duration::from_secs(30))
        .unwrap();
    let high_0 = watermarks(&topic, 2)[0].1;
    assert_eq!(
        high_0, 9,
        "5 records, a marker, 2 aborted records, a marker"
    );

    // Partition 1: plain records, and more of them all through the replay.
    let plain = producer(Duration::from_secs(30));
    let mut keys_1 = keys_on(1, 2, "plain");
    for n in 0..3 {
        let key = keys_1.next().unwrap();
        send_record(&plain, &topic, 2, &view(TENANT, &key, None, n)).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let trickle = tokio::spawn({
        let (done, topic) = (Arc::clone(&done), topic.clone());
        async move {
            let mut n = 3;
            while !done.load(Ordering::Relaxed) {
                let key = keys_1.next().unwrap();
                send_record(&plain, &topic, 2, &view(TENANT, &key, None, n)).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let config = write_config(&dir, &topic);
    // Before the fix the replay waited for offset 8 until its stall timeout (60 s), or for ever
    // while partition 1 kept receiving records.
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["replay", "--threads", "1", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(45) {
            child.kill().unwrap();
            panic!("the replay did not finish in 45 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    done.store(true, Ordering::Relaxed);
    trickle.await.unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Partition 0 is stored at its high watermark, holding the committed records only.
    let store = Store::open(&dir.join("live"), 1 << 20).unwrap();
    let offsets = store.offsets().unwrap();
    assert_eq!(offsets[&0].next_offset, high_0, "{offsets:?}");
    let partition_0 = store
        .merged_range("visitors", TENANT, i64::MIN, i64::MAX, |p| p == 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        partition_0.events(),
        5,
        "the aborted records are not folded"
    );
    let partition_1 = store
        .merged_range("visitors", TENANT, i64::MIN, i64::MAX, |p| p == 1)
        .unwrap()
        .unwrap();
    assert!(partition_1.events() >= 3, "{}", partition_1.events());
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}
