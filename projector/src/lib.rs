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
pub mod merge_cache;
pub mod rebuild;
pub mod replay;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use readmodel::ProjectionFile;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

pub use config::Config;

use assignment::Assignment;
use fold::Folder;
use internal_api::{InternalState, Serving};
use rebuild::{Rebuild, RebuildState, RebuildStatus};
use store::{Store, StoreError};

/// How often the node checks on its consumer, its rebuild and the shutdown signal.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);

/// Runs one projector node until `shutdown` resolves or the consumer fails. On shutdown the
/// pending batch is written and the store closed before this returns.
///
/// When the projection file's definitions differ from those the store was built with (at start,
/// or because the file changed while the node runs), the node keeps serving the old ones and
/// rebuilds the new ones beside them, switching once the rebuild caught up ([`rebuild`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (wanted, wanted_text) = read_projection_file(&config.projections_file)?;
    rebuild::recover_switch(&config.store_path)?;
    let store = open_or_rebuild(&config)?;
    let (serving, rebuild_first) = choose_serving(&store, wanted, wanted_text)?;
    let serving = Arc::new(ArcSwap::from_pointee(Serving {
        projections: serving,
        store,
    }));
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

    let rebuild_status = Arc::new(Mutex::new(None));
    let node = Node {
        config: config.clone(),
        serving: serving.clone(),
        assignment: assignment.clone(),
        stop: stop.clone(),
        rebuild_status: rebuild_status.clone(),
    };
    let consuming = tokio::spawn(async move {
        let result = node.run(rebuild_first).await;
        // The node stops when its consumer stops, for whatever reason.
        node.stop.store(true, Ordering::Relaxed);
        result
    });
    // The watermark reader blocks on librdkafka; it gets its own thread.
    let watermarks = {
        let (config, assignment, stop) = (config.clone(), assignment.clone(), stop.clone());
        tokio::task::spawn_blocking(move || consumer::watch_watermarks(&config, assignment, stop))
    };

    let state = InternalState {
        node_name: config.node_name.clone(),
        topic: config.topic.clone(),
        serving: serving.clone(),
        rebuild: rebuild_status,
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

    let consumed = consuming.await.context("consumer task panicked")?;
    watermarks.await.context("watermark thread panicked")??;
    serving.load().store.flush()?;
    consumed
}

/// Every projection's name and definition version: equal for two files exactly when one
/// needs no rebuild to serve the other.
fn versions(projections: &ProjectionFile) -> std::collections::BTreeMap<&str, String> {
    projections
        .projections
        .iter()
        .map(|p| (p.name.as_str(), store::definition_version(p)))
        .collect()
}

/// Reads and parses the projection file, keeping its text for the store.
pub(crate) fn read_projection_file(path: &Path) -> anyhow::Result<(Arc<ProjectionFile>, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the projection file {}", path.display()))?;
    let projections = ProjectionFile::from_toml(&text)
        .with_context(|| format!("invalid projection file {}", path.display()))?;
    Ok((Arc::new(projections), text))
}

/// A projection file to rebuild the read models for, parsed and as text.
type FileToBuild = (Arc<ProjectionFile>, String);

/// The definitions to serve from `store` at start, and the file to rebuild, if `wanted` differs
/// from what the store was built with.
fn choose_serving(
    store: &Store,
    wanted: Arc<ProjectionFile>,
    wanted_text: String,
) -> anyhow::Result<(Arc<ProjectionFile>, Option<FileToBuild>)> {
    if !store.has_state()? {
        store.record_definitions(&wanted, &wanted_text)?;
        return Ok((wanted, None));
    }
    if store.definitions_match(&wanted)? {
        if store.projection_file_text()?.is_none() {
            store.record_definitions(&wanted, &wanted_text)?;
        }
        return Ok((wanted, None));
    }
    let Some(built_text) = store.projection_file_text()? else {
        // A store from before definitions were recorded with their file: nothing to serve the
        // old definitions from.
        store.check_definitions(&wanted)?;
        return Ok((wanted, None));
    };
    let built = ProjectionFile::from_toml(&built_text).map_err(|e| StoreError::Corrupt {
        key: "projection file".into(),
        reason: e.to_string(),
    })?;
    info!(
        "the projection file changed since the store was built: serving the old definitions while the new ones are rebuilt"
    );
    Ok((Arc::new(built), Some((wanted, wanted_text))))
}

/// The consumer side of a node: one consumer per generation of the store, and the rebuild that
/// makes the next generation.
struct Node {
    config: Config,
    serving: Arc<ArcSwap<Serving>>,
    assignment: Assignment,
    stop: Arc<AtomicBool>,
    rebuild_status: Arc<Mutex<Option<Arc<Mutex<RebuildStatus>>>>>,
}

/// Why a generation ended.
enum Ended {
    Stop,
    Consumer,
    Switch,
}

