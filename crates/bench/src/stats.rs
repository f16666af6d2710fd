//! Stats: what the tabs of one run saw — delivered triggers, resyncs,
//! pass-through mismatches, bytes read, connection counts and a latency
//! histogram shared by every tab task.
//!
//! Owns counting only. It must never block, allocate per event or take a lock
//! on the delivery path: thousands of tab tasks update it concurrently.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Values below this many microseconds get one bucket each.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`] (≈1.6% resolution).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above [`LINEAR`]: up to 2^47 µs, far past any run.
const OCTAVES: u64 = 40;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB) as usize;

/// A lock-free log-linear histogram of microsecond values.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // ≥ 7
    let sub = (v >> (exp - u64::from(SUB_BITS))) & (SUB - 1);
    let idx = LINEAR + (exp - 7) * SUB + sub;
    idx.min(BUCKETS as u64 - 1) as usize
}

/// Smallest value that falls in bucket `i`.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 7;
    let sub = (i - LINEAR) % SUB;
    (1u64 << exp) + (sub << (exp - u64::from(SUB_BITS)))
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    /// Count one value (microseconds).
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Forget everything recorded so far.
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), in microseconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value_of(i));
            }
        }
        Some(value_of(BUCKETS - 1))
    }
}

/// Everything the tabs of a run report, shared by all tab tasks.
#[derive(Default)]
pub struct Recorder {
    /// Triggers with a timestamp that reached a tab.
    pub delivered: AtomicU64,
    /// `resync` events received.
    pub resyncs: AtomicU64,
    /// Events whose data was not a timestamp (counted, not timed).
    pub other: AtomicU64,
    /// Pass-through events that did not arrive byte for byte as sent (wrong
    /// name, wrong data, another user's); counted, not timed or delivered.
    pub mismatched: AtomicU64,
    /// Bytes of SSE stream (body) the tabs read, framing included.
    pub wire_bytes: AtomicU64,
    /// Tabs whose stream is open right now.
    pub open: AtomicUsize,
    /// Successful stream opens, including reconnects.
    pub opened: AtomicU64,
    /// Opens that failed (connect error or non-200).
    pub failed: AtomicU64,
    /// Streams that ended while the run still wanted them.
    pub dropped: AtomicU64,
    /// Storm bookkeeping: the current mark and how many tabs saw a `resync`
    /// since it was raised.
    pub resync_mark: AtomicU64,
    /// Tabs that saw a `resync` since [`Recorder::resync_mark`] was raised.
    pub resynced_tabs: AtomicUsize,
    /// Outage bookkeeping: a tab counts as receiving again once it gets a
    /// trigger stamped at or after this (µs since the epoch; 0 = off).
    pub arrival_mark: AtomicU64,
    /// When the backend came back (µs since the epoch), for the per-tab
    /// recovery times.
    pub back_at_us: AtomicU64,
    /// Tabs that got a trigger stamped at or after [`Recorder::arrival_mark`].
    pub arrived_tabs: AtomicUsize,
    /// Per-tab time from [`Recorder::back_at_us`] to that trigger, µs.
    pub recovery: Histogram,
    /// `upstream-down` events received.
    pub upstream_down: AtomicU64,
    /// `upstream-up` events received.
    pub upstream_up: AtomicU64,
    /// Body chunks the tabs read (one per hyper data frame: at most the
    /// client's 4 KiB read buffer each).
    pub chunks: AtomicU64,
    /// Every SSE event dispatched to the tabs, whatever its name or data.
    pub events: AtomicU64,
    /// Events whose data was the tab's sentinel (see `TabSpec::sentinel`).
    pub sentinels: AtomicU64,
    /// Latency upstream emit → tab receive, µs.
    pub latency: Histogram,
    /// Why opens failed, by reason (first words of the error); rare path.
    pub failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Recorder {
    /// Zero the per-step counters (delivery and latency).
    pub fn reset_delivery(&self) {
        self.delivered.store(0, Ordering::SeqCst);
        self.other.store(0, Ordering::SeqCst);
        self.mismatched.store(0, Ordering::SeqCst);
        self.wire_bytes.store(0, Ordering::SeqCst);
        self.resyncs.store(0, Ordering::SeqCst);
        self.chunks.store(0, Ordering::SeqCst);
        self.events.store(0, Ordering::SeqCst);
        self.latency.reset();
    }

    /// Count one failed open by its reason.
    pub fn fail(&self, why: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let key: String = why.chars().take(60).collect();
        let mut m = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() < 32 || m.contains_key(&key) {
            *m.entry(key).or_default() += 1;
        }
    }

    /// Failure reasons so far, as JSON.
    pub fn failures_json(&self) -> serde_json::Value {
        let m = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!(*m)
    }

    /// Raise the storm mark: every tab counts its next `resync` once.
    pub fn arm_resync_mark(&self) -> u64 {
        self.resynced_tabs.store(0, Ordering::SeqCst);
        self.resync_mark.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Start counting tabs that get a trigger stamped at or after `ts_us`.
    pub fn arm_arrival_mark(&self, ts_us: u64) {
        self.arrived_tabs.store(0, Ordering::SeqCst);
        self.recovery.reset();
        self.arrival_mark.store(ts_us, Ordering::SeqCst);
    }
}

/// Timestamps below this (µs since the epoch, ~2001) are no emit stamps of
/// ours: `upstream-down`'s `1`, say, must not be timed as a trigger.
pub const MIN_STAMP_US: u64 = 1_000_000_000_000_000;

/// Microseconds since the Unix epoch: the clock every system's timestamps use
/// (all processes run on this one machine).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [
            0u64, 1, 5, 127, 128, 129, 200, 1000, 5000, 123_456, 10_000_000,
        ] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let lo = value_of(b);
            assert!(lo <= v, "{v} → {lo}");
            // 64 sub-buckets per octave → under 1/64 relative error.
            assert!(v - lo <= v / 64 + 1, "{v} → {lo}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5).unwrap_or(0);
        assert!((490..=500).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap_or(0);
        assert!((975..=990).contains(&p99), "{p99}");
        h.reset();
        assert_eq!(h.count(), 0);
    }
}
