//! Limit: how fast one client address may open `/events` streams. Owns a
//! token bucket per address; it never blocks, never sleeps and never looks at
//! who the user is (it runs before auth, so a reconnect loop cannot hammer
//! the backend's identity endpoint either).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use tokio::time::Instant;

use crate::body::{self, Body};

/// Addresses remembered before idle ones are forgotten.
const PRUNE_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-address token buckets: `rate` connects per second sustained, bursts
/// up to twice that.
pub struct ConnectLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl ConnectLimiter {
    /// `per_second == 0` means unlimited.
    pub fn new(per_second: u32) -> ConnectLimiter {
        ConnectLimiter {
            rate: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one connect for `ip`. `Err(wait)` says how long until the next
    /// one would be allowed (for `Retry-After`).
    ///
    /// Loopback peers are not limited: a loopback address names a proxy or a
    /// tool on this host, not a browser, and throttling it would throttle
    /// every client behind it at once.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rate <= 0.0 || ip.is_loopback() {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PRUNE_AT && !map.contains_key(&ip) {
            // A bucket that has refilled completely carries no information.
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            map.retain(|_, b| now.duration_since(b.last) < full_after);
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Addresses currently remembered.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().map_or(0, |m| m.len())
    }
}

/// The `429` a client over its rate gets: `msg`, and `Retry-After` in whole
/// seconds (at least 1) until `wait` has passed.
pub fn too_many(wait: Duration, msg: &str) -> Response<Body> {
    let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, msg);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_sustained_rate() {
        let l = ConnectLimiter::new(5);
        for _ in 0..10 {
            assert!(l.admit(ip(1)).is_ok());
        }
        let wait = l.admit(ip(1)).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(200));
        // Other addresses are independent.
        assert!(l.admit(ip(2)).is_ok());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(l.admit(ip(1)).is_ok());
        assert!(l.admit(ip(1)).is_err());
        // A full second refills five.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            assert!(l.admit(ip(1)).is_ok());
        }
        assert!(l.admit(ip(1)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn loopback_is_not_limited() {
        let l = ConnectLimiter::new(1);
        for _ in 0..100 {
            assert!(l.admit(IpAddr::from([127, 0, 0, 1])).is_ok());
            assert!(l.admit("::1".parse().expect("ip")).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let l = ConnectLimiter::new(0);
        for _ in 0..10_000 {
            assert!(l.admit(ip(1)).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_many_addresses() {
        let l = ConnectLimiter::new(1);
        for i in 0..20_000u32 {
            let [a, b, c, d] = i.to_be_bytes();
            let _ = l.admit(IpAddr::from([10, a | b, c, d]));
            if i % 1000 == 999 {
                tokio::time::advance(Duration::from_secs(3)).await;
            }
        }
        assert!(l.tracked() <= PRUNE_AT + 1000, "{}", l.tracked());
    }
}
