//! Upstream: the one SSE connection per user to the backend. The task loop
//! here owns the connection (opened by a [`connector::Connector`]), the SSE
//! parser, the last upstream id and the reconnect schedule, and hands
//! translated triggers to the user's channel. It never writes to a tab, never
//! touches the hub's map and never decides a user's identity.

pub mod backoff;
pub mod circuit;
pub mod connector;
pub mod h1_conn;
pub mod h2_conn;
pub mod pacer;
pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::StreamExt;
use ssemux_sse::{Item, Parser};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::backoff::Backoff;
use self::circuit::{Change, Circuit, Outcome, Turn};
use self::connector::{ByteStream, ConnectError, ConnectRequest, Connector, CredentialCheck};
use self::pacer::Pacer;
use self::translate::{Rules, Translation};
use crate::config::UpstreamConfig;
use crate::credential::{Credential, Presentation};
use crate::events::channel::{Channel, MAX_BATCH};
use crate::events::resume::Position;
use crate::metrics::{Metrics, ResyncCause, UpstreamFailure};
use crate::trigger::{self, Trigger};
use crate::watermark::Watermarks;

/// Triggers translated from one read of the upstream, published together.
#[derive(Default)]
struct Batch {
    triggers: Vec<Trigger>,
    // Where in the upstream each trigger came from (same length).
    positions: Vec<Option<Position>>,
    // When each event in the batch arrived (for the fan-out histogram).
    started: Vec<Instant>,
}

/// What one upstream task keeps across its connections.
struct Kept {
    /// Last upstream id seen, sent as `Last-Event-ID`.
    last_id: Option<String>,
    /// The upstream's last `retry:`.
    retry_hint: Option<Duration>,
    /// When the channel's credentials are next asked about again.
    next_recheck: Option<Instant>,
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

/// Run `work` (a connect attempt, a backoff wait); if the stream has been
/// down since `since` for the channel's `down_after` meanwhile, tell the
/// tabs so — they hear it on time whatever the backoff is.
async fn announce_outage<F: std::future::Future>(
    channel: &Channel,
    since: Option<Instant>,
    work: F,
) -> F::Output {
    let Some(since) = since.filter(|_| !channel.is_down()) else {
        return work.await;
    };
    let due = since + channel.signals().down_after;
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        _ = tokio::time::sleep_until(due) => channel.upstream_down(),
    }
    work.await
}

/// The translation rules in force, swappable at run time (config reload):
/// each event is translated with the rules current when it arrives.
pub type SharedRules = Arc<ArcSwap<Rules>>;

/// Everything an upstream task needs; shared by all users' tasks.
pub struct Upstream {
    connector: Arc<dyn Connector>,
    rules: SharedRules,
    settings: UpstreamConfig,
    watermarks: Option<Watermarks>,
    metrics: Metrics,
    pacer: Pacer,
    /// Queues every user's connects while the backend is down for all.
    circuit: Circuit,
    /// Re-asks the backend about every credential of a channel, on each
    /// reconnect and every `recheck_interval` (revoked sessions).
    recheck: Option<(Arc<dyn CredentialCheck>, Duration)>,
    /// How the backend is shown a tab's credential (`auth.present_as`).
    present_as: Presentation,
}

impl Upstream {
    /// Build the shared part of every upstream task.
    pub fn new(
        connector: Arc<dyn Connector>,
        rules: Arc<Rules>,
        settings: UpstreamConfig,
        watermarks: Option<Watermarks>,
    ) -> Self {
        Upstream {
            connector,
            rules: Arc::new(ArcSwap::new(rules)),
            settings,
            watermarks,
            metrics: Metrics::default(),
            pacer: Pacer::new(0),
            circuit: Circuit::off(),
            recheck: None,
            present_as: Presentation::AsReceived,
        }
    }

    /// Show the backend each credential as `how` says (default: as received).
    pub fn with_presentation(mut self, how: Presentation) -> Self {
        self.present_as = how;
        self
    }

    /// Re-check each distinct credential of a channel with `check` on every
    /// reconnect and every `interval` (default: never).
    pub fn with_recheck(mut self, check: Arc<dyn CredentialCheck>, interval: Duration) -> Self {
        self.recheck = Some((check, interval));
        self
    }

    /// Pace connect attempts of all users together to `per_second`
    /// (default: unpaced).
    pub fn with_connect_rate(mut self, per_second: u32) -> Self {
        self.pacer = Pacer::new(per_second);
        self
    }

