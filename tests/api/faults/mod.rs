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
//!
//! One file per fault. What they share is here: the lock, the load settings, the clients,
//! the outbox and the row-by-row comparison of Redis with PostgreSQL, and raw HTTP exchanges;
//! the write load of the gateway-kill and system-of-record tests is in `churn.rs`.

mod churn;
mod gateway_kill;
mod idle_and_vanishing_clients;
mod record_outage;
mod redis_kill;
mod reload;
mod slow_clients;
mod soak;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::services::Postgrest;
use crate::support::{session_key, TOKEN};

/// One load test at a time (the fault tests, the cluster failover under traffic and the
/// ten-thousand-update flush): they measure latencies, RSS and recovery times, or disturb
/// the tests that do.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

fn write_behind_env(postgrest: &Postgrest) -> Vec<(&'static str, String)> {
    vec![
        ("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string()),
        ("SUPABASE_REST_URL", postgrest.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", postgrest.token("service_role")),
    ]
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
        .unwrap_or(default)
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
// Raw HTTP exchanges
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

fn info_request(id: &str) -> String {
    format!("GET /api/session/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\r\n")
}
