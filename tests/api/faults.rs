//! Fault injection with real processes (issue 8): Redis SIGKILLed and restarted under load,
//! the gateway SIGKILLed under load with write-behind on, the system of record down or hung
//! under writes, slow and vanishing clients, and a soak at a fixed request rate.
//!
//! The gateway runs as its own process (the `sessiongate` binary), so its RSS, file
//! descriptors and metrics are its own, and it can be killed. Everything listens on loopback;
//! every wait polls with a deadline; every test prints what it measured (`--nocapture`).
//! The tests take one lock between them, so that their timings are not each other's noise.
//! Longer runs on demand: `SOAK_SECONDS` and `SOAK_RATE` (defaults: 60 s at 500 requests/s)
//! for the soak, `FAULT_OUTAGE_SECONDS` (default 4) for the system-of-record outages.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{one_shot, temp_dir, GatewayProcess};
use crate::services::{free_port, shared_postgrest, wait_until, Postgres, Postgrest, Watchdog};
use crate::support::{eventually, metric, session_key, RedisServer, TOKEN};

/// One fault test at a time: they measure latencies, RSS and recovery times.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Quotas large enough never to refuse under load, over rolling windows that cannot reset
/// during a test, and session creation unthrottled (every request comes from 127.0.0.1).
const LOAD_SETTINGS: &str = r#"
[session]
creations_per_minute = 1000000
creation_burst = 100000
max_creations_per_second = 1000000

[quotas.concept_generation]
limit = 1000000
window = "30 days"
counter = "concepts_generated"

[quotas.concept_refinement]
limit = 1000000
window = "30 days"
counter = "concepts_refined"
"#;
const LIMIT: u64 = 1_000_000;
const SHARDS: u64 = sessiongate::store::DEFAULT_SHARDS as u64;

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

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

async fn redis_client(url: &str) -> Client {
    let client = Builder::from_config(fred::prelude::Config::from_url(url).expect("redis url"))
        .build()
        .expect("redis client");
    client.init().await.expect("test redis client connects");
    client
}

/// An HTTP client for load: keep-alive, and a bound on every request so a hang fails.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn shard_of(id: &str) -> u64 {
    let id = uuid::Uuid::parse_str(id).expect("uuid");
    u64::from(sessiongate::store::shard_of(&id, SHARDS as u32))
}

/// Dirty and claimed (in-flight) sessions over all shards, read from Redis.
async fn outbox(redis: &Client) -> (u64, u64) {
    let (mut dirty, mut inflight) = (0, 0);
    for shard in 0..SHARDS {
        let d: u64 = redis
            .zcard(sessiongate::store::dirty_key(shard as u32))
            .await
            .expect("ZCARD");
        let i: u64 = redis
            .zcard(sessiongate::store::inflight_key(shard as u32))
            .await
            .expect("ZCARD");
        dirty += d;
        inflight += i;
    }
    (dirty, inflight)
}

// ---------------------------------------------------------------------------------------
// Redis against PostgreSQL, row by row
// ---------------------------------------------------------------------------------------

/// Every difference between what Redis holds for each session and its row in PostgreSQL
/// (version, timestamps, counters, preferences, quota state), one line per session. `Err`
/// when PostgREST does not answer.
async fn row_differences(
    redis: &Client,
    postgrest: &Postgrest,
    ids: &[String],
) -> Result<Vec<String>, String> {
    let rows = postgrest.rows(ids).await?;
    let mut differences = Vec::new();
    for id in ids {
        let fields: HashMap<String, String> =
            redis.hgetall(session_key(id)).await.expect("HGETALL");
        if fields.is_empty() {
            differences.push(format!("{id}: missing in redis"));
            continue;
        }
        let Some(row) = rows.get(id) else {
            differences.push(format!("{id}: no row"));
            continue;
        };
        let number = |name: &str| -> i64 {
            fields
                .get(name)
                .map_or(0, |v| v.parse().expect("an integer field"))
        };
        let time = |column: &str| -> Option<i64> {
            row[column]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp())
        };
        let preferences = fields
            .get("p")
            .filter(|p| !p.is_empty())
            .map_or(json!({}), |p| {
                serde_json::from_str(p).expect("stored preferences")
            });
        let quotas: serde_json::Map<String, Value> = fields
            .iter()
            .filter_map(|(name, state)| {
                let operation = name.strip_prefix("q:")?;
                (!state.is_empty()).then(|| (operation.to_string(), json!(state)))
            })
            .collect();
        let mut wrong = Vec::new();
        for (what, stored, held) in [
            ("version", row["version"].as_i64(), number("v")),
            ("created_at", time("created_at"), number("c")),
            ("last_active_at", time("last_active_at"), number("a")),
            (
                "concepts_generated",
                row["usage"]["concepts_generated"].as_i64().or(Some(0)),
                number("g"),
            ),
            (
                "concepts_refined",
                row["usage"]["concepts_refined"].as_i64().or(Some(0)),
                number("r"),
            ),
            (
                "concepts_stored",
                row["usage"]["concepts_stored"].as_i64().or(Some(0)),
                number("s"),
            ),
        ] {
            if stored != Some(held) {
                wrong.push(format!("{what} {stored:?} (redis {held})"));
            }
        }
        if row["preferences"] != preferences {
            wrong.push(format!(
                "preferences {} (redis {preferences})",
                row["preferences"]
            ));
        }
        if row["quota_state"] != Value::Object(quotas.clone()) {
            wrong.push(format!(
                "quota_state {} (redis {})",
                row["quota_state"],
                Value::Object(quotas)
            ));
        }
        if !wrong.is_empty() {
            differences.push(format!("{id}: {}", wrong.join(", ")));
        }
    }
    Ok(differences)
}

