//! The operator endpoints on the admin listener: `/healthz` (the process answers) and
//! `/readyz` (Redis answers too). Kept off the public listener so probes and, later,
//! metrics never mix with client traffic.

use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;

use super::error::ApiError;
use super::response::json;
use super::Body;
use crate::store::Store;

/// What the admin handlers share.
pub struct Admin {
    pub store: Store,
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// Entry point for every admin request.
pub async fn handle(admin: Arc<Admin>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    match path.strip_suffix('/').unwrap_or(path) {
        "/healthz" => json(StatusCode::OK, &Status { status: "ok" }),
        "/readyz" => match admin.store.ping().await {
            Ok(()) => json(StatusCode::OK, &Status { status: "ready" }),
            Err(error) => {
                tracing::debug!(%error, "not ready");
                ApiError::unavailable().into_response()
            }
        },
        _ => ApiError::route_not_found().into_response(),
    }
}
