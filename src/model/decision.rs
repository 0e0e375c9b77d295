//! Quota decisions as data: what a request asks of a policy and what the answer was. The
//! store computes answers inside Redis; the use cases and HTTP read them. Plain data, no I/O.

use super::quota::{Policy, QuotaStatus};
use super::session::Usage;

/// What a quota decision was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaOutcome {
    Granted,
    Denied,
    Refunded,
}

/// The answer to a quota request on an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaAnswer {
    pub outcome: QuotaOutcome,
    pub status: QuotaStatus,
    /// Seconds until a denied request could succeed; 0 otherwise.
    pub retry_after: u64,
    pub usage: Usage,
    /// The answer is a repeat of an earlier one with the same idempotency key.
    pub replayed: bool,
}

/// A quota request: take (or give back) `cost` from one policy of a session.
pub struct QuotaRequest<'a> {
    pub policy: &'a Policy,
    pub cost: u64,
    pub idempotency_key: Option<&'a str>,
    /// Whether the policy's usage counter moves with the window. Gateway mode reserves
    /// without it and moves the counter only when the upstream has done the work.
    pub counts_usage: bool,
}
