//! Soak: a fixed request rate (`SOAK_RATE`, default 500/s) for `SOAK_SECONDS` (default 60)
//! against one gateway. Proves that no request fails, and that RSS, file descriptors and
//! p99 latency stay flat from the first third of the run to the last.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{client, env_u64, LOAD_SETTINGS, SERIAL};
use crate::process::{one_shot, GatewayProcess};
use crate::support::{RedisServer, TOKEN};

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
