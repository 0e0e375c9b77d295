//! The k6 scenarios (`load-tests/k6/`), runnable on this machine: a small load driver on
//! hyper's client that replays each scenario against a gateway for a bounded time and
//! prints per-step percentiles and wrong answers. `load-tests/scenarios` starts Redis and a
//! gateway on free loopback ports and runs all four; see the README for why a driver of our
//! own rather than goose or wrk (per-step percentiles, answer checks, a 30 s build).
//!
//! Usage: `scenarios <base url> <service token> <seconds> <connections>`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Latencies (µs) and wrong answers per step.
#[derive(Default)]
struct Steps {
    latencies: BTreeMap<&'static str, Vec<u32>>,
    wrong: BTreeMap<&'static str, u64>,
}

struct Driver {
    http: Http,
    base: String,
    token: String,
    steps: Mutex<Steps>,
}

struct Answer {
    status: u16,
    body: Value,
    cookie: Option<String>,
    headers: http::HeaderMap,
}

impl Driver {
    async fn call(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> Option<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let started = Instant::now();
        let response = self.http.request(request.body(body).ok()?).await;
        let answer = match response {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await.ok()?.to_bytes();
                Some(Answer {
                    status: parts.status.as_u16(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    cookie: parts
                        .headers
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next())
                        .map(str::to_string),
                    headers: parts.headers,
                })
            }
            Err(_) => None,
        };
        let elapsed = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut steps) = self.steps.lock() {
            steps.latencies.entry(step).or_default().push(elapsed);
        }
        answer
    }

    fn wrong(&self, step: &'static str, ok: bool) {
        if !ok {
            if let Ok(mut steps) = self.steps.lock() {
                *steps.wrong.entry(step).or_default() += 1;
            }
        }
    }

    async fn create(&self) -> Option<String> {
        let answer = self
            .call("create", "POST", "/api/session/", &[], None)
            .await;
        let id = answer
            .as_ref()
            .and_then(|a| a.body["session_id"].as_str().map(str::to_string));
        self.wrong(
            "create",
            answer.is_some_and(|a| a.status == 200 && a.cookie.is_some()) && id.is_some(),
        );
        id
    }

    /// Browser churn: create, sync from a second browser, read with the cookie sync set.
    async fn churn(&self) {
        let Some(id) = self.create().await else {
            return;
        };
        let sync = self
            .call(
                "sync",
                "POST",
                "/api/session/sync",
                &[],
                Some(json!({"client_session_id": id})),
            )
            .await;
        let cookie = sync.as_ref().and_then(|a| a.cookie.clone());
        self.wrong(
            "sync",
            sync.is_some_and(|a| {
                a.status == 200
                    && a.body["is_synced"] == true
                    && a.body["session_id"] == id.as_str()
            }),
        );
        let Some(cookie) = cookie else { return };
        let info = self
            .call(
                "info",
                "GET",
                "/api/session/info",
                &[("cookie", cookie)],
                None,
            )
            .await;
        self.wrong(
            "info",
            info.is_some_and(|a| a.status == 200 && a.body["session_id"] == id.as_str()),
        );
    }

    async fn read(&self, id: &str) {
        let info = self
            .call(
                "info",
                "GET",
                "/api/session/info",
                &[("x-session-id", id.to_string())],
                None,
            )
            .await;
        self.wrong("info", info.is_some_and(|a| a.status == 200));
    }

    /// Quota burst: consume until refused; exactly the limit is granted and the refusal
    /// carries the contract's fields and headers.
    async fn burst(&self) {
        let Some(id) = self.create().await else {
            return;
        };
        let path = format!("/internal/v1/sessions/{id}/quota/concept_generation/consume");
        let auth = [("authorization", format!("Bearer {}", self.token))];
        let mut granted = 0;
        let mut limit = None;
        loop {
            let Some(answer) = self.call("consume", "POST", &path, &auth, None).await else {
                return self.wrong("consume", false);
            };
            match answer.status {
                200 => {
                    granted += 1;
                    limit = answer.body["limit"].as_u64();
                }
                429 => {
                    let headers_ok = ["retry-after", "ratelimit", "ratelimit-policy"]
                        .iter()
                        .all(|h| answer.headers.contains_key(*h));
                    let body_ok = answer.body["error_code"] == "rate_limit_exceeded"
                        && answer.body["remaining"] == 0;
                    self.wrong(
                        "consume-429",
                        headers_ok && body_ok && Some(granted) == limit,
                    );
                    return;
                }
                _ => return self.wrong("consume", false),
            }
        }
    }

    /// Mixed traffic: mostly reads, some creates, consumes and preferences.
    async fn mixed(&self, ids: &[String], n: usize) {
        let id = &ids[n % ids.len()];
        match n % 20 {
            0..=13 => self.read(id).await,
            14..=16 => {
                self.create().await;
            }
            17 | 18 => {
                let path = format!("/internal/v1/sessions/{id}/quota/concept_storage/consume");
                let answer = self
                    .call(
                        "consume",
                        "POST",
                        &path,
                        &[("authorization", format!("Bearer {}", self.token))],
                        None,
                    )
                    .await;
                self.wrong(
                    "consume",
                    answer.is_some_and(|a| a.status == 200 || a.status == 429),
                );
            }
            _ => {
                let answer = self
                    .call(
                        "preferences",
                        "PUT",
                        "/api/session/preferences",
                        &[("x-session-id", id.clone())],
                        Some(json!({"n": n})),
                    )
                    .await;
                self.wrong("preferences", answer.is_some_and(|a| a.status == 200));
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, token, seconds, connections] = args.as_slice() else {
        return Err("usage: scenarios <base url> <service token> <seconds> <connections>".into());
    };
    let duration = Duration::from_secs(seconds.parse()?);
    let connections: usize = connections.parse()?;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut failed = false;
    for scenario in ["churn", "read-heavy", "quota-burst", "mixed"] {
        let driver = Arc::new(Driver {
            http: http.clone(),
            base: base.clone(),
            token: token.clone(),
            steps: Mutex::new(Steps::default()),
        });
        let mut ids = Vec::new();
        if matches!(scenario, "read-heavy" | "mixed") {
            for _ in 0..200 {
                ids.extend(driver.create().await);
            }
            driver
                .steps
                .lock()
                .map_err(|_| "poisoned")?
                .latencies
                .clear();
        }
        let ids = Arc::new(ids);
        let started = Instant::now();
        let workers: Vec<_> = (0..connections)
            .map(|worker| {
                let driver = driver.clone();
                let ids = ids.clone();
                tokio::spawn(async move {
                    let mut n = worker;
                    while started.elapsed() < duration {
                        match scenario {
                            "churn" => driver.churn().await,
                            "read-heavy" => driver.read(&ids[n % ids.len()]).await,
                            "quota-burst" => driver.burst().await,
                            _ => driver.mixed(&ids, n).await,
                        }
                        n += connections;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut steps = driver.steps.lock().map_err(|_| "poisoned")?;
        println!("scenario {scenario} ({connections} connections, {elapsed:.1} s)");
        let wrong = std::mem::take(&mut steps.wrong);
        for (step, latencies) in steps.latencies.iter_mut() {
            latencies.sort_unstable();
            let bad = wrong.get(step).copied().unwrap_or(0)
                + wrong.get(&*format!("{step}-429")).copied().unwrap_or(0);
            println!(
                "  {step:<12} {:>7} req {:>8.0}/s  p50 {:>6.2} ms  p95 {:>6.2} ms  p99 {:>6.2} ms  wrong {bad}",
                latencies.len(),
                latencies.len() as f64 / elapsed,
                percentile(latencies, 0.50),
                percentile(latencies, 0.95),
                percentile(latencies, 0.99),
            );
            failed |= bad > 0;
        }
        failed |= wrong.values().any(|n| *n > 0);
    }
    if failed {
        return Err("wrong answers (see above)".into());
    }
    Ok(())
}
