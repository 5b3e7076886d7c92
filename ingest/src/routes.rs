//! HTTP routes of ingest: `POST /v1/events`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Guarantee: `POST /v1/events` answers 202 `{"accepted": N}` only after Kafka acknowledged all
//! N events of the request; a request refused before producing (401, 413, 415, 400, 429) wrote
//! nothing. Steps, in order: authenticate the bearer key, check content type and encoding,
//! read the body (at most `max_body_bytes`, or the tenant's smaller `max_body_bytes`, also after
//! gzip decoding), validate every event with `schemas::parse_events` and against the tenant's
//! allowed event types and `max_event_bytes`, take the events from the tenant's rate limit,
//! append them. Answers given after the rate limit was consulted (202, 429, and 503 when Kafka
//! cannot take the admitted events) carry the `RateLimit-Policy` and `RateLimit` header fields.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Bytes, HttpBody};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::error::KafkaError;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use schemas::tenant::{SharedTenants, Tenant, TenantFile};
use schemas::{Limits, Record};

use crate::body::{self, Encoding, body_encoding, body_format};
use crate::config::Config;
use crate::error::ApiError;
use crate::event_log::EventLog;
use crate::rate_limit::{Refusal, TenantLimits};
use crate::telemetry;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    tenants: SharedTenants,
    limits: Arc<TenantLimits>,
    event_log: Arc<EventLog>,
    metrics: PrometheusHandle,
    max_body_bytes: usize,
    request_deadline: Duration,
    body_read_timeout: Duration,
    event_limits: Arc<Limits>,
    /// Bytes of request bodies that may be held at once (`max_buffered_body_bytes`).
    body_budget: Arc<Semaphore>,
    body_budget_bytes: usize,
}

/// The ingest routes over `state`. The body limit layer is set to `max_body_bytes`.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.inner.max_body_bytes;
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

impl AppState {
    /// State for `config` and `tenants`. Creates the Kafka producer but does not contact Kafka:
    /// the partition count is unknown (requests get 503) until
    /// [`EventLog::refresh_metadata`] or [`EventLog::set_partition_count`] is called on
    /// [`AppState::event_log`].
    pub fn new(
        config: &Config,
        tenants: TenantFile,
        metrics: PrometheusHandle,
    ) -> Result<AppState, KafkaError> {
        let event_log = Arc::new(EventLog::new(config)?);
        Ok(AppState {
            inner: Arc::new(Shared {
                limits: Arc::new(TenantLimits::new(&config.rate_limit)),
                tenants: SharedTenants::new(tenants),
                event_log,
                metrics,
                max_body_bytes: config.max_body_bytes,
                request_deadline: config.request_deadline,
                body_read_timeout: config.body_read_timeout,
                event_limits: Arc::new(config.limits.clone()),
                body_budget: Arc::new(Semaphore::new(config.max_buffered_body_bytes)),
                body_budget_bytes: config.max_buffered_body_bytes,
            }),
        })
    }

    /// The topic this state appends to.
    pub fn event_log(&self) -> &Arc<EventLog> {
        &self.inner.event_log
    }

    /// The tenant file in force; reloading it changes keys and limits for the next requests.
    pub fn tenants(&self) -> &SharedTenants {
        &self.inner.tenants
    }

    /// The tenants' rate limits.
    pub fn limits(&self) -> &Arc<TenantLimits> {
        &self.inner.limits
    }
}

