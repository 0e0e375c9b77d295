//! The internal API's session routes, for support staff and backends (service token checked
//! by [`super::internal`] before anything here runs):
//! - `GET /internal/v1/sessions/{id}`: the whole session, version included;
//! - `DELETE /internal/v1/sessions/{id}`: erasure, as `DELETE /api/session/` does it;
//! - `PUT /internal/v1/sessions/{id}/plan`: the session's quota tier;
//! - `POST /internal/v1/sessions/{id}/persist`: the session's current state made durable in
//!   Supabase before the answer (write-through on demand, e.g. before inserting rows that
//!   reference it).

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use simd_json::prelude::*;
use uuid::Uuid;

use super::body::Body;
use super::error::ApiError;
use super::json_out::JsonObject;
use super::request::json_body;
use super::response::{json, json_object, no_content, session_body, write_rate_limits};
use super::state::Api;
use crate::model::session::parse_id;

#[derive(Serialize)]
struct PersistBody {
    persisted: bool,
    version: i64,
}

/// A session id from a path segment: 400 unless it is a canonical UUID.
pub(super) fn path_id(id: &str) -> Result<Uuid, ApiError> {
    parse_id(id).ok_or_else(|| {
        ApiError::invalid_field("session_id", "must be a UUID (8-4-4-4-12 hex digits)")
    })
}

/// `/internal/v1/sessions/{id}`: `GET` reads, `DELETE` erases.
pub(super) async fn session(
    api: &Api,
    method: &Method,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET && method != Method::DELETE {
        return Err(ApiError::method_not_allowed("GET, DELETE"));
    }
    let id = path_id(id)?;
    if method == Method::DELETE {
        api.erasure.erase(id).await?;
        return Ok(no_content());
    }
    let (session, version) = api
        .sessions
        .inspect(id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let record = &session.record;
    let preferences = simd_json::to_vec(&record.preferences_object()).unwrap_or_default();
    let mut body = session_body(&session, None);
    write_rate_limits(&mut body, &api.quotas, record);
    body.string_or_null("plan", record.plan.as_deref())
        .raw("preferences", &preferences)
        .number("version", version);
    Ok(json_object(StatusCode::OK, body))
}

/// `PUT /internal/v1/sessions/{id}/plan` with `{"plan": "<name>"}` or `{"plan": null}`:
/// 200 with the limits now in force; 400 for a plan that is not configured.
pub(super) async fn plan(
    api: &Api,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    if request.method() != Method::PUT {
        return Err(ApiError::method_not_allowed("PUT"));
    }
    let id = path_id(id)?;
    let (parts, body) = request.into_parts();
    let body = json_body(&parts.headers, body, api).await?;
    let object = body
        .as_ref()
        .and_then(|body| body.as_object())
        .ok_or_else(|| ApiError::invalid_body("The request body must be a JSON object"))?;
    let plan = match object.get("plan") {
        None => return Err(ApiError::invalid_field("plan", "This field is required")),
        Some(plan) if plan.is_null() => None,
        Some(plan) => {
            let plan = plan
                .as_str()
                .ok_or_else(|| ApiError::invalid_field("plan", "Must be a string or null"))?;
            let known = api.quotas.plans();
            if !known.iter().any(|name| &**name == plan) {
                let known = known.iter().map(|name| name.to_string()).collect();
                return Err(ApiError::unknown_plan(plan, known));
            }
            Some(plan)
        }
    };
    let record = api
        .quotas
        .set_plan(id, plan)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let mut body = JsonObject::new();
    body.id("session_id", &id)
        .string_or_null("plan", record.plan.as_deref());
    write_rate_limits(&mut body, &api.quotas, &record);
    Ok(json_object(StatusCode::OK, body))
}

/// `POST /internal/v1/sessions/{id}/persist`; 404 without Supabase.
pub(super) async fn persist(
    api: &Api,
    method: &Method,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
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
