//! Hostile input (issue 8, "Hardening"): bodies and headers built to break parsers, over
//! real HTTP (reqwest, or raw TCP where reqwest refuses to send the bytes).
//!
//! After every refused request each test checks that the gateway still serves a normal one
//! and that the request created or changed nothing in Redis ("loses nothing"). The inputs
//! the fuzz targets (`fuzz/`) found or were seeded with are replayed here through the same
//! checks, so `cargo test` keeps every crash fixed.

use std::collections::{BTreeMap, HashMap};

use crate::raw::{raw, request, Raw};
use crate::support::{session_key, set_cookies, split, with_token, TestGateway, TOKEN};
use fred::prelude::*;
use serde_json::json;

#[path = "../../fuzz/src/checks.rs"]
mod checks;

const LIMIT: usize = 16 * 1024;

// --- helpers -------------------------------------------------------------------------------

/// Every session in the gateway's database with all its stored fields.
async fn state(gw: &TestGateway) -> BTreeMap<String, HashMap<String, String>> {
    let keys: Vec<String> = gw
        .redis
        .custom(
            fred::cmd!("KEYS"),
            vec![sessiongate::store::SESSION_KEY_PATTERN],
        )
        .await
        .expect("KEYS");
    let mut sessions = BTreeMap::new();
    for key in keys {
        let fields: HashMap<String, String> = gw.redis.hgetall(&key).await.expect("HGETALL");
        sessions.insert(key, fields);
    }
    sessions
}

/// The gateway answers a normal request for `id` (read-only, so it changes nothing either).
async fn assert_serves(gw: &TestGateway, id: &str) {
    let (status, body) = split(gw.get_as("/api/session/info", id).await).await;
    assert_eq!(status, 200, "the gateway stopped serving: {body}");
    assert_eq!(body["session_id"], id);
}

/// The stored state is exactly `before` and the gateway still serves.
async fn assert_lost_nothing(
    gw: &TestGateway,
    before: &BTreeMap<String, HashMap<String, String>>,
    id: &str,
    what: &str,
) {
    assert_eq!(
        &state(gw).await,
        before,
        "{what} changed the stored sessions"
    );
    assert_serves(gw, id).await;
}

/// The preferences of `id` as the API returns them.
async fn preferences(gw: &TestGateway, id: &str) -> serde_json::Value {
    let (status, body) = split(gw.get_as("/api/session/preferences", id).await).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `PUT /api/session/preferences` with a raw body.
async fn put_preferences(gw: &TestGateway, id: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = gw
        .http
        .put(gw.url("/api/session/preferences"))
        .header("x-session-id", id)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    split(response).await
}

/// `POST path` with a raw JSON body.
async fn post_raw(gw: &TestGateway, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = gw
        .http
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    split(response).await
}

/// Asserts that nothing the client wrote became a response header: no header line holds
/// the marker `evil` the hostile inputs carry, and every `Set-Cookie` is our session
/// cookie with a server-side id.
fn assert_no_injected_header(answer: &Raw) {
    for (name, value) in &answer.headers {
        let value = String::from_utf8_lossy(value).to_ascii_lowercase();
        assert!(
            !name.contains("evil") && !value.contains("evil"),
            "client bytes in a response header: {}",
            answer.head
        );
    }
    for cookie in answer.headers.iter().filter(|(n, _)| n == "set-cookie") {
        let cookie = String::from_utf8_lossy(&cookie.1).into_owned();
        let value = cookie
            .strip_prefix("concept_session=")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_default();
        assert!(
            checks::is_canonical_id(value),
            "Set-Cookie carries something else than a session id: {cookie}"
        );
    }
}

// --- fuzz inputs, replayed -----------------------------------------------------------------

/// Runs every committed input of a fuzz target (seeds and crash regressions) through the
/// target's checks, and names every file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for folder in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("dir entry").path()));
    }
    files.sort();
    assert!(!files.is_empty(), "no committed inputs for {target}");
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("read input");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: inputs failing the fuzz checks (messages above): {failed:#?}"
    );
}

