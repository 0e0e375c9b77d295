//! Reading requests: the canonical path, the current session (cookie or `X-Session-Id`),
//! bounded JSON bodies, and the `client_session_id` field.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use uuid::Uuid;

use super::state::Api;
use super::ApiError;
use crate::model::session::parse_id;
use crate::path;

pub const SESSION_HEADER: &str = "x-session-id";
/// The same as a name: a header map looked up by a `&str` parses it first, on every request.
pub const SESSION_HEADER_NAME: HeaderName = HeaderName::from_static(SESSION_HEADER);

/// Replaces the request's path with its canonical form (see [`crate::path`]), so routing,
/// metering and forwarding all see one path; a path without one is a 400.
pub fn canonicalize<B>(request: &mut Request<B>) -> Result<(), ApiError> {
    let changed = match path::canonical(request.uri().path()) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(path)) => path,
        Err(error) => return Err(ApiError::invalid_field("path", error.to_string())),
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{changed}?{query}"),
        None => changed,
    };
    let unusable = || ApiError::invalid_field("path", "has no canonical form");
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).map_err(|_| unusable())?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| unusable())?;
    Ok(())
}

/// How many distinct session ids of one request are considered: each one past the first
/// may cost a Redis read (and a Supabase lookup), so a request stuffed with ids can't
/// multiply them.
const MAX_NAMED: usize = 4;

/// The session ids a request names, in precedence order: its session cookies, then
/// `X-Session-Id` (at most `MAX_NAMED`).
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    None,
    One(Uuid),
    /// Rare (a cookie planted from a sibling subdomain or a deeper path, a client that
    /// sends both a stale cookie and a header): the first live one is the session.
    Several(Vec<Uuid>),
}

/// Reads the session ids a request names. A cookie that is not a canonical UUID is ignored
/// (stale garbage must not lock a browser out), while a bad `X-Session-Id` without any
/// session cookie is a client bug and answered with 400.
pub fn named_sessions(headers: &HeaderMap, cookie_name: &str) -> Result<Named, ApiError> {
    let mut named = Named::None;
    let mut add = |id: Uuid| {
        named = match std::mem::replace(&mut named, Named::None) {
            Named::None => Named::One(id),
            Named::One(first) if first == id => Named::One(first),
            Named::One(first) => Named::Several(vec![first, id]),
            Named::Several(mut ids) => {
                if !ids.contains(&id) && ids.len() < MAX_NAMED {
                    ids.push(id);
                }
                Named::Several(ids)
            }
        };
    };
    // Pair by pair from the raw bytes: another site's cookie with a non-ASCII value must not
    // hide ours, as reading the whole header as a string would.
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| cookie::Cookie::parse(pair.trim()).ok())
        .filter(|c| c.name() == cookie_name)
        .filter_map(|c| parse_id(c.value()))
        .for_each(&mut add);
    let from_header = headers
        .get(&SESSION_HEADER_NAME)
        .map(|value| value.to_str().ok().and_then(parse_id));
    match from_header {
        None => {}
        Some(Some(id)) => add(id),
        Some(None) if named == Named::None => {
            return Err(ApiError::invalid_field(
                "X-Session-Id",
                "must be a UUID (8-4-4-4-12 hex digits)",
            ))
        }
        Some(None) => {}
    }
    Ok(named)
}

/// The request's current session id: the one it names, or of several the first that is
/// live (or, when none is, the first).
pub async fn current_session(api: &Api, headers: &HeaderMap) -> Result<Option<Uuid>, ApiError> {
    match named_sessions(headers, &api.browser.cookie.config.name)? {
        Named::None => Ok(None),
        Named::One(id) => Ok(Some(id)),
        Named::Several(ids) => {
            let live = api.sessions.first_known(&ids).await?;
            Ok(live.or_else(|| ids.first().copied()))
        }
    }
}

/// Whether `peer` is one of `http.trusted_proxies`, whose forwarding headers are believed.
pub fn is_trusted_proxy(trusted: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

/// The client's IP: the peer, unless the peer is a trusted proxy, in which case the
/// `X-Forwarded-For` chain is walked from the right to the first hop that is not trusted
/// (the left part of the chain is whatever the client wrote, so it is never believed).
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(trusted, *ip);
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// Reads a JSON body of at most `api.intake.body_limit` bytes within `api.intake.body_read_timeout`.
/// `Ok(None)` for an empty body. A body must say `Content-Type: application/json` (415
/// otherwise, also when it says nothing): a browser can then send a body to another origin
/// only after a CORS preflight. A client that stalls mid-body gets 408, so it can't hold a
/// request (and a graceful shutdown) open.
pub async fn json_body(
    headers: &HeaderMap,
    body: Incoming,
    api: &Api,
) -> Result<Option<OwnedValue>, ApiError> {
    let limit = api.intake.body_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let carries_body =
        declared.is_some_and(|len| len > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    let json = headers
        .get(header::CONTENT_TYPE)
        .map(|content_type| is_json(content_type.as_bytes()));
    match json {
        Some(false) => return Err(ApiError::unsupported_media_type()),
        None if carries_body => return Err(ApiError::unsupported_media_type()),
        _ => {}
    }
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    let reading = tokio::time::timeout(
        api.intake.body_read_timeout,
        Limited::new(body, limit).collect(),
    );
    let Ok(read) = reading.await else {
        return Err(ApiError::request_timeout());
    };
    let collected = match read {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large(limit))
        }
        Err(_) => return Err(ApiError::invalid_body("The request body could not be read")),
    };
    parse_json(collected)
}

