//! The internal API for the application's backends (not browsers), under
//! `/internal/v1/sessions/{session_id}/`:
//! - `quota/{operation}`: `GET` checks, `POST .../consume` grants or refuses,
//!   `POST .../refund` gives back, `POST .../reset` starts the window afresh (support);
//! - the session itself and `persist`: see [`operator`];
//!
//! and `/internal/v1/authorize`, the forward-auth endpoint for a proxy in front of the
//! application (nginx `auth_request`, Traefik `forwardAuth`, Envoy `ext_authz`): the
//! session comes from the forwarded cookie or `X-Session-Id`, the operation from the
//! proxy's configuration, and a grant is counted at once (a proxy has no commit hook).
//!
//! Every route needs `Authorization: Bearer <SESSIONGATE_SERVICE_TOKEN>`, compared in
//! constant time. Without a configured token the routes do not exist (404), so a
//! deployment that forgot the token exposes nothing.

use http::{header, HeaderMap, HeaderValue, Method};
use hyper::body::Incoming;
use hyper::{Request, Response};
use simd_json::prelude::*;
use subtle::ConstantTimeEq;

use super::body::Body;
use super::error::ApiError;
use super::operator;
use super::quota_response::{answer_response, rate_limit_headers, state_response};
use super::request::{current_session, json_body, SESSION_HEADER_NAME};
use super::state::Api;
use crate::model::decision::QuotaRequest;
use crate::model::quota::Policy;

pub(super) const PREFIX: &str = "/internal/";

const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Check,
    Consume,
    Refund,
    Reset,
}

/// Entry point of the internal listener (`internal_listen`): the internal API and nothing
/// else.
pub async fn handle_listener(
    api: std::sync::Arc<Api>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let _in_flight = super::InFlight::start();
    if let Err(error) = super::request::canonicalize(&mut request) {
        return error.into_response();
    }
    if request.uri().path().starts_with(PREFIX) {
        return handle(&api, request).await;
    }
    ApiError::route_not_found().into_response()
}

/// Entry point for every request under `PREFIX`.
pub async fn handle(api: &Api, request: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    // Consume and refund are told apart: one label would hide refunds failing among grants.
    let template = if is_authorize(path) {
        "/internal/v1/authorize"
    } else if path.ends_with("/persist") {
        "/internal/v1/sessions/{id}/persist"
    } else if path.ends_with("/plan") {
        "/internal/v1/sessions/{id}/plan"
    } else if path.ends_with("/consume") {
        "/internal/v1/sessions/{id}/quota/{operation}/consume"
    } else if path.ends_with("/refund") {
        "/internal/v1/sessions/{id}/quota/{operation}/refund"
    } else if path.ends_with("/reset") {
        "/internal/v1/sessions/{id}/quota/{operation}/reset"
    } else if path.contains("/quota/") {
        "/internal/v1/sessions/{id}/quota/{operation}"
    } else {
        "/internal/v1/sessions/{id}"
    };
    let response = route(api, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    super::observe(template, &method, started, response.status().as_u16());
    response
}

async fn route(api: &Api, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if api.internal.tokens.is_empty() {
        return Err(ApiError::route_not_found());
    }
    if !authorized(request.headers(), &api.internal.tokens) {
        return Err(ApiError::unauthorized());
    }
    let path = request.uri().path();
    if is_authorize(path) {
        return authorize(api, &request).await;
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    let Some(rest) = path.strip_prefix("/internal/v1/sessions/") else {
        return Err(ApiError::route_not_found());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (id, operation, action) = match segments.as_slice() {
        [id] => return operator::session(api, request.method(), id).await,
        [id, "persist"] => return operator::persist(api, request.method(), id).await,
        [id, "plan"] => {
            let id = id.to_string();
            return operator::plan(api, request, &id).await;
        }
        [id, "quota", operation] => (*id, *operation, Action::Check),
        [id, "quota", operation, "consume"] => (*id, *operation, Action::Consume),
        [id, "quota", operation, "refund"] => (*id, *operation, Action::Refund),
        [id, "quota", operation, "reset"] => (*id, *operation, Action::Reset),
        _ => return Err(ApiError::route_not_found()),
    };
    let (method, allow) = match action {
        Action::Check => (Method::GET, "GET"),
        Action::Consume | Action::Refund | Action::Reset => (Method::POST, "POST"),
    };
    if request.method() != method {
        return Err(ApiError::method_not_allowed(allow));
    }
    let id = operator::path_id(id)?;
    let policy = known_policy(api, operation)?;

    if matches!(action, Action::Check | Action::Reset) {
        let state = match action {
            Action::Reset => api.quotas.reset(id, policy).await?,
            _ => api.quotas.check(id, policy).await?,
        };
        let state = state.ok_or_else(ApiError::session_not_found)?;
        return Ok(state_response(policy, &state));
    }

    let (parts, body) = request.into_parts();
    let body = json_body(&parts.headers, body, api).await?;
    let (cost, idempotency_key) = quota_body(body.as_ref(), policy)?;
    let request = QuotaRequest {
        policy,
        cost,
        idempotency_key: idempotency_key.as_deref(),
        counts_usage: true,
        after_shadow_denial: false,
    };
    let answer = match action {
        Action::Consume => api.quotas.consume(id, &request).await?,
        _ => api.quotas.refund(id, &request).await?,
    }
    .ok_or_else(ApiError::session_not_found)?;
    Ok(answer_response(policy, &answer))
}

const AUTHORIZE: &str = "/internal/v1/authorize";

/// `/internal/v1/authorize`, or any path below it: Envoy's `ext_authz` appends the
/// original request's path to its `path_prefix`.
fn is_authorize(path: &str) -> bool {
    path.strip_prefix(AUTHORIZE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Forward-auth, any method (proxies differ): 200 with `X-Session-Id` (and the quota
/// headers when an operation is named) lets the request through; 404 (no or unknown
/// session, unknown operation) and 429 (quota exhausted, with `Retry-After`) stop it.
async fn authorize(api: &Api, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    let id = current_session(api, headers)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let Some((operation, cost)) = authorize_operation(request)? else {
        api.sessions
            .read(id)
            .await?
            .ok_or_else(ApiError::session_not_found)?;
        return Ok(authorized_response(&id));
    };
    let policy = known_policy(api, &operation)?;
    let cost = cost.map(|text| parse_cost(&text, policy)).transpose()?;
    let request = QuotaRequest {
        policy,
        cost,
        idempotency_key: None,
        counts_usage: true,
        after_shadow_denial: false,
    };
    let answer = api
        .quotas
        .consume(id, &request)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    if !answer.outcome.allowed() {
        return Ok(answer_response(policy, &answer));
    }
    let mut response = authorized_response(&id);
    rate_limit_headers(
        response.headers_mut(),
        policy,
        answer.plan.as_deref(),
        &answer.status,
    );
    Ok(response)
}

/// The operation and cost to authorize. On `/internal/v1/authorize` itself the query
/// (written by the proxy's configuration) wins over the `X-Quota-Operation` and
/// `X-Quota-Cost` headers; below it (Envoy) the query is the client's, so only the headers
/// count. Operation and cost always come from the same place, so a client can't lower a
/// cost the proxy set.
fn authorize_operation(
    request: &Request<Incoming>,
) -> Result<Option<(String, Option<String>)>, ApiError> {
    let uri = request.uri();
    if uri.path() == AUTHORIZE {
        let query = uri.query().unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        if let Some(operation) = param("operation") {
            return Ok(Some((operation, param("cost"))));
        }
    }
    let header = |name: &'static str| -> Result<Option<String>, ApiError> {
        match request.headers().get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.trim().to_string()))
                .map_err(|_| ApiError::invalid_field(name, "must be visible ASCII")),
        }
    };
    match header("x-quota-operation")? {
        Some(operation) => Ok(Some((operation, header("x-quota-cost")?))),
        None => Ok(None),
    }
}

fn parse_cost(text: &str, policy: &Policy) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 && n <= policy.largest_limit() => Ok(n),
        _ => Err(invalid_cost(policy)),
    }
}

