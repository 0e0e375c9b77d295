//! Quotas and the internal API: exactness under concurrency, windows, idempotency, auth.

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;
use sessiongate::model::quota::{calendar_end, CalendarUnit, Policy, Window};

use crate::support::{session_key, split, with_token, RedisServer, TestGateway, TOKEN};

fn policy(operation: &str, limit: u64, window: Window, counter: Option<&str>) -> Policy {
    Policy {
        counter: counter.map(Into::into),
        ..Policy::new(operation, limit, window)
    }
}

#[tokio::test]
async fn consume_grants_up_to_the_limit_then_refuses_with_headers() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let info = gw.info(&id).await;
    assert_eq!(
        info["rate_limits"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "concept_generation".to_string(),
            "concept_refinement".into(),
            "concept_storage".into()
        ])
    );
    assert_eq!(info["rate_limits"]["concept_generation"]["remaining"], 10);

    for n in 1..=10u64 {
        let response = gw
            .quota(
                reqwest::Method::POST,
                &id,
                "concept_generation/consume",
                None,
            )
            .await;
        assert!(response.headers()["ratelimit-policy"]
            .to_str()
            .expect("ascii")
            .starts_with("\"concept_generation\";q=10;w="));
        let (status, body) = split(response).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["allowed"], true);
        assert_eq!(
            (body["limit"].as_u64(), body["remaining"].as_u64()),
            (Some(10), Some(10 - n))
        );
        assert_eq!(body["usage_stats"]["concepts_generated"].as_u64(), Some(n));
    }
    let response = gw
        .quota(
            reqwest::Method::POST,
            &id,
            "concept_generation/consume",
            None,
        )
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let ratelimit = response.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .to_string();
    let (status, body) = split(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error_code"], "rate_limit_exceeded");
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(
        body["usage_stats"]["concepts_generated"], 10,
        "a refusal counts nothing"
    );
    assert!(
        ratelimit.starts_with("\"concept_generation\";r=0;t="),
        "{ratelimit}"
    );

    // The month window ends at the first instant of next month (UTC), from Redis's clock.
    let now = chrono::Utc::now().timestamp();
    let reset_at =
        chrono::DateTime::parse_from_rfc3339(body["reset_at"].as_str().expect("reset_at"))
            .expect("rfc3339");
    assert_eq!(reset_at.timestamp(), calendar_end(CalendarUnit::Month, now));
    assert!(
        retry_after.abs_diff((reset_at.timestamp() - now) as u64) <= 2,
        "{retry_after}"
    );

    let info = gw.info(&id).await;
    assert_eq!(info["usage_stats"]["concepts_generated"], 10);
    assert_eq!(info["rate_limits"]["concept_generation"]["remaining"], 0);
    assert_eq!(
        info["rate_limits"]["concept_generation"]["reset_at"],
        body["reset_at"]
    );
    assert_eq!(info["rate_limits"]["concept_storage"]["remaining"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_consumes_on_three_gateways_grant_exactly_the_limit() {
    let redis = RedisServer::start();
    let url = redis.url(0);
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::start_on(&url, with_token).await);
    }
    let id = gateways[0].new_session().await;
    redis.cli(&["CONFIG", "RESETSTAT"]);

    let requests = (0..500).map(|i| gateways[i % 3].consume(&id, "concept_generation", None));
    let answers = futures_util::future::join_all(requests).await;
    let granted = answers.iter().filter(|(status, _)| *status == 200).count();
    let denied = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!((granted, denied), (10, 490), "exactly the limit is granted");

    let info = gateways[1].info(&id).await;
    assert_eq!(info["usage_stats"]["concepts_generated"], 10);
    assert_eq!(info["rate_limits"]["concept_generation"]["remaining"], 0);

    // One round trip per consume: 500 FCALL and nothing else reached Redis.
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("fcall"), 500, "{stats}");
    let client_commands: u64 = stats
        .lines()
        // Not request work: this test's INFO and CONFIG RESETSTAT, the gateways' health
        // probe (one PING a second each), and their near caches' tracking set-up and
        // heartbeat (`SET NX` and `GET` of `sg:epoch`, a second per tracking connection).
        .filter(|l| {
            l.starts_with("cmdstat_")
                && !l.contains("cmdstat_info:")
                && !l.contains("cmdstat_config|")
                && !l.contains("cmdstat_ping:")
                && !l.contains("cmdstat_client|tracking:")
                && !l.contains("cmdstat_set:")
                && !l.contains("cmdstat_get:")
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum::<u64>();
    // Inside the scripts: HMGET and TIME, and on the 10 grants one HSET of every field
    // changed (+ the first touch's EXPIRE).
    assert!(client_commands <= 500 * 3 + 10 + 1, "{stats}");
    drop(redis);
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let body = json!({"cost": 3, "idempotency_key": "job-42"});
    let (status, first) = gw
        .consume(&id, "concept_generation", Some(body.clone()))
        .await;
    assert_eq!((status, first["remaining"].as_u64()), (200, Some(7)));
    let response = gw
        .quota(
            reqwest::Method::POST,
            &id,
            "concept_generation/consume",
            Some(body),
        )
        .await;
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, again) = split(response).await;
    assert_eq!(
        (status, &again),
        (200, &first),
        "the same answer, nothing consumed twice"
    );
    let info = gw.info(&id).await;
    assert_eq!(info["usage_stats"]["concepts_generated"], 3);

    // Refunds: idempotent too, and never below zero.
    let refund = json!({"cost": 2, "idempotency_key": "job-42-failed"});
    for _ in 0..2 {
        let (status, body) = split(
            gw.quota(
                reqwest::Method::POST,
                &id,
                "concept_generation/refund",
                Some(refund.clone()),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, body["remaining"].as_u64()),
            (200, Some(9)),
            "{body}"
        );
        assert_eq!(body["usage_stats"]["concepts_generated"], 1);
    }
    let (status, body) = split(
        gw.quota(
            reqwest::Method::POST,
            &id,
            "concept_generation/refund",
            Some(json!({"cost": 5})),
        )
        .await,
    )
    .await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(10)));
    assert_eq!(
        body["usage_stats"]["concepts_generated"], 0,
        "never below zero"
    );
}

