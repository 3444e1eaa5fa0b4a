//! The per-cluster budget of API writes: a token bucket whose rate adapts to the API server (AIMD).
//!
//! - The rate starts at `--write-qps` and never goes below it: that is the floor, the rate the
//!   operator had before it adapted, so adapting can only add to it.
//! - It rises by a tenth of the span from floor to ceiling per one-second window in which the bucket ran dry (someone
//!   wanted more) while every write was answered quickly and without a 429, up to the ceiling
//!   `--write-burst` (also the bucket's depth).
//! - It halves (down to the floor) after a window with a 429 or a Retry-After, emptying the bucket,
//!   and drops by a fifth after a window whose mean write latency is over three times the lowest
//!   seen (and over 100 ms): the API server is queueing us. Below the floor, the work queue's
//!   honouring of Retry-After and its backoff take over.
//!
//! A reconcile takes one token per write and, when none is left, stops and is requeued for the
//! moment a token frees up: waiting for the limiter never holds a worker.
//!
//! Hand-written rather than governor (whose quota is fixed when it is built; rebuilding it to
//! change the rate would refill the bucket at every change) or an adaptive-concurrency crate
//! (those are HTTP middlewares that hold the request until a slot frees, which would hold a worker).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--write-qps and --write-burst must be at least 1 (got qps {qps}, burst {burst})")]
pub struct InvalidLimit {
    pub qps: u32,
    pub burst: u32,
}

/// How long the limiter watches the answers before it changes the rate.
const WINDOW: Duration = Duration::from_secs(1);
/// A window's mean latency this many times the lowest seen means the server is queueing us...
const LATENCY_RISE: f64 = 3.0;
/// ...unless it is still this fast (a rise from 5 to 20 ms is no overload).
const LATENCY_FLOOR: Duration = Duration::from_millis(100);
/// The lowest latency seen is forgotten slowly (5 % per window), so that a server that has become
/// slower for good is not taken for an overloaded one forever.
const BASELINE_DRIFT: f64 = 1.05;

/// What the API server's answer said about its load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Any answer that is not flow control (success or an ordinary error).
    Normal,
    /// 429, or a Retry-After: the server asks us to slow down.
    SlowDown,
}

pub struct WriteBudget {
    floor: f64,
    ceiling: f64,
    depth: f64,
    state: Mutex<State>,
}

struct State {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// The next free retry slot: keys that found the bucket empty line up behind each other, one
    /// token apart, instead of all retrying at the same instant and starving each other.
    next_slot: Instant,
    window: Window,
    /// The lowest mean latency of a window, slowly forgotten.
    baseline: Option<Duration>,
}

struct Window {
    started: Instant,
    writes: u32,
    latency: Duration,
    slow_down: bool,
    /// The bucket ran dry: demand was above the rate.
    ran_dry: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            started: now,
            writes: 0,
            latency: Duration::ZERO,
            slow_down: false,
            ran_dry: false,
        }
    }
}