#[test]
fn fuzz_inputs_json_body() {
    replay("json_body", checks::json_body);
}

#[test]
fn fuzz_inputs_headers() {
    replay("headers", checks::headers);
}

#[test]
fn fuzz_inputs_session_id() {
    replay("session_id", checks::session_id);
}

#[test]
fn fuzz_inputs_config() {
    replay("config", checks::config);
}

/// Found by the `json_body` target: simd-json keeps both entries of a repeated key, so the
/// gateway stored `{"a":1,"a":2}` as preferences and read `client_session_id` from the
/// first of two (other parsers take the last).
#[test]
fn parsed_bodies_never_hold_duplicate_keys() {
    for body in [
        r#"{"a":1,"a":2}"#,
        r#"{"p":{"x":true,"x":false}}"#,
        r#"{"client_session_id":"6f9619ff-8b86-4011-b42d-00cf4fc964ff","client_session_id":null}"#,
    ] {
        if let Ok(Some(value)) =
            sessiongate::http::request::parse_json(bytes::Bytes::from_static(body.as_bytes()))
        {
            assert!(
                !checks::has_duplicate_keys(&value),
                "{body} parsed as {value:?}"
            );
        }
    }
}

/// Found by the `config` target: an unknown variable's name was printed as is, so a name
/// holding a line break split the one-line start-up error (the file path too, by reading).
#[test]
fn configuration_errors_are_one_line() {
    let vars = HashMap::from([(
        "SESSIONGATE_ADMIN\nenv = \"production\"".to_string(),
        "1".to_string(),
    )]);
    let error = sessiongate::config::Config::from_vars(&vars).expect_err("unknown variable");
    assert!(!error.to_string().contains('\n'), "{error}");
    // The same for the path of the TOML file, named in the error when it cannot be read.
    let vars = HashMap::from([(
        "SESSIONGATE_CONFIG".to_string(),
        "/nonexistent\nenv = \"production\"".to_string(),
    )]);
    let error = sessiongate::config::Config::from_vars(&vars).expect_err("missing file");
    assert!(!error.to_string().contains('\n'), "{error}");
}

