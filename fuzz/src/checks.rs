//! The properties the fuzz targets check, one function per target, each taking the raw
//! fuzz input and panicking when a property does not hold.
//!
//! This file is the `sessiongate-fuzz` library (the targets in `fuzz_targets/` call it) and
//! is also included by `tests/api/hostile.rs`, so the main `cargo test` replays every
//! committed seed and crash input (`fuzz/seeds/`, `fuzz/regressions/`) through the same
//! checks. It therefore uses only crates the main package depends on.
//!
//! Inputs are plain bytes, decoded without `arbitrary`, so a seed or a crash file can be
//! read (and written) by a person:
//! - `json_body`: a request body;
//! - `headers`: one control byte (peer, trusted proxies, cookie name), then header fields
//!   separated by NUL (which no header value may contain), each field's first byte naming the
//!   header (`c` cookie, `s` X-Session-Id, `f` X-Forwarded-For, `t` Content-Type; other bytes
//!   pick one by their value modulo 4) and the rest being the value;
//! - `session_id`: a candidate id;
//! - `config`: TOML text, then NUL-separated `NAME=VALUE` environment entries; an entry
//!   `SESSIONGATE_CONFIG=...` points the environment at a file holding the TOML text.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper::body::Body as _;
use ipnet::IpNet;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use uuid::Uuid;

use sessiongate::config::Config;
use sessiongate::http::request::{
    client_ip, client_session_id, is_json, named_sessions, parse_json, Named,
};
use sessiongate::http::ApiError;
use sessiongate::model::session::parse_id;
use sessiongate::preferences::{self, PreferencesError};

/// The default cookie name, and another one so a cookie of the wrong name is exercised.
const COOKIE_NAMES: [&str; 2] = ["concept_session", "sid"];

/// Whether `text` is a UUID in the canonical 8-4-4-4-12 hyphenated form, in any case: the
/// only spelling the README says the gateway accepts.
pub fn is_canonical_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Status and JSON body of an error as the gateway would send it.
pub fn error_response(error: ApiError) -> (StatusCode, serde_json::Value) {
    let response = error.into_response();
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let mut context = Context::from_waker(Waker::noop());
    // A `Full` body is ready at once: one data frame, then the end.
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut context) {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {bytes:?}"));
    (status, body)
}

/// Asserts that `error` is the contract's 400 `validation_error`.
fn assert_validation_error(error: ApiError, what: &str) {
    let (status, body) = error_response(error);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error_code"], "validation_error", "{what}: {body}");
    assert_eq!(body["status_code"], 400, "{what}: {body}");
    assert!(body["field_errors"].is_object(), "{what}: {body}");
}

/// Whether any object in `value` holds the same key twice.
pub fn has_duplicate_keys(value: &OwnedValue) -> bool {
    if let Some(object) = value.as_object() {
        let mut keys: Vec<&str> = object.keys().map(|k| k.as_ref()).collect();
        keys.sort_unstable();
        keys.windows(2).any(|pair| pair[0] == pair[1]) || object.values().any(has_duplicate_keys)
    } else if let Some(array) = value.as_array() {
        array.iter().any(has_duplicate_keys)
    } else {
        false
    }
}

