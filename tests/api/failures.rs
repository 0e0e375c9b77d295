//! Redis failures: down, slow, restarted, scripts flushed. Each test owns its Redis.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::support::{eventually, split, RedisServer, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_then_recovers() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |c| {
        c.redis_timeout = Duration::from_millis(250)
    })
    .await;
    gw.new_session().await;

    redis.kill();
    let started = Instant::now();
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    let elapsed = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (503, Some("service_unavailable"))
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "answered within the timeout, took {elapsed:?}"
    );
    let readyz = gw
        .http
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(readyz.status().as_u16(), 503);
    let healthz = gw
        .http
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        healthz.status().as_u16(),
        200,
        "the process itself is alive"
    );

    // Back on the same port, with no scripts loaded: the gateway recovers on its own.
    redis.spawn();
    eventually(
        Duration::from_secs(10),
        "the gateway to serve again",
        || async {
            let response = gw.http.post(gw.url("/api/session/")).send().await.ok()?;
            (response.status().as_u16() == 200).then_some(())
        },
    )
    .await;
    let readyz = gw
        .http
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(readyz.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_answers_503_within_the_timeout() {
    let redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |c| {
        c.redis_timeout = Duration::from_millis(200)
    })
    .await;
    let id = gw.new_session().await;

    // DEBUG SLEEP blocks the (single-threaded) server for two seconds.
    let mut sleeper = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "DEBUG", "SLEEP", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    let blocked = eventually(Duration::from_secs(5), "redis to be blocked", || async {
        let started = Instant::now();
        let response = gw
            .http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == 503).then(|| (started.elapsed(), response))
    })
    .await;
    let (elapsed, response) = blocked;
    assert!(
        elapsed < Duration::from_millis(1500),
        "503 came after {elapsed:?}"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let _ = sleeper.wait();
    eventually(Duration::from_secs(10), "redis to answer again", || async {
        let response = gw
            .http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn flushed_scripts_are_reloaded_transparently() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let _: () = gw.redis.script_flush(false).await.expect("SCRIPT FLUSH");
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    let (status, body) = split(response).await;
    assert_eq!(
        (status, body["session_id"].as_str()),
        (200, Some(id.as_str()))
    );
    let _: () = gw.redis.script_flush(false).await.expect("SCRIPT FLUSH");
    gw.new_session().await;
}