/// Polls until every session's row equals what Redis holds; returns how long that took.
async fn rows_converge(
    redis: &Client,
    postgrest: &Postgrest,
    ids: &[String],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let last = match row_differences(redis, postgrest, ids).await {
            Ok(differences) if differences.is_empty() => return started.elapsed(),
            Ok(differences) => differences,
            Err(error) => vec![error],
        };
        assert!(
            started.elapsed() < limit,
            "after {limit:?}, {} of {} sessions still differ between redis and postgres, e.g.\n{}",
            last.len(),
            ids.len(),
            last[..last.len().min(5)].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Redis SIGKILL and restart under load
// ---------------------------------------------------------------------------------------

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
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for answer in &answers {
        *statuses.entry((answer.what, answer.status)).or_default() += 1;
    }
    eprintln!(
        "redis sigkill: {} answers {statuses:?}; outage (kill to first 200) {:?}, redis down {:?}; \
         {} answers during the outage, {} of them 503; slowest answer {slowest:?}, slowest 503 \
         {slowest_503:?} (redis timeout {timeout:?}); recovery from redis accepting to the \
         first 200: {recovery:?}",
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
        recovery <= Duration::from_secs(5),
        "full service took {recovery:?} after redis came back (target 2 s)"
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

// ---------------------------------------------------------------------------------------
// 2. Gateway SIGKILL under load, write-behind on
// ---------------------------------------------------------------------------------------

/// What a client knows about a session it created: grants and preference writes that were
/// answered, and the ones whose answer was lost with the gateway.
#[derive(Clone, Debug, Default)]
struct Tracked {
    id: String,
    granted: u64,
    unsure_consumes: u64,
    preferences: Option<u64>,
    unsure_preferences: Vec<u64>,
}

#[derive(Default)]
struct ChurnWorker {
    /// Sessions created by others that the worker changes too (the first ones in `sessions`).
    seeded: usize,
    sessions: Vec<Tracked>,
    /// When the worker first got no HTTP answer (the gateway died).
    cut_at: Option<Instant>,
    violations: Vec<String>,
}

/// Creates sessions, consumes quota and rewrites preferences on them until told to stop
/// or the gateway stops answering. New sessions may be refused with 503 + Retry-After
/// (write-behind backpressure); changes to existing sessions must always succeed.
async fn churn_worker(
    base: String,
    seeds: Vec<String>,
    stop: Arc<AtomicBool>,
    created: Arc<AtomicU64>,
    changed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> ChurnWorker {
    let http = client();
    let mut worker = ChurnWorker {
        seeded: seeds.len(),
        sessions: seeds
            .into_iter()
            .map(|id| Tracked {
                id,
                ..Tracked::default()
            })
            .collect(),
        ..ChurnWorker::default()
    };
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if worker.sessions.is_empty() || n % 4 == 0 {
            let Ok(response) = http.post(format!("{base}/api/session/")).send().await else {
                worker.cut_at = Some(Instant::now());
                break;
            };
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match status {
                200 => {
                    worker.sessions.push(Tracked {
                        id: body["session_id"].as_str().expect("id").to_string(),
                        ..Tracked::default()
                    });
                    created.fetch_add(1, Ordering::Relaxed);
                }
                503 if retry_after && body["error_code"] == "service_unavailable" => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                _ => worker
                    .violations
                    .push(format!("create: {status} {retry_after} {body}")),
            }
            continue;
        }
        let len = worker.sessions.len() as u64;
        let session = &mut worker.sessions[(n % len) as usize];
        if n % 2 == 0 {
            let sent = http
                .post(format!(
                    "{base}/internal/v1/sessions/{}/quota/concept_generation/consume",
                    session.id
                ))
                .bearer_auth(TOKEN)
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => session.granted += 1,
                Ok(status) => worker.violations.push(format!("consume: {status}")),
                Err(_) => {
                    session.unsure_consumes += 1;
                    worker.cut_at = Some(Instant::now());
                    break;
                }
            }
        } else {
            let sent = http
                .put(format!("{base}/api/session/preferences"))
                .header("x-session-id", &session.id)
                .json(&json!({ "n": n }))
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => session.preferences = Some(n),
                Ok(status) => worker.violations.push(format!("preferences: {status}")),
                Err(_) => {
                    session.unsure_preferences.push(n);
                    worker.cut_at = Some(Instant::now());
                    break;
                }
            }
        }
        changed.fetch_add(1, Ordering::Relaxed);
    }
    worker
}

/// Churn workers at work.
struct Churn {
    stop: Arc<AtomicBool>,
    created: Arc<AtomicU64>,
    changed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<ChurnWorker>>,
}

/// What churn workers did, once stopped.
struct Churned {
    /// Sessions the workers created (not the seeds).
    created: Vec<Tracked>,
    /// Every session the workers touched, seeds included.
    sessions: Vec<Tracked>,
    changed: u64,
    refused: u64,
    cut_at: Vec<Instant>,
    violations: Vec<String>,
}

impl Churn {
    /// `workers` workers; `seeds` (existing sessions) are shared out between them.
    fn start(base: &str, workers: usize, seeds: &[String]) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicU64::new(0));
        let changed = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|w| {
                tokio::spawn(churn_worker(
                    base.to_string(),
                    seeds.iter().skip(w).step_by(workers).cloned().collect(),
                    stop.clone(),
                    created.clone(),
                    changed.clone(),
                    refused.clone(),
                ))
            })
            .collect();
        Churn {
            stop,
            created,
            changed,
            refused,
            workers,
        }
    }

    async fn wait_for(&self, what: &str, created: u64, changed: u64) {
        eventually(Duration::from_secs(60), what, || {
            let done = self.created.load(Ordering::Relaxed) >= created
                && self.changed.load(Ordering::Relaxed) >= changed;
            async move { done.then_some(()) }
        })
        .await;
    }

    async fn finish(self) -> Churned {
        self.stop.store(true, Ordering::Relaxed);
        let mut churned = Churned {
            created: Vec::new(),
            sessions: Vec::new(),
            changed: 0,
            refused: 0,
            cut_at: Vec::new(),
            violations: Vec::new(),
        };
        for worker in self.workers {
            let worker = worker.await.expect("worker");
            churned
                .created
                .extend(worker.sessions[worker.seeded..].iter().cloned());
            churned.sessions.extend(worker.sessions);
            churned.cut_at.extend(worker.cut_at);
            churned.violations.extend(worker.violations);
        }
        churned.changed = self.changed.load(Ordering::Relaxed);
        churned.refused = self.refused.load(Ordering::Relaxed);
        churned
    }
}

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

