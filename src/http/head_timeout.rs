//! The request-head deadline of a connection, kept apart from its keep-alive idle time.
//!
//! hyper's `header_read_timeout` starts when hyper begins to wait for a request head, so one
//! number would bound both how long a connection may sit idle between requests and how long
//! a head may take to arrive. Those want different values: a load balancer keeps idle
//! connections for 60 s and more and must not find them closed under it (the classic source
//! of sporadic 502s), while a slowloris client must be cut seconds after its first byte. So
//! hyper's timeout is set to the idle time, and [`HeadTimeout`] cuts a connection whose
//! request head is not complete `limit` after its first byte.
//!
//! It sees bytes only. A head begins with the first byte read after a response was written
//! (or the connection opened) and ends at the first empty line. Requests that hyper reads
//! ahead (pipelining) are bounded by the idle time alone, unless hyper gives them back
//! (`given_back`: they are then read again first, and a head they begin is timed from then).
//! Whether a next head is awaited is shared with the connection's driver, which parks the
//! connection when hyper is idle on it (`connection`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's stream, cut when a request head takes longer than `limit`.
pub struct HeadTimeout<S> {
    inner: S,
    limit: Duration,
    head: Head,
    /// Whether `head` is `Awaited`, for whoever holds a handle from [`HeadTimeout::awaiting`].
    awaiting: Arc<AtomicBool>,
    /// Bytes read ahead by an earlier reader and given back: read first.
    given_back: Bytes,
    /// Armed only when a read in the middle of a head has to wait: most heads come whole in
    /// one read and never need it.
    timer: Option<Pin<Box<Sleep>>>,
}

enum Head {
    /// Between requests, or before the first: hyper's idle timeout applies.
    Awaited,
    /// A head began at `since`; `newlines` line feeds in a row end the bytes so far ('\r' is
    /// skipped, so both "\r\n\r\n" and "\n\n" end a head).
    Reading { since: Instant, newlines: u8 },
    /// The head is in; the body and the response follow.
    Complete,
}

impl<S> HeadTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        HeadTimeout {
            inner,
            limit,
            head: Head::Awaited,
            awaiting: Arc::new(AtomicBool::new(true)),
            given_back: Bytes::new(),
            timer: None,
        }
    }

    /// A handle on whether the next byte read would begin a new request head (a response was
    /// written since the last head, or none has come yet).
    pub fn awaiting(&self) -> Arc<AtomicBool> {
        self.awaiting.clone()
    }

    fn set(&mut self, head: Head) {
        self.awaiting
            .store(matches!(head, Head::Awaited), Ordering::Relaxed);
        self.head = head;
    }

    /// The stream it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Takes back bytes an earlier reader read ahead, to be read again first, and follows
    /// the head through them as if they were read now; true if they hold a whole head.
    pub fn given_back(&mut self, bytes: Bytes) -> bool {
        self.saw(&bytes);
        self.given_back = bytes;
        matches!(self.head, Head::Complete)
    }

    /// When the head under way must be complete, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        match self.head {
            Head::Reading { since, .. } => Some(since + self.limit),
            _ => None,
        }
    }

    /// Follows the head through bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (since, mut newlines) = match self.head {
            Head::Complete => return,
            Head::Awaited => (Instant::now(), 0),
            Head::Reading { since, newlines } => (since, newlines),
        };
        for &byte in bytes {
            match byte {
                b'\n' => newlines += 1,
                b'\r' => {}
                _ => newlines = 0,
            }
            if newlines == 2 {
                self.set(Head::Complete);
                return;
            }
        }
        self.set(Head::Reading { since, newlines });
    }

    /// A response is being written: the next byte read begins the next head. An interim
    /// `100 Continue` is not the response: the body it invites is still to come.
    fn wrote(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && !bytes.starts_with(b"HTTP/1.1 100 ") {
            self.set(Head::Awaited);
        }
    }

    /// With a head under way and nothing to read: ready with an error once its time is up.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Head::Reading { since, .. } = self.head else {
            return Poll::Pending;
        };
        let deadline = since + self.limit;
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not complete within the header read timeout",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.given_back.is_empty() {
            // Already followed by `given_back`.
            let n = this.given_back.len().min(buf.remaining());
            buf.put_slice(&this.given_back[..n]);
            this.given_back.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if written > 0 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            this.wrote(first);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(chunks: &[&[u8]]) -> HeadTimeout<()> {
        let mut stream = HeadTimeout::new((), Duration::from_secs(1));
        for chunk in chunks {
            stream.saw(chunk);
        }
        stream
    }

    #[tokio::test]
    async fn a_head_ends_at_its_first_empty_line_however_it_is_split() {
        let complete = |s: &HeadTimeout<()>| matches!(s.head, Head::Complete);
        let reading = |s: &HeadTimeout<()>| matches!(s.head, Head::Reading { .. });
        assert!(complete(&follow(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])));
        assert!(complete(&follow(&[
            b"GET / HTTP/1.1\r\nHost: a\r",
            b"\n",
            b"\r\n"
        ])));
        assert!(complete(&follow(&[b"GET / HTTP/1.1\nHost: a\n\n"])));
        assert!(reading(&follow(&[b"GET / HTTP/1.1\r\nHost: a\r\n"])));
        assert!(reading(&follow(&[
            b"GET / HTTP/1.1\r\n",
            b"X: \r",
            b"y\r\n"
        ])));
        assert!(matches!(follow(&[]).head, Head::Awaited));
    }

    #[tokio::test]
    async fn a_response_awaits_the_next_head_but_100_continue_does_not() {
        let mut stream = follow(&[b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"]);
        stream.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(matches!(stream.head, Head::Complete));
        stream.saw(b"body bytes without an empty line");
        assert!(matches!(stream.head, Head::Complete));
        stream.wrote(b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(stream.head, Head::Awaited));
        stream.saw(b"G");
        assert!(matches!(stream.head, Head::Reading { .. }));
    }
}
