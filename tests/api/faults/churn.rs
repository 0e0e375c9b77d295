//! Churn workers: the write load of the gateway-kill and system-of-record tests (sessions
//! created, quota consumed, preferences rewritten), and what each client was told.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client;
use crate::support::{eventually, TOKEN};

/// What a client knows about a session it created: grants and preference writes that were
/// answered, and the ones whose answer was lost with the gateway.
#[derive(Clone, Debug, Default)]
pub(super) struct Tracked {
    pub(super) id: String,
    pub(super) granted: u64,
    pub(super) unsure_consumes: u64,
    pub(super) preferences: Option<u64>,
    pub(super) unsure_preferences: Vec<u64>,
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
pub(super) struct Churn {
    stop: Arc<AtomicBool>,
    created: Arc<AtomicU64>,
    changed: Arc<AtomicU64>,
    pub(super) refused: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<ChurnWorker>>,
}

/// What churn workers did, once stopped.
pub(super) struct Churned {
    /// Sessions the workers created (not the seeds).
    pub(super) created: Vec<Tracked>,
    /// Every session the workers touched, seeds included.
    pub(super) sessions: Vec<Tracked>,
    pub(super) changed: u64,
    pub(super) refused: u64,
    pub(super) cut_at: Vec<Instant>,
    pub(super) violations: Vec<String>,
}

impl Churn {
    /// `workers` workers; `seeds` (existing sessions) are shared out between them.
    pub(super) fn start(base: &str, workers: usize, seeds: &[String]) -> Churn {
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

    pub(super) async fn wait_for(&self, what: &str, created: u64, changed: u64) {
        eventually(Duration::from_secs(60), what, || {
            let done = self.created.load(Ordering::Relaxed) >= created
                && self.changed.load(Ordering::Relaxed) >= changed;
            async move { done.then_some(()) }
        })
        .await;
    }

    pub(super) async fn finish(self) -> Churned {
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
