//! The per-cluster budget of API writes (governor's GCRA token bucket: `qps` per second, `burst` at once).
//! A reconcile takes one token per write and, when none is left, stops and is requeued for the moment
//! a token frees up: waiting for the limiter never holds a worker.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--write-qps and --write-burst must be at least 1 (got qps {qps}, burst {burst})")]
pub struct InvalidLimit {
    pub qps: u32,
    pub burst: u32,
}

pub struct WriteBudget<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// One token's worth of time.
    period: Duration,
    /// The next free retry slot: keys that found the bucket empty line up behind each other, one
    /// token apart, instead of all retrying at the same instant and starving each other.
    next_slot: std::sync::Mutex<tokio::time::Instant>,
}

impl WriteBudget<DefaultClock> {
    pub fn new(qps: u32, burst: u32) -> Result<Self, InvalidLimit> {
        Self::with_clock(qps, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> WriteBudget<C> {
    pub fn with_clock(qps: u32, burst: u32, clock: C) -> Result<Self, InvalidLimit> {
        let (Some(q), Some(b)) = (NonZeroU32::new(qps), NonZeroU32::new(burst)) else {
            return Err(InvalidLimit { qps, burst });
        };
        let quota = Quota::per_second(q).allow_burst(b);
        Ok(WriteBudget {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            period: Duration::from_secs_f64(1.0 / f64::from(qps)),
            next_slot: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// For a key that found the bucket empty (`wait` until the next token): how long it should wait
    /// so that every waiting key gets its own token.
    pub fn retry_slot(&self, wait: Duration) -> Duration {
        let now = tokio::time::Instant::now();
        let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (*next).max(now + wait);
        *next = slot + self.period;
        slot - now
    }

    /// Takes one write token, or says how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn never_exceeds_burst_plus_rate_in_any_window() {
        let clock = FakeRelativeClock::default();
        let (qps, burst) = (50u32, 10u32);
        let budget = WriteBudget::with_clock(qps, burst, clock.clone()).expect("valid limit");
        // Hammer it every millisecond for 10 s of fake time, recording when writes were allowed.
        let mut granted = Vec::new();
        for ms in 0..10_000u64 {
            for _ in 0..5 {
                if budget.try_take().is_ok() {
                    granted.push(ms);
                }
            }
            clock.advance(Duration::from_millis(1));
        }
        // Any window of length T holds at most burst + qps·T writes.
        for (i, start) in granted.iter().enumerate() {
            for (j, end) in granted.iter().enumerate().skip(i) {
                let t = (end - start) as f64 / 1000.0;
                let count = (j - i + 1) as f64;
                assert!(
                    count <= f64::from(burst) + f64::from(qps) * t + 1e-9,
                    "{count} writes in {t} s"
                );
            }
        }
        // And it is not simply refusing: over 10 s it grants close to the rate.
        assert!(granted.len() >= 500, "granted {}", granted.len());
    }

    #[test]
    fn says_how_long_to_wait() {
        let clock = FakeRelativeClock::default();
        let budget = WriteBudget::with_clock(10, 1, clock.clone()).expect("valid");
        assert!(budget.try_take().is_ok());
        let wait = budget.try_take().expect_err("bucket empty");
        assert_eq!(wait, Duration::from_millis(100));
        clock.advance(wait);
        assert!(budget.try_take().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_keys_get_distinct_slots_one_token_apart() {
        let budget = WriteBudget::new(50, 1).expect("valid");
        let slots: Vec<u128> = (0..5)
            .map(|_| budget.retry_slot(Duration::from_millis(20)).as_millis())
            .collect();
        assert_eq!(slots, vec![20, 40, 60, 80, 100]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            budget.retry_slot(Duration::from_millis(20)).as_millis(),
            20,
            "the line empties with time"
        );
    }

    #[test]
    fn zero_is_a_clear_error() {
        assert_eq!(WriteBudget::new(0, 5).err(), Some(InvalidLimit { qps: 0, burst: 5 }));
    }
}
