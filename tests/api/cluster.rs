//! The same gateway on a real Redis Cluster (three masters, three replicas): sessions,
//! quota exactness and write-behind run unchanged, and a master failing over under traffic
//! costs a short window of 503s and no counter Redis acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiongate::model::quota::{Policy, Window};

use crate::services::{shared_cluster, shared_postgrest, RedisCluster};
use crate::support::{eventually, split, with_token, writing_to, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_exact_quotas_on_a_cluster() {
    let url = shared_cluster().url();
    let one = TestGateway::start_on(&url, with_token).await;
    let two = TestGateway::start_on(&url, with_token).await;

    let id = one.new_session().await;
    let (status, body) = two
        .post_json("/api/session/sync", json!({"client_session_id": id}))
        .await;
    assert_eq!((status, &body["is_synced"]), (200, &json!(true)), "{body}");
    let response = two.put_preferences(&id, &json!({"theme": "dark"})).await;
    assert_eq!(response.status().as_u16(), 200);

    let gateways = [&one, &two];
    let requests = (0..500).map(|i| gateways[i % 2].consume(&id, "concept_generation", None));
    let answers = futures_util::future::join_all(requests).await;
    let granted = answers.iter().filter(|(status, _)| *status == 200).count();
    let denied = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(
        (granted, denied),
        (10, 490),
        "exactly the limit, on a cluster too"
    );
    let info = one.info(&id).await;
    assert_eq!(info["usage_stats"]["concepts_generated"], 10);
    assert_eq!(info["rate_limits"]["concept_generation"]["remaining"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_on_a_cluster_with_two_gateways() {
    let postgrest = shared_postgrest();
    let writing = writing_to(postgrest);
    let url = shared_cluster().url();
    let one = TestGateway::start_on(&url, writing).await;
    let two = TestGateway::start_on(&url, writing).await;
    let ids: Vec<String> =
        futures_util::future::join_all((0..200).map(|_| one.new_session())).await;
    for id in &ids {
        assert_eq!(two.consume(id, "concept_generation", None).await.0, 200);
    }
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "every session's state in postgres",
        || async {
            let mut flushed = 0;
            for chunk in ids.chunks(100) {
                let rows: Vec<serde_json::Value> = http
                    .get(format!("{}/sessions", postgrest.url()))
                    .query(&[("id", format!("in.({})", chunk.join(",")))])
                    .bearer_auth(postgrest.token("service_role"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                flushed += rows
                    .iter()
                    .filter(|row| row["usage"]["concepts_generated"] == 1)
                    .count();
            }
            (flushed == ids.len()).then_some(())
        },
    )
    .await;
}

/// The port of the master that owns `key`'s slot.
fn master_of(cluster: &RedisCluster, key: &str) -> u16 {
    let port = cluster.ports[0];
    let slot: u16 = cluster
        .cli(port, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .expect("slot");
    // CLUSTER SLOTS: start, end, then the master's address and the replicas'.
    let slots = cluster.cli(port, &["cluster", "slots"]);
    let lines: Vec<&str> = slots.lines().map(str::trim).collect();
    lines
        .windows(4)
        .find_map(|w| {
            let (start, end) = (w[0].parse::<u16>().ok()?, w[1].parse::<u16>().ok()?);
            (start <= slot && slot <= end && w[2] == "127.0.0.1").then(|| w[3].parse().ok())?
        })
        .expect("a master owns the slot")
}

/// The port of a replica in sync with the master on `master`, from the master's ROLE.
fn replica_of(cluster: &RedisCluster, master: u16) -> Option<u16> {
    // ROLE on a master: "master", its offset, then per replica: ip, port, offset.
    let role = cluster.cli(master, &["role"]);
    let lines: Vec<&str> = role.lines().map(str::trim).collect();
    (lines.first() == Some(&"master"))
        .then(|| lines.get(3)?.parse().ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failing_over_under_traffic_costs_a_short_503_window_and_no_counter() {
    // Alone with the load tests: a replica starved of CPU lags behind its master, and a
    // soak beside this traffic would measure it.
    let _serial = crate::faults::SERIAL.lock().await;
    let cluster = Arc::new(RedisCluster::start());
    let gw = Arc::new(
        TestGateway::start_on(&cluster.url(), |config| {
            with_token(config);
            let month = Window::Calendar(sessiongate::model::quota::CalendarUnit::Month);
            config.policies = vec![Policy {
                counter: Some("concepts_generated".into()),
                ..Policy::new("work", 1_000_000, month)
            }];
        })
        .await,
    );
    let id = gw.new_session().await;
    let key = crate::support::session_key(&id);
    let master = master_of(&cluster, &key);
    let replica = eventually(
        Duration::from_secs(30),
        "the master to report its replica",
        || async { replica_of(&cluster, master) },
    )
    .await;

    // Steady traffic: consumes on the session whose master fails over.
    let granted = Arc::new(AtomicU64::new(0));
    let unavailable = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let unexpected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let (gw, id, key, cluster) = (gw.clone(), id.clone(), key.clone(), cluster.clone());
            let (granted, unavailable, unexpected, stop) = (
                granted.clone(),
                unavailable.clone(),
                unexpected.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match gw.consume(&id, "work", None).await {
                        (200, _) => {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                        (503, _) => unavailable.lock().expect("lock").push(Instant::now()),
                        (status, body) => {
                            let at = Instant::now();
                            let holders = tokio::task::block_in_place(|| cluster.holders_of(&key));
                            let mut unexpected = unexpected.lock().expect("lock");
                            unexpected.push((at, status, body, holders));
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "traffic to flow", || async {
        (granted.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;

    let failover_started = Instant::now();
    assert!(cluster
        .cli(replica, &["cluster", "failover"])
        .contains("OK"));
    eventually(
        Duration::from_secs(30),
        "the replica to take over",
        || async {
            cluster
                .cli(replica, &["role"])
                .starts_with("master")
                .then_some(())
        },
    )
    .await;
    let before = granted.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        "grants to flow again through the new master",
        || async {
            let flowing = granted.load(Ordering::Relaxed) > before + 100;
            (flowing || stop.load(Ordering::Relaxed)).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in traffic {
        task.await.expect("traffic task");
    }
    let unexpected = unexpected.lock().expect("lock").clone();
    if let Some((at, status, body, holders)) = unexpected.first() {
        panic!(
            "a consume answered {status} {body}, {:?} after the failover command; \
             the nodes then:\n{holders}the cluster logged:\n{}",
            at.saturating_duration_since(failover_started),
            cluster.role_changes()
        );
    }

    let unavailable = unavailable.lock().expect("lock").clone();
    let window = match (unavailable.first(), unavailable.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    eprintln!(
        "failover: {} grants, {} answers 503 over a window of {window:?}; new master on {replica} (was {master}), {:?} after the command",
        granted.load(Ordering::Relaxed),
        unavailable.len(),
        failover_started.elapsed()
    );
    assert!(
        window < Duration::from_secs(10),
        "503 only during the failover: {window:?}"
    );
    let info = gw.info(&id).await;
    assert_eq!(
        info["usage_stats"]["concepts_generated"].as_u64(),
        Some(granted.load(Ordering::Relaxed)),
        "every grant Redis acknowledged is still counted"
    );
    let response = gw
        .http
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(split(response).await.0, 200);
}

/// A Sentinel URL: the gateway asks Sentinel for the master and runs the same scripts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_quotas_through_sentinel() {
    let master = crate::support::RedisServer::start();
    let sentinel = crate::services::Sentinel::start(master.port);
    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=sessiongate",
        sentinel.port
    );
    let gw = TestGateway::start_on(&url, with_token).await;
    let id = gw.new_session().await;
    for remaining in [9, 8] {
        let (status, body) = gw.consume(&id, "concept_generation", None).await;
        assert_eq!(
            (status, body["remaining"].as_u64()),
            (200, Some(remaining)),
            "{body}"
        );
    }
    assert_eq!(gw.info(&id).await["usage_stats"]["concepts_generated"], 2);
}
