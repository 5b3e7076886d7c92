//! Per-tenant rate limits that count events, not requests: a batch of 500 events costs 500.
//!
//! Each tenant's limit comes from the tenant file: `events_per_second`, `burst_events` and
//! `rate_limit_algorithm`, one of
//! - `gcra` (the default): the generic cell rate algorithm, an exact token bucket of
//!   `burst_events` refilled at `events_per_second`, in process through `governor`;
//! - `sliding_window_log`: every admission is logged; at most `burst_events` in any window of
//!   `burst_events / events_per_second` seconds;
//! - `sliding_window_counter`: the previous fixed window's count weighted by how much of it the
//!   sliding window still covers, plus the current one's; constant memory, approximate.
//!
//! Where the limits are kept is the ingest config's `[rate_limit]` section: with `redis_url`,
//! every replica shares one quota per tenant through Redis (module `shared`); without it, or
//! while Redis does not answer, each replica enforces `quota / replica_count` on its own (both
//! `events_per_second` and `burst_events` divided, at least 1).
//!
//! Guarantee: a batch is admitted whole or refused whole. A batch larger than the burst of the
//! quota in force is refused as never admissible instead of being asked to retry (except while
//! Redis is away: a batch over this replica's share but within the tenant's burst is asked to
//! retry after the probe interval). Any other refused batch gets `retry_after_s`, the exact wait
//! rounded up to whole seconds, so a client that waits that long is admitted if nothing else was
//! admitted meanwhile, and one second less would not do.
//!
//! [`Status::header_fields`] gives the fields of draft-ietf-httpapi-ratelimit-headers
//! (revision 11): `RateLimit-Policy: "events";q=<burst_events>;w=<window s>` and
//! `RateLimit: "events";r=<events that fit now>;t=<s>`, where `t` is the time until the whole
//! burst is back, or, on a 429, the `Retry-After` (the draft asks that `Retry-After` not end
//! before `t`). The draft's registry of quota units has no "events": the `qu` parameter is left
//! out and the policy is named `events`; a request consumes one unit per event it carries.
//!
//! Metrics: `ingest_events_rate_limited_total{tenant}` (counted where requests are answered) and
//! `ingest_rate_limit_fallback` (1 while Redis is configured but not answering).

pub mod clock;
mod local;
mod shared;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use serde::Deserialize;

use schemas::tenant::{RateLimit, Tenant, TenantFile};

use self::clock::{Clock, MonotonicClock};
use self::local::LocalLimiter;
use self::shared::SharedLimits;

/// `RateLimit-Policy`, the quota policy field.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`, the service limit field.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The name of the one quota policy ingest advertises.
const POLICY_NAME: &str = "events";

/// The validated `[rate_limit]` section of the ingest config.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// How many ingest replicas share each tenant's quota; without Redis (or in fallback) each
    /// enforces `quota / replica_count`.
    pub replica_count: u32,
    /// The Redis server that holds the shared limits, if any.
    pub redis: Option<RedisConfig>,
}

/// Where and how to reach the Redis server of the shared limits.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Parsed from `redis_url` (`redis://[:password@]host:port[/db]` or `unix://path`).
    pub connection: ConnectionInfo,
    /// Longest wait for one decision (and for a connection) before falling back.
    pub timeout: Duration,
    /// How often a replica in fallback tries to reach Redis again.
    pub probe_interval: Duration,
    /// Prefix of every key the limits write, e.g. `ingest:rate-limit`.
    pub key_prefix: String,
}

/// `[rate_limit]` as written in the ingest config.
///
/// ```toml
/// [rate_limit]
/// redis_url = "redis://127.0.0.1:6379/"   # leave out for per-replica limits
/// redis_timeout_ms = 50
/// redis_probe_interval_ms = 500
/// redis_key_prefix = "ingest:rate-limit"
/// replica_count = 3
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub redis_url: Option<String>,
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    #[serde(default = "default_redis_probe_interval_ms")]
    pub redis_probe_interval_ms: u64,
    #[serde(default = "default_redis_key_prefix")]
    pub redis_key_prefix: String,
    #[serde(default = "default_replica_count")]
    pub replica_count: u32,
}

/// Why a `[rate_limit]` section was refused: the field and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RateLimitConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// The rate limits of every tenant, local or shared.
#[derive(Debug)]
pub struct TenantLimits {
    replica_count: u32,
    shared: Option<Arc<SharedLimits>>,
    /// Tenant name -> its local limiter (the local share of its quota).
    local: RwLock<HashMap<String, Arc<LocalLimiter>>>,
    clock: Arc<dyn Clock>,
}

