//! The event topic deleted and created again under a node's store: the store's positions lie
//! past the end of the new log. The node must not fold the new records on top of read models of
//! the old log, nor sit silently: each such partition reports itself stalled with the fix, and
//! its read models stay as they were.

mod node;

use std::time::Duration;

use node::{Node, producer, replay, send_record, test_dir, unique, view, wait_for, watermarks};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

const PARTITIONS: i32 = 2;
const TENANT: &str = "replaced-tenant";

fn highs(topic: &str) -> Vec<i64> {
    watermarks(topic, PARTITIONS)
        .into_iter()
        .map(|(_, high)| high)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_recreated_topic_stalls_the_partitions_whose_store_is_past_its_end() {
    let name = unique("replaced");
    let dir = test_dir(&name);
    let topic = format!("events-{name}");
    testkit::create_topic(&topic, PARTITIONS).await;
    testkit::create_topic(&format!("{topic}.dead-letter"), 1).await;
    let producer = producer(Duration::from_secs(30));
    for n in 0..200 {
        let key = format!("user-{n}");
        send_record(&producer, &topic, PARTITIONS, &view(TENANT, &key, None, n)).await;
    }
    let mut node = Node::start(&dir, &topic, "live", "");
    node.wait_caught_up(&highs(&topic)).await;
    node.stop();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", testkit::bootstrap())
        .create()
        .unwrap();
    for result in admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.expect("topic deleted");
    }
    // Deletion finishes in the background; creating too early fails, so retry.
    wait_for(
        "the topic to be created again",
        Duration::from_secs(60),
        async || {
            let topic = rdkafka::admin::NewTopic::new(
                &topic,
                PARTITIONS,
                rdkafka::admin::TopicReplication::Fixed(1),
            );
            match admin.create_topics([&topic], &AdminOptions::new()).await {
                Ok(results) => match results.into_iter().next() {
                    Some(Ok(_)) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    testkit::wait_for_topic(&topic, PARTITIONS);
    // A few records only: far below where the store stands on each partition.
    for n in 0..6 {
        let key = format!("other-{n}");
        send_record(&producer, &topic, PARTITIONS, &view(TENANT, &key, None, n)).await;
    }

    node.restart();
    let statuses = wait_for(
        "both partitions to report themselves stalled",
        Duration::from_secs(60),
        async || {
            let partitions = node.partitions().await?;
            let stalled: Vec<String> = partitions
                .values()
                .filter_map(|p| p["stalled"].as_str().map(str::to_owned))
                .collect();
            if partitions.len() == PARTITIONS as usize && stalled.len() == PARTITIONS as usize {
                Ok(stalled)
            } else {
                Err(format!("{partitions:?}"))
            }
        },
    )
    .await;
    for reason in &statuses {
        assert!(
            reason.contains("past the end of its log") && reason.contains("projector replay"),
            "{reason}"
        );
    }
    for partition in 0..PARTITIONS {
        assert_eq!(
            node.partition_metric("projector_partition_stalled", partition)
                .await
                .unwrap(),
            Some(1.0)
        );
    }
    // Nothing of the new log was folded on top of the old read models.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.events("visitors", TENANT).await.unwrap(), 200);
    node.assert_alive();
    node.stop();

    // A rebuild of one projection up to the store's offsets refuses at once, saying why, rather
    // than waiting for records the new log will never hold.
    let output = replay(&dir.join("live.toml"), &["--projection", "visitors"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("past the end of the log") && stderr.contains("without --projection"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
