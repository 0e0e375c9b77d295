//! Erasure ("forget me"): a session gone from Redis and from Supabase before the 204, and
//! never brought back: not by read-through, not by Redis losing its data, not by a
//! write-behind batch that was in flight when the erasure came.

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::services::{shared_postgres, shared_postgrest, Postgrest};
use crate::support::{
    eventually, metric, session_key, set_cookies, split, store_on, writing_to, TestGateway,
};

/// Every Redis key that names the session (its hash, records, tombstone...).
async fn keys_of(gw: &TestGateway, id: &str) -> Vec<String> {
    gw.redis
        .custom(fred::cmd!("KEYS"), vec![format!("*{id}*")])
        .await
        .expect("KEYS")
}

/// Whether the session is in any shard's outbox or in-flight set.
async fn queued(gw: &TestGateway, id: &str) -> bool {
    let key = session_key(&id);
    let shard = &key[..key.find('}').expect("hash tag") + 1];
    for set in ["dirty", "inflight"] {
        let score: Option<f64> = gw
            .redis
            .zscore(format!("{shard}:{set}"), id)
            .await
            .expect("ZSCORE");
        if score.is_some() {
            return true;
        }
    }
    false
}

async fn stored(postgrest: &Postgrest, id: &str) -> bool {
    let rows = postgrest
        .rows(&[id.to_string()])
        .await
        .expect("postgrest answers");
    rows.contains_key(id)
}

async fn delete_public(gw: &TestGateway, id: &str) -> reqwest::Response {
    gw.http
        .delete(gw.url("/api/session/"))
        .header("x-session-id", id)
        .send()
        .await
        .expect("request")
}

async fn delete_internal(gw: &TestGateway, id: &str) -> reqwest::Response {
    gw.session_request(reqwest::Method::DELETE, id, "")
        .send()
        .await
        .expect("request")
}

