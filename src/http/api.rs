//! The public session API (contract, "Public endpoints"): routing and handlers.
//!
//! Routing is a plain `match` on the canonical path (see [`crate::path`]), set before
//! anything looks at it: a trailing slash is ignored and the plural `/api/sessions/...`
//! aliases map onto the same routes. Each handler reads what it needs from the request,
//! calls [`crate::session::Sessions`] once, and writes the response and cookie.
//! Paths that are not the API's own fall through to the gateway-mode route table
//! ([`proxy`]); CORS headers, when configured, are added here for the API's answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use uuid::Uuid;

use super::body::Body;
use super::cors;
use super::error::ApiError;
use super::proxy;
use super::request::{
    canonicalize, client_ip, client_session_id, current_session, is_trusted_proxy, json_body,
};
use super::response::{
    clear_session_cookie, json, json_object, json_text, no_content, session_body,
    set_session_cookie, write_rate_limits,
};
use super::state::Api;
use crate::model::session::Session;
use crate::preferences::{self, PreferencesError};
use crate::routes::Lookup;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Session,
    Sync,
    Info,
    Preferences,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let rest = path
            .strip_prefix("/api/sessions")
            .or_else(|| path.strip_prefix("/api/session"))?;
        match rest {
            "" => Some(Route::Session),
            "/sync" => Some(Route::Sync),
            "/info" => Some(Route::Info),
            "/preferences" => Some(Route::Preferences),
            _ => None,
        }
    }

    /// The route template, for logs (bounded cardinality, no ids).
    fn template(self) -> &'static str {
        match self {
            Route::Session => "/api/session/",
            Route::Sync => "/api/session/sync",
            Route::Info => "/api/session/info",
            Route::Preferences => "/api/session/preferences",
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Route::Session => "POST, DELETE",
            Route::Sync => "POST",
            Route::Info => "GET",
            Route::Preferences => "GET, PUT",
        }
    }
}

/// Entry point for every request on the public listener.
pub async fn handle(
    api: Arc<Api>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let _in_flight = super::InFlight::start();
    if let Err(error) = canonicalize(&mut request) {
        let response = error.into_response();
        super::observe(
            "unmatched",
            request.method(),
            Instant::now(),
            response.status().as_u16(),
        );
        return response;
    }
    if api.internal.served_here && request.uri().path().starts_with(super::internal::PREFIX) {
        // Boxed, as is the proxy's flow below: inline, the largest branch sets the size of
        // every request's future, and hyper's service layers move it several times.
        return Box::pin(super::internal::handle(&api, request)).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let route = Route::parse(request.uri().path());
    let origin = api
        .browser
        .cors
        .as_ref()
        .and_then(|cors| cors::allowed_origin(cors, request.headers()).cloned());
    let changes_state = matches!(method, Method::POST | Method::PUT | Method::DELETE);
    let foreign = || {
        let scheme = forwarded_scheme(&api, request.headers(), peer);
        cors::from_foreign_page(request.headers(), api.browser.cors.as_ref(), scheme)
    };
    let result = match (route, &method) {
        (Some(_), _) if changes_state && foreign() => Err(ApiError::forbidden_origin()),
        (None, _) => match api.forwarding.routes.find(&method, request.uri().path()) {
            Lookup::Found(route) => {
                return Box::pin(proxy::forward(&api, route, request, peer)).await
            }
            Lookup::MethodNotAllowed(allow) => Err(ApiError::method_not_allowed(allow)),
            Lookup::NotFound => Err(ApiError::route_not_found()),
        },
        (Some(Route::Session), &Method::POST) => create_or_get(&api, request, peer).await,
        (Some(Route::Session), &Method::DELETE) => erase(&api, request).await,
        (Some(Route::Sync), &Method::POST) => sync(&api, request, peer).await,
        (Some(Route::Info), &Method::GET) => info(&api, request).await,
        (Some(Route::Preferences), &Method::GET) => get_preferences(&api, request).await,
        (Some(Route::Preferences), &Method::PUT) => put_preferences(&api, request).await,
        (Some(route), &Method::OPTIONS) if cors::is_preflight(&method, request.headers()) => {
            match &api.browser.cors {
                Some(config) => Ok(cors::preflight(config, origin.as_ref(), route.allow())),
                None => Err(ApiError::method_not_allowed(route.allow())),
            }
        }
        (Some(route), _) => Err(ApiError::method_not_allowed(route.allow())),
    };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    if api.browser.cors.is_some() {
        cors::decorate(&mut response, origin.as_ref());
    }
    let route = route.map_or("unmatched", Route::template);
    super::observe(route, &method, started, response.status().as_u16());
    response
}

/// The scheme the client used, when a trusted proxy in front says it (`X-Forwarded-Proto`).
fn forwarded_scheme<'a>(
    api: &Api,
    headers: &'a http::HeaderMap,
    peer: SocketAddr,
) -> Option<&'a [u8]> {
    if !is_trusted_proxy(&api.intake.trusted_proxies, peer.ip()) {
        return None;
    }
    headers
        .get("x-forwarded-proto")
        .map(|proto| proto.as_bytes())
}

