//! Ingest: the HTTP write path of the pipeline. Clients `POST /v1/events` with a tenant's
//! bearer key; ingest validates the events, applies the tenant's rate limit and appends them to
//! a Kafka topic, partitioned by `schemas::partition_for(key, partitions)`.
//!
//! Guarantee: a 202 `{"accepted": N}` is sent only after Kafka acknowledged (`acks=all`,
//! idempotent producer) all N events; any other answer means nothing was written (4xx) or that
//! some events may have been written (503).
//!
//! Entry points: [`serve`] runs the service on a bound listener until a shutdown future
//! completes; [`router`] and [`AppState`] give the routes alone, for tests. The library never
//! installs a global metrics recorder or tracing subscriber; the binary does.
//!
//! Tenants (keys and limits) come from the tenant file, reloaded without a restart on SIGHUP and
//! when the file changes; a refused new version leaves the previous one in force
//! (`schemas::tenant::watch`). Rate limits count events and are kept in process or shared by
//! every replica through Redis ([`rate_limit`]).
//!
//! Metrics (see [`telemetry`]): `ingest_events_received_total`,
//! `ingest_events_accepted_total`, `ingest_events_rejected_total{reason}`,
//! `ingest_events_rate_limited_total{tenant}`, `ingest_requests_total{status}`,
//! `ingest_produce_latency_seconds` (histogram), `ingest_kafka_ready`,
//! `ingest_kafka_brokers_up`, `ingest_producer_queue_records`, `ingest_buffered_body_bytes`,
//! `ingest_rate_limit_fallback` (gauges), `ingest_tenant_reloads_total{result}`.

pub mod body;
pub mod config;
pub mod error;
pub mod event_log;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tenant_rules;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use schemas::tenant::TenantFile;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use event_log::{EventLog, MetadataError, SCHEMA_VERSION_HEADER};
pub use routes::{AppState, router};

/// How often histogram data in the Prometheus recorder is drained.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the tenant file is read to see whether it changed.
const TENANT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Runs ingest on `listener` until `shutdown` completes, then stops accepting connections,
/// lets requests in flight finish, and flushes the producer for at most `shutdown_flush_ms`,
/// logging how many records could not be sent.
///
/// Fails at start if the config is invalid, the tenant file cannot be loaded, Kafka cannot be
/// reached within `metadata_timeout_ms`, or the topic does not exist.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().context("invalid ingest config")?;
    telemetry::describe();
    let tenants = TenantFile::load(&config.tenants_file).with_context(|| {
        format!(
            "cannot load tenants from {} (relative paths resolve against the working directory)",
            config.tenants_file.display()
        )
    })?;
    let state = AppState::new(&config, tenants, metrics.clone())
        .context("cannot create the kafka producer: check the producer settings in the config")?;
    // From here on SIGHUP reloads the tenant file instead of ending the process.
    let limits = state.limits().clone();
    let tenant_watch = schemas::tenant::watch::spawn(
        config.tenants_file.clone(),
        state.tenants().clone(),
        TENANT_FILE_POLL_INTERVAL,
        move |reload| {
            counter!(telemetry::TENANT_RELOADS, "result" => reload.result()).increment(1);
            if let schemas::tenant::watch::Reload::Applied { file } = reload {
                limits.retain(file);
            }
        },
    )
    .context("cannot listen for SIGHUP, which reloads the tenant file")?;
    let event_log = state.event_log().clone();
    let partitions = match event_log.refresh_metadata().await {
        Ok(partitions) => partitions,
        Err(error) => {
            tenant_watch.abort();
            return Err(error.into());
        }
    };
    tracing::info!(topic = %config.topic, partitions, brokers = %config.brokers, "kafka topic found");

    let watcher = tokio::spawn(event_log::watch_metadata(
        event_log.clone(),
        config.metadata_refresh,
    ));
    let upkeep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(METRICS_UPKEEP_INTERVAL).await;
            metrics.run_upkeep();
        }
    });

    let address = listener
        .local_addr()
        .context("listener has no local address")?;
    tracing::info!(%address, "ingest listening");
    let connection_limits = server::ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
    };
    server::serve(listener, router(state), connection_limits, shutdown).await;
    watcher.abort();
    tenant_watch.abort();
    upkeep.abort();

    tracing::info!(
        bound_ms = config.shutdown_flush.as_millis() as u64,
        "http server stopped; flushing the kafka producer"
    );
    let unsent = event_log.flush(config.shutdown_flush).await;
    if unsent > 0 {
        tracing::error!(
            records = unsent,
            "records could not be delivered to kafka before shutdown; their requests were \
             answered 503"
        );
    } else {
        tracing::info!("kafka producer flushed");
    }
    Ok(())
}
