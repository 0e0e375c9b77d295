//! What the store says when it could not answer.

use std::time::Duration;

/// Why the store could not answer. Every variant means "try again later" to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no connection to redis (reconnecting)")]
    Unreachable,
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    #[error("the write-behind backlog is full")]
    Backlog,
    #[error("redis holds data sharded {found} ways, but redis.shards is {configured}")]
    ShardMismatch { found: u32, configured: u32 },
    #[error("redis does not know FUNCTION LOAD: sessiongate needs redis 7.0 or later")]
    TooOld,
}
