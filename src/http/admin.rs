//! The operator endpoints on the admin listener: `/healthz` (the process answers),
//! `/readyz` (Redis answers too) and `/metrics` (Prometheus exposition), each for `GET` and
//! `HEAD`. Kept off the public listener so probes and scrapes never mix with client traffic.

use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;

use super::body::Body;
use super::error::ApiError;
use super::response::json;
use crate::store::Store;
use crate::telemetry;

/// Refreshes the gauges that are read rather than counted, then renders every metric.
async fn metrics(admin: &Admin) -> Response<Body> {
    telemetry::redis_up(admin.store.is_connected());
    if admin.write_behind {
        match admin.store.backlog().await {
            Ok(backlog) => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let oldest = backlog
                    .oldest_ms
                    .map_or(0, |ms| (now_ms - ms).max(0) as u64);
                telemetry::flush_backlog(backlog.dirty, std::time::Duration::from_millis(oldest));
            }
            Err(error) => tracing::debug!(%error, "cannot read the write-behind backlog"),
        }
    }
    let mut response = Response::new(Body::from(telemetry::render()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// What the admin handlers share.
pub struct Admin {
    pub store: Store,
    /// Report the write-behind backlog (Supabase configured).
    pub write_behind: bool,
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// Entry point for every admin request.
pub async fn handle(admin: Arc<Admin>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
    // hyper sends no body in answer to HEAD, keeping the headers (and Content-Length).
    if known && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
        return ApiError::method_not_allowed("GET, HEAD").into_response();
    }
    match path {
        "/healthz" => json(StatusCode::OK, &Status { status: "ok" }),
        "/readyz" => match admin.store.ping().await {
            Ok(()) => json(StatusCode::OK, &Status { status: "ready" }),
            Err(error) => {
                tracing::debug!(%error, "not ready");
                ApiError::unavailable().into_response()
            }
        },
        "/metrics" => metrics(&admin).await,
        _ => ApiError::route_not_found().into_response(),
    }
}
