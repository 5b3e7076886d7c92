//! Poison records whose dead-letter write fails stall their partition, and only theirs, until
//! the dead-letter topic takes them; then the partition moves on by itself and nothing is lost,
//! skipped or written twice.
//!
//! Runs the real `projector` binary against the real broker at `KAFKA_BOOTSTRAP`, whose topics
//! are never created automatically. A node refuses to start without its dead-letter topic, so the
//! test first shows that refusal, then starts the node with the topic and deletes the topic under
//! it before the poison records arrive: a record that is not JSON and one of schema version 2
//! (value `"v": 2` and header `schema-version: 2`).

mod node;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use schemas::Record;
use serde_json::json;
use testkit::{bootstrap, create_topic};

use node::{Node, keys_on, send_raw, send_record, version_header, view, wait_for};

const PARTITIONS: i32 = 3;
/// Good records written to each partition before, between and after the poison records.
const RUN: usize = 30;
/// How long the test holds the stall before it creates the dead-letter topic: longer than the
/// node's 5 s retry interval, so the node keeps failing and retrying meanwhile.
const HELD_STALLED: Duration = Duration::from_secs(12);

/// Writes good records and counts them by tenant.
struct Writer {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    keys: Vec<Box<dyn Iterator<Item = String> + Send>>,
    written: HashMap<String, u64>,
    next: usize,
}

impl Writer {
    /// `count` good view events of tenant `t<partition>` on `partition`.
    async fn good(&mut self, partition: i32, count: usize) {
        let tenant = format!("t{partition}");
        for _ in 0..count {
            let key = self.keys[partition as usize].next().unwrap();
            let record = view(&tenant, &key, Some(format!("id-{}", self.next)), self.next);
            self.next += 1;
            let (landed, _) = send_record(&self.producer, &self.topic, PARTITIONS, &record).await;
            assert_eq!(landed, partition);
            *self.written.entry(tenant.clone()).or_default() += 1;
        }
    }

    /// A poison record on `partition`; returns its offset.
    async fn poison(&mut self, partition: i32, value: &[u8], schema_version: &str) -> i64 {
        let key = self.keys[partition as usize].next().unwrap();
        let (_, offset) = send_raw(
            &self.producer,
            &self.topic,
            partition,
            Some(key.as_bytes()),
            value,
            version_header(schema_version),
        )
        .await;
        offset
    }

    fn written(&self, partition: i32) -> u64 {
        self.written
            .get(&format!("t{partition}"))
            .copied()
            .unwrap_or(0)
    }
}

/// A record of a future schema version: what a newer producer would write.
fn version_two_record(key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 2,
        "tenant": "t1",
        "id": "from-the-future",
        "type": "view",
        "key": key,
        "time_ms": 1_700_000_000_000i64,
        "received_ms": 1_700_000_000_000i64,
        "origin": "a field version 1 does not have",
    }))
    .unwrap()
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap()
}

