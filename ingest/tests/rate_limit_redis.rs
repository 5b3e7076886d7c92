//! Shared rate limits against a real Redis server: several ingest replicas (router instances
//! sharing one Redis) under parallel clients never admit more than each algorithm's bound, a
//! client that waits `Retry-After` is admitted, and the state Redis keeps expires.
//!
//! The server comes from `REDIS_URL` (e.g. `redis-server --port 16379 --save '' --appendonly no
//! --daemonize yes`, then `REDIS_URL=redis://127.0.0.1:16379/`); the tests fail when it is
//! unset. Every test writes under its own key prefix. Kafka points at a closed port, so an
//! admitted request is answered 503 `not_ready` and a refused one 429.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ingest::{AppState, Config, router};
use metrics_exporter_prometheus::PrometheusBuilder;
use reqwest::StatusCode;
use serde_json::{Value, json};

use schemas::tenant::{RateLimitAlgorithm, TenantFile, api_key_sha256_hex};

const KEY: &str = "shared-test-key-0001";

const ALGORITHMS: [RateLimitAlgorithm; 3] = [
    RateLimitAlgorithm::Gcra,
    RateLimitAlgorithm::SlidingWindowLog,
    RateLimitAlgorithm::SlidingWindowCounter,
];

/// One answered request, in seconds since the start of the run.
#[derive(Debug, Clone, Copy)]
struct Answer {
    sent_s: f64,
    received_s: f64,
    events: u64,
    admitted: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_replicas_sharing_redis_admit_no_more_than_the_bound() {
    let runs = ALGORITHMS.map(|algorithm| async move {
        let rate: u32 = 40;
        let burst: u32 = 20;
        let replicas = Replicas::start(algorithm, rate, burst, 3).await;
        let answers = replicas.hammer(8, Duration::from_millis(2500)).await;
        for replica in &replicas.states {
            assert!(
                !replica.limits().is_fallback(),
                "{algorithm:?}: a replica fell back to local limits during the run"
            );
        }
        check_bound(algorithm, u64::from(rate), u64::from(burst), &answers);
    });
    let [gcra, log, counter] = runs;
    tokio::join!(gcra, log, counter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_waiting_retry_after_is_enough_with_shared_limits() {
    let runs = ALGORITHMS.map(|algorithm| async move {
        // 2 events per second, 3 at once: windows of 1.5 s.
        let replicas = Replicas::start(algorithm, 2, 3, 2).await;
        let first = replicas.post(0, 3).await;
        assert_eq!(
            first.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{algorithm:?}"
        );
        // The other replica sees the same quota: two more events must wait.
        let refused = replicas.post(1, 2).await;
        assert_eq!(
            refused.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm:?}"
        );
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=3).contains(&retry_after),
            "{algorithm:?}: {retry_after}"
        );
        assert_eq!(
            refused.headers()["ratelimit"],
            format!("\"events\";r=0;t={retry_after}").as_str(),
            "{algorithm:?}"
        );
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let after = replicas.post(1, 2).await;
        assert_eq!(
            after.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{algorithm:?}: refused after waiting Retry-After ({retry_after} s)"
        );
    });
    let [gcra, log, counter] = runs;
    tokio::join!(gcra, log, counter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_state_in_redis_expires() {
    let runs = ALGORITHMS.map(|algorithm| async move {
        // 100 events per second, 50 at once: windows of half a second.
        let replicas = Replicas::start(algorithm, 100, 50, 1).await;
        for _ in 0..3 {
            replicas.post(0, 10).await;
        }
        let mut redis = redis_connection().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", replicas.prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "{algorithm:?}: no state written");
        for key in &keys {
            let ttl_ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            // At most two windows, plus a millisecond of rounding.
            assert!(
                (1..=1001).contains(&ttl_ms),
                "{algorithm:?}: key {key} expires in {ttl_ms} ms"
            );
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", replicas.prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(left.is_empty(), "{algorithm:?}: {left:?} did not expire");
    });
    let [gcra, log, counter] = runs;
    tokio::join!(gcra, log, counter);
}

/// Checks the answers against what the algorithm promises. A request's decision happened
/// between its sending and its answer, so only requests answered within a span are counted in
/// it: the check can miss an excess but never invents one.
fn check_bound(algorithm: RateLimitAlgorithm, rate: u64, burst: u64, answers: &[Answer]) {
    let admitted: Vec<&Answer> = answers.iter().filter(|answer| answer.admitted).collect();
    let refused = answers.len() - admitted.len();
    let total: u64 = admitted.iter().map(|answer| answer.events).sum();
    let first = answers.iter().map(|a| a.sent_s).fold(f64::MAX, f64::min);
    let last = answers.iter().map(|a| a.received_s).fold(0.0, f64::max);
    let span_s = last - first;
    // GCRA and the log never pass more than burst + rate * T in T seconds; the counter may pass
    // up to two bursts across the edge of its fixed windows.
    let bursts = match algorithm {
        RateLimitAlgorithm::SlidingWindowCounter => 2.0,
        _ => 1.0,
    };
    let bound = |seconds: f64| bursts * burst as f64 + rate as f64 * seconds;
    println!(
        "{algorithm:?}: {} requests, {total} events admitted in {span_s:.2} s (bound {:.0}), \
         {refused} requests refused",
        answers.len(),
        bound(span_s)
    );
    assert!(
        total as f64 <= bound(span_s),
        "{algorithm:?}: {total} events admitted in {span_s:.2} s, over {:.0}",
        bound(span_s)
    );
    // Shared, not starved: under load the replicas together admit close to the quota.
    assert!(
        total as f64 >= rate as f64 * span_s * 0.5,
        "{algorithm:?}: only {total} events admitted in {span_s:.2} s"
    );
    assert!(
        refused > 0,
        "{algorithm:?}: the load never reached the limit"
    );
    let window_s = burst as f64 / rate as f64;
    for start in &admitted {
        for span in [1.0, window_s] {
            let inside: u64 = admitted
                .iter()
                .filter(|a| a.sent_s >= start.sent_s && a.received_s < start.sent_s + span)
                .map(|a| a.events)
                .sum();
            assert!(
                inside as f64 <= bound(span),
                "{algorithm:?}: {inside} events admitted within {span} s from {:.3} s",
                start.sent_s
            );
            if algorithm == RateLimitAlgorithm::SlidingWindowLog && span == window_s {
                assert!(
                    inside <= burst,
                    "{algorithm:?}: {inside} events admitted within one window"
                );
            }
        }
    }
}

/// Ingest routers sharing one Redis (and one key prefix), one tenant with key [`KEY`].
struct Replicas {
    addresses: Vec<SocketAddr>,
    states: Vec<AppState>,
    client: reqwest::Client,
    prefix: String,
}

impl Replicas {
    async fn start(algorithm: RateLimitAlgorithm, rate: u32, burst: u32, count: usize) -> Replicas {
        let prefix = unique_prefix(algorithm.name());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A generous timeout: this test is about the shared bound, not about falling back.
        let text = format!(
            "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"rate-limit-test\"\n\
             tenants_file = \"unused.toml\"\nmetadata_timeout_ms = 200\n\
             [rate_limit]\nredis_url = \"{}\"\nredis_timeout_ms = 2000\n\
             redis_key_prefix = \"{prefix}\"\nreplica_count = {count}\n",
            closed.local_addr().unwrap(),
            redis_url()
        );
        let config = Config::from_toml(&text).unwrap();
        let tenants = format!(
            "[[tenant]]\nname = \"shared\"\napi_key_sha256 = [\"{}\"]\n\
             events_per_second = {rate}\nburst_events = {burst}\nrate_limit_algorithm = \"{}\"\n",
            api_key_sha256_hex(KEY),
            algorithm.name()
        );
        let mut addresses = Vec::new();
        let mut states = Vec::new();
        for _ in 0..count {
            let tenants = TenantFile::from_toml(&tenants).unwrap();
            let metrics = PrometheusBuilder::new().build_recorder().handle();
            let state = AppState::new(&config, tenants, metrics).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.push(listener.local_addr().unwrap());
            let app = router(state.clone());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            states.push(state);
        }
        Replicas {
            addresses,
            states,
            client: reqwest::Client::new(),
            prefix,
        }
    }

    async fn post(&self, replica: usize, events: usize) -> reqwest::Response {
        post(&self.client, self.addresses[replica], events).await
    }

    /// `clients` parallel clients, each sending batches of 1 to 5 events to random replicas,
    /// 5 to 15 ms apart, for `duration`.
    async fn hammer(&self, clients: u64, duration: Duration) -> Vec<Answer> {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let http = self.client.clone();
                let addresses = self.addresses.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut seed = client * 7919 + 17;
                    while started.elapsed() < duration {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let events = 1 + (seed >> 33) % 5;
                        let replica = (seed >> 40) as usize % addresses.len();
                        let sent_s = started.elapsed().as_secs_f64();
                        let response = post(&http, addresses[replica], events as usize).await;
                        let received_s = started.elapsed().as_secs_f64();
                        let admitted = match response.status() {
                            StatusCode::SERVICE_UNAVAILABLE => true,
                            StatusCode::TOO_MANY_REQUESTS => false,
                            other => panic!("unexpected answer {other}"),
                        };
                        answers.push(Answer {
                            sent_s,
                            received_s,
                            events,
                            admitted,
                        });
                        tokio::time::sleep(Duration::from_millis(5 + (seed >> 50) % 11)).await;
                    }
                    answers
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.extend(task.await.unwrap());
        }
        answers
    }
}

/// Posts `events` events as the test tenant to the ingest at `address`.
async fn post(client: &reqwest::Client, address: SocketAddr, events: usize) -> reqwest::Response {
    let events: Vec<Value> = (0..events)
        .map(|i| json!({"type": "view", "key": format!("user-{i}")}))
        .collect();
    client
        .post(format!("http://{address}/v1/events"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&events).unwrap())
        .send()
        .await
        .unwrap()
}

/// The Redis server to test against; the tests fail without one rather than pass unchecked.
fn redis_url() -> String {
    std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: start a Redis server (redis-server --port 16379 --save '' \
         --appendonly no --daemonize yes) and run with REDIS_URL=redis://127.0.0.1:16379/",
    )
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn unique_prefix(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ingest-test:{label}:{}:{nanos}", std::process::id())
}
