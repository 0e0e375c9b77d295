//! Gateway mode: forwards requests matching the `[[routes]]` table to their upstream.
//!
//! A metered route resolves the session, reserves the quota cost (one atomic script that
//! also counts it as usage, so concurrent requests never overshoot), forwards, and settles
//! on the upstream's answer: a committing status keeps the reservation (nothing more to
//! write); any other status, a connection error or a timeout releases it. A refused
//! reservation never reaches the upstream. Bodies stream both ways; only the upstream's
//! response head is waited for, within the route's timeout.
//!
//! Metering is cancel-safe: hyper drops a request's handler when its client goes away
//! (disconnect, half-close), so reserve, forward and settle form one boxed flow that, should
//! its handler be dropped, finishes in a task of its own: it always ends kept or released,
//! and counts `client_gone` when no one was left to answer. What the upstream receives is
//! prepared by the `forwarded` module.
//!
//! Upstreams are plain HTTP/1.1 on the private network, reached through one pooled hyper
//! client. Upgrades (WebSocket) are not forwarded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::header;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use uuid::Uuid;

use super::body::Body;
use super::error::ApiError;
use super::forwarded::{prepare_request, prepare_response, Forwarding};
use super::quota_response::{answer_response, rate_limit_headers};
use super::request::{client_ip, current_session, is_trusted_proxy, named_sessions, Named};
use super::response::set_session_cookie;
use super::state::Api;
use crate::log_limit::Occasional;
use crate::model::decision::{QuotaAnswer, QuotaOutcome};
use crate::model::quota::Policy;
use crate::model::session::short_id;
use crate::routes::{Metering, MissingSession, Route};
use crate::telemetry;

/// A reservation taken for one request, settled once the upstream has answered.
struct Reservation<'a> {
    id: Uuid,
    policy: &'a Policy,
    /// What the reservation took (its cost), or would have taken (a shadow denial).
    answer: QuotaAnswer,
    /// The session was created for this request, so the response sets its cookie.
    created: bool,
}

/// Forwards one request along `route`. Never fails: errors become responses.
pub async fn forward(
    api: &Arc<Api>,
    route: &Arc<Route>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let response = if let Some(error) = unforwardable(request.headers()) {
        telemetry::proxy_request(&route.pattern, "rejected");
        error.into_response()
    } else if route.metering.is_some() {
        forward_metered(api.clone(), route.clone(), request, peer).await
    } else {
        forward_unmetered(api, route, request, peer)
            .await
            .unwrap_or_else(ApiError::into_response)
    };
    super::observe("proxy", &method, started, response.status().as_u16());
    response
}

/// A transfer coding other than `chunked` (`gzip, chunked`): hyper removes the chunking and
/// the next hop would get the coded bytes without the name of the coding (RFC 9112,
/// section 6.1, answers 501).
fn unforwardable(headers: &HeaderMap) -> Option<ApiError> {
    let foreign = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    foreign.then(|| ApiError::not_implemented("Transfer-Encoding other than chunked"))
}

async fn forward_unmetered(
    api: &Api,
    route: &Route,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let session = checked_session(api, request.headers()).await;
    match send(api, route, request, peer, session).await {
        Ok(response) => {
            telemetry::proxy_request(&route.pattern, "forwarded");
            Ok(response)
        }
        Err((outcome, error)) => {
            telemetry::proxy_request(&route.pattern, outcome);
            Err(error)
        }
    }
}

/// The live session an unmetered request names, if any. Such a route does not depend on
/// sessions, so a missing, malformed or unknown id, or Redis being unavailable, forwards the
/// request without one rather than refusing it.
async fn checked_session(api: &Api, headers: &HeaderMap) -> Option<Uuid> {
    let named = match named_sessions(headers, &api.browser.cookie.config.name) {
        Ok(Named::None) | Err(_) => return None,
        Ok(Named::One(id)) => vec![id],
        Ok(Named::Several(ids)) => ids,
    };
    match api.sessions.first_known(&named).await {
        Ok(live) => live,
        Err(error) => {
            tracing::debug!(%error, "cannot check the session of an unmetered request");
            None
        }
    }
}

