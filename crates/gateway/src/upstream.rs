//! Upstream: the one SSE connection per user to the backend. Owns the
//! connection, the SSE parser, the last upstream id and the reconnect
//! schedule; hands translated triggers to the channel. It never writes to a
//! tab, never touches the hub's map and never decides a user's identity.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt};
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::BodyDataStream;
use ssemux_sse::{Item, Parser};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{self, BoxError};
use crate::channel::Channel;
use crate::client::BackendClient;
use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, ResyncCause, UpstreamFailure};
use crate::pacer::Pacer;
use crate::translate::{self, Rules, Translation, Trigger};
use crate::watermark::Watermarks;

/// Most triggers published as one batch.
const MAX_BATCH: usize = 64;

/// Triggers translated from one read of the upstream, published together.
#[derive(Default)]
struct Batch {
    triggers: Vec<Trigger>,
    // When each event in the batch arrived (for the fan-out histogram).
    started: Vec<Instant>,
}

/// Bytes of an upstream response body as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// What the upstream task asks the connector for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The user whose stream this is.
    pub user: String,
    /// `Cookie` header to present.
    pub cookie: String,
    /// Last upstream id seen, sent as `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

/// Why opening the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The backend refused the credentials (401/403).
    #[error("credentials refused ({0})")]
    Unauthorized(StatusCode),
    /// Any other non-2xx status.
    #[error("backend answered {0}")]
    Status(StatusCode),
    /// 2xx but not `text/event-stream`.
    #[error("backend answered with content type {0:?}, not text/event-stream")]
    ContentType(String),
    /// No response head in time.
    #[error("backend did not answer in time")]
    Timeout,
    /// Connection-level failure.
    #[error("transport: {0}")]
    Transport(String),
}

/// How an upstream answer's status is judged, whichever client read it:
/// 401/403 → the credentials were refused, any other non-2xx → retry.
pub(crate) fn check_status(status: StatusCode) -> Result<(), ConnectError> {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(ConnectError::Unauthorized(status));
    }
    if !status.is_success() {
        return Err(ConnectError::Status(status));
    }
    Ok(())
}

/// Only `text/event-stream` (any parameters) is parsed as a stream.
pub(crate) fn check_content_type(value: &[u8]) -> Result<(), ConnectError> {
    let ctype = String::from_utf8_lossy(value);
    if ctype
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    {
        return Ok(());
    }
    Err(ConnectError::ContentType(ctype.into_owned()))
}

/// Opens upstream streams. The real one speaks HTTP; tests script it.
pub trait Connector: Send + Sync + 'static {
    /// Open one stream.
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>>;
}

/// The HTTP connector: `GET <backend><events_path>` with the user's cookie.
pub struct HttpConnector {
    client: BackendClient,
    url: Uri,
    response_timeout: Duration,
}

impl HttpConnector {
    /// A connector for `url` (the full events URL).
    pub fn new(client: BackendClient, url: Uri, response_timeout: Duration) -> Self {
        HttpConnector {
            client,
            url,
            response_timeout,
        }
    }
}

impl Connector for HttpConnector {
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let client = self.client.clone();
        let url = self.url.clone();
        let wait = self.response_timeout;
        Box::pin(async move {
            let mut builder = Request::get(url)
                .header(header::ACCEPT, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache");
            if let Ok(v) = HeaderValue::from_str(&req.cookie) {
                builder = builder.header(header::COOKIE, v);
            }
            if let Some(id) = req.last_event_id.as_deref() {
                // An id the backend sent but HTTP cannot carry is dropped
                // rather than failing the reconnect; the backend then
                // answers with a resync, which is the honest outcome.
                if let Ok(v) = HeaderValue::from_str(id) {
                    builder = builder.header("last-event-id", v);
                }
            }
            let request = builder
                .body(body::empty())
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            let resp = tokio::time::timeout(wait, client.request(request))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            check_status(resp.status())?;
            check_content_type(
                resp.headers()
                    .get(header::CONTENT_TYPE)
                    .map_or(&[][..], |v| v.as_bytes()),
            )?;
            let stream = BodyDataStream::new(resp.into_body())
                .map(|r| r.map_err(|e| Box::new(e) as BoxError));
            Ok(Box::pin(stream) as ByteStream)
        })
    }
}

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

/// Settings of the upstream task (from `[upstream]`).
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Silence longer than this means the connection is dead.
    pub idle_timeout: Duration,
    /// Smallest reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Up this long → backoff resets.
    pub backoff_reset_after: Duration,
    /// Largest accepted upstream event.
    pub max_event_bytes: usize,
}

