//! The projector's internal HTTP endpoint: sketch bytes and partition positions for the query
//! API.
//!
//! It serves only the partitions currently assigned to this node, so when the query API merges
//! the answers of every node, each partition is counted once. It is not meant to face clients:
//! it has no authentication and takes the tenant as a parameter, trusting the query API to pass
//! the tenant of the caller's key. Bind it to an internal address.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use readmodel::{Kind, ProjectionFile};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::error;

use crate::assignment::{Assignment, PartitionStatus};
use crate::rebuild::RebuildStatus;
use crate::store::{Store, definition_version};

/// The definitions being served and the store that holds their state; replaced as one when a
/// rebuild switches in.
pub struct Serving {
    pub projections: Arc<ProjectionFile>,
    pub store: Store,
}

/// What the handlers share.
#[derive(Clone)]
pub struct InternalState {
    pub node_name: String,
    pub topic: String,
    pub serving: Arc<ArcSwap<Serving>>,
    /// The status of the rebuild in progress, if any.
    pub rebuild: Arc<Mutex<Option<Arc<Mutex<RebuildStatus>>>>>,
    pub assignment: Assignment,
    pub metrics: PrometheusHandle,
}

/// The internal router.
pub fn router(state: InternalState) -> Router {
    Router::new()
        .route("/internal/v1/projections", get(projections))
        .route("/internal/v1/partitions", get(partitions))
        .route("/internal/v1/read-models/{projection}", get(read_model))
        .route(
            "/internal/v1/read-models/{projection}/series",
            get(read_model_series),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

#[derive(Serialize)]
struct ProjectionInfo<'a> {
    name: &'a str,
    /// Digest of the definition; changes whenever a change of definition needs a rebuild.
    version: String,
    kind: Kind,
    field: String,
    event_type: Option<&'a str>,
    bucket_ms: i64,
    /// The field that splits the read models into groups, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    group_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_groups: Option<u32>,
}

async fn projections(State(state): State<InternalState>) -> Response {
    let serving = state.serving.load();
    let projections: Vec<ProjectionInfo<'_>> = serving
        .projections
        .projections
        .iter()
        .map(|p| ProjectionInfo {
            name: &p.name,
            version: definition_version(p),
            kind: p.kind,
            field: p.field.to_string(),
            event_type: p.event_type.as_deref(),
            bucket_ms: p.bucket_ms,
            group_by: p.group_by.as_ref().map(|g| g.field.to_string()),
            max_groups: p.group_by.as_ref().map(|g| g.max_groups),
        })
        .collect();
    let rebuild = state
        .rebuild
        .lock()
        .expect("poisoned")
        .as_ref()
        .map(|status| status.lock().expect("poisoned").clone());
    Json(json!({ "projections": projections, "rebuild": rebuild })).into_response()
}

#[derive(Serialize)]
struct PartitionsAnswer {
    node: String,
    topic: String,
    /// Partitions of the topic (all nodes together serve them); `null` until known.
    partition_count: Option<i32>,
    partitions: Vec<PartitionStatus>,
}

async fn partitions(State(state): State<InternalState>) -> Json<PartitionsAnswer> {
    Json(PartitionsAnswer {
        node: state.node_name.clone(),
        topic: state.topic.clone(),
        partition_count: state.assignment.partition_count(),
        partitions: state.assignment.snapshot(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeParams {
    tenant: String,
    from: Option<i64>,
    to: Option<i64>,
}

#[derive(Serialize)]
struct ReadModelAnswer<'a> {
    projection: &'a str,
    kind: Kind,
    /// Partitions of the topic (all nodes together serve them); `null` until known.
    partition_count: Option<i32>,
    partitions: Vec<PartitionStatus>,
    /// Standard base64 of the merged read-model bytes; `null` when nothing was folded.
    read_model: Option<String>,
}

async fn read_model(
    State(state): State<InternalState>,
    Path(name): Path<String>,
    Query(params): Query<RangeParams>,
) -> Response {
    let serving = state.serving.load_full();
    let Some(projection) = serving.projections.get(&name) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_projection",
            format!("no projection named {name:?}; GET /internal/v1/projections lists them"),
        );
    };
    let from = params.from.unwrap_or(i64::MIN);
    let to = params.to.unwrap_or(i64::MAX);
    // Positions first: the state read after them is at least as fresh as they say.
    let partitions = state.assignment.snapshot();
    let owned: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
    let store = serving.store.clone();
    let tenant = params.tenant;
    let merged = tokio::task::spawn_blocking(move || {
        store.merged_range_cached(&name, &tenant, from, to, &owned)
    })
    .await;
    match merged {
        Ok(Ok(model)) => Json(ReadModelAnswer {
            projection: &projection.name,
            kind: projection.kind,
            partition_count: state.assignment.partition_count(),
            partitions,
            read_model: model
                .map(|m| base64::engine::general_purpose::STANDARD.encode(m.to_bytes())),
        })
        .into_response(),
        Ok(Err(e)) => {
            error!(error = %e, "cannot read the store");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            )
        }
        Err(e) => {
            error!(error = %e, "store read task failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "store read failed".to_owned(),
            )
        }
    }
}

/// Most steps one series may have.
pub const MAX_SERIES_STEPS: i64 = 5_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    tenant: String,
    from: i64,
    to: i64,
    step: i64,
}

