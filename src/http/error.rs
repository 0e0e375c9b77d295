//! API errors and their JSON form: `{"error": true, "error_code", "detail", "status_code"}`,
//! plus `field_errors` for validation errors (contract, "Errors").

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::{header, HeaderValue, StatusCode};
use hyper::Response;
use serde::Serialize;

use super::response::json;
use super::Body;
use crate::store::StoreError;

/// An error response, ready to be sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: Cow<'static, str>,
    field_errors: Option<BTreeMap<&'static str, Vec<Cow<'static, str>>>>,
    allow: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: bool,
    error_code: &'a str,
    detail: &'a str,
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    field_errors: Option<&'a BTreeMap<&'static str, Vec<Cow<'static, str>>>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field_errors: None,
            allow: None,
        }
    }

    /// 400: one field (or header) failed validation.
    pub fn invalid_field(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let message = message.into();
        let mut error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("{field}: {message}"),
        );
        error.field_errors = Some(BTreeMap::from([(field, vec![message])]));
        error
    }

    /// 400: the body as a whole is unusable (malformed JSON, not an object).
    pub fn invalid_body(detail: impl Into<Cow<'static, str>>) -> Self {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "validation_error", detail);
        error.field_errors = Some(BTreeMap::new());
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

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("This endpoint accepts {allow}"),
        );
        error.allow = Some(allow);
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

    pub fn unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "Session service unavailable, retry shortly",
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
        self.status
    }

    pub fn into_response(self) -> Response<Body> {
        let body = ErrorBody {
            error: true,
            error_code: self.code,
            detail: &self.detail,
            status_code: self.status.as_u16(),
            field_errors: self.field_errors.as_ref(),
        };
        let mut response = json(self.status, &body);
        let headers = response.headers_mut();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "redis unavailable");
        ApiError::unavailable()
    }
}
