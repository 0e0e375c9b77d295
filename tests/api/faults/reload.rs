//! Configuration reload under load: the `sessiongate` binary, clients on keep-alive
//! connections, and a new configuration file with a `SIGHUP` every 100 ms. No request
//! fails, every reload is applied, a file that does not validate changes nothing, and a
//! setting that needs a restart is named and left alone.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{client, LOAD_SETTINGS, SERIAL};
use crate::process::{one_shot, GatewayProcess};
use crate::support::{eventually, RedisServer, TOKEN};

/// A configuration whose `concept_generation` limit (and CORS origin, and throttle) say
/// which of the two variants is in force.
fn variant(limit: u64) -> String {
    const GENERATION: &str = "[quotas.concept_generation]\nlimit = 1000000\n";
    assert!(LOAD_SETTINGS.contains(GENERATION), "LOAD_SETTINGS changed");
    let ours = format!("[quotas.concept_generation]\nlimit = {limit}\n");
    let settings = LOAD_SETTINGS.replace(GENERATION, &ours);
    format!(
        "{settings}\n[cors]\nallowed_origins = [\"https://v{limit}.example\"]\n\
         [plans.pro.quotas.concept_generation]\nlimit = {}\n",
        limit * 2
    )
}

fn hangup(gw: &GatewayProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &gw.pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "SIGHUP delivered");
}

async fn reloads(gw: &GatewayProcess, result: &str) -> f64 {
    let scrape = gw.scrape().await;
    crate::support::metric(
        &scrape,
        "sessiongate_config_reloads_total",
        &format!("result=\"{result}\""),
    )
    .unwrap_or(0.0)
}

async fn generation_limit(gw: &GatewayProcess, http: &reqwest::Client, id: &str) -> u64 {
    let info: Value = http
        .get(gw.url("/api/session/info"))
        .header("x-session-id", id)
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("JSON");
    info["rate_limits"]["concept_generation"]["limit"]
        .as_u64()
        .expect("limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_100_ms_under_load_fails_no_request() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (a, b) = (1_000_000, 2_000_000);
    let gw = GatewayProcess::start(
        &redis.url(0),
        &variant(a),
        &[("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string())],
    );
    let file = gw.dir.join("gateway.toml");
    let http = client();
    let id = gw.new_session(&one_shot()).await;

    // Clients: info, consume and create, each on its own keep-alive connections, until told
    // to stop; every answer other than 200 is an error, and so is every failed connection.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..6 {
        let (http, stop, served, id) = (client(), stop.clone(), served.clone(), id.clone());
        let (info, consume, create) = (
            gw.url("/api/session/info"),
            gw.url(&format!(
                "/internal/v1/sessions/{id}/quota/concept_generation/consume"
            )),
            gw.url("/api/session/"),
        );
        clients.spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = match n % 3 {
                    0 => http.get(&info).header("x-session-id", &id),
                    1 => http.post(&consume).bearer_auth(TOKEN),
                    _ => http.post(&create),
                };
                match request.send().await {
                    Ok(response) if response.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => errors.push(format!("status {}", response.status())),
                    Err(error) => errors.push(format!("{error:#}")),
                }
            }
            errors
        });
    }

    // A reload every 100 ms for 3 s, alternating the two variants; each one is applied (the
    // reload counter moves) before the next.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    let mut sent = 0u32;
    let mut limit = a;
    while started.elapsed() < Duration::from_secs(3) {
        tick.tick().await;
        limit = if limit == a { b } else { a };
        std::fs::write(&file, variant(limit)).expect("write the new configuration");
        let before = reloads(&gw, "ok").await;
        hangup(&gw);
        sent += 1;
        eventually(
            Duration::from_secs(5),
            "the reload to be applied",
            || async { (reloads(&gw, "ok").await > before).then_some(()) },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    while let Some(result) = clients.join_next().await {
        errors.extend(result.expect("client task"));
    }
    let served = served.load(Ordering::Relaxed);
    println!(
        "{sent} reloads while {served} requests were served; {} errors",
        errors.len()
    );
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    assert!(served > 100, "load ran: {served} requests");
    assert_eq!(
        generation_limit(&gw, &http, &id).await,
        limit,
        "the last file is in force"
    );
    let preflight = http
        .request(reqwest::Method::OPTIONS, gw.url("/api/session/info"))
        .header("origin", format!("https://v{limit}.example"))
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        format!("https://v{limit}.example").as_str(),
        "the last CORS origins are in force"
    );

    // A file that does not validate changes nothing, and says which setting is wrong.
    let broken = format!(
        "{}\n[quotas.broken]\nlimit = 0\nwindow = \"day\"\n",
        variant(a)
    );
    std::fs::write(&file, broken).expect("write");
    let refused = reloads(&gw, "error").await;
    hangup(&gw);
    eventually(
        Duration::from_secs(5),
        "the refused reload to be counted",
        || async { (reloads(&gw, "error").await > refused).then_some(()) },
    )
    .await;
    assert_eq!(
        generation_limit(&gw, &http, &id).await,
        limit,
        "nothing changed"
    );
    let log = gw.log_tail(20);
    let line = log
        .lines()
        .find(|line| line.contains("configuration reload refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("quotas.broken.limit"), "{line}");

    // A setting that needs a restart is named, left alone, and the rest is applied.
    let other = if limit == a { b } else { a };
    let restart = format!("[redis]\ntimeout_ms = 777\n{}", variant(other));
    std::fs::write(&file, restart).expect("write");
    let before = reloads(&gw, "ok").await;
    hangup(&gw);
    eventually(
        Duration::from_secs(5),
        "the reload to be applied",
        || async { (reloads(&gw, "ok").await > before).then_some(()) },
    )
    .await;
    assert_eq!(generation_limit(&gw, &http, &id).await, other);
    let log = gw.log_tail(20);
    assert!(
        log.lines()
            .any(|line| line.contains("need a restart") && line.contains("redis.timeout_ms")),
        "{log}"
    );
    assert!(gw.alive());
}
