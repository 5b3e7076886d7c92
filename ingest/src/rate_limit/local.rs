//! The in-process algorithms: GCRA through `governor`, sliding window log and sliding window
//! counter, each over one tenant's [`RateLimit`] and an injected [`Clock`].
//!
//! Guarantee: arithmetic is exact, in whole nanoseconds of the clock. A refused batch's `wait` is
//! the earliest time after which the same batch is admitted if nothing else is admitted
//! meanwhile, and it is tight: one nanosecond earlier it would still be refused. Memory is bounded
//! per tenant: GCRA and the counter keep a few integers, the log keeps at most `burst_events`
//! entries (one per admitted request, each of at least one event).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use schemas::tenant::{RateLimit, RateLimitAlgorithm};

use super::Decision;
use super::clock::{Clock, GovernorClock};

/// One tenant's in-process limiter.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    limit: RateLimit,
    clock: Arc<dyn Clock>,
    algorithm: Algorithm,
}

#[derive(Debug)]
enum Algorithm {
    Gcra {
        limiter: Box<Gcra>,
        /// The time governor lets pass per event.
        per_event: Duration,
    },
    Log(Mutex<SlidingLog>),
    Counter(Mutex<SlidingCounter>),
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, GovernorClock, StateInformationMiddleware>;

/// Every admission in the current window, oldest first.
#[derive(Debug)]
struct SlidingLog {
    window_ns: u64,
    limit: u64,
    /// (admission time in ns of the clock, events admitted).
    entries: VecDeque<(u64, u32)>,
    /// Sum of the events in `entries`.
    total: u64,
}

/// Counts of the current and the previous fixed window.
#[derive(Debug)]
struct SlidingCounter {
    window_ns: u64,
    limit: u64,
    /// Number of the current fixed window: `now / window_ns`.
    index: u64,
    current: u64,
    previous: u64,
}

impl LocalLimiter {
    /// A limiter for `limit`, whose window algorithms start empty and whose bucket starts full.
    pub(crate) fn new(limit: RateLimit, clock: Arc<dyn Clock>) -> LocalLimiter {
        let burst = NonZeroU32::new(limit.burst_events).unwrap_or(NonZeroU32::MIN);
        let window_ns = u64::try_from(limit.window().as_nanos()).unwrap_or(u64::MAX);
        let algorithm = match limit.algorithm {
            RateLimitAlgorithm::Gcra => {
                let rate = NonZeroU32::new(limit.events_per_second).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_second(rate).allow_burst(burst);
                let limiter = RateLimiter::direct_with_clock(quota, GovernorClock(clock.clone()))
                    .with_middleware::<StateInformationMiddleware>();
                Algorithm::Gcra {
                    limiter: Box::new(limiter),
                    per_event: quota.replenish_interval(),
                }
            }
            RateLimitAlgorithm::SlidingWindowLog => Algorithm::Log(Mutex::new(SlidingLog {
                window_ns,
                limit: u64::from(burst.get()),
                entries: VecDeque::new(),
                total: 0,
            })),
            RateLimitAlgorithm::SlidingWindowCounter => {
                Algorithm::Counter(Mutex::new(SlidingCounter {
                    window_ns,
                    limit: u64::from(burst.get()),
                    index: 0,
                    current: 0,
                    previous: 0,
                }))
            }
        };
        LocalLimiter {
            limit,
            clock,
            algorithm,
        }
    }

    /// The limit this limiter enforces.
    pub(crate) fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Admits all `events` now or none. The caller refuses batches larger than the burst
    /// before asking; one that reaches here anyway is refused with a wait of one window.
    pub(crate) fn decide(&self, events: NonZeroU32) -> Decision {
        let now = u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX);
        match &self.algorithm {
            Algorithm::Gcra { limiter, per_event } => self.decide_gcra(limiter, *per_event, events),
            Algorithm::Log(log) => log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decide(now, u64::from(events.get())),
            Algorithm::Counter(counter) => counter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decide(now, u64::from(events.get())),
        }
    }