#[derive(Serialize)]
struct SeriesStep {
    start: i64,
    /// Standard base64 of the step's merged read-model bytes; `null` when nothing was folded.
    read_model: Option<String>,
}

#[derive(Serialize)]
struct SeriesAnswer<'a> {
    projection: &'a str,
    kind: Kind,
    partition_count: Option<i32>,
    partitions: Vec<PartitionStatus>,
    steps: Vec<SeriesStep>,
}

/// The read models of one projection and tenant merged per step: `[from, from + step)`,
/// `[from + step, from + 2 step)`, ... up to `to`. `step` must be a whole number of the
/// projection's buckets and `from` a multiple of it, so every bucket lies in exactly one step.
async fn read_model_series(
    State(state): State<InternalState>,
    Path(name): Path<String>,
    Query(params): Query<SeriesParams>,
) -> Response {
    let serving = state.serving.load_full();
    let Some(projection) = serving.projections.get(&name) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_projection",
            format!("no projection named {name:?}; GET /internal/v1/projections lists them"),
        );
    };
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_series", message);
    if params.step <= 0 || params.step % projection.bucket_ms != 0 {
        return bad(format!(
            "step {} ms is not a whole number of the {} ms buckets of {name:?}",
            params.step, projection.bucket_ms
        ));
    }
    if params.from.rem_euclid(params.step) != 0 || params.to <= params.from {
        return bad(format!(
            "from ({}) must be a multiple of step ({}) and before to ({})",
            params.from, params.step, params.to
        ));
    }
    let Some(span) = params.to.checked_sub(params.from) else {
        return bad("the range from..to is too wide".to_owned());
    };
    let steps = span / params.step + i64::from(span % params.step != 0);
    if steps > MAX_SERIES_STEPS {
        return bad(format!(
            "{steps} steps asked; at most {MAX_SERIES_STEPS}: widen the step or narrow the range"
        ));
    }
    let partitions = state.assignment.snapshot();
    let owned: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
    let store = serving.store.clone();
    let tenant = params.tenant;
    let series = tokio::task::spawn_blocking(move || {
        (0..steps)
            .map(|index| {
                let start = params.from + index * params.step;
                let end = (start + params.step).min(params.to);
                let merged = store.merged_range_cached(&name, &tenant, start, end, &owned)?;
                Ok(SeriesStep {
                    start,
                    read_model: merged
                        .map(|m| base64::engine::general_purpose::STANDARD.encode(m.to_bytes())),
                })
            })
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await;
    match series {
        Ok(Ok(steps)) => Json(SeriesAnswer {
            projection: &projection.name,
            kind: projection.kind,
            partition_count: state.assignment.partition_count(),
            partitions,
            steps,
        })
        .into_response(),
        Ok(Err(e)) => {
            error!(error = %e, "cannot read the store");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            )
        }
        Err(e) => {
            error!(error = %e, "store read task failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "store read failed".to_owned(),
            )
        }
    }
}

async fn render_metrics(State(state): State<InternalState>) -> String {
    state.metrics.render()
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}
