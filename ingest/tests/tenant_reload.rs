//! Keys rotate without a restart: an ingest router whose tenant file is watched
//! (`schemas::tenant::watch`, as `ingest::serve` sets it up) takes a changed file within the poll
//! interval and a rewritten one on SIGHUP, and keeps the version in force when a new one is
//! invalid, reporting that once.
//!
//! Kafka points at a closed port, so a request with a known key is answered 503 (authenticated)
//! and one with an unknown key 401.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingest::{AppState, Config, router};
use metrics_exporter_prometheus::PrometheusBuilder;
use reqwest::StatusCode;
use tokio::sync::mpsc;

use schemas::tenant::watch::{self, Reload};
use schemas::tenant::{TenantFile, api_key_sha256_hex};

const OLD_KEY: &str = "rotation-old-key-0001";
const NEW_KEY: &str = "rotation-new-key-0001";

/// SIGHUP reaches every watcher of the process: the two tests take turns so that the signal of
/// one cannot make the other's watcher report a reload it did not expect.
static SIGHUP_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn test_a_changed_tenant_file_rotates_keys_and_a_broken_one_is_refused_once() {
    let _sighup = SIGHUP_TEST.lock().await;
    let path = tenants_path("poll");
    std::fs::write(&path, tenant_file(&[OLD_KEY])).unwrap();
    let mut ingest = Ingest::start(&path, Duration::from_millis(100)).await;
    assert_eq!(ingest.post(OLD_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::UNAUTHORIZED);

    // Both keys during the rotation, then the new one only.
    std::fs::write(&path, tenant_file(&[OLD_KEY, NEW_KEY])).unwrap();
    assert_eq!(ingest.next_reload().await, "reloaded");
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ingest.post(OLD_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::write(&path, tenant_file(&[NEW_KEY])).unwrap();
    assert_eq!(ingest.next_reload().await, "reloaded");
    assert_eq!(ingest.post(OLD_KEY).await, StatusCode::UNAUTHORIZED);
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::SERVICE_UNAVAILABLE);

    // A broken file is refused, reported once, and the version in force stays.
    std::fs::write(
        &path,
        "[[tenant]]\nname = \"weblog\"\napi_keys = [\"plain\"]\n",
    )
    .unwrap();
    assert_eq!(ingest.next_reload().await, "refused");
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ingest.reloads.try_recv().is_err(),
        "an unchanged broken file was reported again"
    );

    // Fixed: taken again.
    std::fs::write(&path, tenant_file(&[OLD_KEY])).unwrap();
    assert_eq!(ingest.next_reload().await, "reloaded");
    assert_eq!(ingest.post(OLD_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::remove_file(&path).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn test_sighup_reloads_the_tenant_file() {
    let _sighup = SIGHUP_TEST.lock().await;
    let path = tenants_path("sighup");
    std::fs::write(&path, tenant_file(&[OLD_KEY])).unwrap();
    // Polling is too slow to matter here: only the signal can bring the change in.
    let mut ingest = Ingest::start(&path, Duration::from_secs(3600)).await;
    std::fs::write(&path, tenant_file(&[NEW_KEY])).unwrap();
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::UNAUTHORIZED);

    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(ingest.next_reload().await, "reloaded");
    assert_eq!(ingest.post(NEW_KEY).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ingest.post(OLD_KEY).await, StatusCode::UNAUTHORIZED);
    std::fs::remove_file(&path).unwrap();
}

/// A router over a watched tenant file.
struct Ingest {
    address: SocketAddr,
    client: reqwest::Client,
    reloads: mpsc::UnboundedReceiver<&'static str>,
}

impl Ingest {
    async fn start(tenants_file: &Path, poll_interval: Duration) -> Ingest {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nbrokers = \"{}\"\ntopic = \"reload-test\"\n\
             tenants_file = {:?}\nmetadata_timeout_ms = 200\n",
            closed.local_addr().unwrap(),
            tenants_file.display().to_string()
        );
        let config = Config::from_toml(&text).unwrap();
        let tenants = TenantFile::load(&config.tenants_file).unwrap();
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let state = AppState::new(&config, tenants, metrics).unwrap();
        let (sender, reloads) = mpsc::unbounded_channel();
        let limits = state.limits().clone();
        watch::spawn(
            config.tenants_file.clone(),
            state.tenants().clone(),
            poll_interval,
            move |reload| {
                if let Reload::Applied { file } = reload {
                    limits.retain(file);
                }
                let _ = sender.send(reload.result());
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Ingest {
            address,
            client: reqwest::Client::new(),
            reloads,
        }
    }

    async fn next_reload(&mut self) -> &'static str {
        tokio::time::timeout(Duration::from_secs(5), self.reloads.recv())
            .await
            .expect("no reload within 5 s")
            .unwrap()
    }

    async fn post(&self, key: &str) -> StatusCode {
        self.client
            .post(format!("http://{}/v1/events", self.address))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(r#"{"type":"view","key":"k"}"#)
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn tenant_file(keys: &[&str]) -> String {
    let digests: Vec<String> = keys
        .iter()
        .map(|key| format!("\"{}\"", api_key_sha256_hex(key)))
        .collect();
    format!(
        "[[tenant]]\nname = \"weblog\"\napi_key_sha256 = [{}]\n",
        digests.join(", ")
    )
}

fn tenants_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ingest-reload-test-{label}-{}.toml",
        std::process::id()
    ))
}
