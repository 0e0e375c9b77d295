//! Quotas: the quota operations of the configured policies ([`crate::model::quota`] has the
//! policies and their arithmetic).
//!
//! Decisions are taken atomically inside Redis (`store/consume.lua`, clock from Redis
//! `TIME`); this module offers consume, check and refund through [`Quotas`], and turns stored
//! states into the `{limit, remaining, reset_at}` that reads show. It reaches Redis only
//! through [`Store`] and knows nothing of HTTP.
//!
//! Gateway mode consumes before forwarding and gives back what the upstream did not serve:
//! [`Quotas::reserve`] takes the cost from the window and counts it as usage (one script,
//! atomic, so concurrent requests never overshoot), and [`Quotas::release`] gives both back
//! when the upstream fails. A success costs one script. A reservation whose gateway dies
//! before its upstream answered stays taken and counted: the quota errs on the side of the
//! limit.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::flush::ReadThrough;
use crate::model::decision::{QuotaAnswer, QuotaOutcome, QuotaRequest, QuotaState};
use crate::model::quota::{Policy, QuotaStatus};
use crate::model::session::SessionRecord;
use crate::service_error::ServiceError;
use crate::session::or_read_through;
use crate::store::Store;
use crate::telemetry::QuotaMeters;

/// The quota operations over a [`Store`], for the configured policies.
#[derive(Clone)]
pub struct Quotas {
    store: Store,
    policies: Arc<[Policy]>,
    /// Each policy's counters, in the same order.
    meters: Arc<[QuotaMeters]>,
    /// The plans a session may be put on.
    plans: Arc<[Arc<str>]>,
    read_through: Option<ReadThrough>,
    /// Share of a limit past which a grant also counts as `near_limit` in metrics.
    near_limit: f64,
}

impl Quotas {
    pub fn new(
        store: Store,
        policies: Vec<Policy>,
        plans: Vec<Arc<str>>,
        read_through: Option<ReadThrough>,
        near_limit: f64,
    ) -> Self {
        Quotas {
            store,
            meters: policies
                .iter()
                .map(|policy| QuotaMeters::new(&policy.operation))
                .collect(),
            policies: policies.into(),
            plans: plans.into(),
            read_through,
            near_limit,
        }
    }

    pub fn policy(&self, operation: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.operation == operation)
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The plans a session may be put on, in configuration order.
    pub fn plans(&self) -> &[Arc<str>] {
        &self.plans
    }

    /// Puts a session on `plan` (`None`: no plan) and returns the session as it is then;
    /// `None` for an unknown session. Windows already open keep what they counted
    /// (`remaining` = the new limit − used, never below 0). The caller has checked that the
    /// plan is one of [`Quotas::plans`].
    pub async fn set_plan(
        &self,
        id: Uuid,
        plan: Option<&str>,
    ) -> Result<Option<SessionRecord>, ServiceError> {
        let set = || self.store.set_plan(&id, plan);
        if or_read_through(self.read_through.as_ref(), &id, set)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let read = || self.store.read(&id);
        or_read_through(self.read_through.as_ref(), &id, read).await
    }

