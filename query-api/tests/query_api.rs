//! Router-level tests of the query API against fake projector nodes: small axum servers that
//! serve the internal projector API with real read-model bytes built here with `readmodel`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use readmodel::{Kind, ReadModel, SketchParams};
use schemas::tenant::{TenantFile, api_key_sha256_hex};

use query_api::Config;

/// Keys are stored as their SHA-256: `printf %s acme-key-0001 | sha256sum`, and so on.
const TENANTS: &str = r#"
    [[tenant]]
    name = "acme"
    api_key_sha256 = ["d1616373cb070ca29992c92c1fa716bcda2a13abcd3efd637e85e13243ed7434"]

    [[tenant]]
    name = "globex"
    api_key_sha256 = ["416544c1b1df577a260191385053619c59034a2f75e9c1bf46c35b45e17e79fd"]
"#;
const ACME_KEY: &str = "acme-key-0001";
const GLOBEX_KEY: &str = "globex-key-0001";

/// What one fake projector node serves.
#[derive(Clone, Default)]
struct FakeNode {
    name: &'static str,
    /// Partition numbers assigned to the node; lag is the partition number times 10, except
    /// for partition 9, whose high watermark and lag are not known yet.
    partitions: Vec<i32>,
    /// (tenant, projection) -> base64 read-model bytes.
    models: HashMap<(String, String), String>,
    /// Wait this long before answering read-model calls.
    delay: Option<Duration>,
    /// Query strings of every read-model call, as received.
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Added to every partition's next offset: raising it is the node folding more records.
    folded: Arc<std::sync::atomic::AtomicI64>,
    /// Series answers hold the model in the first step only; the others are empty.
    first_step_only: bool,
}

/// The projections every fake node knows.
const PROJECTIONS: [(&str, Kind); 4] = [
    ("visitors", Kind::Distinct),
    ("pages", Kind::Top),
    ("seen_users", Kind::Membership),
    ("channel_users", Kind::Distinct),
];

/// The grouped projection of [`PROJECTIONS`] and the field it groups by.
const GROUPED: (&str, &str) = ("channel_users", "properties.channel");

impl FakeNode {
    fn new(name: &'static str, partitions: &[i32]) -> FakeNode {
        FakeNode {
            name,
            partitions: partitions.to_vec(),
            ..FakeNode::default()
        }
    }

    fn with_model(mut self, tenant: &str, projection: &str, model: &ReadModel) -> FakeNode {
        self.models.insert(
            (tenant.to_owned(), projection.to_owned()),
            BASE64.encode(model.to_bytes()),
        );
        self
    }

    fn partition_json(&self) -> Vec<Value> {
        self.partitions
            .iter()
            .map(|&p| {
                let known = p != 9;
                json!({
                    "partition": p,
                    "next_offset": 100 + i64::from(p)
                        + self.folded.load(std::sync::atomic::Ordering::Relaxed),
                    "high_watermark": known.then(|| 100 + i64::from(p) * 11),
                    "lag": known.then(|| i64::from(p) * 10),
                    "last_event_ms": if p == 0 { Value::Null } else { json!(1_431_857_103_000_i64) },
                })
            })
            .collect()
    }

    /// Serves the node on an ephemeral port; returns its base URL.
    async fn start(self) -> String {
        let node = Arc::new(self);
        let app = Router::new()
            .route("/internal/v1/projections", get(fake_projections))
            .route("/internal/v1/partitions", get(fake_partitions))
            .route(
                "/internal/v1/read-models/{projection}",
                get(fake_read_model),
            )
            .route(
                "/internal/v1/read-models/{projection}/series",
                get(fake_series),
            )
            .with_state(node);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }
}

async fn fake_projections() -> Json<Value> {
    let projections: Vec<Value> = PROJECTIONS
        .iter()
        .map(|(name, kind)| {
            let mut projection = json!({"name": name, "kind": kind, "field": "key",
                "event_type": "page_view", "bucket_ms": 3_600_000});
            if *name == GROUPED.0 {
                projection["group_by"] = json!(GROUPED.1);
                projection["max_groups"] = json!(2_000);
            }
            projection
        })
        .collect();
    Json(json!({ "projections": projections }))
}

async fn fake_partitions(State(node): State<Arc<FakeNode>>) -> Json<Value> {
    Json(json!({"node": node.name, "topic": "events", "partitions": node.partition_json()}))
}

async fn fake_read_model(
    State(node): State<Arc<FakeNode>>,
    Path(projection): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    node.seen.lock().unwrap().push(params.clone());
    if let Some(delay) = node.delay {
        tokio::time::sleep(delay).await;
    }
    let Some((_, kind)) = PROJECTIONS.iter().find(|(name, _)| *name == projection) else {
        let error =
            json!({"error": {"code": "unknown_projection", "message": "no such projection"}});
        return (StatusCode::NOT_FOUND, Json(error)).into_response();
    };
    let tenant = params.get("tenant").cloned().unwrap_or_default();
    let model = node.models.get(&(tenant, projection.clone()));
    Json(json!({
        "projection": projection,
        "kind": kind,
        "partitions": node.partition_json(),
        "read_model": model,
    }))
    .into_response()
}

/// A series whose every step holds the node's whole read model of the projection.
async fn fake_series(
    State(node): State<Arc<FakeNode>>,
    Path(projection): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, kind)) = PROJECTIONS.iter().find(|(name, _)| *name == projection) else {
        let error =
            json!({"error": {"code": "unknown_projection", "message": "no such projection"}});
        return (StatusCode::NOT_FOUND, Json(error)).into_response();
    };
    let number = |name: &str| {
        params
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let steps = (number("to") - number("from")) / number("step").max(1);
    let tenant = params.get("tenant").cloned().unwrap_or_default();
    let model = node.models.get(&(tenant, projection.clone()));
    let steps: Vec<Value> = (0..steps)
        .map(|step| {
            let held = step == 0 || !node.first_step_only;
            json!({"read_model": if held { json!(model) } else { Value::Null }})
        })
        .collect();
    Json(json!({
        "projection": projection,
        "kind": kind,
        "partitions": node.partition_json(),
        "steps": steps,
    }))
    .into_response()
}

