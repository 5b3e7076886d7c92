//! A projection file changed under a running node: the node keeps answering from the old
//! definitions while it builds the new ones beside them from offset 0, switches once the build
//! caught up, and then serves exactly what a clean replay of the whole log with the new file
//! builds, byte for byte, although events kept arriving throughout.

mod node;

use std::collections::BTreeMap;
use std::time::Duration;

use node::{Node, producer, replay_ok, send_record, test_dir, unique, view, wait_for, watermarks};
use readmodel::ProjectionFile;
use serde_json::Value;

const PARTITIONS: i32 = 3;
const TENANT: &str = "rebuild-tenant";
const BEFORE: usize = 3_000;
const DURING: usize = 3_000;

/// The file after the change: one projection's buckets widened (a changed definition) and one
/// projection added.
fn changed_projections() -> String {
    let widened = testkit::VIEW_PROJECTIONS.replacen(
        "field = \"properties.path\"\nevent_type = \"view\"\nbucket = \"1h\"",
        "field = \"properties.path\"\nevent_type = \"view\"\nbucket = \"1d\"",
        1,
    );
    assert_ne!(
        widened,
        testkit::VIEW_PROJECTIONS,
        "the top_paths table moved"
    );
    format!(
        "{widened}\n[[projection]]\nname = \"paths\"\nkind = \"distinct\"\n\
         field = \"properties.path\"\nbucket = \"1d\"\n"
    )
}

fn versions_of(text: &str) -> BTreeMap<String, String> {
    ProjectionFile::from_toml(text)
        .unwrap()
        .projections
        .iter()
        .map(|p| (p.name.clone(), projector::store::definition_version(p)))
        .collect()
}

async fn served_versions(node: &Node) -> Result<(BTreeMap<String, String>, Value), String> {
    let url = format!("http://127.0.0.1:{}/internal/v1/projections", node.port);
    let answer: Value = reqwest::get(&url)
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let versions = answer["projections"]
        .as_array()
        .ok_or_else(|| format!("no projections in {answer}"))?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok((versions, answer["rebuild"].clone()))
}

fn highs(topic: &str) -> Vec<i64> {
    watermarks(topic, PARTITIONS)
        .into_iter()
        .map(|(_, high)| high)
        .collect()
}

