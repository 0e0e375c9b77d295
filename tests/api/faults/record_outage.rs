//! The system of record failing under writes: PostgreSQL stopped, and PostgREST hung
//! (`SIGSTOP`). Proves that the gateway keeps serving from Redis, that a shard's outbox
//! refuses new sessions with 503 once full (the backlog stays bounded), and that once
//! repaired the backlog drains and no row is lost: every row equals Redis, field by field.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::churn::Churn;
use super::{
    client, env_u64, outbox, redis_client, rows_converge, write_behind_env, LOAD_SETTINGS, SERIAL,
    SHARDS,
};
use crate::process::{one_shot, GatewayProcess};
use crate::services::{Postgres, Postgrest};
use crate::support::{eventually, metric, RedisServer};

fn shard_of(id: &str) -> u64 {
    let id = uuid::Uuid::parse_str(id).expect("uuid");
    u64::from(sessiongate::store::shard_of(&id, SHARDS as u32))
}

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
