//! The near cache: session reads served from a gateway's memory, kept coherent by Redis's
//! client tracking. Each test has a Redis of its own, so that `INFO commandstats` counts
//! only its own reads (a cache hit is a read Redis never sees).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::json;
use sessiongate::store::{NearCache, Store};
use uuid::Uuid;

use crate::support::{
    eventually, split, store_config, store_with, with_token, RedisServer, TestGateway,
};

fn with_cache(config: &mut sessiongate::config::Config) {
    config.near_cache_entries = 32_768;
}

/// `HMGET`s Redis has run: the session reads that missed every near cache.
fn reads_in_redis(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_hmget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a call count"))
}

/// Reads `id`'s info through `gateway` until a read costs Redis nothing: the record is
/// cached (tracking starts just after the connections are up, so the first reads may not be).
async fn until_cached(redis: &RedisServer, gateway: &TestGateway, id: &str) {
    eventually(
        Duration::from_secs(5),
        "an info read served from memory",
        || async {
            let before = reads_in_redis(redis);
            gateway.info(id).await;
            (reads_in_redis(redis) == before).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn repeated_reads_are_served_from_memory_and_never_with_the_cache_off() {
    let redis = RedisServer::start();
    let cached = TestGateway::start_on(&redis.url(0), with_cache).await;
    let id = cached.new_session().await;
    until_cached(&redis, &cached, &id).await;
    let before = reads_in_redis(&redis);
    for _ in 0..20 {
        cached.info(&id).await;
    }
    assert_eq!(
        reads_in_redis(&redis),
        before,
        "20 reads of a cached session"
    );

    let uncached = TestGateway::start_on(&redis.url(0), |c| c.near_cache_entries = 0).await;
    let before = reads_in_redis(&redis);
    for _ in 0..20 {
        uncached.info(&id).await;
    }
    assert_eq!(reads_in_redis(&redis), before + 20, "one HMGET per read");
}

/// One cache per process, shared by every serving thread: a record one thread read is
/// served by the others. Connections are spread over the threads by the kernel, so 16 of
/// them land on both of two threads (all on one: a chance of 2 in 65,536).
#[tokio::test]
async fn every_serving_thread_is_served_what_another_read() {
    let redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |config| {
        with_cache(config);
        config.serving_threads = 2;
    })
    .await;
    let id = gw.new_session().await;
    until_cached(&redis, &gw, &id).await;
    let before = reads_in_redis(&redis);
    for _ in 0..16 {
        let response = crate::process::one_shot()
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        reads_in_redis(&redis),
        before,
        "16 connections, no read in Redis"
    );
}

/// Both gateways know the plan `pro`: 20 concept generations instead of 10.
fn with_cache_and_plan(config: &mut sessiongate::config::Config) {
    with_token(config);
    with_cache(config);
    let pro = sessiongate::model::quota::Allowance {
        limit: 20,
        ..config.policies[0].allowance
    };
    config.policies[0].plans = vec![(std::sync::Arc::from("pro"), pro)];
    config.plans = vec![std::sync::Arc::from("pro")];
}

#[tokio::test]
async fn a_change_through_another_gateway_is_seen_once_redis_announces_it() {
    let redis = RedisServer::start();
    let a = TestGateway::start_on(&redis.url(0), with_cache_and_plan).await;
    let b = TestGateway::start_on(&redis.url(0), with_cache_and_plan).await;
    let id = a.new_session().await;

    until_cached(&redis, &a, &id).await;
    let (status, _) = b.consume(&id, "concept_generation", None).await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    eventually(Duration::from_secs(2), "A to see B's consume", || async {
        let info = a.info(&id).await;
        (info["usage_stats"]["concepts_generated"] == 1).then_some(())
    })
    .await;
    eprintln!(
        "near cache: a consume through B seen through A after {:?}",
        changed.elapsed()
    );

    until_cached(&redis, &a, &id).await;
    let response = b.put_preferences(&id, &json!({"theme": "dark"})).await;
    assert_eq!(response.status().as_u16(), 200);
    let changed = Instant::now();
    eventually(
        Duration::from_secs(2),
        "A to see B's preferences",
        || async {
            let response = a.get_as("/api/session/preferences", &id).await;
            let (_, body) = split(response).await;
            (body["theme"] == "dark").then_some(())
        },
    )
    .await;
    eprintln!(
        "near cache: preferences set through B seen through A after {:?}",
        changed.elapsed()
    );

    until_cached(&redis, &a, &id).await;
    let response = b
        .session_request(reqwest::Method::PUT, &id, "/plan")
        .json(&json!({ "plan": "pro" }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let changed = Instant::now();
    eventually(Duration::from_secs(2), "A to see B's plan", || async {
        let info = a.info(&id).await;
        (info["rate_limits"]["concept_generation"]["limit"] == 20).then_some(())
    })
    .await;
    eprintln!(
        "near cache: a plan set through B seen through A after {:?}",
        changed.elapsed()
    );

    until_cached(&redis, &a, &id).await;
    let response = b
        .session_request(reqwest::Method::DELETE, &id, "")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let changed = Instant::now();
    eventually(Duration::from_secs(2), "A to see B's erasure", || async {
        let status = a.get_as("/api/session/info", &id).await.status();
        (status == 404).then_some(())
    })
    .await;
    eprintln!(
        "near cache: an erasure through B seen through A after {:?}",
        changed.elapsed()
    );
}

#[tokio::test]
async fn a_redis_restart_with_the_cache_full_serves_nothing_stale() {
    let mut redis = RedisServer::start();
    let a = TestGateway::start_on(&redis.url(0), with_cache).await;
    let id = a.new_session().await;
    until_cached(&redis, &a, &id).await;

    // Redis comes back empty (it keeps nothing on disk): the session is gone.
    redis.kill();
    redis.spawn();
    let status = eventually(
        Duration::from_secs(5),
        "an answer from the new Redis",
        || async {
            let status = a.get_as("/api/session/info", &id).await.status().as_u16();
            assert_ne!(
                status, 200,
                "the session was served from memory after Redis lost it"
            );
            (status != 503).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 404);
}

/// A store of the library with a near cache of its own, on `url`, with one connection of
/// each kind, so that a test knows which connection a read went out on.
async fn cached_store(url: &str, cache: &NearCache) -> Store {
    let mut config = store_config(url, false);
    config.pool_size = 1;
    config.near_cache = Some(cache.clone());
    store_with(&config).await
}

/// Polls `future` once: far enough for a read to leave its marker and send its `HMGET`.
async fn start<F: Future + Unpin>(future: &mut F) {
    std::future::poll_fn(|cx| {
        assert!(std::pin::Pin::new(&mut *future).poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
}

/// The race of client-side caching, on purpose: Redis has answered a read with the old
/// preferences, the key then changes and the change is handled, and only then does the
/// read's reply reach the cache. It must not be kept, or the old value would be served
/// until the next change. Once for a change this process made (it drops its own entry),
/// once for another client's (Redis's invalidation drops it).
#[tokio::test]
async fn a_reply_that_a_change_overtook_is_kept_out_of_the_cache() {
    let redis = RedisServer::start();
    let cache = NearCache::new(100);
    let store = cached_store(&redis.url(0), &cache).await;
    let id = Uuid::new_v4();
    assert!(store.create(&id).await.expect("create").is_some());
    let other = Client::new(
        Config::from_url(&redis.url(0)).expect("url"),
        None,
        None,
        None,
    );
    other.init().await.expect("connects");
    let key = store.session_key(&id);

    for (round, foreign) in [(1, false), (2, true)] {
        eventually(Duration::from_secs(5), "tracking to start", || async {
            store.read(&id).await.expect("read");
            cache.holds(&id).then_some(())
        })
        .await;
        // Redis announces the reset (the key was read on the tracking connection): wait for
        // it, so that the change awaited below is the one that overtakes the read.
        let announced = cache.invalidations();
        store
            .set_preferences(&id, r#"{"round":0}"#)
            .await
            .expect("reset");
        eventually(
            Duration::from_secs(5),
            "the reset's invalidation",
            || async { (cache.invalidations() > announced).then_some(()) },
        )
        .await;
        let reads = reads_in_redis(&redis);
        let mut read = Box::pin(store.read(&id));
        start(&mut read).await;
        // Redis has run the read (the old value is on its way) before the change below.
        eventually(Duration::from_secs(5), "Redis to run the read", || async {
            (reads_in_redis(&redis) > reads).then_some(())
        })
        .await;
        let new = format!(r#"{{"round":{round}}}"#);
        let invalidations = cache.invalidations();
        if foreign {
            let _: i64 = other.hset(&key, ("p", new.as_str())).await.expect("HSET");
            eventually(Duration::from_secs(5), "the invalidation", || async {
                (cache.invalidations() > invalidations).then_some(())
            })
            .await;
        } else {
            store.set_preferences(&id, &new).await.expect("set");
        }
        let stale = read.await.expect("read").expect("session");
        assert_eq!(
            stale.preferences.as_deref(),
            Some(r#"{"round":0}"#),
            "round {round}"
        );
        let after = store.read(&id).await.expect("read").expect("session");
        assert_eq!(
            after.preferences.as_deref(),
            Some(new.as_str()),
            "round {round}"
        );
    }
}
