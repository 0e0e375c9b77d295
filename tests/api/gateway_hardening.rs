//! Gateway mode under attack: what the gateway meters is what the upstream serves.
//!
//! Each attack from the hardening review is replayed over raw TCP (no client library that
//! would tidy the request first) against real upstreams: nginx, which resolves dot segments
//! as the applications behind a gateway do, a raw server that echoes the request head byte
//! for byte, and a hyper application that records every header.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{gateway, metered};
use crate::raw::{raw, request, Raw};
use crate::support::{eventually, metric, TestGateway};
use crate::upstreams::{EchoHead, Nginx, Upstream};

const LIMIT: u64 = 100;

/// `POST path` with the session (when given) in `X-Session-Id`.
async fn post(gw: &TestGateway, path: &str, id: Option<&str>) -> Raw {
    let header = id.map(|id| format!("X-Session-Id: {id}"));
    let headers: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
    raw(gw, &request("POST", path, &headers, b"")).await
}

fn unmetered(path: &str, upstream: &str) -> String {
    format!("[[routes]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n")
}

/// What a traversal attempt must come to.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Routed as this canonical path.
    Path(&'static str),
    /// Refused before routing.
    BadRequest,
}

/// The review's spellings of "`/app/public/` then up into the metered `generate`", and of
/// "up out of `/static/`".
const TRAVERSALS: [(&str, Expect); 10] = [
    ("/app/public/../generate", Expect::Path("/app/generate")),
    ("/app/public/%2e%2e/generate", Expect::Path("/app/generate")),
    ("/app/public/%2E%2E/generate", Expect::Path("/app/generate")),
    ("/app/public/.%2e/generate", Expect::Path("/app/generate")),
    ("/app/public//../generate", Expect::Path("/app/generate")),
    ("/app/public/./../generate", Expect::Path("/app/generate")),
    ("/app/public/..%2fgenerate", Expect::BadRequest),
    ("/app/public/..;/generate", Expect::BadRequest),
    ("/static/%2e%2e/%2e%2e/admin", Expect::BadRequest),
    ("/static/../admin", Expect::Path("/admin")),
];

#[tokio::test]
async fn a_traversal_never_reaches_nginx_past_the_meter() {
    let nginx = Nginx::application();
    let upstream = nginx.url("");
    let routes = [
        metered("/app/generate", &upstream, ""),
        unmetered("/app/public/*", &upstream),
        unmetered("/static/*", &upstream),
    ]
    .concat();
    let gw = gateway(LIMIT, &routes, |_| {}).await;
    let id = gw.new_session().await;

    let mut charged = 0;
    for (path, expect) in TRAVERSALS {
        for session in [Some(id.as_str()), None] {
            let answer = post(&gw, path, session).await;
            let served = answer.text();
            match (expect, session) {
                (Expect::BadRequest, _) => {
                    assert_eq!(answer.status, 400, "{path}: {}", answer.head);
                    assert_eq!(answer.json()["error_code"], "validation_error");
                }
                (Expect::Path("/app/generate"), Some(_)) => {
                    assert_eq!(answer.status, 200, "{path}: {served}");
                    assert_eq!(served, "generate /app/generate", "{path}");
                    charged += 1;
                }
                (Expect::Path("/app/generate"), None) => {
                    assert_eq!(
                        answer.status, 404,
                        "{path}: metered, so a session is needed"
                    );
                }
                (Expect::Path(other), _) => {
                    assert_eq!(answer.status, 404, "{path} is {other}: no route exposes it");
                    assert!(!served.contains("admin"), "{path}: {served}");
                }
            }
            assert_eq!(
                gw.generate_state(&id).await,
                (LIMIT - charged, charged),
                "{path}: every generate nginx served was charged, and nothing else"
            );
        }
    }
    assert!(charged > 0);
}

