//! The request head an upstream receives in gateway mode: what the gateway removes,
//! replaces and adds before forwarding.
//!
//! Upstreams believe what the gateway tells them, so the gateway owns every header that says
//! which session a request has or who and where the client is:
//! - `X-Session-Id`, in any spelling (`X_Session_Id` reaches CGI and WSGI servers as the same
//!   variable), is removed; the session the gateway checked is set in its place;
//! - of the session cookies, only the one the gateway used is forwarded;
//! - `X-Forwarded-For/-Proto/-Host` are the gateway's own, extending a trusted proxy's;
//! - other client-address, scheme, host and URL- or method-override headers (`Forwarded`,
//!   `X-Real-IP`, `Client-IP`, `X-Forwarded-Ssl`, `X-Original-URL`,
//!   `X-HTTP-Method-Override`, ...) pass only from `http.trusted_proxies`, and their
//!   underscore spellings never;
//! - hop-by-hop headers describe the client's connection and are dropped.
//!
//! Pure header rewriting: no I/O, no routing or metering decisions.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use uuid::Uuid;

use super::request::{SESSION_HEADER, SESSION_HEADER_NAME};
use crate::model::session::parse_id;

/// Who sent the request, and which session the gateway settled on.
pub struct Forwarding<'a> {
    pub peer: IpAddr,
    /// The peer is one of `http.trusted_proxies`.
    pub trusted: bool,
    pub session: Option<Uuid>,
    pub cookie_name: &'a str,
}

const FOR: &str = "x-forwarded-for";
const PROTO: &str = "x-forwarded-proto";
const HOST: &str = "x-forwarded-host";
// The same as names: a map looked up by a `&str` parses it first, on every request.
const FOR_NAME: HeaderName = HeaderName::from_static(FOR);
const PROTO_NAME: HeaderName = HeaderName::from_static(PROTO);
const HOST_NAME: HeaderName = HeaderName::from_static(HOST);

/// Client-address, scheme, host, URL-override and method-override headers that upstreams
/// and their frameworks read (Rails reads `Client-IP`, Rack derives the scheme from
/// `X-Forwarded-Ssl`); believable only when a trusted proxy set them. Every other
/// `X-Forwarded-*` and `X-Original-*` header counts too (see [`is_spoofable`]).
const SPOOFABLE: [&str; 22] = [
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "front-end-https",
    "x-url-scheme",
    "x-host",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-envoy-external-address",
    "x-envoy-original-path",
];

/// Whether a (dashed, lower-case) header name claims something about the client or the
/// request's URL that only a trusted proxy may say.
fn is_spoofable(name: &str) -> bool {
    SPOOFABLE.contains(&name)
        || ((name.starts_with("x-forwarded-") || name.starts_with("x-original-"))
            && ![FOR, PROTO, HOST].contains(&name))
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

/// Rewrites a request head for its upstream.
pub fn prepare_request(headers: &mut HeaderMap, forwarding: &Forwarding<'_>) {
    let host = headers.remove(header::HOST);
    strip_hop_by_hop(headers);
    strip_claims(headers, forwarding.trusted);
    forwarded_for(headers, forwarding, host);
    if let Some(id) = forwarding.session {
        // `Uuid`'s hyphenated form is always a valid header value.
        if let Ok(value) =
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
        {
            headers.insert(SESSION_HEADER_NAME, value);
        }
    }
    keep_used_session_cookie(headers, forwarding.cookie_name, forwarding.session);
}

/// Rewrites an upstream's response head for the client.
pub fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name present (a head has a handful): removing every listed name
    // would parse and hash each of them, present or not, on every forwarded request.
    let doomed: Vec<HeaderName> = {
        let listed: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                HOP_BY_HOP.contains(&name)
                    // hyper frames the body itself (length or chunked) on the next hop.
                    || name == "transfer-encoding"
                    || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes what a client may not claim: any spelling of the session header, the
/// underscore spellings of the forwarding headers, and (from untrusted peers) the
/// spoofable headers.
fn strip_claims(headers: &mut HeaderMap, trusted: bool) {
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|name| match name.as_str() {
            name if name.contains('_') => {
                let dashed = name.replace('_', "-");
                let dashed = dashed.as_str();
                [SESSION_HEADER, FOR, PROTO, HOST].contains(&dashed) || is_spoofable(dashed)
            }
            name => name == SESSION_HEADER || (!trusted && is_spoofable(name)),
        })
        .cloned()
        .collect();
    for name in claims {
        headers.remove(name);
    }
}

/// `X-Forwarded-For/-Proto/-Host`. A client's own are believed only from a trusted proxy;
/// from anyone else they are replaced, so upstreams can't be lied to.
fn forwarded_for(headers: &mut HeaderMap, forwarding: &Forwarding<'_>, host: Option<HeaderValue>) {
    let peer = forwarding.peer.to_canonical();
    let trusted = forwarding.trusted;
    let earlier = headers
        .get(&FOR_NAME)
        .and_then(|v| v.to_str().ok())
        .filter(|_| trusted)
        .map(str::to_string);
    let chain = match earlier {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => address(peer),
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(FOR_NAME, value);
    }
    if !(trusted && headers.contains_key(&PROTO_NAME)) {
        headers.insert(PROTO_NAME, HeaderValue::from_static("http"));
    }
    if !(trusted && headers.contains_key(&HOST_NAME)) {
        match host {
            Some(host) => headers.insert(HOST_NAME, host),
            None => headers.remove(&HOST_NAME),
        };
    }
}

/// `ip` as text; an IPv4 address (the usual peer) without the formatting machinery, which
/// was a third of preparing a forwarded request's head.
fn address(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(itoa::Buffer::new().format(octet));
    }
    text
}

