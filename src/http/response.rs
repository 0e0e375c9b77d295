//! Building responses: JSON bodies, the session cookie and the headers every response carries.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use http::{header, HeaderValue, StatusCode};
use hyper::Response;
use serde::Serialize;
use uuid::Uuid;

use super::body::Body;
use super::json_out::JsonObject;
use crate::config::CookieConfig;
use crate::model::quota::QuotaStatus;
use crate::model::session::{Session, SessionRecord, Usage};
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
    // These, the body's, the cookie, the request id, CORS and the quota headers: room for
    // all at once rather than growing (and rehashing) the map twice on the way.
    headers.reserve(16);
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

/// The session cookie (contract, "Cookie") as `Set-Cookie` values, rendered once from the
/// configuration: only the id changes from one response to the next, and formatting every
/// attribute again was an eighth of a cached info read's cost.
pub struct SessionCookie {
    /// The configuration it was rendered from (the name is read by the request side).
    pub config: CookieConfig,
    /// `name=`, and everything after the value (`; HttpOnly; ...; Max-Age=...`).
    head: String,
    tail: String,
    /// The cookie emptied with `Max-Age=0`.
    clear: Option<HeaderValue>,
}

impl SessionCookie {
    pub fn new(config: CookieConfig) -> SessionCookie {
        let head = format!("{}=", config.name);
        let template = render(&config, String::new(), config.max_age.as_secs() as i64);
        let tail = template.get(head.len()..).unwrap_or_default().to_string();
        let clear = HeaderValue::from_str(&render(&config, String::new(), 0)).ok();
        SessionCookie {
            config,
            head,
            tail,
            clear,
        }
    }

    /// The `Set-Cookie` value that sets the cookie to `id`.
    fn set(&self, id: &Uuid) -> Option<HeaderValue> {
        let mut value = String::with_capacity(self.head.len() + 36 + self.tail.len());
        value.push_str(&self.head);
        value.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        value.push_str(&self.tail);
        HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
    }
}

/// Sets the session cookie to `id`.
pub fn set_session_cookie(response: &mut Response<Body>, id: &Uuid, cookie: &SessionCookie) {
    // Name, path and domain are validated at start-up and the value is a UUID, so the
    // header is always valid; skipping it is the only alternative to a panic.
    if let Some(value) = cookie.set(id) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Tells the browser to drop the session cookie (`Max-Age=0`, same name, path and domain).
pub fn clear_session_cookie(response: &mut Response<Body>, cookie: &SessionCookie) {
    if let Some(value) = &cookie.clear {
        response
            .headers_mut()
            .append(header::SET_COOKIE, value.clone());
    }
}

fn render(config: &CookieConfig, value: String, max_age: i64) -> String {
    let mut cookie = cookie::Cookie::build((config.name.as_str(), value))
        .path(config.path.as_str())
        .same_site(config.same_site)
        .http_only(config.http_only)
        .secure(config.secure)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.as_str());
    }
    cookie.build().to_string()
}

/// A body written with [`JsonObject`], with the common headers.
pub fn json_object(status: StatusCode, object: JsonObject) -> Response<Body> {
    json_text(status, object.finish())
}

/// A session's answer: `session_id`, `is_new_session` (when given), its times and
/// `usage_stats`; the caller adds what is its own.
pub fn session_body(session: &Session, is_new: Option<bool>) -> JsonObject {
    let record = &session.record;
    let mut body = JsonObject::new();
    body.id("session_id", &session.id);
    if let Some(is_new) = is_new {
        body.boolean("is_new_session", is_new);
    }
    body.string("created_at", timestamp(record.created_at).as_str())
        .string("last_active", timestamp(record.last_active).as_str());
    write_usage(&mut body, &record.usage);
    body
}

/// `usage_stats`: every counter by name, in configured order.
pub fn write_usage(object: &mut JsonObject, usage: &Usage) {
    object.counts(
        "usage_stats",
        usage.iter().map(|(name, count)| (&**name, count)),
    );
}