fn distinct_model(values: impl IntoIterator<Item = String>) -> ReadModel {
    let mut model = ReadModel::new(&SketchParams::default_for(Kind::Distinct)).unwrap();
    for value in values {
        model.update(&value);
    }
    model
}

fn top_model(counts: &[(&str, usize)]) -> ReadModel {
    let mut model = ReadModel::new(&SketchParams::default_for(Kind::Top)).unwrap();
    for (item, times) in counts {
        for _ in 0..*times {
            model.update(item);
        }
    }
    model
}

fn membership_model(items: &[&str]) -> ReadModel {
    let mut model = ReadModel::new(&SketchParams::default_for(Kind::Membership)).unwrap();
    for item in items {
        model.update(item);
    }
    model
}

/// A grouped distinct read model: every (group, users) pair folds those users into the group.
fn grouped_model(groups: &[(&str, std::ops::Range<u32>)]) -> ReadModel {
    let mut model =
        ReadModel::new_grouped(&SketchParams::default_for(Kind::Distinct), 2_000).unwrap();
    for (group, range) in groups {
        for user in users(range.clone()) {
            model.update_in(&user, Some(group));
        }
    }
    model
}

fn users(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
    range.map(|i| format!("user-{i}"))
}

/// A metrics handle; the first call installs the process recorder so the metrics test can read
/// what the other requests recorded.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            query_api::register_histogram_buckets(PrometheusBuilder::new())
                .unwrap()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

fn config(projector_urls: Vec<String>, projector_timeout_ms: u64) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        projector_urls,
        tenants_file: "unused-in-router-tests.toml".into(),
        projector_timeout_ms,
        cors_allowed_origins: Vec::new(),
    }
}

/// Serves the query API router over the given nodes; returns its base URL.
async fn start_query_api(projector_urls: Vec<String>) -> String {
    start_query_api_with_timeout(projector_urls, 2_000).await
}

