//! The internal API for the application's backends (not browsers), under
//! `/internal/v1/sessions/{session_id}/`:
//! - `quota/{operation}`: `GET` checks, `POST .../consume` grants or refuses,
//!   `POST .../refund` gives back;
//! - `persist`: `POST` makes the session's current state durable in Supabase before it
//!   answers (write-through on demand, e.g. before inserting rows that reference it).
//!
//! Every route needs `Authorization: Bearer <SESSIONGATE_SERVICE_TOKEN>`, compared in
//! constant time. Without a configured token the routes do not exist (404), so a
//! deployment that forgot the token exposes nothing.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use simd_json::prelude::*;
use subtle::ConstantTimeEq;

use super::api::Api;
use super::error::ApiError;
use super::request::json_body;
use super::response::{json, timestamp};
use super::Body;
use crate::quota::{Policy, QuotaStatus};
use crate::session::{parse_id, Usage};
use crate::store::{QuotaAnswer, QuotaOutcome, QuotaRequest};

pub const PREFIX: &str = "/internal/";

const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Check,
    Consume,
    Refund,
}

#[derive(Serialize)]
struct PersistBody {
    persisted: bool,
    version: i64,
}

/// Entry point for every request under [`PREFIX`].
pub async fn handle(api: &Api, request: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let template = if request
        .uri()
        .path()
        .trim_end_matches('/')
        .ends_with("/persist")
    {
        "/internal/v1/sessions/{id}/persist"
    } else {
        "/internal/v1/sessions/{id}/quota/{operation}"
    };
    let response = route(api, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    super::observe(template, &method, started, response.status().as_u16());
    response
}

async fn route(api: &Api, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let Some(token) = api.service_token.as_deref() else {
        return Err(ApiError::route_not_found());
    };
    if !authorized(request.headers(), token) {
        return Err(ApiError::unauthorized());
    }
    let path = request.uri().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    let Some(rest) = path.strip_prefix("/internal/v1/sessions/") else {
        return Err(ApiError::route_not_found());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if let [id, "persist"] = segments.as_slice() {
        if request.method() != Method::POST {
            return Err(ApiError::method_not_allowed("POST"));
        }
        return persist(api, id).await;
    }
    let (id, operation, action) = match segments.as_slice() {
        [id, "quota", operation] => (*id, *operation, Action::Check),
        [id, "quota", operation, "consume"] => (*id, *operation, Action::Consume),
        [id, "quota", operation, "refund"] => (*id, *operation, Action::Refund),
        _ => return Err(ApiError::route_not_found()),
    };
    let (method, allow) = match action {
        Action::Check => (Method::GET, "GET"),
        Action::Consume | Action::Refund => (Method::POST, "POST"),
    };
    if request.method() != method {
        return Err(ApiError::method_not_allowed(allow));
    }
    let id = parse_id(id).ok_or_else(|| {
        ApiError::invalid_field("session_id", "must be a UUID (8-4-4-4-12 hex digits)")
    })?;
    let policy = api.quotas.policy(operation).ok_or_else(|| {
        let known = api
            .quotas
            .policies()
            .iter()
            .map(|p| p.operation.clone())
            .collect();
        ApiError::unknown_operation(operation, known)
    })?;

    if action == Action::Check {
        let (status, usage) = api
            .quotas
            .check(id, policy)
            .await?
            .ok_or_else(ApiError::session_not_found)?;
        let allowed = status.remaining >= policy.default_cost;
        return Ok(quota_response(
            StatusCode::OK,
            policy,
            &status,
            &usage,
            allowed,
        ));
    }

    let (parts, body) = request.into_parts();
    let body = json_body(&parts.headers, body, api.body_limit).await?;
    let (cost, idempotency_key) = quota_body(body.as_ref(), policy)?;
    let request = QuotaRequest {
        policy,
        cost,
        idempotency_key: idempotency_key.as_deref(),
    };
    let answer = match action {
        Action::Consume => api.quotas.consume(id, &request).await?,
        _ => api.quotas.refund(id, &request).await?,
    }
    .ok_or_else(ApiError::session_not_found)?;
    Ok(answer_response(policy, &answer))
}

fn path_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    parse_id(id).ok_or_else(|| {
        ApiError::invalid_field("session_id", "must be a UUID (8-4-4-4-12 hex digits)")
    })
}

async fn persist(api: &Api, id: &str) -> Result<Response<Body>, ApiError> {
    let id = path_id(id)?;
    let Some(read_through) = &api.read_through else {
        return Err(ApiError::route_not_found());
    };
    match Box::pin(read_through.persist(&id)).await {
        Ok(Some(version)) => Ok(json(
            StatusCode::OK,
            &PersistBody {
                persisted: true,
                version,
            },
        )),
        Ok(None) => Err(ApiError::session_not_found()),
        Err(error) => {
            tracing::warn!(%error, "write-through failed");
            Err(ApiError::unavailable())
        }
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    let Some((scheme, presented)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(presented.ct_eq(token.as_bytes()))
}

/// `{"cost": n, "idempotency_key": "..."}`, both optional.
fn quota_body(
    body: Option<&simd_json::OwnedValue>,
    policy: &Policy,
) -> Result<(u64, Option<String>), ApiError> {
    let Some(body) = body else {
        return Ok((policy.default_cost, None));
    };
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("The request body must be a JSON object"))?;
    let cost = match object.get("cost").filter(|v| !v.is_null()) {
        None => policy.default_cost,
        Some(cost) => match cost.as_u64() {
            Some(n) if n >= 1 && n <= policy.limit => n,
            _ => {
                return Err(ApiError::invalid_field(
                    "cost",
                    format!(
                        "must be a whole number from 1 to the policy's limit ({})",
                        policy.limit
                    ),
                ))
            }
        },
    };
    let key = match object.get("idempotency_key").filter(|v| !v.is_null()) {
        None => None,
        Some(key) => match key.as_str() {
            Some(k)
                if !k.is_empty()
                    && k.len() <= MAX_IDEMPOTENCY_KEY
                    && k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(k.to_string())
            }
            _ => {
                return Err(ApiError::invalid_field(
                    "idempotency_key",
                    format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"
                ),
                ))
            }
        },
    };
    Ok((cost, key))
}

