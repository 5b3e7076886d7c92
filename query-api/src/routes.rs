//! The public HTTP API: routes, the bearer-key tenant, and the JSON answers.
//!
//! Guarantee: every `/v1` answer is computed for the tenant of the caller's bearer key, never for
//! a tenant named in the request, and carries the freshness of the partitions it was computed
//! from. Every failure is the JSON error body of [`QueryError`].

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use readmodel::{
    CountEstimate, DistinctEstimate, Kind, MembershipAnswer, ReadModel, SketchParams, TopList,
};
use schemas::tenant::SharedTenants;

use crate::cache::ModelCache;
use crate::error::QueryError;
use crate::gather::{self, Freshness, Gathered, QueryKind};
use crate::nodes::{ProjectionInfo, ProjectorNodes};
use crate::params::{Params, TimeRange};
use crate::telemetry;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    tenants: SharedTenants,
    pub(crate) nodes: ProjectorNodes,
    pub(crate) cache: ModelCache,
    metrics: PrometheusHandle,
}

/// The tenant of the caller's bearer key.
pub(crate) struct CallerTenant(pub(crate) String);

/// The `{name}` segment of a projection route; a segment that is not valid UTF-8 after
/// percent-decoding gets the JSON error every other bad parameter gets.
pub(crate) struct ProjectionName(pub(crate) String);

/// Parameters each endpoint accepts.
const WINDOW_PARAMS: &[&str] = &["from", "to", "group"];
const TOP_PARAMS: &[&str] = &["k", "from", "to", "group"];
const COUNT_PARAMS: &[&str] = &["item", "from", "to", "group"];
const CONTAINS_PARAMS: &[&str] = &["item", "from", "to"];
const SERIES_PARAMS: &[&str] = &["from", "to", "step", "k", "group"];

/// Top items per step of a series when `k` is not given.
const DEFAULT_SERIES_TOP_K: u32 = 5;

/// Longest projection name; names are `[a-z0-9_-]` like in the projection file.
const MAX_PROJECTION_NAME_LEN: usize = 64;

/// `GET /v1/projections`.
#[derive(Serialize)]
struct ProjectionsAnswer {
    projections: Vec<ProjectionInfo>,
    #[serde(flatten)]
    freshness: Freshness,
}

/// The part every read-model answer starts with.
#[derive(Serialize)]
pub(crate) struct Window {
    pub(crate) projection: String,
    /// The group asked about, for an answer about one group of a grouped projection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// With `group`: values of the window in no group because their bucket was at
    /// `max_groups`; when not 0, the group's answer may miss some of its values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) past_max_groups: Option<u64>,
    pub(crate) tenant: String,
    /// Epoch ms, inclusive; `null` is unbounded.
    pub(crate) from: Option<i64>,
    /// Epoch ms, exclusive; `null` is unbounded.
    pub(crate) to: Option<i64>,
    /// Exact number of values folded into the read model the answer comes from.
    pub(crate) events: u64,
}

#[derive(Serialize)]
struct DistinctAnswer {
    #[serde(flatten)]
    window: Window,
    distinct: DistinctEstimate,
    freshness: Freshness,
}

#[derive(Serialize)]
struct TopAnswer {
    #[serde(flatten)]
    window: Window,
    k: u32,
    /// `items` and `maximum_error`.
    #[serde(flatten)]
    top: TopList,
    freshness: Freshness,
}

#[derive(Serialize)]
struct CountAnswer {
    #[serde(flatten)]
    window: Window,
    #[serde(flatten)]
    count: CountEstimate,
    freshness: Freshness,
}

#[derive(Serialize)]
struct ContainsAnswer {
    #[serde(flatten)]
    window: Window,
    #[serde(flatten)]
    membership: Membership,
    freshness: Freshness,
}

/// [`MembershipAnswer`], except that the configured rate is `null` when no node holds a filter
/// for the window: the rate travels with the filter's bytes.
#[derive(Serialize)]
struct Membership {
    item: String,
    maybe_present: bool,
    configured_false_positive_rate: Option<f64>,
    estimated_false_positive_rate: f64,
    over_capacity: bool,
}