impl From<&UpstreamConfig> for UpstreamSettings {
    fn from(c: &UpstreamConfig) -> Self {
        UpstreamSettings {
            idle_timeout: c.idle_timeout.0,
            backoff_min: c.backoff_min.0,
            backoff_max: c.backoff_max.0,
            backoff_reset_after: c.backoff_reset_after.0,
            max_event_bytes: c.max_event_bytes,
        }
    }
}

/// How an upstream task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The hub closed the channel (grace expired, shutdown).
    Cancelled,
    /// Every credential was refused; the channel was closed with `logout`.
    LoggedOut,
}

/// Why one connection ended.
#[derive(Debug, PartialEq, Eq)]
enum ConnEnd {
    Cancelled,
    Eof,
    Idle,
    Error,
}

/// The translation rules in force, swappable at run time (config reload):
/// each event is translated with the rules current when it arrives.
pub type SharedRules = Arc<std::sync::RwLock<Arc<Rules>>>;

/// Everything an upstream task needs; shared by all users' tasks.
pub struct Upstream {
    connector: Arc<dyn Connector>,
    rules: SharedRules,
    settings: UpstreamSettings,
    watermarks: Option<Watermarks>,
    metrics: Metrics,
    pacer: Pacer,
}

impl Upstream {
    /// Build the shared part of every upstream task.
    pub fn new(
        connector: Arc<dyn Connector>,
        rules: Arc<Rules>,
        settings: UpstreamSettings,
        watermarks: Option<Watermarks>,
    ) -> Self {
        Upstream {
            connector,
            rules: Arc::new(std::sync::RwLock::new(rules)),
            settings,
            watermarks,
            metrics: Metrics::default(),
            pacer: Pacer::new(0),
        }
    }

    /// Pace connect attempts of all users together to `per_second`
    /// (default: unpaced).
    pub fn with_connect_rate(mut self, per_second: u32) -> Self {
        self.pacer = Pacer::new(per_second);
        self
    }

    /// The handle through which the rules can be replaced while running.
    pub fn rules_handle(&self) -> SharedRules {
        self.rules.clone()
    }

    /// Report into `metrics` (default: a private, unexported registry).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Run one user's upstream until cancelled or logged out.
    pub async fn run(&self, channel: Arc<Channel>, cancel: CancellationToken) -> End {
        let s = &self.settings;
        let mut backoff = Backoff::new(s.backoff_min, s.backoff_max);
        let mut last_id: Option<String> = None;
        let mut retry_hint: Option<Duration> = None;
        let mut connected_before = false;
        loop {
            let Some((key, cookie)) = channel.credential() else {
                tracing::info!(user = %channel.user(), "backend refused every credential; logging tabs out");
                channel.close();
                return End::LoggedOut;
            };
            let req = ConnectRequest {
                user: channel.user().to_string(),
                cookie,
                last_event_id: last_id.clone(),
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                r = async {
                    self.pacer.wait().await;
                    self.connector.connect(req).await
                } => r,
            };
            match result {
                Ok(stream) => {
                    self.metrics.upstream_opened(connected_before);
                    let owed = channel.upstream_connected();
                    if owed || (connected_before && last_id.is_none()) {
                        // Nothing to resume from: whatever happened while
                        // we were away is unknown to the tabs.
                        self.publish_resync(&channel);
                    }
                    connected_before = true;
                    let up_since = Instant::now();
                    let how = self
                        .pump(stream, &channel, &mut last_id, &mut retry_hint, &cancel)
                        .await;
                    tracing::debug!(user = %channel.user(), ?how, "upstream connection ended");
                    self.metrics.upstream_closed(match how {
                        ConnEnd::Cancelled => None,
                        ConnEnd::Eof => Some(UpstreamFailure::Eof),
                        ConnEnd::Idle => Some(UpstreamFailure::Idle),
                        ConnEnd::Error => Some(UpstreamFailure::ReadError),
                    });
                    if how == ConnEnd::Cancelled {
                        return End::Cancelled;
                    }
                    if up_since.elapsed() >= s.backoff_reset_after {
                        backoff.reset();
                    }
                }
                Err(ConnectError::Unauthorized(status)) => {
                    self.metrics.upstream_failed(UpstreamFailure::Unauthorized);
                    tracing::info!(user = %channel.user(), %status, "upstream credentials refused; trying another tab's");
                    channel.refuse_credential(key);
                    continue;
                }
                Err(e) => {
                    self.metrics.upstream_failed(match e {
                        ConnectError::Unauthorized(_) => UpstreamFailure::Unauthorized,
                        ConnectError::Status(_) => UpstreamFailure::Status,
                        ConnectError::ContentType(_) => UpstreamFailure::ContentType,
                        ConnectError::Timeout => UpstreamFailure::Timeout,
                        ConnectError::Transport(_) => UpstreamFailure::Transport,
                    });
                    tracing::warn!(user = %channel.user(), error = %e, "upstream connect failed");
                }
            }
            let delay = backoff.next_delay().max(retry_hint.unwrap_or_default());
            tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn pump(
        &self,
        mut stream: ByteStream,
        channel: &Channel,
        last_id: &mut Option<String>,
        retry_hint: &mut Option<Duration>,
        cancel: &CancellationToken,
    ) -> ConnEnd {
        let mut parser = Parser::new(self.settings.max_event_bytes);
        let mut batch = Batch::default();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return ConnEnd::Cancelled,
                n = tokio::time::timeout(self.settings.idle_timeout, stream.next()) => n,
            };
            let chunk = match next {
                Err(_) => {
                    tracing::warn!(user = %channel.user(), "upstream silent past idle timeout; reconnecting");
                    return ConnEnd::Idle;
                }
                Ok(None) => return ConnEnd::Eof,
                Ok(Some(Err(e))) => {
                    tracing::warn!(user = %channel.user(), error = %e, "upstream read failed");
                    return ConnEnd::Error;
                }
                Ok(Some(Ok(b))) => b,
            };
            parser.push(&chunk);
            while let Some(item) = parser.next_item() {
                match item {
                    Ok(Item::Event(ev)) => {
                        if !ev.last_event_id.is_empty() {
                            *last_id = Some(ev.last_event_id.clone());
                        } else if ev.has_id {
                            // An explicit empty id resets resumption.
                            *last_id = None;
                        }
                        self.deliver(channel, &ev.event, &ev.data, &mut batch).await;
                    }
                    Ok(Item::Retry(ms)) => *retry_hint = Some(Duration::from_millis(ms)),
                    Err(e) => {
                        tracing::warn!(user = %channel.user(), error = %e, "upstream event skipped");
                        self.push_resync(&mut batch);
                    }
                }
            }
            // Everything one read brought goes out as one publish: one lock,
            // one wake, and each tab writes the lot with one syscall.
            self.flush(channel, &mut batch);
        }
    }

