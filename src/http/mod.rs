//! HTTP: listeners, connections, and the two routers that speak HTTP.
//!
//! [`serve`] owns the accept loop, graceful shutdown and panic containment for any handler;
//! `connection` owns one connection's life (parked without buffers between requests, the
//! keep-alive timeout), `head_timeout` the request-head deadline. [`api`] is the public
//! session API (with the internal quota API for backends under `/internal/v1/` unless
//! [`internal`] has a listener of its own), [`proxy`] forwards gateway-mode routes to their
//! upstreams (with the request head `forwarded` prepares), and [`admin`] serves the operator
//! endpoints. Handlers translate between HTTP and the domain modules; they never talk to
//! Redis directly.

pub mod admin;
pub mod api;
mod body;
mod connection;
mod cors;
mod error;
mod forwarded;
mod head_timeout;
pub mod internal;
mod json_out;
mod operator;
pub mod proxy;
mod quota_response;
pub mod request;
mod request_id;
mod response;
pub mod state;

pub use response::SessionCookie;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::telemetry;
use connection::{Activity, Timeouts, Tracked};

pub use error::ApiError;

pub use body::Body;

/// Connection-level limits shared by both listeners.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time a request head may take from its first byte.
    pub header_read_timeout: Duration,
    /// Time a connection may wait for its next request (or its first) before it is closed.
    pub keep_alive_timeout: Duration,
    /// Largest request head (request line and headers) accepted; past it, 431.
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

const MIN_BUFFER: usize = 8 * 1024;

/// Logs one line per request (debug) and records its metrics, under the route template.
pub(crate) fn observe(
    route: &'static str,
    method: &http::Method,
    started: std::time::Instant,
    status: u16,
) {
    let elapsed = started.elapsed();
    tracing::debug!(%method, route, status, micros = elapsed.as_micros() as u64, "request");
    telemetry::http_request(route, telemetry::method_label(method), status, elapsed);
}

/// Counts a request in flight for as long as it lives (dropped on completion or cancel).
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> InFlight {
        telemetry::in_flight(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        telemetry::in_flight(-1.0);
    }
}

/// Serves `handler` on `listener` (called `name` in metrics) until `shutdown` resolves, then
/// stops accepting and gives in-flight requests up to `limits.shutdown_grace` to finish.
/// Every request gets an id ([`request_id`]): taken from `trusted_proxies`, else generated.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: ConnectionLimits,
    trusted_proxies: Arc<[IpNet]>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut http = http1::Builder::new();
    // hyper's "header read" clock would arm a timer for every request; `connection` times
    // idle connections and HeadTimeout bounds a head.
    http.header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        // The read buffer is where an unfinished head waits: bounded by the same limit, an
        // oversized head is refused as it arrives instead of being held until the timeout.
        // (hyper refuses a buffer under 8 KiB.)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUFFER));
    let http = Arc::new(http);
    let timeouts = Timeouts {
        keep_alive: limits.keep_alive_timeout,
        head: limits.header_read_timeout,
    };
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a clone; `recv` returns `None` once all have ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    // Resolved once, and set from the start, so that "none parked" reads 0, not absent.
    let parked = telemetry::connections_parked(name);
    parked.set(0.0);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let trusted = request::is_trusted_proxy(&trusted_proxies, peer.ip());
        let activity = Activity::default();
        let counting = activity.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            // Parked after its answer only without a body and without `Connection: close`.
            let parkable = hyper::body::Body::is_end_stream(request.body())
                && request.version() == http::Version::HTTP_11
                && !request
                    .headers()
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
            let finished = counting.start(parkable);
            let method = telemetry::method_label(request.method());
            let id = request_id::of(request.headers(), trusted);
            // Handlers see the id too: gateway mode forwards it upstream.
            request.headers_mut().insert(request_id::HEADER, id.clone());
            let span = tracing::info_span!("request", id = id.to_str().unwrap_or_default());
            // Boxed where it is made: the handler's future is kilobytes, and each layer
            // around it (panic guard, span, this closure's block, hyper's slot in every
            // connection) would otherwise move it again.
            let handling =
                contain_panics(Box::pin(handler(request, peer)), method).instrument(span);
            Box::pin(async move {
                let mut response = handling.await;
                response.headers_mut().insert(request_id::HEADER, id);
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, finished)))
            })
        });
        let (http, stopping, alive) = (http.clone(), stopping.clone(), alive.clone());
        let parked = parked.clone();
        telemetry::connection(name, 1.0);
        tokio::spawn(async move {
            let served =
                connection::run(stream, &http, service, activity, parked, timeouts, stopping);
            if let Err(error) = served.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            telemetry::connection(name, -1.0);
            drop(alive);
        });
    }

    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    tokio::select! {
        _ = all_ended.recv() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; dropping the remaining connections");
        }
    }
}

/// A panic in a handler is a bug; the client gets a plain 500 without internals, the
/// connection stays usable, and the 500 is counted (under the route `panicked`: the handler
/// that would have named the route is gone) so that error-ratio alerts see it.
async fn contain_panics(
    handler: impl Future<Output = Response<Body>>,
    method: &'static str,
) -> Response<Body> {
    let started = std::time::Instant::now();
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(method, "request handler panicked");
            telemetry::http_request("panicked", method, 500, started.elapsed());
            ApiError::internal().into_response()
        }
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_a_plain_500_and_is_counted() {
        telemetry::recorder();
        let response = contain_panics(async { panic!("a bug") }, "PATCH").await;
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let exposition = telemetry::render();
        assert!(
            exposition.lines().any(|line| line.starts_with(
                "sessiongate_http_requests_total{route=\"panicked\",method=\"PATCH\",status=\"500\"} "
            )),
            "{exposition}"
        );
    }
}
