//! Write-behind to Supabase: the only module that knows the system of record.
//!
//! Every change to a session records it in its shard's outbox, in the same Lua script as
//! the change (see `store`). The [`Flusher`], a task in every gateway, drains the outboxes:
//! it claims dirty sessions with their current state under a lease (so gateways share the
//! work without doing it twice), writes them as one upsert per batch (500 rows or every
//! second by default), and settles them only after a 2xx. Many changes to one session
//! coalesce into one row; every row carries the session's version and the database keeps
//! only newer ones, so retries, replays and out-of-order batches are harmless.
//!
//! Failures: retryable ones (network, 408/429/5xx, statement timeouts) put the batch back
//! and back off with jitter; rows the database refuses are isolated by splitting the batch
//! and parked in the dead-letter stream, never blocking the others. A flusher that dies
//! holding a claim loses nothing: its lease expires and the sessions are claimed again.
//! On shutdown the flusher drains what it can within a deadline.
//!
//! [`ReadThrough`] is the way back: a session missing from Redis but present in Supabase
//! (Redis flushed, evicted, failed over) is restored, counters included, on first use.

mod row;
mod supabase;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use uuid::Uuid;

pub use supabase::{Supabase, SupabaseConfig, SupabaseError};

use crate::log_limit::Occasional;
use crate::model::session::{short_id, Snapshot};
use crate::service_error::ServiceError;
use crate::store::{Claim, Store, StoreError};
use crate::telemetry;

/// Flusher settings (`[flush]` in the TOML file).
#[derive(Clone, Debug)]
pub struct FlushConfig {
    /// Rows per upsert.
    pub batch_size: usize,
    /// Time between rounds when the outbox is not full.
    pub interval: Duration,
    /// How long a claim is held before another flusher may take it over.
    pub lease: Duration,
    /// Dirty sessions (all shards) at which new sessions are refused.
    pub max_backlog: u64,
    /// Time the flusher gets to drain on shutdown.
    pub drain: Duration,
    /// Supabase lookups after Redis misses allowed per second (per gateway), twice that at
    /// once; past it a miss answers 503 instead of asking Supabase.
    pub read_through_per_second: NonZeroU32,
    /// How long a request waits for Supabase after a Redis miss before it answers 503.
    pub read_through_timeout: Duration,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            batch_size: 500,
            interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            max_backlog: 1_000_000,
            drain: Duration::from_secs(10),
            read_through_per_second: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
            read_through_timeout: Duration::from_secs(1),
        }
    }
}

/// What became of one row in a write attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Written,
    Retry,
    DeadLettered,
}

/// The write-behind task.
pub struct Flusher {
    store: Store,
    supabase: Supabase,
    config: FlushConfig,
    /// Consecutive rounds that ended in a retryable failure (drives the back-off).
    failures: u32,
    /// First shard of the next round, so gateways do not all start at shard 0.
    next_shard: u32,
}

impl Flusher {
    pub fn new(store: Store, supabase: Supabase, config: FlushConfig) -> Flusher {
        let next_shard = fastrand::u32(..store.shards());
        Flusher {
            store,
            supabase,
            config,
            failures: 0,
            next_shard,
        }
    }