/// A fresh topic holding `BEFORE` views, and a node (polling its projection file every 200 ms,
/// switching at a lag of 20) that has folded them all.
async fn node_over_views(
    label: &str,
) -> (
    std::path::PathBuf,
    String,
    rdkafka::producer::FutureProducer,
    Node,
) {
    let name = unique(label);
    let dir = test_dir(&name);
    let topic = format!("events-{name}");
    testkit::create_topic(&topic, PARTITIONS).await;
    testkit::create_topic(&format!("{topic}.dead-letter"), 1).await;
    let producer = producer(Duration::from_secs(30));
    for n in 0..BEFORE {
        let key = format!("user-{}", n % 400);
        send_record(
            &producer,
            &topic,
            PARTITIONS,
            &view(TENANT, &key, Some(format!("e-{n}")), n),
        )
        .await;
    }
    let node = Node::start(
        &dir,
        &topic,
        "live",
        "projections_poll_ms = 200\nrebuild_switch_lag = 20\n",
    );
    node.wait_caught_up(&highs(&topic)).await;
    (dir, topic, producer, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_changed_projection_file_is_built_beside_and_switched_in_while_serving() {
    let (dir, topic, producer, mut node) = node_over_views("rebuild").await;
    let (old_versions, rebuild) = served_versions(&node).await.unwrap();
    assert_eq!(old_versions, versions_of(testkit::VIEW_PROJECTIONS));
    assert!(rebuild.is_null(), "no rebuild before the change: {rebuild}");

    // Change the file while events keep arriving.
    let changed = changed_projections();
    let new_versions = versions_of(&changed);
    std::fs::write(dir.join("projections.toml"), &changed).unwrap();
    let producing = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            for n in BEFORE..BEFORE + DURING {
                let key = format!("user-{}", n % 400);
                send_record(
                    &producer,
                    &topic,
                    PARTITIONS,
                    &view(TENANT, &key, Some(format!("e-{n}")), n),
                )
                .await;
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    // Until the switch, the old definitions answer; the rebuild shows itself.
    let (mut answered_old, mut saw_rebuild) = (0, false);
    wait_for(
        "the node to serve the new definitions",
        Duration::from_secs(180),
        async || {
            let (versions, rebuild) = served_versions(&node).await?;
            if versions == new_versions {
                return Ok(());
            }
            assert_eq!(versions, old_versions, "served a mix of definitions");
            saw_rebuild |= rebuild["state"].is_string();
            if node.events("visitors", TENANT).await.is_ok() {
                answered_old += 1;
            }
            Err(format!("versions {versions:?}, rebuild {rebuild}"))
        },
    )
    .await;
    assert!(
        saw_rebuild,
        "the rebuild never showed in /internal/v1/projections"
    );
    assert!(answered_old > 0, "no query was answered during the rebuild");
    node.assert_alive();

    producing.await.unwrap();
    node.wait_caught_up(&highs(&topic)).await;
    let total = (BEFORE + DURING) as u64;
    assert_eq!(node.events("visitors", TENANT).await.unwrap(), total);
    assert_eq!(node.events("top_paths", TENANT).await.unwrap(), total);
    assert_eq!(
        node.events("paths", TENANT).await.unwrap(),
        total,
        "the added projection covers the whole log"
    );
    node.stop();
    assert!(!dir.join("live.next").exists() && !dir.join("live.old").exists());

    // A clean replay of the whole log with the new file builds the same store.
    let replay_config = dir.join("replayed.toml");
    let live_config = std::fs::read_to_string(dir.join("live.toml")).unwrap();
    std::fs::write(
        &replay_config,
        live_config.replace(
            &dir.join("live").display().to_string(),
            &dir.join("replayed").display().to_string(),
        ),
    )
    .unwrap();
    replay_ok(&replay_config, &[]);
    let live = projector::store::Store::open(&dir.join("live"), 1 << 20).unwrap();
    let replayed = projector::store::Store::open(&dir.join("replayed"), 1 << 20).unwrap();
    let live_entries = live.state_entries().unwrap();
    let replayed_entries = replayed.state_entries().unwrap();
    assert_eq!(
        live.remembered_ids().unwrap(),
        replayed.remembered_ids().unwrap(),
        "the stores remember different event ids"
    );
    assert_eq!(live_entries.len(), replayed_entries.len());
    for ((live_key, live_value), (replayed_key, replayed_value)) in
        live_entries.iter().zip(&replayed_entries)
    {
        assert_eq!(live_key, replayed_key, "the stores hold different keys");
        assert!(
            live_value == replayed_value,
            "value of key {live_key:?} differs between the switched-in and the replayed store"
        );
    }
    drop((live, replayed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a log that receives nothing during the rebuild, the rebuild still reads at full speed and
/// switches in: reading its lag must not hold back its fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_rebuild_of_a_quiet_log_switches_in() {
    let (dir, topic, _producer, mut node) = node_over_views("quiet-rebuild").await;

    let changed = changed_projections();
    let new_versions = versions_of(&changed);
    std::fs::write(dir.join("projections.toml"), &changed).unwrap();
    // Nothing is produced from here on. Folding 3,000 records takes well under a second; the
    // bound is generous for a loaded machine, and far below the hours that a rebuild folding a
    // record per watermark round would take.
    wait_for(
        "the node to switch to the new definitions of a quiet log",
        Duration::from_secs(90),
        async || {
            let (versions, rebuild) = served_versions(&node).await?;
            if versions == new_versions {
                return Ok(());
            }
            Err(format!("versions {versions:?}, rebuild {rebuild}"))
        },
    )
    .await;
    node.wait_caught_up(&highs(&topic)).await;
    assert_eq!(
        node.events("paths", TENANT).await.unwrap(),
        BEFORE as u64,
        "the added projection covers the whole log"
    );
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
