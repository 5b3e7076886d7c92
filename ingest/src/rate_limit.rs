//! Per-tenant rate limits that count events, not requests.
//!
//! Guarantee: a request of `n` events is admitted only if the tenant's bucket holds `n` events
//! at once (GCRA from `governor`, sustained `events_per_second`, burst `burst_events`); an
//! admitted request takes all `n`, a refused one takes none. A request larger than the burst can
//! never be admitted and is told so instead of being asked to retry.
//!
//! Each tenant has its own quota, so this is a map of direct limiters keyed by tenant name
//! rather than governor's keyed limiter (which shares one quota across all keys). The map is
//! built once from the tenant file, so it never grows.

use std::collections::HashMap;
use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use schemas::tenant::TenantFile;

/// Rate limiters of every tenant in the tenant file.
#[derive(Debug)]
pub struct TenantLimits {
    limiters: HashMap<String, DefaultDirectRateLimiter>,
}

/// Why a batch of events was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The bucket does not hold enough events now; it will after `retry_after_s` seconds
    /// (rounded up, at least 1).
    Later { retry_after_s: u64 },
    /// The batch is larger than the burst: it will never be admitted whole.
    Never { burst_events: u32 },
    /// The tenant is not in the tenant file this limiter was built from.
    UnknownTenant,
}

impl TenantLimits {
    /// One limiter per tenant, with the tenant's `events_per_second` and `burst_events`
    /// (each at least 1, as the tenant file guarantees; a zero is raised to 1).
    pub fn new(tenants: &TenantFile) -> TenantLimits {
        let limiters = tenants
            .tenants()
            .iter()
            .map(|tenant| {
                let rate = NonZeroU32::new(tenant.events_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(tenant.burst_events).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_second(rate).allow_burst(burst);
                (tenant.name.clone(), RateLimiter::direct(quota))
            })
            .collect();
        TenantLimits { limiters }
    }

    /// Takes `events` from the tenant's bucket, or says when to retry. Zero events always pass.
    pub fn admit(&self, tenant: &str, events: usize) -> Result<(), Refusal> {
        let Some(limiter) = self.limiters.get(tenant) else {
            return Err(Refusal::UnknownTenant);
        };
        let Some(n) = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(Refusal::Later {
                    retry_after_s: retry_after_s.max(1),
                })
            }
            Err(capacity) => Err(Refusal::Never {
                burst_events: capacity.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events_per_second: u32, burst_events: u32) -> TenantLimits {
        let toml = format!(
            "[[tenant]]\nname = \"t\"\napi_keys = [\"t-key-0001\"]\n\
             events_per_second = {events_per_second}\nburst_events = {burst_events}\n"
        );
        TenantLimits::new(&TenantFile::from_toml(&toml).unwrap())
    }

    #[test]
    fn test_admit_counts_events_not_requests() {
        let limits = limits(1, 10);
        assert_eq!(limits.admit("t", 6), Ok(()));
        assert_eq!(limits.admit("t", 4), Ok(()));
        // The bucket is empty now: one more event must wait about a second.
        assert_eq!(
            limits.admit("t", 1),
            Err(Refusal::Later { retry_after_s: 1 })
        );
    }

    #[test]
    fn test_admit_rounds_retry_after_up_to_whole_seconds() {
        let limits = limits(1, 3);
        assert_eq!(limits.admit("t", 3), Ok(()));
        // Three events at one per second are about three seconds away.
        assert_eq!(
            limits.admit("t", 3),
            Err(Refusal::Later { retry_after_s: 3 })
        );
    }

    #[test]
    fn test_admit_refuses_batches_larger_than_the_burst_forever() {
        let limits = limits(1000, 5);
        assert_eq!(
            limits.admit("t", 6),
            Err(Refusal::Never { burst_events: 5 })
        );
        assert_eq!(limits.admit("t", 0), Ok(()));
        assert_eq!(limits.admit("other", 1), Err(Refusal::UnknownTenant));
    }
}
