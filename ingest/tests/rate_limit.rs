//! Rate limits without Redis: through [`TenantLimits`] with a fake clock (refill, window edges,
//! the whole-second `Retry-After`, each replica's share, reloaded limits) and through the HTTP
//! router with the real clock (the `Retry-After` and `RateLimit` fields of a 429, the tenant's
//! event types, event size and body size).
//!
//! Kafka points at a closed port: a request the rate limit admits is then answered 503
//! `not_ready`, so 503 means "admitted" and 429 means "refused" here.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ingest::rate_limit::clock::FakeClock;
use ingest::rate_limit::{RateLimitConfig, Refusal, Status, TenantLimits};
use ingest::{AppState, Config, router};
use metrics_exporter_prometheus::PrometheusBuilder;
use reqwest::StatusCode;
use serde_json::{Value, json};

use schemas::tenant::{RateLimitAlgorithm, Tenant, TenantFile, api_key_sha256_hex};

const ALGORITHMS: [RateLimitAlgorithm; 3] = [
    RateLimitAlgorithm::Gcra,
    RateLimitAlgorithm::SlidingWindowLog,
    RateLimitAlgorithm::SlidingWindowCounter,
];

#[tokio::test]
async fn test_waiting_retry_after_seconds_admits_and_one_second_less_does_not() {
    for algorithm in ALGORITHMS {
        let clock = FakeClock::default();
        let limits = TenantLimits::with_clock(&RateLimitConfig::default(), Arc::new(clock.clone()));
        // 3 events per second, 7 at once: the windows are 7/3 s long, so waits are rarely whole
        // seconds.
        let tenant = tenant(algorithm, 3, 7);
        let mut refusals = 0;
        for (step, batch) in [2u32, 3, 1, 5, 2, 7, 4, 1, 6, 3]
            .into_iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            clock.advance(Duration::from_millis(137 * (step as u64 % 5)));
            let Err(refusal) = limits.admit(&tenant, events(batch)).await else {
                continue;
            };
            let Refusal::Later { retry_after_s, .. } = refusal else {
                panic!("{algorithm:?}: a batch within the burst was refused for good");
            };
            refusals += 1;
            assert!(retry_after_s >= 1);
            clock.advance(Duration::from_secs(retry_after_s - 1));
            assert!(
                limits.admit(&tenant, events(batch)).await.is_err(),
                "{algorithm:?}: admitted one second before Retry-After ({retry_after_s} s)"
            );
            clock.advance(Duration::from_secs(1));
            assert!(
                limits.admit(&tenant, events(batch)).await.is_ok(),
                "{algorithm:?}: refused after waiting Retry-After ({retry_after_s} s)"
            );
        }
        assert!(refusals >= 5, "{algorithm:?}: only {refusals} refusals");
    }
}

#[tokio::test]
async fn test_batches_cost_their_events_and_larger_than_the_burst_never_pass() {
    for algorithm in ALGORITHMS {
        let clock = FakeClock::default();
        let limits = TenantLimits::with_clock(&RateLimitConfig::default(), Arc::new(clock.clone()));
        let tenant = tenant(algorithm, 10, 10);
        let status = limits.admit(&tenant, events(7)).await.unwrap();
        assert_eq!(status.remaining, 3, "{algorithm:?}");
        assert!(
            limits.admit(&tenant, events(4)).await.is_err(),
            "{algorithm:?}"
        );
        assert!(
            limits.admit(&tenant, events(3)).await.is_ok(),
            "{algorithm:?}"
        );
        assert_eq!(
            limits.admit(&tenant, events(11)).await,
            Err(Refusal::Never { burst_events: 10 }),
            "{algorithm:?}"
        );
    }
}

