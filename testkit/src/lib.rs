//! Support for tests that cross the real Kafka broker: where it is, and topics that are ready
//! when a test starts its services.
//!
//! The broker address comes from `KAFKA_BOOTSTRAP` (`deploy/test.sh` starts a broker and sets
//! it); a test that needs the broker fails, never skips, when it is unset.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Projections over `view` events that the broker tests fold: distinct keys, top paths and
/// known keys. The membership table comes last, so a test may append parameters to it.
pub const VIEW_PROJECTIONS: &str = r#"
[[projection]]
name = "visitors"
kind = "distinct"
field = "key"
event_type = "view"
bucket = "1h"

[[projection]]
name = "top_paths"
kind = "top"
field = "properties.path"
event_type = "view"
bucket = "1h"

[[projection]]
name = "visitors_by_path"
kind = "distinct"
field = "key"
event_type = "view"
bucket = "1h"
group_by = "properties.path"

[[projection]]
name = "known_visitors"
kind = "membership"
field = "key"
event_type = "view"
bucket = "1d"
"#;

/// The broker the tests use.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: these tests need a real broker; run deploy/test.sh, or start \
         one with deploy/kafka.sh start and set KAFKA_BOOTSTRAP=127.0.0.1:9092",
    )
}

/// Creates `name` with `partitions` partitions and waits until every partition has a leader:
/// creation returns before that, and a service started in between would not find the topic.
pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &options)
        .await
        .expect("create topic")
    {
        result.expect("topic created");
    }
    wait_for_topic(name, partitions);
}

/// Waits until the broker's metadata shows `name` with `partitions` partitions, all led.
pub fn wait_for_topic(name: &str, partitions: i32) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("metadata client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .is_ok_and(|metadata| {
                metadata.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}
