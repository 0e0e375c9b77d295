//! One connection's life: served by hyper while requests come, parked without buffers once
//! it has been idle for a moment.
//!
//! hyper keeps a read buffer of at least 8 KiB and a write buffer of 8 KiB for every
//! connection it serves, idle or not: 10,000 idle keep-alive connections held 150-250 MiB,
//! and a burst of them spent most of its time having the kernel zero fresh pages. Here a
//! connection is taken back from hyper once hyper has been idle on it (every response
//! written, and nothing more to read) for [`LINGER`], which hyper allows without a word to
//! the client, and waits for its next request as a bare socket; the next request's first
//! byte hands it to a new hyper connection. A busy connection stays with hyper: building a
//! hyper connection and its buffers for every request was a fifth of a cached read's
//! instructions. After a request with a body (its handler may have left some of it unread)
//! or with `Connection: close`, the connection stays with hyper until its next request.
//!
//! It owns the idle (keep-alive) timeout and graceful shutdown of a connection; the request
//! head deadline is [`HeadTimeout`]'s, and what a request means is the service's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::head_timeout::HeadTimeout;

/// How long a connection may wait for its next request, and a request head may take.
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub keep_alive: Duration,
    pub head: Duration,
}

/// Requests started and finished (response written or dropped) on one connection.
#[derive(Clone, Default)]
pub struct Activity(Arc<Counts>);

#[derive(Default)]
struct Counts {
    started: AtomicU64,
    finished: AtomicU64,
    /// Whether the latest request leaves hyper idle once answered: no body (one its handler
    /// left unread would follow), and no `Connection: close`.
    parkable: AtomicBool,
}

impl Activity {
    /// A request began; the guard marks it finished when dropped with its response body.
    pub fn start(&self, parkable: bool) -> Finished {
        self.0.parkable.store(parkable, Ordering::Relaxed);
        self.0.started.fetch_add(1, Ordering::Relaxed);
        Finished(self.0.clone())
    }

    fn parkable(&self) -> bool {
        self.0.parkable.load(Ordering::Relaxed)
    }

    fn started(&self) -> u64 {
        self.0.started.load(Ordering::Relaxed)
    }

    /// Whether every request started has finished (its response body written or dropped).
    fn all_finished(&self) -> bool {
        self.0.finished.load(Ordering::Relaxed) == self.started()
    }
}