    fn decide_gcra(&self, limiter: &Gcra, per_event: Duration, events: NonZeroU32) -> Decision {
        let burst = u64::from(self.limit.burst_events);
        let n = u64::from(events.get());
        match limiter.check_n(events) {
            Ok(Ok(state)) => {
                let remaining = u64::from(state.remaining_burst_capacity());
                Decision::admitted(remaining, times(per_event, burst - remaining))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                // The first k events of the batch would fit now when k * interval covers all
                // but `wait` of the batch's n * interval.
                let short = ceil_div(wait.as_nanos(), per_event.as_nanos());
                let remaining = n.saturating_sub(u64::try_from(short).unwrap_or(u64::MAX));
                Decision {
                    admitted: false,
                    remaining,
                    reset: wait.saturating_add(times(per_event, burst.saturating_sub(n))),
                    wait,
                }
            }
            Err(_) => Decision::refused_for(self.limit.window()),
        }
    }
}

impl SlidingLog {
    fn decide(&mut self, now: u64, events: u64) -> Decision {
        while let Some(&(at, count)) = self.entries.front() {
            if at.saturating_add(self.window_ns) > now {
                break;
            }
            self.entries.pop_front();
            self.total -= u64::from(count);
        }
        if events > self.limit {
            return Decision::refused_for(Duration::from_nanos(self.window_ns));
        }
        if self.total + events <= self.limit {
            self.entries
                .push_back((now, u32::try_from(events).unwrap_or(u32::MAX)));
            self.total += events;
            return Decision::admitted(
                self.limit - self.total,
                Duration::from_nanos(self.window_ns),
            );
        }
        // Refused: the batch fits once enough of the oldest admissions have left the window.
        let needed = self.total + events - self.limit;
        let mut freed = 0;
        let mut wait = 0;
        for &(at, count) in &self.entries {
            freed += u64::from(count);
            if freed >= needed {
                wait = at.saturating_add(self.window_ns) - now;
                break;
            }
        }
        let newest = self.entries.back().map_or(now, |&(at, _)| at);
        Decision {
            admitted: false,
            remaining: self.limit - self.total,
            reset: Duration::from_nanos(newest.saturating_add(self.window_ns) - now),
            wait: Duration::from_nanos(wait),
        }
    }
}

impl SlidingCounter {
    fn decide(&mut self, now: u64, events: u64) -> Decision {
        let index = now / self.window_ns;
        if index != self.index {
            self.previous = if index == self.index + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.index = index;
        }
        if events > self.limit {
            return Decision::refused_for(Duration::from_nanos(self.window_ns));
        }
        // Everything is scaled by the window so that the weighting stays in integers:
        // estimate * window = previous * (window - elapsed) + current * window.
        let window = u128::from(self.window_ns);
        let elapsed = u128::from(now - index * self.window_ns);
        let weighted_previous = u128::from(self.previous) * (window - elapsed);
        let capacity = u128::from(self.limit) * window;
        let admitted = weighted_previous + u128::from(self.current + events) * window <= capacity;
        let wait = if admitted {
            self.current += events;
            0
        } else {
            self.wait(events, window, elapsed)
        };
        let used = weighted_previous + u128::from(self.current) * window;
        let remaining = u64::try_from(capacity.saturating_sub(used) / window).unwrap_or(0);
        let reset = if self.current > 0 {
            2 * window - elapsed
        } else if self.previous > 0 {
            window - elapsed
        } else {
            0
        };
        Decision {
            admitted,
            remaining,
            reset: nanos(reset),
            wait: nanos(wait),
        }
    }

    /// Time until `events` fit, if nothing else is admitted meanwhile.
    fn wait(&self, events: u64, window: u128, elapsed: u128) -> u128 {
        let limit = u128::from(self.limit);
        let events = u128::from(events);
        let current = u128::from(self.current);
        if current + events <= limit {
            // Within this window, as the previous window's weight shrinks:
            // previous * (window - e) <= (limit - events - current) * window.
            let room = limit - events - current;
            let allowed = room * window / u128::from(self.previous.max(1));
            let at = window - allowed.min(window);
            at - elapsed
        } else {
            // In the next window, as this window's count (then the previous one) shrinks:
            // current * (window - e) <= (limit - events) * window.
            let allowed = (limit - events) * window / current;
            let at = window - allowed.min(window);
            window - elapsed + at
        }
    }
}

impl Decision {
    fn admitted(remaining: u64, reset: Duration) -> Decision {
        Decision {
            admitted: true,
            remaining,
            reset,
            wait: Duration::ZERO,
        }
    }

    fn refused_for(wait: Duration) -> Decision {
        Decision {
            admitted: false,
            remaining: 0,
            reset: wait,
            wait,
        }
    }
}