// --- bodies --------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_body_is_413_and_stores_nothing() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let (status, _) = put_preferences(&gw, &id, br#"{"theme":"dark"}"#.to_vec()).await;
    assert_eq!(status, 200);
    let before = state(&gw).await;

    // One byte over the limit, with a Content-Length.
    let padded = |len: usize| {
        let mut body = br#"{"client_session_id":null,"pad":""#.to_vec();
        body.resize(len - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    for path in ["/api/session/", "/api/session/sync"] {
        let (status, body) = post_raw(&gw, path, padded(LIMIT + 1)).await;
        assert_eq!(
            (status, &body["error_code"]),
            (413, &json!("payload_too_large"))
        );
        assert_lost_nothing(&gw, &before, &id, path).await;
    }
    let (status, body) = put_preferences(&gw, &id, padded(LIMIT + 1)).await;
    assert_eq!(
        (status, &body["error_code"]),
        (413, &json!("payload_too_large"))
    );
    assert_lost_nothing(&gw, &before, &id, "oversized preferences").await;

    // The same without a Content-Length (chunked): the limit holds while reading.
    let body = padded(4 * LIMIT);
    let mut chunked = Vec::new();
    for piece in body.chunks(1000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(
        &gw,
        &request(
            "POST",
            "/api/session/",
            &[
                b"Content-Type: application/json",
                b"Transfer-Encoding: chunked",
            ],
            &chunked,
        ),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_eq!(answer.json()["error_code"], "payload_too_large");
    assert_lost_nothing(&gw, &before, &id, "chunked oversized body").await;

    // A declared terabyte that never comes: refused at once from the header alone.
    let answer = raw(
        &gw,
        &request(
            "POST",
            "/api/session/",
            &[
                b"Content-Type: application/json",
                b"Content-Length: 1000000000000",
            ],
            b"",
        ),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_lost_nothing(&gw, &before, &id, "declared terabyte").await;

    // Exactly at the limit is accepted: the limit is the documented one, not lower.
    let (status, body) = post_raw(&gw, "/api/session/", padded(LIMIT)).await;
    assert_eq!(
        (status, &body["is_new_session"]),
        (200, &json!(true)),
        "{body}"
    );
    assert_eq!(gw.session_count().await, 2);
    assert_eq!(preferences(&gw, &id).await, json!({"theme": "dark"}));
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_not_a_crash() {
    // A limit large enough for 100,000 brackets to reach the parser.
    let gw = TestGateway::start_with(|c| c.body_limit = 1024 * 1024).await;
    let id = gw.new_session().await;
    let before = state(&gw).await;
    let open = |n: usize| "[".repeat(n).into_bytes();
    let closed = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes();
    for (what, body) in [
        ("100k open brackets", open(100_000)),
        ("100k closed brackets", closed(100_000)),
        ("100k nested objects", objects(100_000)),
        ("2k closed brackets", closed(2_000)),
    ] {
        for path in ["/api/session/", "/api/session/sync"] {
            let (status, answer) = post_raw(&gw, path, body.clone()).await;
            assert_eq!(
                (status, &answer["error_code"]),
                (400, &json!("validation_error")),
                "{what} on {path}: {answer}"
            );
        }
        let (status, answer) = put_preferences(&gw, &id, body).await;
        assert_eq!(status, 400, "{what} as preferences: {answer}");
        assert_lost_nothing(&gw, &before, &id, what).await;
    }

    // Deep but within the parser's bound: parsed, then refused by the preferences limit.
    let mut deep = br#"{"a":"#.to_vec();
    deep.extend_from_slice(&closed(1_000));
    deep.push(b'}');
    let (status, answer) = put_preferences(&gw, &id, deep).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .is_some_and(|d| d.contains("deep")),
        "{answer}"
    );
    assert_lost_nothing(&gw, &before, &id, "1000 levels of preferences").await;
}

#[tokio::test]
async fn invalid_utf8_in_a_body_is_a_400() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let (status, _) = put_preferences(&gw, &id, br#"{"theme":"dark"}"#.to_vec()).await;
    assert_eq!(status, 200);
    let before = state(&gw).await;
    for body in [
        &b"{\"client_session_id\":\"\xff\xfe\"}"[..],
        b"{\"theme\":\"caf\xe9\"}",
        b"{\"\xc3\x28\":1}",
        b"{\"theme\":\"\xed\xa0\x80\"}", // a UTF-16 surrogate encoded as UTF-8
    ] {
        let what = String::from_utf8_lossy(body);
        let (status, answer) = post_raw(&gw, "/api/session/sync", body.to_vec()).await;
        assert_eq!(
            (status, &answer["error_code"]),
            (400, &json!("validation_error")),
            "{what}: {answer}"
        );
        let (status, answer) = put_preferences(&gw, &id, body.to_vec()).await;
        assert_eq!(status, 400, "{what} as preferences: {answer}");
        assert_lost_nothing(&gw, &before, &id, &what).await;
    }
    // Escaped lone surrogates are not Unicode either: refused, not stored as broken text.
    for body in [r#"{"theme":"\ud800"}"#, r#"{"theme":"\udc00x"}"#] {
        let (status, answer) = put_preferences(&gw, &id, body.as_bytes().to_vec()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_lost_nothing(&gw, &before, &id, body).await;
    }
    assert_eq!(preferences(&gw, &id).await, json!({"theme": "dark"}));
}

/// Duplicate keys are refused (400 `validation_error`), whatever the endpoint: the contract
/// says nothing, RFC 8259 leaves the meaning open and RFC 7493 (I-JSON) forbids them, and
/// a body that two parsers read differently (say a proxy's and ours) must not be acted on.
#[tokio::test]
async fn duplicate_keys_are_refused() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let other = gw.new_session().await;
    let (status, _) = put_preferences(&gw, &id, br#"{"theme":"dark"}"#.to_vec()).await;
    assert_eq!(status, 200);
    let before = state(&gw).await;

    for body in [
        r#"{"theme":"light","theme":"dark"}"#.to_string(),
        r#"{"layout":{"cols":1,"cols":2}}"#.to_string(),
    ] {
        let (status, answer) = put_preferences(&gw, &id, body.clone().into_bytes()).await;
        assert_eq!(
            (status, &answer["error_code"]),
            (400, &json!("validation_error")),
            "{body}: {answer}"
        );
        assert_lost_nothing(&gw, &before, &id, &body).await;
    }
    let sync = format!(r#"{{"client_session_id":"{other}","client_session_id":"{id}"}}"#);
    let response = gw
        .http
        .post(gw.url("/api/session/sync"))
        .header("content-type", "application/json")
        .body(sync.clone())
        .send()
        .await
        .expect("request");
    assert!(set_cookies(&response).is_empty(), "{sync} set a cookie");
    let (status, answer) = split(response).await;
    assert_eq!(status, 400, "{sync}: {answer}");
    assert_lost_nothing(&gw, &before, &id, &sync).await;
    assert_eq!(preferences(&gw, &id).await, json!({"theme": "dark"}));
}

#[tokio::test]
async fn nul_bytes_in_strings_round_trip_or_are_refused() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;

    // Escaped NULs are valid JSON: stored and returned exactly (Redis and Lua are 8-bit clean).
    let stored = json!({"name": "a\u{0}b", "k\u{0}": ["\u{0}"], "\u{0}": 0});
    let (status, answer) =
        put_preferences(&gw, &id, serde_json::to_vec(&stored).expect("json")).await;
    assert_eq!((status, &answer), (200, &stored));
    assert_eq!(preferences(&gw, &id).await, stored);
    let before = state(&gw).await;

    // A raw NUL (an unescaped control character) is not JSON; nor is a NUL outside strings.
    for body in [
        &b"{\"name\":\"a\x00b\"}"[..],
        b"{\"name\":1}\x00",
        b"\x00{}",
        b"{\"client_session_id\":\"\x00\"}",
    ] {
        let what = format!("{body:?}");
        let (status, answer) = put_preferences(&gw, &id, body.to_vec()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        let (status, answer) = post_raw(&gw, "/api/session/sync", body.to_vec()).await;
        assert_eq!(status, 400, "{what} on sync: {answer}");
        assert_lost_nothing(&gw, &before, &id, &what).await;
    }
    // A NUL inside an id is no id.
    let (status, answer) = post_raw(
        &gw,
        "/api/session/sync",
        br#"{"client_session_id":"6f9619ff-8b86-4011-b42d-00cf4fc964f\u0000"}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, &answer["error_code"]),
        (400, &json!("validation_error"))
    );
    assert_lost_nothing(&gw, &before, &id, "NUL in an id").await;
    assert_eq!(preferences(&gw, &id).await, stored);
}

// --- headers -------------------------------------------------------------------------------

#[tokio::test]
async fn big_and_many_cookies_still_find_the_session() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let before = state(&gw).await;
    let info = |cookie: String| {
        gw.http
            .get(gw.url("/api/session/info"))
            .header("cookie", cookie)
            .send()
    };

    // A 10 KB cookie next to ours.
    let big = format!("tracking={}; concept_session={id}", "x".repeat(10 * 1024));
    let (status, body) = split(info(big).await.expect("request")).await;
    assert_eq!((status, &body["session_id"]), (200, &json!(id)), "{body}");

    // 200 cookies, ours last, after 199 stale copies of it.
    let mut many: Vec<String> = (0..100).map(|i| format!("c{i}=v{i}")).collect();
    many.extend((0..99).map(|i| format!("concept_session=stale-{i}")));
    many.push(format!("concept_session={id}"));
    let (status, body) = split(info(many.join("; ")).await.expect("request")).await;
    assert_eq!((status, &body["session_id"]), (200, &json!(id)), "{body}");

    // Our cookie itself 10 KB of garbage: ignored, as any non-id cookie is.
    let response = gw
        .http
        .get(gw.url("/api/session/info"))
        .header(
            "cookie",
            format!("concept_session={}", "9".repeat(10 * 1024)),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
    assert_lost_nothing(&gw, &before, &id, "big cookies").await;

    // 200 Cookie header lines are more than the server takes: refused, and nothing is lost.
    let lines: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("Cookie: c{i}=v{i}").into_bytes())
        .collect();
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let answer = raw(&gw, &request("POST", "/api/session/", &lines, b"")).await;
    assert!(
        answer.status == 431 || answer.status == 400,
        "{}",
        answer.head
    );
    // Headers past the server's buffer: refused too.
    let huge = format!("Cookie: concept_session={id}; big={}", "y".repeat(1 << 20));
    let answer = raw(
        &gw,
        &request("POST", "/api/session/", &[huge.as_bytes()], b""),
    )
    .await;
    assert!(
        answer.status == 431 || answer.status == 400,
        "{}",
        answer.head
    );
    assert_lost_nothing(&gw, &before, &id, "too many header lines").await;
}

#[tokio::test]
async fn nothing_a_client_sends_is_echoed_into_a_response_header() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let before = state(&gw).await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let auth = auth.as_bytes();
    let json_type: &[u8] = b"Content-Type: application/json";
    let sent_header = format!("X-Session-Id: {id}%0d%0aSet-Cookie:%20evil=1");
    let sent_cookie = format!("Cookie: concept_session={id}%0d%0aSet-Cookie:evil=1");
    let injections: Vec<(&str, Vec<u8>)> = vec![
        (
            "percent-encoded CRLF in X-Session-Id",
            request("GET", "/api/session/info", &[sent_header.as_bytes()], b""),
        ),
        (
            "raw CRLF in client_session_id",
            request(
                "POST",
                "/api/session/sync",
                &[json_type],
                // Raw CR LF inside a JSON string: not JSON at all.
                format!("{{\"client_session_id\":\"{id}\r\nSet-Cookie: evil=1\"}}").as_bytes(),
            ),
        ),
        (
            "escaped CRLF in client_session_id",
            request(
                "POST",
                "/api/session/",
                &[json_type],
                br#"{"client_session_id":"x\r\nSet-Cookie: evil=1"}"#,
            ),
        ),
        (
            "percent-encoded CRLF in the cookie",
            request("GET", "/api/session/info", &[sent_cookie.as_bytes()], b""),
        ),
        (
            "percent-encoded CRLF in the path",
            request("POST", "/api/session/%0d%0aSet-Cookie:%20evil=1", &[], b""),
        ),
        (
            "percent-encoded CRLF in an operation name",
            request(
                "POST",
                &format!("/internal/v1/sessions/{id}/quota/x%0d%0aSet-Cookie:evil=1/consume"),
                &[auth],
                b"",
            ),
        ),
        (
            "percent-encoded CRLF in a path session id",
            request(
                "GET",
                "/internal/v1/sessions/x%0d%0aSet-Cookie:evil=1/quota/concept_generation",
                &[auth],
                b"",
            ),
        ),
        (
            "CRLF in the idempotency key of an unknown operation",
            request(
                "POST",
                &format!("/internal/v1/sessions/{id}/quota/nope/consume"),
                &[auth, json_type],
                br#"{"idempotency_key":"k\r\nSet-Cookie: evil=1"}"#,
            ),
        ),
    ];
    for (what, sent) in &injections {
        let answer = raw(&gw, sent).await;
        assert!(
            (400..500).contains(&answer.status),
            "{what}: {}",
            answer.head
        );
        assert_no_injected_header(&answer);
        assert_lost_nothing(&gw, &before, &id, what).await;
    }

    // An idempotency key holding CR LF is refused; one holding its percent-encoding is a
    // valid key, granted and then replayed: in both cases the key is data, never a header.
    let consume = |key: &str| {
        request(
            "POST",
            &format!("/internal/v1/sessions/{id}/quota/concept_generation/consume"),
            &[auth, json_type],
            format!(r#"{{"idempotency_key":"{key}"}}"#).as_bytes(),
        )
    };
    let refused = raw(&gw, &consume(r"k\r\nSet-Cookie: evil=1")).await;
    assert_eq!(refused.status, 400, "{}", refused.head);
    assert_eq!(refused.json()["error_code"], "validation_error");
    assert_no_injected_header(&refused);
    assert_lost_nothing(&gw, &before, &id, "CR LF in an idempotency key").await;
    let encoded = consume("k%0d%0aSet-Cookie:evil=1");
    let first = raw(&gw, &encoded).await;
    assert_eq!(first.status, 200, "{}", first.head);
    assert_no_injected_header(&first);
    let replay = raw(&gw, &encoded).await;
    assert_eq!(replay.status, 200, "{}", replay.head);
    assert!(
        replay.head.contains("idempotent-replayed: true"),
        "{}",
        replay.head
    );
    assert_no_injected_header(&replay);
    let before = state(&gw).await;

    // Raw CR, LF or NUL inside a header value: the server refuses the request.
    for (what, header) in [
        ("bare CR", &b"X-Session-Id: x\rSet-Cookie: evil=1"[..]),
        ("NUL", b"X-Session-Id: x\x00Set-Cookie: evil=1"),
        (
            "CR in the cookie",
            b"Cookie: concept_session=x\rSet-Cookie: evil=1",
        ),
    ] {
        let answer = raw(&gw, &request("POST", "/api/session/", &[header], b"")).await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.head);
        assert_no_injected_header(&answer);
        assert_lost_nothing(&gw, &before, &id, what).await;
    }
}

#[tokio::test]
async fn invalid_utf8_in_headers_is_refused_or_ignored() {
    let gw = TestGateway::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    let id = gw.new_session().await;
    let before = state(&gw).await;

    // A non-UTF-8 X-Session-Id is a bad id: 400, with the JSON error.
    let answer = raw(
        &gw,
        &request(
            "GET",
            "/api/session/info",
            &[b"X-Session-Id: \xff\xfe"],
            b"",
        ),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(answer.json()["error_code"], "validation_error");
    assert_no_injected_header(&answer);
    // A non-UTF-8 Content-Type is not JSON: 415.
    let answer = raw(
        &gw,
        &request(
            "POST",
            "/api/session/",
            &[b"Content-Type: application/\xffjson"],
            b"{}",
        ),
    )
    .await;
    assert_eq!(answer.status, 415, "{}", answer.head);
    assert_lost_nothing(&gw, &before, &id, "non-UTF-8 headers").await;

    // Our cookie alone with a non-UTF-8 value: ignored, a new session is made.
    let answer = raw(
        &gw,
        &request(
            "POST",
            "/api/session/",
            &[b"Cookie: concept_session=\xff"],
            b"",
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.json()["is_new_session"], true);
    assert_no_injected_header(&answer);

    // A non-UTF-8 X-Forwarded-For from a trusted proxy is no address: the peer counts.
    let answer = raw(
        &gw,
        &request(
            "POST",
            "/api/session/",
            &[b"X-Forwarded-For: \xc3\x28, 1.2.3.4"],
            b"",
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(gw.session_count().await, 3);

    // Someone else's cookie on the same domain with a non-ASCII value (UTF-8 or Latin-1)
    // must not cost the browser its session: ours is still found next to it.
    for other in [&b"lang=caf\xc3\xa9"[..], b"legacy=caf\xe9"] {
        let mut header = b"Cookie: ".to_vec();
        header.extend_from_slice(other);
        header.extend_from_slice(b"; concept_session=");
        header.extend_from_slice(id.as_bytes());
        let answer = raw(&gw, &request("POST", "/api/session/", &[&header], b"")).await;
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert_eq!(
            (
                &answer.json()["session_id"],
                &answer.json()["is_new_session"]
            ),
            (&json!(id), &json!(false)),
            "{:?} lost the session",
            String::from_utf8_lossy(&header)
        );
    }
    assert_eq!(gw.session_count().await, 3, "a session was created");
    let after: HashMap<String, String> = gw.redis.hgetall(session_key(&id)).await.expect("HGETALL");
    assert_eq!(Some(&after), before.get(&session_key(&id)));
}
