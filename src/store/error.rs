//! What the store says when it could not answer.

use std::time::Duration;

/// Why the store could not answer. Every variant means "try again later" to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    #[error("the write-behind backlog is full")]
    Backlog,
    /// Not Redis's doing: the read-through budget (see `flush::ReadThrough`) is spent. It
    /// travels as a store error because it ends a session lookup the same way: 503.
    #[error("too many sessions are being looked up in supabase")]
    ReadThroughBusy,
    /// Not Redis's doing either: a session missing from Redis could not be looked up in
    /// the system of record (Supabase unreachable or failing). Also 503, for the same reason.
    #[error("the system of record could not be asked for a session")]
    RecordUnavailable,
    #[error("redis holds data sharded {found} ways, but redis.shards is {configured}")]
    ShardMismatch { found: u32, configured: u32 },
}