    /// Grants or refuses the request's cost atomically; `None` for an unknown session.
    pub async fn consume(
        &self,
        id: Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, ServiceError> {
        let consume = || self.store.consume(&id, request);
        let answer = or_read_through(self.read_through.as_ref(), &id, consume).await?;
        if let Some(answer) = &answer {
            self.record_decision(request, answer);
        }
        Ok(answer)
    }

    fn record_decision(&self, request: &QuotaRequest<'_>, answer: &QuotaAnswer) {
        let Some(meters) = self.meters(request.policy) else {
            return;
        };
        let limit = answer.status.limit.max(1) as f64;
        let used = limit - answer.status.remaining as f64;
        let near_limit = used / limit >= self.near_limit;
        match answer.outcome {
            _ if answer.replayed => meters.replayed(),
            QuotaOutcome::Granted => meters.granted(answer.cost, near_limit),
            QuotaOutcome::ShadowDenied => meters.shadow_denied(answer.cost, near_limit),
            _ => meters.denied(),
        }
    }

    fn meters(&self, policy: &Policy) -> Option<&QuotaMeters> {
        let index = self
            .policies
            .iter()
            .position(|p| p.operation == policy.operation)?;
        self.meters.get(index)
    }

    /// Gives the request's cost back, never below zero; `None` for an unknown session.
    pub async fn refund(
        &self,
        id: Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, ServiceError> {
        let refund = || self.store.refund(&id, request);
        let answer = or_read_through(self.read_through.as_ref(), &id, refund).await?;
        if let (Some(answer), Some(meters)) = (&answer, self.meters(request.policy)) {
            match answer.replayed {
                true => meters.replayed(),
                false => meters.refunded(),
            }
        }
        Ok(answer)
    }

    /// Takes `cost` (`None`: the default of the session's allowance) from the policy's
    /// window and counts it as usage (gateway mode, before forwarding); the answer is a
    /// grant or a refusal, `None` for an unknown session.
    pub async fn reserve(
        &self,
        id: Uuid,
        policy: &Policy,
        cost: Option<u64>,
    ) -> Result<Option<QuotaAnswer>, ServiceError> {
        let request = QuotaRequest {
            policy,
            cost,
            idempotency_key: None,
            counts_usage: true,
            after_shadow_denial: false,
        };
        self.consume(id, &request).await
    }

    /// Gives a reservation back, to the window and the usage counter: the upstream failed.
    /// A shadow denial took nothing from the window, so only its usage goes back.
    pub async fn release(
        &self,
        id: Uuid,
        policy: &Policy,
        reserved: &QuotaAnswer,
    ) -> Result<(), ServiceError> {
        let request = QuotaRequest {
            policy,
            cost: Some(reserved.cost),
            idempotency_key: None,
            counts_usage: true,
            after_shadow_denial: reserved.outcome == QuotaOutcome::ShadowDenied,
        };
        self.store.refund(&id, &request).await?;
        if let Some(meters) = self.meters(policy) {
            meters.refunded();
        }
        Ok(())
    }

    /// A policy's state without consuming (one plain read); `None` for an unknown session.
    pub async fn check(
        &self,
        id: Uuid,
        policy: &Policy,
    ) -> Result<Option<QuotaState>, ServiceError> {
        let read = || self.store.read(&id);
        let Some(record) = or_read_through(self.read_through.as_ref(), &id, read).await? else {
            return Ok(None);
        };
        let allowance = policy.allowance_on(record.plan.as_deref());
        let status = allowance.status(record.quota_state(&policy.operation), now_ms());
        Ok(Some(QuotaState {
            status,
            usage: record.usage,
            plan: record.plan,
        }))
    }

    /// Starts the policy's current window afresh (an operator's reset; usage counters stay)
    /// and returns its state after; `None` for an unknown session.
    pub async fn reset(
        &self,
        id: Uuid,
        policy: &Policy,
    ) -> Result<Option<QuotaState>, ServiceError> {
        let reset = || self.store.reset_quota(&id, &policy.operation);
        if or_read_through(self.read_through.as_ref(), &id, reset)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        self.check(id, policy).await
    }

    /// Every policy's state in a record read with [`Store::read`], in policy order, each
    /// looked up by the policy's operation.
    pub fn statuses<'a>(
        &'a self,
        record: &'a SessionRecord,
    ) -> impl Iterator<Item = (&'a Policy, QuotaStatus)> + 'a {
        let now = now_ms();
        self.policies.iter().map(move |policy| {
            let state = record.quota_state(&policy.operation);
            let allowance = policy.allowance_on(record.plan.as_deref());
            (policy, allowance.status(state, now))
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
