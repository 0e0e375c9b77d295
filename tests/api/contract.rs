//! The public endpoints, row by row against `contract.md`.

use fred::prelude::*;
use serde_json::json;

use crate::support::{session_key, set_cookies, split, TestGateway};

const UNKNOWN: &str = "0b0a5f2e-3c1d-4e5f-8a9b-0c1d2e3f4a5b";

fn is_rfc3339_utc(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn create_makes_a_new_session_with_the_contract_fields_and_cookie() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    let cookies = set_cookies(&response);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, body) = split(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_new_session"], true);
    let id = body["session_id"].as_str().expect("id");
    let parsed = uuid::Uuid::parse_str(id).expect("uuid");
    assert_eq!(parsed.get_version_num(), 4);
    assert!(is_rfc3339_utc(&body["created_at"]), "{body}");
    assert!(is_rfc3339_utc(&body["last_active"]), "{body}");
    assert_eq!(
        body["usage_stats"],
        json!({"concepts_generated": 0, "concepts_refined": 0, "concepts_stored": 0})
    );

    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(
        cookie.starts_with(&format!("concept_session={id};")),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000"] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} missing in {cookie}"
        );
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure outside production: {cookie}"
    );
    assert_eq!(gw.session_count().await, 1);
}

#[tokio::test]
async fn production_cookies_are_secure() {
    let gw = TestGateway::start_with(|c| c.cookie.secure = true).await;
    let response = gw
        .http
        .post(gw.url("/api/session"))
        .send()
        .await
        .expect("request");
    let cookies = set_cookies(&response);
    assert!(cookies[0].split("; ").any(|a| a == "Secure"), "{cookies:?}");
}

#[tokio::test]
async fn create_returns_the_current_session_from_cookie_or_header() {
    let gw = TestGateway::start().await;
    let mine = gw.new_session().await;
    let other = gw.new_session().await;

    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("cookie", format!("concept_session={mine}"))
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["session_id"].as_str()),
        (200, Some(mine.as_str()))
    );
    assert_eq!(body["is_new_session"], false);

    let response = gw
        .http
        .post(gw.url("/api/sessions"))
        .header("x-session-id", &other)
        .send()
        .await
        .expect("request");
    let (_, body) = split(response).await;
    assert_eq!(body["session_id"].as_str(), Some(other.as_str()));

    // Cookie wins over the header; the current session wins over client_session_id.
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("cookie", format!("theme=dark; concept_session={mine}"))
        .header("x-session-id", &other)
        .json(&json!({"client_session_id": other}))
        .send()
        .await
        .expect("request");
    let (_, body) = split(response).await;
    assert_eq!(body["session_id"].as_str(), Some(mine.as_str()));
    assert_eq!(gw.session_count().await, 2);
}