/// `GET /v1/projections/{name}/series`.
#[derive(Serialize)]
struct SeriesAnswer {
    projection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// With `group`: values of the range in no group (see [`Window`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    past_max_groups: Option<u64>,
    tenant: String,
    kind: Kind,
    /// Epoch ms of the first step's start and of the last step's end.
    from: i64,
    to: i64,
    step_ms: i64,
    points: Vec<SeriesPoint>,
    /// The whole range as one window: for a distinct projection, the estimate of the union of
    /// every step (never the sum of the steps' estimates, which counts a key once per step).
    total: SeriesTotal,
    freshness: Freshness,
}

#[derive(Serialize)]
struct SeriesPoint {
    start: i64,
    end: i64,
    /// Exact number of values folded into the step.
    events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    distinct: Option<DistinctEstimate>,
    /// Distinct keys of the step not seen in any earlier step of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<Derived>,
    /// Distinct keys of the step also seen in an earlier step of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    returning: Option<Derived>,
    /// The step's most frequent values (top projections; `k` of them).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    top: Option<TopList>,
}

#[derive(Serialize)]
struct SeriesTotal {
    events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    distinct: Option<DistinctEstimate>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    top: Option<TopList>,
}

/// A count derived from distinct estimates by inclusion and exclusion, with the interval that
/// follows from their intervals (wider than theirs: differences add their errors).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Derived {
    estimate: f64,
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Builds the public router over the given projector nodes and tenants.
pub(crate) fn build(
    tenants: SharedTenants,
    nodes: ProjectorNodes,
    metrics: PrometheusHandle,
) -> Router {
    let state = AppState {
        inner: Arc::new(Shared {
            tenants,
            nodes,
            cache: ModelCache::new(),
            metrics,
        }),
    };
    Router::new()
        .route("/v1/projections", get(projections))
        .route("/v1/projections/{name}/distinct", get(distinct))
        .route("/v1/projections/{name}/top", get(top))
        .route("/v1/projections/{name}/count", get(count))
        .route("/v1/projections/{name}/contains", get(contains))
        .route("/v1/projections/{name}/series", get(series))
        .route("/v1/projections/{name}/groups", get(crate::groups::groups))
        .route("/v1/overlap", get(crate::groups::overlap))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .merge(crate::dashboard::router())
        .route("/openapi.json", get(openapi_document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(telemetry::track_request))
        .with_state(state)
}

async fn projections(
    State(state): State<AppState>,
    CallerTenant(_tenant): CallerTenant,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ProjectionsAnswer>, QueryError> {
    Params::new(query_pairs(query)?, &[])?;
    let status = gather::gather_status(&state.inner.nodes).await?;
    Ok(Json(ProjectionsAnswer {
        projections: status.projections,
        freshness: status.freshness,
    }))
}

async fn distinct(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<DistinctAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, WINDOW_PARAMS)?;
    let range = params.time_range()?;
    let group = params.group()?;
    let gathered = gather(&state, &name, &tenant, range, QueryKind::Distinct).await?;
    let Selected {
        model,
        freshness,
        past_max_groups,
    } = in_group(&state, &name, gathered, group, "group").await?;
    let distinct = model
        .distinct()
        .ok_or_else(|| kind_mismatch(&name, &model))?;
    Ok(Json(DistinctAnswer {
        window: window(name, group, past_max_groups, tenant, range, &model),
        distinct,
        freshness,
    }))
}

async fn top(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TopAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, TOP_PARAMS)?;
    let range = params.time_range()?;
    let k = params.top_k()?;
    let group = params.group()?;
    let gathered = gather(&state, &name, &tenant, range, QueryKind::Top).await?;
    let Selected {
        model,
        freshness,
        past_max_groups,
    } = in_group(&state, &name, gathered, group, "group").await?;
    let top = model
        .top(k as usize)
        .ok_or_else(|| kind_mismatch(&name, &model))?;
    Ok(Json(TopAnswer {
        window: window(name, group, past_max_groups, tenant, range, &model),
        k,
        top,
        freshness,
    }))
}

