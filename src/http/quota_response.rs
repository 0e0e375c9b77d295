//! The internal quota answers as HTTP: the JSON bodies of grants, refusals, refunds and
//! checks, and the IETF `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), each
//! computed with the allowance in force for the session (its plan's, when it has one).

use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper::Response;
use serde::Serialize;

use super::body::Body;
use super::response::{json, timestamp, Timestamp};
use crate::model::decision::{QuotaAnswer, QuotaOutcome, QuotaState};
use crate::model::quota::{Policy, QuotaStatus};
use crate::model::session::Usage;

#[derive(Serialize)]
struct QuotaBody<'a> {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_at: Timestamp,
    usage_stats: &'a Usage,
    /// A shadow policy's grant that enforcement would have refused: `"denied"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<&'static str>,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    refunded: bool,
    limit: u64,
    remaining: u64,
    reset_at: Timestamp,
    usage_stats: &'a Usage,
}

/// A refused consume: the error shape of the contract plus the quota fields.
#[derive(Serialize)]
struct DeniedBody<'a> {
    error: bool,
    error_code: &'static str,
    detail: String,
    status_code: u16,
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_at: Timestamp,
    usage_stats: &'a Usage,
}

/// A consume's or refund's answer: 200, or 429 with `Retry-After` for a refusal.
pub(super) fn answer_response(policy: &Policy, answer: &QuotaAnswer) -> Response<Body> {
    let status = &answer.status;
    let plan = answer.plan.as_deref();
    let mut response = match answer.outcome {
        QuotaOutcome::Granted => quota_response(policy, plan, status, &answer.usage, true, None),
        QuotaOutcome::ShadowDenied => {
            quota_response(policy, plan, status, &answer.usage, true, Some("denied"))
        }
        QuotaOutcome::Refunded => {
            let body = RefundBody {
                refunded: true,
                limit: status.limit,
                remaining: status.remaining,
                reset_at: timestamp(status.reset_at),
                usage_stats: &answer.usage,
            };
            let mut response = json(StatusCode::OK, &body);
            rate_limit_headers(response.headers_mut(), policy, plan, status);
            response
        }
        QuotaOutcome::Denied => {
            let reset_at = timestamp(status.reset_at);
            let body = DeniedBody {
                error: true,
                error_code: "rate_limit_exceeded",
                detail: format!("Quota for {} exhausted until {reset_at}", policy.operation),
                status_code: 429,
                allowed: false,
                limit: status.limit,
                remaining: status.remaining,
                reset_at,
                usage_stats: &answer.usage,
            };
            let mut response = json(StatusCode::TOO_MANY_REQUESTS, &body);
            let headers = response.headers_mut();
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(answer.retry_after.max(1)),
            );
            rate_limit_headers(headers, policy, plan, status);
            response
        }
    };
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// A check's or reset's answer: the policy's state, and whether a request of the default
/// cost would be granted now.
pub(super) fn state_response(policy: &Policy, state: &QuotaState) -> Response<Body> {
    let plan = state.plan.as_deref();
    let allowed = state.status.remaining >= policy.allowance_on(plan).default_cost;
    quota_response(policy, plan, &state.status, &state.usage, allowed, None)
}

fn quota_response(
    policy: &Policy,
    plan: Option<&str>,
    status: &QuotaStatus,
    usage: &Usage,
    allowed: bool,
    shadow: Option<&'static str>,
) -> Response<Body> {
    let body = QuotaBody {
        allowed,
        limit: status.limit,
        remaining: status.remaining,
        reset_at: timestamp(status.reset_at),
        usage_stats: usage,
        shadow,
    };
    let mut response = json(StatusCode::OK, &body);
    rate_limit_headers(response.headers_mut(), policy, plan, status);
    response
}

/// The IETF `RateLimit-Policy` / `RateLimit` headers.
pub(super) fn rate_limit_headers(
    headers: &mut HeaderMap,
    policy: &Policy,
    plan: Option<&str>,
    status: &QuotaStatus,
) {
    let now = chrono::Utc::now().timestamp();
    let policy_value = format!(
        "\"{}\";q={};w={}",
        policy.operation,
        status.limit,
        policy.allowance_on(plan).window_secs(now)
    );
    let reset_in = (status.reset_at - now).max(0);
    let limit_value = format!(
        "\"{}\";r={};t={reset_in}",
        policy.operation, status.remaining
    );
    // Operation names are validated at start-up to [a-z0-9_-], so both are valid headers.
    if let Ok(value) = HeaderValue::from_str(&policy_value) {
        headers.insert("ratelimit-policy", value);
    }
    if let Ok(value) = HeaderValue::from_str(&limit_value) {
        headers.insert("ratelimit", value);
    }
}
