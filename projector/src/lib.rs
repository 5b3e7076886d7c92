//! The projector: a Kafka consumer-group member that folds the event log into sketch read models
//! stored in sled, and serves them to the query API over an internal endpoint.
//!
//! - [`serve`] runs one node: the consumer loop ([`consumer`]), the watermark reader for lag, and
//!   the internal endpoint ([`internal_api`]).
//! - [`replay::replay`] rebuilds every projection from the start of the topic into fresh state.
//!
//! Only the projector writes the read-model store, and only one process opens it.

pub mod assignment;
pub mod config;
pub mod consumer;
pub mod dedup;
pub mod fold;
pub mod internal_api;
pub mod replay;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use readmodel::ProjectionFile;
use tokio::net::TcpListener;
use tracing::{error, info};

pub use config::Config;

use assignment::Assignment;
use fold::Folder;
use internal_api::InternalState;
use store::{Store, StoreError};

/// Runs one projector node until `shutdown` resolves or the consumer fails. On shutdown the
/// pending batch is written and the store closed before this returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let projections = Arc::new(ProjectionFile::load(&config.projections_file).with_context(
        || {
            format!(
                "invalid projection file {}",
                config.projections_file.display()
            )
        },
    )?);
    let store = open_or_rebuild(&config)?;
    store.check_definitions(&projections)?;
    let assignment = Assignment::default();
    // Known before the endpoint answers, so no answer omits a partition unnoticed.
    {
        let (config, assignment) = (config.clone(), assignment.clone());
        tokio::task::spawn_blocking(move || {
            let client = consumer::metadata_client(&config)?;
            consumer::read_partition_count(&client, &config.topic, &assignment);
            anyhow::Ok(())
        })
        .await
        .context("metadata task panicked")??;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // If this future is dropped before it finishes (its caller gave up or panicked), the
    // consumer and watermark threads must still stop: they run outside the async runtime.
    let _stop_on_drop = StopOnDrop(stop.clone());

    // The consumer and the watermark reader block on librdkafka; each gets its own thread.
    let consumer = {
        let (config, store, assignment, stop) = (
            config.clone(),
            store.clone(),
            assignment.clone(),
            stop.clone(),
        );
        let folder = Folder::new(
            projections.clone(),
            store.clone(),
            config.dedup_window_ms,
            config.max_record_bytes,
        );
        tokio::task::spawn_blocking(move || {
            let result = consumer::run(&config, folder, store, assignment, stop.clone());
            // A failed consumer stops the whole node.
            stop.store(true, Ordering::Relaxed);
            result
        })
    };
    let watermarks = {
        let (config, assignment, stop) = (config.clone(), assignment.clone(), stop.clone());
        tokio::task::spawn_blocking(move || consumer::watch_watermarks(&config, assignment, stop))
    };

    let state = InternalState {
        node_name: config.node_name.clone(),
        topic: config.topic.clone(),
        projections,
        store: store.clone(),
        assignment,
        metrics,
    };
    info!(listen = %listener.local_addr()?, node = %config.node_name, "projector internal endpoint up");
    let stopped = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = wait_for(stop.clone()) => {}
            }
            stop.store(true, Ordering::Relaxed);
        }
    };
    axum::serve(listener, internal_api::router(state))
        .with_graceful_shutdown(stopped)
        .await
        .context("internal endpoint failed")?;

    let consumed = consumer.await.context("consumer thread panicked")?;
    watermarks.await.context("watermark thread panicked")??;
    store.flush()?;
    consumed
}

/// Opens the node's store. A store whose files are damaged is moved aside and replaced by an
/// empty one, which then rebuilds from the log. Any other failure (a lock held by another
/// process, a path that is not a directory, a permission or disk error) stops the node with the
/// error: rebuilding would not help and could hide the cause.
fn open_or_rebuild(config: &Config) -> anyhow::Result<Store> {
    match Store::open(&config.store_path, config.store_cache_bytes) {
        Err(StoreError::Damaged { reason, .. }) => {
            let aside = store::move_aside(&config.store_path)?;
            error!(
                store = %config.store_path.display(),
                moved_to = %aside.display(),
                error = %reason,
                "read-model store is damaged; moved aside, rebuilding from the log"
            );
            metrics::counter!("projector_store_rebuilds_total").increment(1);
            Ok(Store::open(&config.store_path, config.store_cache_bytes)?)
        }
        opened => Ok(opened?),
    }
}

/// Sets the stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn wait_for(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