#[tokio::test]
async fn the_upstream_receives_the_path_the_gateway_matched() {
    let echo = EchoHead::start().await;
    let routes = [
        metered("/app/generate", &echo.url(), ""),
        unmetered("/app/public/*", &echo.url()),
        unmetered("/static/*", &echo.url()),
    ]
    .concat();
    let gw = gateway(LIMIT, &routes, |_| {}).await;
    let id = gw.new_session().await;

    let own = [
        ("/app/public/a/./b/../c", Expect::Path("/app/public/a/c")),
        ("/app/public/%61%7Eb%2D", Expect::Path("/app/public/a~b-")),
        (
            "/app/public/%c3%a9/%3a",
            Expect::Path("/app/public/%C3%A9/%3A"),
        ),
        ("/app/public/x/", Expect::Path("/app/public/x/")),
        ("/app/public/x/.", Expect::Path("/app/public/x/")),
        ("/app/public/x%2Fy", Expect::BadRequest),
        ("/app/public/x%5Cy", Expect::BadRequest),
        ("/app/public/x\\..\\..\\generate", Expect::BadRequest),
        ("/app/public/x%00.txt", Expect::BadRequest),
        ("/app/public/%zz", Expect::BadRequest),
        ("/app/../../generate", Expect::BadRequest),
    ];
    for (path, expect) in TRAVERSALS.iter().chain(own.iter()) {
        let answer = post(&gw, &format!("{path}?q=%2e%2e/x"), Some(&id)).await;
        match expect {
            Expect::BadRequest => assert_eq!(answer.status, 400, "{path}: {}", answer.text()),
            Expect::Path(canonical) if canonical.starts_with("/app/") => {
                assert_eq!(answer.status, 200, "{path}: {}", answer.head);
                let request_line = answer.text().lines().next().unwrap_or_default().to_string();
                assert_eq!(
                    request_line,
                    format!("POST {canonical}?q=%2e%2e/x HTTP/1.1"),
                    "{path}: the canonical path, the query as sent"
                );
            }
            Expect::Path(_) => assert_eq!(answer.status, 404, "{path}"),
        }
    }
}

