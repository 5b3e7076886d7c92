//! The broker stopped and restarted while events stream in and the projector folds them: the same
//! projector process catches up by itself afterwards, and every exact count of every projection
//! equals the number of distinct events in the topic, which holds each event the broker
//! acknowledged once: none missing and none twice.
//!
//! Events are written straight to the topic as ingest writes them (idempotent producer, same
//! value, key, partition and header), with a delivery timeout longer than the outage, so events
//! sent while the broker is away are acknowledged once it is back. Every event has a key of its
//! own; one in four carries no event id, so for those only the stored offsets, not the
//! projector's duplicate check, keep a record from being folded twice.
//!
//! The load after the restart comes from a second producer. On a loaded two-core machine the
//! first one, an idempotent librdkafka producer with records queued across the outage, now and
//! then sent nothing more once the broker was back (every later record timed out, none reached
//! the broker; seen once in about ten runs, never with librdkafka's debug log on). What this test
//! is about is the projector, so it does not depend on that: records the first producer never
//! got acknowledged are allowed, and the second one makes sure there is load after the restart.
//!
//! This stops and starts the broker at `KAFKA_BOOTSTRAP` with `deploy/kafka.sh` (same port,
//! same data), so it is the only test of its binary: cargo runs test binaries one at a time, and
//! no other test sees the broker go away.

mod node;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use schemas::{SCHEMA_VERSION, partition_for};
use testkit::{bootstrap, create_topic};

use node::{Node, version_header, view, wait_for};

const PARTITIONS: i32 = 3;
const TENANT: &str = "restart-tenant";
const PROJECTIONS: [&str; 3] = ["visitors", "top_paths", "known_visitors"];

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

/// Writes events until `producing` is cleared: 20 every 50 ms, each sent without waiting for
/// the one before, numbered from `first` and counted in `sent`. Returns the keys the broker
/// acknowledged and the number of sends that failed.
async fn produce(
    topic: String,
    message_timeout: Duration,
    first: usize,
    producing: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> (Vec<String>, usize) {
    let producer = node::producer(message_timeout);
    let mut deliveries = Vec::new();
    let mut n = first;
    while producing.load(Ordering::Relaxed) {
        for _ in 0..20 {
            let key = format!("visitor-{n}");
            let id = (n % 4 != 0).then(|| format!("event-{n}"));
            let record = view(TENANT, &key, id, n);
            let partition = partition_for(&key, PARTITIONS as u32);
            let value = record.to_bytes();
            let delivery = producer
                .send_result(
                    FutureRecord::<[u8], [u8]>::to(&topic)
                        .partition(partition)
                        .key(record.kafka_key())
                        .payload(&value)
                        .headers(version_header(&SCHEMA_VERSION.to_string())),
                )
                .unwrap_or_else(|(e, _)| panic!("cannot queue a record: {e}"));
            deliveries.push((key, delivery));
            n += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for (key, delivery) in deliveries {
        match delivery.await.expect("delivery reported") {
            Ok(_) => acknowledged.push(key),
            Err(_) => failed += 1,
        }
    }
    (acknowledged, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_broker_restart_under_load_counts_every_event_once() {
    let name = node::unique("restart");
    let dir = node::test_dir(&name);
    let topic = format!("events-{name}");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&format!("{topic}.dead-letter"), 1).await;
    let mut node = Node::start(&dir, &topic, "node", "");
    let pid = node.pid();
    wait_for(
        "all partitions assigned",
        Duration::from_secs(60),
        async || {
            let partitions = node.partitions().await?;
            if partitions.len() == PARTITIONS as usize {
                Ok(())
            } else {
                Err(format!("{partitions:?}"))
            }
        },
    )
    .await;

    // The first producer's records sent during the outage wait for the broker, up to a minute.
    let producing = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(
        topic.clone(),
        Duration::from_secs(60),
        0,
        producing.clone(),
        sent.clone(),
    ));

    // Load before the outage, folded as it comes.
    wait_for(
        "the node to fold the first events",
        Duration::from_secs(60),
        async || match node.events("visitors", TENANT).await? {
            folded if folded >= 200 => Ok(()),
            folded => Err(format!("{folded} folded")),
        },
    )
    .await;
    let folded_before = node.events("visitors", TENANT).await.unwrap();

    let started = Instant::now();
    tokio::task::spawn_blocking(|| kafka_script("stop"))
        .await
        .unwrap();
    let sent_at_stop = sent.load(Ordering::Relaxed);
    // The outage lasts while the node retries against no broker at all.
    tokio::time::sleep(Duration::from_secs(5)).await;
    node.assert_alive();
    tokio::task::spawn_blocking(|| kafka_script("start"))
        .await
        .unwrap();
    let outage = started.elapsed();
    node.assert_alive();

    // Load after the broker is back, from the first producer and a second one, then the end of
    // the stream. The second producer's keys are numbered apart from the first's.
    let sent_at_start = sent.load(Ordering::Relaxed);
    let second_sent = Arc::new(AtomicUsize::new(0));
    let second = tokio::spawn(produce(
        topic.clone(),
        Duration::from_secs(60),
        1_000_000,
        producing.clone(),
        second_sent.clone(),
    ));
    wait_for(
        "more events to be sent after the restart",
        Duration::from_secs(60),
        async || match second_sent.load(Ordering::Relaxed) {
            now if now >= 1_000 => Ok(()),
            now => Err(format!("{now} sent")),
        },
    )
    .await;
    producing.store(false, Ordering::Relaxed);
    let (mut acknowledged, mut failed) = producer.await.unwrap();
    let first_acknowledged = acknowledged.len();
    let (second_acknowledged, second_failed) = second.await.unwrap();
    // The second producer starts after the broker is back: it must not lose a record.
    assert_eq!(
        second_failed, 0,
        "records of the producer started after the restart failed"
    );
    acknowledged.extend(second_acknowledged);
    failed += second_failed;
    let stream_ended = Instant::now();

    // The topic holds each acknowledged event once, and nothing twice. (An event whose delivery
    // failed may be in it or not; the counts below are checked against the topic.)
    let in_topic = node::read_topic(&topic, PARTITIONS);
    let mut copies: HashMap<String, usize> = HashMap::new();
    for record in &in_topic {
        let key = String::from_utf8(record.key.clone().expect("a key")).unwrap();
        *copies.entry(key).or_default() += 1;
    }
    for key in &acknowledged {
        assert_eq!(copies.get(key), Some(&1), "event {key} in the topic");
    }
    for (key, &n) in &copies {
        assert_eq!(n, 1, "event {key} is {n} times in the topic");
    }
    let distinct = copies.len() as u64;

    // The same process catches up by itself and counts each event once.
    let highs: Vec<i64> = node::watermarks(&topic, PARTITIONS)
        .iter()
        .map(|&(_, high)| high)
        .collect();
    node.wait_caught_up(&highs).await;
    let catch_up = stream_ended.elapsed();
    node.assert_alive();
    assert_eq!(node.pid(), pid);
    for projection in PROJECTIONS {
        assert_eq!(
            node.events(projection, TENANT).await.unwrap(),
            distinct,
            "events folded into {projection}"
        );
    }
    eprintln!(
        "broker restart: {} events acknowledged ({first_acknowledged} from the first producer), \
         {failed} failed, {distinct} distinct in the topic ({sent_at_stop} sent before the \
         stop, {sent_at_start} by the restart); \
         {folded_before} folded before the stop; broker away {outage:?}; all folded \
         {catch_up:?} after the last acknowledgement (the topic read back meanwhile); every \
         projection counts {distinct}",
        acknowledged.len(),
    );
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
