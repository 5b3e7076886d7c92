//! Every way a request to ingest can fail, and the HTTP response each one becomes.
//!
//! Guarantee: a failure is answered with one JSON shape,
//! `{"error": {"code": "...", "message": "..."}}` (plus `problems` for invalid events), whose
//! message tells the client what to change; 429 and 503 carry a `Retry-After` header in whole
//! seconds. Server-side causes are logged once, here, when the response is built.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdkafka::error::KafkaError;
use serde_json::json;

use schemas::Problem;

/// Seconds a client is asked to wait before retrying after Kafka could not take its events.
const KAFKA_RETRY_AFTER_S: u64 = 1;

/// Seconds a client is asked to wait when ingest holds as many request bodies as it may.
const OVERLOAD_RETRY_AFTER_S: u64 = 1;

/// A request that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown api key: send the header `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error(
        "content type {found:?} is not supported: send application/json (one event or an array) \
         or application/x-ndjson"
    )]
    UnsupportedMediaType { found: String },
    #[error("content encoding {found:?} is not supported: send the body plain or gzip-encoded")]
    UnsupportedEncoding { found: String },
    #[error(
        "request body is larger than {limit_bytes} bytes (after gzip decoding): split the events \
         into smaller requests"
    )]
    BodyTooLarge { limit_bytes: usize },
    #[error("request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error(
        "the request body did not arrive within {} ms: send the whole body at once",
        limit.as_millis()
    )]
    BodyTimeout { limit: std::time::Duration },
    #[error("body is not valid gzip: {0}; send it plain or with a complete gzip stream")]
    InvalidGzip(String),
    #[error(
        "{} problem(s) in the events: fix them and send the request again; no event of this \
         request was written", problems.len()
    )]
    InvalidEvents { problems: Vec<Problem> },
    #[error(
        "tenant {tenant:?} is over its rate limit: retry after {retry_after_s} s or send fewer \
         events per second"
    )]
    RateLimited { tenant: String, retry_after_s: u64 },
    #[error(
        "the request has {events} events but tenant {tenant:?} may send at most {burst_events} at \
         once: split it into requests of at most {burst_events} events"
    )]
    BatchExceedsBurst {
        tenant: String,
        events: u32,
        burst_events: u32,
    },
    #[error(
        "ingest is not ready: the partition count of the topic is not known yet; retry shortly"
    )]
    NoMetadata,
    #[error(
        "the kafka producer queue is full: retry after {KAFKA_RETRY_AFTER_S} s; some events of \
         this request may already be in kafka"
    )]
    QueueFull,
    #[error(
        "kafka did not acknowledge every event within {} ms: retry after {KAFKA_RETRY_AFTER_S} s; \
         some events of this request may already be in kafka", deadline.as_millis()
    )]
    KafkaTimeout { deadline: Duration },
    #[error(
        "kafka refused an event: retry after {KAFKA_RETRY_AFTER_S} s; some events of this \
         request may already be in kafka"
    )]
    Kafka(#[source] KafkaError),
    #[error(
        "event {index} (counting from 0) becomes a kafka record of {bytes} bytes, more than the \
         {limit_bytes} a record may hold: send smaller events; no event of this request was \
         written"
    )]
    RecordTooLarge {
        index: usize,
        bytes: usize,
        limit_bytes: usize,
    },
    #[error(
        "ingest holds as many request bodies as it may ({budget_bytes} bytes) and cannot take \
         {needed_bytes} more now: retry after {OVERLOAD_RETRY_AFTER_S} s; nothing of this \
         request was written"
    )]
    Overloaded {
        needed_bytes: usize,
        budget_bytes: usize,
    },
    #[error("internal error while handling the request: retry, and report it if it persists")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType { .. } | ApiError::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BodyTooLarge { .. }
            | ApiError::BatchExceedsBurst { .. }
            | ApiError::RecordTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyUnreadable(_)
            | ApiError::InvalidGzip(_)
            | ApiError::InvalidEvents { .. } => StatusCode::BAD_REQUEST,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::NoMetadata
            | ApiError::QueueFull
            | ApiError::KafkaTimeout { .. }
            | ApiError::Kafka(_)
            | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::UnsupportedEncoding { .. } => "unsupported_content_encoding",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyUnreadable(_) => "body_unreadable",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::InvalidGzip(_) => "invalid_gzip",
            ApiError::InvalidEvents { .. } => "invalid_events",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BatchExceedsBurst { .. } => "batch_exceeds_burst",
            ApiError::NoMetadata => "not_ready",
            ApiError::QueueFull => "kafka_queue_full",
            ApiError::KafkaTimeout { .. } | ApiError::Kafka(_) => "kafka_unavailable",
            ApiError::RecordTooLarge { .. } => "record_too_large",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Seconds the client should wait before retrying, for failures that a retry can fix.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::NoMetadata
            | ApiError::QueueFull
            | ApiError::KafkaTimeout { .. }
            | ApiError::Kafka(_) => Some(KAFKA_RETRY_AFTER_S),
            ApiError::Overloaded { .. } => Some(OVERLOAD_RETRY_AFTER_S),
            _ => None,
        }
    }

    /// Logs the cause of server-side failures; client mistakes are logged at debug only.
    fn log(&self) {
        match self {
            ApiError::Kafka(error) => {
                tracing::warn!(error = %error, code = self.code(), "kafka did not take the events");
            }
            ApiError::Overloaded { .. } => {
                tracing::warn!(error = %self, code = self.code(), "request refused under load");
            }
            ApiError::QueueFull | ApiError::KafkaTimeout { .. } | ApiError::NoMetadata => {
                tracing::warn!(error = %self, code = self.code(), "kafka did not take the events");
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed inside ingest");
            }
            _ => tracing::debug!(error = %self, code = self.code(), "request refused"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::InvalidEvents { problems } = &self {
            error["problems"] = json!(problems);
        }
        let mut response = (self.status(), Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
