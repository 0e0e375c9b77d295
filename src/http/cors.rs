//! Browser origins for the session API: CORS (off unless `[cors] allowed_origins` lists
//! origins) and the refusal of state-changing requests from pages the gateway does not serve.
//!
//! Sessions ride on a cookie, so cross-origin calls need credentials, and with credentials
//! the Fetch standard forbids `*`: an allowed origin is echoed back exactly, with
//! `Vary: Origin` so caches keep one answer per origin. An origin not on the list gets no
//! CORS headers, and the browser keeps the response from the calling page. CORS only hides
//! answers, though: a "simple" request (no preflight) still reaches the gateway with the
//! cookie when the page is same-site, so a POST, PUT or DELETE from any other page is
//! refused outright ([`from_foreign_page`]).

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use super::body::Body;
use crate::config::CorsConfig;

/// Headers a page may send besides the CORS-safelisted ones.
const ALLOW_HEADERS: &str = "content-type, x-session-id";
/// Headers a page may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "retry-after, ratelimit, ratelimit-policy";

/// Whether a state-changing request was sent by a browser page that may not change sessions
/// (contract, addendum 2): its `Origin` is neither the request's own nor allowed, or,
/// without `Origin`, `Sec-Fetch-Site` says another site made it. Requests with neither
/// header (servers, curl) pass. `scheme` is the request's own when a trusted proxy said
/// it; unknown, an own-host origin passes with either `http` or `https`.
pub fn from_foreign_page(
    headers: &HeaderMap,
    cors: Option<&CorsConfig>,
    scheme: Option<&[u8]>,
) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        let fetched_from = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
        return matches!(fetched_from, Some(b"cross-site" | b"same-site"));
    };
    let allowed = cors.is_some_and(|cors| allowed_origin(cors, headers).is_some());
    !allowed && !is_own_origin(origin.as_bytes(), headers.get(header::HOST), scheme)
}

/// `origin` is `<scheme>://<Host>` of the request itself.
fn is_own_origin(origin: &[u8], host: Option<&HeaderValue>, scheme: Option<&[u8]>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let authority = match scheme {
        Some(scheme) => origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix(b"://")),
        None => origin
            .strip_prefix(b"https://")
            .or_else(|| origin.strip_prefix(b"http://")),
    };
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host.as_bytes()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                let name = header::HeaderName::from_static(name);
                (name, HeaderValue::from_static(value))
            })
            .collect()
    }

    #[test]
    fn only_own_and_allowed_origins_may_change_sessions() {
        let cors = CorsConfig {
            allowed_origins: vec!["https://app.example".into()],
            max_age: std::time::Duration::from_secs(600),
        };
        let refused = |pairs: &[(&'static str, &'static str)], scheme: Option<&[u8]>| {
            from_foreign_page(&headers(pairs), Some(&cors), scheme)
        };
        let host = ("host", "api.example:8080");
        assert!(!refused(&[host], None), "no browser headers: a server");
        assert!(!refused(&[host, ("origin", "https://app.example")], None));
        assert!(!refused(
            &[host, ("origin", "http://api.example:8080")],
            None
        ));
        assert!(!refused(
            &[host, ("origin", "https://API.example:8080")],
            None
        ));
        assert!(!refused(
            &[host, ("origin", "https://api.example:8080")],
            Some(b"https")
        ));
        assert!(refused(
            &[host, ("origin", "http://api.example:8080")],
            Some(b"https")
        ));
        assert!(refused(
            &[host, ("origin", "http://api.example:2222")],
            None
        ));
        assert!(refused(&[host, ("origin", "null")], None));
        assert!(
            refused(&[("origin", "http://api.example:8080")], None),
            "no Host"
        );
        assert!(refused(&[host, ("sec-fetch-site", "same-site")], None));
        assert!(refused(&[host, ("sec-fetch-site", "cross-site")], None));
        assert!(!refused(&[host, ("sec-fetch-site", "same-origin")], None));
        assert!(!refused(&[host, ("sec-fetch-site", "none")], None));
        assert!(from_foreign_page(
            &headers(&[host, ("origin", "https://app.example")]),
            None,
            None
        ));
    }
}