#[derive(Serialize)]
struct SyncBody<'a> {
    session_id: &'a Uuid,
    is_synced: bool,
    message: &'static str,
}

async fn create_or_get(
    api: &Api,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let current = current_session(api, &parts.headers).await?;
    let body = json_body(&parts.headers, body, api).await?;
    let client = client_session_id(body.as_ref(), false)?;
    let origin = client_ip(&parts.headers, peer.ip(), &api.intake.trusted_proxies);
    let (session, is_new) = api.sessions.create_or_get(current, client, origin).await?;
    let body = session_body(&session, Some(is_new));
    Ok(with_cookie(
        api,
        json_object(StatusCode::OK, body),
        &session.id,
    ))
}

async fn sync(
    api: &Api,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let current = current_session(api, &parts.headers).await?;
    let body = json_body(&parts.headers, body, api).await?;
    let client = client_session_id(body.as_ref(), true)?
        .ok_or_else(|| ApiError::invalid_field("client_session_id", "This field is required"))?;
    let origin = client_ip(&parts.headers, peer.ip(), &api.intake.trusted_proxies);
    let (session, is_synced) = api.sessions.sync(current, client, origin).await?;
    let message = if is_synced {
        "Sessions synchronized successfully"
    } else if Some(session.id) == current {
        "Client session not found; keeping the current session"
    } else {
        "Client session not found; created a new session"
    };
    let body = SyncBody {
        session_id: &session.id,
        is_synced,
        message,
    };
    Ok(with_cookie(api, json(StatusCode::OK, &body), &session.id))
}

async fn info(api: &Api, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let session = read_current(api, &request).await?;
    let mut body = session_body(&session, None);
    write_rate_limits(&mut body, &api.quotas, &session.record);
    Ok(with_cookie(
        api,
        json_object(StatusCode::OK, body),
        &session.id,
    ))
}

async fn get_preferences(
    api: &Api,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let session = read_current(api, &request).await?;
    let body = session.record.preferences.as_deref().unwrap_or("{}");
    Ok(with_cookie(
        api,
        json_text(StatusCode::OK, body.to_owned()),
        &session.id,
    ))
}

async fn put_preferences(
    api: &Api,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let id = current_session(api, &parts.headers)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let body = json_body(&parts.headers, body, api)
        .await?
        .ok_or_else(|| ApiError::invalid_body("The request body must be a JSON object"))?;
    let compact = preferences::validate(&body).map_err(|error| match error {
        PreferencesError::TooLarge => ApiError::payload_too_large(error.to_string()),
        other => ApiError::invalid_body(other.to_string()),
    })?;
    api.sessions
        .set_preferences(id, &compact)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    Ok(with_cookie(api, json_text(StatusCode::OK, compact), &id))
}

/// `DELETE /api/session/`: forgets the caller's session everywhere and drops the cookie;
/// 204 also when there was nothing to forget, so a repeat after a lost answer succeeds.
async fn erase(api: &Api, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if let Some(id) = current_session(api, request.headers()).await? {
        api.erasure.erase(id).await?;
    }
    let mut response = no_content();
    clear_session_cookie(&mut response, &api.browser.cookie);
    Ok(response)
}

async fn read_current(api: &Api, request: &Request<Incoming>) -> Result<Session, ApiError> {
    let id = current_session(api, request.headers())
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    api.sessions
        .read(id)
        .await?
        .ok_or_else(ApiError::session_not_found)
}

/// Every successful session response (re)sets the cookie, which slides its expiry in the
/// browser as activity slides it in Redis.
fn with_cookie(api: &Api, mut response: Response<Body>, id: &Uuid) -> Response<Body> {
    set_session_cookie(&mut response, id, &api.browser.cookie);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_accept_slashes_and_plural_aliases() {
        for (path, route) in [
            ("/api/session", Route::Session),
            ("/api/session/", Route::Session),
            ("/api/sessions/", Route::Session),
            ("/api/session/sync", Route::Sync),
            ("/api/sessions/sync/", Route::Sync),
            ("/api/session/info/", Route::Info),
            ("/api/sessions/info", Route::Info),
            ("/api/session/preferences", Route::Preferences),
        ] {
            assert_eq!(Route::parse(path), Some(route), "{path}");
        }
        for path in [
            "/",
            "/api",
            "/api/sessionsx",
            "/api/session/info/x",
            "/api/session//",
            "/api/sessionx/info",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }
}
