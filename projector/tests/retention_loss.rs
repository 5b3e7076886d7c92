//! Records deleted from the log before the projector folded them are counted as lost, exactly,
//! and the loss stays visible: in `projector_records_lost_total`, in every partition status of
//! the internal endpoint (which the query API passes on as freshness), and again after a restart.
//! The node then folds what the log still holds from its new start, nothing more and nothing
//! twice.
//!
//! Runs the real `projector` binary against the real broker at `KAFKA_BOOTSTRAP`, and moves the
//! log start of partitions forward with the admin DeleteRecords request while the node is
//! stopped, as retention would.

mod node;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use testkit::{bootstrap, create_topic};

use node::{Node, keys_on, send_record, view};

const PARTITIONS: i32 = 3;
const TENANT: &str = "retention-tenant";
/// Records written to each partition before the node stops, and after.
const FOLDED: i64 = 60;
const UNFOLDED: i64 = 60;

/// Moves the log start of each listed partition to the given offset.
async fn delete_records(topic: &str, before: &[(i32, i64)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    for &(partition, offset) in before {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin
        .delete_records(&offsets, &options)
        .await
        .expect("delete records request");
    for element in result.elements() {
        element
            .error()
            .unwrap_or_else(|e| panic!("delete records of partition {}: {e}", element.partition()));
    }
}

fn lost_by_partition(statuses: &[Value]) -> Vec<i64> {
    let mut lost = vec![-1; PARTITIONS as usize];
    for status in statuses {
        lost[status["partition"].as_i64().unwrap() as usize] =
            status["lost_records"].as_i64().unwrap();
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_records_deleted_before_folding_are_reported_lost_exactly() {
    let name = node::unique("retention");
    let dir = node::test_dir(&name);
    let topic = format!("events-{name}");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&format!("{topic}.dead-letter"), 1).await;
    let producer = node::producer(Duration::from_secs(30));
    let mut keys: Vec<_> = (0..PARTITIONS)
        .map(|p| keys_on(p, PARTITIONS, "visitor"))
        .collect();
    let mut n = 0;
    let mut write = async |partition: i32, count: i64| {
        for _ in 0..count {
            let key = keys[partition as usize].next().unwrap();
            let record = view(TENANT, &key, Some(format!("event-{n}")), n);
            n += 1;
            send_record(&producer, &topic, PARTITIONS, &record).await;
        }
    };

    // The node folds the first records of every partition, then stops.
    for partition in 0..PARTITIONS {
        write(partition, FOLDED).await;
    }
    let mut node = Node::start(&dir, &topic, "node", "");
    node.wait_caught_up(&[FOLDED; PARTITIONS as usize]).await;
    assert_eq!(
        node.events("visitors", TENANT).await.unwrap(),
        (FOLDED * PARTITIONS as i64) as u64
    );
    node.stop();

    // More records arrive while it is down, and the log start moves past some of them:
    // partition 0 loses 25 unfolded records, partition 1 only records already folded,
    // partition 2 every unfolded record.
    for partition in 0..PARTITIONS {
        write(partition, UNFOLDED).await;
    }
    let end = FOLDED + UNFOLDED;
    let new_starts = [(0, FOLDED + 25), (1, FOLDED), (2, end)];
    delete_records(&topic, &new_starts).await;
    let watermarks = node::watermarks(&topic, PARTITIONS);
    assert_eq!(
        watermarks,
        vec![(FOLDED + 25, end), (FOLDED, end), (end, end)],
        "the log start did not move as asked"
    );
    let expected_lost = vec![25, 0, UNFOLDED];

    // Restarted, the node reports exactly what it missed and folds what is left.
    node.restart();
    let statuses = node.wait_caught_up(&[end; PARTITIONS as usize]).await;
    let statuses: Vec<Value> = statuses.into_values().collect();
    assert_eq!(lost_by_partition(&statuses), expected_lost);
    for partition in 0..PARTITIONS {
        let counted = node
            .partition_metric("projector_records_lost_total", partition)
            .await
            .unwrap()
            .unwrap_or(0.0);
        assert_eq!(
            counted, expected_lost[partition as usize] as f64,
            "projector_records_lost_total of partition {partition}"
        );
    }
    // The freshness the query API reads with every read model carries the same numbers.
    let answer = node.read_model_answer("visitors", TENANT).await.unwrap();
    assert_eq!(
        lost_by_partition(answer["partitions"].as_array().unwrap()),
        expected_lost,
        "{answer}"
    );
    let still_in_log: i64 = watermarks.iter().map(|(low, high)| high - low).sum();
    let folded_before = FOLDED * PARTITIONS as i64;
    // Records of partition 1 below its new start were folded before they were deleted.
    let folded_after = still_in_log;
    let expected_events = (folded_before + folded_after) as u64;
    assert_eq!(
        node.events("visitors", TENANT).await.unwrap(),
        expected_events,
        "events folded differ from the records the node could read"
    );
    eprintln!(
        "retention loss: lost {expected_lost:?} by partition; folded {folded_before} before the \
         deletion and {folded_after} after it; {expected_events} events in the read model"
    );

    // The loss is stored with the state: a restart still reports it, and counts nothing again.
    node.stop();
    node.restart();
    let statuses = node.wait_caught_up(&[end; PARTITIONS as usize]).await;
    let statuses: Vec<Value> = statuses.into_values().collect();
    assert_eq!(lost_by_partition(&statuses), expected_lost);
    for partition in 0..PARTITIONS {
        assert_eq!(
            node.partition_metric("projector_records_lost_total", partition)
                .await
                .unwrap(),
            None,
            "a restart counted the loss of partition {partition} again"
        );
    }
    assert_eq!(
        node.events("visitors", TENANT).await.unwrap(),
        expected_events
    );
    assert_eq!(statuses.len(), PARTITIONS as usize, "{}", json!(statuses));

    // While the node runs: frozen (SIGSTOP) for the moment it takes to write 40 records to
    // partition 0 and delete the first 15 of them, it then finds its position below the log
    // start ("offset out of range") and records that loss too. A fetch answered just before the
    // deletion may already hold the first of the 40, so the exact split between folded and lost
    // is the node's to report; every record must be on exactly one side.
    node.signal("STOP");
    write(0, 40).await;
    delete_records(&topic, &[(0, end + 15)]).await;
    node.signal("CONT");
    let statuses = node.wait_caught_up(&[end + 40, end, end]).await;
    let statuses: Vec<Value> = statuses.into_values().collect();
    let lost = lost_by_partition(&statuses);
    let lost_while_running = lost[0] - expected_lost[0];
    assert!(
        (1..=15).contains(&lost_while_running),
        "{lost_while_running} records of partition 0 reported lost while running"
    );
    assert_eq!(lost[1..], expected_lost[1..]);
    assert_eq!(
        node.partition_metric("projector_records_lost_total", 0)
            .await
            .unwrap(),
        Some(lost_while_running as f64),
        "this run's loss on partition 0"
    );
    let folded_while_running = node.events("visitors", TENANT).await.unwrap() - expected_events;
    assert_eq!(
        folded_while_running as i64 + lost_while_running,
        40,
        "of 40 new records {folded_while_running} were folded and {lost_while_running} lost"
    );
    eprintln!(
        "retention loss: while running, {lost_while_running} of 40 new records lost and \
         {folded_while_running} folded; lost {lost:?} by partition in all"
    );
    node.assert_alive();
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
