//! The corpus of bad requests in `tests/bad-input/cases.toml`, sent to ingest served by
//! `ingest::serve` with a real broker behind it (`KAFKA_BOOTSTRAP`).
//!
//! Shows: every case gets its documented status, error code and message, one by one; then the
//! whole corpus, sent many times at once, gets the same answers or a 503 `overloaded` (the body
//! budget at work), the service still answers `/healthz`, and the topic holds exactly the events
//! that were answered 202, no more and no fewer. The peak resident memory of the test process is
//! printed for the record.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use ingest::Config;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use schemas::tenant::api_key_sha256_hex;

const KEY: &str = "bad-input-test-key-0001";
const MAX_BODY_BYTES: usize = 1 << 20;
const PARTITIONS: i32 = 3;
/// Copies of the corpus in flight at once, and how many times that is done.
const CONCURRENT_COPIES: usize = 6;
const ROUNDS: usize = 3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    body: Option<String>,
    body_hex: Option<String>,
    generate: Option<String>,
    content_type: Option<String>,
    encoding: Option<String>,
    auth: Option<String>,
    status: u16,
    code: Option<String>,
    message: Option<String>,
    problem: Option<String>,
    path: Option<String>,
    accepted: Option<u64>,
}

/// A case made ready to send.
#[derive(Clone)]
struct Request {
    case: Case,
    body: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bad_input_corpus_gets_its_documented_answers_and_loses_nothing() {
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-input/cases.toml");
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(&corpus_path).unwrap())
        .unwrap_or_else(|error| panic!("{}: {error}", corpus_path.display()));
    let requests: Vec<Request> = corpus
        .case
        .into_iter()
        .map(|case| Request {
            body: body_of(&case),
            case,
        })
        .collect();

    let topic = format!("bad-input-{}", unique_suffix());
    testkit::create_topic(&topic, PARTITIONS).await;
    let ingest = Ingest::start(&topic).await;