#[derive(Serialize)]
struct QuotaBody<'a> {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_at: String,
    usage_stats: &'a Usage,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    refunded: bool,
    limit: u64,
    remaining: u64,
    reset_at: String,
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
    reset_at: String,
    usage_stats: &'a Usage,
}

fn answer_response(policy: &Policy, answer: &QuotaAnswer) -> Response<Body> {
    let status = &answer.status;
    let mut response = match answer.outcome {
        QuotaOutcome::Granted => {
            quota_response(StatusCode::OK, policy, status, &answer.usage, true)
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
            rate_limit_headers(response.headers_mut(), policy, status);
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
            rate_limit_headers(headers, policy, status);
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

fn quota_response(
    code: StatusCode,
    policy: &Policy,
    status: &QuotaStatus,
    usage: &Usage,
    allowed: bool,
) -> Response<Body> {
    let body = QuotaBody {
        allowed,
        limit: status.limit,
        remaining: status.remaining,
        reset_at: timestamp(status.reset_at),
        usage_stats: usage,
    };
    let mut response = json(code, &body);
    rate_limit_headers(response.headers_mut(), policy, status);
    response
}

/// The IETF `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
fn rate_limit_headers(headers: &mut HeaderMap, policy: &Policy, status: &QuotaStatus) {
    let now = chrono::Utc::now().timestamp();
    let policy_value = format!(
        "\"{}\";q={};w={}",
        policy.operation,
        status.limit,
        policy.window_secs(now)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_compared_exactly() {
        let token = "0123456789abcdef-secret";
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, token));
        for (value, expected) in [
            ("Bearer 0123456789abcdef-secret", true),
            ("bearer 0123456789abcdef-secret", true),
            ("Bearer 0123456789abcdef-secreT", false),
            ("Bearer 0123456789abcdef-secret ", false),
            ("Basic 0123456789abcdef-secret", false),
            ("Bearer", false),
        ] {
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            assert_eq!(authorized(&headers, token), expected, "{value}");
        }
    }
}