/// `duration * count`, saturating.
fn times(duration: Duration, count: u64) -> Duration {
    nanos(duration.as_nanos() * u128::from(count))
}

fn ceil_div(numerator: u128, denominator: u128) -> u128 {
    numerator.div_ceil(denominator.max(1))
}

fn nanos(value: u128) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rate_limit::clock::FakeClock;

    const MS: Duration = Duration::from_millis(1);
    const NS: Duration = Duration::from_nanos(1);

    fn limiter(
        algorithm: RateLimitAlgorithm,
        events_per_second: u32,
        burst_events: u32,
    ) -> (LocalLimiter, FakeClock) {
        let clock = FakeClock::default();
        let limit = RateLimit {
            events_per_second,
            burst_events,
            algorithm,
        };
        (LocalLimiter::new(limit, Arc::new(clock.clone())), clock)
    }

    fn events(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn test_gcra_refills_one_event_per_interval() {
        let (limiter, clock) = limiter(RateLimitAlgorithm::Gcra, 1, 10);
        let first = limiter.decide(events(6));
        assert!(first.admitted);
        assert_eq!(first.remaining, 4);
        assert!(limiter.decide(events(4)).admitted);
        let refused = limiter.decide(events(1));
        assert!(!refused.admitted);
        assert_eq!(refused.wait, Duration::from_secs(1));
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset, Duration::from_secs(10));

        clock.advance(Duration::from_secs(1) - NS);
        let still = limiter.decide(events(1));
        assert!(!still.admitted);
        assert_eq!(still.wait, NS);
        clock.advance(NS);
        assert!(limiter.decide(events(1)).admitted);

        // Three events at one per second are three seconds away, and two of them are not one.
        let refused = limiter.decide(events(3));
        assert_eq!(refused.wait, Duration::from_secs(3));
        clock.advance(Duration::from_secs(2));
        let partial = limiter.decide(events(3));
        assert_eq!(partial.wait, Duration::from_secs(1));
        assert_eq!(partial.remaining, 2);
    }

    #[test]
    fn test_sliding_log_frees_events_as_their_admissions_leave_the_window() {
        // Window: 4 / 2 = 2 s holding at most 4 events.
        let (limiter, clock) = limiter(RateLimitAlgorithm::SlidingWindowLog, 2, 4);
        assert!(limiter.decide(events(3)).admitted);
        clock.advance(500 * MS);
        let second = limiter.decide(events(1));
        assert!(second.admitted);
        assert_eq!(second.remaining, 0);
        clock.advance(500 * MS);
        // Two more need the first admission (3 events, at 0 s) to leave: at 2 s.
        let refused = limiter.decide(events(2));
        assert!(!refused.admitted);
        assert_eq!(refused.wait, Duration::from_secs(1));
        assert_eq!(refused.reset, Duration::from_millis(1500));
        clock.advance(Duration::from_secs(1) - NS);
        assert_eq!(limiter.decide(events(2)).wait, NS);
        clock.advance(NS);
        let admitted = limiter.decide(events(2));
        assert!(admitted.admitted);
        // The event of 0.5 s and the two of now are in the window.
        assert_eq!(admitted.remaining, 1);
    }

    #[test]
    fn test_sliding_counter_weights_the_previous_window() {
        // Window: 10 / 10 = 1 s holding at most 10 events.
        let (limiter, clock) = limiter(RateLimitAlgorithm::SlidingWindowCounter, 10, 10);
        assert!(limiter.decide(events(10)).admitted);
        clock.advance(Duration::from_secs(1));
        // The previous window still weighs 10 * (1 - 0) = 10: one event waits until its
        // weight is 9, a tenth of the window in.
        let refused = limiter.decide(events(1));
        assert!(!refused.admitted);
        assert_eq!(refused.wait, 100 * MS);
        clock.advance(100 * MS - NS);
        assert!(!limiter.decide(events(1)).admitted);
        clock.advance(NS);
        let admitted = limiter.decide(events(1));
        assert!(admitted.admitted);
        assert_eq!(admitted.remaining, 0);
    }

    #[test]
    fn test_sliding_counter_waits_into_the_next_window_when_the_current_is_full() {
        let (limiter, clock) = limiter(RateLimitAlgorithm::SlidingWindowCounter, 10, 10);
        clock.advance(500 * MS);
        assert!(limiter.decide(events(8)).admitted);
        clock.advance(100 * MS);
        // 8 + 5 > 10 in this window; in the next one 8 * (1 - e) + 5 <= 10 from e = 0.375.
        let refused = limiter.decide(events(5));
        assert_eq!(refused.wait, 775 * MS);
        clock.advance(775 * MS - NS);
        assert!(!limiter.decide(events(5)).admitted);
        clock.advance(NS);
        assert!(limiter.decide(events(5)).admitted);
    }

    /// One step of a random workload: wait, then ask for a batch.
    fn workload() -> impl Strategy<Value = Vec<(u64, u32)>> {
        prop::collection::vec((0u64..400_000_000, 1u32..=6), 1..120)
    }

    fn algorithm() -> impl Strategy<Value = RateLimitAlgorithm> {
        prop_oneof![
            Just(RateLimitAlgorithm::Gcra),
            Just(RateLimitAlgorithm::SlidingWindowLog),
            Just(RateLimitAlgorithm::SlidingWindowCounter),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        /// A refused batch is admitted exactly `wait` later, and not a nanosecond sooner.
        #[test]
        fn test_wait_is_exact_and_tight(
            algorithm in algorithm(),
            rate in 1u32..20,
            burst in 6u32..30,
            steps in workload(),
        ) {
            let (limiter, clock) = limiter(algorithm, rate, burst);
            for (pause_ns, n) in steps {
                clock.advance(Duration::from_nanos(pause_ns));
                let decision = limiter.decide(events(n));
                if decision.admitted {
                    prop_assert_eq!(decision.wait, Duration::ZERO);
                    continue;
                }
                prop_assert!(decision.wait > Duration::ZERO);
                clock.advance(decision.wait - NS);
                let early = limiter.decide(events(n));
                prop_assert!(!early.admitted, "admitted 1 ns before the wait ended");
                prop_assert_eq!(early.wait, NS);
                clock.advance(NS);
                prop_assert!(limiter.decide(events(n)).admitted, "refused after the wait");
            }
        }

        /// Whatever the traffic, admissions stay within each algorithm's bound.
        #[test]
        fn test_admissions_stay_within_the_bound(
            algorithm in algorithm(),
            rate in 1u32..20,
            burst in 6u32..30,
            steps in workload(),
        ) {
            let (limiter, clock) = limiter(algorithm, rate, burst);
            let mut admitted: Vec<(Duration, u64)> = Vec::new();
            for (pause_ns, n) in steps {
                clock.advance(Duration::from_nanos(pause_ns));
                if limiter.decide(events(n)).admitted {
                    admitted.push((clock.now(), u64::from(n)));
                }
            }
            let window = limiter.limit().window();
            let burst = u64::from(burst);
            for (start, _) in &admitted {
                // Events admitted in [start, start + span) for spans of one window and one second.
                for span in [window, Duration::from_secs(1)] {
                    let sum: u64 = admitted
                        .iter()
                        .filter(|(at, _)| *at >= *start && *at < *start + span)
                        .map(|(_, n)| n)
                        .sum();
                    let rate_part = (u128::from(rate) * span.as_nanos()).div_ceil(1_000_000_000);
                    let bound = match algorithm {
                        RateLimitAlgorithm::Gcra | RateLimitAlgorithm::SlidingWindowLog => {
                            burst + u64::try_from(rate_part).unwrap()
                        }
                        RateLimitAlgorithm::SlidingWindowCounter => {
                            2 * burst + u64::try_from(rate_part).unwrap()
                        }
                    };
                    prop_assert!(sum <= bound, "{sum} > {bound} in {span:?} from {start:?}");
                    if span == window && algorithm == RateLimitAlgorithm::SlidingWindowLog {
                        prop_assert!(sum <= burst, "log: {sum} > {burst} in one window");
                    }
                }
            }
        }
    }

    #[test]
    fn test_sliding_log_memory_is_bounded_by_the_burst() {
        let (limiter, clock) = limiter(RateLimitAlgorithm::SlidingWindowLog, 1_000, 50);
        for _ in 0..10_000 {
            limiter.decide(events(1));
            clock.advance(Duration::from_micros(100));
        }
        let Algorithm::Log(log) = &limiter.algorithm else {
            unreachable!("built as a log")
        };
        let log = log.lock().unwrap();
        assert!(log.entries.len() <= 50, "{}", log.entries.len());
        assert_eq!(
            log.total,
            log.entries.iter().map(|&(_, n)| u64::from(n)).sum::<u64>()
        );
    }
}