    // One at a time: each case gets exactly its documented answer.
    let mut accepted = 0u64;
    let mut failures = Vec::new();
    for request in &requests {
        let (status, body) = ingest.send(request).await;
        match check(&request.case, status, &body) {
            Ok(events) => accepted += events,
            Err(reason) => failures.push(format!("{}: {reason}", request.case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Many at once: the documented answer, or 503 overloaded while the body budget is spent.
    let mut overloaded = 0;
    for _ in 0..ROUNDS {
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENT_COPIES {
            for request in &requests {
                let request = request.clone();
                let ingest = ingest.clone_client();
                sends.spawn(async move {
                    let (status, body) = ingest.send(&request).await;
                    (request.case, status, body)
                });
            }
        }
        while let Some(sent) = sends.join_next().await {
            let (case, status, body) = sent.unwrap();
            if status == StatusCode::SERVICE_UNAVAILABLE && body["error"]["code"] == "overloaded" {
                overloaded += 1;
                continue;
            }
            match check(&case, status, &body) {
                Ok(events) => accepted += events,
                Err(reason) => failures.push(format!("{} (concurrent): {reason}", case.name)),
            }
        }
        let health = ingest.client.get(ingest.url("/healthz")).send().await;
        assert!(
            health.is_ok_and(|response| response.status() == StatusCode::OK),
            "ingest stopped answering /healthz"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    ingest.stop().await;
    let in_topic = events_in_topic(&topic);
    assert_eq!(
        in_topic, accepted,
        "the topic holds {in_topic} events but {accepted} were acknowledged"
    );
    eprintln!(
        "bad input: {} cases, {} sends, {overloaded} answered 503 overloaded, {accepted} events \
         accepted and found in the topic, peak resident memory of the test process {} KiB",
        requests.len(),
        requests.len() * (1 + ROUNDS * CONCURRENT_COPIES),
        peak_rss_kib().map_or("unknown".into(), |kib| kib.to_string()),
    );
}

/// Whether an answer is the one `case` documents; on success, the events it accepted.
fn check(case: &Case, status: StatusCode, body: &Value) -> Result<u64, String> {
    if status.as_u16() != case.status {
        return Err(format!("status {status}, expected {}: {body}", case.status));
    }
    if status == StatusCode::ACCEPTED {
        let accepted = body["accepted"]
            .as_u64()
            .ok_or(format!("no count: {body}"))?;
        if case.accepted.is_some_and(|expected| expected != accepted) {
            return Err(format!("accepted {accepted}, expected {:?}", case.accepted));
        }
        return Ok(accepted);
    }
    let error = &body["error"];
    if let Some(code) = &case.code
        && error["code"] != code.as_str()
    {
        return Err(format!("code {}, expected {code:?}: {body}", error["code"]));
    }
    let message = error["message"].as_str().unwrap_or_default();
    if message.is_empty() {
        return Err(format!("no error message: {body}"));
    }
    if let Some(text) = &case.message
        && !message.contains(text.as_str())
    {
        return Err(format!("message {message:?} lacks {text:?}"));
    }
    if case.problem.is_some() || case.path.is_some() {
        let problems = error["problems"].as_array().cloned().unwrap_or_default();
        let found = problems.iter().any(|problem| {
            let reason = problem["reason"].as_str().unwrap_or_default();
            let path = problem["path"].as_str().unwrap_or_default();
            case.problem
                .as_ref()
                .is_none_or(|text| reason.contains(text.as_str()))
                && case.path.as_ref().is_none_or(|expected| path == expected)
        });
        if !found {
            return Err(format!(
                "no problem with path {:?} and reason containing {:?}: {body}",
                case.path, case.problem
            ));
        }
    }
    Ok(0)
}

/// The bytes a case sends.
fn body_of(case: &Case) -> Vec<u8> {
    let plain = match (&case.body, &case.body_hex, &case.generate) {
        (Some(text), None, None) => text.clone().into_bytes(),
        (None, Some(hex), None) => decode_hex(hex),
        (None, None, Some(name)) => return generate(name),
        _ => panic!(
            "{}: give exactly one of body, body_hex, generate",
            case.name
        ),
    };
    if case.encoding.as_deref() == Some("gzip") && case.body.is_some() {
        gzip(&plain)
    } else {
        plain
    }
}

/// Bodies too large or too binary to keep in the corpus file.
fn generate(name: &str) -> Vec<u8> {
    let event = |key: &str, properties: Value| {
        json!({"type": "view", "key": key, "properties": properties}).to_string()
    };
    match name {
        "deep-arrays" => {
            let depth = 100_000;
            let mut body = "[".repeat(depth);
            body.push_str(&"]".repeat(depth));
            body.into_bytes()
        }
        "deep-properties" => {
            let mut nested = json!(1);
            for _ in 0..10 {
                nested = json!({ "n": nested });
            }
            event("a", nested).into_bytes()
        }
        "long-key" => event(&"k".repeat(10_000), json!({})).into_bytes(),
        "many-events" => {
            let events: Vec<Value> = (0..1001)
                .map(|i| json!({"type": "view", "key": format!("k-{i}")}))
                .collect();
            serde_json::to_vec(&events).unwrap()
        }
        "long-property-array" => event("a", json!({ "ids": vec![7; 50_000] })).into_bytes(),
        "many-values" => event("a", json!({ "ids": vec![7; 400_000] })).into_bytes(),
        "large-body" => {
            let filler = "x".repeat(MAX_BODY_BYTES);
            event("a", json!({ "filler": filler })).into_bytes()
        }
        "gzip-bomb" => gzip(&vec![b' '; 64 << 20]),
        "gzip-understated-trailer" => {
            let mut body = gzip(event("a", json!({})).as_bytes());
            let at = body.len() - 4;
            body[at..].copy_from_slice(&3u32.to_le_bytes());
            body
        }
        "gzip-two-members" => {
            let mut body = gzip(b"[");
            body.extend(gzip(event("a", json!({})).as_bytes()));
            body.extend(gzip(b"]"));
            body
        }
        other => panic!("unknown generator {other:?} in cases.toml"),
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd number of hex digits: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex digits"))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Records in `topic`: the sum over partitions of high minus low watermark.
fn events_in_topic(topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testkit::bootstrap())
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            u64::try_from(high - low).unwrap()
        })
        .sum()
}

/// VmHWM of this process, in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

struct Ingest {
    address: std::net::SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<TempDir>,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Ingest {
    async fn start(topic: &str) -> Ingest {
        let dir = std::env::temp_dir().join(format!("ingest-bad-input-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let tenants = dir.join("tenants.toml");
        std::fs::write(
            &tenants,
            format!(
                "[[tenant]]\nname = \"weblog\"\napi_key_sha256 = [\"{}\"]\n\
                 events_per_second = 1000000\nburst_events = 1000000\n",
                api_key_sha256_hex(KEY)
            ),
        )
        .unwrap();
        let config = Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
             tenants_file = \"{}\"\nmax_body_bytes = {MAX_BODY_BYTES}\n\
             max_buffered_body_bytes = {}\n",
            testkit::bootstrap(),
            tenants.display(),
            8 * MAX_BODY_BYTES,
        ))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(ingest::serve(
            config,
            listener,
            metrics_handle().clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(!served.is_finished(), "ingest stopped during start");
            let ready = client.get(format!("http://{address}/readyz")).send().await;
            if ready.is_ok_and(|response| response.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "ingest not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ingest {
            address,
            client,
            stop: Some(stop),
            served: Some(served),
            _dir: Some(TempDir(dir)),
        }
    }

    /// A handle that sends to the same ingest and owns nothing.
    fn clone_client(&self) -> Ingest {
        Ingest {
            address: self.address,
            client: self.client.clone(),
            stop: None,
            served: None,
            _dir: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn send(&self, request: &Request) -> (StatusCode, Value) {
        let case = &request.case;
        let mut builder = self
            .client
            .post(self.url("/v1/events"))
            .body(request.body.clone());
        match case.auth.as_deref().unwrap_or("key") {
            "key" => builder = builder.header("authorization", format!("Bearer {KEY}")),
            "none" => {}
            "wrong-key" => builder = builder.header("authorization", "Bearer not-a-known-key"),
            "basic" => builder = builder.header("authorization", "Basic d2VibG9nOnNlY3JldA=="),
            other => panic!("{}: unknown auth {other:?}", case.name),
        }
        match case.content_type.as_deref() {
            None => builder = builder.header("content-type", "application/json"),
            Some("") => {}
            Some(content_type) => builder = builder.header("content-type", content_type),
        }
        if let Some(encoding) = &case.encoding {
            builder = builder.header("content-encoding", encoding);
        }
        let response = builder
            .send()
            .await
            .unwrap_or_else(|error| panic!("{}: no answer: {error:?}", case.name));
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: answer is not JSON: {text:?}", case.name));
        (status, body)
    }

    /// Signals shutdown and checks that `serve` returns cleanly.
    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let served = tokio::time::timeout(Duration::from_secs(30), self.served.take().unwrap())
            .await
            .expect("serve stops within 30 s of the shutdown signal")
            .unwrap();
        served.unwrap();
    }
}
