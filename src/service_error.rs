//! What a use case says when it could not do its work, in terms a caller can act on. The
//! store says what Redis did ([`StoreError`]); this says what it means for the request:
//! Redis unavailable, the system of record unavailable or too busy, or a creation that must
//! wait. HTTP maps each to a status; nothing here knows HTTP.

use std::time::Duration;

use crate::store::StoreError;

/// Why a session or quota operation could not be done now. Every variant means "try again
/// later" to a client.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Redis did not answer in time, or not as expected.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A session missing from Redis would have been looked up in the system of record, but
    /// the read-through budget (see `flush::ReadThrough`) is spent.
    #[error("too many sessions are being looked up in supabase")]
    ReadThroughBusy,
    /// A session missing from Redis could not be looked up in the system of record
    /// (Supabase unreachable or failing): not "not found", which would hand the client a
    /// fresh session with fresh quotas.
    #[error("the system of record could not be asked for a session")]
    RecordUnavailable,
    /// Too many sessions created from this client's network, or by this gateway.
    #[error("too many sessions created from this network")]
    Throttled { retry_after: Duration },
}
