//! Pacer: the one schedule all upstream connect attempts share. When the
//! backend restarts, every user's upstream drops at the same moment; per-user
//! backoff jitter spreads them over a fraction of a second at best, so
//! without a shared pace the backend would take one connect per user at once
//! (the reconnect storm). The pacer hands out start times at most `rate` per
//! second, after a small burst. It never holds a lock across an await and
//! never decides *whether* to connect, only *when*.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaced start times for connect attempts.
pub struct Pacer {
    // None: unlimited.
    interval: Option<Duration>,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// At most `per_second` starts per second sustained, with a burst of a
    /// tenth of a second's worth. `0` = unlimited.
    pub fn new(per_second: u32) -> Pacer {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        Pacer {
            interval,
            burst: Duration::from_millis(100),
            next: Mutex::new(None),
        }
    }

    /// Reserve the next start time: now if the pace allows, later otherwise.
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        let Some(interval) = self.interval else {
            return now;
        };
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        // Unused capacity only carries over up to the burst.
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let slot = next.map_or(floor, |n| n.max(floor));
        *next = Some(slot + interval);
        slot.max(now)
    }

    /// Wait for this attempt's turn.
    pub async fn wait(&self) {
        let at = self.reserve();
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_herd_is_spread_at_the_rate() {
        let p = Pacer::new(1000);
        let start = Instant::now();
        let slots: Vec<Instant> = (0..5000).map(|_| p.reserve()).collect();
        // The burst (100 ms worth) goes at once, the rest one per millisecond.
        let immediate = slots.iter().filter(|s| **s == start).count();
        assert_eq!(immediate, 101);
        let last = slots.last().copied().expect("slots");
        assert_eq!(last - start, Duration::from_millis(4899));
        // No one-second window holds more than rate + burst starts.
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .take_while(|t| **t < *s + Duration::from_secs(1))
                .count();
            assert!(in_window <= 1100, "{in_window} starts in one second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_connect_never_waits() {
        let p = Pacer::new(10);
        for _ in 0..5 {
            let now = Instant::now();
            assert_eq!(p.reserve(), now);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let p = Pacer::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| p.reserve() == now));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_until_the_slot() {
        let p = Pacer::new(10);
        let start = Instant::now();
        for _ in 0..3 {
            p.wait().await;
        }
        // Burst of 100 ms at 10/s is one extra start: t=0, t=0, t=100ms.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