/// Marks a request finished when dropped.
pub struct Finished(Arc<Counts>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that marks its request finished when hyper is done with it.
pub struct Tracked<B> {
    body: B,
    _finished: Finished,
}

impl<B> Tracked<B> {
    pub fn new(body: B, finished: Finished) -> Self {
        Tracked {
            body,
            _finished: finished,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How long hyper keeps an idle connection, and its buffers, before it is parked: a client
/// sending request after request never pays for a parking, and a burst of new connections
/// holds few buffers at once. A connection is parked after one to two of these.
pub const LINGER: Duration = Duration::from_millis(100);

/// Serves `stream` with `service` until the client leaves, the idle timeout passes, or
/// `shutdown` turns true (then the request under way, if any, is finished first);
/// `parked_gauge` counts the listener's parked connections.
pub async fn run<S>(
    stream: TcpStream,
    http: &http1::Builder,
    service: S,
    activity: Activity,
    parked_gauge: metrics::Gauge,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: HttpService<Incoming, Error = Infallible> + Clone + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut socket = HeadTimeout::new(stream, timeouts.head);
    let awaiting = socket.awaiting();
    let mut idle_since = Instant::now();
    // One timer for the connection's life, re-armed only when it fires, never per request:
    // hyper's idle connection is parked (or, if it cannot be, closed at the keep-alive
    // timeout) when the timer finds no request started since it was armed. Made when first
    // armed: most connections never linger, and a parked one is kept small.
    let mut idle_timer: Option<Pin<Box<Sleep>>> = None;
    // A new connection waits for its first request as a parked one does for its next.
    let mut ended = Ended::Parked;
    loop {
        if ended != Ended::HeadGivenBack {
            parked_gauge.increment(1.0);
            // The start of a head given back must be complete by the head deadline.
            let idle = idle_since + timeouts.keep_alive;
            let until = socket.deadline().map_or(idle, |head| head.min(idle));
            let readable = socket.get_ref().readable();
            let next = tokio::select! {
                waited = tokio::time::timeout_at(until, readable) => matches!(waited, Ok(Ok(()))),
                _ = shutdown.wait_for(|stop| *stop) => false,
            };
            parked_gauge.decrement(1.0);
            if !next {
                // Idle past the keep-alive timeout, the socket failed, or shutdown: close.
                return Ok(());
            }
        }
        let started = activity.started();
        // Boxed: the hyper connection, with its buffers, lives only while requests come; a
        // parked connection's task holds none of it.
        let mut connection = Box::new(http.serve_connection(TokioIo::new(socket), service.clone()));
        ended = {
            let mut stop = std::pin::pin!(shutdown.wait_for(|stop| *stop));
            let (mut stopping, mut ended) = (false, Ended::Closed);
            // When the idle timer was armed, and how many requests had started then.
            let mut armed: Option<(Instant, u64)> = None;
            std::future::poll_fn(|cx| {
                if !stopping && stop.as_mut().poll(cx).is_ready() {
                    // Finish the request under way; hyper closes after its response.
                    Pin::new(&mut *connection).graceful_shutdown();
                    stopping = true;
                }
                let polled = connection.poll_without_shutdown(cx);
                if polled.is_ready() || stopping || !awaiting.load(Ordering::Relaxed) {
                    return polled;
                }
                // Waiting for a next request that has not begun:
                let now_started = activity.started();
                if now_started == started {
                    // No request yet, nor a byte of one: the socket's readiness was stale.
                    // Nothing was read or written, so the socket can be taken back as is.
                    ended = Ended::NothingRead;
                    return Poll::Ready(Ok(()));
                }
                if !activity.all_finished() {
                    return polled;
                }
                let idle_from = match armed {
                    // A connection's first request: a client that made one seldom makes
                    // another at once (and a burst of new connections would each hold
                    // buffers while lingering), so it is parked without lingering.
                    None if now_started == 1 && activity.parkable() => Instant::now(),
                    None => {
                        let now = Instant::now();
                        armed = Some((now, now_started));
                        arm(&mut idle_timer, now + LINGER, cx);
                        return polled;
                    }
                    Some((armed_at, armed_started)) => {
                        let timer = idle_timer.as_mut();
                        if timer.is_some_and(|timer| timer.as_mut().poll(cx).is_pending()) {
                            return polled;
                        }
                        let now = Instant::now();
                        if armed_started != now_started {
                            // Requests came since it was armed: not idle that long.
                            armed = Some((now, now_started));
                            arm(&mut idle_timer, now + LINGER, cx);
                            return polled;
                        }
                        if !activity.parkable() {
                            // A request with a body came last, which its handler may have
                            // left unread: the connection stays with hyper until its next
                            // request or the keep-alive timeout.
                            let deadline = armed_at + timeouts.keep_alive;
                            if now >= deadline {
                                return Poll::Ready(Ok(()));
                            }
                            arm(&mut idle_timer, deadline, cx);
                            return polled;
                        }
                        armed_at
                    }
                };
                // Every response written, and none of a body still to come: hyper drops its
                // state and lets the socket go, unannounced (or, with a response still
                // flushing, once it is out).
                Pin::new(&mut *connection).graceful_shutdown();
                stopping = true;
                idle_since = idle_from;
                ended = Ended::Parked;
                connection.poll_without_shutdown(cx)
            })
            .await?;
            ended
        };
        // Ended by the client, by an error, by the keep-alive timeout or by shutdown: nothing
        // to park.
        if ended == Ended::Closed || *shutdown.borrow() {
            return Ok(());
        }
        let parts = connection.into_parts();
        socket = parts.io.into_inner();
        if ended == Ended::Parked {
            // Bytes hyper read ahead (pipelined) go first: served at once if they hold a
            // whole head, else parked until the rest comes, within the head deadline.
            // Copied: `read_buf` is a view of hyper's whole read buffer, and would keep it
            // alive.
            if socket.given_back(Bytes::copy_from_slice(&parts.read_buf)) {
                ended = Ended::HeadGivenBack;
            }
        }
    }
}

/// Sets `timer` to fire at `at`, waking the task polled with `cx`.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) {
    let timer = match timer {
        Some(timer) => {
            timer.as_mut().reset(at);
            timer
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    let _ = timer.as_mut().poll(cx);
}

/// How a hyper connection ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client left, an error, or shutdown: the connection is over.
    Closed,
    /// Idle after its requests: the socket is back, parked.
    Parked,
    /// Idle after its requests, with a whole pipelined head already read: served at once.
    HeadGivenBack,
    /// Woken without a byte to read: the socket is back, still waiting for its request.
    NothingRead,
}
