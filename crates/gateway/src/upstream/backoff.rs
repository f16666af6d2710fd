//! Reconnect schedule of one upstream task. Pure arithmetic over a random
//! source: it never sleeps and never knows why a connection ended.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Reconnect delays: exponential from `min` to `max` (backon), with full
/// jitter on top, never below `min`. Full jitter (uniform over the whole
/// window) spreads a herd of users that lost the backend at the same moment;
/// backon's own jitter only adds up to the current delay, which can exceed the
/// cap, so the jitter is applied here.
pub struct Backoff {
    builder: ExponentialBuilder,
    iter: ExponentialBackoff,
    min: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A schedule from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, fastrand::Rng::new())
    }

    /// Same with a given random source (tests pin the seed).
    pub fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            iter: builder.build(),
            builder,
            min,
            max: max.max(min),
            rng,
        }
    }

    /// Upper bound of the next delay (before jitter).
    pub fn next_ceiling(&mut self) -> Duration {
        self.iter
            .next()
            .unwrap_or(self.max)
            .clamp(self.min, self.max)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let spread = (ceiling - self.min).as_millis() as u64;
        self.min + Duration::from_millis(self.rng.u64(0..=spread))
    }

    /// Start again from `min` (after a healthy connection).
    pub fn reset(&mut self) {
        self.iter = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_capped_and_resets() {
        let min = Duration::from_millis(250);
        let max = Duration::from_secs(30);
        let mut b = Backoff::with_rng(min, max, fastrand::Rng::with_seed(7));
        let ceilings: Vec<Duration> = (0..10).map(|_| b.next_ceiling()).collect();
        assert_eq!(ceilings[0], min);
        assert_eq!(ceilings[1], min * 2);
        assert_eq!(ceilings[3], min * 8);
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*ceilings.last().unwrap_or(&Duration::ZERO), max);
        b.reset();
        assert_eq!(b.next_ceiling(), min);

        // Delays stay inside [min, ceiling] and are not all equal.
        let mut b = Backoff::with_rng(min, max, fastrand::Rng::with_seed(11));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter missing: {seen:?}");
    }
}