async fn count(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<CountAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, COUNT_PARAMS)?;
    let range = params.time_range()?;
    let item = params.item()?;
    let group = params.group()?;
    let gathered = gather(&state, &name, &tenant, range, QueryKind::Count).await?;
    let Selected {
        model,
        freshness,
        past_max_groups,
    } = in_group(&state, &name, gathered, group, "group").await?;
    let mut count = model
        .count(item)
        .ok_or_else(|| kind_mismatch(&name, &model))?;
    // Values of this group may have gone to no group: its filter cannot tell they were unseen.
    if past_max_groups.is_some_and(|past| past > 0) {
        count.never_seen = false;
    }
    Ok(Json(CountAnswer {
        window: window(name, group, past_max_groups, tenant, range, &model),
        count,
        freshness,
    }))
}

async fn contains(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ContainsAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, CONTAINS_PARAMS)?;
    let range = params.time_range()?;
    let item = params.item()?;
    let gathered = gather(&state, &name, &tenant, range, QueryKind::Contains).await?;
    let membership = match &gathered.read_model {
        Some(model) => {
            let answer: MembershipAnswer = model
                .contains(item)
                .ok_or_else(|| kind_mismatch(&name, model))?;
            Membership {
                item: answer.item,
                maybe_present: answer.maybe_present,
                configured_false_positive_rate: Some(answer.configured_false_positive_rate),
                estimated_false_positive_rate: answer.estimated_false_positive_rate,
                over_capacity: answer.over_capacity,
            }
        }
        // No filter holds anything in the window: absent is certain.
        None => Membership {
            item: item.to_owned(),
            maybe_present: false,
            configured_false_positive_rate: None,
            estimated_false_positive_rate: 0.0,
            over_capacity: false,
        },
    };
    let events = gathered.read_model.as_ref().map_or(0, ReadModel::events);
    Ok(Json(ContainsAnswer {
        window: Window {
            projection: name,
            group: None,
            past_max_groups: None,
            tenant,
            from: range.from,
            to: range.to,
            events,
        },
        membership,
        freshness: gathered.freshness,
    }))
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI document of this API, `query-api/openapi.json`, embedded at build time.
pub(crate) const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

async fn openapi_document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> QueryError {
    QueryError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method) -> QueryError {
    QueryError::MethodNotAllowed(method.to_string())
}

impl FromRequestParts<AppState> for ProjectionName {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, QueryError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(ProjectionName(name)),
            Err(rejection) => Err(QueryError::InvalidParameter {
                name: "projection",
                reason: format!(
                    "{}; projection names are 1 to 64 characters of a-z, 0-9, '_' or '-'",
                    rejection.body_text()
                ),
            }),
        }
    }
}

impl FromRequestParts<AppState> for CallerTenant {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, QueryError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(QueryError::MissingApiKey)?;
        let value = value.to_str().map_err(|_| QueryError::InvalidApiKey)?;
        let (scheme, key) = value
            .trim()
            .split_once(' ')
            .ok_or(QueryError::MissingApiKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(QueryError::MissingApiKey);
        }
        let tenant = state
            .inner
            .tenants
            .authenticate(key.trim())
            .ok_or(QueryError::InvalidApiKey)?;
        Ok(CallerTenant(tenant.name.clone()))
    }
}

/// Checks the projection name, then gathers its read model from every node.
pub(crate) async fn gather(
    state: &AppState,
    name: &str,
    tenant: &str,
    range: TimeRange,
    asked: QueryKind,
) -> Result<Gathered, QueryError> {
    check_name(name)?;
    gather::gather_read_model_cached(
        &state.inner.nodes,
        &state.inner.cache,
        name,
        tenant,
        range,
        asked,
    )
    .await
}

