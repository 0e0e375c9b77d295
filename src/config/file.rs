//! The TOML file's shape, as serde reads it. Every field is optional; unknown keys are
//! refused. No validation here: the parent module turns these into settings.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::routes::RouteFile;

/// The TOML file's shape. Every field is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) internal_listen: Option<String>,
    pub(super) env: Option<String>,
    #[serde(default)]
    pub(super) redis: RedisFile,
    #[serde(default)]
    pub(super) http: HttpFile,
    #[serde(default)]
    pub(super) session: SessionFile,
    #[serde(default)]
    pub(super) cookie: CookieFile,
    /// Replaces the default policies when present.
    pub(super) quotas: Option<BTreeMap<String, PolicyFile>>,
    pub(super) near_limit_fraction: Option<f64>,
    #[serde(default)]
    pub(super) flush: FlushFile,
    #[serde(default)]
    pub(super) routes: Vec<RouteFile>,
    pub(super) cors: Option<CorsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    pub(super) allowed_origins: Vec<String>,
    pub(super) max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlushFile {
    pub(super) enabled: Option<bool>,
    pub(super) batch_size: Option<usize>,
    pub(super) interval_ms: Option<u64>,
    pub(super) lease_ms: Option<u64>,
    pub(super) max_backlog: Option<u64>,
    pub(super) read_through_per_second: Option<u32>,
    pub(super) drain_ms: Option<u64>,
    pub(super) request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) limit: Option<u64>,
    pub(super) window: Option<String>,
    pub(super) rate: Option<u64>,
    pub(super) period: Option<String>,
    pub(super) burst: Option<u64>,
    pub(super) cost: Option<u64>,
    pub(super) counter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedisFile {
    pub(super) url: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) pool_size: Option<usize>,
    pub(super) shards: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpFile {
    pub(super) body_limit_bytes: Option<usize>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) body_read_timeout_ms: Option<u64>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionFile {
    pub(super) touch_interval_secs: Option<u64>,
    pub(super) creations_per_minute: Option<u32>,
    pub(super) creation_burst: Option<u32>,
    pub(super) creation_ipv4_prefix: Option<u8>,
    pub(super) creation_ipv6_prefix: Option<u8>,
    pub(super) max_creations_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CookieFile {
    pub(super) name: Option<String>,
    pub(super) path: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) same_site: Option<String>,
    pub(super) http_only: Option<bool>,
    pub(super) secure: Option<bool>,
    pub(super) max_age_secs: Option<u64>,
}
