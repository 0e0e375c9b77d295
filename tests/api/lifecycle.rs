//! Session lifecycle: atomic creation, activity and expiry, concurrency, shutdown.

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;

use crate::support::{eventually, session_key, shared_redis, split, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_client_id_yield_one_session() {
    let gw = TestGateway::start().await;
    let known = gw.new_session().await;
    let requests =
        (0..100).map(|_| gw.post_json("/api/session/", json!({"client_session_id": known})));
    let answers = futures_util::future::join_all(requests).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["session_id"].as_str(), Some(known.as_str()));
        assert_eq!(body["is_new_session"], false);
    }
    assert_eq!(
        gw.session_count().await,
        1,
        "no request created a session of its own"
    );
}

#[tokio::test]
async fn create_never_overwrites_an_existing_session() {
    let gw = TestGateway::start().await;
    let id = uuid::Uuid::new_v4();
    let store = crate::support::store_on(&shared_redis().url(200), false).await;
    assert!(store.create(&id).await.expect("create").is_some());
    let key = session_key(&id);
    let redis = Builder::from_config(Config::from_url(&shared_redis().url(200)).expect("url"))
        .build()
        .expect("client");
    redis.init().await.expect("connect");
    let _: i64 = redis.hincrby(&key, "g", 3).await.expect("HINCRBY");
    assert!(
        store.create(&id).await.expect("second create").is_none(),
        "an existing id is refused"
    );
    let generated: i64 = redis.hget(&key, "g").await.expect("HGET");
    assert_eq!(generated, 3, "the existing session is untouched");
    drop(gw);
}

#[tokio::test]
async fn sessions_expire_thirty_days_after_activity_and_reads_touch_stale_ones() {
    // Every read reaches Redis: this test rewrites the hash behind the gateway's back and
    // reads at once, and a near cache sees such a change only once Redis's announcement has
    // arrived (tests/api/near_cache.rs measures that).
    let gw = TestGateway::start_with(|config| config.near_cache_entries = 0).await;
    let id = gw.new_session().await;
    let key = session_key(&id);
    let ttl: i64 = gw.redis.ttl(&key).await.expect("TTL");
    assert!((2_591_990..=2_592_000).contains(&ttl), "ttl {ttl}");

    // A fresh session is not rewritten by a read (coalesced touch).
    let last_active: i64 = gw.redis.hget(&key, "a").await.expect("HGET");
    let _: () = gw.redis.expire(&key, 1000, None).await.expect("EXPIRE");
    let info = || {
        gw.http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
    };
    assert_eq!(info().await.expect("request").status().as_u16(), 200);
    let ttl: i64 = gw.redis.ttl(&key).await.expect("TTL");
    assert!(
        ttl <= 1000,
        "a fresh session is not touched on read (ttl {ttl})"
    );

    // Two minutes of inactivity: the read reports activity now and slides the expiry.
    let _: () = gw
        .redis
        .hset(&key, ("a", last_active - 120))
        .await
        .expect("HSET");
    let (status, body) = split(info().await.expect("request")).await;
    assert_eq!(status, 200);
    let reported = chrono::DateTime::parse_from_rfc3339(body["last_active"].as_str().expect("ts"))
        .expect("rfc3339");
    assert!(reported.timestamp() >= last_active, "{body}");
    eventually(Duration::from_secs(5), "the background touch", || async {
        let ttl: i64 = gw.redis.ttl(&key).await.expect("TTL");
        let a: i64 = gw.redis.hget(&key, "a").await.expect("HGET");
        (ttl > 2_591_000 && a >= last_active).then_some(())
    })
    .await;

    // A POST on the session records activity in the same script call.
    let _: () = gw
        .redis
        .hset(&key, ("a", last_active - 120))
        .await
        .expect("HSET");
    let _: () = gw.redis.expire(&key, 1000, None).await.expect("EXPIRE");
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let ttl: i64 = gw.redis.ttl(&key).await.expect("TTL");
    let a: i64 = gw.redis.hget(&key, "a").await.expect("HGET");
    assert!(ttl > 2_591_000 && a >= last_active, "ttl {ttl}, a {a}");
}

#[tokio::test]
async fn expired_sessions_are_gone() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let _: () = gw.redis.del(session_key(&id)).await.expect("DEL");
    let response = gw
        .http
        .get(gw.url("/api/session/info"))
        .header("cookie", format!("concept_session={id}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = TestGateway::start().await;
    let healthz = gw
        .http
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(healthz.status().as_u16(), 200);
    let readyz = gw
        .http
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(readyz.status().as_u16(), 200);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let gw = TestGateway::start().await;
    let addr = gw.gateway.public_addr();
    gw.new_session().await;
    tokio::time::timeout(Duration::from_secs(10), gw.gateway.shutdown())
        .await
        .expect("shutdown completes");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// On shutdown the listeners stop accepting while requests in flight finish; meanwhile the
/// admin listener still answers, and `/readyz` says "draining" so that nothing new is sent
/// to this replica. It closes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_draining_while_requests_in_flight_finish() {
    let upstream = crate::upstreams::Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/files/*\"\nupstream = \"{}\"\n",
        upstream.url()
    );
    let gw = crate::gateway::gateway(5, &routes, |config| {
        config.shutdown_grace = Duration::from_secs(3);
    })
    .await;
    let readyz = gw.admin_url("/readyz");
    let http = gw.http.clone();
    assert_eq!(
        split(http.get(&readyz).send().await.expect("readyz"))
            .await
            .0,
        200
    );

    // The upstream never answers this one, so it holds the drain open.
    let held = tokio::spawn(http.get(gw.url("/files/a/hang")).send());
    eventually(
        Duration::from_secs(5),
        "the upstream to get the request",
        || async {
            upstream
                .hits()
                .iter()
                .any(|hit| hit.path == "/files/a/hang")
                .then_some(())
        },
    )
    .await;
    let admin = gw.gateway.admin_addr();
    let shutdown = tokio::spawn(gw.gateway.shutdown());
    let body = eventually(Duration::from_secs(3), "readyz to say draining", || async {
        let (status, body) = split(http.get(&readyz).send().await.ok()?).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body, json!({"status": "draining"}));

    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends after the grace period")
        .expect("shutdown task");
    let _ = held.await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener closes last"
    );
}
