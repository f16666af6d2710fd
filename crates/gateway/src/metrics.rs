//! Metrics: the Prometheus registry of one gateway and the named events the
//! data path reports into it (counters, gauges, histograms). Owns the metric
//! values and their text rendering; it never decides anything on the data
//! path, never blocks (every record is an atomic add or a short read lock)
//! and never takes a label value from input without bounding it — a label
//! set an attacker can grow is a memory leak.
//!
//! The handle is passed down the data path (server → auth, upstream,
//! watermark, tab); parts never call back up through it. Gauges of state the
//! hub keeps (tabs, channels) are sampled at scrape time instead of being
//! counted twice. Labels are typed sets: an increment builds its label from
//! an enum or an interned name, never allocates.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Most distinct values a name-like label (upstream event, trigger name)
/// takes before further new values are folded into `other`.
const MAX_NAMES: usize = 64;

/// Why an upstream connection attempt or connection failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

impl EncodeLabelValue for UpstreamFailure {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            UpstreamFailure::Unauthorized => "unauthorized",
            UpstreamFailure::Status => "status",
            UpstreamFailure::ContentType => "content_type",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Transport => "transport",
            UpstreamFailure::Eof => "eof",
            UpstreamFailure::Idle => "idle",
            UpstreamFailure::ReadError => "read_error",
        })
    }
}

/// Why a tab was sent a `resync`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

impl EncodeLabelValue for ResyncCause {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            ResyncCause::Upstream => "upstream",
            ResyncCause::RingMiss => "ring_miss",
            ResyncCause::Lag => "lag",
            ResyncCause::Epoch => "epoch",
        })
    }
}

/// Outcome of an identity lookup.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AuthResult {
    /// Identified.
    Ok,
    /// No or refused cookie.
    Unauthenticated,
    /// The backend could not be asked.
    Unavailable,
    /// The backend answered 2xx without the identity JSON (an HTML page).
    BadAnswer,
}

impl EncodeLabelValue for AuthResult {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            AuthResult::Ok => "ok",
            AuthResult::Unauthenticated => "unauthenticated",
            AuthResult::Unavailable => "unavailable",
            AuthResult::BadAnswer => "bad_answer",
        })
    }
}

/// What became of a WebSocket upgrade request on a proxied path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// The backend answered `101`; the connection is relayed.
    Upgraded,
    /// The backend answered something else, relayed as a normal response.
    Declined,
    /// Refused with `503`: `proxy.max_websockets` connections were open.
    Limited,
    /// The backend could not be reached or gave no usable answer (`502`/`504`).
    Failed,
}

impl EncodeLabelValue for UpgradeOutcome {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(match self {
            UpgradeOutcome::Upgraded => "upgraded",
            UpgradeOutcome::Declined => "declined",
            UpgradeOutcome::Limited => "limited",
            UpgradeOutcome::Failed => "failed",
        })
    }
}

/// Status class of a proxied response.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct StatusClass(u8);

impl EncodeLabelValue for StatusClass {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(e, "{}xx", self.0)
    }
}

/// A name from outside (upstream event, trigger), interned once it is
/// admitted: labelling with it clones a pointer.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: UpstreamFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: ResyncCause,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: AuthResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: UpgradeOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: Name,
}

/// Gauges of state the hub owns, read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Tab streams open.
    pub tabs: usize,
    /// User channels (including those in grace).
    pub channels: usize,
    /// Channels with no tab, waiting out their grace.
    pub channels_in_grace: usize,
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
    upstream_failures: Family<ReasonLabel, Counter>,
    upstream_events: Family<EventLabel, Counter>,
    triggers_emitted: Family<TriggerLabel, Counter>,
    triggers_delivered: Counter,
    triggers_coalesced: Counter,
    resyncs: Family<CauseLabel, Counter>,
    slow_tab_cuts: Counter,
    auth_results: Family<ResultLabel, Counter>,
    auth_cache_hits: Counter,
    proxy_requests: Family<ClassLabel, Counter>,
    proxy_latency: Histogram,
    websockets_open: Gauge,
    websocket_upgrades: Family<OutcomeLabel, Counter>,
    circuit_open: Gauge,
    circuit_probes: Counter,
    fanout_latency: Histogram,
    watermark_advances: Counter,
    watermark_failures: Counter,
    events_seen: RwLock<HashSet<Arc<str>>>,
    names_seen: RwLock<HashSet<Arc<str>>>,
}

