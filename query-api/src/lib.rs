//! The query API: answers read-model queries (distinct counts, top items, item counts,
//! membership) over HTTP for the tenant of the caller's API key.
//!
//! The read models live in each projector node's store, which only that node may open, so the
//! query API asks every configured projector node for the sketches of the partitions assigned to
//! it, merges them, and answers from the merge. Each answer says how fresh it is, partition by
//! partition, and which nodes (if any) could not be reached.
//!
//! Guarantee: answers are computed only from the tenant of the bearer key; an answer is the
//! merge of every node that answered, each partition counted once; a node that does not answer
//! is listed in `freshness.nodes_unreachable` with `complete: false`, and when no node answers
//! the query fails with 503. The library installs no global metrics recorder and no tracing
//! subscriber: the process that hosts it does.
//!
//! [`serve`] reloads the tenant file (the same file and key hashing as ingest,
//! `schemas::tenant`) on SIGHUP and when it changes, so keys are rotated without a restart; a
//! refused new version leaves the previous one in force. Reloads are counted in
//! `query_api_tenant_reloads_total{result}`.

mod cache;
mod config;
mod dashboard;
mod error;
mod gather;
mod groups;
mod http;
mod nodes;
mod params;
mod routes;
mod telemetry;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use schemas::tenant::{SharedTenants, TenantFile};

pub use config::{Config, ConfigError};
pub use error::QueryError;
pub use gather::{Freshness, PartitionFreshness};
pub use telemetry::{
    PROJECTOR_ERRORS_TOTAL, REQUEST_DURATION_BUCKETS, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL,
    TENANT_RELOADS_TOTAL, register_histogram_buckets,
};

/// How often the metrics handle drains its histogram buffers.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the tenant file is read to see whether it changed.
const TENANT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the public router for `config`'s projector nodes and the given tenants (a
/// [`TenantFile`], or a [`SharedTenants`] whose later versions the router then follows).
///
/// `metrics` is the handle `/metrics` renders; tests can pass the handle of a recorder they never
/// install (`PrometheusBuilder::new().build_recorder().handle()`).
pub fn router(
    config: &Config,
    tenants: impl Into<SharedTenants>,
    metrics: PrometheusHandle,
) -> Result<Router, ConfigError> {
    let nodes = nodes::ProjectorNodes::new(config.node_urls()?, config.projector_timeout()?)?;
    http::wrap(routes::build(tenants.into(), nodes, metrics), config)
}

/// Serves the query API on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
///
/// Loads the tenant file named in `config`; `config.listen` is not used, the caller bound
/// `listener` (so tests can pass `127.0.0.1:0`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().context("invalid query api config")?;
    let tenants = TenantFile::load(&config.tenants_file).with_context(|| {
        format!(
            "cannot load the tenant file {}",
            config.tenants_file.display()
        )
    })?;
    let tenants = SharedTenants::new(tenants);
    let app =
        router(&config, tenants.clone(), metrics.clone()).context("invalid query api config")?;
    telemetry::describe_metrics();
    let tenant_watch = schemas::tenant::watch::spawn(
        config.tenants_file.clone(),
        tenants,
        TENANT_FILE_POLL_INTERVAL,
        |reload| counter!(TENANT_RELOADS_TOTAL, "result" => reload.result()).increment(1),
    )
    .context("cannot listen for SIGHUP, which reloads the tenant file")?;

    let upkeep = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            ticks.tick().await;
            metrics.run_upkeep();
        }
    });
    let address = listener
        .local_addr()
        .context("the listener has no local address")?;
    tracing::info!(
        listen = %address,
        projector_urls = ?config.projector_urls,
        "query api listening"
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("query api server failed");
    upkeep.abort();
    tenant_watch.abort();
    tracing::info!("query api stopped");
    served
}
