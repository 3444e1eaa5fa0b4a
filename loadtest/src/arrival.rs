//! When each CR (and each floor group) arrives: all at once (`burst`), or at a rate per member
//! cluster with fixed or seeded-Poisson spacing (`rate`). Open loop: a CR's clock starts at its
//! scheduled arrival, whether or not the harness could send it on time, and the floor replays exactly
//! the same times. Pure.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every CR at t = 0.
    Burst,
    /// `perSecond` CRs per second on each member cluster.
    Rate,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// Exactly 1/perSecond apart.
    Fixed,
    /// Exponential gaps with mean 1/perSecond, from `seed` (the same seed gives the same times).
    Poisson,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Arrival {
    pub kind: Kind,
    /// CRs per second per member cluster (rate only).
    pub per_second: f64,
    pub spacing: Spacing,
    pub seed: u64,
}

impl Arrival {
    pub fn burst() -> Arrival {
        Arrival {
            kind: Kind::Burst,
            per_second: 0.0,
            spacing: Spacing::Fixed,
            seed: 1,
        }
    }

    pub fn rate(per_second: f64, spacing: Spacing) -> Arrival {
        Arrival {
            kind: Kind::Rate,
            per_second,
            spacing,
            seed: 1,
        }
    }

    /// `Some(problem)` when the fields do not make a schedule.
    pub fn problem(&self) -> Option<String> {
        (self.kind == Kind::Rate && !(self.per_second.is_finite() && self.per_second > 0.0)).then(|| {
            format!(
                "arrival.perSecond: {} is not a positive number of CRs per second per cluster",
                self.per_second
            )
        })
    }

    /// The arrival offsets of `n` CRs on member cluster `cluster`, ascending. Each cluster has its
    /// own stream (seed + cluster), so clusters do not arrive in lock step.
    pub fn offsets(&self, n: usize, cluster: usize) -> Vec<Duration> {
        match (self.kind, self.spacing) {
            (Kind::Burst, _) => vec![Duration::ZERO; n],
            (Kind::Rate, Spacing::Fixed) => (0..n)
                .map(|i| Duration::from_secs_f64(i as f64 / self.per_second))
                .collect(),
            (Kind::Rate, Spacing::Poisson) => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(cluster as u64));
                let mut t = 0.0;
                (0..n)
                    .map(|i| {
                        if i > 0 {
                            // Inverse transform: 1 − U lies in (0, 1], so the log is finite.
                            let u: f64 = rng.random();
                            t += -(1.0 - u).ln() / self.per_second;
                        }
                        Duration::from_secs_f64(t)
                    })
                    .collect()
            }
        }
    }

    /// The schedule of a run of `seconds` at this rate: how many CRs arrive on each cluster.
    pub fn count_for(&self, seconds: f64) -> usize {
        ((self.per_second * seconds).round() as usize).max(1)
    }

    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Burst => "burst (all at once)".to_string(),
            Kind::Rate => format!(
                "{:.3} CRs/s per cluster, {}",
                self.per_second,
                match self.spacing {
                    Spacing::Fixed => "fixed spacing",
                    Spacing::Poisson => "Poisson spacing",
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_all_at_zero_and_fixed_is_evenly_spaced() {
        assert_eq!(Arrival::burst().offsets(3, 0), vec![Duration::ZERO; 3]);
        let f = Arrival::rate(4.0, Spacing::Fixed).offsets(3, 5);
        assert_eq!(
            f,
            vec![Duration::ZERO, Duration::from_millis(250), Duration::from_millis(500)]
        );
    }

    #[test]
    fn poisson_is_seeded_ascending_and_has_the_right_mean() {
        let a = Arrival::rate(10.0, Spacing::Poisson);
        let x = a.offsets(5000, 0);
        assert_eq!(x, a.offsets(5000, 0), "same seed, same times");
        assert_ne!(x, a.offsets(5000, 1), "each cluster its own stream");
        assert!(x.windows(2).all(|w| w[0] <= w[1]));
        // 4,999 gaps of mean 0.1 s: the span is 500 s within a few percent (sd ≈ 7 s).
        let span = x[4999].as_secs_f64();
        assert!((470.0..530.0).contains(&span), "span {span}");
        let other = Arrival { seed: 2, ..a.clone() }.offsets(5000, 0);
        assert_ne!(x, other);
    }

    #[test]
    fn a_rate_needs_a_positive_number() {
        let mut a = Arrival::rate(0.0, Spacing::Fixed);
        assert!(a.problem().is_some_and(|p| p.contains("arrival.perSecond")));
        a.per_second = f64::NAN;
        assert!(a.problem().is_some());
        a.per_second = 0.5;
        assert_eq!(a.problem(), None);
        assert_eq!(Arrival::burst().problem(), None);
        assert_eq!(a.count_for(60.0), 30);
    }
}
