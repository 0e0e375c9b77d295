//! Erasure ("forget me", contract addendum 2): a session gone from the system of record and
//! from Redis before the caller is told so. Knows neither HTTP nor Redis commands nor
//! PostgREST: it orders two calls, and the order is what keeps an erased session from
//! coming back.
//!
//! 1. **Supabase first** ([`Supabase::erase`]): the row is deleted and its id remembered
//!    there, so a write-behind batch claimed before the erasure and written after it
//!    writes nothing (the database skips rows of erased ids).
//! 2. **Then Redis** ([`Store::erase`]): the hash, its idempotency records, its outbox
//!    entries, and a tombstone against a read-through that fetched the row just before
//!    step 1 deleted it.
//!
//! Redis losing its data afterwards brings nothing back: read-through finds no row. When a
//! step fails the caller is told to try again (503), and repeating is safe: after a failed
//! step 1 nothing changed; after a failed step 2 the row is gone and Redis still holds the
//! session until the repeat removes it.

use uuid::Uuid;

use crate::flush::Supabase;
use crate::log_limit::Occasional;
use crate::model::session::short_id;
use crate::service_error::ServiceError;
use crate::store::Store;
use crate::telemetry;

/// Erases sessions from Redis and, when configured, from Supabase.
#[derive(Clone)]
pub struct Erasure {
    store: Store,
    supabase: Option<Supabase>,
}

impl Erasure {
    pub fn new(store: Store, supabase: Option<Supabase>) -> Erasure {
        Erasure { store, supabase }
    }

    /// Erases `id` everywhere. Done also when the session was gone already: the system of
    /// record is cleared all the same (Redis may have lost a session that Supabase keeps).
    pub async fn erase(&self, id: Uuid) -> Result<(), ServiceError> {
        let result = self.erase_everywhere(id).await;
        telemetry::session_erased(match &result {
            Ok(true) => "erased",
            Ok(false) => "absent",
            Err(_) => "unavailable",
        });
        result.map(|_| ())
    }

    async fn erase_everywhere(&self, id: Uuid) -> Result<bool, ServiceError> {
        if let Some(supabase) = &self.supabase {
            if let Err(error) = supabase.erase(&id).await {
                static FAILED: Occasional = Occasional::new();
                if let Some(held_back) = FAILED.admit() {
                    tracing::warn!(%error, session = %short_id(&id), held_back, "erasure could not reach supabase; nothing erased");
                }
                return Err(ServiceError::RecordUnavailable);
            }
        }
        let existed = self.store.erase(&id).await?;
        tracing::info!(session = %short_id(&id), existed, "session erased");
        Ok(existed)
    }
}
