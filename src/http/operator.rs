//! The internal API's session routes, for support staff and backends (service token checked
//! by [`super::internal`] before anything here runs):
//! - `GET /internal/v1/sessions/{id}`: the whole session, version included;
//! - `DELETE /internal/v1/sessions/{id}`: erasure, as `DELETE /api/session/` does it;
//! - `POST /internal/v1/sessions/{id}/persist`: the session's current state made durable in
//!   Supabase before the answer (write-through on demand, e.g. before inserting rows that
//!   reference it).

use http::{Method, StatusCode};
use hyper::Response;
use serde::Serialize;
use uuid::Uuid;

use super::body::Body;
use super::error::ApiError;
use super::response::{json, no_content, timestamp, RateLimits};
use super::state::Api;
use crate::model::session::{parse_id, Usage};

#[derive(Serialize)]
struct SessionBody<'a> {
    session_id: &'a Uuid,
    created_at: String,
    last_active: String,
    usage_stats: &'a Usage,
    rate_limits: RateLimits<'a>,
    preferences: simd_json::OwnedValue,
    version: i64,
}

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
    // Stored as validated compact JSON; an object is all it can be.
    let mut preferences = record
        .preferences
        .as_deref()
        .unwrap_or("{}")
        .as_bytes()
        .to_vec();
    let preferences = simd_json::to_owned_value(&mut preferences)
        .unwrap_or_else(|_| simd_json::OwnedValue::from(simd_json::owned::Object::new()));
    let body = SessionBody {
        session_id: &session.id,
        created_at: timestamp(record.created_at),
        last_active: timestamp(record.last_active),
        usage_stats: &record.usage,
        rate_limits: RateLimits {
            quotas: &api.quotas,
            record,
        },
        preferences,
        version,
    };
    Ok(json(StatusCode::OK, &body))
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
