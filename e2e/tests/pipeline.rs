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
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use testkit::{bootstrap, create_topic};

const PARTITIONS: i32 = 3;
const TENANT_A_KEY: &str = "tenant-a-key-0001";
const TENANT_B_KEY: &str = "tenant-b-key-0001";

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

/// One projector node: its address, and the service while it runs.
struct Node {
    listen: String,
    running: Option<Running>,
}

/// The three services on one fresh topic.
struct Pipeline {
    dir: PathBuf,
    topic: String,
    ingest_url: String,
    query_url: String,
    /// Projector nodes of one consumer group; the query API knows all of them.
    nodes: Vec<Node>,
    ingest: Running,
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

impl Pipeline {
    async fn start(name: &str) -> Pipeline {
        Pipeline::start_with_nodes(name, 1).await
    }

    /// Starts ingest, the query API and the first of `nodes` projector nodes.
    async fn start_with_nodes(name: &str, nodes: usize) -> Pipeline {
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
                api_key_sha256 = ["{}"]
                events_per_second = 100000
                burst_events = 100000

                [[tenant]]
                name = "tenant-b"
                api_key_sha256 = ["{}"]
                events_per_second = 100000
                burst_events = 100000
                "#,
                schemas::tenant::api_key_sha256_hex(TENANT_A_KEY),
                schemas::tenant::api_key_sha256_hex(TENANT_B_KEY),
            ),
        )
        .unwrap();
        std::fs::write(dir.join("projections.toml"), testkit::VIEW_PROJECTIONS).unwrap();

