//! Metrics: the Prometheus registry of one gateway and the named events the
//! data path reports into it (counters, gauges, histograms). Owns the metric
//! values and their text rendering; it never decides anything on the data
//! path, never blocks (every record is an atomic add or a short read lock)
//! and never takes a label value from input without bounding it — a label
//! set an attacker can grow is a memory leak.
//!
//! The handle is passed down the data path (server → auth, upstream, tab);
//! parts never call back up through it. Values the parts already keep (tabs
//! and channels in the hub, watermark counts) are sampled at scrape time
//! instead of being counted twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, `name="value"`.
type Label = [(&'static str, String); 1];

/// Most distinct values a name-like label (upstream event, trigger name)
/// takes before further new values are folded into `other`.
const MAX_NAMES: usize = 64;

/// Why an upstream connection attempt or connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The backend refused the credentials (401/403).
    Unauthorized,
    /// Another non-2xx status.
    Status,
    /// 2xx but not an event stream.
    ContentType,
    /// No response head in time.
    Timeout,
    /// Connect or TLS failure.
    Transport,
    /// The stream ended (clean EOF).
    Eof,
    /// The stream sent nothing for the idle timeout.
    Idle,
    /// Reading the stream failed.
    ReadError,
}

impl UpstreamFailure {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Unauthorized => "unauthorized",
            UpstreamFailure::Status => "status",
            UpstreamFailure::ContentType => "content_type",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Transport => "transport",
            UpstreamFailure::Eof => "eof",
            UpstreamFailure::Idle => "idle",
            UpstreamFailure::ReadError => "read_error",
        }
    }
}

/// Why a tab was sent a `resync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncCause {
    /// The upstream said so, or a reconnect could not resume, or an upstream
    /// event had to be skipped. Counted once per channel, not per tab.
    Upstream,
    /// The tab's `Last-Event-ID` fell out of the replay ring.
    RingMiss,
    /// The tab fell behind the broadcast buffer.
    Lag,
    /// The tab's `Last-Event-ID` names another epoch (restart, other
    /// instance, channel recreated).
    Epoch,
}

impl ResyncCause {
    fn as_str(self) -> &'static str {
        match self {
            ResyncCause::Upstream => "upstream",
            ResyncCause::RingMiss => "ring_miss",
            ResyncCause::Lag => "lag",
            ResyncCause::Epoch => "epoch",
        }
    }
}

/// Outcome of an identity lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// Identified.
    Ok,
    /// No or refused cookie.
    Unauthenticated,
    /// The backend could not be asked.
    Unavailable,
}

impl AuthResult {
    fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Unauthenticated => "unauthenticated",
            AuthResult::Unavailable => "unavailable",
        }
    }
}

/// Values owned elsewhere, read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Tab streams open.
    pub tabs: usize,
    /// User channels (including those in grace).
    pub channels: usize,
    /// Channels with no tab, waiting out their grace.
    pub channels_in_grace: usize,
    /// Read watermarks advanced by ssemux.
    pub watermark_advances: u64,
    /// Watermark advances that failed.
    pub watermark_failures: u64,
}

/// Shared handle to one gateway's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

struct Inner {
    registry: Registry,
    tabs_open: Gauge,
    channels_open: Gauge,
    channels_in_grace: Gauge,
    upstream_open: Gauge,
    upstream_connects: Counter,
    upstream_reconnects: Counter,
    upstream_failures: Family<Label, Counter>,
    upstream_events: Family<Label, Counter>,
    triggers_emitted: Family<Label, Counter>,
    triggers_delivered: Counter,
    resyncs: Family<Label, Counter>,
    slow_tab_cuts: Counter,
    auth_results: Family<Label, Counter>,
    auth_cache_hits: Counter,
    proxy_requests: Family<Label, Counter>,
    proxy_latency: Histogram,
    fanout_latency: Histogram,
    sampled: Arc<Sampled>,
    events_seen: RwLock<HashSet<String>>,
    names_seen: RwLock<HashSet<String>>,
}