    /// Share one circuit between all users' connects: after `open_after`
    /// failed connects in a row (`0`: never) users wait in one queue while
    /// one of them at a time probes, at most every `probe_max`, and all are
    /// released (at the connect rate) when a probe is answered.
    pub fn with_circuit(mut self, open_after: u32, probe_max: Duration) -> Self {
        self.circuit = Circuit::new(open_after, self.settings.backoff_min, probe_max);
        self
    }

    /// Record a change of the circuit's state.
    fn circuit_changed(&self, change: Change) {
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.circuit(true);
                tracing::warn!(
                    "backend failing for every user; connects wait while one at a time probes"
                );
            }
            Change::Closed => {
                self.metrics.circuit(false);
                tracing::info!("backend answered a probe; waiting users released");
            }
        }
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
        // A channel created by a tab coming back resumes where it stood.
        let mut at = Kept {
            last_id: channel.resume_point().map(|id| id.to_string()),
            retry_hint: None,
            next_recheck: self
                .recheck
                .as_ref()
                .map(|(_, every)| Instant::now() + *every),
        };
        let mut connected_before = false;
        // Since when the stream has been wanted but not up (the tabs hear
        // `upstream-down` once this is `down_after` old).
        let mut down_since = Some(Instant::now());
        // Failed connects since the stream was last up, for the one line
        // that says it is back.
        let mut failures = 0u32;
        loop {
            let Some((key, cred)) = channel.credential() else {
                if !channel.close_if_no_credential() {
                    // A tab brought one just now: try it.
                    continue;
                }
                tracing::info!(user = %channel.user(), "backend refused every credential; logging tabs out");
                return End::LoggedOut;
            };
            let req = ConnectRequest {
                user: channel.user().to_string(),
                path: channel.path().clone(),
                credential: cred.present(&self.present_as),
                last_event_id: at.last_id.clone(),
            };
            // While the backend is down for everyone, wait in the circuit's
            // queue: released when it is back, or chosen to probe it.
            let probe = if self.circuit.is_open() {
                let turn = tokio::select! {
                    _ = cancel.cancelled() => return End::Cancelled,
                    t = announce_outage(&channel, down_since, self.circuit.turn()) => t,
                };
                match turn {
                    Turn::Released => None,
                    Turn::Probe(p) => {
                        self.metrics.circuit_probe();
                        Some(p)
                    }
                }
            } else {
                None
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                r = announce_outage(&channel, down_since, async {
                    self.pacer.wait().await;
                    self.connector.connect(req).await
                }) => r,
            };
            let outcome = match &result {
                Ok(_) | Err(ConnectError::Unauthorized(_)) => Outcome::Answered,
                // A refusal of this request (a 404 for one key's path) says
                // the backend is up.
                Err(ConnectError::Status(s)) if s.is_client_error() => Outcome::Answered,
                Err(_) => Outcome::Failed,
            };
            self.circuit_changed(match probe {
                Some(p) => p.finish(outcome),
                None => self.circuit.record(outcome),
            });
            match result {
                Ok(stream) => {
                    self.metrics.upstream_opened(connected_before);
                    if failures > 0 {
                        let down = down_since.map(|t| t.elapsed());
                        tracing::info!(user = %channel.user(), failures, down_for = ?down, "upstream reconnected");
                        failures = 0;
                    }
                    let owed = channel.upstream_connected();
                    if owed || (connected_before && at.last_id.is_none()) {
                        // Nothing to resume from: whatever happened while
                        // we were away is unknown to the tabs.
                        self.publish_resync(&channel);
                    }
                    if connected_before {
                        // A drop is when sessions tend to have changed; at
                        // most once an interval all the same, so a backend
                        // restart (every user reconnecting) is not also a
                        // burst of identity calls.
                        self.recheck_if_due(&channel, &mut at.next_recheck).await;
                    }
                    connected_before = true;
                    let up_since = Instant::now();
                    // The watermark advance posts with the credential the
                    // stream is open with.
                    let how = self.pump(stream, &channel, &cred, &mut at, &cancel).await;
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
                    down_since = Some(Instant::now());
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
                    failures += 1;
                    tracing::warn!(user = %channel.user(), error = %e, failures, "upstream connect failed");
                }
            }
            if self.circuit.is_open() {
                // The circuit decides when to try again.
                continue;
            }
            let delay = backoff.next_delay().max(at.retry_hint.unwrap_or_default());
            tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                _ = announce_outage(&channel, down_since, tokio::time::sleep(delay)) => {}
            }
        }
    }

    async fn pump(
        &self,
        mut stream: ByteStream,
        channel: &Channel,
        cred: &Credential,
        at: &mut Kept,
        cancel: &CancellationToken,
    ) -> ConnEnd {
        let mut parser = Parser::new(self.settings.max_event_bytes);
        let mut batch = Batch::default();
        loop {
            // Checked when the stream wakes the task (an event, a keepalive):
            // no timer of its own per user. A stream silent past the idle
            // timeout reconnects, and a reconnect checks too.
            self.recheck_if_due(channel, &mut at.next_recheck).await;
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
                            at.last_id = Some(ev.last_event_id.clone());
                        } else if ev.has_id {
                            // An explicit empty id resets resumption, and
                            // what ids seal must not outlive it.
                            at.last_id = None;
                            channel.forget_position();
                        }
                        // The parser keeps the last id for events without
                        // one (as the SSE spec does); only an event that
                        // carried an id has a position of its own.
                        let from = (ev.has_id && !ev.last_event_id.is_empty())
                            .then(|| Arc::<str>::from(ev.last_event_id.as_str()));
                        self.deliver(channel, cred, &ev.event, &ev.data, from, &mut batch)
                            .await;
                    }
                    Ok(Item::Retry(ms)) => at.retry_hint = Some(Duration::from_millis(ms)),
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

    /// Re-check the channel's credentials if `next` has come, and schedule
    /// the next one.
    async fn recheck_if_due(&self, channel: &Channel, next: &mut Option<Instant>) {
        let Some(due) = *next else {
            return;
        };
        if Instant::now() < due {
            return;
        }
        self.recheck_credentials(channel).await;
        *next = self
            .recheck
            .as_ref()
            .map(|(_, every)| Instant::now() + *every);
    }

    /// Ask the backend about every live credential of the channel; the tabs
    /// of one it refuses are logged out (the others stay). When none is left
    /// the next connect finds no credential and logs the channel out whole.
    async fn recheck_credentials(&self, channel: &Channel) {
        let Some((check, _)) = &self.recheck else {
            return;
        };
        for (key, cred) in channel.live_credentials() {
            if check.still_valid(channel.user(), &cred).await == Some(false) {
                tracing::info!(user = %channel.user(), "a session of the user was revoked; logging its tabs out");
                channel.revoke_credential(key);
            }
        }
    }

    /// Publish what `batch` holds, in order.
    fn flush(&self, channel: &Channel, batch: &mut Batch) {
        // Taken, not cleared: an idle stream keeps no batch capacity. Events
        // that translated to no trigger count too (their fan-out is done).
        let triggers = std::mem::take(&mut batch.triggers);
        let positions = std::mem::take(&mut batch.positions);
        if !triggers.is_empty() {
            channel.publish_from(&triggers, &positions);
        }
        for started in std::mem::take(&mut batch.started) {
            self.metrics.fanout(started.elapsed());
        }
    }

    /// Queue a `resync` the upstream side decided on.
    fn push_resync(&self, batch: &mut Batch) {
        self.metrics.resync(ResyncCause::Upstream);
        self.metrics.trigger_emitted(trigger::RESYNC);
        batch.triggers.push(Trigger::resync());
        batch.positions.push(None);
    }

    /// Publish a `resync` the upstream side decided on.
    fn publish_resync(&self, channel: &Channel) {
        let mut batch = Batch::default();
        self.push_resync(&mut batch);
        self.flush(channel, &mut batch);
    }

    /// Translate one upstream event into `batch`.
    async fn deliver(
        &self,
        channel: &Channel,
        cred: &Credential,
        event: &str,
        data: &str,
        from: Option<Arc<str>>,
        batch: &mut Batch,
    ) {
        self.metrics.upstream_event(event);
        let started = Instant::now();
        let rules = self.rules.load();
        match translate::translate(&rules, event, data) {
            // The delivery guarantee rests on upstream resyncs reaching the
            // tabs; a rule set that forgot `resync` must not break it.
            Translation::Unmatched if event == trigger::RESYNC => self.push_resync(batch),
            Translation::Unmatched => {
                tracing::debug!(user = %channel.user(), event, "upstream event without rule dropped");
            }
            Translation::Triggers(triggers) => {
                let total = u16::try_from(triggers.len()).unwrap_or(u16::MAX);
                let positions = (0..triggers.len()).map(|i| {
                    from.as_ref().map(|id| Position {
                        id: id.clone(),
                        index: u16::try_from(i).unwrap_or(u16::MAX),
                        total,
                    })
                });
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
                    let shown = cred.present(&self.present_as);
                    Box::pin(w.advance(channel.user(), &shown, due)).await;
                }
                for t in &triggers {
                    if t.name == trigger::RESYNC {
                        self.metrics.resync(ResyncCause::Upstream);
                    }
                    self.metrics.trigger_emitted(&t.name);
                }
                batch.triggers.extend(triggers);
                batch.positions.extend(positions);
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