fn write_behind_env(postgrest: &Postgrest) -> Vec<(&'static str, String)> {
    vec![
        ("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string()),
        ("SUPABASE_REST_URL", postgrest.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", postgrest.token("service_role")),
    ]
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

// ---------------------------------------------------------------------------------------
// 3. The system of record down (PostgreSQL stopped) and hung (PostgREST frozen) under writes
// ---------------------------------------------------------------------------------------

/// How the system of record fails.
enum Fault<'a> {
    /// PostgreSQL itself stops (fast shutdown); PostgREST answers errors meanwhile.
    PostgresStopped(&'a mut Postgres),
    /// PostgREST hangs (`SIGSTOP`): connections open, nothing answers until the flusher's
    /// request timeout.
    PostgrestHung(&'a Postgrest),
}

impl Fault<'_> {
    fn name(&self) -> &'static str {
        match self {
            Fault::PostgresStopped(_) => "postgres stopped",
            Fault::PostgrestHung(_) => "postgrest hung",
        }
    }

    fn break_it(&mut self) {
        match self {
            Fault::PostgresStopped(postgres) => postgres.stop(),
            Fault::PostgrestHung(postgrest) => postgrest.freeze(),
        }
    }

    fn mend(&mut self) {
        match self {
            Fault::PostgresStopped(postgres) => postgres.restart(),
            Fault::PostgrestHung(postgrest) => postgrest.thaw(),
        }
    }
}

/// Samples the backlog gauge of `/metrics` until stopped; returns the largest value seen
/// and the number of samples.
fn sample_backlog(
    gw: &GatewayProcess,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(f64, usize)> {
    let admin = gw.admin_url("/metrics");
    tokio::spawn(async move {
        let http = one_shot();
        let (mut largest, mut samples) = (0f64, 0);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(response) = http.get(&admin).send().await {
                if let Ok(text) = response.text().await {
                    if let Some(value) = metric(&text, "sessiongate_flush_backlog_sessions", "") {
                        largest = largest.max(value);
                        samples += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (largest, samples)
    })
}

/// One outage of the system of record under writes (new sessions, and changes to new and
/// `existing` sessions). Serving goes on from Redis; a shard's outbox refuses new sessions
/// with 503 once full; once mended, the backlog drains and every row matches Redis.
async fn outage_under_writes(
    mut fault: Fault<'_>,
    gw: &GatewayProcess,
    redis: &Client,
    postgrest: &Postgrest,
    existing: &[String],
    (max_backlog, batch): (u64, u64),
) {
    let name = fault.name();
    let per_shard = max_backlog.div_ceil(SHARDS);
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_backlog(gw, sampling.clone());
    tokio::task::block_in_place(|| fault.break_it());
    let failed_at = Instant::now();
    let churn = Churn::start(&gw.url(""), 4, existing);
    // Long enough for several flush rounds, and for the backlog limit to bite.
    let outage = Duration::from_secs(env_u64("FAULT_OUTAGE_SECONDS", 4));
    eventually(
        outage + Duration::from_secs(60),
        "the backlog limit to refuse new sessions",
        || {
            let bit = churn.refused.load(Ordering::Relaxed) >= 50 && failed_at.elapsed() >= outage;
            async move { bit.then_some(()) }
        },
    )
    .await;
    let churned = churn.finish().await;
    let outage = failed_at.elapsed();
    let (dirty, inflight) = outbox(redis).await;
    tokio::task::block_in_place(|| fault.mend());
    let mended_at = Instant::now();

    let created: Vec<String> = churned.created.iter().map(|s| s.id.clone()).collect();
    let mut by_shard = [0u64; SHARDS as usize];
    for id in &created {
        by_shard[shard_of(id) as usize] += 1;
    }
    let fullest = by_shard.iter().copied().max().unwrap_or(0);
    assert!(
        churned.violations.is_empty(),
        "{name}: wrong answers: {:?}",
        churned.violations
    );
    assert!(
        churned.cut_at.is_empty(),
        "{name}: the gateway stopped answering"
    );
    let mut ids = existing.to_vec();
    ids.extend(created.iter().cloned());
    rows_converge(redis, postgrest, &ids, Duration::from_secs(120)).await;
    let drained = mended_at.elapsed();
    eventually(
        Duration::from_secs(30),
        "the backlog gauge at zero",
        || async {
            (gw.metric("sessiongate_flush_backlog_sessions", "").await == 0.0).then_some(())
        },
    )
    .await;
    sampling.store(true, Ordering::Relaxed);
    let (largest, samples) = sampler.await.expect("sampler");
    eprintln!(
        "{name}: outage of {outage:?} under writes: {} sessions created (at most {fullest} in \
         one shard; the limit is {per_shard} per shard, max_backlog {max_backlog}), {} \
         creations refused with 503, {} changes answered 200; outbox at the end: {dirty} \
         dirty + {inflight} claimed; largest backlog gauge {largest} ({samples} samples); \
         all {} rows equal to redis, field by field, {drained:?} after the repair",
        created.len(),
        churned.refused,
        churned.changed,
        ids.len(),
    );
    // Sessions created during the outage stay dirty until it ends, and a shard refuses
    // creations once its outbox holds `per_shard` sessions.
    assert!(
        fullest <= per_shard,
        "{name}: {fullest} sessions were created in one shard during the outage, but the \
         backlog limit is {per_shard} per shard (max_backlog {max_backlog})"
    );
    // The gauge counts claimed sessions and dirty ones; a session changed while its batch
    // is claimed is both, at most a batch of them.
    let ceiling = (per_shard * SHARDS + existing.len() as u64 + batch) as f64;
    assert!(
        largest <= ceiling,
        "{name}: the backlog gauge reached {largest}, past {ceiling}"
    );
}

/// A gateway writing behind to `postgrest` with a small backlog limit, and sessions that
/// existed (and were flushed) before the fault.
async fn write_behind_gateway(
    redis: &RedisServer,
    postgrest: &Postgrest,
    (max_backlog, batch): (u64, u64),
) -> (GatewayProcess, Client, Vec<String>) {
    let settings = format!(
        "{LOAD_SETTINGS}\n[flush]\ninterval_ms = 100\nlease_ms = 2000\nrequest_timeout_ms = 2000\n\
         max_backlog = {max_backlog}\nbatch_size = {batch}\n"
    );
    let gw = GatewayProcess::start(&redis.url(0), &settings, &write_behind_env(postgrest));
    let check = redis_client(&redis.url(0)).await;
    let http = client();
    let mut existing = Vec::new();
    for _ in 0..40 {
        existing.push(gw.new_session(&http).await);
    }
    rows_converge(&check, postgrest, &existing, Duration::from_secs(30)).await;
    (gw, check, existing)
}

/// 640 dirty sessions at most (10 per shard), 100 rows per upsert.
const SMALL_BACKLOG: (u64, u64) = (640, 100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_writes_keeps_serving_bounds_the_backlog_and_loses_no_row() {
    let _serial = SERIAL.lock().await;
    let mut postgres = Postgres::start();
    let postgrest = Postgrest::start(&postgres);
    let redis = RedisServer::start();
    let (gw, check, existing) = write_behind_gateway(&redis, &postgrest, SMALL_BACKLOG).await;
    let fault = Fault::PostgresStopped(&mut postgres);
    outage_under_writes(fault, &gw, &check, &postgrest, &existing, SMALL_BACKLOG).await;
    assert!(gw.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_hung_under_writes_keeps_serving_bounds_the_backlog_and_loses_no_row() {
    let _serial = SERIAL.lock().await;
    let postgrest = Postgrest::start(crate::services::shared_postgres());
    let redis = RedisServer::start();
    let (gw, check, existing) = write_behind_gateway(&redis, &postgrest, SMALL_BACKLOG).await;
    let fault = Fault::PostgrestHung(&postgrest);
    outage_under_writes(fault, &gw, &check, &postgrest, &existing, SMALL_BACKLOG).await;
    assert!(gw.alive());
}

// ---------------------------------------------------------------------------------------
// 4. Slow and vanishing clients
// ---------------------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends one request on `stream` and reads the whole response; returns its status.
async fn exchange(stream: &mut TcpStream, request: &str) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    stream.write_all(request.as_bytes()).await?;
    let mut received = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&received, b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = std::str::from_utf8(&received[..head_end]).map_err(|_| bad("head"))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while received.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

/// Reads until the gateway closes the connection; returns how long that took from
/// `since`, bounded by `limit`.
async fn until_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout_at((since + limit).into(), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
        if matches!(read, Ok(0) | Err(_)) {
            return since.elapsed();
        }
    }
}

/// Slowloris: trickles a request head one byte every `every` until the gateway closes
/// the connection; returns how long after connecting that was.
async fn trickle_until_cut(addr: SocketAddr, every: Duration, limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let head = b"GET /api/session/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut chunk = [0u8; 1024];
    for sent in 0.. {
        assert!(
            started.elapsed() < limit,
            "a slowloris client was still connected after {limit:?}"
        );
        tokio::select! {
            read = stream.read(&mut chunk) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return started.elapsed();
                }
            }
            () = tokio::time::sleep(every) => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
    unreachable!()
}

fn info_request(id: &str) -> String {
    format!("GET /api/session/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\r\n")
}

/// Raises this process's soft limit on open files to `need` if it is lower (the gateway,
/// started afterwards, inherits it).
fn ensure_open_files(need: u64) {
    let limits = |pid: &str| -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("open files limit");
        let mut values = line
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse().unwrap_or(u64::MAX));
        (values.next().unwrap_or(0), values.next().unwrap_or(0))
    };
    let (soft, hard) = limits("self");
    if soft >= need {
        return;
    }
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={}:{}", need, hard.max(need)),
        ])
        .status();
    let (raised, _) = limits("self");
    assert!(
        raised >= need,
        "this test needs {need} open files (soft limit {soft}, hard {hard}): raise `ulimit -n`"
    );
}

/// A private Redis and a gateway that cuts header and body reads after `timeout`.
fn gateway_with_read_timeouts(timeout: Duration) -> (RedisServer, GatewayProcess) {
    let redis = RedisServer::start();
    let gw = GatewayProcess::start(
        &redis.url(0),
        &format!(
            "[http]\nheader_read_timeout_ms = {0}\nbody_read_timeout_ms = {0}\n{LOAD_SETTINGS}",
            timeout.as_millis()
        ),
        &[],
    );
    (redis, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_cut_after_the_header_read_timeout() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_millis(2000);
    let margin = Duration::from_millis(1500);
    let (_redis, gw) = gateway_with_read_timeouts(header_timeout);
    let id = gw.new_session(&one_shot()).await;
    let baseline = gw.settled_fds().await;
    let limit = header_timeout * 5;

    let slowloris: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(trickle_until_cut(
                gw.public,
                Duration::from_millis(100),
                limit,
            ))
        })
        .collect();
    let idle: Vec<_> = (0..5)
        .map(|_| {
            let (addr, request) = (gw.public, info_request(&id));
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                assert_eq!(exchange(&mut stream, &request).await.expect("answer"), 200);
                until_closed(&mut stream, Instant::now(), limit).await
            })
        })
        .collect();
    let silent: Vec<_> = (0..5)
        .map(|_| {
            let addr = gw.public;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                until_closed(&mut stream, Instant::now(), limit).await
            })
        })
        .collect();
    // Everyone else is served meanwhile.
    let http = one_shot();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .expect("info");
        assert_eq!(response.status().as_u16(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let mut cut = BTreeMap::new();
    for (what, tasks) in [("slowloris", slowloris), ("idle", idle), ("silent", silent)] {
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.expect("client"));
        }
        times.sort();
        cut.insert(what, times);
    }
    let released = gw.settled_fds().await;
    eprintln!(
        "slow clients (header_read_timeout {header_timeout:?}): cut after {:?} .. {:?} \
         (slowloris, one byte per 100 ms), {:?} .. {:?} (idle after a request), {:?} .. {:?} \
         (silent); other clients served meanwhile, slowest {slowest:?}; gateway fds \
         {baseline} before, {released} after",
        cut["slowloris"][0],
        cut["slowloris"][19],
        cut["idle"][0],
        cut["idle"][4],
        cut["silent"][0],
        cut["silent"][4],
    );
    for (what, times) in &cut {
        for time in times {
            assert!(
                *time >= header_timeout.mul_f64(0.95) && *time <= header_timeout + margin,
                "a {what} client was cut after {time:?}, header_read_timeout is {header_timeout:?}"
            );
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest answer {slowest:?}"
    );
    assert!(
        released <= baseline,
        "fds {released} after, {baseline} before"
    );
    assert!(gw.alive());
}

