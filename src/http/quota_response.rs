//! The internal quota answers as HTTP: the JSON bodies of grants, refusals, refunds and
//! checks, and the IETF `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), each
//! computed with the allowance in force for the session (its plan's, when it has one).

use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper::Response;

use super::body::Body;
use super::json_out::JsonObject;
use super::response::{json_object, timestamp, write_status, write_usage};
use crate::model::decision::{QuotaAnswer, QuotaOutcome, QuotaState};
use crate::model::quota::{Policy, QuotaStatus};
use crate::model::session::Usage;

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
            let mut body = JsonObject::new();
            body.boolean("refunded", true);
            write_status(&mut body, status);
            write_usage(&mut body, &answer.usage);
            let mut response = json_object(StatusCode::OK, body);
            rate_limit_headers(response.headers_mut(), policy, plan, status);
            response
        }
        QuotaOutcome::Denied => {
            let reset_at = timestamp(status.reset_at);
            let detail = format!("Quota for {} exhausted until {reset_at}", policy.operation);
            let mut body = JsonObject::new();
            body.boolean("error", true)
                .string("error_code", "rate_limit_exceeded")
                .string("detail", &detail)
                .number("status_code", 429u16)
                .boolean("allowed", false);
            write_status(&mut body, status);
            write_usage(&mut body, &answer.usage);
            let mut response = json_object(StatusCode::TOO_MANY_REQUESTS, body);
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
    let mut body = JsonObject::new();
    body.boolean("allowed", allowed);
    write_status(&mut body, status);
    write_usage(&mut body, usage);
    if let Some(shadow) = shadow {
        // A shadow policy's grant that enforcement would have refused: `"denied"`.
        body.string("shadow", shadow);
    }
    let mut response = json_object(StatusCode::OK, body);
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