#[tokio::test]
async fn create_falls_back_to_a_known_client_id_and_never_creates_a_client_chosen_one() {
    let gw = TestGateway::start().await;
    let known = gw.new_session().await;

    let (status, body) = gw
        .post_json("/api/session/", json!({"client_session_id": known}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["session_id"].as_str(), &body["is_new_session"]),
        (Some(known.as_str()), &json!(false))
    );

    // A stale cookie falls through to the client id.
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("cookie", format!("concept_session={UNKNOWN}"))
        .json(&json!({"client_session_id": known}))
        .send()
        .await
        .expect("request");
    let (_, body) = split(response).await;
    assert_eq!(body["session_id"].as_str(), Some(known.as_str()));

    let (status, body) = gw
        .post_json("/api/session/", json!({"client_session_id": UNKNOWN}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_new_session"], true);
    assert_ne!(body["session_id"].as_str(), Some(UNKNOWN));
    assert_eq!(gw.session_count().await, 2);
}

#[tokio::test]
async fn garbage_cookies_are_ignored_but_bad_headers_and_bodies_are_refused() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("cookie", "concept_session=not-a-uuid")
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!((status, &body["is_new_session"]), (200, &json!(true)));

    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("x-session-id", "not-a-uuid")
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "validation_error");
    assert!(body["field_errors"]["X-Session-Id"].is_array(), "{body}");

    for bad in [
        json!({"client_session_id": 42}),
        json!({"client_session_id": "abc"}),
        json!([1]),
    ] {
        let (status, body) = gw.post_json("/api/session/", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(
            body,
            json!({
                "error": true,
                "error_code": "validation_error",
                "detail": body["detail"],
                "status_code": 400,
                "field_errors": body["field_errors"],
            })
        );
        assert!(
            body["detail"].is_string() && body["field_errors"].is_object(),
            "{body}"
        );
    }
}

#[tokio::test]
async fn create_accepts_empty_and_null_bodies() {
    // A body without a Content-Type is 415 since addendum 2 (tests/api/origins.rs).
    let gw = TestGateway::start().await;
    for (content_type, body) in [
        (None, ""),
        (Some("application/json"), ""),
        (Some("application/json"), "{}"),
        (
            Some("application/json; charset=utf-8"),
            r#"{"client_session_id": null}"#,
        ),
        (Some("application/json"), r#"{"client_session_id": ""}"#),
    ] {
        let mut request = gw.http.post(gw.url("/api/session/")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, answer) = split(request.send().await.expect("request")).await;
        assert_eq!(status, 200, "{content_type:?} {body:?}: {answer}");
        assert_eq!(answer["is_new_session"], true);
    }
}

#[tokio::test]
async fn body_errors_map_to_400_413_415() {
    let gw = TestGateway::start().await;
    let send = |content_type: &'static str, body: String| {
        gw.http
            .post(gw.url("/api/session/sync"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, body) = split(
        send("application/json", "{\"client_session_id\": ".into())
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("validation_error"))
    );

    let (status, body) = split(send("text/plain", "hello".into()).await.expect("request")).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let huge = format!("{{\"client_session_id\": \"{}\"}}", "x".repeat(17 * 1024));
    let (status, body) = split(send("application/json", huge).await.expect("request")).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(body["status_code"], 413);
    assert_eq!(
        gw.session_count().await,
        0,
        "refused requests create nothing"
    );
}

#[tokio::test]
async fn sync_adopts_keeps_or_creates() {
    let gw = TestGateway::start().await;
    let current = gw.new_session().await;
    let client = gw.new_session().await;

    // Known client id: adopted, cookie set to it.
    let response = gw
        .http
        .post(gw.url("/api/session/sync"))
        .header("cookie", format!("concept_session={current}"))
        .json(&json!({"client_session_id": client}))
        .send()
        .await
        .expect("request");
    let cookies = set_cookies(&response);
    let (status, body) = split(response).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"session_id": client, "is_synced": true, "message": "Sessions synchronized successfully"})
    );
    assert!(cookies[0].starts_with(&format!("concept_session={client};")));

    // Unknown client id, known current session: kept.
    let response = gw
        .http
        .post(gw.url("/api/sessions/sync/"))
        .header("x-session-id", &current)
        .json(&json!({"client_session_id": UNKNOWN}))
        .send()
        .await
        .expect("request");
    let (_, body) = split(response).await;
    assert_eq!(body["session_id"].as_str(), Some(current.as_str()));
    assert_eq!(body["is_synced"], false);

    // Both unknown: a new server-generated session, never the client's id.
    let response = gw
        .http
        .post(gw.url("/api/session/sync"))
        .header(
            "cookie",
            "concept_session=6f9619ff-8b86-4011-b42d-00cf4fc964ff",
        )
        .json(&json!({"client_session_id": UNKNOWN}))
        .send()
        .await
        .expect("request");
    let (_, body) = split(response).await;
    assert_eq!(body["is_synced"], false);
    let created = body["session_id"].as_str().expect("id");
    assert!(created != UNKNOWN && created != current && created != client);
    assert_eq!(gw.session_count().await, 3);
}

