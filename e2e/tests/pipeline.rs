//! End to end against the real broker: events posted to ingest come back out of the query API,
//! and a projector restarted mid-stream counts nothing twice.
//!
//! Ingest, projector and query API run in this test process, each on its own loopback port,
//! each test on a topic of its own. The broker address comes from `KAFKA_BOOTSTRAP`
//! (`deploy/test.sh` starts a broker and sets it).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 3;
const TENANT_A_KEY: &str = "tenant-a-key-0001";
const TENANT_B_KEY: &str = "tenant-b-key-0001";

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: these tests need a real broker; run deploy/test.sh, or start \
         one with deploy/kafka.sh start and set KAFKA_BOOTSTRAP=127.0.0.1:9092",
    )
}

/// A service running in this process, stopped by sending on `stop`.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("service task panicked")
            .expect("service failed");
    }
}

/// The three services on one fresh topic.
struct Pipeline {
    dir: PathBuf,
    topic: String,
    ingest_url: String,
    query_url: String,
    projector_listen: String,
    ingest: Running,
    projector: Option<Running>,
    query: Running,
    http: reqwest::Client,
}

fn metrics() -> PrometheusHandle {
    PrometheusBuilder::new().build_recorder().handle()
}

fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel();
    Running {
        stop,
        task: tokio::spawn(run(stopped)),
    }
}

async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
}

