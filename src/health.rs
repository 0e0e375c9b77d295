//! Health: what the operator endpoints say about the gateway's dependencies. It answers
//! whether Redis is reachable and refreshes the gauges that are read rather than counted
//! (connection state, write-behind backlog); it never decides an HTTP status.

use std::time::Duration;

use crate::service_error::ServiceError;
use crate::store::Store;
use crate::telemetry;

/// The readiness and gauge use case, over the store.
pub struct Health {
    store: Store,
    /// Report the write-behind backlog (Supabase configured).
    write_behind: bool,
}

impl Health {
    pub fn new(store: Store, write_behind: bool) -> Health {
        Health {
            store,
            write_behind,
        }
    }

    /// Whether Redis answers a `PING` within the store's timeout.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        self.store.ping().await.map_err(|error| {
            tracing::debug!(%error, "not ready");
            ServiceError::from(error)
        })
    }

    /// Sets the gauges read at scrape time: whether a Redis connection is up and, with
    /// write-behind, the backlog and the age of its oldest change.
    pub async fn refresh_gauges(&self) {
        telemetry::redis_up(self.store.is_connected());
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
