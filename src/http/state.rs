//! What the handlers of the public and internal listeners share: the use cases, the
//! settings they read, and the pooled client gateway mode forwards with. Built once by the
//! composition root ([`crate::start`]); it holds no logic, so every handler module can
//! depend on it without depending on another.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;

use super::response::SessionCookie;
use crate::config::CorsConfig;
use crate::erasure::Erasure;
use crate::flush::ReadThrough;
use crate::quota::Quotas;
use crate::routes::RouteTable;
use crate::session::Sessions;

/// What the public and internal handlers share: the use cases, and the settings they read,
/// grouped by the concern that reads them.
pub struct Api {
    pub sessions: Sessions,
    pub erasure: Erasure,
    pub quotas: Quotas,
    /// Write-through on demand; `None` without Supabase.
    pub read_through: Option<ReadThrough>,
    pub browser: Browser,
    pub intake: Intake,
    pub internal: Internal,
    pub forwarding: Forwarding,
}

/// What browsers are told: the session cookie's attributes and cross-origin access.
pub struct Browser {
    pub cookie: SessionCookie,
    /// `None`: no CORS headers.
    pub cors: Option<CorsConfig>,
}

/// How requests are read: body bounds, and whose forwarding headers are believed.
pub struct Intake {
    pub body_limit: usize,
    pub body_read_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

/// The internal API's access.
pub struct Internal {
    /// The bearer tokens accepted (the current one, and the next while clients move to it);
    /// none disables the internal API.
    pub tokens: Vec<String>,
    /// Whether `/internal/` is served on this listener (else on its own, or not at all).
    pub served_here: bool,
}

/// Gateway mode: what the public listener forwards, and the client it forwards with.
pub struct Forwarding {
    pub routes: RouteTable,
    pub upstreams: Upstreams,
}

/// The pooled client every route shares (a clone shares the pool).
#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpConnector, Incoming>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Upstreams { client }
    }
}

impl Upstreams {
    /// Sends a request upstream on a pooled connection.
    pub fn request(&self, request: hyper::Request<Incoming>) -> ResponseFuture {
        self.client.request(request)
    }
}
