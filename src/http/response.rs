//! Building responses: JSON bodies, the session cookie and the headers every response carries.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use http::{header, HeaderValue, StatusCode};
use hyper::Response;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::body::Body;
use crate::config::CookieConfig;
use crate::model::session::SessionRecord;
use crate::quota::Quotas;

/// Serialises `body` into one buffer and wraps it with the common headers. Session data is
/// per-user, so nothing may be cached by browsers or proxies.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    // Our bodies are plain structs of strings and numbers: serialising them cannot fail.
    json_text(
        status,
        simd_json::serde::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// Like [`json`], for a body that is JSON text already.
pub fn json_text(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut response = private(status, Body::from(bytes.into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `204 No Content`, with the headers every session response carries.
pub fn no_content() -> Response<Body> {
    private(StatusCode::NO_CONTENT, Body::from(Bytes::new()))
}

fn private(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // JSON is never a page: nothing may frame it, load from it, or learn where it was read.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Sets the session cookie (contract, "Cookie") to `id`.
pub fn set_session_cookie(response: &mut Response<Body>, id: &Uuid, config: &CookieConfig) {
    let max_age = config.max_age.as_secs() as i64;
    append_cookie(response, id.to_string(), max_age, config);
}

/// Tells the browser to drop the session cookie (`Max-Age=0`, same name, path and domain).
pub fn clear_session_cookie(response: &mut Response<Body>, config: &CookieConfig) {
    append_cookie(response, String::new(), 0, config);
}

fn append_cookie(
    response: &mut Response<Body>,
    value: String,
    max_age: i64,
    config: &CookieConfig,
) {
    let mut cookie = cookie::Cookie::build((config.name.as_str(), value))
        .path(config.path.as_str())
        .same_site(config.same_site)
        .http_only(config.http_only)
        .secure(config.secure)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.as_str());
    }
    // Name, path and domain are validated at start-up and the value is a UUID or empty, so
    // the header is always valid; skipping it is the only alternative to a panic.
    if let Ok(value) = HeaderValue::from_str(&cookie.build().to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// `{"<operation>": {limit, remaining, reset_at}, ...}` in policy order.
pub struct RateLimits<'a> {
    pub quotas: &'a Quotas,
    pub record: &'a SessionRecord,
}

#[derive(Serialize)]
struct RateLimitBody {
    limit: u64,
    remaining: u64,
    reset_at: String,
}

impl Serialize for RateLimits<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.quotas.policies().len()))?;
        for (policy, status) in self.quotas.statuses(self.record) {
            let body = RateLimitBody {
                limit: status.limit,
                remaining: status.remaining,
                reset_at: timestamp(status.reset_at),
            };
            map.serialize_entry(&policy.operation, &body)?;
        }
        map.end()
    }
}

/// RFC 3339 in UTC with a `Z`, to the second, from Unix seconds.
pub fn timestamp(unix_seconds: i64) -> String {
    DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_z() {
        assert_eq!(timestamp(1_680_352_496), "2023-04-01T12:34:56Z");
    }
}
