//! The one table of settings: each environment variable and TOML key, the form its value
//! takes, and the field of `Config` it sets. The README's configuration table lists the same
//! names (a test keeps the two equal). Checks of one value live in `parse`; checks that need
//! several settings at once run after the table, in `Draft::finish`.
//!
//! The table is applied top to bottom, and order matters in two places: `env` comes first
//! because it sets the defaults of `log_format` and `cookie.secure`, and `quotas` comes before
//! `plans`, which override its policies, and `routes`, whose operations must name one.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{CorsFile, PlanFile, PolicyFile};
use super::form::Form::{self, *};
use super::parse;
use super::plans;
use super::settings::{Environment, LogFormat};
use crate::routes::{RouteFile, RouteTable};

/// One setting and where it may be set; the variable wins over the key.
pub(super) struct Setting {
    /// The TOML key, dotted (`redis.timeout_ms`); `None`: environment only (secrets).
    pub(super) key: Option<&'static str>,
    pub(super) var: Option<&'static str>,
    pub(super) form: Form,
}

const ADDRESS: &str = "an address of the form ip:port";
/// An hour: no timeout or interval of the gateway needs more.
const HOUR_MS: u64 = 3_600_000;
/// Browsers cap a cookie's lifetime at 400 days.
const MAX_COOKIE_AGE_SECS: u64 = 400 * 24 * 60 * 60;

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        key: Some("env"),
        var: Some("SESSIONGATE_ENV"),
        form: Text {
            what: "one of development, production",
            set: |d, v| {
                d.config.environment = parse::environment(&v)?;
                let production = d.config.environment == Environment::Production;
                d.config.cookie.secure = production;
                if production {
                    d.config.log_format = LogFormat::Json;
                }
                Ok(())
            },
        },
    },
    Setting {
        key: Some("log_format"),
        var: Some("SESSIONGATE_LOG_FORMAT"),
        form: Text {
            what: "one of json, text",
            set: |d, v| parse::log_format(&v).map(|value| d.config.log_format = value),
        },
    },
    Setting {
        key: None,
        var: Some("RUST_LOG"),
        form: Text {
            what: "log directives such as info or sessiongate=debug,hyper=warn",
            set: |d, v| parse::log_filter(v).map(|value| d.config.log_filter = value),
        },
    },
    Setting {
        key: Some("listen"),
        var: Some("SESSIONGATE_LISTEN"),
        form: Text {
            what: ADDRESS,
            set: |d, v| parse::address(&v).map(|value| d.config.listen = value),
        },
    },
    Setting {
        key: Some("admin_listen"),
        var: Some("SESSIONGATE_ADMIN_LISTEN"),
        form: Text {
            what: ADDRESS,
            set: |d, v| parse::address(&v).map(|value| d.config.admin_listen = value),
        },
    },
    Setting {
        key: Some("internal_listen"),
        var: Some("SESSIONGATE_INTERNAL_LISTEN"),
        form: Text {
            what: ADDRESS,
            set: |d, v| parse::address(&v).map(|value| d.config.internal_listen = Some(value)),
        },
    },
    Setting {
        key: None,
        var: Some("SESSIONGATE_SERVICE_TOKEN"),
        form: Text {
            what: "a token of at least 16 characters without spaces",
            set: |d, v| parse::service_token(v).map(|value| d.config.service_token = Some(value)),
        },
    },
    Setting {
        key: None,
        var: Some("SESSIONGATE_SERVICE_TOKEN_NEXT"),
        form: Text {
            what: "a token of at least 16 characters without spaces",
            set: |d, v| {
                parse::service_token(v).map(|value| d.config.service_token_next = Some(value))
            },
        },
    },
    Setting {
        key: Some("redis.url"),
        var: Some("REDIS_URL"),
        form: Text {
            what: "a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL",
            set: |d, v| parse::redis_url(v).map(|value| d.config.redis_url = value),
        },
    },
    Setting {
        key: Some("redis.timeout_ms"),
        var: Some("SESSIONGATE_REDIS_TIMEOUT_MS"),
        form: Whole {
            min: 1,
            max: 60_000,
            unit: "milliseconds",
            set: |d, n| d.config.redis_timeout = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("redis.pool_size"),
        var: None,
        form: Whole {
            min: 1,
            max: 64,
            unit: "connections",
            set: |d, n| d.config.redis_pool_size = n as usize,
        },
    },
    Setting {
        key: Some("redis.near_cache_entries"),
        var: Some("SESSIONGATE_NEAR_CACHE_ENTRIES"),
        form: Whole {
            min: 0,
            max: 10_000_000,
            unit: "sessions",
            set: |d, n| d.config.near_cache_entries = n as usize,
        },
    },
    Setting {
        key: Some("redis.allow_eviction"),
        var: None,
        form: Flag {
            set: |d, b| d.config.redis_allow_eviction = b,
        },
    },
    Setting {
        key: Some("redis.shards"),
        var: None,
        form: Whole {
            min: 1,
            max: 16_384,
            unit: "",
            set: |d, n| d.config.redis_shards = n as u32,
        },
    },
    Setting {
        key: Some("http.serving_threads"),
        var: Some("SESSIONGATE_SERVING_THREADS"),
        // Each thread serves the public listener with its own runtime and Redis connections.
        form: Whole {
            min: 0,
            max: 256,
            unit: "threads",
            set: |d, n| d.config.serving_threads = n as usize,
        },
    },
    Setting {
        key: Some("http.body_limit_bytes"),
        var: Some("SESSIONGATE_BODY_LIMIT_BYTES"),
        form: Whole {
            min: 64,
            max: 16 * 1024 * 1024,
            unit: "bytes",
            set: |d, n| d.config.body_limit = n as usize,
        },
    },
    Setting {
        key: Some("http.max_header_bytes"),
        var: None,
        // A browser's head with its cookies needs a few KiB; past 1 MiB a head is an attack.
        form: Whole {
            min: 4 * 1024,
            max: 1024 * 1024,
            unit: "bytes",
            set: |d, n| d.config.max_header_bytes = n as usize,
        },
    },
    Setting {
        key: Some("http.header_read_timeout_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.header_read_timeout = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("http.keep_alive_timeout_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.keep_alive_timeout = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("http.body_read_timeout_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.body_read_timeout = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("http.shutdown_grace_ms"),
        var: None,
        form: Whole {
            min: 0,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.shutdown_grace = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("http.trusted_proxies"),
        var: None,
        form: List {
            what: "a list of IP addresses or CIDR blocks",
            set: |d, v| parse::networks(&v).map(|value| d.config.trusted_proxies = value),
        },
    },
    Setting {
        key: Some("session.touch_interval_secs"),
        var: None,
        // The contract allows `last_active` to be 60 s stale, no more.
        form: Whole {
            min: 0,
            max: 60,
            unit: "seconds",
            set: |d, n| d.config.touch_interval = Duration::from_secs(n),
        },
    },
    Setting {
        key: Some("session.creations_per_minute"),
        var: None,
        form: Whole {
            min: 1,
            max: u32::MAX as u64,
            unit: "",
            set: |d, n| d.config.creation_throttle.per_minute = parse::at_least_one(n),
        },
    },
    Setting {
        key: Some("session.creation_burst"),
        var: None,
        form: Whole {
            min: 1,
            max: u32::MAX as u64,
            unit: "",
            set: |d, n| d.config.creation_throttle.burst = parse::at_least_one(n),
        },
    },
    Setting {
        key: Some("session.creation_ipv4_prefix"),
        var: None,
        form: Whole {
            min: 1,
            max: 32,
            unit: "prefix bits",
            set: |d, n| d.config.creation_throttle.ipv4_prefix = n as u8,
        },
    },
    Setting {
        key: Some("session.creation_ipv6_prefix"),
        var: None,
        form: Whole {
            min: 1,
            max: 128,
            unit: "prefix bits",
            set: |d, n| d.config.creation_throttle.ipv6_prefix = n as u8,
        },
    },
    Setting {
        key: Some("session.max_creations_per_second"),
        var: None,
        form: Whole {
            min: 1,
            max: u32::MAX as u64,
            unit: "",
            set: |d, n| d.config.creation_throttle.max_per_second = parse::at_least_one(n),
        },
    },
    Setting {
        key: Some("cookie.name"),
        var: None,
        form: Text {
            what: "ASCII letters, digits, '_' or '-'",
            set: |d, v| parse::cookie_name(v).map(|value| d.config.cookie.name = value),
        },
    },
    Setting {
        key: Some("cookie.path"),
        var: None,
        form: Text {
            what: "a path starting with '/'",
            set: |d, v| parse::cookie_path(v).map(|value| d.config.cookie.path = value),
        },
    },
    Setting {
        key: Some("cookie.domain"),
        var: None,
        form: Text {
            what: "a host name",
            set: |d, v| parse::cookie_domain(v).map(|value| d.config.cookie.domain = Some(value)),
        },
    },
    Setting {
        key: Some("cookie.same_site"),
        var: None,
        form: Text {
            what: "one of lax, strict, none",
            set: |d, v| parse::same_site(&v).map(|value| d.config.cookie.same_site = value),
        },
    },
    Setting {
        key: Some("cookie.http_only"),
        var: None,
        form: Flag {
            set: |d, b| d.config.cookie.http_only = b,
        },
    },
    Setting {
        key: Some("cookie.secure"),
        var: None,
        form: Flag {
            set: |d, b| d.config.cookie.secure = b,
        },
    },
    Setting {
        key: Some("cookie.max_age_secs"),
        var: None,
        form: Whole {
            min: 1,
            max: MAX_COOKIE_AGE_SECS,
            unit: "seconds",
            set: |d, n| d.config.cookie.max_age = Duration::from_secs(n),
        },
    },
    Setting {
        key: Some("near_limit_fraction"),
        var: None,
        form: Fraction {
            set: |d, x| d.config.near_limit = x,
        },
    },
    Setting {
        key: Some("quotas"),
        var: None,
        form: Section {
            what: "tables [quotas.<operation>]",
            set: |d, value| {
                let files: BTreeMap<String, PolicyFile> = parse::section("quotas", value)?;
                d.config.policies = files
                    .into_iter()
                    .map(|(operation, file)| parse::policy(operation, file))
                    .collect::<Result<_, _>>()?;
                Ok(())
            },
        },
    },
    Setting {
        key: Some("plans"),
        var: None,
        form: Section {
            what: "tables [plans.<name>.quotas.<operation>]",
            set: |d, value| {
                let files: BTreeMap<String, PlanFile> = parse::section("plans", value)?;
                d.config.plans = plans::apply(&mut d.config.policies, files)?;
                Ok(())
            },
        },
    },
    Setting {
        key: Some("routes"),
        var: None,
        form: Section {
            what: "tables [[routes]]",
            set: |d, value| {
                let files: Vec<RouteFile> = parse::section("routes", value)?;
                let policies = &d.config.policies;
                d.config.routes = RouteTable::parse(files, |operation| {
                    policies.iter().any(|p| p.operation == operation)
                })
                .map_err(|(setting, reason)| ConfigError::new(setting, reason))?;
                Ok(())
            },
        },
    },
    Setting {
        key: Some("cors"),
        var: None,
        form: Section {
            what: "a table [cors]",
            set: |d, value| {
                let file: CorsFile = parse::section("cors", value)?;
                d.config.cors = Some(parse::cors(file)?);
                Ok(())
            },
        },
    },
    // SUPABASE_REST_URL comes after SUPABASE_URL so that it wins when both are set.
    Setting {
        key: None,
        var: Some("SUPABASE_URL"),
        form: Text {
            what: "an http:// or https:// URL",
            set: |d, v| {
                let rest = format!("{}/rest/v1", parse::http_url(&v)?);
                d.supabase_url = Some(("SUPABASE_URL", rest));
                Ok(())
            },
        },
    },
    Setting {
        key: None,
        var: Some("SUPABASE_REST_URL"),
        form: Text {
            what: "an http:// or https:// URL",
            set: |d, v| {
                d.supabase_url = Some(("SUPABASE_REST_URL", parse::http_url(&v)?));
                Ok(())
            },
        },
    },
    Setting {
        key: None,
        var: Some("SUPABASE_SERVICE_ROLE_KEY"),
        form: Text {
            what: "the service role key",
            set: |d, v| {
                d.supabase_key = Some(v).filter(|key| !key.is_empty());
                Ok(())
            },
        },
    },
    Setting {
        key: None,
        var: Some("SUPABASE_API_KEY"),
        form: Text {
            what: "a project API key",
            set: |d, v| {
                d.supabase_api_key = Some(v).filter(|key| !key.is_empty());
                Ok(())
            },
        },
    },
    Setting {
        key: Some("flush.enabled"),
        var: None,
        form: Flag {
            set: |d, b| d.config.flush_enabled = b,
        },
    },
    Setting {
        key: Some("flush.batch_size"),
        var: None,
        form: Whole {
            min: 1,
            max: 10_000,
            unit: "rows",
            set: |d, n| d.config.flush.batch_size = n as usize,
        },
    },
    Setting {
        key: Some("flush.interval_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.flush.interval = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("flush.lease_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.flush.lease = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("flush.max_backlog"),
        var: None,
        form: Whole {
            min: 1,
            max: 1_000_000_000,
            unit: "sessions",
            set: |d, n| d.config.flush.max_backlog = n,
        },
    },
    Setting {
        key: Some("flush.read_through_per_second"),
        var: None,
        form: Whole {
            min: 1,
            max: 1_000_000,
            unit: "",
            set: |d, n| d.config.flush.read_through_per_second = parse::at_least_one(n),
        },
    },
    Setting {
        key: Some("flush.read_through_timeout_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: 10_000,
            unit: "milliseconds",
            set: |d, n| d.config.flush.read_through_timeout = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("flush.drain_ms"),
        var: None,
        form: Whole {
            min: 0,
            max: HOUR_MS,
            unit: "milliseconds",
            set: |d, n| d.config.flush.drain = Duration::from_millis(n),
        },
    },
    Setting {
        key: Some("flush.request_timeout_ms"),
        var: None,
        form: Whole {
            min: 1,
            max: 600_000,
            unit: "milliseconds",
            set: |d, n| d.supabase_timeout = Duration::from_millis(n),
        },
    },
];
