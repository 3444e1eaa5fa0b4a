//! Per-key exponential backoff with jitter: the delay before retrying a key that failed `failures`
//! times in a row. Pure; the random jitter is an input so tests are exact.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Fraction of the delay that is randomised (0.2 = ±20 %), so that keys failing together do not
    /// retry together.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        // A 15 s cap bounds how long keys sit out after a member cluster recovers from an outage.
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(15),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// `unit` is a random number in [0, 1).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        let nominal = (self.base.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((nominal * factor).min(self.max.as_secs_f64()))
    }
}

/// A small xorshift generator for jitter: no need for cryptographic randomness here.
#[derive(Debug)]
pub struct Jitter(std::sync::atomic::AtomicU64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(std::sync::atomic::AtomicU64::new(seed | 1))
    }

    pub fn unit(&self) -> f64 {
        use std::sync::atomic::Ordering;
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=8).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(0, 0.5), Duration::ZERO);
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.2,
        };
        let j = Jitter::new(42);
        for _ in 0..1000 {
            let d = b.delay(3, j.unit()).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
        assert!((b.delay(3, 0.0).as_secs_f64() - 3.2).abs() < 1e-9);
        assert!((b.delay(3, 1.0).as_secs_f64() - 4.8).abs() < 1e-9);
    }
}