/// The largest nesting depth of `[`/`{` outside strings (a rough count is enough here).
fn nesting(data: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in data {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `json_body`: a request body through `parse_json`, `client_session_id` (both modes) and
/// `preferences::validate`.
///
/// - nothing panics; every refusal is a 400 `validation_error`;
/// - what the gateway accepts is JSON (serde_json agrees, allowing for its own nesting
///   limit of 128), and valid JSON is accepted unless it nests deeper than simd-json's limit
///   (1024) or holds an integer outside the 64-bit range (simd-json refuses those);
/// - no object of an accepted body holds a key twice (RFC 7493, I-JSON: the gateway and any
///   other parser on the way must not disagree on which value counts); refusing such a body
///   is fine, and so is keeping only the last value;
/// - a `client_session_id` is only ever taken from a canonical id string in an object;
/// - the compact preferences `validate` returns respect the limits, are JSON, parse back to
///   the same value, and are a fixpoint (validating them again gives the same text).
pub fn json_body(data: &[u8]) {
    let parsed = parse_json(Bytes::copy_from_slice(data));
    let reference = serde_json::from_slice::<serde_json::Value>(data);
    let value = match parsed {
        Err(error) => {
            assert_validation_error(error, "malformed body");
            if reference.is_ok() {
                // Refusing duplicate keys is the documented choice (see below).
                let mut copy = data.to_vec();
                let (why, duplicates) = match simd_json::to_owned_value(&mut copy) {
                    Ok(value) => (String::new(), has_duplicate_keys(&value)),
                    Err(e) => (format!("{:?}", e.error()), false),
                };
                assert!(
                    duplicates
                        || nesting(data) > simd_json::DEFAULT_MAX_DEPTH
                        || has_wide_integer(data),
                    "valid JSON refused ({why}): {:?}",
                    String::from_utf8_lossy(data)
                );
            }
            return;
        }
        Ok(None) => {
            assert!(
                data.iter().all(u8::is_ascii_whitespace),
                "a body with content read as empty: {data:?}"
            );
            return;
        }
        Ok(Some(value)) => value,
    };
    if let Err(error) = &reference {
        let message = error.to_string();
        assert!(
            message.contains("recursion limit") || message.contains("number out of range"),
            "accepted what is not JSON ({message}): {:?}",
            String::from_utf8_lossy(data)
        );
    }
    assert!(
        !has_duplicate_keys(&value),
        "a body with duplicate keys accepted as {value:?}: {:?}",
        String::from_utf8_lossy(data)
    );

    for required in [false, true] {
        match client_session_id(Some(&value), required) {
            Ok(found) => {
                let field = value
                    .as_object()
                    .expect("a client_session_id from a non-object")
                    .get("client_session_id");
                match (found, field.and_then(|f| f.as_str())) {
                    (Some(id), Some(text)) => {
                        assert!(is_canonical_id(text), "{text:?} taken as an id");
                        assert_eq!(id.hyphenated().to_string(), text.to_ascii_lowercase());
                    }
                    (Some(id), None) => panic!("{id} taken from a non-string field"),
                    (None, text) => {
                        assert!(!required, "required client_session_id missing but Ok");
                        assert!(
                            matches!(text, None | Some("")),
                            "{text:?} ignored instead of refused"
                        );
                    }
                }
            }
            Err(error) => assert_validation_error(error, "client_session_id"),
        }
    }

    match preferences::validate(&value) {
        Ok(text) => {
            assert!(text.len() <= preferences::MAX_BYTES, "{} bytes", text.len());
            let again = parse_json(Bytes::from(text.clone()))
                .unwrap_or_else(|_| panic!("compact preferences do not parse back: {text}"))
                .unwrap_or_else(|| panic!("compact preferences are empty: {text:?}"));
            assert_eq!(
                again, value,
                "preferences changed on the way through: {text}"
            );
            assert_eq!(
                preferences::validate(&again).as_deref(),
                Ok(text.as_str()),
                "compact form is not a fixpoint"
            );
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("stored preferences are not JSON ({e}): {text}"));
        }
        Err(PreferencesError::NotAnObject) => assert!(!value.is_object()),
        Err(_) => assert!(value.is_object()),
    }
}

/// Whether the text holds an integer literal outside the 64-bit range, which simd-json
/// refuses by design (serde_json reads it as a float). Scans number tokens outside strings.
fn has_wide_integer(data: &[u8]) -> bool {
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < data.len() {
        let b = data[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < data.len() && (data[i].is_ascii_digit() || b".eE+-".contains(&data[i])) {
                i += 1;
            }
            let token = &data[start..i];
            let integer = !token.iter().any(|c| b".eE".contains(c));
            if let (true, Ok(text)) = (integer, std::str::from_utf8(token)) {
                if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                    return true;
                }
            }
            continue;
        }
        i += 1;
    }
    false
}

/// One header field of a `headers` input.
fn header_of(selector: u8) -> HeaderName {
    match selector {
        b'c' => header::COOKIE,
        b's' => HeaderName::from_static("x-session-id"),
        b'f' => HeaderName::from_static("x-forwarded-for"),
        b't' => header::CONTENT_TYPE,
        other => header_of([b'c', b's', b'f', b't'][usize::from(other % 4)]),
    }
}