/// Counters owned by other parts, copied in at scrape time.
#[derive(Debug, Default)]
struct Sampled {
    watermark_advances: AtomicU64,
    watermark_failures: AtomicU64,
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in [
            (
                "ssemux_watermark_advances",
                "Read watermarks advanced by ssemux before fan-out.",
                &self.watermark_advances,
            ),
            (
                "ssemux_watermark_failures",
                "Automatic read-watermark advances that failed.",
                &self.watermark_failures,
            ),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

fn label(name: &'static str, value: &str) -> Label {
    [(name, value.to_string())]
}

impl Metrics {
    /// A fresh registry with every metric registered (at zero).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let family = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Label, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let tabs_open = gauge(&mut r, "ssemux_tabs_open", "Tab streams open.");
        let channels_open = gauge(
            &mut r,
            "ssemux_channels_open",
            "User channels (one per user with a tab or in grace).",
        );
        let channels_in_grace = gauge(
            &mut r,
            "ssemux_channels_in_grace",
            "User channels with no tab, waiting out the grace period.",
        );
        let upstream_open = gauge(
            &mut r,
            "ssemux_upstream_connections_open",
            "Upstream SSE connections to the backend currently open.",
        );
        let upstream_connects = counter(
            &mut r,
            "ssemux_upstream_connects",
            "Upstream SSE connections opened (first connect of a channel).",
        );
        let upstream_reconnects = counter(
            &mut r,
            "ssemux_upstream_reconnects",
            "Upstream SSE connections reopened after a drop.",
        );
        let upstream_failures = family(
            &mut r,
            "ssemux_upstream_failures",
            "Upstream connect failures and connection ends, by reason.",
        );
        let upstream_events = family(
            &mut r,
            "ssemux_upstream_events",
            "Upstream events received, by event name (rare names folded into `other`).",
        );
        let triggers_emitted = family(
            &mut r,
            "ssemux_triggers_emitted",
            "Triggers published to user channels, by trigger name.",
        );
        let triggers_delivered = counter(
            &mut r,
            "ssemux_triggers_delivered",
            "Trigger frames written to tab streams (replay and live).",
        );
        let resyncs = family(
            &mut r,
            "ssemux_resyncs",
            "Resyncs sent, by cause (upstream: per channel; others: per tab).",
        );
        let slow_tab_cuts = counter(
            &mut r,
            "ssemux_slow_tab_cuts",
            "Client connections cut because the socket accepted no bytes for the write timeout.",
        );
        let auth_results = family(
            &mut r,
            "ssemux_auth_results",
            "Identity lookups, by result.",
        );
        let auth_cache_hits = counter(
            &mut r,
            "ssemux_auth_cache_hits",
            "Identity lookups answered from the cache.",
        );
        let proxy_requests = family(
            &mut r,
            "ssemux_proxy_requests",
            "Requests proxied to the backend, by response status class.",
        );
        let proxy_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        r.register(
            "ssemux_proxy_latency_seconds",
            "Time from request to response head for proxied requests.",
            proxy_latency.clone(),
        );
        let fanout_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        r.register(
            "ssemux_fanout_latency_seconds",
            "Time from an upstream event parsed to its triggers broadcast to the tabs (includes the watermark advance).",
            fanout_latency.clone(),
        );
        let sampled = Arc::new(Sampled::default());
        r.register_collector(Box::new(sampled.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry: r,
                tabs_open,
                channels_open,
                channels_in_grace,
                upstream_open,
                upstream_connects,
                upstream_reconnects,
                upstream_failures,
                upstream_events,
                triggers_emitted,
                triggers_delivered,
                resyncs,
                slow_tab_cuts,
                auth_results,
                auth_cache_hits,
                proxy_requests,
                proxy_latency,
                fanout_latency,
                sampled,
                events_seen: RwLock::default(),
                names_seen: RwLock::default(),
            }),
        }
    }

    /// The label value for a name from outside: itself while fewer than
    /// [`MAX_NAMES`] distinct names were seen in `seen`, else `other`.
    fn bounded(seen: &RwLock<HashSet<String>>, name: &str) -> String {
        {
            let known = seen.read().unwrap_or_else(|p| p.into_inner());
            if known.contains(name) {
                return name.to_string();
            }
            if known.len() >= MAX_NAMES {
                return "other".to_string();
            }
        }
        let mut known = seen.write().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_NAMES {
            return "other".to_string();
        }
        known.insert(name.to_string());
        name.to_string()
    }

    /// An upstream connection opened; `reconnect` if the channel had one before.
    pub fn upstream_opened(&self, reconnect: bool) {
        let i = &self.inner;
        i.upstream_open.inc();
        if reconnect {
            i.upstream_reconnects.inc();
        } else {
            i.upstream_connects.inc();
        }
    }

    /// An open upstream connection ended for `why` (`None`: cancelled).
    pub fn upstream_closed(&self, why: Option<UpstreamFailure>) {
        self.inner.upstream_open.dec();
        if let Some(w) = why {
            self.upstream_failed(w);
        }
    }

    /// An upstream connect attempt failed, or a connection ended badly.
    pub fn upstream_failed(&self, why: UpstreamFailure) {
        self.inner
            .upstream_failures
            .get_or_create(&label("reason", why.as_str()))
            .inc();
    }