async fn series(
    State(state): State<AppState>,
    CallerTenant(tenant): CallerTenant,
    ProjectionName(name): ProjectionName,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<SeriesAnswer>, QueryError> {
    let params = Params::new(query_pairs(query)?, SERIES_PARAMS)?;
    check_name(&name)?;
    let info = projection_info(&state, &name).await?;
    let bucket_ms =
        bucket_ms_of(&info).ok_or_else(|| QueryError::UnknownProjection { name: name.clone() })?;
    let range = params.series_range(bucket_ms)?;
    let k = params.top_k_or(DEFAULT_SERIES_TOP_K)?;
    let group = params.group()?;
    if group.is_some() && group_by_of(&info).is_none() {
        return Err(QueryError::NotGrouped {
            name,
            parameter: Some("group"),
        });
    }
    let gathered =
        gather::gather_series(&state.inner.nodes, &name, &tenant, range, QueryKind::Series).await?;
    let kind = gathered.kind;
    let mut steps = Vec::with_capacity(gathered.steps.len());
    let mut past_max_groups = group.map(|_| 0u64);
    for model in gathered.steps {
        steps.push(match (model, group) {
            (Some(model), Some(group)) => {
                if let Some(past) = past_max_groups.as_mut() {
                    *past += model.past_max_groups();
                }
                Some(model.group(group).ok_or_else(|| QueryError::NotGrouped {
                    name: name.clone(),
                    parameter: Some("group"),
                })?)
            }
            (model, _) => model,
        });
    }
    let mut points = Vec::with_capacity(steps.len());
    let mut total: Option<ReadModel> = None;
    for (index, model) in steps.into_iter().enumerate() {
        let start = range.from + index as i64 * range.step;
        let before = total.as_ref().and_then(ReadModel::distinct);
        // An empty step adds nothing to the total. Its answer is built from an empty model of
        // the kind's default parameters, which would not merge with the projection's own.
        let model = match model {
            Some(model) => {
                match total.as_mut() {
                    None => total = Some(model.clone()),
                    Some(total) => {
                        total
                            .merge(&model)
                            .map_err(|e| QueryError::ProjectorsDisagree {
                                name: name.clone(),
                                reason: format!("the steps' read models do not merge: {e}"),
                            })?
                    }
                }
                model
            }
            None => empty_read_model(kind),
        };
        let distinct = model.distinct();
        let (new, returning) = match (
            &distinct,
            before,
            total.as_ref().and_then(ReadModel::distinct),
        ) {
            (Some(step), before, Some(after)) => {
                let before = before.unwrap_or(DistinctEstimate {
                    estimate: 0.0,
                    lower_bound: 0.0,
                    upper_bound: 0.0,
                    confidence: after.confidence,
                });
                let new = Derived {
                    estimate: (after.estimate - before.estimate).clamp(0.0, step.estimate),
                    lower_bound: (after.lower_bound - before.upper_bound).max(0.0),
                    upper_bound: (after.upper_bound - before.lower_bound)
                        .clamp(0.0, step.upper_bound),
                };
                let returning = Derived {
                    estimate: (step.estimate - new.estimate).max(0.0),
                    lower_bound: (step.lower_bound - new.upper_bound).max(0.0),
                    upper_bound: (step.upper_bound - new.lower_bound).max(0.0),
                };
                (Some(new), Some(returning))
            }
            // Nothing folded in the range yet, this step included: no key is new or returning.
            (Some(_), _, None) => {
                let zero = Derived {
                    estimate: 0.0,
                    lower_bound: 0.0,
                    upper_bound: 0.0,
                };
                (Some(zero), Some(zero))
            }
            _ => (None, None),
        };
        points.push(SeriesPoint {
            start,
            end: start + range.step,
            events: model.events(),
            distinct,
            new,
            returning,
            top: model.top(k as usize),
        });
    }
    let total = total.unwrap_or_else(|| empty_read_model(kind));
    Ok(Json(SeriesAnswer {
        projection: name,
        group: group.map(str::to_owned),
        past_max_groups,
        tenant,
        kind,
        from: range.from,
        to: range.to,
        step_ms: range.step,
        points,
        total: SeriesTotal {
            events: total.events(),
            distinct: total.distinct(),
            top: total.top(k as usize),
        },
        freshness: gathered.freshness,
    }))
}

/// Names are `[a-z0-9_-]{1,64}`; anything else cannot be a projection.
fn check_name(name: &str) -> Result<(), QueryError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_PROJECTION_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(QueryError::UnknownProjection { name: name.into() })
    }
}

/// The definition of projection `name`, from the first node that lists it.
pub(crate) async fn projection_info(
    state: &AppState,
    name: &str,
) -> Result<ProjectionInfo, QueryError> {
    let status = gather::gather_status(&state.inner.nodes).await?;
    status
        .projections
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| QueryError::UnknownProjection { name: name.into() })
}

