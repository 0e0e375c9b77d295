//! Gateway mode: forwards requests matching the `[[routes]]` table to their upstream.
//!
//! A metered route resolves the session, reserves the quota cost (one atomic script, so
//! concurrent requests never overshoot), forwards, and settles on the upstream's answer:
//! commit on a committing status, release on any other status, a connection error or a
//! timeout. A refused reservation never reaches the upstream. Bodies stream both ways;
//! only the upstream's response head is waited for, within the route's timeout.
//!
//! Upstreams are plain HTTP/1.1 on the private network, reached through one pooled hyper
//! client. Upgrades (WebSocket) are not forwarded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use uuid::Uuid;

use super::api::Api;
use super::error::ApiError;
use super::internal::{answer_response, rate_limit_headers};
use super::request::{client_ip, current_session, SESSION_HEADER};
use super::response::set_session_cookie;
use super::Body;
use crate::quota::Policy;
use crate::routes::{Metering, MissingSession, Route};
use crate::store::{QuotaAnswer, QuotaOutcome};
use crate::telemetry;

/// The pooled client every route shares.
pub struct Upstreams {
    client: Client<HttpConnector, Incoming>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Upstreams { client }
    }
}

/// A reservation taken for one request, settled once the upstream has answered.
struct Reservation<'a> {
    id: Uuid,
    policy: &'a Policy,
    cost: u64,
    answer: QuotaAnswer,
    /// The session was created for this request, so the response sets its cookie.
    created: bool,
}

/// Forwards one request along `route`. Never fails: errors become responses.
pub async fn forward(
    api: &Api,
    route: &Route,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let response = match &route.metering {
        None => forward_unmetered(api, route, request, peer).await,
        Some(metering) => forward_metered(api, route, metering, request, peer).await,
    };
    let response = response.unwrap_or_else(ApiError::into_response);
    super::observe("proxy", &method, started, response.status().as_u16());
    response
}