async fn start_query_api_with_timeout(projector_urls: Vec<String>, timeout_ms: u64) -> String {
    let tenants = TenantFile::from_toml(TENANTS).unwrap();
    let app = query_api::router(
        &config(projector_urls, timeout_ms),
        tenants,
        metrics_handle(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

async fn get_json(url: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let body = response.json::<Value>().await.unwrap();
    (status, body)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test]
async fn test_distinct_merges_the_union_across_two_nodes() {
    let a = FakeNode::new("projector-1", &[2, 0])
        .with_model("acme", "visitors", &distinct_model(users(0..1000)))
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model("acme", "visitors", &distinct_model(users(500..1500)))
        .start()
        .await;
    let api = start_query_api(vec![a.clone(), b.clone()]).await;

    let (status, body) = get_json(
        &format!("{api}/v1/projections/visitors/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["projection"], "visitors");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(
        body["events"], 2000,
        "events are the exact sum of both nodes"
    );
    let distinct = &body["distinct"];
    let estimate = distinct["estimate"].as_f64().unwrap();
    let lower = distinct["lower_bound"].as_f64().unwrap();
    let upper = distinct["upper_bound"].as_f64().unwrap();
    assert!(lower <= 1500.0 && 1500.0 <= upper, "{distinct}");
    assert!(
        (estimate - 1500.0).abs() < 1500.0 * 0.05,
        "union, not sum: {estimate}"
    );
    assert!(distinct["confidence"].as_f64().unwrap() > 0.9);

    let freshness = &body["freshness"];
    assert_eq!(freshness["complete"], true);
    assert_eq!(freshness["nodes_unreachable"], json!([]));
    assert_eq!(freshness["max_lag"], 20);
    let partitions: Vec<(i64, &str)> = freshness["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["node"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        vec![(0, a.as_str()), (1, b.as_str()), (2, a.as_str())]
    );
    let first = &freshness["partitions"][0];
    assert_eq!(first["next_offset"], 100);
    assert_eq!(first["high_watermark"], 100);
    assert_eq!(first["lag"], 0);
    assert_eq!(first["last_event_ms"], Value::Null);
    assert_eq!(
        freshness["partitions"][1]["last_event_ms"],
        1_431_857_103_000_i64
    );
}

#[tokio::test]
async fn test_top_and_count_add_up_counts_across_nodes() {
    let a = FakeNode::new("projector-1", &[0])
        .with_model("acme", "pages", &top_model(&[("/home", 30), ("/about", 5)]))
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model("acme", "pages", &top_model(&[("/home", 20), ("/docs", 40)]))
        .start()
        .await;
    let api = start_query_api(vec![a, b]).await;

    let (status, body) = get_json(
        &format!("{api}/v1/projections/pages/top?k=2"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 95);
    assert_eq!(body["k"], 2);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["item"], "/home");
    assert_eq!(
        items[0]["estimate"], 50,
        "30 on one node plus 20 on the other"
    );
    assert_eq!(items[1]["item"], "/docs");
    assert_eq!(items[1]["estimate"], 40);
    assert!(items[0]["lower_bound"].as_u64().unwrap() <= 50);
    assert!(items[0]["upper_bound"].as_u64().unwrap() >= 50);

    let (status, body) = get_json(
        &format!("{api}/v1/projections/pages/count?item=%2Fhome"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let count = &body;
    assert_eq!(count["item"], "/home");
    assert!(
        count["estimate"].as_u64().unwrap() >= 50,
        "count-min never under-reports"
    );
    assert!(count["upper_bound"].as_u64().unwrap() >= count["estimate"].as_u64().unwrap());
    assert!(count["lower_bound"].as_u64().unwrap() <= 50);
    assert_eq!(count["total"], 95);
    assert_eq!(count["never_seen"], false);

    // The item filters merged from both nodes say the value was never counted: an exact 0.
    let (_, body) = get_json(
        &format!("{api}/v1/projections/pages/count?item=never"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(body["never_seen"], true, "{body}");
    assert_eq!(
        (
            &body["estimate"],
            &body["lower_bound"],
            &body["upper_bound"]
        ),
        (&json!(0), &json!(0), &json!(0))
    );
}

#[tokio::test]
async fn test_contains_merges_filters_and_reports_rates() {
    let a = FakeNode::new("projector-1", &[0])
        .with_model("acme", "seen_users", &membership_model(&["alice"]))
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model("acme", "seen_users", &membership_model(&["bob"]))
        .start()
        .await;
    let api = start_query_api(vec![a, b]).await;

    for item in ["alice", "bob"] {
        let url = format!("{api}/v1/projections/seen_users/contains?item={item}");
        let (status, body) = get_json(&url, Some(ACME_KEY)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["maybe_present"], true, "{item}: {body}");
        assert_eq!(body["configured_false_positive_rate"], 0.01);
        assert_eq!(body["events"], 2);
    }
    let url = format!("{api}/v1/projections/seen_users/contains?item=carol");
    let (_, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(body["item"], "carol");
    assert_eq!(body["maybe_present"], false);
    assert!(body["estimated_false_positive_rate"].as_f64().unwrap() < 1e-6);
}

#[tokio::test]
async fn test_bad_or_missing_key_is_401() {
    let node = FakeNode::new("projector-1", &[0]);
    let seen = node.seen.clone();
    let api = start_query_api(vec![node.start().await]).await;
    let url = format!("{api}/v1/projections/visitors/distinct");

    let (status, body) = get_json(&url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "missing_api_key");

    let (status, body) = get_json(&url, Some("not-a-known-key")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "invalid_api_key");

    let response = reqwest::Client::new()
        .get(&url)
        .header("authorization", format!("Basic {ACME_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    let (status, _) = get_json(&format!("{api}/v1/projections"), Some("nope-nope-nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        seen.lock().unwrap().is_empty(),
        "no node is asked for an unauthenticated query"
    );
}

#[tokio::test]
async fn test_tenant_comes_from_the_key_only() {
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..10)))
        .with_model("globex", "visitors", &distinct_model(users(0..300)));
    let seen = node.seen.clone();
    let api = start_query_api(vec![node.start().await]).await;
    let url = format!("{api}/v1/projections/visitors/distinct");

    let (_, acme) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["events"], 10);
    let (_, globex) = get_json(&url, Some(GLOBEX_KEY)).await;
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(globex["events"], 300);
    let tenants: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|q| q["tenant"].clone())
        .collect();
    assert_eq!(tenants, vec!["acme", "globex"]);

    let (status, body) = get_json(&format!("{url}?tenant=globex"), Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "unknown_parameter");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api key"),
        "{body}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a refused query asks no node"
    );
}

#[tokio::test]
async fn test_a_window_is_merged_once_until_a_partition_moves() {
    let mut model = ReadModel::new(&SketchParams::default_for(Kind::Membership)).unwrap();
    model.update("alice");
    let node = FakeNode::new("projector-1", &[0, 1]).with_model("acme", "seen_users", &model);
    let (seen, folded) = (node.seen.clone(), node.folded.clone());
    let api = start_query_api(vec![node.start().await]).await;
    let ask = |item: &str| format!("{api}/v1/projections/seen_users/contains?item={item}");

    let (status, body) = get_json(&ask("alice"), Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["maybe_present"], true);
    // Other items of the same window, present or never seen: answered from the cached filter.
    let (_, body) = get_json(&ask("bob"), Some(ACME_KEY)).await;
    assert_eq!(body["maybe_present"], false);
    assert_eq!(body["freshness"]["partitions"][0]["next_offset"], 100);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the second lookup asked the node again"
    );
    // Another tenant is another entry.
    get_json(&ask("alice"), Some(GLOBEX_KEY)).await;
    assert_eq!(seen.lock().unwrap().len(), 2);

    // The node folds more: the cached merge is not used any more, and freshness moves.
    folded.store(5, std::sync::atomic::Ordering::Relaxed);
    let (_, body) = get_json(&ask("alice"), Some(ACME_KEY)).await;
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(body["freshness"]["partitions"][0]["next_offset"], 105);
    get_json(&ask("carol"), Some(ACME_KEY)).await;
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn test_series_steps_without_data_leave_a_non_default_sketch_alone() {
    let params = SketchParams::Top {
        width: 512,
        depth: 5,
        max_map_size: 512,
    };
    let mut model = ReadModel::new(&params).unwrap();
    for item in ["/a", "/a", "/b"] {
        model.update(item);
    }
    let mut node = FakeNode::new("projector-1", &[0]).with_model("acme", "pages", &model);
    node.first_step_only = true;
    let api = start_query_api(vec![node.start().await]).await;
    let url = format!("{api}/v1/projections/pages/series?from=0&to=10800000&step=1h&k=1");
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events: Vec<u64> = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_u64().unwrap())
        .collect();
    assert_eq!(events, [3, 0, 0], "{body}");
    assert_eq!(body["total"]["events"], 3);
    assert_eq!(body["total"]["items"][0]["item"], "/a", "{body}");
}

#[tokio::test]
async fn test_window_is_forwarded_in_epoch_ms() {
    let node = FakeNode::new("projector-1", &[0]);
    let seen = node.seen.clone();
    let api = start_query_api(vec![node.start().await]).await;

    let url = format!(
        "{api}/v1/projections/visitors/distinct?from=2015-05-17T10:00:00Z&to=1431860400000"
    );
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["from"], 1_431_856_800_000_i64);
    assert_eq!(body["to"], 1_431_860_400_000_i64);
    let query = seen.lock().unwrap()[0].clone();
    assert_eq!(query["from"], "1431856800000");
    assert_eq!(query["to"], "1431860400000");

    // No node holds a bucket in the window: the exact empty answer.
    assert_eq!(body["events"], 0);
    assert_eq!(body["distinct"]["estimate"], 0.0);
    assert_eq!(body["distinct"]["upper_bound"], 0.0);

    let url = format!("{api}/v1/projections/seen_users/contains?item=x");
    let (_, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(body["maybe_present"], false);
    assert_eq!(body["configured_false_positive_rate"], Value::Null);

    let url = format!("{api}/v1/projections/pages/top");
    let (_, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(body["items"], json!([]));
    assert_eq!(body["k"], 10);
}

#[tokio::test]
async fn test_bad_parameters_are_400() {
    let node = FakeNode::new("projector-1", &[0]);
    let seen = node.seen.clone();
    let api = start_query_api(vec![node.start().await]).await;

    let cases = [
        ("visitors/distinct?from=yesterday", "invalid_parameter"),
        (
            "visitors/distinct?from=2015-05-17T10:00:00Z&to=2015-05-17T09:00:00Z",
            "invalid_time_range",
        ),
        ("visitors/distinct?from=5&from=6", "duplicate_parameter"),
        ("visitors/distinct?k=3", "unknown_parameter"),
        ("pages/top?k=0", "invalid_parameter"),
        ("pages/top?k=1001", "invalid_parameter"),
        ("pages/top?k=many", "invalid_parameter"),
        ("pages/count", "missing_parameter"),
        ("seen_users/contains?to=1", "missing_parameter"),
    ];
    for (path, code) in cases {
        let (status, body) =
            get_json(&format!("{api}/v1/projections/{path}"), Some(ACME_KEY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(error_code(&body), code, "{path}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "bad parameters never reach a node"
    );

    let (status, body) = get_json(
        &format!("{api}/v1/projections/pages/top?k=1000"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "k=1000 is allowed: {body}");
}

#[tokio::test]
async fn test_query_of_the_wrong_kind_says_what_the_projection_supports() {
    let api = start_query_api(vec![FakeNode::new("projector-1", &[0]).start().await]).await;

    let (status, body) = get_json(
        &format!("{api}/v1/projections/visitors/top"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "unsupported_query");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("distinct projection") && message.contains("supports: distinct"),
        "{message}"
    );

    let url = format!("{api}/v1/projections/pages/contains?item=x");
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("top, count"),
        "{body}"
    );
}

#[tokio::test]
async fn test_projection_name_that_is_not_utf8_is_a_json_400() {
    let api = start_query_api(vec![FakeNode::new("projector-1", &[0]).start().await]).await;
    let url = format!("{api}/v1/projections/%FF%FE/distinct");
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_parameter", "{body}");
}

#[tokio::test]
async fn test_unknown_projection_and_route_are_404() {
    let api = start_query_api(vec![FakeNode::new("projector-1", &[0]).start().await]).await;

    for name in ["nope", "Not%20Valid", "..", "a%2Fb"] {
        let url = format!("{api}/v1/projections/{name}/distinct");
        let (status, body) = get_json(&url, Some(ACME_KEY)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {body}");
        assert!(
            ["unknown_projection", "not_found"].contains(&error_code(&body)),
            "{name}: {body}"
        );
    }
    let (_, body) = get_json(
        &format!("{api}/v1/projections/nope/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(error_code(&body), "unknown_projection");

    let (status, body) = get_json(&format!("{api}/v2/anything"), Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    let response = reqwest::Client::new()
        .post(format!("{api}/v1/projections"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn test_a_node_down_is_listed_and_the_rest_answers() {
    let up = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..100)))
        .start()
        .await;
    let down = dead_url().await;
    let api = start_query_api(vec![up.clone(), down.clone()]).await;

    let (status, body) = get_json(
        &format!("{api}/v1/projections/visitors/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 100);
    assert_eq!(body["freshness"]["complete"], false);
    assert_eq!(body["freshness"]["nodes_unreachable"], json!([down]));
    assert_eq!(body["freshness"]["partitions"][0]["node"], up);

    let (status, body) = get_json(&format!("{api}/v1/projections"), Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["complete"], false);
    assert_eq!(body["nodes_unreachable"], json!([down]));
}

#[tokio::test]
async fn test_a_node_sending_bad_bytes_is_listed_not_merged() {
    let good = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..40)))
        .start()
        .await;
    let mut bad = FakeNode::new("projector-2", &[1]);
    bad.models.insert(
        ("acme".to_owned(), "visitors".to_owned()),
        BASE64.encode(b"not a read model"),
    );
    let bad = bad.start().await;
    let api = start_query_api(vec![good, bad.clone()]).await;

    let url = format!("{api}/v1/projections/visitors/distinct");
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 40);
    assert_eq!(body["freshness"]["complete"], false);
    assert_eq!(body["freshness"]["nodes_unreachable"], json!([bad]));
    let partitions = body["freshness"]["partitions"].as_array().unwrap();
    assert_eq!(
        partitions.len(),
        1,
        "the bad node's partitions are not claimed: {body}"
    );
}

#[tokio::test]
async fn test_no_node_answering_is_503() {
    let api = start_query_api(vec![dead_url().await, dead_url().await]).await;
    for path in ["/v1/projections/visitors/distinct", "/v1/projections"] {
        let (status, body) = get_json(&format!("{api}{path}"), Some(ACME_KEY)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(error_code(&body), "projectors_unavailable");
    }
}

#[tokio::test]
async fn test_a_slow_node_times_out_and_is_listed() {
    let fast = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..5)))
        .start()
        .await;
    let mut slow = FakeNode::new("projector-2", &[1]);
    slow.delay = Some(Duration::from_secs(5));
    let slow = slow.start().await;
    let api = start_query_api_with_timeout(vec![fast, slow.clone()], 300).await;

    let started = std::time::Instant::now();
    let (status, body) = get_json(
        &format!("{api}/v1/projections/visitors/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(body["events"], 5);
    assert_eq!(body["freshness"]["nodes_unreachable"], json!([slow]));
}

#[tokio::test]
async fn test_a_partition_reported_by_two_nodes_is_refused() {
    let model = distinct_model(users(0..10));
    let a = FakeNode::new("projector-1", &[0, 1])
        .with_model("acme", "visitors", &model)
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model("acme", "visitors", &model)
        .start()
        .await;
    let api = start_query_api(vec![a, b]).await;
    let (status, body) = get_json(
        &format!("{api}/v1/projections/visitors/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "partition_overlap");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partition 1"),
        "{body}"
    );
}

#[tokio::test]
async fn test_projections_lists_definitions_and_all_partitions() {
    let a = FakeNode::new("projector-1", &[3, 0, 9]).start().await;
    let b = FakeNode::new("projector-2", &[1, 2]).start().await;
    let api = start_query_api(vec![a.clone(), b.clone()]).await;

    let (status, body) = get_json(&format!("{api}/v1/projections"), Some(GLOBEX_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let projections = body["projections"].as_array().unwrap();
    assert_eq!(projections.len(), PROJECTIONS.len());
    assert_eq!(projections[0]["name"], "visitors");
    assert!(projections[0].get("group_by").is_none());
    assert_eq!(projections[3]["group_by"], GROUPED.1);
    assert_eq!(projections[3]["max_groups"], 2_000);
    assert_eq!(projections[0]["kind"], "distinct");
    assert_eq!(projections[0]["bucket_ms"], 3_600_000);
    assert_eq!(projections[1]["kind"], "top");
    let partitions: Vec<(i64, &str)> = body["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["node"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        vec![
            (0, a.as_str()),
            (1, b.as_str()),
            (2, b.as_str()),
            (3, a.as_str()),
            (9, a.as_str()),
        ]
    );
    assert_eq!(body["partitions"][4]["lag"], Value::Null);
    assert_eq!(body["partitions"][4]["high_watermark"], Value::Null);
    assert_eq!(body["max_lag"], 30, "the largest known lag");
    assert_eq!(body["complete"], true);
}

#[tokio::test]
async fn test_healthz_and_metrics() {
    let api = start_query_api(vec![dead_url().await]).await;
    let (status, body) = get_json(&format!("{api}/healthz"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    // One refused and one failed query, then the counters must show both.
    let url = format!("{api}/v1/projections/visitors/distinct");
    let (status, _) = get_json(&url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let response = reqwest::get(format!("{api}/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"query_api_requests_total{endpoint="/v1/projections/{name}/distinct",status="401"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"query_api_requests_total{endpoint="/v1/projections/{name}/distinct",status="503"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("query_api_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("query_api_projector_errors_total{"), "{text}");
    assert!(text.contains(r#"reason="unreachable""#), "{text}");
}

#[tokio::test]
async fn test_serve_loads_tenants_and_stops_on_shutdown() {
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..7)))
        .start()
        .await;
    let tenants_file =
        std::env::temp_dir().join(format!("query-api-tenants-{}.toml", std::process::id()));
    std::fs::write(&tenants_file, TENANTS).unwrap();
    let mut config = config(vec![node], 2_000);
    config.tenants_file = tenants_file.clone();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(query_api::serve(
        config,
        listener,
        metrics_handle(),
        async {
            let _ = stopped.await;
        },
    ));

    let url = format!("http://{address}/v1/projections/visitors/distinct");
    let (status, body) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 7);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_file(&tenants_file).unwrap();
    result.unwrap();

    let mut missing = config_with_missing_tenants();
    missing.projector_urls = vec![dead_url().await];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = query_api::serve(missing, listener, metrics_handle(), async {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("tenant file"), "{err:#}");
}

#[tokio::test]
async fn test_a_rotated_key_reads_its_own_tenant_and_the_old_key_nothing() {
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..10)))
        .with_model("globex", "visitors", &distinct_model(users(0..300)))
        .start()
        .await;
    let tenants_file =
        std::env::temp_dir().join(format!("query-api-rotation-{}.toml", std::process::id()));
    std::fs::write(&tenants_file, TENANTS).unwrap();
    let mut config = config(vec![node], 2_000);
    config.tenants_file = tenants_file.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(query_api::serve(
        config,
        listener,
        metrics_handle(),
        async {
            let _ = stopped.await;
        },
    ));
    let url = format!("http://{address}/v1/projections/visitors/distinct");
    let (_, acme) = get_json(&url, Some(ACME_KEY)).await;
    assert_eq!(acme["tenant"], "acme");

    // Rotate acme's key while the query API runs; globex keeps its own.
    let new_acme_key = "acme-key-0002";
    let rotated = TENANTS.replace(
        &api_key_sha256_hex(ACME_KEY),
        &api_key_sha256_hex(new_acme_key),
    );
    assert_ne!(rotated, TENANTS);
    std::fs::write(&tenants_file, &rotated).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = get_json(&url, Some(ACME_KEY)).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old key still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, acme) = get_json(&url, Some(new_acme_key)).await;
    assert_eq!(status, StatusCode::OK, "{acme}");
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["events"], 10);
    let (_, globex) = get_json(&url, Some(GLOBEX_KEY)).await;
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(globex["events"], 300);

    // A broken file is refused: the rotated version stays in force.
    std::fs::write(&tenants_file, "[[tenant]]\nname = \"acme\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, acme) = get_json(&url, Some(new_acme_key)).await;
    assert_eq!(status, StatusCode::OK, "{acme}");
    assert_eq!(acme["tenant"], "acme");
    let metrics = metrics_handle().render();
    assert!(
        metrics.contains("query_api_tenant_reloads_total{result=\"reloaded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("query_api_tenant_reloads_total{result=\"refused\"}"),
        "{metrics}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    std::fs::remove_file(&tenants_file).unwrap();
}

fn config_with_missing_tenants() -> Config {
    let mut config = config(vec![], 2_000);
    config.tenants_file = "/nonexistent/query-api/tenants.toml".into();
    config
}

/// The OpenAPI document the API serves, parsed.
fn openapi_document() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
}

/// Resolves a local `#/...` reference of the document.
fn resolve<'a>(document: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references: {reference}"));
            document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} is not in the document"))
        }
        None => node,
    }
}

/// Checks `body` against the JSON schema the document gives for `status` of `GET template`
/// (or, with `template` `None`, for the shared response `component`).
fn assert_conforms(document: &Value, response: &Value, status: u16, body: &Value, what: &str) {
    let response = resolve(document, response);
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{what}: the document gives no JSON schema for {status}"
    );
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} ({status}) drifted from openapi.json:\n{}\nbody: {body}",
        errors.join("\n")
    );
}

/// GETs `path_and_query` and checks the answer against the document's response for its status.
async fn check_against_document(
    document: &Value,
    api: &str,
    template: &str,
    path_and_query: &str,
    key: Option<&str>,
    expected: StatusCode,
) -> Value {
    let (status, body) = get_json(&format!("{api}{path_and_query}"), key).await;
    assert_eq!(status, expected, "{path_and_query}: {body}");
    let operation = &document["paths"][template]["get"];
    assert!(operation.is_object(), "{template} is not in openapi.json");
    let response = &operation["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "openapi.json lists no {status} for GET {template}"
    );
    assert_conforms(document, response, status.as_u16(), &body, path_and_query);
    body
}

#[tokio::test]
async fn test_every_answer_matches_the_openapi_document() {
    let document = openapi_document();
    let node = FakeNode::new("projector-1", &[0, 1, 9])
        .with_model("acme", "visitors", &distinct_model(users(0..300)))
        .with_model("acme", "pages", &top_model(&[("/home", 30), ("/docs", 4)]))
        .with_model("acme", "seen_users", &membership_model(&["alice"]))
        .with_model(
            "acme",
            GROUPED.0,
            &grouped_model(&[("#en", 0..100), ("#de", 50..80)]),
        )
        .start()
        .await;
    let api = start_query_api(vec![node, dead_url().await]).await;
    let ok = StatusCode::OK;
    let cases: &[(&str, &str, StatusCode)] = &[
        ("/v1/projections", "/v1/projections", ok),
        (
            "/v1/projections/{name}/distinct",
            "/v1/projections/visitors/distinct?from=2015-05-17T10:00:00Z&to=1431860400000",
            ok,
        ),
        (
            "/v1/projections/{name}/distinct",
            "/v1/projections/visitors/distinct",
            ok,
        ),
        (
            "/v1/projections/{name}/top",
            "/v1/projections/pages/top?k=1",
            ok,
        ),
        (
            "/v1/projections/{name}/count",
            "/v1/projections/pages/count?item=%2Fhome",
            ok,
        ),
        (
            "/v1/projections/{name}/contains",
            "/v1/projections/seen_users/contains?item=alice",
            ok,
        ),
        (
            "/v1/projections/{name}/series",
            "/v1/projections/visitors/series?from=0&to=10800000&step=1h",
            ok,
        ),
        (
            "/v1/projections/{name}/series",
            "/v1/projections/pages/series?from=0&to=7200000&step=1h&k=1",
            ok,
        ),
        (
            "/v1/projections/{name}/series",
            "/v1/projections/seen_users/series?from=0&to=3600000&step=1h",
            ok,
        ),
        (
            "/v1/projections/{name}/groups",
            "/v1/projections/channel_users/groups?limit=1",
            ok,
        ),
        (
            "/v1/projections/{name}/distinct",
            "/v1/projections/channel_users/distinct?group=%23de",
            ok,
        ),
        (
            "/v1/projections/{name}/series",
            "/v1/projections/channel_users/series?from=0&to=3600000&step=1h&group=%23en",
            ok,
        ),
        (
            "/v1/overlap",
            "/v1/overlap?a=channel_users&a_group=%23en&b=visitors&from=0",
            ok,
        ),
        (
            "/v1/projections/{name}/groups",
            "/v1/projections/visitors/groups",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/overlap",
            "/v1/overlap?a=visitors",
            StatusCode::BAD_REQUEST,
        ),
        ("/healthz", "/healthz", ok),
        (
            "/v1/projections/{name}/top",
            "/v1/projections/pages/top?k=0",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/projections/{name}/series",
            "/v1/projections/pages/series?from=0&to=7200000&step=1w",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/projections/{name}/contains",
            "/v1/projections/visitors/contains?item=x",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/projections/{name}/count",
            "/v1/projections/nope/count?item=x",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (template, path, status) in cases {
        let body =
            check_against_document(&document, &api, template, path, Some(ACME_KEY), *status).await;
        if template.starts_with("/v1/") && *status == ok {
            let freshness = match *template {
                "/v1/projections" => &body,
                "/v1/overlap" => &body["a"]["freshness"],
                _ => &body["freshness"],
            };
            assert_eq!(freshness["complete"], false, "{path}: one node is down");
        }
    }
    for key in [None, Some("not-a-key")] {
        check_against_document(
            &document,
            &api,
            "/v1/projections/{name}/distinct",
            "/v1/projections/visitors/distinct",
            key,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    // No node answering.
    let api_down = start_query_api(vec![dead_url().await]).await;
    for (template, path) in [
        ("/v1/projections", "/v1/projections"),
        ("/v1/projections/{name}/top", "/v1/projections/pages/top"),
    ] {
        check_against_document(
            &document,
            &api_down,
            template,
            path,
            Some(ACME_KEY),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    }

    // The shared responses: no route, and a method other than GET.
    let (status, body) = get_json(&format!("{api}/v2/nothing"), Some(ACME_KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let not_found = json!({"$ref": "#/components/responses/NotFound"});
    assert_conforms(&document, &not_found, 404, &body, "/v2/nothing");
    let response = reqwest::Client::new()
        .post(format!("{api}/v1/projections"))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    let not_allowed = json!({"$ref": "#/components/responses/MethodNotAllowed"});
    assert_conforms(&document, &not_allowed, 405, &body, "POST /v1/projections");
}

#[tokio::test]
async fn test_the_router_and_the_document_list_the_same_routes() {
    let document = openapi_document();
    let documented: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // Every route the router declares is documented.
    let routes_source = include_str!("../src/routes.rs");
    let routed: Vec<&str> = routes_source
        .split(".route(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(routed.len() >= 9, "found the routes: {routed:?}");
    for route in &routed {
        assert!(
            documented.contains(route),
            "route {route} is served but not in query-api/openapi.json"
        );
    }
    // Every documented path is served: it answers with anything but the fallback's not_found.
    let node = FakeNode::new("projector-1", &[0]).start().await;
    let api = start_query_api(vec![node]).await;
    for path in &documented {
        assert!(routed.contains(path), "{path} is documented but not routed");
        let url = format!("{api}{}", path.replace("{name}", "visitors"));
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .map(|b| b["error"]["code"].clone());
        assert_ne!(
            code,
            Some(json!("not_found")),
            "{path} is documented but the router has no such route: {status} {text}"
        );
    }
    // The document served is the one in the repository.
    let (status, served) = get_json(&format!("{api}/openapi.json"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, document);
    assert_eq!(served["openapi"], "3.1.0");
}

async fn start_query_api_with_cors(projector_urls: Vec<String>, origins: &[&str]) -> String {
    let mut config = config(projector_urls, 2_000);
    config.cors_allowed_origins = origins.iter().map(|o| o.to_string()).collect();
    let app = query_api::router(
        &config,
        TenantFile::from_toml(TENANTS).unwrap(),
        metrics_handle(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

async fn preflight(api: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{api}/v1/projections"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn test_cors_answers_only_the_configured_origins() {
    let node = FakeNode::new("projector-1", &[0]).start().await;
    let api = start_query_api_with_cors(vec![node.clone()], &["https://dash.example.com"]).await;
    let allowed = preflight(&api, "https://dash.example.com").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://dash.example.com"
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let denied = preflight(&api, "https://evil.example.com").await;
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // No origins configured (the default): no CORS answer at all.
    let plain = start_query_api(vec![node]).await;
    let refused = preflight(&plain, "https://dash.example.com").await;
    assert_eq!(refused.status().as_u16(), 405);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn test_a_matching_if_none_match_is_304_and_a_stale_one_200() {
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..10)))
        .start()
        .await;
    let api = start_query_api(vec![node]).await;
    let url = format!("{api}/v1/projections/visitors/distinct");
    let client = reqwest::Client::new();
    let first = client.get(&url).bearer_auth(ACME_KEY).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.headers()["cache-control"], "private, max-age=5");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let body = first.bytes().await.unwrap();
    assert_eq!(
        etag,
        format!("W/\"{:016x}\"", xxhash_rust::xxh64::xxh64(&body, 0)),
        "the tag is the hash of the body"
    );

    let again = client
        .get(&url)
        .bearer_auth(ACME_KEY)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());

    let stale = client
        .get(&url)
        .bearer_auth(ACME_KEY)
        .header("If-None-Match", "W/\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 200);

    // Errors are never cached.
    let error = client.get(&url).send().await.unwrap();
    assert_eq!(error.status().as_u16(), 401);
    assert!(error.headers().get("etag").is_none());
}

#[tokio::test]
async fn test_answers_are_gzipped_only_when_the_client_accepts_it() {
    use std::io::Read;
    let node = FakeNode::new("projector-1", &[0, 1]).start().await;
    let api = start_query_api(vec![node]).await;
    let client = reqwest::Client::new();
    let url = format!("{api}/openapi.json");
    let gzipped = client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let compressed = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document, openapi_document());
    assert!(compressed.len() < text.len());

    let plain = client.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body, openapi_document());
}

#[tokio::test]
async fn test_groups_merge_across_nodes_and_list_largest_first() {
    // #en: users 0..600 on one node and 300..900 on the other (900 distinct); #de: 0..200;
    // #fr: 1000..1050; one value without a group.
    let mut first = grouped_model(&[("#en", 0..600), ("#de", 0..200)]);
    first.update_in("user-x", None);
    let a = FakeNode::new("projector-1", &[0])
        .with_model("acme", GROUPED.0, &first)
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model(
            "acme",
            GROUPED.0,
            &grouped_model(&[("#en", 300..900), ("#fr", 1000..1050)]),
        )
        .start()
        .await;
    let api = start_query_api(vec![a, b]).await;

    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/groups"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["group_by"], "properties.channel");
    assert_eq!(body["kind"], "distinct");
    assert_eq!(body["groups_total"], 3);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["without_group"], 1);
    assert_eq!(body["past_max_groups"], 0);
    assert_eq!(body["events"], 600 + 200 + 1 + 600 + 50);
    let groups = body["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["#en", "#de", "#fr"], "largest first: {body}");
    for (group, truth) in groups.iter().zip([900.0, 200.0, 50.0]) {
        let distinct = &group["distinct"];
        let (low, high) = (
            distinct["lower_bound"].as_f64().unwrap(),
            distinct["upper_bound"].as_f64().unwrap(),
        );
        assert!(low <= truth && truth <= high, "{group}");
    }
    assert_eq!(groups[0]["events"], 1200, "events add up across nodes");

    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/groups?limit=2"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["groups"].as_array().unwrap().len(), 2);
    assert_eq!(body["groups_total"], 3);
    assert_eq!(body["truncated"], true);

    // One group of the projection through the distinct endpoint, and the total without it.
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct?group=%23de"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["group"], "#de");
    assert_eq!(body["events"], 200);
    let estimate = body["distinct"]["estimate"].as_f64().unwrap();
    assert!((estimate - 200.0).abs() < 10.0, "{body}");
    let (_, total) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert!(total.get("group").is_none(), "{total}");
    assert_eq!(total["events"], 1451);
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct?group=%23nowhere"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 0);
    assert_eq!(body["distinct"]["estimate"], 0.0);

    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/series?from=0&to=7200000&step=1h&group=%23fr"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["group"], "#fr");
    assert_eq!(body["points"][0]["events"], 50);
}

#[tokio::test]
async fn test_group_mistakes_are_clear_400s() {
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", "visitors", &distinct_model(users(0..10)))
        .with_model("acme", "pages", &top_model(&[("/", 3)]))
        .start()
        .await;
    let api = start_query_api(vec![node]).await;
    let cases = [
        ("/v1/projections/visitors/distinct?group=x", "not_grouped"),
        ("/v1/projections/visitors/groups", "not_grouped"),
        (
            "/v1/projections/pages/count?item=%2F&group=x",
            "not_grouped",
        ),
        (
            "/v1/projections/visitors/series?from=0&to=3600000&step=1h&group=x",
            "not_grouped",
        ),
        ("/v1/projections/seen_users/groups", "unsupported_query"),
        (
            "/v1/projections/seen_users/contains?item=x&group=x",
            "unknown_parameter",
        ),
        (
            "/v1/projections/channel_users/distinct?group=",
            "invalid_parameter",
        ),
        (
            "/v1/projections/channel_users/groups?limit=0",
            "invalid_parameter",
        ),
        (
            "/v1/projections/channel_users/groups?limit=1001",
            "invalid_parameter",
        ),
        ("/v1/overlap?a=visitors", "missing_parameter"),
        ("/v1/overlap?a=visitors&b=pages", "unsupported_query"),
        ("/v1/overlap?a=visitors&b=visitors&b_group=x", "not_grouped"),
        ("/v1/overlap?a=visitors&b=nope", "unknown_projection"),
    ];
    for (path, code) in cases {
        let (status, body) = get_json(&format!("{api}{path}"), Some(ACME_KEY)).await;
        assert_eq!(error_code(&body), code, "{path}: {body}");
        let expected = if code == "unknown_projection" {
            404
        } else {
            400
        };
        assert_eq!(status.as_u16(), expected, "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 20,
            "{path}: {body}"
        );
    }
    // A grouped projection with no data in the window answers an empty group.
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct?group=x"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 0);
}

#[tokio::test]
async fn test_groups_past_the_listing_cap_need_a_limit() {
    let mut model =
        ReadModel::new_grouped(&SketchParams::default_for(Kind::Distinct), 2_000).unwrap();
    for group in 0..1_001 {
        model.update_in(&format!("user-{group}"), Some(&format!("g{group:04}")));
    }
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", GROUPED.0, &model)
        .start()
        .await;
    let api = start_query_api(vec![node]).await;
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/groups"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "too_many_groups");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the window holds 1001 groups, more than the 1000"),
        "{body}"
    );
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/groups?limit=1000"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["groups"].as_array().unwrap().len(), 1000);
    assert_eq!(body["truncated"], true);
}

#[tokio::test]
async fn test_overlap_of_groups_and_projections_with_bounds() {
    // #en: users 0..3000, #de: users 2000..4000: 1000 in both, 4000 in either.
    let grouped = grouped_model(&[("#en", 0..3000), ("#de", 2000..4000)]);
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", GROUPED.0, &grouped)
        .with_model("acme", "visitors", &distinct_model(users(3500..6000)))
        .start()
        .await;
    let api = start_query_api(vec![node]).await;
    let within = |estimate: &Value, truth: f64| {
        let low = estimate["lower_bound"].as_f64().unwrap();
        let high = estimate["upper_bound"].as_f64().unwrap();
        let value = estimate["estimate"].as_f64().unwrap();
        assert!(low <= value && value <= high, "{estimate}");
        assert!(low <= truth && truth <= high, "{truth} outside {estimate}");
    };

    let (status, body) = get_json(
        &format!("{api}/v1/overlap?a=channel_users&a_group=%23en&b=channel_users&b_group=%23de"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["a"]["group"], "#en");
    assert_eq!(body["b"]["events"], 2000);
    within(&body["a"]["distinct"], 3000.0);
    within(&body["union"], 4000.0);
    within(&body["intersection"], 1000.0);
    let confidence = body["intersection"]["confidence"].as_f64().unwrap();
    assert!((0.85..0.87).contains(&confidence), "{body}");

    // A group against another projection, and a whole grouped projection (its total).
    let (status, body) = get_json(
        &format!("{api}/v1/overlap?a=visitors&b=channel_users&b_group=%23de"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // visitors: 3500..6000; #de: 2000..4000.
    within(&body["union"], 4000.0);
    within(&body["intersection"], 500.0);
    let (status, body) = get_json(
        &format!("{api}/v1/overlap?a=visitors&b=channel_users"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    within(&body["union"], 6000.0);
    within(&body["intersection"], 500.0);
}

#[tokio::test]
async fn test_a_group_answer_says_when_values_went_to_no_group() {
    // max_groups 1: "/a" takes the only group; every "/b" value goes to no group.
    let mut users = ReadModel::new_grouped(&SketchParams::default_for(Kind::Distinct), 1).unwrap();
    let mut paths = ReadModel::new_grouped(&SketchParams::default_for(Kind::Top), 1).unwrap();
    for (user, group) in [("u1", "/a"), ("u2", "/b"), ("u3", "/b"), ("u4", "/a")] {
        users.update_in(user, Some(group));
        paths.update_in(user, Some(group));
    }
    assert_eq!(users.past_max_groups(), 2);
    let node = FakeNode::new("projector-1", &[0])
        .with_model("acme", GROUPED.0, &users)
        .with_model("acme", "pages", &paths)
        .start()
        .await;
    let api = start_query_api(vec![node]).await;

    let (_, body) = get_json(
        &format!("{api}/v1/projections/channel_users/groups"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(body["past_max_groups"], 2, "{body}");
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct?group=%2Fb"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 0);
    assert_eq!(
        body["past_max_groups"], 2,
        "the answer says it may be low: {body}"
    );
    let (_, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert!(body.get("past_max_groups").is_none(), "{body}");
    assert_eq!(body["events"], 4);

    // The group's item filter holds none of "/b"'s values, which went to no group: the count
    // must not claim they were never seen.
    let (status, body) = get_json(
        &format!("{api}/v1/projections/pages/count?item=u2&group=%2Fb"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["never_seen"], false, "{body}");
    assert_eq!(body["past_max_groups"], 2);
    let (_, body) = get_json(
        &format!("{api}/v1/overlap?a=channel_users&a_group=%2Fa&b=channel_users&b_group=%2Fb"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(body["b"]["past_max_groups"], 2, "{body}");

    let (_, body) = get_json(
        &format!("{api}/v1/overlap?a=visitors&b=visitors&b_group=x"),
        Some(ACME_KEY),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remove the b_group parameter"),
        "{body}"
    );
}

#[tokio::test]
async fn test_nodes_switching_to_group_by_one_by_one_still_answer_the_total() {
    // One node already folds the grouped definition, the other still the ungrouped one.
    let a = FakeNode::new("projector-1", &[0])
        .with_model("acme", GROUPED.0, &grouped_model(&[("#en", 0..600)]))
        .start()
        .await;
    let b = FakeNode::new("projector-2", &[1])
        .with_model("acme", GROUPED.0, &distinct_model(users(300..900)))
        .start()
        .await;
    let api = start_query_api(vec![a, b]).await;
    let (status, body) = get_json(
        &format!("{api}/v1/projections/channel_users/distinct"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], 1200);
    let distinct = &body["distinct"];
    assert!(
        distinct["lower_bound"].as_f64().unwrap() <= 900.0
            && 900.0 <= distinct["upper_bound"].as_f64().unwrap(),
        "{body}"
    );
    // The groups are not all there yet: a group answer is refused, not silently partial.
    for path in [
        "/v1/projections/channel_users/groups",
        "/v1/projections/channel_users/distinct?group=%23en",
    ] {
        let (status, body) = get_json(&format!("{api}{path}"), Some(ACME_KEY)).await;
        assert_eq!(status.as_u16(), 502, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("built before group_by was declared"),
            "{path}: {body}"
        );
    }
}
