//! Router-level tests of ingest that need no Kafka broker: authentication, content types, body
//! bounds (plain, chunked and gzip bomb), validation problems, rate limits, the 503 answers when
//! Kafka cannot take events, and the health, readiness and metrics endpoints.
//!
//! The Kafka settings point at a closed port, so any request that got as far as producing would
//! be answered 503; a test that expects 4xx therefore also shows nothing was produced.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use ingest::server::ConnectionLimits;
use ingest::{AppState, Config, router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use reqwest::StatusCode;
use serde_json::{Value, json};

use schemas::tenant::TenantFile;

const KEY: &str = "weblog-test-key-0001";

/// Keys are stored as their SHA-256: `printf %s weblog-test-key-0001 | sha256sum`, and so on.
const TENANTS: &str = r#"
    [[tenant]]
    name = "weblog"
    api_key_sha256 = ["402498b5b4e3a9a730c3596faf161d7e3bbf666196917f53eb49be7367203548"]
    events_per_second = 100000
    burst_events = 100000

    [[tenant]]
    name = "tiny"
    api_key_sha256 = ["335da364488604969b4067e122a65e697ebeed7162e69745b6d5606452b937c6"]
    events_per_second = 1
    burst_events = 5
"#;

#[tokio::test]
async fn test_healthz_answers_while_kafka_is_not_ready() {
    let server = Server::start(|_| {}).await;
    let response = server.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);

    let response = server.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
}

#[tokio::test]
async fn test_events_without_a_known_bearer_key_get_401() {
    let server = Server::start(|_| {}).await;
    let body = events_json(1);
    for authorization in [None, Some("Bearer nope-nope-nope"), Some("Basic d2VibG9n")] {
        let mut request = server
            .client
            .post(server.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        let error = error_of(response).await;
        assert_eq!(error["code"], "unauthorized");
        assert!(error["message"].as_str().unwrap().contains("Bearer"));
    }
    // The scheme is case-insensitive: a known key in lower case gets past authentication
    // (and on to the 503 of the unreachable Kafka).
    let response = server
        .client
        .post(server.url("/v1/events"))
        .header("authorization", format!("bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn test_other_content_types_and_encodings_get_415() {
    let server = Server::start(|_| {}).await;
    let response = server.post("text/plain", None, events_json(1)).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_of(response).await["code"], "unsupported_media_type");

    let response = server
        .post("application/json", Some("br"), events_json(1))
        .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        error_of(response).await["code"],
        "unsupported_content_encoding"
    );
}

#[tokio::test]
async fn test_body_over_max_body_bytes_gets_413() {
    let server = Server::start(|config| config.max_body_bytes = 1024).await;
    let body = events_json(40);
    assert!(body.len() > 1024);
    let response = server.post("application/json", None, body).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error = error_of(response).await;
    assert_eq!(error["code"], "body_too_large");
    assert!(error["message"].as_str().unwrap().contains("1024"));
}

#[tokio::test]
async fn test_chunked_body_over_max_body_bytes_gets_413() {
    // Without Content-Length the bound is enforced while reading.
    let server = Server::start(|config| config.max_body_bytes = 1024).await;
    let body = events_json(40);
    let address = server.address;
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nhost: ingest\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(256) {
            let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = stream.write_all(chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("body_too_large"), "{response}");
}

#[tokio::test]
async fn test_gzip_bomb_gets_413() {
    let server = Server::start(|config| config.max_body_bytes = 1 << 20).await;
    // 16 MiB of spaces after a valid start: about 16 KiB on the wire, 16 times the bound decoded.
    let mut plain = events_json(1);
    plain.pop();
    plain.extend(std::iter::repeat_n(b' ', 16 << 20));
    plain.push(b']');
    let bomb = gzip(&plain);
    assert!(
        bomb.len() < 1 << 20,
        "the compressed body must pass the wire bound"
    );
    let response = server.post("application/json", Some("gzip"), bomb).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(response).await["code"], "body_too_large");

    let response = server
        .post("application/json", Some("gzip"), b"not gzip".to_vec())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await["code"], "invalid_gzip");
}

#[tokio::test]
async fn test_invalid_events_get_400_with_every_problem() {
    let server = Server::start(|_| {}).await;
    let body = json!([
        {"type": "page_view", "key": "user-1"},
        {"key": "user-2"},
        {"type": "page_view", "key": "user-3", "tenant": "wiki"},
    ]);
    let response = server
        .post("application/json", None, body.to_string().into_bytes())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["code"], "invalid_events");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no event of this request was written")
    );
    let problems = error["problems"].as_array().unwrap();
    let paths: Vec<&str> = problems
        .iter()
        .map(|problem| problem["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|path| path.starts_with("[1]")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|path| path.starts_with("[2]")),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|path| path.starts_with("[0]")),
        "{paths:?}"
    );
    assert!(problems.iter().all(|problem| problem["reason"].is_string()));

    let response = server
        .post(
            "application/x-ndjson",
            None,
            b"{\"type\":\"a\",\"key\":\"k\"}\nnot json\n".to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["problems"][0]["path"], "line 2");
}

