//! Support staff's hands on a session: the whole session read, and a quota window reset.

use std::time::Duration;

use serde_json::json;
use sessiongate::model::quota::{Policy, Window};

use crate::support::{split, with_token, TestGateway};

async fn inspect(gw: &TestGateway, id: &str) -> (u16, serde_json::Value) {
    let response = gw
        .session_request(reqwest::Method::GET, id, "")
        .send()
        .await
        .expect("request");
    split(response).await
}

async fn reset(gw: &TestGateway, id: &str, operation: &str) -> (u16, serde_json::Value) {
    let path = format!("{operation}/reset");
    split(gw.quota(reqwest::Method::POST, id, &path, None).await).await
}

#[tokio::test]
async fn support_reads_the_whole_session() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    for _ in 0..2 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    let response = gw
        .put_preferences(&id, &json!({ "theme": "dark", "n": [1, 2] }))
        .await;
    assert_eq!(response.status().as_u16(), 200);

    let (status, body) = inspect(&gw, &id).await;
    assert_eq!(status, 200, "{body}");
    let info = gw.info(&id).await;
    assert_eq!(body["session_id"], json!(id));
    for field in ["created_at", "usage_stats", "rate_limits"] {
        assert_eq!(body[field], info[field], "{field} as info shows it");
    }
    assert_eq!(body["usage_stats"]["concepts_generated"], 2);
    assert_eq!(body["rate_limits"]["concept_generation"]["remaining"], 8);
    assert_eq!(body["preferences"], json!({ "theme": "dark", "n": [1, 2] }));
    let version = body["version"].as_i64().expect("a version");

    // Every change moves the version on.
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    let (_, after) = inspect(&gw, &id).await;
    assert!(after["version"].as_i64().expect("a version") > version);
    assert_eq!(after["usage_stats"]["concepts_generated"], 3);

    let fresh = gw.new_session().await;
    let (_, body) = inspect(&gw, &fresh).await;
    assert_eq!(body["preferences"], json!({}), "the default preferences");

    let (status, body) = inspect(&gw, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(
        (status, &body["detail"]),
        (404, &json!("Session not found"))
    );
    assert_eq!(inspect(&gw, "not-a-uuid").await.0, 400);
    let anonymous = gw
        .http
        .get(gw.url(&format!("/internal/v1/sessions/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    let put = gw
        .session_request(reqwest::Method::PUT, &id, "")
        .send()
        .await
        .expect("request");
    assert_eq!(put.status().as_u16(), 405);
    assert_eq!(put.headers()["allow"], "GET, DELETE");
}

#[tokio::test]
async fn a_reset_starts_the_window_afresh_and_keeps_the_usage() {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let limit = gw.info(&id).await["rate_limits"]["concept_generation"]["limit"]
        .as_u64()
        .expect("limit");
    for _ in 0..limit {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 429);
    assert_eq!(gw.consume(&id, "concept_refinement", None).await.0, 200);

    let (status, body) = reset(&gw, &id, "concept_generation").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(true), Some(limit))
    );
    assert_eq!(
        body["usage_stats"]["concepts_generated"], limit,
        "usage stays"
    );
    // Idempotent: a second reset finds the same fresh window.
    let (status, again) = reset(&gw, &id, "concept_generation").await;
    assert_eq!((status, &again["remaining"]), (200, &body["remaining"]));

    let info = gw.info(&id).await;
    assert_eq!(
        info["rate_limits"]["concept_generation"]["remaining"],
        limit
    );
    assert_eq!(
        info["rate_limits"]["concept_refinement"]["remaining"], 9,
        "only that policy"
    );
    let (status, body) = gw.consume(&id, "concept_generation", None).await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(limit - 1)));
    assert_eq!(body["usage_stats"]["concepts_generated"], limit + 1);

    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(reset(&gw, &unknown, "concept_generation").await.0, 404);
    let (status, body) = reset(&gw, &id, "no_such_operation").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["known_operations"].is_array(), "{body}");
    assert_eq!(reset(&gw, "not-a-uuid", "concept_generation").await.0, 400);
    let get = gw
        .quota(reqwest::Method::GET, &id, "concept_generation/reset", None)
        .await;
    assert_eq!(get.status().as_u16(), 405);
}

/// A token bucket reset is a full bucket.
#[tokio::test]
async fn a_reset_refills_a_token_bucket() {
    let gw = TestGateway::start_with(|c| {
        with_token(c);
        let interval = Duration::from_secs(60);
        c.policies = vec![Policy::new("api", 2, Window::Gcra { interval })];
    })
    .await;
    let id = gw.new_session().await;
    for _ in 0..2 {
        assert_eq!(gw.consume(&id, "api", None).await.0, 200);
    }
    assert_eq!(gw.consume(&id, "api", None).await.0, 429);
    let (status, body) = reset(&gw, &id, "api").await;
    assert_eq!(
        (status, body["remaining"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert_eq!(gw.consume(&id, "api", None).await.0, 200);
}
