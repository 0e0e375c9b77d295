//! Write-behind to a real PostgREST + PostgreSQL: every change reaches the system of record,
//! through outages, crashes and refused rows; and comes back after Redis loses it.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use serde_json::{json, Value};

use crate::services::{shared_postgres, shared_postgrest, Postgrest};
use crate::support::{
    eventually, metric, session_key, set_cookies, split, supabase_config, writing_to, TestGateway,
    TOKEN,
};

/// The stored rows of the given sessions, by id, as PostgREST returns them.
async fn rows(postgrest: &Postgrest, ids: &[String]) -> HashMap<String, Value> {
    postgrest.rows(ids).await.expect("postgrest answers")
}

/// Sessions whose row does not yet carry the state Redis holds (version and counters).
async fn unflushed(gw: &TestGateway, postgrest: &Postgrest, ids: &[String]) -> Vec<String> {
    let rows = rows(postgrest, ids).await;
    let mut behind = Vec::new();
    for id in ids {
        let fields: HashMap<String, String> =
            gw.redis.hgetall(session_key(id)).await.expect("HGETALL");
        let number = |name: &str| {
            fields
                .get(name)
                .map_or(0, |v| v.parse::<i64>().expect("integer"))
        };
        let matches = rows.get(id).is_some_and(|row| {
            row["version"].as_i64() == Some(number("v"))
                && row["usage"]["concepts_generated"].as_i64().unwrap_or(0) == number("g")
                && row["usage"]["concepts_refined"].as_i64().unwrap_or(0) == number("r")
                && row["last_active_at"].is_string()
        });
        if !matches {
            behind.push(id.clone());
        }
    }
    behind
}