/// Runs the metered flow so that a client that goes away can't cancel it between
/// reservation and settlement (see [`Detachable`]).
async fn forward_metered(
    api: Arc<Api>,
    route: Arc<Route>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let pattern = route.pattern.clone();
    let mut flow = Detachable {
        flow: Some(Box::pin(
            async move { meter(&api, &route, request, peer).await },
        )),
        pattern,
        started: false,
    };
    let (response, outcome) = std::future::poll_fn(|cx| flow.poll(cx)).await;
    telemetry::proxy_request(&flow.pattern, outcome);
    response
}

type Flow = Pin<Box<dyn Future<Output = (Response<Body>, &'static str)> + Send>>;

/// A metered flow that outlives its handler. It runs inline, in the handler's own task (no
/// spawn, no cross-thread wake-up on the common path); but if hyper drops the handler while
/// the flow is under way (the client disconnected or half-closed), the flow is handed to a
/// task of its own and finishes there: its reservation is still kept or released,
/// decided by the upstream's answer, and the outcome is counted as `client_gone`.
struct Detachable {
    flow: Option<Flow>,
    pattern: Arc<str>,
    /// Polled at least once: from then on something may be reserved or forwarded.
    started: bool,
}

impl Detachable {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<(Response<Body>, &'static str)> {
        self.started = true;
        let Some(flow) = self.flow.as_mut() else {
            // Awaited once, so never polled again after it finished.
            return Poll::Pending;
        };
        let finished = ready!(flow.as_mut().poll(cx));
        self.flow = None;
        Poll::Ready(finished)
    }
}

impl Drop for Detachable {
    fn drop(&mut self) {
        let Some(flow) = self.flow.take() else {
            return;
        };
        let pattern = self.pattern.clone();
        if !self.started {
            // Gone before anything was reserved: nothing to settle, no one to do work for.
            telemetry::proxy_request(&pattern, "client_gone");
            return;
        }
        // A flow that panicked must not be polled again; outside a runtime the process is
        // exiting, and a gateway that dies keeps the cost taken (the documented safe side).
        let runtime = tokio::runtime::Handle::try_current();
        if let (false, Ok(runtime)) = (std::thread::panicking(), runtime) {
            runtime.spawn(async move {
                flow.await;
                telemetry::proxy_request(&pattern, "client_gone");
            });
        }
    }
}

/// Reserves, forwards and settles; returns the response and its outcome for metrics.
async fn meter(
    api: &Api,
    route: &Route,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<Body>, &'static str) {
    let policy = route
        .metering
        .as_ref()
        .and_then(|metering| Some((metering, api.quotas.policy(&metering.operation)?)));
    let Some((metering, policy)) = policy else {
        // The route table is checked against the policies at start-up.
        tracing::error!(route = %route.pattern, "metered route without a known operation");
        return (ApiError::internal().into_response(), "rejected");
    };
    let reservation = match reserve(api, metering, policy, &request, peer).await {
        Ok(reservation) => reservation,
        Err(error) => {
            // Refused before forwarding: no usable session, a creation throttled, or Redis
            // unreachable.
            let outcome = match error.status() {
                StatusCode::TOO_MANY_REQUESTS => "denied",
                _ => "rejected",
            };
            return (error.into_response(), outcome);
        }
    };
    if reservation.answer.outcome == QuotaOutcome::Denied {
        let denial = answer_response(policy, &reservation.answer);
        return (with_session(api, denial, &reservation), "denied");
    }

    let id = reservation.id;
    match send(api, route, request, peer, Some(id)).await {
        Ok(mut response) if metering.commits(response.status()) => {
            let answer = &reservation.answer;
            let plan = answer.plan.as_deref();
            rate_limit_headers(response.headers_mut(), policy, plan, &answer.status);
            (with_session(api, response, &reservation), "committed")
        }
        Ok(response) => {
            release(api, &reservation).await;
            (with_session(api, response, &reservation), "refunded")
        }
        Err((outcome, error)) => {
            release(api, &reservation).await;
            (error.into_response(), outcome)
        }
    }
}

/// Finds the request's session (creating one when the route says so) and reserves the
/// route's cost (by default, that of the session's allowance).
async fn reserve<'a>(
    api: &Api,
    metering: &Metering,
    policy: &'a Policy,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Reservation<'a>, ApiError> {
    let cost = metering.cost;
    let current = current_session(api, request.headers()).await?;
    if let Some(id) = current {
        if let Some(answer) = api.quotas.reserve(id, policy, cost).await? {
            return Ok(Reservation {
                id,
                policy,
                answer,
                created: false,
            });
        }
    }
    if metering.missing_session == MissingSession::Reject {
        return Err(ApiError::session_not_found());
    }
    let origin = client_ip(request.headers(), peer.ip(), &api.intake.trusted_proxies);
    let (session, _) = api.sessions.create_or_get(None, None, origin).await?;
    let answer = api
        .quotas
        .reserve(session.id, policy, cost)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    Ok(Reservation {
        id: session.id,
        policy,
        answer,
        created: true,
    })
}

async fn release(api: &Api, reservation: &Reservation<'_>) {
    let Reservation {
        id, policy, answer, ..
    } = reservation;
    if let Err(error) = api.quotas.release(*id, policy, answer).await {
        // The cost stays taken until the window resets: the limit is never overshot.
        tracing::warn!(%error, session = %short_id(id), "could not release a reservation");
    }
}

fn with_session(
    api: &Api,
    mut response: Response<Body>,
    reservation: &Reservation<'_>,
) -> Response<Body> {
    if reservation.created {
        set_session_cookie(&mut response, &reservation.id, &api.browser.cookie);
    }
    response
}

/// Sends the request upstream and returns its response head with the body streaming.
/// The error names the outcome for metrics.
async fn send(
    api: &Api,
    route: &Route,
    request: Request<Incoming>,
    peer: SocketAddr,
    session: Option<Uuid>,
) -> Result<Response<Body>, (&'static str, ApiError)> {
    let (mut parts, body) = request.into_parts();
    let root = PathAndQuery::from_static("/");
    // Canonical already (`http::api` made it so before routing): what was matched is sent.
    let path_and_query = parts.uri.path_and_query().unwrap_or(&root);
    parts.uri = route.upstream.uri(path_and_query).map_err(|error| {
        tracing::warn!(%error, "cannot build the upstream URI");
        ("upstream_error", ApiError::bad_gateway())
    })?;
    parts.version = http::Version::HTTP_11;
    let peer_ip = peer.ip().to_canonical();
    let forwarding = Forwarding {
        peer: peer_ip,
        trusted: is_trusted_proxy(&api.intake.trusted_proxies, peer_ip),
        session,
        cookie_name: &api.browser.cookie.config.name,
    };
    prepare_request(&mut parts.headers, &forwarding);
    debug_assert_ne!(
        parts.method,
        Method::CONNECT,
        "the route table refuses CONNECT"
    );
    let upstream = Request::from_parts(parts, body);
    match tokio::time::timeout(route.timeout, api.forwarding.upstreams.request(upstream)).await {
        Err(_) => Err(("upstream_timeout", ApiError::gateway_timeout())),
        Ok(Err(error)) => {
            static FAILED: Occasional = Occasional::new();
            if let Some(held_back) = FAILED.admit() {
                tracing::warn!(%error, route = %route.pattern, held_back, "upstream request failed");
            }
            Err(("upstream_error", ApiError::bad_gateway()))
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            prepare_response(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::Upstream(body)))
        }
    }
}
