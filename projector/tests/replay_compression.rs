//! `projector replay` over records compressed with each codec a producer may choose, written
//! straight to the topic: gzip, snappy, lz4 and zstd (Java clients often use zstd). A codec the
//! projector could not read would stall every partition that holds one such record.

mod node;

use std::time::Duration;

use node::{replay_ok, test_dir, unique, view, watermarks, write_config};
use projector::store::Store;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TENANT: &str = "codec-tenant";
const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];
const RECORDS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_replay_reads_every_compression_codec() {
    let name = unique("replay-codecs");
    let dir = test_dir(&name);
    let topic = format!("events-{name}");
    testkit::create_topic(&topic, CODECS.len() as i32).await;
    testkit::create_topic(&format!("{topic}.dead-letter"), 1).await;

    // Partition i holds the records of codec i.
    for (partition, codec) in CODECS.iter().enumerate() {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", testkit::bootstrap())
            .set("compression.type", *codec)
            .set("linger.ms", "20")
            .create()
            .unwrap_or_else(|e| panic!("a {codec} producer: {e}"));
        for n in 0..RECORDS {
            let record = view(TENANT, &format!("{codec}-user-{n}"), None, n);
            let bytes = record.to_bytes();
            producer
                .send(
                    BaseRecord::to(&topic)
                        .partition(partition as i32)
                        .key(record.kafka_key())
                        .payload(&bytes),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    let highs: Vec<i64> = watermarks(&topic, CODECS.len() as i32)
        .into_iter()
        .map(|(_, high)| high)
        .collect();
    assert_eq!(highs, [RECORDS as i64; 4]);

    let config = write_config(&dir, &topic);
    replay_ok(&config, &[]);

    let store = Store::open(&dir.join("live"), 1 << 20).unwrap();
    for (partition, codec) in CODECS.iter().enumerate() {
        let folded = store
            .merged_range("visitors", TENANT, i64::MIN, i64::MAX, |p| {
                p == partition as i32
            })
            .unwrap()
            .map_or(0, |model| model.events());
        assert_eq!(folded, RECORDS as u64, "{codec}");
    }
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}