/// Opens `count` connections, each answered once (200) and kept open.
async fn open(addr: SocketAddr, request: &str, count: usize) -> Vec<TcpStream> {
    futures_util::stream::iter(0..count)
        .map(|_| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let status = exchange(&mut stream, request).await.expect("answer");
            assert_eq!(status, 200);
            stream
        })
        .buffer_unordered(128)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keep_alive_connections_stay_bounded_and_are_released() {
    let _serial = SERIAL.lock().await;
    const CONNECTIONS: usize = 10_000;
    ensure_open_files(CONNECTIONS as u64 + 2_000);
    let redis = RedisServer::start();
    // Long enough that no connection is cut while the others open.
    let gw = GatewayProcess::start(
        &redis.url(0),
        &format!(
            "[http]\nheader_read_timeout_ms = 120000\n[redis]\ntimeout_ms = 2000\n{LOAD_SETTINGS}"
        ),
        &[],
    );
    let http = one_shot();
    let id = gw.new_session(&http).await;
    for _ in 0..100 {
        let response = http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .expect("warm-up");
        assert_eq!(response.status().as_u16(), 200);
    }
    let (fds_before, rss_before) = (gw.settled_fds().await, gw.rss_kib());

    let started = Instant::now();
    let request = info_request(&id);
    let held = open(gw.public, &request, CONNECTIONS).await;
    let opened = started.elapsed();
    let fds_held = gw.settled_fds().await;
    let rss_held = gw.rss_kib();
    let open_gauge = gw
        .metric("sessiongate_http_connections_open", "listener=\"public\"")
        .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = http
            .post(gw.url("/api/session/"))
            .send()
            .await
            .expect("a new client is served");
        assert_eq!(response.status().as_u16(), 200);
        slowest = slowest.max(started.elapsed());
    }

    let closed_at = Instant::now();
    drop(held);
    let released = gw
        .fds_back_to(
            fds_before,
            Duration::from_secs(30),
            "the gateway to release the connections' fds",
        )
        .await;
    let release = closed_at.elapsed();
    let open_after = gw
        .metric("sessiongate_http_connections_open", "listener=\"public\"")
        .await;
    let rss_released = gw.rss_kib();
    // The allocator keeps what it freed; a second wave must reuse it, not add as much again.
    let held = open(gw.public, &request, CONNECTIONS).await;
    let rss_again = gw.rss_kib();
    let fds_again = gw.fds();
    drop(held);
    gw.fds_back_to(
        fds_before,
        Duration::from_secs(30),
        "the gateway to release the second wave's fds",
    )
    .await;
    let per_connection = (rss_held.saturating_sub(rss_before)) * 1024 / CONNECTIONS as u64;
    eprintln!(
        "{CONNECTIONS} keep-alive connections opened (one request each) in {opened:?}; gateway \
         fds {fds_before} -> {fds_held} held -> {released} {release:?} after they closed; RSS \
         {} MiB -> {} MiB held ({per_connection} bytes per connection); connections gauge \
         {open_gauge} held, {open_after} after; new clients served meanwhile, slowest \
         {slowest:?}; RSS after closing {} MiB; a second wave of {CONNECTIONS}: RSS {} MiB, \
         fds {fds_again}",
        rss_before / 1024,
        rss_held / 1024,
        rss_released / 1024,
        rss_again / 1024,
    );
    // glibc's arenas keep what they freed and grow less with every wave (measured: +145,
    // +46, +13, +10, +2 MiB over five waves); a leak would add as much as the first wave.
    assert!(
        rss_again.saturating_sub(rss_held) <= rss_held.saturating_sub(rss_before) * 6 / 10,
        "a second wave took RSS from {rss_held} KiB to {rss_again} KiB (from {rss_before} KiB)"
    );
    assert!(
        fds_held >= fds_before + CONNECTIONS,
        "every connection held at once"
    );
    assert_eq!(open_gauge, CONNECTIONS as f64);
    assert!(
        slowest < Duration::from_secs(2),
        "slowest answer {slowest:?}"
    );
    assert!(
        per_connection <= 48 * 1024,
        "{per_connection} bytes of RSS per idle connection"
    );
    assert_eq!(open_after, 0.0);
    assert!(gw.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_clients_leave_no_fd_and_no_request_in_flight() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    // Far past the test's deadlines: what is released here is released by the vanishing.
    let gw = GatewayProcess::start(
        &redis.url(0),
        &format!("[http]\nheader_read_timeout_ms = 120000\n{LOAD_SETTINGS}"),
        &[("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string())],
    );
    let id = gw.new_session(&one_shot()).await;
    let baseline = gw.settled_fds().await;
    assert_eq!(
        gw.metric("sessiongate_http_requests_in_flight", "").await,
        0.0
    );

    // Headers announcing 1000 bytes, 10 of them, then nothing: the handlers wait for the rest.
    const PARTIAL: usize = 100;
    let partial = format!(
        "PUT /api/session/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"theme\":\""
    );
    let mut waiting = Vec::new();
    for _ in 0..PARTIAL {
        let mut stream = TcpStream::connect(gw.public).await.expect("connect");
        stream.write_all(partial.as_bytes()).await.expect("send");
        waiting.push(stream);
    }
    let in_flight = eventually(
        Duration::from_secs(10),
        "the partial requests to be in flight",
        || async {
            let n = gw.metric("sessiongate_http_requests_in_flight", "").await;
            (n >= PARTIAL as f64).then_some(n)
        },
    )
    .await;
    // Half close (FIN), half reset (RST).
    for (n, stream) in waiting.into_iter().enumerate() {
        if n % 2 == 0 {
            stream.set_zero_linger().expect("SO_LINGER");
        }
        drop(stream);
    }

    // Requests sent whole, then the client leaves without reading the answer.
    let consume = format!(
        "POST /internal/v1/sessions/{id}/quota/concept_generation/consume HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    let others = futures_util::stream::iter(0..300)
        .map(|n| {
            let consume = consume.as_str();
            async move {
                let stream = TcpStream::connect(gw.public).await.expect("connect");
                let mut stream = stream;
                match n % 3 {
                    // The whole request, then close (FIN) or reset (RST) at once.
                    0 | 1 => {
                        let _ = stream.write_all(consume.as_bytes()).await;
                        if n % 3 == 1 {
                            stream.set_zero_linger().expect("SO_LINGER");
                        }
                    }
                    // Half a request line.
                    _ => {
                        let _ = stream.write_all(b"GET /api/sess").await;
                    }
                }
                drop(stream);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    others.await;
    for _ in 0..50 {
        // Connected, then gone without a byte.
        drop(TcpStream::connect(gw.public).await.expect("connect"));
    }

    let vanished_at = Instant::now();
    let (fds, in_flight_after, open) = eventually(
        Duration::from_secs(10),
        "every connection and request of the vanished clients to be released",
        || async {
            let in_flight = gw.metric("sessiongate_http_requests_in_flight", "").await;
            let open = gw
                .metric("sessiongate_http_connections_open", "listener=\"public\"")
                .await;
            let fds = gw.fds();
            (in_flight == 0.0 && open == 0.0 && fds <= baseline).then_some((fds, in_flight, open))
        },
    )
    .await;
    let released = vanished_at.elapsed();
    let response = one_shot()
        .get(gw.url("/api/session/info"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("info");
    eprintln!(
        "vanishing clients: {PARTIAL} requests in flight waiting for their bodies \
         ({in_flight} on the gauge), then closed or reset; 300 more gone mid-request or \
         before their answer, 50 without a byte; {released:?} later: in flight \
         {in_flight_after}, open connections {open}, fds {fds} (baseline {baseline})"
    );
    assert_eq!(response.status().as_u16(), 200);
    assert!(gw.alive());
}

/// A client that sends its headers and part of its body, then nothing (and keeps the
/// connection open), would hold a connection and a request in flight: the header-read
/// timeout no longer applies once the headers are in. The body-read timeout answers 408 and
/// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_body_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_millis(2000);
    let (_redis, gw) = gateway_with_read_timeouts(header_timeout);
    let id = gw.new_session(&one_shot()).await;
    let mut stream = TcpStream::connect(gw.public).await.expect("connect");
    let started = Instant::now();
    let partial = format!(
        "PUT /api/session/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"theme\":\""
    );
    stream.write_all(partial.as_bytes()).await.expect("send");
    eventually(
        Duration::from_secs(10),
        "the request to be in flight",
        || async {
            (gw.metric("sessiongate_http_requests_in_flight", "").await == 1.0).then_some(())
        },
    )
    .await;
    // As long as a slowloris client gets for its headers, and as much again for the body.
    let limit = header_timeout * 3;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    let cut = tokio::time::timeout_at((started + limit).into(), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let in_flight = gw.metric("sessiongate_http_requests_in_flight", "").await;
    let open = gw
        .metric("sessiongate_http_connections_open", "listener=\"public\"")
        .await;
    eprintln!(
        "stalled body (header_read_timeout {header_timeout:?}): {} after {:?}, answer {:?}; \
         requests in flight {in_flight}, open connections {open}",
        if cut.is_ok() { "cut" } else { "still open" },
        started.elapsed(),
        String::from_utf8_lossy(&answer),
    );
    assert!(
        cut.is_ok(),
        "a request whose body stalled was still open ({open} connections, {in_flight} in \
         flight) {limit:?} after it began (header_read_timeout {header_timeout:?})"
    );
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    eventually(
        Duration::from_secs(5),
        "the stalled request to end",
        || async {
            (gw.metric("sessiongate_http_requests_in_flight", "").await == 0.0).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 5. Soak
// ---------------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
        .unwrap_or(default)
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_micros(u64::from(sorted[at]))
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_at_a_fixed_rate_keeps_memory_and_latency_flat() {
    let _serial = SERIAL.lock().await;
    let seconds = env_u64("SOAK_SECONDS", 60);
    let rate = env_u64("SOAK_RATE", 500);
    assert!(
        seconds >= 15 && rate > 0,
        "SOAK_SECONDS >= 15, SOAK_RATE > 0"
    );
    let slot = Duration::from_secs((seconds / 20).max(5));
    let slots = seconds.div_ceil(slot.as_secs()) as usize;
    let redis = RedisServer::start();
    let gw = GatewayProcess::start(
        &redis.url(0),
        &format!("[redis]\ntimeout_ms = 2000\n{LOAD_SETTINGS}"),
        &[("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string())],
    );
    let mut seeded = Vec::new();
    for _ in 0..100 {
        seeded.push(gw.new_session(&one_shot()).await);
    }
    let fds_before = gw.settled_fds().await;
    let http = client();
    let pool = Arc::new(Mutex::new(seeded));
    let latencies = Arc::new(Mutex::new(vec![Vec::<u32>::new(); slots]));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut sent = vec![0u64; slots];
    let mut memory = vec![(0u64, 0usize); slots];

    let total = Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut last_slot = usize::MAX;
    for n in 0u64.. {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= total {
            break;
        }
        let at = ((elapsed.as_nanos() / slot.as_nanos()) as usize).min(slots - 1);
        if at != last_slot {
            memory[at] = (gw.rss_kib(), gw.fds());
            last_slot = at;
        }
        sent[at] += 1;
        let (http, base, pool, latencies, errors) = (
            http.clone(),
            gw.url(""),
            pool.clone(),
            latencies.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let target = {
                let pool = pool.lock().expect("pool");
                pool[fastrand::usize(..pool.len())].clone()
            };
            let request = match n % 10 {
                0 => http.post(format!("{base}/api/session/")),
                1..=4 => http
                    .get(format!("{base}/api/session/info"))
                    .header("x-session-id", &target),
                _ => http
                    .post(format!(
                        "{base}/internal/v1/sessions/{target}/quota/concept_generation/consume"
                    ))
                    .bearer_auth(TOKEN),
            };
            let begun = Instant::now();
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.json::<Value>().await {
                        Ok(body) if status == 200 => Ok(body),
                        Ok(body) => Err(format!("{status} {body}")),
                        Err(error) => Err(format!("{status}: {error}")),
                    }
                }
                Err(error) => Err(error.to_string()),
            };
            let took = begun.elapsed();
            match outcome {
                Ok(body) => {
                    if n % 10 == 0 {
                        let id = body["session_id"].as_str().expect("session_id").to_string();
                        pool.lock().expect("pool").push(id);
                    }
                    latencies.lock().expect("latencies")[at].push(took.as_micros() as u32);
                }
                Err(error) => errors.lock().expect("errors").push(error),
            }
        });
        while let Some(done) = tasks.try_join_next() {
            done.expect("request task");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("request task");
    }
    let end = (gw.rss_kib(), gw.fds());
    // The load's keep-alive connections close with its client; nothing else may stay open.
    drop(http);
    let fds_after = gw
        .fds_back_to(
            fds_before,
            Duration::from_secs(10),
            "the soak's fds to be released",
        )
        .await;

    let mut rows = Vec::new();
    let mut latencies = latencies.lock().expect("latencies").clone();
    for (at, samples) in latencies.iter_mut().enumerate() {
        samples.sort_unstable();
        rows.push((
            at,
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 1.0),
        ));
    }
    eprintln!(
        "soak: {seconds} s at {rate} requests/s (10% create, 40% info, 50% consume), {} slots \
         of {slot:?}",
        slots
    );
    for (at, p50, p99, max) in &rows {
        eprintln!(
            "soak: t={:>5}s sent {:>6} ok {:>6} p50 {:>8.2?} p99 {:>8.2?} max {:>8.2?} RSS {:>6} KiB fds {}",
            *at as u64 * slot.as_secs(),
            sent[*at],
            latencies[*at].len(),
            p50,
            p99,
            max,
            memory[*at].0,
            memory[*at].1,
        );
    }
    eprintln!(
        "soak: end RSS {} KiB, fds {} with the load's connections open; fds {fds_before} \
         before the load, {fds_after} after its client closed",
        end.0, end.1
    );

    let errors = errors.lock().expect("errors").clone();
    assert!(
        errors.is_empty(),
        "{} failed requests, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let total_sent: u64 = sent.iter().sum();
    assert!(
        total_sent as f64 >= 0.95 * (rate * seconds) as f64,
        "the generator kept the rate: {total_sent} of {}",
        rate * seconds
    );
    // Thirds, the first slot (start-up) left out of the first.
    let third = (slots / 3).max(1);
    let first = 1..(1 + third).min(slots);
    let last = slots - third..slots;
    let mean = |range: std::ops::Range<usize>| {
        let values: Vec<u64> = memory[range].iter().map(|m| m.0).collect();
        values.iter().sum::<u64>() as f64 / values.len().max(1) as f64
    };
    let (early, late) = (mean(first.clone()), mean(last.clone()));
    eprintln!(
        "soak: mean RSS first third {:.1} MiB, last third {:.1} MiB",
        early / 1024.0,
        late / 1024.0
    );
    assert!(
        late <= early * 1.2 + 8.0 * 1024.0,
        "RSS grew from {early} KiB to {late} KiB"
    );
    let mut early_p99: Vec<Duration> = rows[first].iter().map(|r| r.2).collect();
    let early_p99 = median(&mut early_p99);
    let last_p99 = rows[slots - 1].2;
    let ceiling = (early_p99 * 5).max(Duration::from_millis(250));
    assert!(
        last_p99 <= ceiling,
        "p99 rose from {early_p99:?} (first third) to {last_p99:?} (last slot)"
    );
    assert!(gw.alive());
}