/// The limit a decision was made under and what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The limit in force: the tenant's, or its local share.
    pub limit: RateLimit,
    /// Events that could be admitted right after this decision.
    pub remaining: u64,
    /// Time until the whole burst is available again, if no more events are admitted.
    pub reset: Duration,
}

/// Why a batch of events was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not now: the same batch is admitted after `retry_after_s` seconds if nothing else is
    /// admitted meanwhile (the exact wait rounded up, at least 1).
    Later { retry_after_s: u64, status: Status },
    /// The batch is larger than the burst of the limit in force: it will never be admitted whole.
    Never { burst_events: u32 },
}

/// What one algorithm decided for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) admitted: bool,
    /// Events that could be admitted right after this decision.
    pub(crate) remaining: u64,
    /// Time until the whole quota is available again, if no more events are admitted.
    pub(crate) reset: Duration,
    /// When refused, the exact time after which the batch would be admitted if nothing else is
    /// admitted meanwhile; zero when admitted.
    pub(crate) wait: Duration,
}

const fn default_redis_timeout_ms() -> u64 {
    50
}

const fn default_redis_probe_interval_ms() -> u64 {
    500
}

fn default_redis_key_prefix() -> String {
    "ingest:rate-limit".to_owned()
}

const fn default_replica_count() -> u32 {
    1
}

impl Default for RateLimitSection {
    fn default() -> RateLimitSection {
        RateLimitSection {
            redis_url: None,
            redis_timeout_ms: default_redis_timeout_ms(),
            redis_probe_interval_ms: default_redis_probe_interval_ms(),
            redis_key_prefix: default_redis_key_prefix(),
            replica_count: default_replica_count(),
        }
    }
}

impl RateLimitSection {
    /// Checks the section and turns it into the config the limits run with.
    pub fn validate(self) -> Result<RateLimitConfig, RateLimitConfigError> {
        let invalid = |field: &'static str, reason: &str| RateLimitConfigError {
            field,
            reason: reason.to_owned(),
        };
        if self.replica_count == 0 {
            return Err(invalid("rate_limit.replica_count", "must be at least 1"));
        }
        let redis = match self.redis_url {
            None => None,
            Some(url) => {
                let connection = url.as_str().into_connection_info().map_err(|error| {
                    invalid(
                        "rate_limit.redis_url",
                        &format!(
                            "{error}: give e.g. \"redis://127.0.0.1:6379/\" (TLS is not supported)"
                        ),
                    )
                })?;
                if matches!(connection.addr, ConnectionAddr::TcpTls { .. }) {
                    return Err(invalid(
                        "rate_limit.redis_url",
                        "TLS (rediss://) is not supported: use redis:// on a trusted network",
                    ));
                }
                if self.redis_timeout_ms == 0 {
                    return Err(invalid("rate_limit.redis_timeout_ms", "must be at least 1"));
                }
                if self.redis_probe_interval_ms == 0 {
                    return Err(invalid(
                        "rate_limit.redis_probe_interval_ms",
                        "must be at least 1",
                    ));
                }
                let prefix_ok = !self.redis_key_prefix.is_empty()
                    && self.redis_key_prefix.bytes().all(|b| b.is_ascii_graphic());
                if !prefix_ok {
                    return Err(invalid(
                        "rate_limit.redis_key_prefix",
                        "use 1 or more printable ASCII characters without spaces",
                    ));
                }
                Some(RedisConfig {
                    connection,
                    timeout: Duration::from_millis(self.redis_timeout_ms),
                    probe_interval: Duration::from_millis(self.redis_probe_interval_ms),
                    key_prefix: self.redis_key_prefix,
                })
            }
        };
        Ok(RateLimitConfig {
            replica_count: self.replica_count,
            redis,
        })
    }
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            replica_count: 1,
            redis: None,
        }
    }
}

impl TenantLimits {
    /// Limits for `config`, timed by the process's monotonic clock. Does not contact Redis: the
    /// first decision connects.
    pub fn new(config: &RateLimitConfig) -> TenantLimits {
        TenantLimits::with_clock(config, Arc::new(MonotonicClock::new()))
    }