        let ingest_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut projector_listeners = Vec::new();
        for _ in 0..nodes {
            projector_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let query_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingest_url = format!("http://{}", ingest_listener.local_addr().unwrap());
        let nodes: Vec<Node> = projector_listeners
            .iter()
            .map(|l| Node {
                listen: l.local_addr().unwrap().to_string(),
                running: None,
            })
            .collect();
        let projector_urls: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"http://{}\"", n.listen))
            .collect();
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
            projector_urls = [{}]
            tenants_file = "{}"
            "#,
            query_listener.local_addr().unwrap(),
            projector_urls.join(", "),
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
            nodes,
            ingest,
            query,
            http: reqwest::Client::new(),
        };
        let first = projector_listeners
            .into_iter()
            .next()
            .expect("one node at least");
        pipeline.start_node(0, Some(first)).await;
        pipeline.wait_ready().await;
        pipeline
    }

    fn projector_config(&self) -> projector::Config {
        self.node_config(0)
    }

    fn node_config(&self, node: usize) -> projector::Config {
        projector::Config::from_toml(&format!(
            r#"
            brokers = "{}"
            topic = "{}"
            group_id = "projector-{}"
            node_name = "node-{node}"
            store_path = "{}"
            projections_file = "{}"
            internal_listen = "{}"
            batch_max_records = 500
            batch_interval_ms = 50
            watermark_interval_ms = 200
            session_timeout_ms = 6000
            "#,
            bootstrap(),
            self.topic,
            self.topic,
            self.dir.join(format!("store-{node}")).display(),
            self.dir.join("projections.toml").display(),
            self.nodes[node].listen
        ))
        .expect("projector config")
    }

    async fn start_projector(&mut self, listener: Option<TcpListener>) {
        self.start_node(0, listener).await;
    }

    async fn start_node(&mut self, node: usize, listener: Option<TcpListener>) {
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(&self.nodes[node].listen).await.unwrap(),
        };
        let config = self.node_config(node);
        self.nodes[node].running = Some(spawn(move |stop| async move {
            projector::serve(config, listener, metrics(), async {
                let _ = stop.await;
            })
            .await
        }));
    }

    async fn stop_projector(&mut self) {
        self.stop_node(0).await;
    }

    async fn stop_node(&mut self, node: usize) {
        self.nodes[node]
            .running
            .take()
            .expect("projector running")
            .stop()
            .await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in [
            format!("{}/readyz", self.ingest_url),
            format!("http://{}/healthz", self.nodes[0].listen),
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
        for node in 0..self.nodes.len() {
            if self.nodes[node].running.is_some() {
                self.stop_node(node).await;
            }
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

    // Distinct users per path (group_by): every group within its bounds, largest first, and
    // the overlap of two paths' users by inclusion and exclusion.
    let mut users_of: HashMap<String, HashSet<String>> = HashMap::new();
    for event in &tenant_a {
        users_of
            .entry(event["properties"]["path"].as_str().unwrap().into())
            .or_default()
            .insert(event["key"].as_str().unwrap().into());
    }
    let within = |estimate: &Value, truth: usize| {
        let (lower, upper) = (
            estimate["lower_bound"].as_f64().unwrap(),
            estimate["upper_bound"].as_f64().unwrap(),
        );
        assert!(
            lower <= truth as f64 && truth as f64 <= upper,
            "{truth} outside {estimate}"
        );
    };
    let groups = pipeline
        .query(TENANT_A_KEY, "/v1/projections/visitors_by_path/groups")
        .await;
    assert_eq!(groups["groups_total"], users_of.len(), "{groups}");
    assert_eq!(groups["events"], 3_000);
    let listed = groups["groups"].as_array().unwrap();
    assert_eq!(
        listed[0]["group"], "/home",
        "the path with the most users first"
    );
    for group in listed {
        let path = group["group"].as_str().unwrap();
        within(&group["distinct"], users_of[path].len());
    }
    let overlap = pipeline
        .query(
            TENANT_A_KEY,
            "/v1/overlap?a=visitors_by_path&a_group=/home&b=visitors_by_path&b_group=/page/1",
        )
        .await;
    let (home, page) = (&users_of["/home"], &users_of["/page/1"]);
    within(&overlap["union"], home.union(page).count());
    within(&overlap["intersection"], home.intersection(page).count());

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
async fn test_series_merge_buckets_per_step_and_split_new_from_returning_keys() {
    let pipeline = Pipeline::start("series").await;
    // Three hours; small sets, which the distinct sketch counts exactly.
    let hour = 3_600_000i64;
    let start = 1_431_856_800_000i64; // 2015-05-17T10:00:00Z, a whole hour
    let hours: [&[&str]; 3] = [&["a", "b", "c"], &["b", "c", "d", "e"], &["a", "e", "f"]];
    let mut events = Vec::new();
    for (h, keys) in hours.iter().enumerate() {
        for (i, key) in keys.iter().enumerate() {
            events.push(json!({
                "id": format!("s-{h}-{i}"),
                "type": "view",
                "key": key,
                "time": start + h as i64 * hour + i as i64 * 60_000,
                "properties": {"path": format!("/p/{i}")},
            }));
        }
    }
    pipeline.post(TENANT_A_KEY, &events).await;
    pipeline
        .wait_for_events(TENANT_A_KEY, events.len() as u64)
        .await;

    let path = format!(
        "/v1/projections/visitors/series?from={start}&to={}&step=1h",
        start + 3 * hour
    );
    let series = pipeline.query(TENANT_A_KEY, &path).await;
    let points = series["points"].as_array().expect("points");
    assert_eq!(points.len(), 3, "{series}");
    // Small sets are counted exactly, up to floating point in the estimator.
    let estimate = |v: &Value| v["estimate"].as_f64().unwrap().round();
    let per_step: Vec<f64> = points.iter().map(|p| estimate(&p["distinct"])).collect();
    assert_eq!(per_step, [3.0, 4.0, 3.0], "{series}");
    let new: Vec<f64> = points.iter().map(|p| estimate(&p["new"])).collect();
    let returning: Vec<f64> = points.iter().map(|p| estimate(&p["returning"])).collect();
    assert_eq!(new, [3.0, 2.0, 1.0], "{series}");
    assert_eq!(returning, [0.0, 2.0, 2.0], "{series}");
    // The whole range is the union of the steps, not the sum of their counts.
    assert_eq!(estimate(&series["total"]["distinct"]), 6.0, "{series}");
    assert_eq!(series["total"]["events"], 10);
    assert_eq!(points[1]["start"], start + hour);

    // Steps with nothing folded count 0 and leave the total alone, whatever the projection's
    // sketch parameters (query-api/tests/query_api.rs covers non-default parameters).
    let padded = pipeline
        .query(
            TENANT_A_KEY,
            &format!(
                "/v1/projections/visitors/series?from={}&to={}&step=1h",
                start - 2 * hour,
                start + 5 * hour
            ),
        )
        .await;
    let counts: Vec<u64> = padded["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [0, 0, 3, 4, 3, 0, 0], "{padded}");
    assert_eq!(estimate(&padded["total"]["distinct"]), 6.0, "{padded}");

    // Top paths per day: one step holding all three hours, with counts.
    let top = pipeline
        .query(
            TENANT_A_KEY,
            &format!(
                "/v1/projections/top_paths/series?from={start}&to={}&step=1d&k=2",
                start + hour
            ),
        )
        .await;
    let points = top["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "{top}");
    assert_eq!(points[0]["events"], 10, "{top}");
    assert_eq!(points[0]["items"][0]["item"], "/p/0", "{top}");
    assert_eq!(points[0]["items"].as_array().unwrap().len(), 2, "{top}");

    // A step finer than the buckets, or too many steps, is a 400 that says why.
    for (query, fragment) in [
        (
            "from=0&to=3600000&step=1m",
            "whole number of the projection's buckets (1h)",
        ),
        ("from=0&to=1431856800000&step=1h", "more than 2000 steps"),
        ("from=0&to=3600000&step=fortnight", "not a step such as 15m"),
        ("from=0&step=1h", "\"to\" is required"),
    ] {
        let response = pipeline
            .http
            .get(format!(
                "{}/v1/projections/visitors/series?{query}",
                pipeline.query_url
            ))
            .bearer_auth(TENANT_A_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{query}: {body}");
    }
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
    let summary = tokio::task::spawn_blocking(move || {
        projector::replay::replay(&config, &Default::default())
    })
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

/// Polls the distinct answer until it counts `expected` events with every partition served by
/// `nodes` nodes together,
/// accepting only the answers a query may give while partitions move: 200 (possibly partial,
/// and then marked so), or 503 while a partition is briefly reported by two nodes.
async fn wait_during_moves(pipeline: &Pipeline, expected: u64, nodes: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = pipeline
            .http
            .get(format!(
                "{}/v1/projections/visitors/distinct",
                pipeline.query_url
            ))
            .bearer_auth(TENANT_A_KEY)
            .send()
            .await
            .expect("query api answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON answer");
        match status {
            200 => {
                let events = body["events"].as_u64().unwrap_or(0);
                let served: HashSet<i64> = body["freshness"]["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["partition"].as_i64().unwrap())
                    .collect();
                assert!(
                    events <= expected,
                    "counted {events}, only {expected} sent: {body}"
                );
                if served.len() < PARTITIONS as usize {
                    // A partition no node serves right now is named in the answer.
                    assert_eq!(body["freshness"]["complete"], false, "{body}");
                    assert!(
                        !body["freshness"]["missing_partitions"]
                            .as_array()
                            .unwrap()
                            .is_empty(),
                        "unserved partitions are not named: {body}"
                    );
                }
                let serving: HashSet<&str> = body["freshness"]["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["node"].as_str().unwrap())
                    .collect();
                if events == expected
                    && served.len() == PARTITIONS as usize
                    && serving.len() == nodes
                {
                    return body;
                }
            }
            503 => {
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    code == "partition_overlap" || code == "projectors_unavailable",
                    "unexpected 503: {body}"
                );
            }
            other => panic!("query answered {other} while partitions moved: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "never saw {expected} events: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_projector_nodes_started_and_stopped_in_turn_count_every_partition_once() {
    let mut pipeline = Pipeline::start_with_nodes("rebalance", 3).await;
    let events = views(0, 5_000, 2_000);
    let mut sent = 0;
    let mut send = async |pipeline: &Pipeline, count: usize| {
        for batch in events[sent..sent + count].chunks(250) {
            pipeline.post(TENANT_A_KEY, batch).await;
        }
        sent += count;
        sent as u64
    };

    let total = send(&pipeline, 1_000).await;
    wait_during_moves(&pipeline, total, 1).await;

    // Two, then three nodes share the partitions; each partition is served by one of them.
    pipeline.start_node(1, None).await;
    let total = send(&pipeline, 1_000).await;
    wait_during_moves(&pipeline, total, 2).await;
    pipeline.start_node(2, None).await;
    let total = send(&pipeline, 1_000).await;
    wait_during_moves(&pipeline, total, 3).await;

    // Stop them in turn: the last node ends up with every partition, counted once.
    pipeline.stop_node(0).await;
    let total = send(&pipeline, 1_000).await;
    wait_during_moves(&pipeline, total, 2).await;
    pipeline.stop_node(1).await;
    let total = send(&pipeline, 1_000).await;
    let last = wait_during_moves(&pipeline, total, 1).await;
    assert_eq!(last["events"], 5_000);
    let estimate = &last["distinct"];
    assert!(
        estimate["lower_bound"].as_f64().unwrap() <= 2_000.0
            && 2_000.0 <= estimate["upper_bound"].as_f64().unwrap(),
        "2000 outside {estimate}"
    );

    pipeline.stop().await;
}
