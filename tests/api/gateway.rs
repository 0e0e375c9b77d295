//! Gateway mode: a real upstream (a small hyper server in this test binary) behind the
//! gateway's `[[routes]]`, and a real nginx in front of the forward-auth endpoint.

use serde_json::json;
use sessiongate::config::Config;

use crate::services::free_port;
use crate::support::{split, with_token, RedisServer, TestGateway, TOKEN};
use crate::upstreams::{Nginx, Upstream};

/// A gateway with the TOML `routes` (and a `generate` quota of `limit` per day, counted as
/// concepts_generated) in front of `upstream`.
pub async fn gateway(limit: u64, routes: &str, adjust: impl FnOnce(&mut Config)) -> TestGateway {
    let parsed = Config::from_toml(&format!(
        "[quotas.generate]\nlimit = {limit}\nwindow = \"day\"\ncounter = \"concepts_generated\"\n{routes}"
    ))
    .expect("valid gateway-mode configuration");
    TestGateway::start_with(|config| {
        config.policies = parsed.policies;
        config.routes = parsed.routes;
        with_token(config);
        adjust(config);
    })
    .await
}

pub fn metered(path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"{path}\"\nmethods = [\"POST\"]\nupstream = \"{upstream}\"\noperation = \"generate\"\ntimeout_ms = 500\n{extra}\n"
    )
}

#[tokio::test]
async fn grants_reach_the_upstream_and_denials_never_do() {
    let upstream = Upstream::start().await;
    let gw = gateway(3, &metered("/v1/generate", &upstream.url(), ""), |_| {}).await;
    let id = gw.new_session().await;

    for expected_remaining in [2, 1, 0] {
        let response = gw.post_as("/v1/generate", &id).await;
        assert_eq!(response.status(), 200);
        let ratelimit = response.headers()["ratelimit"].to_str().expect("ascii");
        assert!(
            ratelimit.contains(&format!("r={expected_remaining};")),
            "{ratelimit}"
        );
        assert_eq!(
            response.text().await.expect("body"),
            "upstream saw /v1/generate"
        );
    }
    for _ in 0..2 {
        let response = gw.post_as("/v1/generate", &id).await;
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("retry-after"));
        let (_, body) = split(response).await;
        assert_eq!(body["error_code"], "rate_limit_exceeded");
    }

    let hits = upstream.hits();
    assert_eq!(hits.len(), 3, "denied requests must not reach the upstream");
    assert!(hits
        .iter()
        .all(|hit| hit.session.as_deref() == Some(id.as_str())));
    assert_eq!(gw.generate_state(&id).await, (0, 3));
}

/// A metered request the upstream served costs one Redis call: the reservation, which counts
/// the usage too. Nothing is written once the upstream has answered.
#[tokio::test]
async fn a_served_metered_request_costs_one_redis_call() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let parsed = Config::from_toml(&format!(
        "[quotas.generate]\nlimit = 10\nwindow = \"day\"\ncounter = \"concepts_generated\"\n{}",
        metered("/v1/generate", &upstream.url(), "")
    ))
    .expect("valid gateway-mode configuration");
    let gw = TestGateway::start_on(&redis.url(0), |config| {
        config.policies = parsed.policies;
        config.routes = parsed.routes;
        with_token(config);
    })
    .await;
    let id = gw.new_session().await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert_eq!(gw.post_as("/v1/generate", &id).await.status(), 200);
    }
    let stats = redis.cli(&["INFO", "commandstats"]);
    let called: Vec<&str> = stats
        .lines()
        .filter(|line| {
            ["cmdstat_fcall:", "cmdstat_evalsha:", "cmdstat_eval:"]
                .iter()
                .any(|command| line.starts_with(command))
        })
        .collect();
    assert!(
        called.len() == 1 && called[0].starts_with("cmdstat_fcall:calls=5,"),
        "five requests, five function calls: {stats}"
    );
    assert_eq!(gw.generate_state(&id).await, (5, 5));
}

#[tokio::test]
async fn failed_upstream_calls_are_refunded() {
    let upstream = Upstream::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let routes = [
        metered("/v1/fail", &upstream.url(), ""),
        metered("/v1/hang", &upstream.url(), ""),
        metered("/v1/down", &closed, ""),
        metered("/v1/ok", &upstream.url(), ""),
    ]
    .concat();
    let gw = gateway(2, &routes, |_| {}).await;
    let id = gw.new_session().await;

    for (path, status) in [("/v1/fail", 500), ("/v1/hang", 504), ("/v1/down", 502)] {
        let response = gw.post_as(path, &id).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            gw.generate_state(&id).await,
            (2, 0),
            "{path} must be refunded"
        );
    }
    assert_eq!(gw.post_as("/v1/ok", &id).await.status(), 200);
    assert_eq!(gw.generate_state(&id).await, (1, 1));

    let metrics = gw.scrape().await;
    for outcome in [
        "refunded",
        "upstream_timeout",
        "upstream_error",
        "committed",
    ] {
        assert!(
            metrics.contains(&format!("outcome=\"{outcome}\"")),
            "no {outcome} in the proxy metrics"
        );
    }
}

