//! `projector replay --from` and `--projection` against the real broker.
//!
//! - `--from T` rebuilds from the records appended at or after T only, and every answer then
//!   counts the records left out in `lost_records`: nothing is hidden.
//! - `--projection NAME` rebuilds one projection in place, up to exactly the offsets of the
//!   live store: with its definition unchanged it rewrites the same bytes, with a changed one the
//!   node then serves the new definition without another rebuild; and it refuses when another
//!   projection differs from the file as well.
//! - A full replay stores the same bytes with one thread or a thread per partition.
//! - `--projection NAME --from T` rebuilds that projection's buckets from the one holding T on,
//!   and gives the same bytes as the state it replaced.

mod node;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node::{
    Node, producer, replay, replay_ok, send_record, test_dir, unique, wait_for, watermarks,
};
use projector::store::{Store, StoreEntry};
use schemas::{Record, SCHEMA_VERSION};

const PARTITIONS: i32 = 3;
const TENANT: &str = "replay-tenant";
const BATCH: usize = 300;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A view stamped with the wall clock, as ingest would stamp it.
fn view_now(n: usize) -> Record {
    let time_ms = now_ms();
    serde_json::from_value(serde_json::json!({
        "v": SCHEMA_VERSION,
        "tenant": TENANT,
        "id": format!("e-{n}"),
        "type": "view",
        "key": format!("user-{}", n % 70),
        "time_ms": time_ms,
        "received_ms": time_ms,
        "properties": { "path": format!("/p/{}", n % 10) },
    }))
    .unwrap()
}

/// The entries of the live store whose key belongs to `projection`'s sketches.
fn sketches_of(dir: &Path, projection: &str) -> Vec<StoreEntry> {
    let store = Store::open(&dir.join("live"), 1 << 20).unwrap();
    let mut prefix = vec![b'm'];
    prefix.extend_from_slice(&(projection.len() as u16).to_be_bytes());
    prefix.extend_from_slice(projection.as_bytes());
    store
        .entries()
        .unwrap()
        .into_iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .collect()
}

/// Every entry of the live store.
fn all_entries(dir: &Path) -> Vec<StoreEntry> {
    Store::open(&dir.join("live"), 1 << 20)
        .unwrap()
        .entries()
        .unwrap()
}

fn highs(topic: &str) -> Vec<i64> {
    watermarks(topic, PARTITIONS)
        .into_iter()
        .map(|(_, high)| high)
        .collect()
}

async fn lost_records(node: &Node) -> i64 {
    node.partitions()
        .await
        .unwrap()
        .values()
        .map(|p| p["lost_records"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_replay_from_a_time_and_of_one_projection() {
    let name = unique("replay-options");
    let dir = test_dir(&name);
    let topic = format!("events-{name}");
    testkit::create_topic(&topic, PARTITIONS).await;
    testkit::create_topic(&format!("{topic}.dead-letter"), 1).await;
    let producer = producer(Duration::from_secs(30));
    for n in 0..BATCH {
        send_record(&producer, &topic, PARTITIONS, &view_now(n)).await;
    }
    // Kafka stamps records with the producer's clock: a gap on both sides of `from` keeps every
    // record clearly before or after it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let from = now_ms();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for n in BATCH..2 * BATCH {
        send_record(&producer, &topic, PARTITIONS, &view_now(n)).await;
    }

    let mut node = Node::start(&dir, &topic, "live", "");
    node.wait_caught_up(&highs(&topic)).await;
    assert_eq!(
        node.events("visitors", TENANT).await.unwrap(),
        2 * BATCH as u64
    );
    node.stop();
    let visitors_before = sketches_of(&dir, "visitors");
    assert!(!visitors_before.is_empty());

    // A full replay stores the same bytes whether one thread folds every partition or each
    // partition has a thread of its own, and the same sketches as the node folded.
    replay_ok(&dir.join("live.toml"), &["--threads", "1"]);
    let one_thread = all_entries(&dir);
    replay_ok(&dir.join("live.toml"), &["--threads", "3"]);
    assert!(all_entries(&dir) == one_thread, "threads changed the store");
    assert_eq!(sketches_of(&dir, "visitors"), visitors_before);

    // One projection, definition unchanged: the same bytes, from the start or from a time.
    let summary = replay_ok(&dir.join("live.toml"), &["--projection", "visitors"]);
    assert!(
        summary.contains("into projection visitors only"),
        "{summary}"
    );
    assert_eq!(sketches_of(&dir, "visitors"), visitors_before);
    replay_ok(
        &dir.join("live.toml"),
        &["--projection", "visitors", "--from", &from.to_string()],
    );
    assert_eq!(sketches_of(&dir, "visitors"), visitors_before);

    // One projection with a changed definition: rebuilt in place, then served as it is.
    let text = std::fs::read_to_string(dir.join("projections.toml")).unwrap();
    let widened = text.replacen(
        "field = \"properties.path\"\nevent_type = \"view\"\nbucket = \"1h\"",
        "field = \"properties.path\"\nevent_type = \"view\"\nbucket = \"1d\"",
        1,
    );
    assert_ne!(widened, text);
    std::fs::write(dir.join("projections.toml"), &widened).unwrap();
    replay_ok(&dir.join("live.toml"), &["--projection", "top_paths"]);
    assert_eq!(sketches_of(&dir, "visitors"), visitors_before);
    node.restart();
    node.wait_caught_up(&highs(&topic)).await;
    let served = reqwest::get(format!(
        "http://127.0.0.1:{}/internal/v1/projections",
        node.port
    ))
    .await
    .unwrap()
    .json::<serde_json::Value>()
    .await
    .unwrap();
    assert!(served["rebuild"].is_null(), "no rebuild needed: {served}");
    let top_paths = served["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "top_paths")
        .unwrap()
        .clone();
    assert_eq!(top_paths["bucket_ms"], 86_400_000, "{top_paths}");
    assert_eq!(
        node.events("top_paths", TENANT).await.unwrap(),
        2 * BATCH as u64
    );
    node.stop();

    // With two projections changed, rebuilding one alone is refused.
    let both = widened
        .replacen("bucket = \"1d\"\n", "bucket = \"7d\"\n", 1)
        .replacen(
            "field = \"key\"\nevent_type = \"view\"\nbucket = \"1h\"",
            "field = \"key\"\nevent_type = \"view\"\nbucket = \"2h\"",
            1,
        );
    std::fs::write(dir.join("projections.toml"), &both).unwrap();
    let refused = replay(&dir.join("live.toml"), &["--projection", "visitors"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("also differ") && message.contains("full `projector replay`"),
        "{message}"
    );
    std::fs::write(dir.join("projections.toml"), &widened).unwrap();

    // The whole store from a time: only the later records, the earlier ones counted as lost.
    let summary = replay_ok(&dir.join("live.toml"), &["--from", &from.to_string()]);
    assert!(
        summary.contains(&format!("{BATCH} earlier records left out")),
        "{summary}"
    );
    node.restart();
    node.wait_caught_up(&highs(&topic)).await;
    assert_eq!(node.events("visitors", TENANT).await.unwrap(), BATCH as u64);
    let lost = wait_for(
        "lost records to show",
        Duration::from_secs(30),
        async || match lost_records(&node).await {
            lost if lost == BATCH as i64 => Ok(lost),
            lost => Err(format!("lost_records {lost}")),
        },
    )
    .await;
    assert_eq!(lost, BATCH as i64);
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