/// Parses a received body: `Ok(None)` when it is only whitespace.
pub fn parse_json(collected: Bytes) -> Result<Option<OwnedValue>, ApiError> {
    if collected.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // simd-json parses in place; reuse the received buffer when we hold its only reference.
    let mut bytes = collected
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let value = simd_json::to_owned_value(&mut bytes)
        .map_err(|e| ApiError::invalid_body(format!("Malformed JSON: {e}")))?;
    if let Some(key) = duplicate_key(&value) {
        return Err(ApiError::invalid_body(format!(
            "Duplicate key {key:?}: every key of an object must be unique"
        )));
    }
    Ok(Some(value))
}

/// A key that appears twice in one object, anywhere in `value`. simd-json keeps both
/// entries, and which one a reader then sees differs between readers (RFC 7493 forbids
/// duplicates), so such a body is refused rather than guessed at.
fn duplicate_key(value: &OwnedValue) -> Option<String> {
    match value {
        OwnedValue::Object(object) => {
            let mut seen = std::collections::HashSet::with_capacity(object.len());
            object.iter().find_map(|(key, child)| {
                if seen.insert(key.as_str()) {
                    duplicate_key(child)
                } else {
                    Some(key.to_string())
                }
            })
        }
        OwnedValue::Array(items) => items.iter().find_map(duplicate_key),
        OwnedValue::Static(_) | OwnedValue::String(_) => None,
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::payload_too_large(format!("The request body may be at most {limit} bytes"))
}

/// `application/json`, or any `application/<something>+json`, with optional parameters.
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    let essence = essence.trim_ascii().to_ascii_lowercase();
    essence == b"application/json"
        || (essence.starts_with(b"application/") && essence.ends_with(b"+json"))
}

/// The `client_session_id` of a request body. `null`, absent and (unless `required`) the
/// empty string all mean "none"; anything else must be a canonical UUID string.
pub fn client_session_id(
    body: Option<&OwnedValue>,
    required: bool,
) -> Result<Option<Uuid>, ApiError> {
    const FIELD: &str = "client_session_id";
    let value = match body {
        None => None,
        Some(body) => match body.as_object() {
            Some(object) => object.get(FIELD).filter(|v| !v.is_null()),
            None => {
                return Err(ApiError::invalid_body(
                    "The request body must be a JSON object",
                ))
            }
        },
    };
    match value {
        None if required => Err(ApiError::invalid_field(FIELD, "This field is required")),
        None => Ok(None),
        Some(value) => match value.as_str() {
            None => Err(ApiError::invalid_field(FIELD, "Must be a string")),
            Some("") if required => Err(ApiError::invalid_field(FIELD, "Must not be empty")),
            Some("") => Ok(None),
            Some(text) => parse_id(text).map(Some).ok_or_else(|| {
                ApiError::invalid_field(FIELD, "Must be a UUID (8-4-4-4-12 hex digits)")
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(is_json(b"application/merge-patch+json"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"application/x-www-form-urlencoded"));
        assert!(!is_json(b""));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.7".parse().expect("header"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let stranger: IpAddr = "3.3.3.3".parse().expect("ip");
        assert_eq!(client_ip(&headers, proxy, &trusted).to_string(), "2.2.2.2");
        assert_eq!(client_ip(&headers, stranger, &trusted), stranger);
        assert_eq!(client_ip(&HeaderMap::new(), proxy, &trusted), proxy);
        headers.insert(
            "x-forwarded-for",
            "garbage, 10.0.0.9".parse().expect("header"),
        );
        assert_eq!(client_ip(&headers, proxy, &trusted).to_string(), "10.0.0.9");
    }

    #[test]
    fn cookies_come_first_and_garbage_cookies_are_ignored() {
        let a: Uuid = "6f9619ff-8b86-4011-b42d-00cf4fc964ff"
            .parse()
            .expect("uuid");
        let b: Uuid = "0b0a5f2e-3c1d-4e5f-8a9b-0c1d2e3f4a5b"
            .parse()
            .expect("uuid");
        let named = |headers: &HeaderMap| named_sessions(headers, "concept_session");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; concept_session={a}; concept_session={a}")
                .parse()
                .expect("header"),
        );
        assert_eq!(named(&headers).expect("ok"), Named::One(a));
        headers.insert(SESSION_HEADER, b.to_string().parse().expect("header"));
        assert_eq!(named(&headers).expect("ok"), Named::Several(vec![a, b]));
        headers.insert(SESSION_HEADER, "nope".parse().expect("header"));
        assert_eq!(
            named(&headers).expect("a bad header beside a cookie is ignored"),
            Named::One(a)
        );

        let many: Vec<String> = (0..10)
            .map(|_| format!("concept_session={}", Uuid::new_v4()))
            .collect();
        headers.insert(header::COOKIE, many.join("; ").parse().expect("header"));
        match named(&headers).expect("ok") {
            Named::Several(ids) => assert_eq!(ids.len(), MAX_NAMED),
            other => panic!("{other:?}"),
        }

        headers.insert(
            header::COOKIE,
            format!("concept_session=garbage; x=1; concept_session={b}")
                .parse()
                .expect("header"),
        );
        headers.remove(SESSION_HEADER);
        assert_eq!(named(&headers).expect("ok"), Named::One(b));

        headers.insert(
            header::COOKIE,
            "concept_session=garbage".parse().expect("header"),
        );
        assert_eq!(named(&headers).expect("ok"), Named::None);
        headers.insert(SESSION_HEADER, "nope".parse().expect("header"));
        assert!(named(&headers).is_err());
    }
}
