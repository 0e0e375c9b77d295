//! Redis failures: down, slow, restarted, functions flushed or swept. Most tests own their Redis.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

use sessiongate::model::quota::{CalendarUnit, Policy, Window};

use crate::support::{eventually, metric, split, with_token, RedisServer, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_then_recovers() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |c| {
        c.redis_timeout = Duration::from_millis(250)
    })
    .await;
    gw.new_session().await;
    let unreachable_before = redis_errors(&gw, "unreachable").await;

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
    assert_eq!(
        admin_status(&gw, "/readyz").await,
        200,
        "the replica still answers (with 503 + Retry-After), so it stays in the load balancer"
    );
    assert_eq!(admin_status(&gw, "/readyz/redis").await, 503);
    assert!(
        redis_errors(&gw, "unreachable").await > unreachable_before,
        "calls without a connection are counted as unreachable"
    );
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
    // The probe behind it asks Redis once a second.
    eventually(
        Duration::from_secs(3),
        "/readyz/redis to say 200",
        || async { (admin_status(&gw, "/readyz/redis").await == 200).then_some(()) },
    )
    .await;
}

/// `sessiongate_redis_errors_total` of one kind (every gateway of this test binary shares it,
/// so tests compare before and after).
async fn redis_errors(gw: &TestGateway, kind: &str) -> f64 {
    let labels = format!("kind=\"{kind}\"");
    metric(
        &gw.scrape().await,
        "sessiongate_redis_errors_total",
        &labels,
    )
    .unwrap_or(0.0)
}

async fn admin_status(gw: &TestGateway, path: &str) -> u16 {
    let response = gw.http.get(gw.admin_url(path)).send().await;
    response
        .expect("the admin listener answers")
        .status()
        .as_u16()
}

/// Sends a signal to a process with `kill`.
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Resumes a stopped process however the test ends.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// A Redis that stops answering while its connections stay open (SIGSTOP: a stalled host, a
/// swap storm) is what a connection check cannot see. `sessiongate_redis_up` follows whether
/// Redis answers, within 3 s; readiness stays 200, so every replica goes on answering 503 +
/// `Retry-After` itself; `/readyz/redis` says 503. All come back when Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_its_own_signal_and_leaves_readiness_alone() {
    let redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |_| {}).await;
    let id = gw.new_session().await;
    let redis_up = || async { metric(&gw.scrape().await, "sessiongate_redis_up", "") };
    eventually(Duration::from_secs(5), "redis_up to be 1", || async {
        (redis_up().await == Some(1.0)).then_some(())
    })
    .await;
    let client = Client::new(
        Config::from_url(&redis.url(0)).expect("url"),
        None,
        None,
        None,
    );
    client.init().await.expect("connect");
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .expect("INFO");
    let pid: u32 = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("process_id in INFO server");

    signal(pid, "STOP");
    let stopped = Resume(pid);
    let since = Instant::now();
    eventually(Duration::from_secs(10), "redis_up to drop to 0", || async {
        (redis_up().await == Some(0.0)).then_some(())
    })
    .await;
    let noticed = since.elapsed();
    assert!(
        noticed <= Duration::from_secs(3),
        "redis_up was 0 only after {noticed:?}"
    );
    assert_eq!(admin_status(&gw, "/readyz").await, 200);
    assert_eq!(admin_status(&gw, "/readyz/redis").await, 503);
    let response = gw.get_as("/api/session/info", &id).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(split(response).await.0, 503);

    drop(stopped);
    eventually(
        Duration::from_secs(10),
        "redis_up to be 1 again",
        || async { (redis_up().await == Some(1.0)).then_some(()) },
    )
    .await;
    assert_eq!(admin_status(&gw, "/readyz/redis").await, 200);
    assert_eq!(
        gw.get_as("/api/session/info", &id).await.status().as_u16(),
        200
    );
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_answers_503_within_the_timeout() {
    let redis = RedisServer::start();
    let gw = TestGateway::start_on(&redis.url(0), |c| {
        c.redis_timeout = Duration::from_millis(200)
    })
    .await;
    let id = gw.new_session().await;
    let timeouts_before = redis_errors(&gw, "timeout").await;

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
    assert!(
        redis_errors(&gw, "timeout").await > timeouts_before,
        "a connected but slow redis is counted as a timeout"
    );
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
async fn flushed_functions_are_loaded_again_transparently() {
    let gw = TestGateway::start().await;
    let id = gw.new_session().await;
    let _: () = gw
        .redis
        .function_flush(false)
        .await
        .expect("FUNCTION FLUSH");
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
    let _: () = gw
        .redis
        .function_flush(false)
        .await
        .expect("FUNCTION FLUSH");
    gw.new_session().await;
}

/// Libraries in Redis named as this store names its own (`FUNCTION LIST`).
fn own_libraries(redis: &RedisServer) -> Vec<String> {
    let listed = redis.cli(&["FUNCTION", "LIST", "LIBRARYNAME", "sessiongate_*"]);
    let lines: Vec<&str> = listed.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == "library_name")
        .map(|pair| pair[1].to_string())
        .collect()
}

#[tokio::test]
async fn a_gateway_sweeps_out_the_functions_of_other_configurations_and_they_come_back_on_use() {
    let redis = RedisServer::start();
    let with_limit = |limit: u64| {
        move |config: &mut sessiongate::config::Config| {
            with_token(config);
            let month = Window::Calendar(CalendarUnit::Month);
            config.policies = vec![Policy::new("work", limit, month)];
        }
    };
    let old = TestGateway::start_on(&redis.url(0), with_limit(5)).await;
    let id = old.new_session().await;
    assert_eq!(old.consume(&id, "work", None).await.0, 200);
    let old_libraries = own_libraries(&redis);
    assert!(
        old_libraries
            .iter()
            .any(|name| name.starts_with("sessiongate_consume_")),
        "{old_libraries:?}"
    );

    // A new configuration (another limit: other quota functions) starts on the same Redis.
    let new = TestGateway::start_on(&redis.url(0), with_limit(7)).await;
    let new_libraries = own_libraries(&redis);
    let consumes = |names: &[String]| -> Vec<String> {
        let consume = names
            .iter()
            .filter(|n| n.starts_with("sessiongate_consume_"));
        consume.cloned().collect()
    };
    assert_eq!(consumes(&new_libraries).len(), 1, "{new_libraries:?}");
    assert_ne!(consumes(&old_libraries), consumes(&new_libraries));
    // The session functions did not change with the policy: kept, not loaded again.
    let create = |names: &[String]| {
        names
            .iter()
            .find(|n| n.starts_with("sessiongate_create_"))
            .cloned()
    };
    assert_eq!(create(&old_libraries), create(&new_libraries));

    // The old gateway's next consume loads its function again and counts exactly.
    let (status, body) = old.consume(&id, "work", None).await;
    assert_eq!(
        (status, &body["remaining"]),
        (200, &serde_json::json!(3)),
        "{body}"
    );
    assert!(own_libraries(&redis).len() > new_libraries.len());
    let (status, body) = new.consume(&id, "work", None).await;
    assert_eq!(
        (status, &body["limit"]),
        (200, &serde_json::json!(7)),
        "{body}"
    );
}