#[tokio::test]
async fn test_rate_limit_counts_events_and_answers_429_with_retry_after() {
    let server = Server::start(|_| {}).await;
    let tiny = |count: usize| {
        server
            .client
            .post(server.url("/v1/events"))
            .header("authorization", "Bearer tiny-test-key-0001")
            .header("content-type", "application/json")
            .body(events_json(count))
            .send()
    };
    // Five events fill the burst of five: admitted, then refused by the unreachable Kafka.
    let response = tiny(5).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // One more event is over the limit of one event per second.
    let response = tiny(1).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let error = error_of(response).await;
    assert_eq!(error["code"], "rate_limited");
    assert!(error["message"].as_str().unwrap().contains("tiny"));

    // Six events never fit a burst of five: the answer says so instead of asking to retry.
    let response = tiny(6).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.headers().get("retry-after").is_none());
    let error = error_of(response).await;
    assert_eq!(error["code"], "batch_exceeds_burst");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("at most 5 events")
    );

    // Other tenants have their own bucket.
    let response = server.post("application/json", None, events_json(5)).await;
    assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn test_unknown_partition_count_gets_503_with_retry_after() {
    let server = Server::start(|_| {}).await;
    let response = server.post("application/json", None, events_json(3)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_of(response).await["code"], "not_ready");
}

#[tokio::test]
async fn test_unreachable_kafka_gets_503_with_retry_after_within_the_deadline() {
    let server = Server::start(|config| {
        config.request_deadline = Duration::from_millis(300);
        config.message_timeout = Duration::from_millis(250);
    })
    .await;
    // The topic layout is known, but no broker answers on the closed port.
    server.state.event_log().set_partition_count(3);
    let started = std::time::Instant::now();
    let response = server.post("application/json", None, events_json(3)).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let error = error_of(response).await;
    assert_eq!(error["code"], "kafka_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("300 ms"), "{message}");
    assert!(message.contains("may already be in kafka"), "{message}");
}

#[tokio::test]
async fn test_body_sent_too_slowly_gets_408() {
    let server = Server::start(|config| {
        config.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let address = server.address;
    // Announce 100 bytes, send one, then stall.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "POST /v1/events HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n["
        )
        .unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        // The answer arrives while the client still owes 99 bytes; read until its body is in.
        while !String::from_utf8_lossy(&answer).contains('}') {
            let read = stream
                .read(&mut buffer)
                .expect("answered before the read timeout");
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
}

#[tokio::test]
async fn test_request_head_sent_too_slowly_closes_the_connection() {
    let server = Server::start(|config| {
        config.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let address = server.address;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Half a request head, then silence.
        write!(stream, "POST /v1/events HTTP/1.1\r\nhost: test\r\n").unwrap();
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => Ok(String::from_utf8_lossy(&answer).into_owned()),
            Err(error) => Err(error.kind()),
        }
    })
    .await
    .unwrap();
    // The server closed the connection (with at most an error status), rather than the read
    // timing out while it waited for the rest of the head.
    match outcome {
        Ok(answer) => assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        ),
        Err(kind) => assert_eq!(kind, std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test]
async fn test_connections_past_the_cap_wait_until_one_closes() {
    let server = Server::start(|config| config.max_connections = 1).await;
    let address = server.address;
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    // A kept-alive connection holds the only slot until told to close.
    let holder = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        held_rx.recv().unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buffer = [0u8; 1024];
        let early = stream
            .read(&mut buffer)
            .map(|read| read > 0)
            .unwrap_or(false);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        held_tx.send(()).unwrap();
        let read = stream.read(&mut buffer).unwrap();
        (early, String::from_utf8_lossy(&buffer[..read]).into_owned())
    })
    .await
    .unwrap();
    holder.join().unwrap();
    let (answered_early, answer) = waiting;
    assert!(
        !answered_early,
        "a second connection was served past max_connections = 1"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn test_bodies_past_the_buffer_budget_get_503_overloaded_before_being_read() {
    let server = Server::start(|config| {
        config.max_body_bytes = 1_000;
        config.max_buffered_body_bytes = 2_000;
    })
    .await;
    let address = server.address;
    // Two chunked bodies of unknown length reserve the most a body may be: the whole budget.
    let stalled: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            write!(
                stream,
                "POST /v1/events HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {KEY}\r\n\
                 content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\n"
            )
            .unwrap();
            stream
        })
        .collect();
    let mut refused = None;
    for _ in 0..50 {
        let response = server.post("application/json", None, events_json(1)).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = response.headers()["retry-after"].clone();
            let error = error_of(response).await;
            if error["code"] == "overloaded" {
                refused = Some((retry_after, error));
                break;
            }
        }
        // The stalled requests may not have reserved yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (retry_after, error) = refused.expect("a request past the budget was not refused");
    assert_eq!(retry_after, "1");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("2000 bytes"), "{message}");
    assert!(
        message.contains("nothing of this request was written"),
        "{message}"
    );

    // Once the stalled clients go, their reservations return and the next request gets past
    // the budget (to the unreachable Kafka).
    drop(stalled);
    let mut code = Value::Null;
    for _ in 0..50 {
        let response = server.post("application/json", None, events_json(1)).await;
        code = error_of(response).await["code"].clone();
        if code != "overloaded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, "not_ready");
}

#[tokio::test]
async fn test_full_producer_queue_gets_503_at_once() {
    let server = Server::start(|config| {
        config.queue_max_messages = 2;
        config.request_deadline = Duration::from_secs(20);
    })
    .await;
    server.state.event_log().set_partition_count(3);
    let started = std::time::Instant::now();
    let response = server.post("application/json", None, events_json(5)).await;
    // Refused when the third record does not fit, not after the 20 s deadline.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let error = error_of(response).await;
    assert_eq!(error["code"], "kafka_queue_full");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("may already be in kafka")
    );
}