/// The ids a request names, in precedence order.
fn ids(named: Named) -> Vec<uuid::Uuid> {
    match named {
        Named::None => Vec::new(),
        Named::One(id) => vec![id],
        Named::Several(ids) => ids,
    }
}

/// `headers`: arbitrary Cookie / X-Session-Id / X-Forwarded-For / Content-Type values (any
/// bytes a `HeaderValue` may hold, invalid UTF-8 included) through `named_sessions`,
/// `client_ip` and `is_json`.
///
/// - nothing panics;
/// - every session named is a canonical id found in a cookie of the configured name (whatever
///   bytes the other cookies hold) or in X-Session-Id, cookies first; a bad X-Session-Id is a
///   400 only when no cookie names an id;
/// - the client IP is the peer unless the peer is a trusted proxy, and otherwise one of the
///   X-Forwarded-For hops.
pub fn headers(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = match control & 3 {
        0 => "127.0.0.1",
        1 => "10.0.0.1",
        2 => "::ffff:10.1.2.3",
        _ => "2001:db8::1",
    }
    .parse()
    .expect("ip");
    let trusted: Vec<IpNet> = match (control >> 2) & 3 {
        0 => vec![],
        1 => vec!["10.0.0.0/8".parse().expect("net")],
        2 => vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
        ],
        _ => vec![
            "0.0.0.0/0".parse().expect("net"),
            "::/0".parse().expect("net"),
        ],
    };
    let cookie_name = COOKIE_NAMES[usize::from((control >> 4) & 1)];

    let mut headers = HeaderMap::new();
    for field in rest.split(|&b| b == 0) {
        let Some((&selector, value)) = field.split_first() else {
            continue;
        };
        // hyper refuses what a HeaderValue cannot hold (CR, LF, NUL, ...) before routing.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(header_of(selector), value);
        }
    }

    let header_id = headers
        .get("x-session-id")
        .map(|v| v.to_str().ok().and_then(parse_id));
    // Every `name=value` pair of every Cookie header, each read on its own: other cookies on
    // the domain may hold any bytes (a Latin-1 or UTF-8 value), and must not hide ours.
    let cookie_values: Vec<&HeaderValue> = headers.get_all(header::COOKIE).iter().collect();
    // Cookie names are case-sensitive; ids are not.
    let plain_cookie_id = cookie_values.iter().any(|value| {
        value.as_bytes().split(|&b| b == b';').any(|pair| {
            std::str::from_utf8(pair).is_ok_and(|pair| {
                pair.trim()
                    .split_once('=')
                    .is_some_and(|(name, value)| name == cookie_name && is_canonical_id(value))
            })
        })
    });
    match named_sessions(&headers, cookie_name).map(ids) {
        Ok(found) => {
            for id in &found {
                let text = id.hyphenated().to_string();
                let from_cookie = cookie_values.iter().any(|c| {
                    String::from_utf8_lossy(c.as_bytes())
                        .to_ascii_lowercase()
                        .contains(&text)
                });
                assert!(
                    from_cookie || header_id == Some(Some(*id)),
                    "{id} came from nowhere: {headers:?}"
                );
            }
            assert!(
                !plain_cookie_id || !found.is_empty(),
                "cookie id missed: {headers:?}"
            );
            if let Some(Some(id)) = header_id {
                assert!(found.contains(&id), "X-Session-Id ignored: {headers:?}");
            }
            if found.is_empty() {
                assert_eq!(header_id, None, "X-Session-Id ignored: {headers:?}");
            }
        }
        Err(error) => {
            assert!(
                !plain_cookie_id,
                "cookie id lost to a bad header: {headers:?}"
            );
            assert_eq!(
                header_id,
                Some(None),
                "refused without a bad header: {headers:?}"
            );
            assert_validation_error(error, "X-Session-Id");
        }
    }

    let client = client_ip(&headers, peer, &trusted);
    let peer = peer.to_canonical();
    if !trusted.iter().any(|net| net.contains(&peer)) {
        assert_eq!(
            client, peer,
            "an untrusted peer's X-Forwarded-For was believed"
        );
    } else if client != peer {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        assert!(hops.contains(&client), "{client} is not a hop: {headers:?}");
    }

    for content_type in headers.get_all(header::CONTENT_TYPE) {
        let bytes = content_type.as_bytes();
        if is_json(bytes) {
            let essence = bytes.split(|&b| b == b';').next().unwrap_or_default();
            assert!(
                essence
                    .trim_ascii()
                    .to_ascii_lowercase()
                    .starts_with(b"application/"),
                "{content_type:?} taken for JSON"
            );
        }
        assert_eq!(is_json(bytes), is_json(&bytes.to_ascii_uppercase()));
    }
}