    /// Flushes until `stop` resolves, then drains within the configured deadline.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let pause = match self.round().await {
                Ok(stats) if stats.full => Duration::ZERO,
                Ok(_) => self.config.interval,
                Err(pause) => pause,
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stop => break,
            }
        }
        self.drain().await;
    }

    /// Flushes until the outbox is empty or the drain deadline passes.
    async fn drain(&mut self) {
        let deadline = Instant::now() + self.config.drain;
        while Instant::now() < deadline {
            match self.round().await {
                Ok(stats) if stats.claimed == 0 => return,
                Ok(_) => {}
                Err(pause) => tokio::time::sleep(pause.min(deadline - Instant::now())).await,
            }
        }
        tracing::warn!("drain deadline passed with changes still in the outbox; another gateway will flush them");
    }

    /// One pass over every shard. `Err` carries the back-off before the next round.
    pub async fn round(&mut self) -> Result<RoundStats, Duration> {
        let shards = self.store.shards();
        let start = self.next_shard;
        self.next_shard = (start + 1) % shards;
        let mut stats = RoundStats::default();
        let mut claims: Vec<Claim> = Vec::new();
        let mut pending = 0;
        let mut retry = false;
        for offset in 0..shards {
            let shard = (start + offset) % shards;
            let room = self.config.batch_size - pending;
            let claim = match self
                .store
                .claim(shard, room, self.config.lease.as_millis() as u64)
                .await
            {
                Ok(claim) => claim,
                Err(error) => {
                    tracing::warn!(%error, shard, "cannot claim from the outbox");
                    retry = true;
                    break;
                }
            };
            if claim.sessions.is_empty() {
                continue;
            }
            pending += claim.sessions.len();
            stats.claimed += claim.sessions.len();
            claims.push(claim);
            if pending >= self.config.batch_size {
                stats.full = true;
                retry |= !self.write(std::mem::take(&mut claims), &mut stats).await;
                pending = 0;
                if retry {
                    break;
                }
            }
        }
        if !claims.is_empty() {
            retry |= !self.write(claims, &mut stats).await;
        }
        if retry {
            telemetry::flush_retry();
            self.failures += 1;
            return Err(backoff(self.failures));
        }
        self.failures = 0;
        Ok(stats)
    }

    /// Writes the claimed sessions and settles every claim. Returns false when a
    /// retryable failure put rows back.
    async fn write(&self, claims: Vec<Claim>, stats: &mut RoundStats) -> bool {
        let snapshots: Vec<&Snapshot> = claims.iter().flat_map(|c| &c.sessions).collect();
        let outcomes = self.write_isolating(&snapshots).await;
        let mut all_written = true;
        for claim in &claims {
            let mut written = Vec::new();
            let mut retry = Vec::new();
            for session in &claim.sessions {
                match outcomes.get(&session.id) {
                    Some(Outcome::Written) => written.push(session.id),
                    Some(Outcome::DeadLettered) => {
                        stats.dead_lettered += 1;
                        written.push(session.id);
                    }
                    Some(Outcome::Retry) | None => retry.push(session.id),
                }
            }
            stats.written += written.len();
            all_written &= retry.is_empty();
            // A failed settle is safe: the lease expires and the rows are written again.
            for (ids, done) in [(written, true), (retry, false)] {
                if let Err(error) = self.store.settle(claim, &ids, done).await {
                    tracing::warn!(%error, "cannot settle flushed sessions; they will be written again");
                }
            }
        }
        all_written
    }

    /// Upserts the rows; when the database refuses a batch, splits it until the refused
    /// rows stand alone and parks them in the dead-letter stream.
    async fn write_isolating(&self, snapshots: &[&Snapshot]) -> HashMap<Uuid, Outcome> {
        let mut outcomes = HashMap::with_capacity(snapshots.len());
        let mut parts = vec![snapshots];
        while let Some(part) = parts.pop() {
            let started = Instant::now();
            let result = self.supabase.upsert(row::to_json(part)).await;
            let label = match &result {
                Ok(()) => "ok",
                Err(SupabaseError::Retryable(_)) => "retry",
                Err(SupabaseError::Rejected { .. }) => "rejected",
            };
            telemetry::flush_batch(label, part.len(), started.elapsed());
            let outcome = match result {
                Ok(()) => {
                    telemetry::flush_rows(part.len());
                    Outcome::Written
                }
                Err(SupabaseError::Retryable(reason)) => {
                    tracing::warn!(%reason, rows = part.len(), "write-behind failed; will retry");
                    Outcome::Retry
                }
                Err(SupabaseError::Rejected { status, body }) if part.len() == 1 => {
                    self.dead_letter(part[0], status, &body).await
                }
                Err(SupabaseError::Rejected { .. }) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    parts.extend([left, right]);
                    continue;
                }
            };
            outcomes.extend(part.iter().map(|s| (s.id, outcome)));
        }
        outcomes
    }

    /// Parks a refused row with the database's answer. The log line names only the status:
    /// the answer may quote the row, session id included, which belongs in Redis, not logs.
    async fn dead_letter(&self, snapshot: &Snapshot, status: u16, body: &str) -> Outcome {
        let row = String::from_utf8_lossy(&row::to_json(&[snapshot])).into_owned();
        tracing::error!(session = %short_id(&snapshot.id), status, "row refused by supabase; dead-lettered");
        let reason = format!("{status}: {body}");
        match self.store.dead_letter(&snapshot.id, &row, &reason).await {
            Ok(()) => {
                telemetry::flush_dead_letter();
                Outcome::DeadLettered
            }
            Err(error) => {
                tracing::warn!(%error, "cannot dead-letter a refused row; will retry");
                Outcome::Retry
            }
        }
    }
}

