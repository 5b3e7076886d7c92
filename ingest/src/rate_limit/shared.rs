//! Rate limits shared by every ingest replica through one Redis server.
//!
//! Each decision is one Lua script, run atomically by Redis, that reads the server's clock
//! (`redis.call('TIME')`, so replicas' clocks do not matter), updates the tenant's state and sets
//! it to expire once it no longer matters. The three scripts implement the same algorithms as
//! the in-process ones, in microseconds of the Redis clock.
//!
//! Guarantee: a decision that Redis does not answer within `timeout` (down, unreachable, slow,
//! or an error) is not waited for: the replica switches to its local share of the quota
//! (`quota / replica_count`) at once, sets `ingest_rate_limit_fallback` to 1 and logs the switch
//! once. A background probe (connect and `PING`, every `probe_interval`) switches back, sets the
//! gauge to 0 and logs that once, when Redis answers again. While in fallback no request waits
//! for Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::gauge;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, Script};
use tokio::sync::OnceCell;

use schemas::tenant::{RateLimit, RateLimitAlgorithm};

use super::{Decision, RedisConfig};
use crate::telemetry;

/// The shared state of every tenant's limit, in one Redis server.
#[derive(Debug)]
pub(crate) struct SharedLimits {
    connection_info: ConnectionInfo,
    /// `host:port` (or socket path) of the server, for logs; never the password.
    address: String,
    key_prefix: String,
    timeout: Duration,
    probe_interval: Duration,
    connection: RwLock<Option<MultiplexedConnection>>,
    /// True while decisions are local because Redis did not answer.
    fallback: AtomicBool,
    /// Set once the first connection attempt is over, whatever its outcome.
    first_attempt: OnceCell<()>,
    gcra: Script,
    sliding_log: Script,
    sliding_counter: Script,
}

/// GCRA. KEYS[1]: the theoretical arrival time (TAT) in µs of the server clock.
/// ARGV: events per second, burst events, events in this batch.
/// Returns {admitted (0 or 1), remaining events, µs until the burst is full, µs to wait}.
const GCRA_SCRIPT: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local per_event = 1000000 / rate
local tolerance = per_event * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + n * per_event
local allowed_at = new_tat - tolerance
if now >= allowed_at then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
    'PX', math.ceil((new_tat - now) / 1000) + 1)
  local remaining = math.floor((now + tolerance - new_tat) / per_event)
  return {1, remaining, math.ceil(new_tat - now), 0}
end
local remaining = math.floor((now + tolerance - tat) / per_event)
return {0, remaining, math.ceil(tat - now), math.ceil(allowed_at - now)}
"#;

/// Sliding window log. KEYS[1]: sorted set of admissions, member `<seq>:<events>`, score the
/// admission time in µs; KEYS[2]: hash with the sum of their events (`total`) and `seq`.
/// ARGV: window in µs, limit (burst events), events in this batch.
/// Returns {admitted, remaining events, µs until the window is empty, µs to wait}.
const SLIDING_LOG_SCRIPT: &str = r#"
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
for _, member in ipairs(expired) do
  total = total - tonumber(string.match(member, ':(%d+)$'))
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
end
if total < 0 then
  total = 0
end
local ttl = math.ceil(window / 1000) + 1
if total + n <= limit then
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('ZADD', KEYS[1], now, seq .. ':' .. n)
  total = total + n
  redis.call('HSET', KEYS[2], 'total', total)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return {1, limit - total, window, 0}
end
if #expired > 0 then
  redis.call('HSET', KEYS[2], 'total', total)
end
local needed = total + n - limit
local freed = 0
local wait = window
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
  if freed >= needed then
    wait = tonumber(entries[i + 1]) + window - now
    break
  end
