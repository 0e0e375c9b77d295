//! Health: what the operator endpoints say about this replica and its dependencies. Readiness
//! is this replica's own (started and not draining), so a shared Redis outage does not take
//! every replica out of the load balancer at once; Redis's state is a signal of its own, probed
//! on a schedule for `sessiongate_redis_up` and on demand for `/readyz/redis`. It refreshes the
//! gauges that are read rather than counted; it never decides an HTTP status.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service_error::ServiceError;
use crate::store::Store;
use crate::telemetry;

/// The readiness and gauge use case, over the store.
pub struct Health {
    store: Store,
    /// Report the write-behind backlog (Supabase configured).
    write_behind: bool,
    /// Turns true when shutdown begins.
    shutdown: watch::Receiver<bool>,
    /// Whether Redis answered the last probe.
    redis_answered: Arc<AtomicBool>,
}

/// How often Redis is probed for `sessiongate_redis_up`, and how long a probe may take: a
/// Redis that stops answering (stopped, swapping, a full network buffer) shows within two
/// seconds, however long `redis.timeout_ms` is.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

impl Health {
    /// `redis_answered`: whether Redis answered at start-up, until the first probe says.
    pub fn new(
        store: Store,
        write_behind: bool,
        shutdown: watch::Receiver<bool>,
        redis_answered: bool,
    ) -> Health {
        Health {
            store,
            write_behind,
            shutdown,
            redis_answered: Arc::new(AtomicBool::new(redis_answered)),
        }
    }

    /// Probes Redis every second until `stop`: a connection can be up while Redis answers
    /// nothing, so `sessiongate_redis_up` follows the answers, not the connection.
    pub fn probe_redis(&self, stop: impl Future<Output = ()>) -> impl Future<Output = ()> {
        let store = self.store.clone();
        let answered = self.redis_answered.clone();
        async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let reply = tokio::time::timeout(PROBE_DEADLINE, store.ping()).await;
                        answered.store(matches!(reply, Ok(Ok(()))), Ordering::Relaxed);
                    }
                    () = &mut stop => return,
                }
            }
        }
    }

    /// Whether this replica has begun to shut down (and should get no new traffic).
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether Redis answers a `PING` within the store's timeout.
    pub async fn redis_answers(&self) -> Result<(), ServiceError> {
        self.store.ping().await.map_err(|error| {
            tracing::debug!(%error, "redis does not answer");
            ServiceError::from(error)
        })
    }

    /// Sets the gauges read at scrape time: whether Redis answered the last probe and, with
    /// write-behind, the backlog and the age of its oldest change. (Set here rather than by
    /// the probe, so that a scrape always shows this gateway's own state.)
    pub async fn refresh_gauges(&self) {
        telemetry::redis_up(self.redis_answered.load(Ordering::Relaxed));
        if !self.write_behind {
            return;
        }
        match self.store.backlog().await {
            Ok(backlog) => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let oldest = backlog
                    .oldest_ms
                    .map_or(0, |ms| (now_ms - ms).max(0) as u64);
                telemetry::flush_backlog(backlog.dirty, Duration::from_millis(oldest));
            }
            Err(error) => tracing::debug!(%error, "cannot read the write-behind backlog"),
        }
    }
}