async fn forward_unmetered(
    api: &Api,
    route: &Route,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    match send(api, route, request, peer, None).await {
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

async fn forward_metered(
    api: &Api,
    route: &Route,
    metering: &Metering,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let Some(policy) = api.quotas.policy(&metering.operation) else {
        // The route table is checked against the policies at start-up.
        tracing::error!(operation = %metering.operation, "route names an unknown operation");
        return Err(ApiError::internal());
    };
    let cost = metering.cost.unwrap_or(policy.default_cost);
    let reservation = match reserve(api, metering, policy, cost, &request, peer).await {
        Ok(reservation) => reservation,
        Err(error) => {
            // Refused before forwarding: no usable session, a creation throttled, or Redis
            // unreachable.
            let outcome = match error.status() {
                StatusCode::TOO_MANY_REQUESTS => "denied",
                _ => "rejected",
            };
            telemetry::proxy_request(&route.pattern, outcome);
            return Err(error);
        }
    };
    if reservation.answer.outcome == QuotaOutcome::Denied {
        telemetry::proxy_request(&route.pattern, "denied");
        return Ok(with_session(
            api,
            answer_response(policy, &reservation.answer),
            &reservation,
        ));
    }

    let id = reservation.id;
    match send(api, route, request, peer, Some(&id)).await {
        Ok(mut response) if metering.commits(response.status()) => {
            if let Err(error) = api.quotas.commit(id, policy, cost).await {
                // The work is done and its answer is on the way; the window already holds
                // the cost, so only the usage counter misses this request.
                tracing::warn!(%error, %id, "could not commit a reservation");
            }
            telemetry::proxy_request(&route.pattern, "committed");
            rate_limit_headers(response.headers_mut(), policy, &reservation.answer.status);
            Ok(with_session(api, response, &reservation))
        }
        Ok(response) => {
            release(api, &reservation).await;
            telemetry::proxy_request(&route.pattern, "refunded");
            Ok(with_session(api, response, &reservation))
        }
        Err((outcome, error)) => {
            release(api, &reservation).await;
            telemetry::proxy_request(&route.pattern, outcome);
            Err(error)
        }
    }
}

/// Finds the request's session (creating one when the route says so) and reserves `cost`.
async fn reserve<'a>(
    api: &Api,
    metering: &Metering,
    policy: &'a Policy,
    cost: u64,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Reservation<'a>, ApiError> {
    let current = current_session(request.headers(), &api.cookie.name)?;
    if let Some(id) = current {
        if let Some(answer) = api.quotas.reserve(id, policy, cost).await? {
            return Ok(Reservation {
                id,
                policy,
                cost,
                answer,
                created: false,
            });
        }
    }
    if metering.missing_session == MissingSession::Reject {
        return Err(ApiError::session_not_found());
    }
    let origin = client_ip(request.headers(), peer.ip(), &api.trusted_proxies);
    let (session, _) = api.sessions.create_or_get(None, None, origin).await?;
    let answer = api
        .quotas
        .reserve(session.id, policy, cost)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    Ok(Reservation {
        id: session.id,
        policy,
        cost,
        answer,
        created: true,
    })
}

async fn release(api: &Api, reservation: &Reservation<'_>) {
    let Reservation {
        id, policy, cost, ..
    } = reservation;
    if let Err(error) = api.quotas.release(*id, policy, *cost).await {
        // The cost stays taken until the window resets: the limit is never overshot.
        tracing::warn!(%error, %id, "could not release a reservation");
    }
}

fn with_session(
    api: &Api,
    mut response: Response<Body>,
    reservation: &Reservation<'_>,
) -> Response<Body> {
    if reservation.created {
        set_session_cookie(&mut response, &reservation.id, &api.cookie);
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
    session: Option<&Uuid>,
) -> Result<Response<Body>, (&'static str, ApiError)> {
    let (mut parts, body) = request.into_parts();
    let root = PathAndQuery::from_static("/");
    let path_and_query = parts.uri.path_and_query().unwrap_or(&root);
    parts.uri = route.upstream.uri(path_and_query).map_err(|error| {
        tracing::warn!(%error, "cannot build the upstream URI");
        ("upstream_error", ApiError::bad_gateway())
    })?;
    parts.version = http::Version::HTTP_11;
    let forwarded_host = parts.headers.remove(header::HOST);
    strip_hop_by_hop(&mut parts.headers);
    forwarded_for(api, &mut parts.headers, peer, forwarded_host);
    if let Some(id) = session {
        // The upstream can trust this header: the gateway sets it, whatever the client sent.
        if let Ok(value) = HeaderValue::from_str(&id.hyphenated().to_string()) {
            parts.headers.insert(SESSION_HEADER, value);
        }
    }
    let upstream = Request::from_parts(parts, body);
    match tokio::time::timeout(route.timeout, api.upstreams.client.request(upstream)).await {
        Err(_) => Err(("upstream_timeout", ApiError::gateway_timeout())),
        Ok(Err(error)) => {
            tracing::warn!(%error, route = %route.pattern, "upstream request failed");
            Err(("upstream_error", ApiError::bad_gateway()))
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::Upstream(body)))
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // hyper frames the body itself (length or chunked) on the next hop.
    headers.remove(header::TRANSFER_ENCODING);
}

/// `X-Forwarded-For/-Proto/-Host`. A client's own `X-Forwarded-*` are believed only from a
/// trusted proxy; from anyone else they are replaced, so upstreams can't be lied to.
fn forwarded_for(api: &Api, headers: &mut HeaderMap, peer: SocketAddr, host: Option<HeaderValue>) {
    const FOR: &str = "x-forwarded-for";
    const PROTO: &str = "x-forwarded-proto";
    const HOST: &str = "x-forwarded-host";
    let peer_ip = peer.ip().to_canonical();
    let trusted = api.trusted_proxies.iter().any(|net| net.contains(&peer_ip));
    let earlier = headers
        .get(FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|_| trusted)
        .map(str::to_string);
    let chain = match earlier {
        Some(earlier) => format!("{earlier}, {peer_ip}"),
        None => peer_ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(FOR, value);
    }
    if !(trusted && headers.contains_key(PROTO)) {
        headers.insert(PROTO, HeaderValue::from_static("http"));
    }
    if !(trusted && headers.contains_key(HOST)) {
        match host {
            Some(host) => headers.insert(HOST, host),
            None => headers.remove(HOST),
        };
    }
}