    /// Limits whose in-process algorithms read `clock` (a [`clock::FakeClock`] in tests). The
    /// shared limits always use the Redis server's clock.
    pub fn with_clock(config: &RateLimitConfig, clock: Arc<dyn Clock>) -> TenantLimits {
        TenantLimits {
            replica_count: config.replica_count.max(1),
            shared: config
                .redis
                .as_ref()
                .map(|redis| Arc::new(SharedLimits::new(redis))),
            local: RwLock::new(HashMap::new()),
            clock,
        }
    }

    /// Admits all `events` of a batch for `tenant`, or none and says when to retry.
    pub async fn admit(&self, tenant: &Tenant, events: NonZeroU32) -> Result<Status, Refusal> {
        let limit = tenant.rate_limit;
        if events.get() > limit.burst_events {
            return Err(Refusal::Never {
                burst_events: limit.burst_events,
            });
        }
        if let Some(shared) = &self.shared {
            if let Some(decision) = shared.decide(&tenant.name, limit, events.get()).await {
                return verdict(limit, decision);
            }
        }
        let local = self.local_limiter(&tenant.name, self.local_share(limit));
        if events.get() > local.limit().burst_events {
            let status = Status {
                limit: local.limit(),
                remaining: 0,
                reset: Duration::ZERO,
            };
            return match &self.shared {
                // Larger than this replica's share only while Redis is away: retry once it
                // may be back.
                Some(shared) => Err(Refusal::Later {
                    retry_after_s: whole_seconds_up(shared.probe_interval()),
                    status,
                }),
                None => Err(Refusal::Never {
                    burst_events: local.limit().burst_events,
                }),
            };
        }
        verdict(local.limit(), local.decide(events))
    }

    /// Whether Redis is configured but decisions are local because it did not answer.
    pub fn is_fallback(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.is_fallback())
    }

    /// Forgets the local state of tenants that are not in `file` any more.
    pub fn retain(&self, file: &TenantFile) {
        self.local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| file.tenant(name).is_some());
    }

    /// This replica's share of `limit` when it decides alone.
    fn local_share(&self, limit: RateLimit) -> RateLimit {
        RateLimit {
            events_per_second: (limit.events_per_second / self.replica_count).max(1),
            burst_events: (limit.burst_events / self.replica_count).max(1),
            algorithm: limit.algorithm,
        }
    }

    /// The tenant's local limiter for `limit`, replaced when the limit changed (a reload).
    fn local_limiter(&self, tenant: &str, limit: RateLimit) -> Arc<LocalLimiter> {
        let existing = self
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned();
        match existing {
            Some(limiter) if limiter.limit() == limit => limiter,
            _ => {
                let mut local = self.local.write().unwrap_or_else(PoisonError::into_inner);
                let limiter = local
                    .entry(tenant.to_owned())
                    .or_insert_with(|| Arc::new(LocalLimiter::new(limit, self.clock.clone())));
                if limiter.limit() != limit {
                    *limiter = Arc::new(LocalLimiter::new(limit, self.clock.clone()));
                }
                Arc::clone(limiter)
            }
        }
    }
}

impl Status {
    /// `RateLimit-Policy` and `RateLimit` for this status; `retry_after_s` is the `Retry-After`
    /// of a refusal, which the effective window `t` then equals (the draft asks that
    /// `Retry-After` not end before it).
    pub fn header_fields(&self, retry_after_s: Option<u64>) -> [(HeaderName, HeaderValue); 2] {
        let window_s = whole_seconds_up(self.limit.window());
        let policy = format!(
            "\"{POLICY_NAME}\";q={};w={window_s}",
            self.limit.burst_events
        );
        let effective_s = retry_after_s.unwrap_or_else(|| whole_seconds_up_or_zero(self.reset));
        let limit = format!("\"{POLICY_NAME}\";r={};t={effective_s}", self.remaining);
        [
            (RATELIMIT_POLICY.clone(), header_value(policy)),
            (RATELIMIT.clone(), header_value(limit)),
        ]
    }
}

/// Turns a decision under `limit` into the answer.
fn verdict(limit: RateLimit, decision: Decision) -> Result<Status, Refusal> {
    let status = Status {
        limit,
        remaining: decision.remaining,
        reset: decision.reset,
    };
    if decision.admitted {
        Ok(status)
    } else {
        Err(Refusal::Later {
            retry_after_s: whole_seconds_up(decision.wait),
            status,
        })
    }
}

/// `duration` in whole seconds, rounded up, at least 1.
fn whole_seconds_up(duration: Duration) -> u64 {
    whole_seconds_up_or_zero(duration).max(1)
}

fn whole_seconds_up_or_zero(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Header values built here hold only ASCII digits, letters, quotes, `;` and `=`.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