#[tokio::test]
async fn check_reads_without_consuming() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    gw.consume(&id, "concept_refinement", None).await;
    for _ in 0..3 {
        let response = gw
            .quota(reqwest::Method::GET, &id, "concept_refinement", None)
            .await;
        let (status, body) = split(response).await;
        assert_eq!(status, 200);
        assert_eq!(
            (body["allowed"].as_bool(), body["remaining"].as_u64()),
            (Some(true), Some(9))
        );
        assert_eq!(body["usage_stats"]["concepts_refined"], 1);
    }
}

#[tokio::test]
async fn rolling_windows_start_at_first_use_and_lapse() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let before = chrono::Utc::now().timestamp();
    let (_, body) = gw.consume(&id, "concept_refinement", None).await;
    let reset_at = chrono::DateTime::parse_from_rfc3339(body["reset_at"].as_str().expect("ts"))
        .expect("rfc3339");
    let after = chrono::Utc::now().timestamp();
    assert!(
        (before + 86_400..=after + 86_400 + 1).contains(&reset_at.timestamp()),
        "{body}"
    );

    // A lapsed window (its end in the past) starts afresh on the next use.
    let key = session_key(&id);
    let _: () = gw
        .redis
        .hset(&key, ("q:concept_refinement", format!("{}:10", before - 1)))
        .await
        .expect("HSET");
    let (status, body) = gw.consume(&id, "concept_refinement", None).await;
    assert_eq!(
        (status, body["remaining"].as_u64()),
        (200, Some(9)),
        "{body}"
    );
}

#[tokio::test]
async fn token_bucket_policies_allow_a_burst_then_a_steady_rate() {
    let gw = TestGateway::start_with(|c| {
        with_token(c);
        c.policies = vec![policy(
            "api",
            3,
            Window::Gcra {
                interval: Duration::from_secs(60),
            },
            None,
        )];
    })
    .await;
    let id = gw.new_session().await;
    for remaining in [2, 1, 0] {
        let (status, body) = gw.consume(&id, "api", None).await;
        assert_eq!(
            (status, body["remaining"].as_u64()),
            (200, Some(remaining)),
            "{body}"
        );
    }
    let response = gw
        .quota(reqwest::Method::POST, &id, "api/consume", None)
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert_eq!(response.status().as_u16(), 429);
    assert!(
        (59..=60).contains(&retry_after),
        "one token per minute: {retry_after}"
    );
    let info = gw.info(&id).await;
    assert_eq!(info["rate_limits"]["api"]["limit"], 3);
    assert_eq!(info["rate_limits"]["api"]["remaining"], 0);
    assert_eq!(
        info["usage_stats"],
        serde_json::json!({}),
        "no counter configured, none shown"
    );
}

#[tokio::test]
async fn internal_api_errors() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let unknown = "0b0a5f2e-3c1d-4e5f-8a9b-0c1d2e3f4a5b";

    let (status, body) = gw.consume(unknown, "concept_generation", None).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("resource_not_found"))
    );
    let (status, body) = gw.consume(&id, "teleportation", None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["known_operations"],
        json!([
            "concept_generation",
            "concept_refinement",
            "concept_storage"
        ])
    );
    let (status, body) = gw.consume("not-a-uuid", "concept_generation", None).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("validation_error"))
    );
    for bad in [
        json!({"cost": 0}),
        json!({"cost": 11}),
        json!({"cost": "1"}),
        json!({"idempotency_key": ""}),
        json!({"idempotency_key": "has space"}),
    ] {
        let (status, body) = gw
            .consume(&id, "concept_generation", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let response = gw
        .quota(
            reqwest::Method::GET,
            &id,
            "concept_generation/consume",
            None,
        )
        .await;
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["allow"].to_str().ok()
        ),
        (405, Some("POST"))
    );

    let path = gw.url(&format!(
        "/internal/v1/sessions/{id}/quota/concept_generation/consume"
    ));
    let response = gw.http.post(&path).send().await.expect("request");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (401, Some("unauthorized"))
    );
    let response = gw
        .http
        .post(&path)
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        gw.info(&id).await["usage_stats"]["concepts_generated"],
        0,
        "refused calls consume nothing"
    );

    let closed = TestGateway::start().await;
    let response = closed
        .http
        .post(closed.url(&format!(
            "/internal/v1/sessions/{id}/quota/concept_generation/consume"
        )))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status().as_u16(),
        404,
        "no token configured: no internal API"
    );
}