    /// Publish what `batch` holds, in order.
    fn flush(&self, channel: &Channel, batch: &mut Batch) {
        // Taken, not cleared: an idle stream keeps no batch capacity. Events
        // that translated to no trigger count too (their fan-out is done).
        let triggers = std::mem::take(&mut batch.triggers);
        if !triggers.is_empty() {
            channel.publish(&triggers);
        }
        for started in std::mem::take(&mut batch.started) {
            self.metrics.fanout(started.elapsed());
        }
    }

    /// Queue a `resync` the upstream side decided on.
    fn push_resync(&self, batch: &mut Batch) {
        self.metrics.resync(ResyncCause::Upstream);
        self.metrics.trigger_emitted(translate::RESYNC);
        batch.triggers.push(Trigger::resync());
    }

    /// Publish a `resync` the upstream side decided on.
    fn publish_resync(&self, channel: &Channel) {
        let mut batch = Batch::default();
        self.push_resync(&mut batch);
        self.flush(channel, &mut batch);
    }

    /// Translate one upstream event into `batch`.
    async fn deliver(&self, channel: &Channel, event: &str, data: &str, batch: &mut Batch) {
        self.metrics.upstream_event(event);
        let started = Instant::now();
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        match translate::translate(&rules, event, data) {
            // The delivery guarantee rests on upstream resyncs reaching the
            // tabs; a rule set that forgot `resync` must not break it.
            Translation::Unmatched if event == translate::RESYNC => self.push_resync(batch),
            Translation::Unmatched => {
                tracing::debug!(user = %channel.user(), event, "upstream event without rule dropped");
            }
            Translation::Triggers(triggers) => {
                let due = self
                    .watermarks
                    .as_ref()
                    .and_then(|w| Some((w, w.wanted(channel.user(), event, data)?)));
                if let Some((w, due)) = due {
                    // Ordering guarantee: the backend's watermark moves
                    // before any tab hears of the message. What is queued
                    // before it goes out first, so tabs see events in order.
                    self.flush(channel, batch);
                    // Boxed: the backend request is big and rare, and this
                    // task lives as long as the user's stream.
                    Box::pin(w.advance(channel, due)).await;
                }
                for t in &triggers {
                    if t.name == translate::RESYNC {
                        self.metrics.resync(ResyncCause::Upstream);
                    }
                    self.metrics.trigger_emitted(&t.name);
                }
                batch.triggers.extend(triggers);
                batch.started.push(started);
                if batch.triggers.len() >= MAX_BATCH {
                    // A long burst (a replay after reconnect) goes out in
                    // parts, so the ring never trims a batch before any tab
                    // could take it.
                    self.flush(channel, batch);
                }
            }
        }
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