/// Drops every session cookie but the first one naming `session`, so the upstream reads the
/// session the gateway checked (and charged), not another cookie of the same name.
fn keep_used_session_cookie(headers: &mut HeaderMap, cookie_name: &str, session: Option<Uuid>) {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut used_kept = false;
    let mut dropped = false;
    for pair in headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()),
            None => (pair, &b""[..]),
        };
        if name != cookie_name.as_bytes() {
            kept.push(pair);
            continue;
        }
        let names_session = std::str::from_utf8(value)
            .ok()
            .and_then(parse_id)
            .is_some_and(|id| Some(id) == session);
        if names_session && !used_kept {
            used_kept = true;
            kept.push(pair);
        } else {
            dropped = true;
        }
    }
    if !dropped {
        return;
    }
    let joined = kept.join(&b"; "[..]);
    match HeaderValue::from_bytes(&joined) {
        Ok(value) if !joined.is_empty() => headers.insert(header::COOKIE, value),
        _ => headers.remove(header::COOKIE),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn forwarding(trusted: bool, session: Option<Uuid>) -> Forwarding<'static> {
        Forwarding {
            peer: "192.0.2.7".parse().expect("ip"),
            trusted,
            session,
            cookie_name: "concept_session",
        }
    }

    #[test]
    fn the_session_header_is_the_gateways_in_every_spelling() {
        let id = Uuid::new_v4();
        let mut h = headers(&[
            ("x-session-id", "forged"),
            ("x_session_id", "forged"),
            ("X_Session-Id", "forged"),
        ]);
        prepare_request(&mut h, &forwarding(true, Some(id)));
        let sessions: Vec<_> = h.get_all(SESSION_HEADER).iter().collect();
        assert_eq!(sessions, [id.to_string().as_str()]);
        assert!(!h.keys().any(|name| name.as_str().contains('_')), "{h:?}");

        let mut h = headers(&[("x-session-id", "forged")]);
        prepare_request(&mut h, &forwarding(false, None));
        assert!(!h.contains_key(SESSION_HEADER));
    }

    #[test]
    fn spoofable_headers_pass_only_from_trusted_proxies() {
        let sent = [
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("client-ip", "6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-original-host", "evil.example"),
            ("x_real_ip", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-app-header", "kept"),
        ];
        let mut h = headers(&sent);
        prepare_request(&mut h, &forwarding(false, None));
        for (name, _) in &sent[..12] {
            assert!(!h.contains_key(*name), "{name} from a stranger");
        }
        assert_eq!(h[FOR], "192.0.2.7");
        assert_eq!(h["x-app-header"], "kept");

        let mut h = headers(&sent);
        prepare_request(&mut h, &forwarding(true, None));
        assert_eq!(h["x-real-ip"], "6.6.6.6");
        assert_eq!(h["forwarded"], "for=6.6.6.6");
        assert!(!h.contains_key("x_real_ip"), "underscores never pass");
        assert!(!h.contains_key("x_forwarded_for"));
        assert_eq!(h[FOR], "6.6.6.6, 192.0.2.7");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "192.0.2.7",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(address(ip), ip.to_string());
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let mut h = headers(&[
            ("connection", "X-Custom, close"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "per hop"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-app-header", "kept"),
        ]);
        prepare_response(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-app-header"]);
    }

    #[test]
    fn only_the_used_session_cookie_is_forwarded() {
        let used = Uuid::new_v4();
        let other = Uuid::new_v4();
        let cookie = format!(
            "theme=dark; concept_session={other}; concept_session={used}; concept_session={used}; x=1"
        );
        let mut h = headers(&[("cookie", &cookie)]);
        prepare_request(&mut h, &forwarding(false, Some(used)));
        assert_eq!(
            h[header::COOKIE].to_str().expect("ascii"),
            format!("theme=dark; concept_session={used}; x=1")
        );

        let mut h = headers(&[("cookie", &format!("concept_session={other}"))]);
        prepare_request(&mut h, &forwarding(false, Some(used)));
        assert!(!h.contains_key(header::COOKIE));

        let untouched = "a=1;b=2";
        let mut h = headers(&[("cookie", untouched)]);
        prepare_request(&mut h, &forwarding(false, None));
        assert_eq!(h[header::COOKIE], untouched);
    }
}