#[tokio::test]
async fn sync_validates_its_body() {
    let gw = TestGateway::start().await;
    for bad in [
        json!({}),
        json!({"client_session_id": ""}),
        json!({"client_session_id": null}),
        json!({"client_session_id": 7}),
        json!({"client_session_id": ["x"]}),
        json!({"client_session_id": "6f9619ff8b864011b42d00cf4fc964ff"}),
    ] {
        let (status, body) = gw.post_json("/api/session/sync", bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error_code"], "validation_error");
        assert!(
            body["field_errors"]["client_session_id"][0].is_string(),
            "{bad}: {body}"
        );
    }
    let response = gw
        .http
        .post(gw.url("/api/session/sync"))
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(status, 400);
    assert!(
        body["field_errors"]["client_session_id"].is_array(),
        "{body}"
    );
    assert_eq!(gw.session_count().await, 0);
}

#[tokio::test]
async fn info_returns_the_session_or_404() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .get(gw.url("/api/session/info"))
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": true, "error_code": "resource_not_found", "detail": "Session not found", "status_code": 404})
    );

    let id = gw.new_session().await;
    for path in [
        "/api/session/info",
        "/api/session/info/",
        "/api/sessions/info",
        "/api/sessions/info/",
    ] {
        let response = gw
            .http
            .get(gw.url(path))
            .header("cookie", format!("concept_session={id}"))
            .send()
            .await
            .expect("request");
        let (status, body) = split(response).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["session_id"].as_str(), Some(id.as_str()));
        assert!(is_rfc3339_utc(&body["created_at"]) && is_rfc3339_utc(&body["last_active"]));
        assert_eq!(body["usage_stats"]["concepts_generated"], 0);
        assert_eq!(
            body["rate_limits"]["concept_generation"]["limit"], 10,
            "{body}"
        );
    }

    let response = gw.get_as("/api/session/info", UNKNOWN).await;
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn usage_counters_written_in_redis_show_in_info() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let key = session_key(&id);
    let _: i64 = gw.redis.hincrby(&key, "g", 5).await.expect("HINCRBY");
    let _: i64 = gw.redis.hincrby(&key, "r", 2).await.expect("HINCRBY");
    let _: i64 = gw.redis.hincrby(&key, "s", 3).await.expect("HINCRBY");
    let response = gw.get_as("/api/session/info", &id).await;
    let (_, body) = split(response).await;
    assert_eq!(
        body["usage_stats"],
        json!({"concepts_generated": 5, "concepts_refined": 2, "concepts_stored": 3})
    );
}

#[tokio::test]
async fn preferences_round_trip_within_their_limits() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let get = || {
        gw.http
            .get(gw.url("/api/session/preferences"))
            .header("x-session-id", &id)
            .send()
    };
    let put = |body: String| {
        gw.http
            .put(gw.url("/api/sessions/preferences/"))
            .header("x-session-id", &id)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, body) = split(get().await.expect("request")).await;
    assert_eq!((status, body), (200, json!({})));

    let prefs = json!({"theme": "dark", "layout": {"grid": [1, 2]}});
    let (status, body) = split(put(prefs.to_string()).await.expect("request")).await;
    assert_eq!((status, &body), (200, &prefs));
    let (_, body) = split(get().await.expect("request")).await;
    assert_eq!(body, prefs);

    let too_big = json!({"k": "x".repeat(5000)}).to_string();
    let (status, body) = split(put(too_big).await.expect("request")).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let too_many: serde_json::Map<_, _> = (0..33).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, body) = split(
        put(serde_json::Value::Object(too_many).to_string())
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("validation_error"))
    );
    let (status, _) = split(
        put(r#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#.into())
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = split(put("[1,2]".into()).await.expect("request")).await;
    assert_eq!(status, 400);
    let (_, body) = split(get().await.expect("request")).await;
    assert_eq!(body, prefs, "refused updates change nothing");

    let (status, body) = split(put("{}".into()).await.expect("request")).await;
    assert_eq!((status, body), (200, json!({})));

    let response = gw.put_preferences(UNKNOWN, &prefs).await;
    assert_eq!(response.status().as_u16(), 404);
    let response = gw
        .http
        .get(gw.url("/api/session/preferences"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .get(gw.url("/api/nothing"))
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("resource_not_found"))
    );

    let response = gw
        .http
        .delete(gw.url("/api/session/info"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["allow"], "GET");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (405, Some("method_not_allowed"))
    );

    let response = gw
        .http
        .get(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["allow"].to_str().ok()
        ),
        (405, Some("POST, DELETE"))
    );
}