/// `rate_limits`: `{"<operation>": {limit, remaining, reset_at}, ...}` in policy order.
pub fn write_rate_limits(object: &mut JsonObject, quotas: &Quotas, record: &SessionRecord) {
    object.open("rate_limits");
    for (policy, status) in quotas.statuses(record) {
        write_status(object.open(&policy.operation), &status).close();
    }
    object.close();
}

/// `limit`, `remaining` and `reset_at` of a quota.
pub fn write_status<'a>(object: &'a mut JsonObject, status: &QuotaStatus) -> &'a mut JsonObject {
    object
        .number("limit", status.limit)
        .number("remaining", status.remaining)
        .string("reset_at", timestamp(status.reset_at).as_str())
}

/// RFC 3339 in UTC with a `Z`, to the second, from Unix seconds.
pub fn timestamp(unix_seconds: i64) -> Timestamp {
    Timestamp::of(unix_seconds)
}

/// A [`timestamp`], written into a buffer of its own: the session and quota answers carry
/// several each, and chrono's general formatter with its `String` was a tenth of a cached
/// info read's cost.
#[derive(Clone, Copy)]
pub struct Timestamp {
    text: [u8; 32],
    len: usize,
}

impl Timestamp {
    fn of(unix_seconds: i64) -> Timestamp {
        let mut text = [0; 32];
        let (days, seconds) = (
            unix_seconds.div_euclid(86_400),
            unix_seconds.rem_euclid(86_400),
        );
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            // Only corrupt data holds such an instant: written as chrono writes it.
            let long = DateTime::from_timestamp(unix_seconds, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            let len = long.len().min(text.len());
            text[..len].copy_from_slice(&long.as_bytes()[..len]);
            return Timestamp { text, len };
        }
        let fields = [
            (year as u32, 4, 0),
            (month, 2, 5),
            (day, 2, 8),
            (seconds as u32 / 3600, 2, 11),
            (seconds as u32 / 60 % 60, 2, 14),
            (seconds as u32 % 60, 2, 17),
        ];
        text[..20].copy_from_slice(b"0000-00-00T00:00:00Z");
        for (mut value, width, at) in fields {
            for digit in text[at..at + width].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Timestamp { text, len: 20 }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators, or chrono's own (UTF-8) text, are ever written.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The civil date of a day counted from 1970-01-01 (H. Hinnant's algorithm, as
/// `store/quota_lib.lua`'s window arithmetic has it in Lua).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_z() {
        assert_eq!(timestamp(1_680_352_496).as_str(), "2023-04-01T12:34:56Z");
    }

    #[test]
    fn timestamps_are_chronos_at_every_kind_of_instant() {
        let chrono = |s: i64| {
            DateTime::from_timestamp(s, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        };
        // Leap days, century and 400-year rules, the epoch, before it, and outside 0..=9999.
        let mut instants = vec![
            0,
            -1,
            59,
            86_399,
            86_400,
            951_782_400,
            951_868_799,
            4_107_542_400,
            -62_167_219_200,
            -62_167_219_201,
            253_402_300_799,
            253_402_300_800,
        ];
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            instants.push(x.rem_euclid(320_000_000_000) - 70_000_000_000);
        }
        for s in instants {
            assert_eq!(timestamp(s).as_str(), chrono(s), "at {s}");
        }
    }

    #[test]
    fn the_rendered_cookie_is_the_cookie_crates() {
        let id = Uuid::new_v4();
        for domain in [None, Some("example.com".to_string())] {
            let config = CookieConfig {
                name: "concept_session".into(),
                path: "/app".into(),
                domain,
                same_site: cookie::SameSite::Strict,
                http_only: true,
                secure: true,
                max_age: std::time::Duration::from_secs(86_400),
            };
            let cookie = SessionCookie::new(config.clone());
            let expected = render(&config, id.to_string(), 86_400);
            assert_eq!(cookie.set(&id).unwrap().to_str().unwrap(), expected);
            let cleared = render(&config, String::new(), 0);
            assert_eq!(cookie.clear.as_ref().unwrap().to_str().unwrap(), cleared);
            assert!(cleared.contains("Max-Age=0"), "{cleared}");
        }
    }
}
