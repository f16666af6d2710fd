//! The `text/event-stream` response body of one `GET /api/v1/events`.
//!
//! Owns the per-stream timing: replay first, then live events, keepalive
//! comments when idle, silence while stalled, EOF when dropped or cut off.
//! It must never block or lock across a poll, and all timing uses
//! `tokio::time` so a paused test clock drives it. Dropping the body (client
//! gone, connection closed) always unsubscribes and uncounts it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::feed::{Event, UserFeed};
use crate::state::State;

const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Live events already queued are sent together up to this size, so a burst
/// costs one write instead of one per event.
const MAX_BATCH: usize = 64 * 1024;

/// One open events stream.
pub struct EventStream {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Event>,
    dropped: Pin<Box<WaitForCancellationFutureOwned>>,
    keepalive_every: Duration,
    keepalive: Option<Pin<Box<Sleep>>>,
    stall: Option<Pin<Box<Sleep>>>,
    done: bool,
    guard: Guard,
}

/// Undoes the subscription and the open count exactly once, however the
/// stream ends.
struct Guard {
    state: Arc<State>,
    user: String,
    feed: Arc<UserFeed>,
    sub_id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.feed.unsubscribe(self.sub_id);
        self.state.stream_closed(&self.user);
    }
}

impl EventStream {
    /// Subscribes `user` (resuming after `last_event_id`) and counts the
    /// stream as open.
    pub fn open(state: &Arc<State>, user: &str, last_event_id: Option<&str>) -> EventStream {
        // The token is taken before subscribing: a drop or restart racing with
        // this open then ends the new stream rather than missing it.
        let (feed, drop_token) = state.current();
        let sub = feed.subscribe(user, last_event_id);
        state.stream_opened(user);
        let keepalive_every = state.keepalive;
        EventStream {
            first: sub.first,
            rx: sub.rx,
            dropped: Box::pin(drop_token.cancelled_owned()),
            keepalive_every,
            keepalive: (!keepalive_every.is_zero())
                .then(|| Box::pin(tokio::time::sleep(keepalive_every))),
            stall: None,
            done: false,
            guard: Guard {
                state: state.clone(),
                user: user.to_owned(),
                feed: sub.feed,
                sub_id: sub.sub_id,
            },
        }
    }

    fn sent_something(&mut self) {
        if let Some(k) = &mut self.keepalive {
            k.as_mut().reset(Instant::now() + self.keepalive_every);
        }
    }

    /// Appends whatever else is already queued to `first`, up to a batch.
    fn batch(&mut self, first: Bytes) -> Bytes {
        let Ok(next) = self.rx.try_recv() else {
            return first;
        };
        let mut buf = BytesMut::with_capacity(first.len() + next.frame.len());
        buf.extend_from_slice(&first);
        buf.extend_from_slice(&next.frame);
        while buf.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(ev) => buf.extend_from_slice(&ev.frame),
                Err(_) => break,
            }
        }
        buf.freeze()
    }

    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.done = true;
        Poll::Ready(None)
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.dropped.as_mut().poll(cx).is_ready() {
            return this.finish();
        }

        if let Some(until) = this.guard.state.stalled_until() {
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if stall.deadline() != until {
                stall.as_mut().reset(until);
            }
            if stall.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }

        if let Some(first) = this.first.take() {
            let out = this.batch(first);
            this.sent_something();
            return Poll::Ready(Some(Ok(Frame::data(out))));
        }

        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                let out = this.batch(ev.frame);
                this.sent_something();
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            // The feed dropped our sender: we fell behind (or the epoch is
            // gone). End cleanly so the client resumes by Last-Event-ID.
            Poll::Ready(None) => return this.finish(),
            Poll::Pending => {}
        }

        if let Some(k) = &mut this.keepalive
            && k.as_mut().poll(cx).is_ready()
        {
            this.sent_something();
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