#[tokio::test]
async fn session_creation_is_throttled_per_client_ip() {
    let gw = TestGateway::start_with(|c| {
        c.creation_throttle.per_minute = 1.try_into().expect("nonzero");
        c.creation_throttle.burst = 2.try_into().expect("nonzero");
    })
    .await;
    let create = |forwarded: Option<&'static str>| {
        let mut request = gw.http.post(gw.url("/api/session/"));
        if let Some(ip) = forwarded {
            request = request.header("x-forwarded-for", ip);
        }
        request.send()
    };
    assert_eq!(create(None).await.expect("request").status().as_u16(), 200);
    assert_eq!(create(None).await.expect("request").status().as_u16(), 200);
    let response = create(Some("203.0.113.9")).await.expect("request");
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("secs")
            >= 1
    );
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "untrusted X-Forwarded-For is ignored"
    );

    // Existing sessions are still served: only creation is throttled.
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 429);

    let behind_proxy = TestGateway::start_with(|c| {
        c.creation_throttle.per_minute = 1.try_into().expect("nonzero");
        c.creation_throttle.burst = 1.try_into().expect("nonzero");
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let response = behind_proxy
            .http
            .post(behind_proxy.url("/api/session/"))
            .header("x-forwarded-for", client)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status().as_u16(),
            200,
            "{client} has its own allowance"
        );
    }
    let response = behind_proxy
        .http
        .post(behind_proxy.url("/api/session/"))
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 429);
}

/// The Lua window arithmetic (run by Redis) agrees with the Rust one at the edges.
#[tokio::test]
async fn lua_and_rust_calendar_math_agree_at_the_edges() {
    let gw = TestGateway::start().await;
    let lib = include_str!("../../src/store/quota_lib.lua");
    // The library is built on a policy's literals (store/quota_scripts.rs), and
    // fresh_window_end reads the allowance's kind and unit, which load_session sets.
    let script = format!(
        "local FIELD, FEEDS, COUNTER_FIELDS, ALLOWANCES = 'q:x', 0, {{}}, {{}}\n{lib}\n\
         KIND, PARAM = 'calendar', ARGV[2]\nreturn fresh_window_end(tonumber(ARGV[1]))"
    );
    let mut instants = Vec::new();
    for year in [1999, 2000, 2024, 2025, 2026, 2028, 2099, 2100] {
        for month in 1..=12u32 {
            let first = chrono::NaiveDate::from_ymd_opt(year, month, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .expect("date")
                .and_utc()
                .timestamp();
            instants.extend([
                first - 1,
                first,
                first + 1,
                first + 86_399,
                first + 86_400 * 27 + 43_210,
            ]);
        }
    }
    for unit in [
        CalendarUnit::Minute,
        CalendarUnit::Hour,
        CalendarUnit::Day,
        CalendarUnit::Month,
    ] {
        for &instant in &instants {
            let from_lua: i64 = gw
                .redis
                .eval(
                    script.as_str(),
                    Vec::<String>::new(),
                    vec![instant.to_string(), unit.as_str().to_string()],
                )
                .await
                .expect("EVAL");
            assert_eq!(
                from_lua,
                calendar_end(unit, instant),
                "{unit:?} at {instant}"
            );
        }
    }
}

/// Token rotation: with `SESSIONGATE_SERVICE_TOKEN_NEXT` set, both tokens are accepted (a
/// backend may use either while it moves over), any other is still 401.
#[tokio::test]
async fn the_next_service_token_is_accepted_beside_the_current_one() {
    const NEXT: &str = "next-service-token-0123456789";
    let gw = TestGateway::start_with(|config| {
        with_token(config);
        config.service_token_next = Some(NEXT.to_string());
    })
    .await;
    let id = gw.new_session().await;
    let path = gw.url(&format!(
        "/internal/v1/sessions/{id}/quota/concept_generation/consume"
    ));
    for (token, expected) in [
        (TOKEN, 200),
        (NEXT, 200),
        ("previous-token-0123456789", 401),
    ] {
        let response = gw
            .http
            .post(&path)
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), expected, "{token}");
    }
    assert_eq!(gw.info(&id).await["usage_stats"]["concepts_generated"], 2);
}
