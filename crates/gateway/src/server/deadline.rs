//! Write deadline: the client connection's byte pipe, with a stall deadline on
//! writes. A tab whose browser stops reading would otherwise hold its slot,
//! its buffers and its subscription forever; after `write_timeout` without a
//! single byte accepted by the socket the connection fails and everything it
//! held is released. It never looks at the bytes and never touches reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An I/O object whose writes fail with [`io::ErrorKind::TimedOut`] once the
/// peer has accepted no bytes for `limit`. Progress of any size resets the
/// clock, so a slow but moving reader is never cut.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    // Whether `timer` measures a stall in progress.
    armed: bool,
}

impl<S> WriteDeadline<S> {
    /// Wrap `inner`; `limit` is how long a write may make no progress.
    pub fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// Called when the inner write made no progress: start (or keep) the
    /// stall clock and fail once it runs out. Polling the timer registers the
    /// task's waker, so the connection wakes up to fail even if the socket
    /// never becomes writable again.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
        ready!(self.timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer accepted no bytes within the write timeout",
        )))
    }

    fn progressed<T>(&mut self, r: io::Result<T>) -> Poll<io::Result<T>> {
        self.armed = false;
        Poll::Ready(r)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.stalled(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_is_cut_after_the_limit_not_before() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(near, LIMIT);
        // Fill the pipe; the far end reads nothing.
        w.write_all(&[7; 64]).await.expect("fits");
        let started = Instant::now();
        let err = w.write_all(&[7; 1]).await.expect_err("stall is cut");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
        // Nothing was lost from what the peer did accept.
        let mut got = [0u8; 64];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [7; 64]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_reader_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, LIMIT);
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = [0u8; 8];
            while total < 1024 {
                // Each read comes just inside the limit.
                tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
                total += far.read(&mut buf).await.expect("read");
            }
            total
        });
        let started = Instant::now();
        w.write_all(&[1; 1024]).await.expect("never cut");
        assert!(started.elapsed() > LIMIT * 10, "the reader really was slow");
        assert!(reader.await.expect("reader") >= 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_clock() {
        let (near, mut far) = tokio::io::duplex(8);
        let mut w = WriteDeadline::new(near, LIMIT);
        w.write_all(&[1; 8]).await.expect("fits");
        let writer = tokio::spawn(async move {
            let r = w.write_all(&[2; 8]).await;
            (r, w)
        });
        // Stall for most of the limit, then drain: the clock restarts.
        tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
        let mut buf = [0u8; 8];
        far.read_exact(&mut buf).await.expect("drain");
        let (r, mut w) = writer.await.expect("writer");
        r.expect("not cut: progress came in time");
        let started = Instant::now();
        let err = w
            .write_all(&[3; 1])
            .await
            .expect_err("a fresh stall is cut");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }
}