async fn all_flushed(gw: &TestGateway, postgrest: &Postgrest, ids: &[String], limit: Duration) {
    eventually(limit, "every session's final state in postgres", || async {
        unflushed(gw, postgrest, ids).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_updates_over_a_thousand_sessions_all_reach_postgres() {
    // Alone with the load tests: beside the soak, this burst took its p99 past its bound.
    let _serial = crate::faults::SERIAL.lock().await;
    let postgrest = shared_postgrest();
    let gw = &TestGateway::start_with(writing_to(postgrest)).await;
    let ids: Vec<String> = futures_util::stream::StreamExt::collect(
        futures_util::stream::StreamExt::buffer_unordered(
            futures_util::stream::iter((0..1000).map(|_| gw.new_session())),
            64,
        ),
    )
    .await;
    // Nine more changes per session, interleaved across sessions, 64 at a time.
    let updates = (0..9).flat_map(|round| ids.iter().map(move |id| (round, id)));
    let statuses: Vec<u16> = futures_util::stream::StreamExt::collect(
        futures_util::stream::StreamExt::buffer_unordered(
            futures_util::stream::iter(updates.map(|(round, id)| async move {
                let operation = if round % 3 == 2 {
                    "concept_refinement"
                } else {
                    "concept_generation"
                };
                gw.consume(id, operation, None).await.0
            })),
            64,
        ),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "every update granted");
    all_flushed(gw, postgrest, &ids, Duration::from_secs(120)).await;
    let rows = rows(postgrest, &ids).await;
    assert_eq!(rows.len(), 1000);
    assert!(rows
        .values()
        .all(|r| r["usage"]["concepts_generated"] == 6 && r["usage"]["concepts_refined"] == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_outage_loses_nothing() {
    let mut postgrest = Postgrest::start(shared_postgres());
    let gw = TestGateway::start_with(writing_to(&postgrest)).await;
    let early: Vec<String> =
        futures_util::future::join_all((0..20).map(|_| gw.new_session())).await;
    all_flushed(&gw, &postgrest, &early, Duration::from_secs(30)).await;

    postgrest.stop();
    let mut ids = early.clone();
    ids.extend(futures_util::future::join_all((0..200).map(|_| gw.new_session())).await);
    for id in &early {
        assert_eq!(
            gw.consume(id, "concept_generation", None).await.0,
            200,
            "serving continues from redis"
        );
    }
    // Still down after several flush rounds: nothing can have been written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!unflushed_while_down(&gw, &ids).await.is_empty());

    postgrest.restart();
    all_flushed(&gw, &postgrest, &ids, Duration::from_secs(60)).await;
}

/// The outbox still holds sessions (PostgREST is down, so they cannot have been written).
async fn unflushed_while_down(gw: &TestGateway, ids: &[String]) -> Vec<String> {
    let mut dirty = Vec::new();
    for id in ids {
        let uuid = uuid::Uuid::parse_str(id).expect("a session id");
        let shard = sessiongate::store::shard_of(&uuid, sessiongate::store::DEFAULT_SHARDS);
        let score: Option<f64> = gw
            .redis
            .zscore(sessiongate::store::dirty_key(shard), id)
            .await
            .expect("ZSCORE");
        let inflight: Option<f64> = gw
            .redis
            .zscore(sessiongate::store::inflight_key(shard), id)
            .await
            .expect("ZSCORE");
        if score.is_some() || inflight.is_some() {
            dirty.push(id.clone());
        }
    }
    dirty
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_dying_between_upsert_and_ack_loses_nothing_and_applies_nothing_twice() {
    let postgrest = shared_postgrest();
    let supabase = supabase_config(postgrest);
    // A gateway without a flusher of its own writes the changes...
    let gw = TestGateway::start_with(|config| {
        writing_to(postgrest)(config);
        config.flush_enabled = false;
    })
    .await;
    let id = gw.new_session().await;
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);

    // ...and a "flusher" claims the session, upserts it, and dies before settling.
    let store = crate::support::store_on(&gw.redis_url, true).await;
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let shard = session_key(&id)
        .split(['{', '}'])
        .nth(1)
        .expect("tag")
        .parse()
        .expect("shard");
    let claim = store.claim(shard, 10, 500).await.expect("claim");
    assert_eq!(
        claim.sessions.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![uuid]
    );
    let read_through = sessiongate::flush::ReadThrough::new(
        store.clone(),
        sessiongate::flush::Supabase::new(&supabase).expect("client"),
        Duration::from_secs(3600),
        &sessiongate::flush::FlushConfig::default(),
    );
    read_through.persist(&uuid).await.expect("upsert");
    let first = rows(postgrest, std::slice::from_ref(&id)).await[&id].clone();
    drop(claim);

    // A real flusher takes the entry over once the lease expires and writes it again: the
    // version guard keeps the stored row as it was.
    let flushing = TestGateway::start_on(&gw.redis_url, writing_to(postgrest)).await;
    eventually(
        Duration::from_secs(20),
        "the expired claim to be flushed again",
        || async {
            let inflight: u64 = flushing
                .redis
                .zcard(sessiongate::store::inflight_key(shard))
                .await
                .expect("ZCARD");
            let dirty: u64 = flushing
                .redis
                .zcard(sessiongate::store::dirty_key(shard))
                .await
                .expect("ZCARD");
            (inflight == 0 && dirty == 0).then_some(())
        },
    )
    .await;
    let again = rows(postgrest, std::slice::from_ref(&id)).await[&id].clone();
    assert_eq!(
        again, first,
        "the replay changed nothing, updated_at included"
    );
    assert_eq!(first["usage"]["concepts_generated"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_is_dead_lettered_while_the_rest_flush() {
    let postgrest = shared_postgrest();
    // A constraint that refuses exactly the rows whose preferences carry this marker.
    let marker = format!("poison_{}", uuid::Uuid::new_v4().simple());
    shared_postgres().sql(&format!(
        "alter table public.sessions add constraint {marker} check (not preferences ? '{marker}')"
    ));
    let gw = TestGateway::start_with(writing_to(postgrest)).await;
    let ids: Vec<String> = futures_util::future::join_all((0..30).map(|_| gw.new_session())).await;
    let poisoned = ids[7].clone();
    let response = gw
        .put_preferences(&poisoned, &json!({ &marker: true }))
        .await;
    assert_eq!(response.status().as_u16(), 200);

    let healthy: Vec<String> = ids.iter().filter(|id| **id != poisoned).cloned().collect();
    all_flushed(&gw, postgrest, &healthy, Duration::from_secs(30)).await;
    let letter = eventually(
        Duration::from_secs(30),
        "the refused row in the dead-letter stream",
        || async {
            let entries: Vec<(String, HashMap<String, String>)> = gw
                .redis
                .xrange(sessiongate::store::DEAD_LETTER_KEY, "-", "+", None)
                .await
                .expect("XRANGE");
            entries
                .into_iter()
                .find(|(_, fields)| fields.get("session_id") == Some(&poisoned))
        },
    )
    .await;
    assert!(letter.1["reason"].contains(&marker), "{:?}", letter.1);
    assert!(letter.1["row"].contains(&poisoned));
    // The row keeps the last state the database accepted, without the refused change.
    if let Some(row) = rows(postgrest, std::slice::from_ref(&poisoned))
        .await
        .get(&poisoned)
    {
        assert!(row["preferences"].get(&marker).is_none(), "{row}");
    }
    shared_postgres().sql(&format!(
        "alter table public.sessions drop constraint {marker}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_back_from_supabase_with_their_counters_after_redis_loses_them() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(writing_to(postgrest)).await;
    let id = gw.new_session().await;
    for _ in 0..3 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    let response = gw.put_preferences(&id, &json!({"theme": "dark"})).await;
    assert_eq!(response.status().as_u16(), 200);
    all_flushed(
        &gw,
        postgrest,
        std::slice::from_ref(&id),
        Duration::from_secs(30),
    )
    .await;

    gw.lose_redis_data().await;
    let response = gw
        .http
        .get(gw.url("/api/session/info"))
        .header("cookie", format!("concept_session={id}"))
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage_stats"]["concepts_generated"], 3);
    assert_eq!(
        body["rate_limits"]["concept_generation"]["remaining"], 7,
        "usage never resets by accident"
    );
    let response = gw.get_as("/api/session/preferences", &id).await;
    assert_eq!(split(response).await.1, json!({"theme": "dark"}));
    // The next change is newer than the stored row, so it is written too.
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    all_flushed(
        &gw,
        postgrest,
        std::slice::from_ref(&id),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        rows(postgrest, std::slice::from_ref(&id)).await[&id]["usage"]["concepts_generated"],
        4
    );
}

#[tokio::test]
async fn persist_makes_a_session_durable_before_answering() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(|config| {
        writing_to(postgrest)(config);
        config.flush_enabled = false;
    })
    .await;
    let id = gw.new_session().await;
    assert_eq!(gw.consume(&id, "concept_storage", None).await.0, 200);
    let response = gw
        .http
        .post(gw.url(&format!("/internal/v1/sessions/{id}/persist")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(status, 200, "{body}");
    let row = rows(postgrest, std::slice::from_ref(&id))
        .await
        .remove(&id)
        .expect("the row exists at once");
    assert_eq!(row["version"], body["version"]);
    assert_eq!(row["usage"]["concepts_stored"], 1);
    let unknown = "0b0a5f2e-3c1d-4e5f-8a9b-0c1d2e3f4a5b";
    let response = gw
        .http
        .post(gw.url(&format!("/internal/v1/sessions/{unknown}/persist")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_refuses_new_sessions_but_keeps_serving_existing_ones() {
    let postgrest = shared_postgrest();
    // No flusher here and a backlog of one session per shard: the outbox fills at once.
    let gw = TestGateway::start_with(|config| {
        writing_to(postgrest)(config);
        config.flush_enabled = false;
        config.flush.max_backlog = u64::from(sessiongate::store::DEFAULT_SHARDS);
    })
    .await;
    let mut created = Vec::new();
    let refused = loop {
        let response = gw
            .http
            .post(gw.url("/api/session/"))
            .send()
            .await
            .expect("request");
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = split(response).await;
        match status {
            200 => created.push(body["session_id"].as_str().expect("id").to_string()),
            503 => break (body, retry_after),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(
            created.len() <= 64,
            "a shard's outbox must fill within 65 sessions"
        );
    };
    assert_eq!(refused.0["error_code"], "service_unavailable");
    assert!(refused.1.is_some(), "Retry-After on a backlog refusal");
    // Changes to existing sessions are always accepted.
    assert_eq!(
        gw.consume(&created[0], "concept_generation", None).await.0,
        200
    );
    let scrape = gw.scrape().await;
    let refusals = scrape
        .lines()
        .find_map(|line| line.strip_prefix("sessiongate_flush_backpressure_refusals_total "))
        .and_then(|value| value.parse::<f64>().ok())
        .expect("the refusal counter");
    assert!(refusals >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_unknown_ids_in_supabase_are_bounded() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(|config| {
        writing_to(postgrest)(config);
        config.flush.read_through_per_second = 1.try_into().expect("nonzero");
    })
    .await;
    let known = gw.new_session().await;

    // Invented ids miss Redis; the budget (1/s, 2 at once) lets two ask Supabase (404) and
    // answers the rest 503 + Retry-After, so a real session would be retried, not dropped.
    let invented: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let probes = invented.iter().map(|id| gw.get_as("/api/session/info", id));
    let responses = futures_util::future::join_all(probes).await;
    let mut not_found = 0;
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            404 => not_found += 1,
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=3).contains(&not_found),
        "{not_found} lookups reached supabase"
    );
    assert_eq!(not_found + refused, 8);
    // Sessions in Redis never touch the budget.
    for _ in 0..5 {
        assert_eq!(gw.get_as("/api/session/info", &known).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_system_of_record_is_503_never_a_lost_session() {
    let mut postgrest = Postgrest::start(shared_postgres());
    let gw = TestGateway::start_with(writing_to(&postgrest)).await;
    let id = gw.new_session().await;
    for _ in 0..2 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    all_flushed(
        &gw,
        &postgrest,
        std::slice::from_ref(&id),
        Duration::from_secs(30),
    )
    .await;

    // Redis loses the session while the system of record is down.
    gw.lose_redis_data().await;
    postgrest.stop();
    let response = gw.get_as("/api/session/info", &id).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = split(response).await;
    assert_eq!(
        (status, &body["error_code"]),
        (503, &json!("service_unavailable"))
    );
    // Nor is the browser handed a fresh session (and fresh quotas) in its place.
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("cookie", format!("concept_session={id}"))
        .send()
        .await
        .expect("request");
    assert!(
        set_cookies(&response).is_empty(),
        "a new session was handed out"
    );
    assert_eq!(response.status().as_u16(), 503);

    postgrest.restart();
    let body = eventually(
        Duration::from_secs(30),
        "the session to come back",
        || async {
            let (status, body) = split(gw.get_as("/api/session/info", &id).await).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body["session_id"], json!(id));
    assert_eq!(body["usage_stats"]["concepts_generated"], 2);
    assert_eq!(body["rate_limits"]["concept_generation"]["remaining"], 8);
}

/// A system of record that accepts connections and never answers holds a request for the
/// read-through timeout (1 s by default), not the write-behind's request timeout: the
/// client gets 503 + `Retry-After` and keeps its session id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_system_of_record_holds_a_read_through_for_its_own_timeout_only() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rest_url = format!("http://{}", hung.local_addr().expect("address"));
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            connections.push(stream);
        }
    });
    let gw = TestGateway::start_with(move |config| {
        config.supabase = Some(sessiongate::flush::SupabaseConfig {
            rest_url,
            service_role_key: "key".to_string(),
            api_key: None,
            request_timeout: Duration::from_secs(10),
        });
        config.flush_enabled = false;
    })
    .await;
    let id = uuid::Uuid::new_v4().to_string();
    let started = std::time::Instant::now();
    let response = gw.get_as("/api/session/info", &id).await;
    let elapsed = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(split(response).await.0, 503);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}, not after the 1 s read-through timeout"
    );
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "sessiongate_read_through_total",
            "result=\"timeout\""
        ),
        Some(1.0),
        "{scrape}"
    );
    held.abort();
}

/// Redis restored from an older backup goes back in versions but not in time: the next change
/// to a session is still newer than its stored row, so the version guard lets it in instead of
/// skipping it while PostgREST answers 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_redis_is_restored_from_an_older_backup_still_reaches_the_record() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(writing_to(postgrest)).await;
    let id = gw.new_session().await;
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    let ids = std::slice::from_ref(&id);
    all_flushed(&gw, postgrest, ids, Duration::from_secs(30)).await;

    let key = session_key(&id);
    let backup: fred::types::Value = gw.redis.dump(&key).await.expect("DUMP");
    for _ in 0..2 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    all_flushed(&gw, postgrest, ids, Duration::from_secs(30)).await;
    let before_restore = rows(postgrest, ids).await[&id].clone();
    assert_eq!(before_restore["usage"]["concepts_generated"], 3);

    let _: () = gw
        .redis
        .restore(&key, 0, backup, true, false, None, None)
        .await
        .expect("RESTORE");
    let response = gw
        .put_preferences(&id, &json!({"theme": "after-restore"}))
        .await;
    assert_eq!(response.status(), 200);
    all_flushed(&gw, postgrest, ids, Duration::from_secs(30)).await;
    let row = rows(postgrest, ids).await[&id].clone();
    assert_eq!(row["preferences"]["theme"], "after-restore", "{row}");
    assert_eq!(
        row["usage"]["concepts_generated"], 1,
        "the restored count: {row}"
    );
    assert!(
        row["version"].as_i64() > before_restore["version"].as_i64(),
        "{row} after {before_restore}"
    );
}

/// Behind Supabase's API gateway, `apikey` must be a project key while the bearer token
/// carries the database role: with `SUPABASE_API_KEY` set the two differ, and each goes in
/// its own header (here to a stand-in that records what it is sent).
#[tokio::test]
async fn the_api_key_and_the_bearer_token_can_differ() {
    let stand_in = crate::upstreams::Upstream::start().await;
    let rest_url = stand_in.url();
    let gw = TestGateway::start_with(move |config| {
        config.supabase = Some(sessiongate::flush::SupabaseConfig {
            rest_url,
            service_role_key: "role-token".to_string(),
            api_key: Some("project-key".to_string()),
            request_timeout: Duration::from_secs(5),
        });
        config.flush_enabled = false;
    })
    .await;
    let unknown = uuid::Uuid::new_v4().to_string();
    // The stand-in's answer is no row, so this ends in a 503; what matters is the request.
    let _ = gw.get_as("/api/session/info", &unknown).await;
    let hits = stand_in.hits();
    let lookup = hits
        .iter()
        .find(|hit| hit.path.ends_with("/sessions"))
        .expect("a read-through reached the stand-in");
    assert_eq!(lookup.get("apikey"), Some("project-key"));
    assert_eq!(lookup.get("authorization"), Some("Bearer role-token"));
}
