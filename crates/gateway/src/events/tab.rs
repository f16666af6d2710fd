//! Tab: one browser tab's SSE response body. Owns the tab's position in its
//! channel (replay, then live), its keepalive timer and its lag handling.
//! It only forwards bytes the channel encoded; it never re-encodes a trigger
//! and never talks to the backend.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, StreamBody};
use tokio_util::sync::CancellationToken;

use crate::body::{Body, BoxError};
use crate::events::channel::{Attach, Follower, MAX_BATCH, RecvError};
use crate::events::hub::Subscription;
use crate::metrics::{Metrics, ResyncCause};
use crate::trigger;
use crate::watermark::TabMarkGuard;

/// How a tab stream behaves.
#[derive(Clone, Debug)]
pub struct TabSettings {
    /// Idle time before a keepalive comment.
    pub keepalive: Duration,
    /// `retry:` hint sent first, in milliseconds (jitter already applied).
    pub retry_ms: u64,
    /// Where deliveries and lag resyncs are counted.
    pub metrics: Metrics,
}

fn keepalive_frame() -> Bytes {
    static FRAME: OnceLock<Bytes> = OnceLock::new();
    FRAME
        .get_or_init(|| ssemux_sse::encode_comment("keepalive"))
        .clone()
}

/// The `logout` sent to a tab whose own session was revoked (no id: it is
/// not part of the channel's sequence).
fn logout_frame() -> Bytes {
    static FRAME: OnceLock<Bytes> = OnceLock::new();
    FRAME
        .get_or_init(|| {
            ssemux_sse::encode_event(None, Some(trigger::LOGOUT), "1").unwrap_or_default()
        })
        .clone()
}

/// What the body keeps alive for as long as the tab is connected.
pub struct TabHold {
    /// The tab's hold on its channel.
    pub subscription: Subscription,
    /// The tab's watermark bookkeeping, if any.
    pub mark: Option<TabMarkGuard>,
}

struct TabState {
    pending: VecDeque<Bytes>,
    // The channel's revocation count this tab has looked at.
    revocations_seen: u64,
    // A `logout` was queued: the stream ends once it is written.
    ending: bool,
    rx: Follower,
    settings: TabSettings,
    shutdown: CancellationToken,
    // Asked whether its credential was revoked; held for its Drop, which
    // unsubscribes and clears the active peer.
    hold: TabHold,
}

/// Build the tab's response body from its attachment to the channel.
pub fn stream(
    hold: TabHold,
    attach: Attach,
    settings: TabSettings,
    shutdown: CancellationToken,
) -> Body {
    let mut pending = VecDeque::with_capacity(attach.replay.len() + 2);
    pending.push_back(ssemux_sse::encode_retry(settings.retry_ms));
    pending.extend(attach.position);
    pending.extend(attach.down);
    if let Some((frame, cause)) = attach.resync {
        settings.metrics.resync(cause);
        pending.push_back(frame);
    }
    settings
        .metrics
        .triggers_delivered(attach.replay.len() as u64);
    pending.extend(attach.replay);
    let state = TabState {
        revocations_seen: hold.subscription.channel().revocations(),
        ending: false,
        pending,
        rx: attach.rx,
        settings,
        shutdown,
        hold,
    };
    let frames = futures_util::stream::unfold(state, next_chunk)
        .map(|b| Ok::<_, BoxError>(BodyFrame::data(b)));
    StreamBody::new(frames).boxed_unsync()
}

async fn next_chunk(mut st: TabState) -> Option<(Bytes, TabState)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((b, st));
        }
        if st.ending || st.rx.ended() {
            return None;
        }
        if st
            .hold
            .subscription
            .credential_revoked(&mut st.revocations_seen)
        {
            // This tab's session was revoked at the backend (the user's
            // other sessions go on): it is logged out alone.
            st.ending = true;
            return Some((logout_frame(), st));
        }
        // A busy tab must see shutdown too, not only an idle one.
        if st.shutdown.is_cancelled() {
            return None;
        }
        match st.rx.take_into(&mut st.pending, MAX_BATCH) {
            Ok(0) => {}
            Ok(n) => {
                st.settings.metrics.triggers_delivered(n as u64);
                st.settings
                    .metrics
                    .triggers_coalesced(st.rx.take_coalesced());
                continue;
            }
            Err(RecvError::Lagged(n)) => {
                st.settings.metrics.resync(ResyncCause::Lag);
                let lag = st.hold.subscription.channel().signals().lag_frame();
                let Some(frame) = lag else {
                    // `on_gap = "end"`: the client's reconnect refreshes it.
                    tracing::debug!(missed = n, "tab fell behind; ending its stream");
                    return None;
                };
                tracing::debug!(missed = n, "tab fell behind; sending resync");
                return Some((frame, st));
            }
            Err(RecvError::Closed) => return None,
        }
        let woke = tokio::select! {
            biased;
            _ = st.shutdown.cancelled() => return None,
            r = tokio::time::timeout(st.settings.keepalive, st.rx.changed()) => r,
        };
        if woke.is_err() {
            return Some((keepalive_frame(), st));
        }
    }
}
