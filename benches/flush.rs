//! Write-behind benchmark (not a test): flush throughput into a real PostgREST, and the lag
//! from a write in Redis to its row in PostgreSQL at 1,000 updates/s, with the coalescing
//! ratio. Run with `cargo bench --bench flush` after `scripts/install-test-services`;
//! `FLUSH_BENCH_SESSIONS` and `FLUSH_BENCH_SECONDS` shrink it (CI smoke mode).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sessiongate::flush::{FlushConfig, Flusher, Supabase, SupabaseConfig};
use sessiongate::store::Store;
use sessiongate_testkit::{services, support};
use uuid::Uuid;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let sessions = setting("FLUSH_BENCH_SESSIONS", 50_000) as usize;
    let seconds = setting("FLUSH_BENCH_SECONDS", 10);
    let redis = support::RedisServer::start();
    let postgrest = services::shared_postgrest();
    let store = support::store_on(&redis.url(0), true).await;
    let supabase = Supabase::new(&SupabaseConfig {
        rest_url: postgrest.url(),
        service_role_key: postgrest.token("service_role"),
        api_key: None,
        request_timeout: Duration::from_secs(10),
    })
    .expect("client");
    let config = FlushConfig::default();
    let mut flusher = Flusher::new(store.clone(), supabase.clone(), config.clone());

    // 1. Throughput: a backlog of new sessions, drained by one flusher with default batches.
    let ids = create_sessions(&store, sessions).await;
    let started = Instant::now();
    let mut written = 0;
    loop {
        let stats = flusher.round().await.expect("flush round");
        written += stats.written;
        if stats.claimed == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let throughput = written as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {written} rows in {:.2} s = {throughput:.0} rows/s (batches of {})",
        elapsed.as_secs_f64(),
        config.batch_size
    );

    // 2. Lag: 1,000 updates/s over 1,000 of those sessions while the flusher runs at its
    //    default pace (a round per interval, at once again when a batch filled up), and a
    //    poller watches PostgreSQL for each sampled write.
    let hot = &ids[..ids.len().min(1000)];
    let (samples, observed) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_lags(
        postgrest.url(),
        postgrest.token("service_role"),
        observed,
    ));
    let sampled = update_while_flushing(&store, &mut flusher, &config, hot, seconds, samples).await;
    let mut lags = poller.await.expect("poller");
    lags.sort();
    assert!(!lags.is_empty(), "no sample could be timed");
    let percentile = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize];
    println!(
        "lag at 1000 updates/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} samples",
        percentile(0.5).as_secs_f64() * 1000.0,
        percentile(0.99).as_secs_f64() * 1000.0,
        lags[lags.len() - 1].as_secs_f64() * 1000.0,
        lags.len()
    );
    let coalescing = sampled.updates as f64 / sampled.rows.max(1) as f64;
    println!(
        "coalescing: {} updates became {} rows ({coalescing:.2} updates per row)",
        sampled.updates, sampled.rows
    );
    println!(
        "summary: flush {throughput:.0} rows/s (target >= 10000), lag p99 {:.0} ms (target <= 1000), coalescing {coalescing:.2}x",
        percentile(0.99).as_secs_f64() * 1000.0
    );
}

async fn create_sessions(store: &Store, count: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(256) {
        let created = futures_util::future::join_all(chunk.iter().map(|id| store.create(id))).await;
        for result in created {
            assert!(result.expect("create a session").is_some(), "a fresh id");
        }
    }
    ids
}

struct Updates {
    updates: usize,
    rows: usize,
}

/// `(session, the preferences counter written, when the write returned)`.
type Sample = (Uuid, u64, Instant);

async fn update_while_flushing(
    store: &Store,
    flusher: &mut Flusher,
    config: &FlushConfig,
    ids: &[Uuid],
    seconds: u64,
    samples: tokio::sync::mpsc::UnboundedSender<Sample>,
) -> Updates {
    let writer = {
        let store = store.clone();
        let ids = ids.to_vec();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let total = seconds as usize * 1000;
            for n in 0..total {
                tick.tick().await;
                let id = ids[fastrand::usize(..ids.len())];
                let value = n as u64 + 1;
                store
                    .set_preferences(&id, &format!("{{\"n\":{value}}}"))
                    .await
                    .expect("update");
                if n % 20 == 0 {
                    let _ = samples.send((id, value, Instant::now()));
                }
            }
            total
        })
    };
    let mut rows = 0;
    while !writer.is_finished() {
        let stats = flusher.round().await.expect("flush round");
        rows += stats.written;
        if !stats.full {
            tokio::time::sleep(config.interval).await;
        }
    }
    loop {
        let stats = flusher.round().await.expect("flush round");
        rows += stats.written;
        if stats.claimed == 0 {
            break;
        }
    }
    let updates = writer.await.expect("writer");
    Updates { updates, rows }
}

/// Polls PostgreSQL (through PostgREST) every 20 ms for the sampled writes still pending:
/// a write is visible once its session's row holds its counter or a later one.
async fn poll_lags(
    url: String,
    token: String,
    mut samples: tokio::sync::mpsc::UnboundedReceiver<Sample>,
) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut pending: Vec<Sample> = Vec::new();
    let mut lags = Vec::new();
    let mut writer_done = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (!writer_done || !pending.is_empty()) && Instant::now() < deadline {
        loop {
            match samples.try_recv() {
                Ok(sample) => pending.push(sample),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    writer_done = true;
                    break;
                }
            }
        }
        let ids: Vec<String> = pending
            .iter()
            .take(150)
            .map(|(id, _, _)| id.to_string())
            .collect();
        if !ids.is_empty() {
            let rows: Vec<serde_json::Value> = http
                .get(format!("{url}/sessions"))
                .query(&[
                    ("id", format!("in.({})", ids.join(","))),
                    ("select", "id,preferences".into()),
                ])
                .bearer_auth(&token)
                .send()
                .await
                .expect("postgrest")
                .json()
                .await
                .expect("rows");
            let stored: HashMap<String, u64> = rows
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["preferences"]["n"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            let now = Instant::now();
            pending.retain(|(id, value, written)| match stored.get(&id.to_string()) {
                Some(n) if n >= value => {
                    lags.push(now - *written);
                    false
                }
                _ => true,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lags
}
