//! Redis SIGKILLed and restarted under load: a Redis that keeps every acknowledged write
//! (AOF, `appendfsync always`) is killed while workers consume quota and read session info.
//! Proves that the gateway answers 503 with Retry-After within its Redis timeout, and at once
//! once it knows its connection is down (never 500, never a dropped connection), is back to
//! full service within a second or so of Redis accepting again, and that every consume counts
//! exactly once (retried idempotency keys replay or grant).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};

use super::{client, redis_client, LIMIT, LOAD_SETTINGS, SERIAL};
use crate::process::{one_shot, temp_dir, GatewayProcess};
use crate::services::{free_port, wait_until, Watchdog};
use crate::support::{eventually, session_key, TOKEN};

/// A Redis that keeps every acknowledged write across a `SIGKILL` (`appendonly yes`,
/// `appendfsync always`), restartable on its port with its data.
struct DurableRedis {
    port: u16,
    dir: PathBuf,
    server: Option<Watchdog>,
}

impl DurableRedis {
    fn start() -> DurableRedis {
        let mut redis = DurableRedis {
            port: 0,
            dir: temp_dir("redis"),
            server: None,
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn().is_some() {
                return redis;
            }
        }
        panic!("could not start a durable redis-server on a free port");
    }

    /// Starts the server; returns when it first accepted a connection, or `None` when it
    /// exited instead (its port was taken).
    fn spawn(&mut self) -> Option<Instant> {
        let script = r#"trap '' PIPE
            redis-server --bind 127.0.0.1 --port "$1" --dir "$2" --save "" \
            --appendonly yes --appendfsync always --logfile "$2/redis.log" & echo $!; read _; kill -9 $! 2>/dev/null; wait"#;
        let server = Watchdog::spawn(
            Command::new("sh"),
            script,
            &[&self.port.to_string(), &self.dir.to_string_lossy()],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let accepting = loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break Instant::now();
            }
            if !server.server_alive() {
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(5));
        };
        // Ours, not another server that took the port: its folder is ours.
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "CONFIG", "GET", "dir"])
            .output()
            .expect("redis-cli");
        if !server.server_alive()
            || !String::from_utf8_lossy(&output.stdout).contains(&*self.dir.to_string_lossy())
        {
            return None;
        }
        self.server = Some(server);
        Some(accepting)
    }

    fn kill9(&mut self) {
        let server = self.server.take().expect("redis runs");
        let _ = Command::new("kill")
            .args(["-9", &server.pid().to_string()])
            .status();
        wait_until(Duration::from_secs(10), "redis-server to die", || {
            !server.server_alive()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
        drop(server);
    }

    /// Starts the server again on its port and data; returns when it accepted again.
    fn restart(&mut self) -> Instant {
        self.spawn().unwrap_or_else(|| {
            panic!(
                "redis-server did not start again; its log:\n{}",
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            )
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One answer a load worker got: when, how long it took, its status (0: no HTTP answer).
#[derive(Clone, Copy, Debug)]
struct Answer {
    at: Instant,
    took: Duration,
    what: &'static str,
    status: u16,
    retry_after: bool,
}

#[derive(Default)]
struct QuotaWorker {
    id: String,
    /// Every idempotency key sent, with the status of its answer.
    keys: Vec<(String, u16)>,
    violations: Vec<String>,
}

/// Consumes quota (each call with an idempotency key of its own) and reads the session's
/// info, alternately, until told to stop; checks every info against the grants so far.
async fn quota_worker(
    base: String,
    id: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> QuotaWorker {
    let http = client();
    let mut worker = QuotaWorker {
        id: id.clone(),
        ..QuotaWorker::default()
    };
    let (mut granted, mut unsure) = (0u64, 0u64);
    let record = |started: Instant, what, status, retry_after| {
        answers.lock().expect("answers").push(Answer {
            at: Instant::now(),
            took: started.elapsed(),
            what,
            status,
            retry_after,
        });
    };
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{id}-{n}");
        let started = Instant::now();
        let sent = http
            .post(format!(
                "{base}/internal/v1/sessions/{id}/quota/concept_generation/consume"
            ))
            .bearer_auth(TOKEN)
            .json(&json!({ "idempotency_key": key }))
            .send()
            .await;
        let (status, retry_after) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let _ = response.bytes().await;
                (status, retry_after)
            }
            Err(_) => (0, false),
        };
        record(started, "consume", status, retry_after);
        if status == 200 {
            granted += 1;
        } else {
            unsure += 1;
        }
        worker.keys.push((key, status));

        let started = Instant::now();
        let sent = http
            .get(format!("{base}/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await;
        let (status, retry_after) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == 200 {
                    let used = body["usage_stats"]["concepts_generated"].as_u64();
                    let remaining = body["rate_limits"]["concept_generation"]["remaining"].as_u64();
                    let consistent = used.is_some_and(|u| {
                        (granted..=granted + unsure).contains(&u) && remaining == Some(LIMIT - u)
                    });
                    if !consistent {
                        worker.violations.push(format!(
                            "info after {granted} grants and {unsure} unsure ones: used {used:?}, remaining {remaining:?}"
                        ));
                    }
                }
                (status, retry_after)
            }
            Err(_) => (0, false),
        };
        record(started, "info", status, retry_after);
    }
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_under_load_answers_503_recovers_and_keeps_every_grant() {
    let _serial = SERIAL.lock().await;
    let timeout = Duration::from_millis(500);
    // What "answered within the timeout" may take on two shared cores.
    let bound = timeout + Duration::from_millis(1500);
    let mut redis = DurableRedis::start();
    let gw = GatewayProcess::start(
        &redis.url(),
        &format!(
            "[redis]\ntimeout_ms = {}\n{LOAD_SETTINGS}",
            timeout.as_millis()
        ),
        &[("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string())],
    );
    let http = client();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(gw.new_session(&http).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let workers: Vec<_> = ids
        .iter()
        .map(|id| {
            tokio::spawn(quota_worker(
                gw.url(""),
                id.clone(),
                stop.clone(),
                answers.clone(),
            ))
        })
        .collect();
    let count = |pick: &dyn Fn(&Answer) -> bool| -> usize {
        answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|a| pick(a))
            .count()
    };

    eventually(
        Duration::from_secs(30),
        "200 grants before the fault",
        || {
            let enough = count(&|a| a.what == "consume" && a.status == 200) >= 200;
            async move { enough.then_some(()) }
        },
    )
    .await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| redis.kill9());
    eventually(Duration::from_secs(20), "503s during the outage", || {
        let shown = count(&|a| a.at > killed_at && a.status == 503) >= 20
            && killed_at.elapsed() >= Duration::from_millis(1500);
        async move { shown.then_some(()) }
    })
    .await;
    let up_at = tokio::task::block_in_place(|| redis.restart());
    let first_200 = eventually(Duration::from_secs(20), "a 200 after redis is back", || {
        let first = answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|a| a.at >= up_at && a.status == 200)
            .map(|a| a.at)
            .min();
        async move { first }
    })
    .await;
    let recovery = first_200 - up_at;
    eventually(
        Duration::from_secs(30),
        "200 more grants after recovery",
        || {
            let enough =
                count(&|a| a.at > first_200 && a.what == "consume" && a.status == 200) >= 200;
            async move { enough.then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut finished = Vec::new();
    for worker in workers {
        finished.push(worker.await.expect("worker"));
    }

    let answers = answers.lock().expect("answers").clone();
    let in_outage = |a: &&Answer| a.at > killed_at && a.at < first_200;
    let outage: Vec<&Answer> = answers.iter().filter(in_outage).collect();
    let unavailable: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    let slowest_503 = unavailable.iter().map(|a| a.took).max().unwrap_or_default();
    // Once the gateway has seen its connection close, a 503 needs no wait for the timeout.
    let mut known_down: Vec<Duration> = unavailable
        .iter()
        .filter(|a| a.at > killed_at + Duration::from_millis(250))
        .map(|a| a.took)
        .collect();
    known_down.sort();
    let median_known_down = known_down
        .get(known_down.len() / 2)
        .copied()
        .unwrap_or_default();
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for answer in &answers {
        *statuses.entry((answer.what, answer.status)).or_default() += 1;
    }
    eprintln!(
        "redis sigkill: {} answers {statuses:?}; outage (kill to first 200) {:?}, redis down {:?}; \
         {} answers during the outage, {} of them 503; slowest answer {slowest:?}, slowest 503 \
         {slowest_503:?} (redis timeout {timeout:?}), median 503 once known down \
         {median_known_down:?}; recovery from redis accepting to the first 200: {recovery:?}",
        answers.len(),
        first_200 - killed_at,
        up_at - killed_at,
        outage.len(),
        outage.iter().filter(|a| a.status == 503).count(),
    );

    // Settle every consume whose answer was not a 200: the same idempotency key either
    // replays the grant Redis made, or grants now. Then every key counts exactly once.
    let (mut replayed, mut fresh) = (0, 0);
    for worker in &finished {
        for (key, _) in worker.keys.iter().filter(|(_, status)| *status != 200) {
            let was_replayed = eventually(
                Duration::from_secs(20),
                "an unsure consume to be settled",
                || async {
                    let response = http
                        .post(gw.url(&format!(
                            "/internal/v1/sessions/{}/quota/concept_generation/consume",
                            worker.id
                        )))
                        .bearer_auth(TOKEN)
                        .json(&json!({ "idempotency_key": key }))
                        .send()
                        .await
                        .ok()?;
                    let replayed = response.headers().contains_key("idempotent-replayed");
                    (response.status().as_u16() == 200).then_some(replayed)
                },
            )
            .await;
            if was_replayed {
                replayed += 1;
            } else {
                fresh += 1;
            }
        }
    }
    let check = redis_client(&redis.url()).await;
    let mut counted = Vec::new();
    for worker in &finished {
        let used: u64 = check
            .hget(session_key(&worker.id), "g")
            .await
            .expect("HGET");
        let granted = worker.keys.iter().filter(|(_, s)| *s == 200).count() as u64;
        let response = http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &worker.id)
            .send()
            .await
            .expect("info");
        let info: Value = response.json().await.expect("info JSON");
        counted.push((worker.keys.len() as u64, granted, used, info));
    }
    eprintln!(
        "redis sigkill: {} consumes answered 200 during the run; {} answered otherwise and \
         settled afterwards: {replayed} had been applied (replayed), {fresh} had not",
        counted.iter().map(|c| c.1).sum::<u64>(),
        replayed + fresh,
    );

    assert!(gw.alive(), "the gateway survived");
    let violations: Vec<&String> = finished.iter().flat_map(|w| &w.violations).collect();
    assert!(violations.is_empty(), "inconsistent reads: {violations:?}");
    assert!(
        answers.iter().all(|a| a.status == 200 || a.status == 503),
        "only 200 and 503 (never 500, never a dropped connection): {statuses:?}"
    );
    assert!(
        unavailable.iter().all(|a| a.retry_after),
        "every 503 carries Retry-After"
    );
    assert!(
        outage.iter().filter(|a| a.status == 503).count() >= 20,
        "the outage showed"
    );
    assert!(
        slowest <= bound,
        "an answer took {slowest:?}, past the redis timeout {timeout:?} + margin"
    );
    assert!(
        !known_down.is_empty() && median_known_down < timeout / 5,
        "with redis known down, a 503 took {median_known_down:?} (median), not at once"
    );
    assert!(
        recovery <= Duration::from_secs(2),
        "full service took {recovery:?} after redis came back (target 1 s)"
    );
    for (keys, granted, used, info) in &counted {
        assert!(
            used >= granted,
            "a granted consume was lost: {used} < {granted}"
        );
        assert_eq!(used, keys, "every consume counted exactly once");
        assert_eq!(info["usage_stats"]["concepts_generated"], json!(used));
        assert_eq!(
            info["rate_limits"]["concept_generation"]["remaining"],
            json!(LIMIT - used)
        );
    }
    let ready = one_shot()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    // Thousands of internal-API calls and an outage's worth of warnings later, the service
    // token appears nowhere in the gateway's log.
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).expect("the gateway's log");
    assert!(log.contains("redis"), "the outage left no trace in the log");
    assert!(!log.contains(TOKEN), "the service token was logged");
}
