//! The operator endpoints on the admin listener: `/healthz` (the process answers), `/readyz`
//! (this replica takes traffic: started, not draining), `/readyz/redis` (Redis answers) and
//! `/metrics` (Prometheus exposition), each for `GET` and `HEAD`. Kept off the public
//! listener so probes and scrapes never mix with client traffic.

use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;

use super::body::Body;
use super::error::ApiError;
use super::response::json;
use crate::health::Health;
use crate::telemetry;

/// Refreshes the gauges that are read rather than counted, then renders every metric.
async fn metrics(admin: &Admin) -> Response<Body> {
    admin.health.refresh_gauges().await;
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
    pub health: Health,
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// Entry point for every admin request.
pub async fn handle(admin: Arc<Admin>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    let known = matches!(path, "/healthz" | "/readyz" | "/readyz/redis" | "/metrics");
    // hyper sends no body in answer to HEAD, keeping the headers (and Content-Length).
    if known && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
        return ApiError::method_not_allowed("GET, HEAD").into_response();
    }
    match path {
        "/healthz" => json(StatusCode::OK, &Status { status: "ok" }),
        "/readyz" if admin.health.draining() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status { status: "draining" },
        ),
        "/readyz" => json(StatusCode::OK, &Status { status: "ready" }),
        "/readyz/redis" => match admin.health.redis_answers().await {
            Ok(()) => json(StatusCode::OK, &Status { status: "ready" }),
            Err(_) => ApiError::unavailable().into_response(),
        },
        "/metrics" => metrics(&admin).await,
        _ => ApiError::route_not_found().into_response(),
    }
}
