//! The query API's Prometheus metrics: names, descriptions, histogram buckets and the middleware
//! that counts and times every request.
//!
//! Guarantee: every HTTP request, including refused and unrouted ones, is counted once in
//! `query_api_requests_total{endpoint,status}` and timed once in
//! `query_api_request_duration_seconds{endpoint}`; `endpoint` is the route template (never the
//! raw path), so label values stay bounded. Nothing here installs a global recorder: metrics go to
//! whichever recorder the process installed, or nowhere.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Requests answered, by route template and HTTP status.
pub const REQUESTS_TOTAL: &str = "query_api_requests_total";
/// Time from request to answer, by route template.
pub const REQUEST_DURATION_SECONDS: &str = "query_api_request_duration_seconds";
/// Failed calls to projector nodes, by node and reason.
pub const PROJECTOR_ERRORS_TOTAL: &str = "query_api_projector_errors_total";
/// Reloads of the tenant file, by result: `reloaded`, or `refused` (the previous version stays).
pub const TENANT_RELOADS_TOTAL: &str = "query_api_tenant_reloads_total";

/// Upper bounds of the request-duration histogram buckets, in seconds.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Adds the query API's histogram buckets to a Prometheus builder, so that
/// `query_api_request_duration_seconds` is rendered as a histogram rather than a summary.
///
/// The binary calls this before installing its recorder; a process that hosts several services
/// can chain it with theirs.
pub fn register_histogram_buckets(
    builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, BuildError> {
    builder.set_buckets_for_metric(
        Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
        REQUEST_DURATION_BUCKETS,
    )
}

/// Describes the metrics to the installed recorder, if any.
pub(crate) fn describe_metrics() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by route template and status"
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "time to answer an HTTP request, by route template"
    );
    describe_counter!(
        TENANT_RELOADS_TOTAL,
        Unit::Count,
        "reloads of the tenant file, by result (reloaded or refused)"
    );
    describe_counter!(
        PROJECTOR_ERRORS_TOTAL,
        Unit::Count,
        "calls to projector nodes that gave no usable answer, by node and reason"
    );
    describe_counter!(
        crate::cache::CACHE_HITS_TOTAL,
        Unit::Count,
        "range queries answered from a cached merge of the nodes' read models"
    );
    describe_counter!(
        crate::cache::CACHE_MISSES_TOTAL,
        Unit::Count,
        "range queries that asked the nodes for their read models"
    );
}

/// Middleware: counts and times the request under its route template.
pub(crate) async fn track_request(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status).increment(1);
    histogram!(REQUEST_DURATION_SECONDS, "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    response
}