impl WriteBudget {
    /// `qps` is the floor of the rate, `burst` its ceiling and the bucket's depth (a ceiling below
    /// the floor is the floor: a fixed rate with a shallow bucket).
    pub fn new(qps: u32, burst: u32) -> Result<Self, InvalidLimit> {
        if qps == 0 || burst == 0 {
            return Err(InvalidLimit { qps, burst });
        }
        let now = Instant::now();
        let floor = f64::from(qps);
        Ok(WriteBudget {
            floor,
            ceiling: floor.max(f64::from(burst)),
            depth: f64::from(burst),
            state: Mutex::new(State {
                rate: floor,
                tokens: f64::from(burst),
                refilled: now,
                next_slot: now,
                window: Window::new(now),
                baseline: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate, writes per second.
    pub fn rate(&self) -> f64 {
        self.state().rate
    }

    /// Takes one write token, or says how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state();
        s.refill(now, self.depth);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        s.window.ran_dry = true;
        Err(Duration::from_secs_f64((1.0 - s.tokens) / s.rate))
    }

    /// For a key that found the bucket empty (`wait` until the next token): how long it should wait
    /// so that every waiting key gets its own token.
    pub fn retry_slot(&self, wait: Duration) -> Duration {
        let now = Instant::now();
        let mut s = self.state();
        let period = Duration::from_secs_f64(1.0 / s.rate);
        let slot = s.next_slot.max(now + wait);
        s.next_slot = slot + period;
        slot - now
    }

    /// Records one write's answer and how long it took. Returns the new rate when the window that
    /// just closed changed it.
    pub fn observe(&self, latency: Duration, answer: Answer) -> Option<f64> {
        let now = Instant::now();
        let mut s = self.state();
        s.window.writes += 1;
        s.window.latency += latency;
        s.window.slow_down |= answer == Answer::SlowDown;
        if now.duration_since(s.window.started) < WINDOW {
            return None;
        }
        s.refill(now, self.depth);
        let before = s.rate;
        let window = std::mem::replace(&mut s.window, Window::new(now));
        let mean = window.latency / window.writes.max(1);
        let baseline = match s.baseline {
            Some(b) => b.mul_f64(BASELINE_DRIFT).min(mean),
            None => mean,
        };
        s.baseline = Some(baseline);
        if window.slow_down {
            s.rate = (s.rate / 2.0).max(self.floor);
            s.tokens = 0.0;
        } else if mean > LATENCY_FLOOR && mean.as_secs_f64() > baseline.as_secs_f64() * LATENCY_RISE {
            s.rate = (s.rate * 0.8).max(self.floor);
        } else if window.ran_dry {
            s.rate = (s.rate + ((self.ceiling - self.floor) / 10.0).max(1.0)).min(self.ceiling);
        }
        (s.rate != before).then_some(s.rate)
    }
}

impl State {
    fn refill(&mut self, now: Instant, depth: f64) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(depth);
        self.refilled = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Asks for `per_ms` tokens every millisecond for `ms` milliseconds; each granted write is
    /// answered after `latency` with `answer(ms)`. Returns the milliseconds at which writes were
    /// granted.
    async fn drive(
        budget: &WriteBudget,
        ms: u64,
        per_ms: u32,
        latency: Duration,
        answer: impl Fn(u64) -> Answer,
    ) -> Vec<u64> {
        let start = Instant::now();
        let mut granted = Vec::new();
        for _ in 0..ms {
            let at = Instant::now().duration_since(start).as_millis() as u64;
            for _ in 0..per_ms {
                if budget.try_take().is_ok() {
                    granted.push(at);
                    budget.observe(latency, answer(at));
                }
            }
            tokio::time::advance(MS).await;
        }
        granted
    }

    /// Any window of length T holds at most depth + ceiling·T writes.
    fn assert_within(granted: &[u64], depth: f64, ceiling: f64) {
        for (i, start) in granted.iter().enumerate() {
            for (j, end) in granted.iter().enumerate().skip(i) {
                let t = (end - start) as f64 / 1000.0;
                let count = (j - i + 1) as f64;
                assert!(count <= depth + ceiling * t + 1e-6, "{count} writes in {t} s");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_budget_never_exceeds_burst_plus_rate_in_any_window() {
        let budget = WriteBudget::new(50, 10).expect("valid limit");
        let granted = drive(&budget, 10_000, 5, MS, |_| Answer::Normal).await;
        assert_within(&granted, 10.0, 50.0);
        assert_eq!(budget.rate(), 50.0, "a ceiling below the floor is the floor");
        // And it is not simply refusing: over 10 s it grants close to the rate.
        assert!(granted.len() >= 500, "granted {}", granted.len());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_rises_to_the_ceiling_while_the_server_answers_fast() {
        let budget = WriteBudget::new(100, 200).expect("valid");
        let granted = drive(&budget, 15_000, 1, 5 * MS, |_| Answer::Normal).await;
        assert_eq!(budget.rate(), 200.0);
        assert_within(&granted, 200.0, 200.0);
        // The last 3 s ran at the ceiling, not the floor.
        let late = granted.iter().filter(|&&ms| ms >= 12_000).count();
        assert!(late >= 590, "{late} writes in the last 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_does_not_rise_without_demand() {
        let budget = WriteBudget::new(100, 200).expect("valid");
        // 50 writes a second never empty the bucket.
        for _ in 0..10_000 / 20 {
            budget.try_take().expect("a token");
            budget.observe(5 * MS, Answer::Normal);
            tokio::time::advance(20 * MS).await;
        }
        assert_eq!(budget.rate(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_down_halves_the_rate_down_to_the_floor_and_empties_the_bucket() {
        let budget = WriteBudget::new(20, 200).expect("valid");
        drive(&budget, 20_000, 1, 5 * MS, |_| Answer::Normal).await;
        assert_eq!(budget.rate(), 200.0);
        // A window with a 429, then another: 200 → 100 → 50.
        for _ in 0..2 {
            budget.observe(5 * MS, Answer::SlowDown);
            tokio::time::advance(WINDOW).await;
            budget.observe(5 * MS, Answer::Normal);
        }
        assert_eq!(budget.rate(), 50.0);
        assert!(
            budget.try_take().is_err(),
            "the bucket was emptied, not left full for another burst"
        );
        drive(&budget, 5_000, 1, 5 * MS, |_| Answer::SlowDown).await;
        assert_eq!(budget.rate(), 20.0, "never below the floor");
    }

    #[tokio::test(start_paused = true)]
    async fn rising_latency_lowers_the_rate_and_a_small_rise_does_not() {
        let budget = WriteBudget::new(100, 400).expect("valid");
        drive(&budget, 10_000, 1, 20 * MS, |_| Answer::Normal).await;
        let fast = budget.rate();
        assert!(fast > 150.0, "rose to {fast}");
        // 20 → 50 ms is slower but still fast: no change of course.
        drive(&budget, 2_000, 1, 50 * MS, |_| Answer::Normal).await;
        assert!(budget.rate() > fast, "a small rise kept it rising");
        // 20 → 800 ms: the server is queueing us.
        let before = budget.rate();
        drive(&budget, 3_000, 1, 800 * MS, |_| Answer::Normal).await;
        assert!(budget.rate() < before * 0.8, "{} after {before}", budget.rate());
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

    #[tokio::test(start_paused = true)]
    async fn says_how_long_to_wait() {
        let budget = WriteBudget::new(10, 1).expect("valid");
        assert!(budget.try_take().is_ok());
        let wait = budget.try_take().expect_err("bucket empty");
        assert_eq!(wait.as_millis(), 100);
        tokio::time::advance(wait).await;
        assert!(budget.try_take().is_ok());
    }

    #[test]
    fn zero_is_a_clear_error() {
        assert_eq!(WriteBudget::new(0, 5).err(), Some(InvalidLimit { qps: 0, burst: 5 }));
    }
}