end
local reset = window
if #entries > 0 then
  reset = tonumber(entries[#entries]) + window - now
end
return {0, limit - total, reset, wait}
"#;

/// Sliding window counter. KEYS[1]: hash with the current fixed window's number (`index`) and
/// the counts of it (`current`) and of the one before (`previous`).
/// ARGV: window in µs, limit (burst events), events in this batch.
/// Returns {admitted, remaining events, µs until the estimate is zero, µs to wait}.
const SLIDING_COUNTER_SCRIPT: &str = r#"
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local index = math.floor(now / window)
local stored = redis.call('HMGET', KEYS[1], 'index', 'current', 'previous')
local current = 0
local previous = 0
if stored[1] then
  local stored_index = tonumber(stored[1])
  if stored_index == index then
    current = tonumber(stored[2])
    previous = tonumber(stored[3])
  elseif stored_index == index - 1 then
    previous = tonumber(stored[2])
  end
end
local elapsed = now - index * window
local weighted_previous = previous * (window - elapsed)
local admitted = 0
local wait = 0
if weighted_previous + (current + n) * window <= limit * window then
  admitted = 1
  current = current + n
  redis.call('HSET', KEYS[1], 'index', index, 'current', current, 'previous', previous)
  redis.call('PEXPIRE', KEYS[1], math.ceil((2 * window - elapsed) / 1000) + 1)
elseif current + n <= limit then
  local allowed = math.floor((limit - n - current) * window / math.max(previous, 1))
  wait = window - math.min(allowed, window) - elapsed
else
  local allowed = math.floor((limit - n) * window / current)
  wait = window - elapsed + window - math.min(allowed, window)
end
local remaining = math.floor((limit * window - weighted_previous - current * window) / window)
if remaining < 0 then
  remaining = 0
end
local reset = 0
if current > 0 then
  reset = 2 * window - elapsed
elseif previous > 0 then
  reset = window - elapsed
end
return {admitted, remaining, math.ceil(reset), math.ceil(wait)}
"#;

impl SharedLimits {
    /// Limits kept in the Redis server of `config`. Does not connect: the first decision does.
    pub(crate) fn new(config: &RedisConfig) -> SharedLimits {
        gauge!(telemetry::RATE_LIMIT_FALLBACK).set(0.0);
        SharedLimits {
            address: config.connection.addr.to_string(),
            connection_info: config.connection.clone(),
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            probe_interval: config.probe_interval,
            connection: RwLock::new(None),
            fallback: AtomicBool::new(false),
            first_attempt: OnceCell::new(),
            gcra: Script::new(GCRA_SCRIPT),
            sliding_log: Script::new(SLIDING_LOG_SCRIPT),
            sliding_counter: Script::new(SLIDING_COUNTER_SCRIPT),
        }
    }

    /// Whether decisions are currently local because Redis did not answer.
    pub(crate) fn is_fallback(&self) -> bool {
        self.fallback.load(Ordering::SeqCst)
    }

    /// How often a replica in fallback checks whether Redis answers again.
    pub(crate) fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// Asks Redis to decide on `events` for `tenant`. `None` means the decision must be made
    /// locally: Redis is in fallback, or did not answer this time (and now is in fallback).
    pub(crate) async fn decide(
        self: &Arc<Self>,
        tenant: &str,
        limit: RateLimit,
        events: u32,
    ) -> Option<Decision> {
        self.first_attempt
            .get_or_init(|| async {
                match self.connect().await {
                    Ok(connection) => {
                        self.set_connection(Some(connection));
                        tracing::info!(redis = %self.address, "shared rate limits in redis");
                    }
                    Err(error) => self.enter_fallback(&error),
                }
            })
            .await;
        if self.is_fallback() {
            return None;
        }
        let Some(mut connection) = self.current_connection() else {
            self.enter_fallback("no connection to redis");
            return None;
        };
        let window_us = u64::try_from(limit.window().as_micros().max(1)).unwrap_or(u64::MAX);
        let key = format!("{}:{}:{}", self.key_prefix, tenant, limit.algorithm.name());
        let mut invocation = match limit.algorithm {
            RateLimitAlgorithm::Gcra => {
                let mut invocation = self.gcra.key(&key);
                invocation.arg(limit.events_per_second);
                invocation
            }
            RateLimitAlgorithm::SlidingWindowLog => {
                let mut invocation = self.sliding_log.key(&key);
                invocation.key(format!("{key}:total")).arg(window_us);
                invocation
            }
            RateLimitAlgorithm::SlidingWindowCounter => {
                let mut invocation = self.sliding_counter.key(&key);
                invocation.arg(window_us);
                invocation
            }
        };
        invocation.arg(limit.burst_events).arg(events);
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok((admitted, remaining, reset_us, wait_us))) => Some(Decision {
                admitted: admitted == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset: micros(reset_us),
                wait: micros(wait_us),
            }),
            Ok(Err(error)) if !error.is_timeout() => {
                self.enter_fallback(&format!("the rate-limit script failed in redis: {error}"));
                None
            }
            Ok(Err(_)) | Err(_) => {
                self.enter_fallback(&format!(
                    "redis did not answer within {} ms",
                    self.timeout.as_millis()
                ));
                None
            }
        }
    }

    /// Switches to local decisions, once, and starts the probe that switches back.
    fn enter_fallback(self: &Arc<Self>, error: &str) {
        if self.fallback.swap(true, Ordering::SeqCst) {
            return;
        }
        self.set_connection(None);
        gauge!(telemetry::RATE_LIMIT_FALLBACK).set(1.0);
        tracing::warn!(
            redis = %self.address,
            error = %error,
            probe_interval_ms = self.probe_interval.as_millis() as u64,
            "shared rate limits unavailable; this replica now enforces its local share of each \
             quota (quota / replica_count) until redis answers again"
        );
        tokio::spawn(Arc::clone(self).probe_until_recovered());
    }

    /// Tries to reach Redis every `probe_interval` until it answers, then switches back.
    async fn probe_until_recovered(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.probe_interval).await;
            match self.connect().await {
                Ok(connection) => {
                    self.set_connection(Some(connection));
                    self.fallback.store(false, Ordering::SeqCst);
                    gauge!(telemetry::RATE_LIMIT_FALLBACK).set(0.0);
                    tracing::info!(
                        redis = %self.address,
                        "redis answers again; shared rate limits restored"
                    );
                    return;
                }
                Err(error) => {
                    tracing::debug!(redis = %self.address, error = %error, "redis still unavailable");
                }
            }
        }
    }

    /// A new connection that answered `PING`, all within `timeout`.
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let attempt = async {
            let client = Client::open(self.connection_info.clone())?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(self.timeout)
                .set_response_timeout(self.timeout);
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(format!("cannot reach redis: {error}")),
            Err(_) => Err(format!(
                "redis did not answer within {} ms",
                self.timeout.as_millis()
            )),
        }
    }

    fn current_connection(&self) -> Option<MultiplexedConnection> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_connection(&self, connection: Option<MultiplexedConnection>) {
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = connection;
    }
}

fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}