fn invalid_cost(policy: &Policy) -> ApiError {
    ApiError::invalid_field(
        "cost",
        format!(
            "must be a whole number from 1 to the policy's limit ({})",
            policy.largest_limit()
        ),
    )
}

fn authorized_response(id: &uuid::Uuid) -> Response<Body> {
    let mut response = Response::new(Body::from(bytes::Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(&id.hyphenated().to_string()) {
        headers.insert(SESSION_HEADER_NAME, value);
    }
    response
}

fn known_policy<'a>(api: &'a Api, operation: &str) -> Result<&'a Policy, ApiError> {
    api.quotas.policy(operation).ok_or_else(|| {
        let known = api
            .quotas
            .policies()
            .iter()
            .map(|p| p.operation.clone())
            .collect();
        ApiError::unknown_operation(operation, known)
    })
}

/// Whether the request bears one of `tokens`. Every token is compared, in constant time, so
/// the answer's timing says nothing about which one came close.
fn authorized(headers: &HeaderMap, tokens: &[String]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    let Some((scheme, presented)) = value.split_at_checked(7) else {
        return false;
    };
    let matches = tokens.iter().fold(subtle::Choice::from(0), |any, token| {
        any | presented.ct_eq(token.as_bytes())
    });
    scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(matches)
}

/// `{"cost": n, "idempotency_key": "..."}`, both optional (no cost: the default of the
/// session's allowance, which the store decides).
fn quota_body(
    body: Option<&simd_json::OwnedValue>,
    policy: &Policy,
) -> Result<(Option<u64>, Option<String>), ApiError> {
    let Some(body) = body else {
        return Ok((None, None));
    };
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("The request body must be a JSON object"))?;
    let cost = match object.get("cost").filter(|v| !v.is_null()) {
        None => None,
        // 10.0 is the integer 10 to JSON (and to JSON Schema); 10.5 is not.
        Some(cost) => match cost.as_u64().or_else(|| {
            cost.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }) {
            Some(n) if n >= 1 && n <= policy.largest_limit() => Some(n),
            _ => return Err(invalid_cost(policy)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_compared_exactly() {
        let tokens = [
            "0123456789abcdef-secret".to_string(),
            "next-token-0123456789".to_string(),
        ];
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, &tokens));
        for (value, expected) in [
            ("Bearer 0123456789abcdef-secret", true),
            ("bearer 0123456789abcdef-secret", true),
            ("Bearer next-token-0123456789", true),
            ("Bearer 0123456789abcdef-secreT", false),
            ("Bearer 0123456789abcdef-secret ", false),
            ("Bearer next-token-0123456789next-token-0123456789", false),
            ("Basic 0123456789abcdef-secret", false),
            ("Bearer", false),
        ] {
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            assert_eq!(authorized(&headers, &tokens), expected, "{value}");
            assert_eq!(
                authorized(&headers, &tokens[..1]),
                expected && value.contains("abcdef"),
                "{value} against the current token only"
            );
        }
        assert!(!authorized(&headers, &[]));
    }
}