/// What a flush round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Sessions claimed from the outboxes.
    pub claimed: usize,
    /// Rows written or settled as dead letters.
    pub written: usize,
    pub dead_lettered: usize,
    /// A batch filled up: more is probably waiting.
    pub full: bool,
}

/// Exponential back-off from 100 ms to 30 s with full jitter, so gateways that failed
/// together do not retry together.
fn backoff(failures: u32) -> Duration {
    let ceiling = 100u64.saturating_mul(1 << failures.min(9)).min(30_000);
    Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling))
}

/// Loads sessions missing from Redis back from Supabase.
///
/// Every miss costs a Supabase request, and ids are cheap to invent: a budget bounds the
/// lookups, so a prober (or a stampede after Redis lost its data) can't turn requests into
/// Supabase load without limit. Past the budget a miss is answered 503 with `Retry-After`,
/// not 404, so a real session is retried rather than given up.
#[derive(Clone)]
pub struct ReadThrough {
    store: Store,
    supabase: Supabase,
    session_ttl: Duration,
    /// A request waits this long for Supabase, not the write-behind's request timeout: a
    /// client is held by it.
    timeout: Duration,
    budget: Arc<DefaultDirectRateLimiter>,
}

impl ReadThrough {
    pub fn new(
        store: Store,
        supabase: Supabase,
        session_ttl: Duration,
        config: &FlushConfig,
    ) -> ReadThrough {
        let per_second = config.read_through_per_second;
        let burst = NonZeroU32::new(per_second.get().saturating_mul(2)).unwrap_or(per_second);
        ReadThrough {
            store,
            supabase,
            session_ttl,
            timeout: config.read_through_timeout,
            budget: Arc::new(RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        }
    }

    /// Restores `id` from Supabase if it is stored there and has not expired. Returns
    /// whether the session exists in Redis afterwards. Supabase being unreachable is an
    /// error (503 to the client, who retries), never "not found".
    pub async fn recover(&self, id: &Uuid) -> Result<bool, ServiceError> {
        if self.budget.check().is_err() {
            telemetry::read_through("throttled");
            return Err(ServiceError::ReadThroughBusy);
        }
        let row = match tokio::time::timeout(self.timeout, self.supabase.fetch(id)).await {
            Ok(Ok(Some(row))) => row,
            Ok(Ok(None)) => {
                telemetry::read_through("missing");
                return Ok(false);
            }
            Err(_) => {
                telemetry::read_through("timeout");
                static TIMED_OUT: Occasional = Occasional::new();
                if let Some(held_back) = TIMED_OUT.admit() {
                    let timeout_ms = self.timeout.as_millis() as u64;
                    tracing::warn!(session = %short_id(id), timeout_ms, held_back, "read-through timed out");
                }
                return Err(ServiceError::RecordUnavailable);
            }
            Ok(Err(error)) => {
                // Not "not found": the client would be handed a fresh session, with fresh
                // quotas, because the system of record was briefly unreachable.
                telemetry::read_through("error");
                static FAILED: Occasional = Occasional::new();
                if let Some(held_back) = FAILED.admit() {
                    tracing::warn!(%error, session = %short_id(id), held_back, "read-through failed");
                }
                return Err(ServiceError::RecordUnavailable);
            }
        };
        let Some(snapshot) = row::from_json(row).filter(|s| s.id == *id) else {
            telemetry::read_through("error");
            tracing::warn!(session = %short_id(id), "unreadable row in supabase; not restored");
            return Ok(false);
        };
        let age = chrono::Utc::now().timestamp() - snapshot.record.last_active;
        let ttl = self.session_ttl.as_secs() as i64 - age.max(0);
        if ttl <= 0 {
            telemetry::read_through("missing");
            return Ok(false);
        }
        // Not restored: there meanwhile (the caller finds it), or erased a moment ago (the
        // caller finds nothing).
        if self.store.restore(&snapshot, ttl as u64).await? {
            telemetry::read_through("restored");
            tracing::info!(session = %short_id(id), version = snapshot.version, "session restored from supabase");
        }
        Ok(true)
    }

    /// Makes a session's current state durable now (write-through on demand). Returns the
    /// version written, or `None` for an unknown session.
    pub async fn persist(&self, id: &Uuid) -> Result<Option<i64>, PersistError> {
        let Some(snapshot) = self.store.snapshot(id).await? else {
            return Ok(None);
        };
        self.supabase.upsert(row::to_json(&[&snapshot])).await?;
        Ok(Some(snapshot.version))
    }
}

/// Why a write-through failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Supabase(#[from] SupabaseError),
}