async fn post_events(State(state): State<AppState>, request: Request) -> Response {
    let mut rate_limit_fields = None;
    let mut unread = Some(request);
    let mut response = match accept_events(&state, &mut unread, &mut rate_limit_fields).await {
        Ok(accepted) => {
            (StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))).into_response()
        }
        Err(error) => {
            let drained = match unread {
                Some(request) => discard_body(&state.inner, request).await,
                None => true,
            };
            let mut response = error.into_response();
            if !drained {
                // Tell the client not to reuse the connection, which closes with the body unread.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    response
        .headers_mut()
        .extend(rate_limit_fields.into_iter().flatten());
    counter!(telemetry::REQUESTS, "status" => response.status().as_u16().to_string()).increment(1);
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.inner.event_log.is_ready() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        let error = json!({
            "code": "not_ready",
            "message": "kafka topic metadata could not be read on the last check: check that \
                        the brokers are up and the topic exists",
        });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error })),
        )
            .into_response()
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let shared = &state.inner;
    gauge!(telemetry::BUFFERED_BODY_BYTES)
        .set((shared.body_budget_bytes - shared.body_budget.available_permits()) as f64);
    gauge!(telemetry::PRODUCER_QUEUE_RECORDS).set(f64::from(shared.event_log.queued_records()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
        .into_response()
}

/// Runs the steps of `POST /v1/events` and returns the number of events Kafka acknowledged.
/// Once the rate limit was consulted, `rate_limit_fields` holds the header fields to answer with.
///
/// `request` is taken once its body is read; a request refused before that is left in place.
async fn accept_events(
    state: &AppState,
    request: &mut Option<Request>,
    rate_limit_fields: &mut Option<[(HeaderName, HeaderValue); 2]>,
) -> Result<usize, ApiError> {
    let shared = &state.inner;
    let headers = request
        .as_ref()
        .ok_or_else(|| ApiError::Internal("the request was already read".into()))?
        .headers();
    let tenant = authenticate(&shared.tenants.current(), headers)?;
    let format = body_format(headers)?;
    let encoding = body_encoding(headers)?;
    let max_body_bytes = tenant
        .max_body_bytes
        .map_or(shared.max_body_bytes, |bytes| {
            bytes.min(shared.max_body_bytes)
        });
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > max_body_bytes) {
        return Err(ApiError::BodyTooLarge {
            limit_bytes: max_body_bytes,
        });
    }
    // Held until the answer is sent: the body, its decoded form and the records made of it
    // live until then. A body of unknown length reserves the most it may be.
    let mut reservation = reserve_body_bytes(shared, declared.unwrap_or(max_body_bytes))?;
    let Some(request) = request.take() else {
        return Err(ApiError::Internal("the request was already read".into()));
    };
    // A client that trickles its body would hold a connection and a task without bound.
    let body = tokio::time::timeout(shared.body_read_timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            limit: shared.body_read_timeout,
        })?
        .map_err(|rejection| body_rejection(rejection, max_body_bytes))?;
    if body.len() > max_body_bytes {
        return Err(ApiError::BodyTooLarge {
            limit_bytes: max_body_bytes,
        });
    }

    if encoding == Encoding::Gzip {
        let decoded = body::gzip_decoded_bound(&body, max_body_bytes);
        reservation.merge(reserve_body_bytes(shared, decoded)?);
    }
    let _reservation = reservation;

    let received_ms = now_ms();
    let event_limits = Arc::clone(&shared.event_limits);
    let rules_tenant = Arc::clone(&tenant);
    // Decoding and validating up to `max_body_bytes` of JSON is CPU work: keep it off the
    // async workers.
    let records: Vec<Record> = tokio::task::spawn_blocking(move || {
        body::read_events(
            &body,
            encoding,
            format,
            &rules_tenant,
            received_ms,
            &event_limits,
            max_body_bytes,
        )
    })
    .await
    .map_err(|error| ApiError::Internal(format!("event parsing task failed: {error}")))??;

    let events = records.len();
    counter!(telemetry::EVENTS_RECEIVED).increment(events as u64);
    let Some(batch) = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
        return Ok(0);
    };
    match shared.limits.admit(&tenant, batch).await {
        Ok(status) => *rate_limit_fields = Some(status.header_fields(None)),
        Err(refusal) => {
            if let Refusal::Later {
                retry_after_s,
                status,
            } = &refusal
            {
                *rate_limit_fields = Some(status.header_fields(Some(*retry_after_s)));
            }
            return Err(refused(&tenant.name, events, refusal));
        }
    }
    if let Err(error) = shared
        .event_log
        .append(&records, shared.request_deadline)
        .await
    {
        counter!(telemetry::EVENTS_REJECTED, "reason" => error.reason()).increment(events as u64);
        return Err(error.into());
    }
    counter!(telemetry::EVENTS_ACCEPTED).increment(events as u64);
    Ok(events)
}

/// The tenant of the `Authorization: Bearer <key>` header.
fn authenticate(tenants: &TenantFile, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    tenants
        .authenticate(key.trim())
        .cloned()
        .ok_or(ApiError::Unauthorized)
}

/// Takes `bytes` from the body budget at once, or refuses the request: waiting would let
/// clients pile up connections while their bodies sit in socket buffers.
fn reserve_body_bytes(shared: &Shared, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let overloaded = || ApiError::Overloaded {
        needed_bytes: bytes,
        budget_bytes: shared.body_budget_bytes,
    };
    // The config keeps the budget, and so every reservation, within u32.
    let permits = u32::try_from(bytes.max(1)).map_err(|_| overloaded())?;
    let permit = Arc::clone(&shared.body_budget)
        .try_acquire_many_owned(permits)
        .map_err(|_| overloaded())?;
    Ok(permit)
}

/// Reads and drops the body of a request refused before its body was read, so the client, which
/// may still be sending it, reads the answer instead of a reset connection. Bounded like a body
/// that is kept: at most `max_body_bytes`, within `body_read_timeout`; nothing is held. A body
/// declared larger than that is not read. Returns whether the body was read to its end; if not,
/// the connection closes after the answer.
async fn discard_body(shared: &Shared, request: Request) -> bool {
    let declared = declared_length(request.headers());
    if declared.is_some_and(|length| length > shared.max_body_bytes) {
        return false;
    }
    let mut body = request.into_body();
    let mut remaining = shared.max_body_bytes;
    let drain = async {
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match remaining.checked_sub(data.len()) {
                        Some(left) => remaining = left,
                        None => return false,
                    }
                }
            }
        }
    };
    tokio::time::timeout(shared.body_read_timeout, drain)
        .await
        .unwrap_or(false)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn body_rejection(rejection: BytesRejection, limit_bytes: usize) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::BodyTooLarge { limit_bytes }
        }
        other => ApiError::BodyUnreadable(other.body_text()),
    }
}

/// Counts a rate-limit refusal and turns it into the response error.
fn refused(tenant: &str, events: usize, refusal: Refusal) -> ApiError {
    let events_u64 = events as u64;
    match refusal {
        Refusal::Later { retry_after_s, .. } => {
            counter!(telemetry::EVENTS_REJECTED, "reason" => "rate_limited").increment(events_u64);
            counter!(telemetry::EVENTS_RATE_LIMITED, "tenant" => tenant.to_owned())
                .increment(events_u64);
            ApiError::RateLimited {
                tenant: tenant.to_owned(),
                retry_after_s,
            }
        }
        Refusal::Never { burst_events } => {
            counter!(telemetry::EVENTS_REJECTED, "reason" => "batch_exceeds_burst")
                .increment(events_u64);
            ApiError::BatchExceedsBurst {
                tenant: tenant.to_owned(),
                events: u32::try_from(events).unwrap_or(u32::MAX),
                burst_events,
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