#[tokio::test]
async fn test_event_too_large_for_a_kafka_record_gets_413_before_producing() {
    let server = Server::start(|config| {
        config.limits.max_string_bytes = 2_000_000;
        config.request_deadline = Duration::from_secs(20);
    })
    .await;
    server.state.event_log().set_partition_count(3);
    let big = "x".repeat(950_000);
    let body = json!([
        {"type": "a", "key": "k-1"},
        {"type": "a", "key": "k-2", "properties": {"blob": big}},
    ]);
    let started = std::time::Instant::now();
    let response = server
        .post("application/json", None, body.to_string().into_bytes())
        .await;
    // Refused before the first record went to the (unreachable) broker: no 20 s deadline wait.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error = error_of(response).await;
    assert_eq!(error["code"], "record_too_large");
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("event 1 "), "{message}");
    assert!(
        message.contains("no event of this request was written"),
        "{message}"
    );
}

#[tokio::test]
async fn test_metrics_endpoint_renders_request_and_event_counters() {
    let server = Server::start(|_| {}).await;
    let unauthorized = server
        .client
        .post(server.url("/v1/events"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    server.post("application/json", None, events_json(2)).await;

    // The producer's queue also counts librdkafka's events (the connection errors against the
    // closed port) until its poll thread serves them, so the gauge may need a few scrapes to
    // settle: it must reach 0, as no record is held once the requests were answered.
    let settled = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = server.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        if text.contains("ingest_producer_queue_records 0") || std::time::Instant::now() > settled {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("ingest_requests_total{status=\"401\"}"),
        "{text}"
    );
    assert!(text.contains("ingest_events_received_total"), "{text}");
    assert!(
        text.contains("ingest_events_rejected_total{reason=\"no_metadata\"}"),
        "{text}"
    );
    // Gauges read at each scrape: nothing is held once the requests were answered.
    assert!(text.contains("ingest_buffered_body_bytes 0"), "{text}");
    assert!(text.contains("ingest_producer_queue_records 0"), "{text}");
}

/// An ingest router served on a loopback port, with Kafka pointed at a closed port.
struct Server {
    address: SocketAddr,
    client: reqwest::Client,
    state: AppState,
}

impl Server {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"ingest-http-test\"\n\
             tenants_file = \"unused.toml\"\nrequest_deadline_ms = 3000\n\
             message_timeout_ms = 2000\nmetadata_timeout_ms = 200\n",
            closed_port()
        );
        let mut config = Config::from_toml(&text).unwrap();
        adjust(&mut config);
        config.validate().unwrap();
        let tenants = TenantFile::from_toml(TENANTS).unwrap();
        let state = AppState::new(&config, tenants, metrics_handle().clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(state.clone());
        let limits = ConnectionLimits {
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections,
        };
        tokio::spawn(ingest::server::serve(
            listener,
            app,
            limits,
            std::future::pending(),
        ));
        Server {
            address,
            client: reqwest::Client::new(),
            state,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Posts `body` as the `weblog` tenant.
    async fn post(
        &self,
        content_type: &str,
        content_encoding: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/v1/events"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = content_encoding {
            request = request.header("content-encoding", encoding);
        }
        request.send().await.unwrap()
    }
}

/// The test process's recorder: installed once here, as a binary would, never by the library.
fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// A loopback address nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A JSON array of `count` valid events.
fn events_json(count: usize) -> Vec<u8> {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"type": "page_view", "key": format!("user-{i}"), "id": format!("e-{i}")}))
        .collect();
    serde_json::to_vec(&events).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.unwrap();
    body["error"].clone()
}