/// Whether the broker's metadata lists `topic`.
fn topic_exists(topic: &str) -> bool {
    node::metadata_client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|metadata| {
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_failed_dead_letter_write_stalls_only_its_partition_until_the_topic_exists() {
    let name = node::unique("stall");
    let dir = node::test_dir(&name);
    let topic = format!("events-{name}");
    let dead_letter_topic = format!("{topic}.dead-letter");
    create_topic(&topic, PARTITIONS).await;

    // Without its dead-letter topic a node does not start, and says what to create.
    let extra = "dead_letter_timeout_ms = 3000";
    let mut node = Node::start(&dir, &topic, "node", extra);
    assert!(
        !node.wait_exit(Duration::from_secs(60)),
        "a node without its dead-letter topic exited successfully"
    );
    let refusal = format!("dead-letter topic {dead_letter_topic} does not exist: create it");
    assert!(
        node.log_text().contains(&refusal),
        "the node did not say {refusal:?}; end of its log:\n{}",
        node.log_tail()
    );

    // With the topic it starts; then the topic goes away under it.
    create_topic(&dead_letter_topic, 1).await;
    node.restart();
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
    let deleted = admin()
        .delete_topics(&[&dead_letter_topic], &AdminOptions::new())
        .await
        .expect("delete topics request");
    for result in deleted {
        result.expect("dead-letter topic deleted");
    }
    wait_for(
        "the dead-letter topic to vanish from the metadata",
        Duration::from_secs(30),
        async || {
            if topic_exists(&dead_letter_topic) {
                Err("still listed".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;

    // Partition 0: good, not JSON, good, version 2, good. Partition 1: good, version 2, good.
    // Partition 2: good only.
    let mut writer = Writer {
        producer: node::producer(Duration::from_secs(30)),
        topic: topic.clone(),
        keys: (0..PARTITIONS)
            .map(|p| Box::new(keys_on(p, PARTITIONS, "user")) as Box<dyn Iterator<Item = _> + Send>)
            .collect(),
        written: HashMap::new(),
        next: 0,
    };
    let not_json = b"{\"v\": 1, \"tenant\": \"t0\", not json".to_vec();
    writer.good(0, RUN).await;
    let not_json_offset = writer.poison(0, &not_json, "1").await;
    writer.good(0, RUN).await;
    let version_two_p0 = version_two_record("user-p0-v2");
    let version_two_p0_offset = writer.poison(0, &version_two_p0, "2").await;
    writer.good(0, RUN).await;
    writer.good(1, RUN).await;
    let version_two_p1 = version_two_record("user-p1-v2");
    let version_two_p1_offset = writer.poison(1, &version_two_p1, "2").await;
    writer.good(1, RUN).await;
    writer.good(2, RUN).await;
    assert_eq!(
        (not_json_offset, version_two_p1_offset),
        (RUN as i64, RUN as i64)
    );

    // Partitions 0 and 1 stop right before their first poison record and say why.
    let stalled = wait_for(
        "partitions 0 and 1 to report themselves stalled at their poison records",
        Duration::from_secs(60),
        async || {
            let partitions = node.partitions().await?;
            let ok = [0, 1].iter().all(|p| {
                partitions.get(p).is_some_and(|s| {
                    s["stalled"].is_string() && s["next_offset"] == json!(RUN as i64)
                })
            });
            if ok {
                Ok(partitions)
            } else {
                Err(format!("{partitions:?}"))
            }
        },
    )
    .await;
    let stalled_at = Instant::now();
    let reason_0 = stalled[&0]["stalled"].as_str().unwrap();
    assert!(
        reason_0.contains(&format!("offset {not_json_offset}")) && reason_0.contains("not JSON"),
        "{reason_0}"
    );
    let reason_1 = stalled[&1]["stalled"].as_str().unwrap();
    assert!(
        reason_1.contains(&format!("offset {version_two_p1_offset}"))
            && reason_1.contains("schema version 2 is not supported"),
        "{reason_1}"
    );
    for partition in [0, 1] {
        assert_eq!(
            node.partition_metric("projector_partition_stalled", partition)
                .await
                .unwrap(),
            Some(1.0),
            "stalled gauge of partition {partition}"
        );
    }
    eprintln!("dead-letter stall: partition 0 says {reason_0:?}; partition 1 says {reason_1:?}");

    // The other partition keeps going: more records, folded while 0 and 1 hold still.
    writer.good(2, 40).await;
    writer.good(0, 10).await;
    writer.good(1, 10).await;
    wait_for(
        "partition 2 to fold its new records",
        Duration::from_secs(60),
        async || match node.events("visitors", "t2").await? {
            folded if folded == writer.written(2) => Ok(()),
            folded => Err(format!("{folded} of {} events", writer.written(2))),
        },
    )
    .await;

    // Hold the stall across several retries while partition 2 takes one record at a time: each
    // is folded, nothing behind the poison records is, and the node keeps running. How long a
    // record of partition 2 waited is printed, not judged.
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while stalled_at.elapsed() < HELD_STALLED {
        let sent = Instant::now();
        writer.good(2, 1).await;
        wait_for(
            "partition 2 to fold a record written during the stall",
            Duration::from_secs(60),
            async || match node.events("visitors", "t2").await? {
                folded if folded == writer.written(2) => Ok(()),
                folded => Err(format!("{folded} of {} events", writer.written(2))),
            },
        )
        .await;
        slowest = slowest.max(sent.elapsed());
        probes += 1;
        node.assert_alive();
    }
    let partitions = node.partitions().await.unwrap();
    for partition in [0, 1] {
        let status = &partitions[&partition];
        assert_eq!(status["next_offset"], json!(RUN as i64), "{status}");
        assert!(status["stalled"].is_string(), "{status}");
        assert_eq!(
            node.events("visitors", &format!("t{partition}"))
                .await
                .unwrap(),
            RUN as u64,
            "partition {partition} folded records behind its poison record"
        );
    }
    eprintln!(
        "dead-letter stall: held {:?}; partitions 0 and 1 at offset {RUN}, partition 2 folded {} \
         events meanwhile; the slowest of {probes} single records written to it took {slowest:?} \
         to be folded (checked every 200 ms)",
        stalled_at.elapsed(),
        writer.written(2)
    );

    // The topic comes back: the node writes the dead letters and moves on by itself.
    let highs: Vec<i64> = node::watermarks(&topic, PARTITIONS)
        .iter()
        .map(|&(_, high)| high)
        .collect();
    create_topic(&dead_letter_topic, 1).await;
    let resumed_after = Instant::now();
    let final_partitions = node.wait_caught_up(&highs).await;
    eprintln!(
        "dead-letter stall: caught up {:?} after the topic was created",
        resumed_after.elapsed()
    );
    for partition in 0..PARTITIONS {
        let status = &final_partitions[&partition];
        assert!(status["stalled"].is_null(), "{status}");
        assert_eq!(
            node.events("visitors", &format!("t{partition}"))
                .await
                .unwrap(),
            writer.written(partition),
            "tenant t{partition}: events folded differ from good records written"
        );
    }
    for partition in [0, 1] {
        assert_eq!(
            node.partition_metric("projector_partition_stalled", partition)
                .await
                .unwrap(),
            Some(0.0)
        );
    }
    node.assert_alive();
    node.stop();

    // Each poison record is in the dead-letter topic exactly once, with its reason and origin.
    let dead_letters = node::read_topic(&dead_letter_topic, 1);
    let mut by_origin: HashMap<(String, String), Vec<&node::Stored>> = HashMap::new();
    for letter in &dead_letters {
        let origin = (
            letter.headers["origin-partition"].clone(),
            letter.headers["origin-offset"].clone(),
        );
        by_origin.entry(origin).or_default().push(letter);
    }
    let expected = [
        (0, not_json_offset, &not_json, "record value is not JSON"),
        (
            0,
            version_two_p0_offset,
            &version_two_p0,
            "record schema version 2 is not supported",
        ),
        (
            1,
            version_two_p1_offset,
            &version_two_p1,
            "record schema version 2 is not supported",
        ),
    ];
    assert_eq!(
        dead_letters.len(),
        expected.len(),
        "dead letters by origin: {:?}",
        by_origin.keys().collect::<Vec<_>>()
    );
    for (partition, offset, value, reason) in expected {
        let letters = &by_origin[&(partition.to_string(), offset.to_string())];
        assert_eq!(
            letters.len(),
            1,
            "poison record at {partition}/{offset} dead-lettered {} times",
            letters.len()
        );
        let letter = letters[0];
        assert!(
            letter.headers["dead-letter-reason"].starts_with(reason),
            "{:?}",
            letter.headers
        );
        assert_eq!(letter.headers["origin-topic"], topic);
        assert_eq!(
            letter.headers["origin-value-bytes"],
            value.len().to_string()
        );
        assert_eq!(letter.value.as_deref(), Some(&value[..]));
        assert!(Record::from_bytes(value).is_err());
    }
    eprintln!(
        "dead-letter stall: {} dead letters, one per poison record; good records folded per \
         tenant: t0 {}, t1 {}, t2 {}",
        dead_letters.len(),
        writer.written(0),
        writer.written(1),
        writer.written(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