    /// One upstream event named `event` arrived.
    pub fn upstream_event(&self, event: &str) {
        let name = if event.is_empty() { "message" } else { event };
        let name = Self::bounded(&self.inner.events_seen, name);
        self.inner
            .upstream_events
            .get_or_create(&[("event", name)])
            .inc();
    }

    /// A trigger named `name` was published to a channel.
    pub fn trigger_emitted(&self, name: &str) {
        let name = Self::bounded(&self.inner.names_seen, name);
        self.inner
            .triggers_emitted
            .get_or_create(&[("trigger", name)])
            .inc();
    }

    /// `n` trigger frames were written to a tab.
    pub fn triggers_delivered(&self, n: u64) {
        self.inner.triggers_delivered.inc_by(n);
    }

    /// A resync was sent for `cause`.
    pub fn resync(&self, cause: ResyncCause) {
        self.inner
            .resyncs
            .get_or_create(&label("cause", cause.as_str()))
            .inc();
    }

    /// A client connection was cut by the write deadline.
    pub fn slow_tab_cut(&self) {
        self.inner.slow_tab_cuts.inc();
    }

    /// An identity lookup ended with `result`; `cached` if no backend call.
    pub fn auth(&self, result: AuthResult, cached: bool) {
        self.inner
            .auth_results
            .get_or_create(&label("result", result.as_str()))
            .inc();
        if cached {
            self.inner.auth_cache_hits.inc();
        }
    }

    /// A proxied request got `status` after `took`.
    pub fn proxied(&self, status: http::StatusCode, took: Duration) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.inner
            .proxy_requests
            .get_or_create(&label("class", class))
            .inc();
        self.inner.proxy_latency.observe(took.as_secs_f64());
    }

    /// One upstream event took `took` from parsed to broadcast.
    pub fn fanout(&self, took: Duration) {
        self.inner.fanout_latency.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition, with `sample` for values owned
    /// elsewhere.
    pub fn render(&self, sample: Sample) -> String {
        let i = &self.inner;
        i.tabs_open.set(gauge_value(sample.tabs));
        i.channels_open.set(gauge_value(sample.channels));
        i.channels_in_grace
            .set(gauge_value(sample.channels_in_grace));
        i.sampled
            .watermark_advances
            .store(sample.watermark_advances, Ordering::Relaxed);
        i.sampled
            .watermark_failures
            .store(sample.watermark_failures, Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &i.registry).is_err() {
            // Only a formatter error can land here, and String never fails.
            out.clear();
        }
        out
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn counters_render_with_labels() {
        let m = Metrics::new();
        m.upstream_opened(false);
        m.upstream_opened(true);
        m.upstream_closed(Some(UpstreamFailure::Idle));
        m.resync(ResyncCause::Epoch);
        m.resync(ResyncCause::Epoch);
        m.auth(AuthResult::Ok, true);
        m.proxied(http::StatusCode::NOT_FOUND, Duration::from_millis(3));
        m.trigger_emitted("thread-updated");
        let text = m.render(Sample {
            tabs: 3,
            channels: 2,
            channels_in_grace: 1,
            watermark_advances: 7,
            watermark_failures: 0,
        });
        assert_eq!(
            line(&text, "ssemux_upstream_connections_open "),
            Some("ssemux_upstream_connections_open 1")
        );
        assert_eq!(
            line(&text, "ssemux_upstream_reconnects_total"),
            Some("ssemux_upstream_reconnects_total 1")
        );
        assert_eq!(
            line(&text, "ssemux_upstream_failures_total{"),
            Some("ssemux_upstream_failures_total{reason=\"idle\"} 1")
        );
        assert_eq!(
            line(&text, "ssemux_resyncs_total{"),
            Some("ssemux_resyncs_total{cause=\"epoch\"} 2")
        );
        assert_eq!(
            line(&text, "ssemux_proxy_requests_total{"),
            Some("ssemux_proxy_requests_total{class=\"4xx\"} 1")
        );
        assert_eq!(line(&text, "ssemux_tabs_open "), Some("ssemux_tabs_open 3"));
        assert_eq!(
            line(&text, "ssemux_watermark_advances_total"),
            Some("ssemux_watermark_advances_total 7")
        );
        assert_eq!(
            line(&text, "ssemux_auth_cache_hits_total"),
            Some("ssemux_auth_cache_hits_total 1")
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn name_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_NAMES * 3) {
            m.upstream_event(&format!("ev{i}"));
        }
        let text = m.render(Sample::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("ssemux_upstream_events_total{"))
            .count();
        assert!(series <= MAX_NAMES + 1, "{series} series");
        assert!(text.contains("ssemux_upstream_events_total{event=\"other\"}"));
    }
}
