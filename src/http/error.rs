//! API errors and their JSON form: `{"error": true, "error_code", "detail", "status_code"}`,
//! plus `field_errors` for validation errors (contract, "Errors").

use crate::log_limit::Occasional;
use std::borrow::Cow;
use std::collections::BTreeMap;

use http::{header, HeaderValue, StatusCode};
use hyper::Response;
use serde::Serialize;

use super::body::Body;
use super::response::json;
use crate::service_error::ServiceError;

/// An error response, ready to be sent. Boxed: errors are rare next to successes, and a
/// small `Result` keeps every handler's happy path cheap.
#[derive(Debug)]
pub struct ApiError(Box<Parts>);

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    code: &'static str,
    detail: Cow<'static, str>,
    field_errors: Option<BTreeMap<&'static str, Vec<Cow<'static, str>>>>,
    allow: Option<Cow<'static, str>>,
    retry_after: Option<u64>,
    known_operations: Option<Vec<String>>,
    known_plans: Option<Vec<String>>,
    /// Ask hyper to close the connection after the answer (the request was not read whole).
    close: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: bool,
    error_code: &'a str,
    detail: &'a str,
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    field_errors: Option<&'a BTreeMap<&'static str, Vec<Cow<'static, str>>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_operations: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_plans: Option<&'a [String]>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError(Box::new(Parts {
            status,
            code,
            detail: detail.into(),
            field_errors: None,
            allow: None,
            retry_after: None,
            known_operations: None,
            known_plans: None,
            close: false,
        }))
    }

    /// 400: one field (or header) failed validation.
    pub fn invalid_field(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let message = message.into();
        let mut error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("{field}: {message}"),
        );
        error.0.field_errors = Some(BTreeMap::from([(field, vec![message])]));
        error
    }

    /// 400: the body as a whole is unusable (malformed JSON, not an object).
    pub fn invalid_body(detail: impl Into<Cow<'static, str>>) -> Self {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "validation_error", detail);
        error.0.field_errors = Some(BTreeMap::new());
        error
    }

    pub fn session_not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Session not found",
        )
    }

    pub fn route_not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "No such endpoint",
        )
    }

    pub fn method_not_allowed(allow: impl Into<Cow<'static, str>>) -> Self {
        let allow = allow.into();
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("This endpoint accepts {allow}"),
        );
        error.0.allow = Some(allow);
        error
    }

    pub fn payload_too_large(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    }

    pub fn unsupported_media_type() -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The request body must be JSON (Content-Type: application/json)",
        )
    }

    /// 501: the request uses an HTTP feature the gateway does not forward.
    pub fn not_implemented(what: &'static str) -> Self {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!("{what} is not supported"),
        )
    }

    pub fn unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "Session service unavailable, retry shortly",
        )
    }

    /// 429 for session creation floods (quota denials carry more fields; see `internal`).
    pub fn too_many_sessions(retry_after: std::time::Duration) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many sessions created from this address; retry later",
        );
        error.0.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        error
    }

    /// 403: a state-changing request from a browser page the gateway does not serve.
    pub fn forbidden_origin() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Requests that change a session are accepted only from the API's own origin and \
             the origins in cors.allowed_origins",
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid service token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn unknown_operation(operation: &str, known: Vec<String>) -> Self {
        let mut error = ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            format!(
                "Unknown operation {operation:?}; known operations: {}",
                known.join(", ")
            ),
        );
        error.0.known_operations = Some(known);
        error
    }

    /// 400: a plan that is not configured.
    pub fn unknown_plan(plan: &str, known: Vec<String>) -> Self {
        let mut error = ApiError::invalid_field(
            "plan",
            format!("Unknown plan {plan:?}; known plans: {}", known.join(", ")),
        );
        error.0.known_plans = Some(known);
        error
    }

    /// 502: a gateway-mode upstream could not be reached or broke off.
    pub fn bad_gateway() -> Self {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "The upstream service could not be reached",
        )
    }

    /// 504: a gateway-mode upstream did not answer within the route's timeout.
    pub fn gateway_timeout() -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            "The upstream service did not answer in time",
        )
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// 408: the request body did not arrive in time; the connection is closed.
    pub fn request_timeout() -> Self {
        let mut error = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "The request body did not arrive in time",
        );
        error.0.close = true;
        error
    }

    pub fn into_response(self) -> Response<Body> {
        let error = *self.0;
        let body = ErrorBody {
            error: true,
            error_code: error.code,
            detail: &error.detail,
            status_code: error.status.as_u16(),
            field_errors: error.field_errors.as_ref(),
            known_operations: error.known_operations.as_deref(),
            known_plans: error.known_plans.as_deref(),
        };
        let mut response = json(error.status, &body);
        let headers = response.headers_mut();
        if error.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if error.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = error.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // Method names come from hyper or the validated route table: always valid.
        if let Some(Ok(allow)) = error.allow.map(|a| HeaderValue::from_str(&a)) {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Throttled { retry_after } => {
                return ApiError::too_many_sessions(retry_after)
            }
            // Counted in metrics; a warning per refused lookup would flood the log.
            ServiceError::ReadThroughBusy => tracing::debug!(%error, "read-through refused"),
            // Logged where it happened, with the session's short id.
            ServiceError::RecordUnavailable => tracing::debug!(%error, "read-through unavailable"),
            ServiceError::Store(error) => {
                static REDIS_UNAVAILABLE: Occasional = Occasional::new();
                if let Some(held_back) = REDIS_UNAVAILABLE.admit() {
                    tracing::warn!(%error, held_back, "redis unavailable");
                }
            }
        }
        ApiError::unavailable()
    }
}