/// The bucket width of a projection, when its node reported a valid one.
fn bucket_ms_of(info: &ProjectionInfo) -> Option<i64> {
    info.details
        .get("bucket_ms")
        .and_then(serde_json::Value::as_i64)
        .filter(|&bucket| bucket > 0)
}

/// The field a projection groups by, if it is grouped.
pub(crate) fn group_by_of(info: &ProjectionInfo) -> Option<&str> {
    info.details
        .get("group_by")
        .and_then(serde_json::Value::as_str)
}

/// The read model a query answers from, with its freshness.
pub(crate) struct Selected {
    pub(crate) model: ReadModel,
    pub(crate) freshness: Freshness,
    /// For one group: the values of the window that went to no group because their bucket was
    /// at `max_groups` (some may be this group's); `None` for a whole projection.
    pub(crate) past_max_groups: Option<u64>,
}

/// The merged read model, or with `group` (given as the request's `parameter`) the read model
/// of that group, empty when the group holds nothing in the window. A group of a projection
/// without `group_by` is refused.
pub(crate) async fn in_group(
    state: &AppState,
    name: &str,
    gathered: Gathered,
    group: Option<&str>,
    parameter: &'static str,
) -> Result<Selected, QueryError> {
    let not_grouped = || QueryError::NotGrouped {
        name: name.into(),
        parameter: Some(parameter),
    };
    let Some(group) = group else {
        let (model, freshness) = answerable(gathered);
        return Ok(Selected {
            model,
            freshness,
            past_max_groups: None,
        });
    };
    match &gathered.read_model {
        Some(model) => {
            let Some(selected) = model.group(group) else {
                let info = projection_info(state, name).await?;
                return Err(match group_by_of(&info) {
                    Some(_) => predates_group_by(name),
                    None => not_grouped(),
                });
            };
            Ok(Selected {
                model: selected,
                freshness: gathered.freshness,
                past_max_groups: Some(model.past_max_groups()),
            })
        }
        // Nothing in the window: whether the projection has groups at all is in its definition.
        None => {
            let info = projection_info(state, name).await?;
            if group_by_of(&info).is_none() {
                return Err(not_grouped());
            }
            let (model, freshness) = answerable(gathered);
            Ok(Selected {
                model,
                freshness,
                past_max_groups: Some(0),
            })
        }
    }
}

/// The read models of a window of a projection that declares `group_by` are not grouped: they
/// were built before it was declared.
pub(crate) fn predates_group_by(name: &str) -> QueryError {
    QueryError::ProjectorsDisagree {
        name: name.into(),
        reason: "its read models in this window were built before group_by was declared; wait \
                 for the rebuild to switch in on every node, or run `projector replay`"
            .to_owned(),
    }
}

/// The merged read model, or, when no node holds any bucket of the tenant in the window, an
/// empty one of the projection's kind.
///
/// The empty read model is built with the kind's default parameters. That is exact for the
/// distinct, top and count answers, which are zero whatever the parameters; the membership
/// answer, whose configured rate does depend on them, does not come through here.
pub(crate) fn answerable(gathered: Gathered) -> (ReadModel, Freshness) {
    let model = gathered
        .read_model
        .unwrap_or_else(|| empty_read_model(gathered.kind));
    (model, gathered.freshness)
}

fn empty_read_model(kind: Kind) -> ReadModel {
    ReadModel::new(&SketchParams::default_for(kind))
        .expect("the default sketch parameters of every kind are valid")
}

fn window(
    projection: String,
    group: Option<&str>,
    past_max_groups: Option<u64>,
    tenant: String,
    range: TimeRange,
    model: &ReadModel,
) -> Window {
    Window {
        projection,
        group: group.map(str::to_owned),
        past_max_groups,
        tenant,
        from: range.from,
        to: range.to,
        events: model.events(),
    }
}

/// The read model is of another kind than the nodes said; gathering checks the kind first, so
/// this means a node's bytes and its declared kind differ.
pub(crate) fn kind_mismatch(name: &str, model: &ReadModel) -> QueryError {
    QueryError::ProjectorsDisagree {
        name: name.into(),
        reason: format!("a node returned a {} read model", model.kind()),
    }
}

pub(crate) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, QueryError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|rejection| QueryError::InvalidQueryString(rejection.body_text()))
}