impl Pipeline {
    async fn start(name: &str) -> Pipeline {
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let dir = std::env::temp_dir().join(format!("e2e-{unique}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topic = format!("events-{unique}");
        create_topic(&topic, PARTITIONS).await;
        create_topic(&format!("{topic}.dead-letter"), 1).await;

        std::fs::write(
            dir.join("tenants.toml"),
            format!(
                r#"
                [[tenant]]
                name = "tenant-a"
                api_keys = ["{TENANT_A_KEY}"]
                events_per_second = 100000
                burst_events = 100000

                [[tenant]]
                name = "tenant-b"
                api_keys = ["{TENANT_B_KEY}"]
                events_per_second = 100000
                burst_events = 100000
                "#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("projections.toml"),
            r#"
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
            name = "known_visitors"
            kind = "membership"
            field = "key"
            event_type = "view"
            bucket = "1d"
            "#,
        )
        .unwrap();

        let ingest_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let projector_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let query_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingest_url = format!("http://{}", ingest_listener.local_addr().unwrap());
        let projector_listen = projector_listener.local_addr().unwrap().to_string();
        let query_url = format!("http://{}", query_listener.local_addr().unwrap());

        let ingest_config = ingest::Config::from_toml(&format!(
            r#"
            listen = "{}"
            brokers = "{}"
            topic = "{topic}"
            tenants_file = "{}"
            "#,
            ingest_listener.local_addr().unwrap(),
            bootstrap(),
            dir.join("tenants.toml").display()
        ))
        .expect("ingest config");
        let ingest = spawn(move |stop| async move {
            ingest::serve(ingest_config, ingest_listener, metrics(), async {
                let _ = stop.await;
            })
            .await
        });

        let query_config = query_api::Config::from_toml(&format!(
            r#"
            listen = "{}"
            projector_urls = ["http://{projector_listen}"]
            tenants_file = "{}"
            "#,
            query_listener.local_addr().unwrap(),
            dir.join("tenants.toml").display()
        ))
        .expect("query api config");
        let query = spawn(move |stop| async move {
            query_api::serve(query_config, query_listener, metrics(), async {
                let _ = stop.await;
            })
            .await
        });

        let mut pipeline = Pipeline {
            dir,
            topic,
            ingest_url,
            query_url,
            projector_listen,
            ingest,
            projector: None,
            query,
            http: reqwest::Client::new(),
        };
        pipeline.start_projector(Some(projector_listener)).await;
        pipeline.wait_ready().await;
        pipeline
    }

    fn projector_config(&self) -> projector::Config {
        projector::Config::from_toml(&format!(
            r#"
            brokers = "{}"
            topic = "{}"
            group_id = "projector-{}"
            store_path = "{}"
            projections_file = "{}"
            internal_listen = "{}"
            batch_max_records = 500
            batch_interval_ms = 50
            watermark_interval_ms = 200
            "#,
            bootstrap(),
            self.topic,
            self.topic,
            self.dir.join("store").display(),
            self.dir.join("projections.toml").display(),
            self.projector_listen
        ))
        .expect("projector config")
    }

    async fn start_projector(&mut self, listener: Option<TcpListener>) {
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(&self.projector_listen).await.unwrap(),
        };
        let config = self.projector_config();
        self.projector = Some(spawn(move |stop| async move {
            projector::serve(config, listener, metrics(), async {
                let _ = stop.await;
            })
            .await
        }));
    }

    async fn stop_projector(&mut self) {
        self.projector
            .take()
            .expect("projector running")
            .stop()
            .await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in [
            format!("{}/readyz", self.ingest_url),
            format!("http://{}/healthz", self.projector_listen),
            format!("{}/healthz", self.query_url),
        ] {
            loop {
                let ok = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "{url} never became ready");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Posts events and asserts they were accepted.
    async fn post(&self, key: &str, events: &[Value]) {
        let response = self
            .http
            .post(format!("{}/v1/events", self.ingest_url))
            .bearer_auth(key)
            .json(&events)
            .send()
            .await
            .expect("ingest answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "ingest refused a batch: {body}");
        assert_eq!(body["accepted"], events.len());
    }

    async fn query(&self, key: &str, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.query_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("query api answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "GET {path} answered {status}: {body}");
        body
    }

    /// Waits until the `visitors` projection of a tenant has folded `expected` events.
    async fn wait_for_events(&self, key: &str, expected: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answer = self.query(key, "/v1/projections/visitors/distinct").await;
            let events = answer["events"].as_u64().unwrap_or(0);
            assert!(
                events <= expected,
                "counted {events} events, only {expected} were sent"
            );
            if events == expected {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "only {events} of {expected} events folded: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) {
        if self.projector.is_some() {
            self.stop_projector().await;
        }
        self.ingest.stop().await;
        self.query.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` view events spread over `users` keys and a skewed set of paths, starting at `first`.
fn views(first: usize, count: usize, users: usize) -> Vec<Value> {
    (first..first + count)
        .map(|i| {
            // Path i % 7 == 0 -> /home (about 1/7 of events, the top path), else one of 20.
            let path = if i % 7 == 0 {
                "/home".to_owned()
            } else {
                format!("/page/{}", i % 20)
            };
            json!({
                "id": format!("view-{i}"),
                "type": "view",
                "key": format!("user-{}", i % users),
                "time": 1_431_857_103_000i64 + (i as i64) * 1_000,
                "properties": { "path": path },
            })
        })
        .collect()
}

fn exact_counts(events: &[Value], field: impl Fn(&Value) -> String) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for event in events {
        *counts.entry(field(event)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_events_posted_to_ingest_come_back_out_of_the_query_api() {
    let pipeline = Pipeline::start("roundtrip").await;
    let tenant_a = views(0, 3_000, 700);
    let tenant_b = views(10_000, 400, 50);
    for batch in tenant_a.chunks(500) {
        pipeline.post(TENANT_A_KEY, batch).await;
    }
    pipeline.post(TENANT_B_KEY, &tenant_b).await;

    // Exact event counts, per tenant: nothing lost, nothing twice, nothing crossing tenants.
    let distinct = pipeline.wait_for_events(TENANT_A_KEY, 3_000).await;
    let other = pipeline.wait_for_events(TENANT_B_KEY, 400).await;

    // Distinct users: the exact value lies within the stated bounds.
    let estimate = &distinct["distinct"];
    let (lower, upper) = (
        estimate["lower_bound"].as_f64().unwrap(),
        estimate["upper_bound"].as_f64().unwrap(),
    );
    assert!(lower <= 700.0 && 700.0 <= upper, "700 outside {estimate}");
    let other_estimate = &other["distinct"];
    assert!(
        other_estimate["lower_bound"].as_f64().unwrap() <= 50.0
            && 50.0 <= other_estimate["upper_bound"].as_f64().unwrap(),
        "50 outside {other_estimate}"
    );

    // Every partition is reported with its offsets.
    let partitions: HashSet<i64> = distinct["freshness"]["partitions"]
        .as_array()
        .expect("freshness partitions")
        .iter()
        .map(|p| p["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions, (0..PARTITIONS as i64).collect());

    // Top paths: the most frequent path is first, and no count is under-reported.
    let paths = exact_counts(&tenant_a, |e| {
        e["properties"]["path"].as_str().unwrap().into()
    });
    let top = pipeline
        .query(TENANT_A_KEY, "/v1/projections/top_paths/top?k=5")
        .await;
    let items = top["items"].as_array().expect("top items");
    assert_eq!(items[0]["item"], "/home", "{top}");
    for item in items {
        let exact = paths[item["item"].as_str().unwrap()];
        assert!(
            item["upper_bound"].as_u64().unwrap() >= exact,
            "{item} vs {exact}"
        );
        assert!(
            item["lower_bound"].as_u64().unwrap() <= exact,
            "{item} vs {exact}"
        );
    }
    let count = pipeline
        .query(TENANT_A_KEY, "/v1/projections/top_paths/count?item=/home")
        .await;
    assert!(
        count["estimate"].as_u64().unwrap() >= paths["/home"],
        "{count}"
    );

    // Membership: every key sent is present; the other tenant's keys are not its members.
    for user in ["user-0", "user-350", "user-699"] {
        let answer = pipeline
            .query(
                TENANT_A_KEY,
                &format!("/v1/projections/known_visitors/contains?item={user}"),
            )
            .await;
        assert_eq!(answer["maybe_present"], true, "{answer}");
    }

    // A time range selects buckets: nothing was sent before 10:00 on the first day.
    let all = distinct["events"].as_u64().unwrap();
    let early = pipeline
        .query(
            TENANT_A_KEY,
            "/v1/projections/visitors/distinct?from=0&to=1431856800000",
        )
        .await;
    assert_eq!(early["events"].as_u64().unwrap_or(0), 0, "{early}");
    assert_eq!(all, 3_000);

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_projector_restarted_mid_stream_counts_nothing_twice() {
    let mut pipeline = Pipeline::start("restart").await;
    let events = views(0, 6_000, 1_500);

    // First third, then stop the projector while the second third is being posted.
    for batch in events[..2_000].chunks(250) {
        pipeline.post(TENANT_A_KEY, batch).await;
    }
    for (i, batch) in events[2_000..4_000].chunks(250).enumerate() {
        if i == 3 {
            pipeline.stop_projector().await;
        }
        pipeline.post(TENANT_A_KEY, batch).await;
    }
    pipeline.start_projector(None).await;
    for batch in events[4_000..].chunks(250) {
        pipeline.post(TENANT_A_KEY, batch).await;
    }
    let live = pipeline.wait_for_events(TENANT_A_KEY, 6_000).await;
    let live_top = pipeline
        .query(TENANT_A_KEY, "/v1/projections/top_paths/top?k=20")
        .await;
    // Stays exact: nothing is folded a second time later on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = pipeline
        .query(TENANT_A_KEY, "/v1/projections/visitors/distinct")
        .await;
    assert_eq!(again["events"], 6_000);

    // A clean replay of the same log gives the same read models.
    pipeline.stop_projector().await;
    let config = pipeline.projector_config();
    let summary = tokio::task::spawn_blocking(move || projector::replay::replay(&config))
        .await
        .unwrap()
        .expect("replay");
    assert_eq!(summary.records, 6_000, "{summary}");
    pipeline.start_projector(None).await;
    let replayed = pipeline.wait_for_events(TENANT_A_KEY, 6_000).await;
    assert_eq!(replayed["distinct"], live["distinct"]);
    let replayed_top = pipeline
        .query(TENANT_A_KEY, "/v1/projections/top_paths/top?k=20")
        .await;
    assert_eq!(replayed_top["items"], live_top["items"]);

    pipeline.stop().await;
}
