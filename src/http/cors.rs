//! CORS for the session API: off unless `[cors] allowed_origins` lists origins.
//!
//! Sessions ride on a cookie, so cross-origin calls need credentials, and with credentials
//! the Fetch standard forbids `*`: an allowed origin is echoed back exactly, with
//! `Vary: Origin` so caches keep one answer per origin. An origin not on the list gets no
//! CORS headers, and the browser keeps the response from the calling page.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use super::Body;
use crate::config::CorsConfig;

/// Headers a page may send besides the CORS-safelisted ones.
const ALLOW_HEADERS: &str = "content-type, x-session-id";
/// Headers a page may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "retry-after, ratelimit, ratelimit-policy";

/// The request's `Origin` when it is allowed.
pub fn allowed_origin<'a>(cors: &CorsConfig, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    cors.allowed_origins
        .iter()
        .any(|allowed| allowed.as_bytes() == origin.as_bytes())
        .then_some(origin)
}

/// Whether the request is a preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight for a route accepting `methods`.
pub fn preflight(
    cors: &CorsConfig,
    origin: Option<&HeaderValue>,
    methods: &'static str,
) -> Response<Body> {
    let mut response = Response::new(Body::from(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(cors.max_age.as_secs()),
        );
    }
    response
}

/// Adds the CORS headers of an actual (non-preflight) response.
pub fn decorate(response: &mut Response<Body>, origin: Option<&HeaderValue>) {
    let headers = response.headers_mut();
    // A preflight answer already varies by origin; once is enough.
    let varies = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"));
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if let Some(origin) = origin {
        allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
}
