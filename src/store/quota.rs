//! The quota scripts (`consume.lua`, `refund.lua`, one pair per policy: see
//! `quota_scripts`): arguments out, answers back.

use std::sync::Arc;

use fred::types::Value;
use uuid::Uuid;

use super::client::Store;
use super::codec::usage;
use super::error::StoreError;
use super::keys::records_key;
use super::quota_scripts::PolicyScripts;
use crate::model::decision::{QuotaAnswer, QuotaOutcome, QuotaRequest};
use crate::model::quota::{Mode, Policy, QuotaStatus};

impl Store {
    /// Consumes quota (see `consume.lua`); `None` if the session does not exist.
    pub async fn consume(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        self.quota_call(Action::Consume, id, request).await
    }

    /// Gives quota back (see `refund.lua`); `None` if the session does not exist.
    pub async fn refund(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        self.quota_call(Action::Refund, id, request).await
    }

    async fn quota_call(
        &self,
        action: Action,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        let policy = request.policy;
        let built;
        let scripts = match self.shape.quota_scripts.get(&policy.operation) {
            Some(scripts) => scripts,
            // A policy this store's shape was not built with (not one of its configuration's).
            None => {
                let counters = &self.shape.shape.counters;
                built = PolicyScripts::of(policy, counters, &self.inner.session_lib);
                &built
            }
        };
        let (script, name, shadow) = match action {
            Action::Consume => (&scripts.consume, "consume", policy.mode == Mode::Shadow),
            Action::Refund => (&scripts.refund, "refund", request.after_shadow_denial),
        };
        let record = match request.idempotency_key {
            Some(key) => format!("{name}:{}:{key}", policy.operation),
            None => String::new(),
        };
        let flag = |set: bool| Value::from_static_str(if set { "1" } else { "0" });
        let call = || {
            let (mut keys, mut args) = self.session_call(id);
            keys.push(records_key(&keys[0]));
            args.extend([
                flag(request.counts_usage),
                Value::from(record.as_str()),
                Value::from(request.cost.unwrap_or(0) as i64),
                flag(shadow),
            ]);
            (keys, args)
        };
        let reply = self.eval(script, Some(id), call).await?;
        answer(reply, policy, &self.shape.shape.counters)
    }
}

#[derive(Clone, Copy)]
enum Action {
    Consume,
    Refund,
}

/// Decodes `{outcome, limit, remaining, reset_at, retry_after, replayed, cost, allowance,
/// counters...}`, the allowance being `policy`'s own (0) or its plans' (from 1), the
/// counters those of `counters`, in order.
fn answer(
    reply: Value,
    policy: &Policy,
    counters: &[Arc<str>],
) -> Result<Option<QuotaAnswer>, StoreError> {
    const BAD: StoreError = StoreError::Reply("a quota script returned an unexpected shape");
    let Value::Array(items) = reply else {
        return Err(BAD);
    };
    if items
        .first()
        .and_then(|outcome| outcome.as_str())
        .as_deref()
        == Some("missing")
    {
        return Ok(None);
    }
    if items.len() != 8 + counters.len() {
        return Err(BAD);
    }
    let outcome = match items[0].as_str().as_deref() {
        Some("granted") => QuotaOutcome::Granted,
        Some("denied") => QuotaOutcome::Denied,
        Some("shadow_denied") => QuotaOutcome::ShadowDenied,
        Some("refunded") => QuotaOutcome::Refunded,
        _ => return Err(BAD),
    };
    let number = |i: usize| items[i].as_i64().ok_or(BAD);
    let count = |i: usize| number(i).map(|n| n.max(0) as u64);
    Ok(Some(QuotaAnswer {
        outcome,
        status: QuotaStatus {
            limit: count(1)?,
            remaining: count(2)?,
            reset_at: number(3)?,
        },
        retry_after: count(4)?,
        replayed: number(5)? == 1,
        cost: count(6)?,
        // A replay may name a plan a reload has removed since: then the policy's own.
        plan: match number(7)? {
            n if n >= 1 => policy
                .plans
                .get(n as usize - 1)
                .map(|(name, _)| name.clone()),
            _ => None,
        },
        usage: usage(counters, &items[8..])?,
    }))
}