/// `session_id`: a candidate id through `parse_id`, and through each way a client can hand
/// one in (JSON field, X-Session-Id, cookie).
///
/// - `parse_id` accepts exactly the canonical spelling (any case), and its answer prints
///   back as the lowercase input and parses again to itself;
/// - the body field, the header and the cookie agree with `parse_id`: a canonical id is
///   taken, anything else is a 400 (field, header) or ignored (cookie).
pub fn session_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_id(text);
    assert_eq!(parsed.is_some(), is_canonical_id(text), "{text:?}");
    if let Some(id) = parsed {
        let canonical = id.hyphenated().to_string();
        assert_eq!(canonical, text.to_ascii_lowercase());
        assert_eq!(parse_id(&canonical), Some(id));
        assert_eq!(parse_id(&text.to_ascii_uppercase()), Some(id));
        assert_eq!(Uuid::parse_str(&canonical).ok(), Some(id));
    }

    let mut object = simd_json::owned::Object::default();
    object.insert("client_session_id".into(), OwnedValue::from(text));
    let body = OwnedValue::from(object);
    match client_session_id(Some(&body), false) {
        Ok(found) if text.is_empty() => assert_eq!(found, None),
        Ok(found) => assert_eq!(found, parsed, "{text:?}"),
        Err(error) => {
            assert!(parsed.is_none(), "{text:?} refused");
            assert_validation_error(error, "client_session_id");
        }
    }
    match client_session_id(Some(&body), true) {
        Ok(found) => assert_eq!(found, Some(parsed.expect("only ids are taken"))),
        Err(error) => {
            assert!(parsed.is_none(), "{text:?} refused");
            assert_validation_error(error, "client_session_id");
        }
    }

    if let Ok(value) = HeaderValue::from_str(text) {
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", value);
        match named_sessions(&headers, COOKIE_NAMES[0]).map(ids) {
            Ok(found) => assert_eq!(found, [parsed.expect("only ids are taken")]),
            Err(error) => {
                assert!(parsed.is_none(), "X-Session-Id {text:?} refused");
                assert_validation_error(error, "X-Session-Id");
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{}={text}", COOKIE_NAMES[0])) {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value);
        let found = named_sessions(&headers, COOKIE_NAMES[0])
            .map(ids)
            .unwrap_or_else(|_| panic!("a cookie alone is never refused: {text:?}"));
        assert!(found.len() <= 1, "one cookie names one session: {text:?}");
        let found = found.first().copied();
        if parsed.is_some() {
            assert_eq!(found, parsed, "cookie {text:?}");
        } else {
            // The cookie parser trims and may split; whatever it takes must be canonical.
            assert!(
                found.is_none_or(|id| text.to_ascii_lowercase().contains(&id.to_string())),
                "cookie {text:?} gave {found:?}"
            );
        }
    }
}

/// `config`: TOML text through `Config::from_toml`, and environment entries (with the same
/// TOML as the file named by `SESSIONGATE_CONFIG`, when given) through `Config::from_vars`.
///
/// - nothing panics; errors are one line (the binary prints them as its only output);
/// - an accepted configuration respects every documented bound, and the session cookie the
///   gateway would send for it is a valid header carrying the configured attributes.
pub fn config(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let toml = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    check_config(Config::from_toml(&toml), &toml);

    let mut vars = HashMap::new();
    for entry in parts {
        let entry = String::from_utf8_lossy(entry);
        let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
        vars.insert(name.to_string(), value.to_string());
    }
    let file = vars.contains_key("SESSIONGATE_CONFIG").then(|| {
        let file = std::env::temp_dir().join(format!(
            "sessiongate-fuzz-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&file, &toml).expect("write the TOML file");
        vars.insert(
            "SESSIONGATE_CONFIG".to_string(),
            file.to_string_lossy().into_owned(),
        );
        file
    });
    let result = Config::from_vars(&vars);
    if let Some(file) = file {
        let _ = std::fs::remove_file(file);
    }
    let unknown = vars.keys().any(|name| {
        name.starts_with("SESSIONGATE_")
            && !name.starts_with("SESSIONGATE_PORT")
            && !name.starts_with("SESSIONGATE_SERVICE_")
            && ![
                "SESSIONGATE_LISTEN",
                "SESSIONGATE_ADMIN_LISTEN",
                "SESSIONGATE_INTERNAL_LISTEN",
                "SESSIONGATE_ENV",
                "SESSIONGATE_CONFIG",
                "SESSIONGATE_REDIS_TIMEOUT_MS",
                "SESSIONGATE_BODY_LIMIT_BYTES",
                "SESSIONGATE_LOG_FORMAT",
            ]
            .contains(&name.as_str())
    });
    if unknown {
        assert!(
            result.is_err(),
            "unknown SESSIONGATE_ variable accepted: {vars:?}"
        );
    }
    check_config(result, &format!("{vars:?}"));
}

fn check_config(result: Result<Config, sessiongate::config::ConfigError>, input: &str) {
    let config = match result {
        Err(error) => {
            let line = error.to_string();
            assert!(
                !line.contains(['\n', '\r']),
                "configuration error is not one line: {line:?}"
            );
            return;
        }
        Ok(config) => config,
    };
    assert!(
        (64..=16 * 1024 * 1024).contains(&config.body_limit),
        "{input}"
    );
    assert!((1..=64).contains(&config.redis_pool_size), "{input}");
    assert!((1..=16_384).contains(&config.redis_shards), "{input}");
    assert!(config.touch_interval.as_secs() <= 60, "{input}");
    assert!(!config.redis_timeout.is_zero(), "{input}");
    assert!(!config.header_read_timeout.is_zero(), "{input}");
    assert!(
        config.near_limit > 0.0 && config.near_limit <= 1.0,
        "{input}"
    );
    if let Some(token) = &config.service_token {
        assert!(token.len() >= 16, "{input}");
        assert!(!token.chars().any(|c| c.is_whitespace() || c.is_control()));
    }
    let allowances = config
        .policies
        .iter()
        .flat_map(|p| std::iter::once(&p.allowance).chain(p.plans.iter().map(|(_, a)| a)));
    for allowance in allowances {
        assert!((1..=1_000_000_000).contains(&allowance.limit), "{input}");
        assert!(
            (1..=allowance.limit).contains(&allowance.default_cost),
            "{input}"
        );
    }
    for policy in &config.policies {
        for (plan, _) in &policy.plans {
            assert!(config.plans.contains(plan), "{input}");
        }
    }

    // The Set-Cookie line, built as `http::response::set_session_cookie` builds it.
    let cookie = &config.cookie;
    let id = Uuid::nil();
    let max_age = i64::try_from(cookie.max_age.as_secs()).unwrap_or_else(|_| {
        panic!(
            "cookie.max_age_secs {} accepted but cannot be sent as Max-Age: {input}",
            cookie.max_age.as_secs()
        )
    });
    let mut built = cookie::Cookie::build((cookie.name.as_str(), id.to_string()))
        .path(cookie.path.as_str())
        .same_site(cookie.same_site)
        .http_only(cookie.http_only)
        .secure(cookie.secure)
        .max_age(cookie::time::Duration::seconds(max_age));
    if let Some(domain) = &cookie.domain {
        built = built.domain(domain.as_str());
    }
    let line = built.build().to_string();
    HeaderValue::from_str(&line)
        .unwrap_or_else(|_| panic!("accepted cookie settings give an invalid header {line:?}"));
    let parsed = cookie::Cookie::parse(line.as_str())
        .unwrap_or_else(|e| panic!("Set-Cookie {line:?} does not parse back: {e}"));
    assert_eq!(parsed.name(), cookie.name, "{line:?}");
    assert_eq!(parsed.value(), id.to_string(), "{line:?}");
    assert_eq!(parsed.path(), Some(cookie.path.as_str()), "{line:?}");
    assert_eq!(
        parsed.max_age().map(|d| d.whole_seconds()),
        Some(max_age),
        "{line:?}"
    );
}
