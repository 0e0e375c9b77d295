//! The quota scripts (`consume.lua`, `refund.lua`): arguments out, answers back.

use std::sync::Arc;

use fred::types::Value;
use uuid::Uuid;

use super::client::{Lua, Store};
use super::codec::usage;
use super::error::StoreError;
use super::keys::{quota_field, records_key};
use crate::model::decision::{QuotaAnswer, QuotaOutcome, QuotaRequest};
use crate::model::quota::{Mode, Policy, QuotaStatus, Window};

impl Store {
    /// Consumes quota (see `consume.lua`); `None` if the session does not exist.
    pub async fn consume(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        let script = &self.inner.scripts.consume;
        self.quota_call(script, "consume", id, request).await
    }

    /// Gives quota back (see `refund.lua`); `None` if the session does not exist.
    pub async fn refund(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        let script = &self.inner.scripts.refund;
        self.quota_call(script, "refund", id, request).await
    }

    async fn quota_call(
        &self,
        script: &Lua,
        action: &str,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        let policy = request.policy;
        let (mut keys, mut args) = self.session_call(id);
        keys.push(records_key(&keys[0]));
        let record = match request.idempotency_key {
            Some(key) => format!("{action}:{}:{key}", policy.operation),
            None => String::new(),
        };
        // Which of the reported counters this request feeds (1 for the first), 0 for none.
        let counter = match &policy.counter {
            Some(counter) if request.counts_usage => self
                .shape
                .shape
                .counters
                .iter()
                .position(|name| name == counter)
                .map_or(0, |index| index + 1),
            _ => 0,
        };
        let shadow = match action {
            "consume" => policy.mode == Mode::Shadow,
            _ => request.after_shadow_denial,
        };
        args.extend([
            Value::from(quota_field(&policy.operation)),
            Value::from(counter as i64),
            Value::from(record),
            Value::from(request.cost.unwrap_or(0) as i64),
            Value::from(if shadow { "1" } else { "0" }),
            Value::from(1 + policy.plans.len() as i64),
        ]);
        let plans = policy.plans.iter().map(|(name, a)| (&**name, a));
        for (plan, allowance) in std::iter::once(("", &policy.allowance)).chain(plans) {
            let (kind, param) = match allowance.window {
                Window::Calendar(unit) => ("calendar", unit.as_str().to_string()),
                Window::Rolling(length) => ("rolling", length.as_secs().to_string()),
                Window::Gcra { interval } => ("gcra", interval.as_millis().to_string()),
            };
            args.extend([
                Value::from(plan),
                Value::from(kind),
                Value::from(param),
                Value::from(allowance.limit as i64),
                Value::from(allowance.default_cost as i64),
            ]);
        }
        args.extend(self.shape.counter_fields.iter().cloned());
        answer(
            self.eval(script, keys, args).await?,
            policy,
            &self.shape.shape.counters,
        )
    }
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