async fn info_status(gw: &TestGateway, id: &str) -> u16 {
    gw.get_as("/api/session/info", id).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_session_is_gone_everywhere_and_stays_gone() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(writing_to(postgrest)).await;
    let id = gw.new_session().await;
    let keyed = json!({ "idempotency_key": "erase-me" });
    assert_eq!(
        gw.consume(&id, "concept_generation", Some(keyed)).await.0,
        200
    );
    let response = gw.put_preferences(&id, &json!({ "name": "Ada" })).await;
    assert_eq!(response.status().as_u16(), 200);
    eventually(Duration::from_secs(10), "the session's row", || async {
        stored(postgrest, &id).await.then_some(())
    })
    .await;
    // A change not yet written behind, so the outbox holds the session too.
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    assert!(
        keys_of(&gw, &id).await.len() >= 2,
        "hash and idempotency records"
    );
    let before = metric(
        &gw.scrape().await,
        "sessiongate_sessions_erased_total",
        "result=\"erased\"",
    )
    .unwrap_or(0.0);

    let response = delete_public(&gw, &id).await;
    assert_eq!(response.status().as_u16(), 204);
    let cookies = set_cookies(&response);
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("concept_session=;") && c.contains("Max-Age=0")),
        "the cookie is cleared: {cookies:?}"
    );
    assert!(
        !stored(postgrest, &id).await,
        "the row is deleted before the 204"
    );
    let tombstone = format!("{}:erased", session_key(&id));
    assert_eq!(
        keys_of(&gw, &id).await,
        vec![tombstone],
        "only the tombstone is left"
    );
    assert!(!queued(&gw, &id).await, "nothing left to write behind");
    let after = metric(
        &gw.scrape().await,
        "sessiongate_sessions_erased_total",
        "result=\"erased\"",
    )
    .unwrap_or(0.0);
    assert!(after > before, "{before} -> {after}");

    // Gone for every endpoint, read-through included, and for the operators.
    assert_eq!(info_status(&gw, &id).await, 404);
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 404);
    let (status, body) = gw
        .post_json("/api/session/", json!({ "client_session_id": id }))
        .await;
    assert_eq!(status, 200);
    assert_ne!(
        body["session_id"],
        json!(id),
        "a new session, not the erased one"
    );
    let response = gw
        .session_request(reqwest::Method::GET, &id, "")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);

    // Redis losing its data brings nothing back, and a repeat is still a success.
    gw.lose_redis_data().await;
    assert_eq!(info_status(&gw, &id).await, 404);
    assert_eq!(delete_public(&gw, &id).await.status().as_u16(), 204);
    assert_eq!(delete_internal(&gw, &id).await.status().as_u16(), 204);
    assert!(!stored(postgrest, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_erase_by_id_and_bad_ids_are_refused() {
    let gw = TestGateway::start_with(crate::support::with_token).await;
    let id = gw.new_session().await;
    let other = gw.new_session().await;
    assert_eq!(delete_internal(&gw, &id).await.status().as_u16(), 204);
    assert_eq!(info_status(&gw, &id).await, 404);
    assert_eq!(info_status(&gw, &other).await, 200, "only that session");

    let response = delete_internal(&gw, "not-a-uuid").await;
    assert_eq!(split(response).await.0, 400);
    let response = delete_public(&gw, "not-a-uuid").await;
    assert_eq!(split(response).await.0, 400);
    let anonymous = gw
        .http
        .delete(gw.url(&format!("/internal/v1/sessions/{other}")))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    // No session named: nothing to erase, and the answer says it is done.
    let response = gw
        .http
        .delete(gw.url("/api/sessions"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(info_status(&gw, &other).await, 200);
}

/// Supabase unreachable: 503 with Retry-After, nothing erased, and the repeat succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_answers_503_while_supabase_is_down_and_can_be_repeated() {
    let mut postgrest = Postgrest::start(shared_postgres());
    let gw = TestGateway::start_with(writing_to(&postgrest)).await;
    let id = gw.new_session().await;
    postgrest.stop();
    let response = delete_public(&gw, &id).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(info_status(&gw, &id).await, 200, "nothing was erased");

    postgrest.restart();
    assert_eq!(delete_public(&gw, &id).await.status().as_u16(), 204);
    assert_eq!(info_status(&gw, &id).await, 404);
}

/// The race: a flusher claims the session and sends its row; the erasure deletes the row
/// while that write hangs; the write then lands. The database must skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_in_flight_during_an_erasure_does_not_bring_the_row_back() {
    // Two PostgRESTs over one database: the flusher's hangs, the eraser's answers.
    let flushers = Postgrest::start(shared_postgres());
    let erasers = shared_postgrest();
    let writer = TestGateway::start_with(|config| {
        writing_to(&flushers)(config);
        // Nobody takes the claim over, and the hung write waits rather than time out.
        config.flush.lease = Duration::from_secs(120);
        if let Some(supabase) = config.supabase.as_mut() {
            supabase.request_timeout = Duration::from_secs(60);
        }
    })
    .await;
    // The eraser flushes nothing: the session must wait in the writer's hung claim, not be
    // written by another flusher first.
    let eraser = TestGateway::start_on(&writer.redis_url, |config| {
        writing_to(erasers)(config);
        config.flush_enabled = false;
    })
    .await;
    let id = writer.new_session().await;
    eventually(Duration::from_secs(10), "the session's row", || async {
        stored(erasers, &id).await.then_some(())
    })
    .await;

    flushers.freeze();
    assert_eq!(writer.consume(&id, "concept_generation", None).await.0, 200);
    let key = session_key(&id);
    let inflight = format!("{}:inflight", &key[..key.find('}').expect("hash tag") + 1]);
    eventually(
        Duration::from_secs(10),
        "the flusher to claim the session",
        || async {
            let score: Option<f64> = writer.redis.zscore(&inflight, &id).await.ok()?;
            score.map(|_| ())
        },
    )
    .await;

    assert_eq!(delete_internal(&eraser, &id).await.status().as_u16(), 204);
    assert!(!stored(erasers, &id).await);
    flushers.thaw();

    // The flusher works one round at a time: once a session changed after the thaw is
    // written, the hung write has landed.
    let witness = writer.new_session().await;
    eventually(Duration::from_secs(30), "a later session's row", || async {
        stored(erasers, &witness).await.then_some(())
    })
    .await;
    assert!(
        !stored(erasers, &id).await,
        "the late write re-created the erased row"
    );
    assert_eq!(info_status(&writer, &id).await, 404);
}

/// A read-through that fetched the row just before the erasure deleted it cannot restore
/// the session afterwards: the erasure's tombstone refuses it.
#[tokio::test]
async fn an_erased_session_cannot_be_restored() {
    let gw = TestGateway::start().await;
    let store = store_on(&gw.redis_url, false).await;
    let id: Uuid = gw.new_session().await.parse().expect("uuid");
    let snapshot = store
        .snapshot(&id)
        .await
        .expect("read")
        .expect("the session");
    assert!(store.erase(&id).await.expect("erase"), "it was there");
    assert!(!store.restore(&snapshot, 600).await.expect("restore"));
    assert!(store.snapshot(&id).await.expect("read").is_none());
    assert!(
        !store.erase(&id).await.expect("erase again"),
        "gone already"
    );
}
