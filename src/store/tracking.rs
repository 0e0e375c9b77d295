//! Tracking connections: the Redis connections session reads are sent on when the near
//! cache is on, each with `CLIENT TRACKING` (RESP3, default mode), so that Redis remembers
//! which keys it has read and pushes an invalidation on it when one changes.
//!
//! Only plain reads go here: scripts run on the store's other connections, so the keys a
//! script touches are not tracked for nothing, and a write is announced once, to the
//! connections that read the key, not echoed back to the writer. (The writer drops its own
//! entry itself; see `Store::eval`.)
//!
//! One task per connection follows it: invalidations drop entries; a lost, silent or new
//! connection drops everything ([`NearCache::not_tracking`]) until `CLIENT TRACKING ON` has
//! been answered on the connection now in place. A connection that carries no reads (every
//! read a cache hit) would never show that it died, so the task checks it every second
//! (reading the keyspace's epoch, which also tells a flush of every key); fred closes and
//! replaces a connection whose command waits past the unresponsive limit.
//!
//! This module never caches anything itself and never decides what a key holds.

use std::time::Duration;

use fred::error::Error;
use fred::prelude::*;
use fred::types::client::Invalidation;
use fred::types::config::UnresponsiveConfig;
use fred::types::RespVersion;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::error::StoreError;
use super::keys::{session_of_key, EPOCH_KEY};
use super::near_cache::{Flush, NearCache};

/// How often an idle tracking connection is checked.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Invalidations held for a follower before it counts as behind (fred's default is 32).
/// fred sizes all nine of a client's notification channels by it, up front: at 4096 they
/// took 44 MiB of RSS over a gateway's twelve tracking connections.
const BACKLOG: usize = 256;

/// Builds `size` tracking connections from `builder` (the store's connection settings) and
/// starts their followers; the pool is not connected yet (the caller connects it, and each
/// connection starts tracking once it is up). `timeout` bounds a Redis call.
pub(super) fn tracked_pool(
    mut builder: Builder,
    size: usize,
    timeout: Duration,
    cache: &NearCache,
) -> Result<Pool, StoreError> {
    let pool = builder
        .with_config(|c| c.version = RespVersion::RESP3)
        .with_performance_config(|p| p.broadcast_channel_capacity = BACKLOG)
        .with_connection_config(|c| {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timeout.max(HEARTBEAT)),
                interval: HEARTBEAT / 2,
            }
        })
        .build_pool(size)?;
    for client in pool.clients() {
        // Subscribed before the pool connects: the first connection is announced too.
        let follower = Follower {
            invalidations: client.invalidation_rx(),
            reconnections: client.reconnect_rx(),
            errors: client.error_rx(),
            client: client.clone(),
            cache: cache.clone(),
            timeout,
        };
        cache.connection_added();
        tokio::spawn(follower.run());
    }
    Ok(pool)
}

struct Follower {
    client: Client,
    cache: NearCache,
    timeout: Duration,
    invalidations: Receiver<Invalidation>,
    reconnections: Receiver<fred::types::config::Server>,
    errors: Receiver<(Error, Option<fred::types::config::Server>)>,
}

impl Follower {
    /// Follows the connection until its client is dropped (the store closed). `epoch` is
    /// `Some` (the epoch last seen) while the connection tracks.
    async fn run(mut self) {
        let mut epoch: Option<String> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Invalidations first: a reconnection must not overtake the ones before it.
                biased;
                invalidation = self.invalidations.recv() => match invalidation {
                    Ok(invalidation) => self.invalidate(&invalidation),
                    Err(RecvError::Lagged(_)) => self.cache.flush(Flush::Lagged),
                    Err(RecvError::Closed) => break,
                },
                error = self.errors.recv() => {
                    if matches!(error, Err(RecvError::Closed)) {
                        break;
                    }
                    self.lost(&mut epoch, Flush::Lost);
                }
                reconnection = self.reconnections.recv() => {
                    if matches!(reconnection, Err(RecvError::Closed)) {
                        break;
                    }
                    self.lost(&mut epoch, Flush::Reconnected);
                    self.start(&mut epoch).await;
                }
                _ = heartbeat.tick() => match &epoch {
                    _ if !self.client.is_connected() => self.lost(&mut epoch, Flush::Lost),
                    // Tracking failed to start, or a missed heartbeat stopped it while the
                    // connection stayed: (re)start it on the connection in place.
                    None => self.start(&mut epoch).await,
                    Some(seen) => match self.epoch().await {
                        Some(now) if now == *seen => {}
                        Some(now) => {
                            self.cache.flush(Flush::Everything);
                            epoch = Some(now);
                        }
                        None => self.lost(&mut epoch, Flush::Lost),
                    },
                },
            }
        }
        // Closed: whatever this connection tracked goes unannounced from now on.
        self.lost(&mut epoch, Flush::Lost);
    }

    fn invalidate(&self, invalidation: &Invalidation) {
        // No keys: Redis dropped them all at once (FLUSHALL, FLUSHDB), were fred to pass
        // that message on (see `epoch`).
        if invalidation.keys.is_empty() {
            self.cache.flush(Flush::Everything);
            return;
        }
        for key in &invalidation.keys {
            if let Some(id) = session_of_key(key.as_bytes()) {
                self.cache.invalidate(&id);
            }
        }
    }

    fn lost(&self, epoch: &mut Option<String>, why: Flush) {
        if epoch.take().is_some() {
            self.cache.not_tracking(why);
        }
    }

    async fn start(&self, epoch: &mut Option<String>) {
        let started = tokio::time::timeout(
            self.timeout.max(HEARTBEAT),
            self.client
                .start_tracking(Vec::<String>::new(), false, false, false, false),
        )
        .await;
        match started {
            Ok(Ok(())) => {}
            // Tried again on the next heartbeat; meanwhile nothing is cached.
            Ok(Err(error)) => return tracing::warn!(%error, "cannot start client tracking"),
            Err(_) => return tracing::debug!("client tracking not confirmed in time"),
        }
        if let Some(now) = self.epoch().await {
            *epoch = Some(now);
            self.cache.tracking();
        }
    }

    /// The keyspace's epoch: a random value that lives as long as Redis's keys do, set by
    /// the first gateway to find none. Redis announces `FLUSHALL` and `FLUSHDB` with a
    /// message fred 10 drops, so a changed epoch is how a flush is noticed, within a
    /// heartbeat. `None`: no answer in time (the connection counts as lost).
    async fn epoch(&self) -> Option<String> {
        let read = async {
            let fresh = fastrand::u64(..).to_string();
            let _: Value = self
                .client
                .set(EPOCH_KEY, fresh, None, Some(SetOptions::NX), false)
                .await?;
            self.client.get::<String, _>(EPOCH_KEY).await
        };
        match tokio::time::timeout(self.timeout.max(HEARTBEAT), read).await {
            Ok(Ok(epoch)) => Some(epoch),
            _ => None,
        }
    }
}
