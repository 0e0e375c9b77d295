//! The internal quota answers as HTTP: the JSON bodies of grants, refusals, refunds and
//! checks, and the IETF `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), each
//! computed with the allowance in force for the session (its plan's, when it has one).

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
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
    static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    let now = chrono::Utc::now().timestamp();
    let window = policy.allowance_on(plan).window_secs(now);
    let reset_in = (status.reset_at - now).max(0);
    let policy_value = item(
        &policy.operation,
        [("q", status.limit as i64), ("w", window)],
    );
    let limit_value = item(
        &policy.operation,
        [("r", status.remaining as i64), ("t", reset_in)],
    );
    // Operation names are validated at start-up to [a-z0-9_-], so both are valid headers.
    if let Ok(value) = HeaderValue::from_maybe_shared(policy_value) {
        headers.insert(&RATELIMIT_POLICY, value);
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(limit_value) {
        headers.insert(&RATELIMIT, value);
    }
}

/// One item of a structured header: `"<name>";<key>=<value>;...`.
fn item<const N: usize>(name: &str, parameters: [(&str, i64); N]) -> Bytes {
    let mut text = BytesMut::with_capacity(name.len() + 2 + 24 * N);
    text.extend_from_slice(b"\"");
    text.extend_from_slice(name.as_bytes());
    text.extend_from_slice(b"\"");
    for (key, value) in parameters {
        text.extend_from_slice(b";");
        text.extend_from_slice(key.as_bytes());
        text.extend_from_slice(b"=");
        text.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    text.freeze()
}