#[tokio::test]
async fn test_each_replica_enforces_its_share_without_redis() {
    let clock = FakeClock::default();
    let config = RateLimitConfig {
        replica_count: 4,
        redis: None,
    };
    let limits = TenantLimits::with_clock(&config, Arc::new(clock.clone()));
    // 8 per second and 20 at once, shared by 4 replicas: 2 per second and 5 at once here.
    let tenant = tenant(RateLimitAlgorithm::Gcra, 8, 20);
    let status = limits.admit(&tenant, events(5)).await.unwrap();
    assert_eq!(status.limit.events_per_second, 2);
    assert_eq!(status.limit.burst_events, 5);
    let Err(Refusal::Later { retry_after_s, .. }) = limits.admit(&tenant, events(1)).await else {
        panic!("the share of 5 events is used up");
    };
    assert_eq!(retry_after_s, 1);
    assert_eq!(
        limits.admit(&tenant, events(6)).await,
        Err(Refusal::Never { burst_events: 5 })
    );
    clock.advance(Duration::from_millis(500));
    assert!(limits.admit(&tenant, events(1)).await.is_ok());
}

#[tokio::test]
async fn test_limits_follow_the_tenant_file_in_force() {
    let clock = FakeClock::default();
    let limits = TenantLimits::with_clock(&RateLimitConfig::default(), Arc::new(clock.clone()));
    let small = tenant(RateLimitAlgorithm::SlidingWindowLog, 1, 2);
    assert!(limits.admit(&small, events(2)).await.is_ok());
    assert!(limits.admit(&small, events(1)).await.is_err());

    // A reload that raises the burst takes effect on the next request.
    let larger = tenant(RateLimitAlgorithm::SlidingWindowLog, 1, 5);
    assert!(limits.admit(&larger, events(5)).await.is_ok());
    assert!(limits.admit(&larger, events(1)).await.is_err());

    // A tenant dropped from the file loses its state.
    let other = TenantFile::from_toml(&format!(
        "[[tenant]]\nname = \"other\"\napi_key_sha256 = [\"{}\"]\n",
        api_key_sha256_hex("other-key-0001")
    ))
    .unwrap();
    limits.retain(&other);
    assert!(limits.admit(&larger, events(5)).await.is_ok());
}

#[test]
fn test_header_fields_follow_the_ratelimit_draft() {
    let tenant = tenant(RateLimitAlgorithm::Gcra, 50_000, 100_000);
    let status = Status {
        limit: tenant.rate_limit,
        remaining: 99_500,
        reset: Duration::from_millis(10),
    };
    let [(policy_name, policy), (limit_name, limit)] = status.header_fields(None);
    assert_eq!(policy_name.as_str(), "ratelimit-policy");
    assert_eq!(policy, "\"events\";q=100000;w=2");
    assert_eq!(limit_name.as_str(), "ratelimit");
    assert_eq!(limit, "\"events\";r=99500;t=1");
    // With Retry-After, the effective window ends with it.
    let [_, (_, refused)] = status.header_fields(Some(3));
    assert_eq!(refused, "\"events\";r=99500;t=3");
}