#[tokio::test]
async fn commit_statuses_are_configurable() {
    let upstream = Upstream::start().await;
    let routes = metered(
        "/v1/fail",
        &upstream.url(),
        "commit_on = [\"2xx\", \"500\"]",
    );
    let gw = gateway(2, &routes, |_| {}).await;
    let id = gw.new_session().await;
    assert_eq!(gw.post_as("/v1/fail", &id).await.status(), 500);
    assert_eq!(gw.generate_state(&id).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overshoot_the_limit() {
    let upstream = Upstream::start().await;
    let gw = gateway(10, &metered("/v1/generate", &upstream.url(), ""), |_| {}).await;
    let id = gw.new_session().await;

    let requests = (0..100).map(|_| gw.post_as("/v1/generate", &id));
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let granted = statuses.iter().filter(|s| **s == 200).count();
    let denied = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((granted, denied), (10, 90), "{statuses:?}");
    assert_eq!(upstream.hits().len(), 10);
    assert_eq!(gw.generate_state(&id).await, (0, 10));
}

#[tokio::test]
async fn missing_sessions_are_refused_or_created() {
    let upstream = Upstream::start().await;
    let routes = [
        metered("/v1/strict", &upstream.url(), ""),
        metered("/v1/open", &upstream.url(), "missing_session = \"create\""),
    ]
    .concat();
    let gw = gateway(5, &routes, |_| {}).await;

    let response = gw
        .http
        .post(gw.url("/v1/strict"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(gw.post_as("/v1/strict", &unknown).await.status(), 404);
    assert_eq!(gw.post_as("/v1/strict", "not-a-uuid").await.status(), 400);
    assert!(upstream.hits().is_empty());

    let response = gw
        .http
        .post(gw.url("/v1/open"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    let hits = upstream.hits();
    let id = hits[0]
        .session
        .clone()
        .expect("the upstream got the new session");
    assert!(
        cookie.starts_with(&format!("concept_session={id};")),
        "{cookie}"
    );
    assert_eq!(gw.generate_state(&id).await, (4, 1));
}

#[tokio::test]
async fn bodies_stream_both_ways_and_unmetered_routes_pass_as_they_are() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/files/*\"\nupstream = \"{}\"\n",
        upstream.url()
    );
    let gw = gateway(5, &routes, |_| {}).await;

    // Far past the API's body limit: a proxied body is streamed, not collected.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let response = gw
        .http
        .put(gw.url("/files/a/echo"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-secret")
        .header("x-secret", "hop-by-hop")
        .body(payload.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.expect("body") == payload);

    let hit = &upstream.hits()[0];
    assert_eq!(hit.path, "/files/a/echo");
    assert_eq!(hit.session, None, "unmetered routes get no session");
    assert_eq!(hit.method, "PUT");
    assert_eq!(
        hit.forwarded_for.as_deref(),
        Some("127.0.0.1"),
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert!(hit.get("x-secret").is_none(), "{:?}", hit.headers);
    assert!(hit.get("x-forwarded-host").is_some());

    let response = gw
        .http
        .get(gw.url("/elsewhere"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn routes_answer_405_for_other_methods() {
    let upstream = Upstream::start().await;
    let gw = gateway(5, &metered("/v1/generate", &upstream.url(), ""), |_| {}).await;
    let response = gw
        .http
        .get(gw.url("/v1/generate"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert!(upstream.hits().is_empty());
}

#[tokio::test]
async fn authorize_answers_forward_auth_conventions() {
    let gw = gateway(2, "", |_| {}).await;
    let id = gw.new_session().await;

    let response = gw
        .http
        .get(gw.url("/internal/v1/authorize?operation=generate"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401, "the service token is required");

    let response = gw.authorize("", Some(&id), &[]).await;
    assert_eq!(response.status(), 200, "no operation: a session check");
    assert_eq!(response.headers()["x-session-id"], id.as_str());
    assert_eq!(gw.generate_state(&id).await, (2, 0));

    let response = gw.authorize("?operation=generate", Some(&id), &[]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .contains("r=1;"));
    assert_eq!(
        gw.generate_state(&id).await,
        (1, 1),
        "a grant counts at once"
    );

    // The proxy's query wins over a header the client may have sent along.
    let response = gw
        .authorize(
            "?operation=generate",
            Some(&id),
            &[("x-quota-operation", "nope"), ("x-quota-cost", "9")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let response = gw.authorize("?operation=generate", Some(&id), &[]).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(gw.generate_state(&id).await, (0, 2));

    // Below the path (Envoy's path_prefix) the query is the client's: only headers count.
    let other = gw.new_session().await;
    let response = gw
        .authorize(
            "/v1/generate?operation=nope",
            Some(&other),
            &[("x-quota-operation", "generate"), ("x-quota-cost", "2")],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.generate_state(&other).await, (0, 2));

    assert_eq!(
        gw.authorize("?operation=nope", Some(&other), &[])
            .await
            .status(),
        404
    );
    assert_eq!(
        gw.authorize("?operation=generate&cost=0", Some(&other), &[])
            .await
            .status(),
        400
    );
    assert_eq!(
        gw.authorize("?operation=generate", None, &[])
            .await
            .status(),
        404
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(gw.authorize("", Some(&unknown), &[]).await.status(), 404);
}

#[tokio::test]
async fn the_internal_api_can_have_a_listener_of_its_own() {
    let gw = gateway(2, "", |config| {
        config.internal_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let id = gw.new_session().await;
    let response = gw.authorize("", Some(&id), &[]).await;
    assert_eq!(response.status(), 404, "not on the public listener");

    let internal = gw.gateway.internal_addr().expect("an internal listener");
    let response = gw
        .http
        .get(format!("http://{internal}/internal/v1/authorize"))
        .bearer_auth(TOKEN)
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let response = gw
        .http
        .get(format!("http://{internal}/api/session/info"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404, "only the internal API there");
}

#[tokio::test]
async fn cors_echoes_allowed_origins_only() {
    let gw = TestGateway::start_with(|config| {
        config.cors = Config::from_toml("[cors]\nallowed_origins = [\"https://app.example\"]\n")
            .expect("valid cors")
            .cors;
    })
    .await;
    let preflight = |origin: &'static str| {
        gw.http
            .request(reqwest::Method::OPTIONS, gw.url("/api/session/"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("preflight");
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-methods"],
        "POST, DELETE"
    );
    let refused = preflight("https://evil.example").await.expect("preflight");
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("origin", "https://app.example")
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(response.headers()["vary"], "origin");
    assert_eq!(response.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_lets_grants_through_and_stops_denials() {
    let upstream = Upstream::start().await;
    let gw = gateway(10, "", |_| {}).await;
    let nginx = Nginx::forward_auth(gw.gateway.public_addr(), upstream.addr);
    let id = gw.new_session().await;

    let through_nginx = |path: &'static str, id: Option<String>| {
        let mut request = gw.http.post(nginx.url(path));
        if let Some(id) = id {
            request = request.header("cookie", format!("concept_session={id}"));
        }
        request.send()
    };

    let response = through_nginx("/generate/one", Some(id.clone()))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .contains("r=9;"));
    assert_eq!(upstream.hits()[0].session.as_deref(), Some(id.as_str()));

    // Concurrent requests through nginx: exactly the remaining nine reach the upstream.
    let requests = (0..40).map(|_| through_nginx("/generate/many", Some(id.clone())));
    let responses = futures_util::future::join_all(requests).await;
    let mut granted = 0;
    for response in responses {
        let response = response.expect("request");
        match response.status().as_u16() {
            200 => granted += 1,
            429 => assert!(response.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(granted, 9);
    assert_eq!(
        upstream.hits().len(),
        10,
        "denials never reach the upstream"
    );
    assert_eq!(gw.generate_state(&id).await, (0, 10));

    let response = through_nginx("/generate/x", None).await.expect("request");
    assert_eq!(response.status(), 404, "no session");
    let response = through_nginx("/generate/x", Some(uuid::Uuid::new_v4().to_string()))
        .await
        .expect("request");
    assert_eq!(response.status(), 404, "unknown session");
    assert_eq!(upstream.hits().len(), 10);
}

/// Every answer carries `X-Request-Id`, and the upstream gets the same id: the caller's when
/// a trusted proxy sent it, a fresh one when anyone else did (a client cannot choose the id
/// its request is logged under).
#[tokio::test]
async fn request_ids_follow_a_request_upstream_and_come_from_trusted_proxies_only() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/files/*\"\nupstream = \"{}\"\n",
        upstream.url()
    );
    for trusted in [false, true] {
        let gw = gateway(5, &routes, |config| {
            if trusted {
                config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a network")];
            }
        })
        .await;
        let path = format!("/files/{trusted}");
        let response = gw
            .http
            .get(gw.url(&path))
            .header("x-request-id", "lb-7f3a-42")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-request-id"].to_str().expect("ascii");
        match trusted {
            true => assert_eq!(id, "lb-7f3a-42"),
            false => assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            ),
        }
        let hits = upstream.hits();
        let hit = hits.iter().find(|h| h.path == path).expect("forwarded");
        assert_eq!(hit.get("x-request-id"), Some(id), "the upstream's id");

        let response = gw.http.get(gw.url("/api/session/info")).send().await;
        let response = response.expect("info");
        assert_eq!(response.status(), 404);
        assert!(
            response.headers().contains_key("x-request-id"),
            "error answers carry one"
        );
        let response = gw
            .http
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert!(
            response.headers().contains_key("x-request-id"),
            "admin answers carry one too"
        );
    }
}
