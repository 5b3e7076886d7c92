//! Shared rate limits when Redis goes away and comes back. The Redis server of `REDIS_URL` is
//! reached through a TCP proxy run by the test, which can stop forwarding (Redis then looks
//! hung: connections open, no answers) and forward again; nothing stops the real server.
//!
//! What is shown: a decision never waits longer than the timeout; the replica falls back to its
//! share of the quota (`quota / replica_count`), says so in `ingest_rate_limit_fallback` and in
//! one log line however many decisions fail; it returns to the shared limit by itself once Redis
//! answers again, logging that once; an unreachable Redis (closed port) falls back at once.
//! One test only: the gauge and the captured log are process-wide.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ingest::rate_limit::{RateLimitSection, Refusal, TenantLimits};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use redis::IntoConnectionInfo;
use tokio::net::{TcpListener, TcpStream};

use schemas::tenant::{Tenant, TenantFile, api_key_sha256_hex};

/// How long a decision may wait for Redis: longer than the 50 ms default, so that a busy test
/// machine does not fall back before the test means it to.
const TIMEOUT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_falls_back_to_the_local_share_and_recovers_by_itself() {
    let log = capture_log();
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let proxy = Proxy::start(redis_address()).await;
    let limits = replica_limits(&format!("redis://{}/", proxy.address), 2);
    // 10 per second and 10 at once, shared by 2 replicas: 5 and 5 each when alone.
    let tenant = tenant_with(&unique_name("fallback"), 10, 10);

    // Redis answers: the decision is shared.
    assert!(limits.admit(&tenant, events(1)).await.is_ok());
    assert!(!limits.is_fallback());
    assert_eq!(fallback_gauge(&metrics), Some(0.0));

    // Redis stops answering: the next decision gives up after the timeout and is made locally.
    proxy.forward.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let status = limits.admit(&tenant, events(1)).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= TIMEOUT, "{waited:?}");
    assert!(waited < TIMEOUT * 5, "{waited:?}");
    assert!(limits.is_fallback());
    assert_eq!(fallback_gauge(&metrics), Some(1.0));
    assert_eq!(status.limit.burst_events, 5);
    assert_eq!(status.limit.events_per_second, 5);

    // In fallback no decision waits for Redis, and the local share holds.
    let started = Instant::now();
    assert!(limits.admit(&tenant, events(4)).await.is_ok());
    assert!(matches!(
        limits.admit(&tenant, events(1)).await,
        Err(Refusal::Later { .. })
    ));
    // Larger than the local share but not than the tenant's burst: retry when Redis may be back.
    assert!(matches!(
        limits.admit(&tenant, events(6)).await,
        Err(Refusal::Later {
            retry_after_s: 1,
            ..
        })
    ));
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());

    // Redis answers again: the replica returns to the shared limit by itself.
    proxy.forward.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while limits.is_fallback() {
        assert!(
            Instant::now() < deadline,
            "still in fallback 5 s after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fallback_gauge(&metrics), Some(0.0));
    // Redis saw one event: nine fit, which the local share of five would have refused.
    let status = limits.admit(&tenant, events(9)).await.unwrap();
    assert_eq!(status.limit.burst_events, 10);

    // A Redis nobody listens on: the first decision falls back at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = replica_limits(&format!("redis://{}/", closed.local_addr().unwrap()), 3);
    drop(closed);
    let other = tenant_with(&unique_name("closed"), 9, 9);
    let started = Instant::now();
    let status = unreachable.admit(&other, events(3)).await.unwrap();
    assert!(started.elapsed() < TIMEOUT * 5);
    assert!(unreachable.is_fallback());
    assert_eq!(status.limit.burst_events, 3);

    let log = log.text();
    let falls = log.matches("shared rate limits unavailable").count();
    let recoveries = log.matches("shared rate limits restored").count();
    assert_eq!(falls, 2, "one line per transition:\n{log}");
    assert_eq!(recoveries, 1, "one line per transition:\n{log}");
}

/// Limits of a replica in a group of `replica_count`, with a [`TIMEOUT`] and a 100 ms probe.
fn replica_limits(redis_url: &str, replica_count: u32) -> TenantLimits {
    let section = RateLimitSection {
        redis_url: Some(redis_url.to_owned()),
        redis_timeout_ms: u64::try_from(TIMEOUT.as_millis()).unwrap(),
        redis_probe_interval_ms: 100,
        redis_key_prefix: unique_name("ingest-test"),
        replica_count,
    };
    TenantLimits::new(&section.validate().unwrap())
}

fn tenant_with(name: &str, events_per_second: u32, burst_events: u32) -> Tenant {
    let text = format!(
        "[[tenant]]\nname = \"{name}\"\napi_key_sha256 = [\"{}\"]\n\
         events_per_second = {events_per_second}\nburst_events = {burst_events}\n",
        api_key_sha256_hex("fallback-key-0001")
    );
    (*TenantFile::from_toml(&text).unwrap().tenants()[0]).clone()
}

fn events(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn fallback_gauge(metrics: &PrometheusHandle) -> Option<f64> {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("ingest_rate_limit_fallback "))
        .map(|value| value.trim().parse().unwrap())
}

/// A TCP proxy to Redis. While `forward` is false it passes nothing on, in either direction,
/// and answers nothing: Redis looks hung.
struct Proxy {
    address: SocketAddr,
    forward: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let forward = Arc::new(AtomicBool::new(true));
        let gate = Arc::clone(&forward);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    while !gate.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pipe(client_read, server_write, Arc::clone(&gate)));
                    tokio::spawn(pipe(server_read, client_write, gate));
                });
            }
        });
        Proxy { address, forward }
    }
}

/// Copies bytes while the gate is open; bytes read while it is closed are dropped.
async fn pipe(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let read = match from.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if !gate.load(Ordering::SeqCst) {
            continue;
        }
        let mut written = 0;
        while written < read {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buffer[written..read]) {
                Ok(count) => written += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// The address of the Redis server of `REDIS_URL`; the test fails without one.
fn redis_address() -> SocketAddr {
    let url = std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: start a Redis server (redis-server --port 16379 --save '' \
         --appendonly no --daemonize yes) and run with REDIS_URL=redis://127.0.0.1:16379/",
    );
    let info = url.as_str().into_connection_info().unwrap();
    let redis::ConnectionAddr::Tcp(host, port) = info.addr else {
        panic!("REDIS_URL must be a redis://host:port URL for this test");
    };
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

fn unique_name(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

/// Log lines of the process, kept for the test to read.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_log() -> CapturedLog {
    let log = CapturedLog::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    log
}