/// Register `metric` under `name` and hand it back for recording.
fn reg<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// A fresh registry with every metric registered (at zero).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let r = &mut r;
        let inner = Inner {
            tabs_open: reg(r, "ssemux_tabs_open", "Tab streams open", Gauge::default()),
            channels_open: reg(
                r,
                "ssemux_channels_open",
                "User channels (one per user with a tab or in grace)",
                Gauge::default(),
            ),
            channels_in_grace: reg(
                r,
                "ssemux_channels_in_grace",
                "User channels with no tab, waiting out the grace period",
                Gauge::default(),
            ),
            upstream_open: reg(
                r,
                "ssemux_upstream_connections_open",
                "Upstream SSE connections to the backend currently open",
                Gauge::default(),
            ),
            upstream_connects: reg(
                r,
                "ssemux_upstream_connects",
                "Upstream SSE connections opened (first connect of a channel)",
                Counter::default(),
            ),
            upstream_reconnects: reg(
                r,
                "ssemux_upstream_reconnects",
                "Upstream SSE connections reopened after a drop",
                Counter::default(),
            ),
            upstream_failures: reg(
                r,
                "ssemux_upstream_failures",
                "Upstream connect failures and connection ends, by reason",
                Family::default(),
            ),
            upstream_events: reg(
                r,
                "ssemux_upstream_events",
                "Upstream events received, by event name (rare names folded into `other`)",
                Family::default(),
            ),
            triggers_emitted: reg(
                r,
                "ssemux_triggers_emitted",
                "Triggers published to user channels, by trigger name",
                Family::default(),
            ),
            triggers_delivered: reg(
                r,
                "ssemux_triggers_delivered",
                "Trigger frames written to tab streams (replay and live)",
                Counter::default(),
            ),
            triggers_coalesced: reg(
                r,
                "ssemux_triggers_coalesced",
                "Idempotent trigger frames a live tab skipped because an identical one followed in the same take",
                Counter::default(),
            ),
            resyncs: reg(
                r,
                "ssemux_resyncs",
                "Resyncs sent, by cause (upstream: per channel; others: per tab)",
                Family::default(),
            ),
            slow_tab_cuts: reg(
                r,
                "ssemux_slow_tab_cuts",
                "Client connections cut because the socket accepted no bytes for the write timeout",
                Counter::default(),
            ),
            auth_results: reg(
                r,
                "ssemux_auth_results",
                "Identity lookups, by result",
                Family::default(),
            ),
            auth_cache_hits: reg(
                r,
                "ssemux_auth_cache_hits",
                "Identity lookups answered from the cache",
                Counter::default(),
            ),
            proxy_requests: reg(
                r,
                "ssemux_proxy_requests",
                "Requests proxied to the backend, by response status class",
                Family::default(),
            ),
            proxy_latency: reg(
                r,
                "ssemux_proxy_latency_seconds",
                "Time from request to response head for proxied requests",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            websockets_open: reg(
                r,
                "ssemux_websockets_open",
                "WebSocket connections on proxied paths currently relayed to the backend",
                Gauge::default(),
            ),
            websocket_upgrades: reg(
                r,
                "ssemux_websocket_upgrades",
                "WebSocket upgrade requests on proxied paths, by outcome",
                Family::default(),
            ),
            circuit_open: reg(
                r,
                "ssemux_upstream_circuit_open",
                "Whether the backend is failing for every user and connects wait for a probe (1) or not (0)",
                Gauge::default(),
            ),
            circuit_probes: reg(
                r,
                "ssemux_upstream_circuit_probes",
                "Connects made as the circuit's probe while it was open",
                Counter::default(),
            ),
            fanout_latency: reg(
                r,
                "ssemux_fanout_latency_seconds",
                "Time from an upstream event parsed to its triggers broadcast to the tabs (includes the watermark advance)",
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            ),
            watermark_advances: reg(
                r,
                "ssemux_watermark_advances",
                "Read watermarks advanced by ssemux before fan-out",
                Counter::default(),
            ),
            watermark_failures: reg(
                r,
                "ssemux_watermark_failures",
                "Automatic read-watermark advances that failed",
                Counter::default(),
            ),
            events_seen: RwLock::default(),
            names_seen: RwLock::default(),
            // Last: every field above registered itself first.
            registry: std::mem::take(r),
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The label value for a name from outside: itself while fewer than
    /// [`MAX_NAMES`] distinct names were seen in `seen`, else `other`.
    /// Allocates only when a new name is admitted.
    fn bounded(seen: &RwLock<HashSet<Arc<str>>>, name: &str) -> Name {
        {
            let known = seen.read().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = known.get(name) {
                return Name(n.clone());
            }
            if known.len() >= MAX_NAMES {
                return other();
            }
        }
        let mut known = seen.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = known.get(name) {
            return Name(n.clone());
        }
        if known.len() >= MAX_NAMES {
            return other();
        }
        let n: Arc<str> = Arc::from(name);
        known.insert(n.clone());
        Name(n)
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
    pub fn upstream_failed(&self, reason: UpstreamFailure) {
        self.inner
            .upstream_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// One upstream event named `event` arrived.
    pub fn upstream_event(&self, event: &str) {
        let name = if event.is_empty() { "message" } else { event };
        let event = Self::bounded(&self.inner.events_seen, name);
        self.inner
            .upstream_events
            .get_or_create(&EventLabel { event })
            .inc();
    }

    /// A trigger named `name` was published to a channel.
    pub fn trigger_emitted(&self, name: &str) {
        let trigger = Self::bounded(&self.inner.names_seen, name);
        self.inner
            .triggers_emitted
            .get_or_create(&TriggerLabel { trigger })
            .inc();
    }

    /// `n` trigger frames were written to a tab.
    pub fn triggers_delivered(&self, n: u64) {
        self.inner.triggers_delivered.inc_by(n);
    }

    /// `n` idempotent frames were skipped by a tab for an identical later one.
    pub fn triggers_coalesced(&self, n: u64) {
        if n > 0 {
            self.inner.triggers_coalesced.inc_by(n);
        }
    }

    /// A resync was sent for `cause`.
    pub fn resync(&self, cause: ResyncCause) {
        self.inner
            .resyncs
            .get_or_create(&CauseLabel { cause })
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
            .get_or_create(&ResultLabel { result })
            .inc();
        if cached {
            self.inner.auth_cache_hits.inc();
        }
    }

    /// A proxied request got `status` after `took`.
    pub fn proxied(&self, status: http::StatusCode, took: Duration) {
        let class = StatusClass((status.as_u16() / 100).clamp(1, 5) as u8);
        self.inner
            .proxy_requests
            .get_or_create(&ClassLabel { class })
            .inc();
        self.inner.proxy_latency.observe(took.as_secs_f64());
    }

    /// A WebSocket upgrade request on a proxied path ended with `outcome`.
    pub fn websocket_upgrade(&self, outcome: UpgradeOutcome) {
        self.inner
            .websocket_upgrades
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A relayed WebSocket connection opened.
    pub fn websocket_opened(&self) {
        self.inner.websockets_open.inc();
    }

    /// A relayed WebSocket connection ended.
    pub fn websocket_closed(&self) {
        self.inner.websockets_open.dec();
    }

    /// The upstream circuit opened (`true`) or closed.
    pub fn circuit(&self, open: bool) {
        self.inner.circuit_open.set(i64::from(open));
    }

    /// A connect was made as the circuit's probe.
    pub fn circuit_probe(&self) {
        self.inner.circuit_probes.inc();
    }

    /// One upstream event took `took` from parsed to broadcast.
    pub fn fanout(&self, took: Duration) {
        self.inner.fanout_latency.observe(took.as_secs_f64());
    }

    /// ssemux advanced a read watermark at the backend.
    pub fn watermark_advanced(&self) {
        self.inner.watermark_advances.inc();
    }

    /// An automatic watermark advance failed (after its retry).
    pub fn watermark_failed(&self) {
        self.inner.watermark_failures.inc();
    }

    /// Watermark advances so far.
    pub fn watermark_advances(&self) -> u64 {
        self.inner.watermark_advances.get()
    }

    /// Watermark advances that failed so far.
    pub fn watermark_failures(&self) -> u64 {
        self.inner.watermark_failures.get()
    }

    /// The Prometheus text exposition, with `sample` for the hub's gauges.
    pub fn render(&self, sample: Sample) -> String {
        let i = &self.inner;
        i.tabs_open.set(gauge_value(sample.tabs));
        i.channels_open.set(gauge_value(sample.channels));
        i.channels_in_grace
            .set(gauge_value(sample.channels_in_grace));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &i.registry).is_err() {
            // Only a formatter error can land here, and String never fails.
            out.clear();
        }
        out
    }
}

fn other() -> Name {
    static OTHER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Name(OTHER.get_or_init(|| Arc::from("other")).clone())
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
        for _ in 0..7 {
            m.watermark_advanced();
        }
        let text = m.render(Sample {
            tabs: 3,
            channels: 2,
            channels_in_grace: 1,
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

    /// prometheus-client appends a period to every help text it is given,
    /// so the texts above are written without one: each `# HELP` line must
    /// end in exactly one.
    #[test]
    fn help_texts_end_in_one_period() {
        let m = Metrics::new();
        // A labelled family renders nothing, not even its HELP line, before
        // its first series: record into each so that every line is there.
        m.upstream_failed(UpstreamFailure::Eof);
        m.upstream_event("message");
        m.trigger_emitted("t");
        m.resync(ResyncCause::Lag);
        m.auth(AuthResult::Ok, false);
        m.proxied(http::StatusCode::OK, Duration::from_millis(1));
        m.fanout(Duration::from_micros(80));
        m.websocket_upgrade(UpgradeOutcome::Upgraded);
        let text = m.render(Sample::default());
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps.len(), types, "a metric without HELP in\n{text}");
        // Every metric `new` registers; a new family needs a record above.
        assert_eq!(types, 24, "metrics rendered:\n{text}");
        for line in helps {
            let mut words = line.splitn(4, ' ');
            let help = words.nth(3).unwrap_or("");
            assert!(
                help.starts_with(|c: char| c.is_ascii_uppercase()),
                "help not a sentence: {line}"
            );
            assert!(
                help.ends_with('.') && !help.ends_with(".."),
                "help must end in exactly one period: {line}"
            );
        }
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
