//! Quota decisions as data: what a request asks of a policy and what the answer was. The
//! store computes answers inside Redis; the use cases and HTTP read them. Plain data, no I/O.

use std::sync::Arc;

use super::quota::{Policy, QuotaStatus};
use super::session::Usage;

/// What a quota decision was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaOutcome {
    Granted,
    Denied,
    /// Granted by a shadow policy, which enforcement would have refused: counted as usage,
    /// the window left as enforcement would have left it.
    ShadowDenied,
    Refunded,
}

impl QuotaOutcome {
    /// Whether the request may go ahead.
    pub fn allowed(self) -> bool {
        self != QuotaOutcome::Denied
    }
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
    /// What this request took (or gave back): 0 for a refusal or a replay.
    pub cost: u64,
    /// The plan whose allowance decided, `None` for the policy's own.
    pub plan: Option<Arc<str>>,
}

/// A policy's state for one session, as a check or a reset reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaState {
    pub status: QuotaStatus,
    pub usage: Usage,
    /// The session's plan, whose allowance (if it overrides the policy's) applies.
    pub plan: Option<Arc<str>>,
}

/// A quota request: take (or give back) `cost` from one policy of a session.
pub struct QuotaRequest<'a> {
    pub policy: &'a Policy,
    /// `None`: the default cost of the allowance in force for the session.
    pub cost: Option<u64>,
    pub idempotency_key: Option<&'a str>,
    /// Whether the policy's usage counter moves with the window. Gateway mode reserves
    /// without it and moves the counter only when the upstream has done the work.
    pub counts_usage: bool,
    /// Refunds only: the consume given back was a shadow denial, which took nothing from the
    /// window; only the usage counter goes back.
    pub after_shadow_denial: bool,
}
