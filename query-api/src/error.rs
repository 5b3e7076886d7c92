//! Every way a public query can fail, and how each becomes an HTTP answer.
//!
//! Guarantee: each failure has one stable snake_case `code`, one HTTP status, and a message that
//! says what to fix; the body is always `{"error": {"code", "message"}}`. Mistakes in the request
//! are 4xx, never 500. The cause of a server-side failure is logged once, here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("send the header 'Authorization: Bearer <api key>'")]
    MissingApiKey,
    #[error("the api key is not known; use a key from the tenant file")]
    InvalidApiKey,
    #[error("the query string is not valid: {0}")]
    InvalidQueryString(String),
    #[error(
        "unknown parameter {name:?}; this endpoint accepts: {allowed} (the tenant always comes \
         from the api key)"
    )]
    UnknownParameter { name: String, allowed: String },
    #[error("parameter {0:?} is given more than once; give it once")]
    DuplicateParameter(String),
    #[error("parameter {0:?} is required")]
    MissingParameter(&'static str),
    #[error("parameter {name:?}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("from ({from}) is after to ({to}); give from <= to")]
    InvalidTimeRange { from: i64, to: i64 },
    #[error(
        "projection {name:?} does not exist; GET /v1/projections lists the projections there are"
    )]
    UnknownProjection { name: String },
    #[error(
        "projection {name:?} is a {kind} projection and cannot answer {asked} queries; \
         it supports: {supported}"
    )]
    UnsupportedQuery {
        name: String,
        kind: String,
        asked: &'static str,
        supported: &'static str,
    },
    #[error(
        "projection {name:?} has no group_by, so it has no groups; {}declare group_by for it in \
         the projection file",
        parameter.map(|p| format!("remove the {p} parameter, or ")).unwrap_or_default()
    )]
    NotGrouped {
        name: String,
        /// The request's parameter that named a group, if any.
        parameter: Option<&'static str>,
    },
    #[error(
        "the window holds {groups} groups, more than the {max} one answer lists; give limit \
         (1 to {max}) for the largest groups, or narrow the window with from and to"
    )]
    TooManyGroups { groups: usize, max: usize },
    #[error("no route for {0}; see docs/query-api.md for the endpoints")]
    NotFound(String),
    #[error("method {0} is not allowed here; the query api only answers GET")]
    MethodNotAllowed(String),
    #[error(
        "no projector node answered ({nodes}); check that the projectors are running and that \
         projector_urls is right"
    )]
    ProjectorsUnavailable { nodes: String },
    #[error(
        "partition {partition} is reported by more than one projector node ({nodes}), so \
         counts would be doubled; the projector group is rebalancing, retry in a few seconds"
    )]
    PartitionOverlap { partition: i32, nodes: String },
    #[error("projector nodes disagree about projection {name:?}: {reason}")]
    ProjectorsDisagree { name: String, reason: String },
    #[error("the answer could not be sent: {0}; retry, and see the query api log")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl QueryError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::MissingApiKey => "missing_api_key",
            QueryError::InvalidApiKey => "invalid_api_key",
            QueryError::InvalidQueryString(_) => "invalid_query_string",
            QueryError::UnknownParameter { .. } => "unknown_parameter",
            QueryError::DuplicateParameter(_) => "duplicate_parameter",
            QueryError::MissingParameter(_) => "missing_parameter",
            QueryError::InvalidParameter { .. } => "invalid_parameter",
            QueryError::InvalidTimeRange { .. } => "invalid_time_range",
            QueryError::UnknownProjection { .. } => "unknown_projection",
            QueryError::UnsupportedQuery { .. } => "unsupported_query",
            QueryError::NotGrouped { .. } => "not_grouped",
            QueryError::TooManyGroups { .. } => "too_many_groups",
            QueryError::NotFound(_) => "not_found",
            QueryError::MethodNotAllowed(_) => "method_not_allowed",
            QueryError::ProjectorsUnavailable { .. } => "projectors_unavailable",
            QueryError::PartitionOverlap { .. } => "partition_overlap",
            QueryError::ProjectorsDisagree { .. } => "projectors_disagree",
            QueryError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::MissingApiKey | QueryError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            QueryError::InvalidQueryString(_)
            | QueryError::UnknownParameter { .. }
            | QueryError::DuplicateParameter(_)
            | QueryError::MissingParameter(_)
            | QueryError::InvalidParameter { .. }
            | QueryError::InvalidTimeRange { .. }
            | QueryError::UnsupportedQuery { .. }
            | QueryError::NotGrouped { .. }
            | QueryError::TooManyGroups { .. } => StatusCode::BAD_REQUEST,
            QueryError::UnknownProjection { .. } | QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            QueryError::ProjectorsUnavailable { .. } | QueryError::PartitionOverlap { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            QueryError::ProjectorsDisagree { .. } => StatusCode::BAD_GATEWAY,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        if matches!(self, QueryError::ProjectorsUnavailable { .. }) {
            // Each node's failure was already logged with its cause where it happened.
            tracing::debug!(code, "query failed: no projector node answered");
        } else if status.is_server_error() {
            tracing::warn!(code, error = %self, "query failed");
        } else {
            tracing::debug!(code, error = %self, "query refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