impl Node {
    async fn run(&self, rebuild_first: Option<FileToBuild>) -> anyhow::Result<()> {
        let mut rebuild =
            rebuild_first.map(|(projections, text)| self.start_rebuild(projections, text));
        // The text of the file last read, so an unchanged file is not parsed again.
        let mut file_seen: Option<String> = rebuild.as_ref().map(|r| r.text.clone());
        let mut file_checked = Instant::now();
        let poll = Duration::from_millis(self.config.projections_poll_ms);
        loop {
            let serving = self.serving.load_full();
            let generation_stop = Arc::new(AtomicBool::new(false));
            let consumer = {
                let config = self.config.clone();
                let folder =
                    Folder::new(serving.projections.clone(), serving.store.clone(), &config);
                let (store, assignment, stop) = (
                    serving.store.clone(),
                    self.assignment.clone(),
                    generation_stop.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    consumer::run(&config, folder, store, assignment, stop)
                })
            };
            let ended = loop {
                tokio::time::sleep(SUPERVISE_INTERVAL).await;
                if consumer.is_finished() {
                    break Ended::Consumer;
                }
                if self.stop.load(Ordering::Relaxed) {
                    break Ended::Stop;
                }
                if file_checked.elapsed() >= poll {
                    file_checked = Instant::now();
                    self.check_file(&serving, &mut rebuild, &mut file_seen);
                }
                match rebuild.as_ref().map(|r| r.status()) {
                    Some(status) if status.state == RebuildState::Ready => break Ended::Switch,
                    Some(status) if status.state == RebuildState::Failed => {
                        error!(
                            error = status.error.as_deref().unwrap_or_default(),
                            "the rebuild of the changed projection file failed; the old \
                             definitions stay in force until the file changes again"
                        );
                        metrics::counter!("projector_rebuilds_total", "result" => "failed")
                            .increment(1);
                        rebuild = None;
                    }
                    _ => {}
                }
            };
            match ended {
                Ended::Consumer => {
                    return consumer.await.context("consumer thread panicked")?;
                }
                Ended::Stop => {
                    generation_stop.store(true, Ordering::Relaxed);
                    let consumed = consumer.await.context("consumer thread panicked")?;
                    if let Some(rebuild) = rebuild.take() {
                        tokio::task::spawn_blocking(move || rebuild.cancel()).await?;
                    }
                    *self.rebuild_status.lock().expect("poisoned") = None;
                    return consumed;
                }
                Ended::Switch => {
                    generation_stop.store(true, Ordering::Relaxed);
                    consumer.await.context("consumer thread panicked")??;
                    let rebuild = rebuild.take().expect("a rebuild is ready");
                    self.switch(rebuild).await?;
                }
            }
        }
    }

    fn start_rebuild(&self, projections: Arc<ProjectionFile>, text: String) -> Rebuild {
        let rebuild = Rebuild::start(&self.config, projections, text);
        *self.rebuild_status.lock().expect("poisoned") = Some(rebuild.status_handle());
        rebuild
    }

    /// Reads the projection file; a change of definitions starts (or restarts) a rebuild, a
    /// return to the serving definitions cancels it, and an invalid file changes nothing.
    fn check_file(
        &self,
        serving: &Serving,
        rebuild: &mut Option<Rebuild>,
        file_seen: &mut Option<String>,
    ) {
        let text = match std::fs::read_to_string(&self.config.projections_file) {
            Ok(text) => text,
            Err(e) => {
                warn!(error = %e, file = %self.config.projections_file.display(), "cannot read the projection file; keeping the definitions in force");
                return;
            }
        };
        if file_seen.as_deref() == Some(text.as_str()) {
            return;
        }
        *file_seen = Some(text.clone());
        let projections = match ProjectionFile::from_toml(&text) {
            Ok(projections) => projections,
            Err(e) => {
                error!(error = %e, file = %self.config.projections_file.display(), "the changed projection file is invalid; keeping the definitions in force");
                metrics::counter!("projector_rebuilds_total", "result" => "refused").increment(1);
                return;
            }
        };
        if rebuild
            .as_ref()
            .is_some_and(|running| versions(&running.projections) == versions(&projections))
        {
            // The same definitions, written differently: the rebuild goes on.
            return;
        }
        if let Some(running) = rebuild.take() {
            info!("the projection file changed again; the rebuild in progress is abandoned");
            // Joins the rebuild thread, which notices within one poll.
            tokio::task::block_in_place(|| running.cancel());
            *self.rebuild_status.lock().expect("poisoned") = None;
        }
        let same = versions(&serving.projections) == versions(&projections);
        if !same {
            *rebuild = Some(self.start_rebuild(Arc::new(projections), text));
        }
    }

    /// Finishes `rebuild` (the serving consumer has stopped) and puts its store in service.
    async fn switch(&self, rebuild: Rebuild) -> anyhow::Result<()> {
        let started = Instant::now();
        let projections = rebuild.projections.clone();
        let built = tokio::task::spawn_blocking(move || rebuild.finish())
            .await
            .context("rebuild thread panicked")??;
        let config = self.config.clone();
        let store = tokio::task::spawn_blocking(move || {
            rebuild::switch_stores(&config.store_path, &built)?;
            anyhow::Ok(Store::open(&config.store_path, config.store_cache_bytes)?)
        })
        .await
        .context("store switch panicked")??;
        self.serving.store(Arc::new(Serving { projections, store }));
        *self.rebuild_status.lock().expect("poisoned") = None;
        metrics::counter!("projector_rebuilds_total", "result" => "switched").increment(1);
        info!(
            took_ms = started.elapsed().as_millis() as u64,
            "the rebuilt read models are now served"
        );
        Ok(())
    }
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