#[tokio::test]
async fn the_gateway_owns_the_session_header_and_the_session_cookie() {
    let upstream = Upstream::start().await;
    let routes = [
        metered("/owned/generate", &upstream.url(), ""),
        unmetered("/owned/files/*", &upstream.url()),
    ]
    .concat();
    let gw = gateway(LIMIT, &routes, |_| {}).await;
    let id = gw.new_session().await;
    let stranger = uuid::Uuid::new_v4().to_string();

    let send = |method: reqwest::Method, path: &str, headers: Vec<(&str, String)>| {
        let mut request = gw.http.request(method, gw.url(path));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let spoofed = [
        ("forwarded", "for=6.6.6.6".to_string()),
        ("x-real-ip", "6.6.6.6".to_string()),
        ("true-client-ip", "6.6.6.6".to_string()),
        ("x-original-url", "/admin".to_string()),
        ("x-rewrite-url", "/admin".to_string()),
        ("x-http-method-override", "DELETE".to_string()),
        ("client-ip", "6.6.6.6".to_string()),
        ("x-forwarded-ssl", "on".to_string()),
    ];

    // Unmetered: a forged id in any spelling never reaches the upstream.
    let mut forged = vec![
        ("x-session-id", stranger.clone()),
        ("x_session_id", stranger.clone()),
        ("X_Session-Id", stranger.clone()),
    ];
    forged.extend(spoofed.iter().cloned());
    let response = send(reqwest::Method::GET, "/owned/files/a", forged)
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    // A live session named on an unmetered route is passed on, checked.
    let response = send(
        reqwest::Method::GET,
        "/owned/files/b",
        vec![("x-session-id", id.clone())],
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);

    // Metered: two session cookies (a planted one first) and an underscore header.
    let cookie = format!("concept_session={stranger}; theme=dark; concept_session={id}");
    let response = send(
        reqwest::Method::POST,
        "/owned/generate",
        vec![("cookie", cookie), ("x_session_id", stranger.clone())],
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(gw.generate_state(&id).await, (LIMIT - 1, 1));

    let hits = upstream.hits();
    assert_eq!(hits.len(), 3);
    let claims = |hit: &crate::upstreams::Hit| -> Vec<String> {
        hit.headers
            .iter()
            .filter(|(name, _)| {
                name.replace('_', "-") == "x-session-id"
                    || spoofed.iter().any(|(spoofed, _)| spoofed == name)
            })
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    };
    assert!(claims(&hits[0]).is_empty(), "{:?}", hits[0].headers);
    assert_eq!(claims(&hits[1]), [format!("x-session-id: {id}")]);
    assert_eq!(claims(&hits[2]), [format!("x-session-id: {id}")]);
    assert_eq!(
        hits[2].get("cookie"),
        Some(format!("theme=dark; concept_session={id}").as_str()),
        "only the session cookie the gateway used"
    );
}

/// A gateway whose `/gone/*` routes are metered against the hyper upstream.
async fn metering_gateway(upstream: &Upstream) -> TestGateway {
    let routes = [
        metered("/gone/slow", &upstream.url(), ""),
        metered("/gone/collect", &upstream.url(), ""),
        metered("/gone/ok", &upstream.url(), ""),
    ]
    .concat();
    gateway(LIMIT, &routes, |_| {}).await
}

/// The session's quota settles where the charge equals the work the upstream did:
/// `(remaining, used)` with `used` calls that reached the upstream's `path`.
async fn settles(gw: &TestGateway, upstream: &Upstream, id: &str, path: &str, done: u64) {
    eventually(
        Duration::from_secs(10),
        "the reservations to settle",
        || async {
            let (remaining, used) = gw.generate_state(id).await;
            let reached = upstream.hits().iter().filter(|h| h.path == path).count() as u64;
            (remaining + used == LIMIT && used == done && reached >= done).then_some(())
        },
    )
    .await;
}

async fn client_gone(gw: &TestGateway, route: &str) -> f64 {
    let labels = format!("outcome=\"client_gone\",route=\"{route}\"");
    let alternate = format!("route=\"{route}\",outcome=\"client_gone\"");
    let scrape = gw.scrape().await;
    metric(&scrape, "sessiongate_proxy_requests_total", &labels)
        .or_else(|| metric(&scrape, "sessiongate_proxy_requests_total", &alternate))
        .unwrap_or(0.0)
}

/// Opens a connection and sends `bytes` on it.
async fn connect_and_send(gw: &TestGateway, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(gw.gateway.public_addr())
        .await
        .expect("connect");
    stream.write_all(bytes).await.expect("send");
    stream
}

#[tokio::test]
async fn a_client_that_goes_away_never_leaks_its_reservation() {
    let upstream = Upstream::start().await;
    let gw = metering_gateway(&upstream).await;
    let session = |id: &str| format!("X-Session-Id: {id}");

    // Half-closed after a complete request: whatever the gateway got to do is settled, and
    // the charge matches what the upstream did.
    let id = gw.new_session().await;
    for _ in 0..5 {
        let head = request("POST", "/gone/ok", &[session(&id).as_bytes()], b"");
        let mut stream = connect_and_send(&gw, &head).await;
        stream.shutdown().await.expect("half-close");
    }
    eventually(
        Duration::from_secs(10),
        "half-closed requests to settle",
        || async {
            let (remaining, used) = gw.generate_state(&id).await;
            let reached = upstream
                .hits()
                .iter()
                .filter(|h| h.path == "/gone/ok")
                .count() as u64;
            (remaining + used == LIMIT && used == reached).then_some(())
        },
    )
    .await;

    // Gone while the upstream works: the work is done, so it is charged, and counted.
    let gone_before = client_gone(&gw, "/gone/slow").await;
    let id = gw.new_session().await;
    for n in 1..=3 {
        let head = request("POST", "/gone/slow", &[session(&id).as_bytes()], b"");
        let stream = connect_and_send(&gw, &head).await;
        eventually(Duration::from_secs(10), "the upstream to start", || async {
            let started = upstream
                .hits()
                .iter()
                .filter(|h| h.path == "/gone/slow")
                .count();
            (started == n).then_some(())
        })
        .await;
        drop(stream);
    }
    settles(&gw, &upstream, &id, "/gone/slow", 3).await;
    eventually(
        Duration::from_secs(10),
        "client_gone to be counted",
        || async { (client_gone(&gw, "/gone/slow").await >= gone_before + 3.0).then_some(()) },
    )
    .await;

    // Gone halfway through its body: the upstream never gets a whole request, nothing is
    // charged.
    let id = gw.new_session().await;
    let head = format!("POST /gone/collect HTTP/1.1\r\nHost: x\r\nX-Session-Id: {id}\r\nContent-Length: 100\r\n\r\n0123456789");
    let stream = connect_and_send(&gw, head.as_bytes()).await;
    eventually(
        Duration::from_secs(10),
        "the upstream to get the head",
        || async {
            upstream
                .hits()
                .iter()
                .any(|h| h.path == "/gone/collect")
                .then_some(())
        },
    )
    .await;
    drop(stream);
    eventually(
        Duration::from_secs(10),
        "the reservation to be released",
        || async { (gw.generate_state(&id).await == (LIMIT, 0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_stalled_body_times_out_and_is_released() {
    let upstream = Upstream::start().await;
    let gw = metering_gateway(&upstream).await;
    let id = gw.new_session().await;
    // The route's 500 ms pass while the body never comes; the client is still there.
    let head = format!(
        "POST /gone/collect HTTP/1.1\r\nHost: x\r\nX-Session-Id: {id}\r\nContent-Length: 100\r\n\r\n"
    );
    let mut stream = connect_and_send(&gw, head.as_bytes()).await;
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer within the route's timeout")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(gw.generate_state(&id).await, (LIMIT, 0));
}

#[tokio::test]
async fn session_creation_is_throttled_per_network_and_per_gateway() {
    let upstream = Upstream::start().await;
    let route = metered(
        "/open/generate",
        &upstream.url(),
        "missing_session = \"create\"",
    );
    let gw = gateway(LIMIT, &route, |config| {
        config.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
        config.creation_throttle.per_minute = 1.try_into().expect("nonzero");
        config.creation_throttle.burst = 3.try_into().expect("nonzero");
    })
    .await;
    let from = |client: String| {
        gw.http
            .post(gw.url("/open/generate"))
            .header("x-forwarded-for", client)
            .send()
    };
    let mut statuses = Vec::new();
    for host in 1..=10 {
        let response = from(format!("2001:db8:1:2::{host}"))
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429, 429, 429],
        "one IPv6 /64 is one client"
    );
    let response = from("2001:db8:1:3::1".to_string()).await.expect("request");
    assert_eq!(response.status(), 200, "the next /64 is another client");

    let ceiling = gateway(LIMIT, &route, |config| {
        config.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
        config.creation_throttle.max_per_second = 1.try_into().expect("nonzero");
    })
    .await;
    let mut granted = 0;
    for host in 1..=10 {
        let response = ceiling
            .http
            .post(ceiling.url("/open/generate"))
            .header("x-forwarded-for", format!("198.51.100.{host}"))
            .send()
            .await
            .expect("request");
        granted += usize::from(response.status() == 200);
    }
    // One per second across all clients: ten requests take far less than the 9 s it would
    // take to earn them all.
    assert!(
        (1..=3).contains(&granted),
        "{granted} of 10 rotating addresses"
    );
}

#[tokio::test]
async fn request_heads_are_capped() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let head = |pad: usize| {
        format!(
            "GET /api/session/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Session-Id: {id}\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let fits = raw(&gw, head(28 * 1024).as_bytes()).await;
    assert_eq!(fits.status, 200, "{}", fits.head);
    let too_big = raw(&gw, head(40 * 1024).as_bytes()).await;
    assert_eq!(too_big.status, 431, "{}", too_big.head);
    // A head that never ends is refused as soon as it outgrows the limit, not held until
    // the header timeout.
    let unfinished = format!(
        "GET /api/session/info HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(40 * 1024)
    );
    let mut stream = connect_and_send(&gw, unfinished.as_bytes()).await;
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("431 before the 10 s header timeout")
        .expect("read");
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
}

#[tokio::test]
async fn a_cookie_naming_an_unknown_session_does_not_shadow_a_live_one() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let planted = uuid::Uuid::new_v4();
    let info = |headers: Vec<(&'static str, String)>| {
        let mut request = gw.http.get(gw.url("/api/session/info"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    for headers in [
        vec![(
            "cookie",
            format!("concept_session={planted}; concept_session={id}"),
        )],
        vec![
            ("cookie", format!("concept_session={planted}")),
            ("x-session-id", id.clone()),
        ],
    ] {
        let response = info(headers.clone()).await.expect("request");
        assert_eq!(response.status(), 200, "{headers:?}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["session_id"], json!(id), "{headers:?}");
    }
    let response = info(vec![("cookie", format!("concept_session={planted}"))])
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        404,
        "an unknown session alone is still unknown"
    );
}

#[tokio::test]
async fn connect_foreign_codings_vary_and_head_are_answered_plainly() {
    let upstream = Upstream::start().await;
    let routes = unmetered("/plain/*", &upstream.url());
    let gw = gateway(LIMIT, &routes, |config| {
        config.cors = sessiongate::config::Config::from_toml(
            "[cors]\nallowed_origins = [\"https://app.example\"]\n",
        )
        .expect("cors")
        .cors;
    })
    .await;

    let connect = raw(&gw, &request("CONNECT", "/plain/x", &[], b"")).await;
    assert_eq!(connect.status, 405, "{}", connect.head);
    let allow = connect.headers.iter().find(|(name, _)| name == "allow");
    assert!(allow.is_some_and(|(_, v)| !v.windows(7).any(|w| w == b"CONNECT")));

    let coded = raw(
        &gw,
        &request(
            "POST",
            "/plain/x",
            &[b"Transfer-Encoding: gzip, chunked"],
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(coded.status, 501, "{}", coded.head);
    assert!(upstream.hits().is_empty(), "{:?}", upstream.hits());

    let preflight = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.url("/api/session/"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers().get_all("vary").iter().count(), 1);

    for path in ["/metrics", "/healthz"] {
        let head = gw.http.head(gw.admin_url(path)).send().await.expect("HEAD");
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(head.bytes().await.expect("body").is_empty());
    }
}
