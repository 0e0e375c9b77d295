//! The gateway SIGKILLed under load with write-behind on and flushes pending. Proves that a
//! new gateway on the same Redis serves every session as its clients last saw it (or as an
//! unanswered request may have left it), that the dead gateway's claims go back to the
//! outbox when their lease expires, and that every row in PostgreSQL ends equal to Redis.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::churn::{Churn, Tracked};
use super::{client, outbox, redis_client, rows_converge, write_behind_env, LOAD_SETTINGS, SERIAL};
use crate::process::GatewayProcess;
use crate::services::shared_postgrest;
use crate::support::{eventually, RedisServer};

/// Checks every tracked session through `gw`: it exists, and its counters and preferences
/// are what its client was told (or what an unanswered request may have done).
async fn check_sessions(gw: &GatewayProcess, sessions: &[Tracked]) {
    let http = client();
    let problems: Vec<String> = futures_util::stream::iter(sessions)
        .map(|session| {
            let http = &http;
            async move {
                let info = http
                    .get(gw.url("/api/session/info"))
                    .header("x-session-id", &session.id)
                    .send()
                    .await
                    .expect("info");
                let status = info.status().as_u16();
                let info: Value = info.json().await.unwrap_or(Value::Null);
                if status != 200 {
                    return Some(format!("{}: info {status} {info}", session.id));
                }
                let used = info["usage_stats"]["concepts_generated"].as_u64().unwrap_or(0);
                let range = session.granted..=session.granted + session.unsure_consumes;
                let preferences: Value = http
                    .get(gw.url("/api/session/preferences"))
                    .header("x-session-id", &session.id)
                    .send()
                    .await
                    .expect("preferences")
                    .json()
                    .await
                    .unwrap_or(Value::Null);
                let mut allowed: Vec<Value> = session
                    .unsure_preferences
                    .iter()
                    .map(|n| json!({ "n": n }))
                    .collect();
                allowed.push(session.preferences.map_or(json!({}), |n| json!({ "n": n })));
                let wrong = !range.contains(&used) || !allowed.contains(&preferences);
                wrong.then(|| {
                    format!(
                        "{}: used {used} (expected {range:?}), preferences {preferences} (expected one of {allowed:?})",
                        session.id
                    )
                })
            }
        })
        .buffer_unordered(32)
        .filter_map(|problem| async move { problem })
        .collect()
        .await;
    assert!(
        problems.is_empty(),
        "{} of {} sessions lost or changed: {:?}",
        problems.len(),
        sessions.len(),
        &problems[..problems.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_under_load_loses_no_session_and_no_pending_flush() {
    let _serial = SERIAL.lock().await;
    let postgrest = shared_postgrest();
    let redis = RedisServer::start();
    let settings = format!(
        "{LOAD_SETTINGS}\n[flush]\ninterval_ms = 100\nlease_ms = 2000\nrequest_timeout_ms = 5000\n"
    );
    let env = write_behind_env(postgrest);
    let mut first = GatewayProcess::start(&redis.url(0), &settings, &env);
    let churn = Churn::start(&first.url(""), 6, &[]);
    churn.wait_for("load before the kill", 300, 1000).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| first.kill9());
    let churned = churn.finish().await;
    let check = redis_client(&redis.url(0)).await;
    let (dirty, inflight) = outbox(&check).await;

    let second = GatewayProcess::start(&redis.url(0), &settings, &env);
    let restarted_at = Instant::now();
    let ids: Vec<String> = churned.sessions.iter().map(|s| s.id.clone()).collect();
    let unsure = churned
        .sessions
        .iter()
        .map(|s| s.unsure_consumes + s.unsure_preferences.len() as u64)
        .sum::<u64>();
    let cut_early: Vec<Duration> = churned
        .cut_at
        .iter()
        .filter(|at| **at < killed_at)
        .map(|at| killed_at - *at)
        .collect();
    eprintln!(
        "gateway sigkill: {} sessions created and {} changes answered before the kill; \
         {unsure} requests left unanswered by it; outbox at the kill: {dirty} dirty, \
         {inflight} claimed by the dead gateway",
        ids.len(),
        churned.changed,
    );
    assert!(
        churned.violations.is_empty(),
        "wrong answers before the kill: {:?}",
        churned.violations
    );
    assert!(
        cut_early.is_empty(),
        "connections failed before the kill: {cut_early:?}"
    );
    assert!(
        dirty + inflight > 0,
        "the gateway died with pending flushes (else this test shows nothing)"
    );

    check_sessions(&second, &churned.sessions).await;
    let readable = restarted_at.elapsed();
    rows_converge(&check, postgrest, &ids, Duration::from_secs(60)).await;
    eprintln!(
        "gateway sigkill: all {} sessions readable through the new gateway ({readable:?} to \
         check); every row equal to redis field by field {:?} after the restart",
        ids.len(),
        restarted_at.elapsed(),
    );
    // Claims of the dead gateway go back to the outbox when their lease (2 s) expires, and
    // are written again (the version guard makes that harmless).
    eventually(Duration::from_secs(30), "the outbox to drain", || async {
        (outbox(&check).await == (0, 0)).then_some(())
    })
    .await;
    eprintln!(
        "gateway sigkill: outbox empty {:?} after the restart",
        restarted_at.elapsed()
    );
    rows_converge(&check, postgrest, &ids, Duration::from_secs(30)).await;
    assert!(second.alive());
}