#[tokio::test]
async fn test_429_carries_retry_after_and_ratelimit_fields_and_waiting_it_admits() {
    let server = Server::start(&[(
        "tiny",
        "events_per_second = 2\nburst_events = 4\nrate_limit_algorithm = \"gcra\"",
    )])
    .await;
    let admitted = server.post("tiny", &events_json(4, "view")).await;
    assert_eq!(admitted.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(admitted.headers()["ratelimit-policy"], "\"events\";q=4;w=2");
    assert_eq!(admitted.headers()["ratelimit"], "\"events\";r=0;t=2");

    let refused = server.post("tiny", &events_json(1, "view")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One event at two per second is half a second away, rounded up.
    assert_eq!(retry_after, 1);
    assert_eq!(refused.headers()["ratelimit"], "\"events\";r=0;t=1");
    assert_eq!(refused.headers()["ratelimit-policy"], "\"events\";q=4;w=2");
    assert_eq!(error_of(refused).await["code"], "rate_limited");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let after = server.post("tiny", &events_json(1, "view")).await;
    assert_eq!(after.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(after).await["code"], "not_ready");
}

#[tokio::test]
async fn test_event_types_outside_the_tenant_list_get_400_naming_the_allowed_ones() {
    let server = Server::start(&[("shop", "allowed_event_types = [\"view\", \"buy\"]")]).await;
    let body = json!([
        {"type": "view", "key": "a"},
        {"type": "refund", "key": "b"},
    ]);
    let response = server.post("shop", &body.to_string()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("ratelimit").is_none());
    let error = error_of(response).await;
    assert_eq!(error["code"], "invalid_events");
    assert_eq!(error["problems"][0]["path"], "[1].type");
    let reason = error["problems"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("\"refund\""), "{reason}");
    assert!(reason.contains("buy, view"), "{reason}");

    let allowed = server.post("shop", &events_json(2, "buy")).await;
    assert_eq!(allowed.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn test_tenant_event_and_body_bounds_are_enforced() {
    let server = Server::start(&[
        ("small", "max_event_bytes = 200\nmax_body_bytes = 400"),
        ("large", ""),
    ])
    .await;
    let big_event = json!([{"type": "view", "key": "a", "properties": {"p": "x".repeat(150)}}]);
    let response = server.post("small", &big_event.to_string()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["problems"][0]["path"], "[0]");
    let reason = error["problems"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("more than the 200"), "{reason}");

    let big_body = events_json(20, "view");
    assert!(big_body.len() > 400);
    let response = server.post("small", &big_body).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error = error_of(response).await;
    assert!(error["message"].as_str().unwrap().contains("400 bytes"));

    // Another tenant keeps ingest's own bounds.
    let response = server.post("large", &big_body).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = server.post("large", &big_event.to_string()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn test_deploy_files_load_and_the_demo_keys_still_authenticate() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let config = Config::load(&deploy.join("ingest.toml")).unwrap();
    assert_eq!(config.rate_limit.replica_count, 1);
    assert!(config.rate_limit.redis.is_none());
    let tenants = TenantFile::load(&deploy.join("tenants.toml")).unwrap();
    let text = std::fs::read_to_string(deploy.join("tenants.toml")).unwrap();
    for (key, name) in [
        ("weblog-demo-key-0001", "weblog"),
        ("wiki-demo-key-0001", "wiki"),
    ] {
        assert_eq!(tenants.authenticate(key).unwrap().name, name);
        assert!(
            !text.contains(&format!("\"{key}\"")),
            "the tenant file must not hold the key {key} as a value"
        );
    }
    // The demo loads page views into weblog and edits into wiki.
    assert!(
        tenants
            .tenant("weblog")
            .unwrap()
            .allows_event_type("page_view")
    );
    assert!(tenants.tenant("wiki").unwrap().allows_event_type("edit"));
}

fn tenant(algorithm: RateLimitAlgorithm, events_per_second: u32, burst_events: u32) -> Tenant {
    let text = format!(
        "[[tenant]]\nname = \"t\"\napi_key_sha256 = [\"{}\"]\nevents_per_second = {events_per_second}\n\
         burst_events = {burst_events}\nrate_limit_algorithm = \"{}\"\n",
        api_key_sha256_hex("t-key-0001"),
        algorithm.name()
    );
    (*TenantFile::from_toml(&text).unwrap().tenants()[0]).clone()
}

fn events(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// An ingest router on a loopback port, Kafka on a closed port, one key `<tenant>-key-0001` per
/// tenant.
struct Server {
    address: SocketAddr,
    client: reqwest::Client,
}

impl Server {
    async fn start(tenants: &[(&str, &str)]) -> Server {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"rate-limit-test\"\n\
             tenants_file = \"unused.toml\"\nmetadata_timeout_ms = 200\n",
            closed.local_addr().unwrap()
        );
        let config = Config::from_toml(&text).unwrap();
        let tenants: String = tenants
            .iter()
            .map(|(name, rules)| {
                format!(
                    "[[tenant]]\nname = \"{name}\"\napi_key_sha256 = [\"{}\"]\n{rules}\n",
                    api_key_sha256_hex(&format!("{name}-key-0001"))
                )
            })
            .collect();
        let tenants = TenantFile::from_toml(&tenants).unwrap();
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let state = AppState::new(&config, tenants, metrics).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            address,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, tenant: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("http://{}/v1/events", self.address))
            .header("authorization", format!("Bearer {tenant}-key-0001"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }
}

/// A JSON array of `count` events of `event_type`.
fn events_json(count: usize, event_type: &str) -> String {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"type": event_type, "key": format!("user-{i}")}))
        .collect();
    serde_json::to_string(&events).unwrap()
}

async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.unwrap();
    body["error"].clone()
}
