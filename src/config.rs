//! Configuration: where settings come from and what they may be.
//!
//! Settings are read once at start-up from the environment (the 12-factor names of the
//! contract) on top of an optional TOML file named by `SESSIONGATE_CONFIG`; the environment
//! wins. Anything unknown or invalid stops start-up with one line naming the setting.
//! This module validates values; it never opens sockets or talks to Redis.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::flush::{FlushConfig, SupabaseConfig};
use crate::model::quota::{self, Counter, Policy, Window};
use crate::routes::{RouteFile, RouteTable};
use crate::throttle::ThrottleConfig;

/// Where the gateway runs; production turns on `Secure` cookies and JSON logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines (the default in production).
    Json,
    /// Readable lines (the default elsewhere).
    Text,
}

/// Cookie attributes of the session cookie (contract: "each may be overridden").
#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub same_site: cookie::SameSite,
    pub http_only: bool,
    pub secure: bool,
    pub max_age: Duration,
}

/// Everything the gateway needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// A listener of its own for `/internal/`, kept off the public network; `None` serves
    /// the internal API on the public listener.
    pub internal_listen: Option<SocketAddr>,
    pub environment: Environment,
    pub log_format: LogFormat,
    pub redis_url: String,
    /// Upper bound on one Redis round trip; past it the request answers 503.
    pub redis_timeout: Duration,
    pub redis_pool_size: usize,
    /// Keyspace shards (see `store`); fixed for the lifetime of the data.
    pub redis_shards: u32,
    pub body_limit: usize,
    /// Time a client gets to send its request headers (slowloris bound).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 past it), and the buffer a connection may hold.
    pub max_header_bytes: usize,
    /// Time a client gets to send a request body (slow-body bound).
    pub body_read_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub session_ttl: Duration,
    /// How stale `last_active` may get before a read sends a touch.
    pub touch_interval: Duration,
    pub cookie: CookieConfig,
    /// Quota policies, one per metered operation.
    pub policies: Vec<Policy>,
    /// Share of a quota past which grants count as `near_limit` in metrics.
    pub near_limit: f64,
    /// Bearer token of the internal API; `None` disables the internal routes.
    pub service_token: Option<String>,
    /// Session creations allowed per client network, and per gateway process.
    pub creation_throttle: ThrottleConfig,
    /// Peers whose `X-Forwarded-For` is believed when finding a client's IP.
    pub trusted_proxies: Vec<IpNet>,
    /// The system of record; `None` turns write-behind and read-through off.
    pub supabase: Option<SupabaseConfig>,
    pub flush: FlushConfig,
    /// Run the flusher in this process (else only other gateways or `flush` mode do).
    pub flush_enabled: bool,
    /// Gateway mode: upstreams the public listener forwards to (see `routes`).
    pub routes: RouteTable,
    /// `None`: no CORS headers at all (browsers then refuse cross-origin reads).
    pub cors: Option<CorsConfig>,
}

/// Cross-origin access for browser apps served from other origins.
#[derive(Clone, Debug)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) allowed to call the API with credentials.
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
}

const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            internal_listen: None,
            environment: Environment::Development,
            log_format: LogFormat::Text,
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_timeout: Duration::from_millis(250),
            redis_pool_size: 4,
            redis_shards: crate::store::DEFAULT_SHARDS,
            body_limit: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            session_ttl: SESSION_TTL,
            touch_interval: Duration::from_secs(60),
            cookie: CookieConfig {
                name: "concept_session".to_string(),
                path: "/".to_string(),
                domain: None,
                same_site: cookie::SameSite::Lax,
                http_only: true,
                secure: false,
                max_age: SESSION_TTL,
            },
            policies: Policy::defaults(),
            near_limit: 0.8,
            service_token: None,
            creation_throttle: ThrottleConfig::default(),
            trusted_proxies: Vec::new(),
            supabase: None,
            flush: FlushConfig::default(),
            flush_enabled: true,
            routes: RouteTable::default(),
            cors: None,
        }
    }
}

/// A setting that could not be accepted; its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    setting: String,
    reason: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            setting: one_line(setting.into()),
            reason: one_line(reason.into()),
        }
    }
}

/// Escapes control characters (a variable name or file path may hold a line break), so the
/// start-up error stays one line.
fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The `SESSIONGATE_*` names this version understands; any other is a typo worth stopping for.
const KNOWN_VARIABLES: &[&str] = &[
    "SESSIONGATE_LISTEN",
    "SESSIONGATE_ADMIN_LISTEN",
    "SESSIONGATE_INTERNAL_LISTEN",
    "SESSIONGATE_ENV",
    "SESSIONGATE_CONFIG",
    "SESSIONGATE_REDIS_TIMEOUT_MS",
    "SESSIONGATE_BODY_LIMIT_BYTES",
    "SESSIONGATE_LOG_FORMAT",
    "SESSIONGATE_SERVICE_TOKEN",
];

/// Kubernetes injects `<SERVICE>_PORT...` and `<SERVICE>_SERVICE_HOST/PORT...` for every
/// Service in the namespace; a Service named `sessiongate` produces these. They are not
/// settings, so they are not typos either.
fn is_service_link(name: &str) -> bool {
    name.starts_with("SESSIONGATE_PORT")
        || name.starts_with("SESSIONGATE_SERVICE_HOST")
        || name.starts_with("SESSIONGATE_SERVICE_PORT")
}

/// Bounds of `http.max_header_bytes`: a browser's head with its cookies needs a few KiB;
/// past 1 MiB a head is an attack, not a request.
const MIN_HEADER_BYTES: usize = 4 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Shortest service token accepted: a guessable token would open the internal API.
const MIN_TOKEN_LEN: usize = 16;

/// The TOML file's shape. Every field is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    internal_listen: Option<String>,
    env: Option<String>,
    #[serde(default)]
    redis: RedisFile,
    #[serde(default)]
    http: HttpFile,
    #[serde(default)]
    session: SessionFile,
    #[serde(default)]
    cookie: CookieFile,
    /// Replaces the default policies when present.
    quotas: Option<BTreeMap<String, PolicyFile>>,
    near_limit_fraction: Option<f64>,
    #[serde(default)]
    flush: FlushFile,
    #[serde(default)]
    routes: Vec<RouteFile>,
    cors: Option<CorsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorsFile {
    allowed_origins: Vec<String>,
    max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushFile {
    enabled: Option<bool>,
    batch_size: Option<usize>,
    interval_ms: Option<u64>,
    lease_ms: Option<u64>,
    max_backlog: Option<u64>,
    read_through_per_second: Option<u32>,
    drain_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    limit: Option<u64>,
    window: Option<String>,
    rate: Option<u64>,
    period: Option<String>,
    burst: Option<u64>,
    cost: Option<u64>,
    counter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisFile {
    url: Option<String>,
    timeout_ms: Option<u64>,
    pool_size: Option<usize>,
    shards: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    body_limit_bytes: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    body_read_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    touch_interval_secs: Option<u64>,
    creations_per_minute: Option<u32>,
    creation_burst: Option<u32>,
    creation_ipv4_prefix: Option<u8>,
    creation_ipv6_prefix: Option<u8>,
    max_creations_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CookieFile {
    name: Option<String>,
    path: Option<String>,
    domain: Option<String>,
    same_site: Option<String>,
    http_only: Option<bool>,
    secure: Option<bool>,
    max_age_secs: Option<u64>,
}

impl Config {
    /// Reads the process environment (and the TOML file it may name).
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_vars(&vars)
    }

    /// Builds a configuration from the given variables, reading `SESSIONGATE_CONFIG` if set.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        if let Some(unknown) = vars
            .keys()
            .filter(|k| k.starts_with("SESSIONGATE_") && !KNOWN_VARIABLES.contains(&k.as_str()))
            .filter(|k| !is_service_link(k))
            .min()
        {
            return Err(ConfigError::new(unknown.as_str(), "unknown setting"));
        }
        let file = match vars.get("SESSIONGATE_CONFIG") {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new("SESSIONGATE_CONFIG", format!("{path}: {e}")))?;
                Self::parse_file(&text)
                    .map_err(|e| ConfigError::new("SESSIONGATE_CONFIG", format!("{path}: {e}")))?
            }
            None => FileConfig::default(),
        };
        Config::merge(file, vars)
    }

    /// Parses the text of a TOML configuration file, checking its values.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = Self::parse_file(text).map_err(|e| ConfigError::new("TOML file", e))?;
        Config::merge(file, &HashMap::new())
    }

    fn parse_file(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    fn merge(file: FileConfig, vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let pick = |var: &str, from_file: Option<String>, file_key: &str| match vars.get(var) {
            Some(v) => Some((var.to_string(), v.clone())),
            None => from_file.map(|v| (file_key.to_string(), v)),
        };

        if let Some((name, value)) = pick("SESSIONGATE_LISTEN", file.listen, "listen") {
            config.listen = parse_addr(&name, &value)?;
        }
        if let Some((name, value)) = pick(
            "SESSIONGATE_ADMIN_LISTEN",
            file.admin_listen,
            "admin_listen",
        ) {
            config.admin_listen = parse_addr(&name, &value)?;
        }
        if let Some((name, value)) = pick(
            "SESSIONGATE_INTERNAL_LISTEN",
            file.internal_listen,
            "internal_listen",
        ) {
            config.internal_listen = Some(parse_addr(&name, &value)?);
        }
        if let Some((name, value)) = pick("SESSIONGATE_ENV", file.env, "env") {
            config.environment = match value.as_str() {
                "development" | "dev" | "local" => Environment::Development,
                "production" | "prod" => Environment::Production,
                other => {
                    return Err(ConfigError::new(
                        name,
                        format!("{other:?} is not one of development, production"),
                    ))
                }
            };
        }
        config.log_format = match vars.get("SESSIONGATE_LOG_FORMAT").map(String::as_str) {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "SESSIONGATE_LOG_FORMAT",
                    format!("{other:?} is not one of json, text"),
                ))
            }
            None if config.environment == Environment::Production => LogFormat::Json,
            None => LogFormat::Text,
        };
        if let Some((name, value)) = pick("REDIS_URL", file.redis.url, "redis.url") {
            let known_scheme = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "redis-sentinel://",
            ]
            .iter()
            .any(|scheme| value.starts_with(scheme));
            if !known_scheme || fred::types::config::Config::from_url(&value).is_err() {
                return Err(ConfigError::new(
                    name,
                    format!("{value:?} is not a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL"),
                ));
            }
            config.redis_url = value;
        }
        let timeout_ms = pick_u64(vars, "SESSIONGATE_REDIS_TIMEOUT_MS", file.redis.timeout_ms)?;
        if let Some(ms) = timeout_ms {
            config.redis_timeout = positive_millis("redis timeout", ms)?;
        }
        if let Some(size) = file.redis.pool_size {
            if !(1..=64).contains(&size) {
                return Err(ConfigError::new(
                    "redis.pool_size",
                    "must be between 1 and 64",
                ));
            }
            config.redis_pool_size = size;
        }
        if let Some(shards) = file.redis.shards {
            if !(1..=16_384).contains(&shards) {
                return Err(ConfigError::new(
                    "redis.shards",
                    "must be between 1 and 16384",
                ));
            }
            config.redis_shards = shards;
        }
        if let Some(limit) = pick_u64(
            vars,
            "SESSIONGATE_BODY_LIMIT_BYTES",
            file.http.body_limit_bytes.map(|v| v as u64),
        )? {
            if !(64..=16 * 1024 * 1024).contains(&limit) {
                return Err(ConfigError::new(
                    "body limit",
                    "must be between 64 bytes and 16 MiB",
                ));
            }
            config.body_limit = limit as usize;
        }
        if let Some(ms) = file.http.header_read_timeout_ms {
            config.header_read_timeout = positive_millis("http.header_read_timeout_ms", ms)?;
        }
        if let Some(bytes) = file.http.max_header_bytes {
            if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&bytes) {
                return Err(ConfigError::new(
                    "http.max_header_bytes",
                    format!("must be from {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES} bytes"),
                ));
            }
            config.max_header_bytes = bytes;
        }
        if let Some(ms) = file.http.body_read_timeout_ms {
            config.body_read_timeout = positive_millis("http.body_read_timeout_ms", ms)?;
        }
        if let Some(ms) = file.http.shutdown_grace_ms {
            config.shutdown_grace = Duration::from_millis(ms);
        }
        if let Some(secs) = file.session.touch_interval_secs {
            if secs > 60 {
                return Err(ConfigError::new(
                    "session.touch_interval_secs",
                    "must be at most 60 (the contract allows last_active to be 60 s stale)",
                ));
            }
            config.touch_interval = Duration::from_secs(secs);
        }
        config.creation_throttle = creation_throttle(&file.session)?;
        if let Some(proxies) = file.http.trusted_proxies {
            config.trusted_proxies = proxies
                .iter()
                .map(|p| parse_net(p))
                .collect::<Result<_, _>>()?;
        }
        if let Some(token) = vars.get("SESSIONGATE_SERVICE_TOKEN") {
            if token.len() < MIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    "SESSIONGATE_SERVICE_TOKEN",
                    format!("must be at least {MIN_TOKEN_LEN} characters without spaces"),
                ));
            }
            config.service_token = Some(token.clone());
        }
        config.supabase = supabase(vars, file.flush.request_timeout_ms)?;
        let flush = &mut config.flush;
        if let Some(size) = file.flush.batch_size {
            if !(1..=10_000).contains(&size) {
                return Err(ConfigError::new(
                    "flush.batch_size",
                    "must be between 1 and 10000",
                ));
            }
            flush.batch_size = size;
        }
        if let Some(ms) = file.flush.interval_ms {
            flush.interval = positive_millis("flush.interval_ms", ms)?;
        }
        if let Some(ms) = file.flush.lease_ms {
            flush.lease = positive_millis("flush.lease_ms", ms)?;
        }
        if let Some(max) = file.flush.max_backlog {
            flush.max_backlog = max.max(1);
        }
        if let Some(rate) = file.flush.read_through_per_second {
            flush.read_through_per_second = NonZeroU32::new(rate).ok_or_else(|| {
                ConfigError::new("flush.read_through_per_second", "must be at least 1")
            })?;
        }
        if let Some(ms) = file.flush.drain_ms {
            flush.drain = Duration::from_millis(ms);
        }
        if let Some(enabled) = file.flush.enabled {
            config.flush_enabled = enabled;
        }
        if let Some(fraction) = file.near_limit_fraction {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(ConfigError::new("near_limit_fraction", "must be in (0, 1]"));
            }
            config.near_limit = fraction;
        }
        if let Some(policies) = file.quotas {
            config.policies = policies
                .into_iter()
                .map(|(operation, policy)| parse_policy(operation, policy))
                .collect::<Result<_, _>>()?;
        }
        let policies = &config.policies;
        config.routes = RouteTable::parse(file.routes, |operation| {
            policies.iter().any(|p| p.operation == operation)
        })
        .map_err(|(setting, reason)| ConfigError::new(setting, reason))?;
        if let Some(cors) = file.cors {
            config.cors = Some(parse_cors(cors)?);
        }

        let cookie = &mut config.cookie;
        cookie.secure = config.environment == Environment::Production;
        if let Some(name) = file.cookie.name {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::new(
                    "cookie.name",
                    "must be non-empty ASCII letters, digits, '_' or '-'",
                ));
            }
            cookie.name = name;
        }
        if let Some(path) = file.cookie.path {
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b';') {
                return Err(ConfigError::new(
                    "cookie.path",
                    "must start with '/' and hold no ';' or control characters",
                ));
            }
            cookie.path = path;
        }
        if let Some(domain) = file.cookie.domain {
            if domain.is_empty()
                || domain
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b';' || b == b' ')
            {
                return Err(ConfigError::new("cookie.domain", "must be a host name"));
            }
            cookie.domain = Some(domain);
        }
        if let Some(same_site) = file.cookie.same_site {
            cookie.same_site = match same_site.to_ascii_lowercase().as_str() {
                "lax" => cookie::SameSite::Lax,
                "strict" => cookie::SameSite::Strict,
                "none" => cookie::SameSite::None,
                other => {
                    return Err(ConfigError::new(
                        "cookie.same_site",
                        format!("{other:?} is not one of lax, strict, none"),
                    ))
                }
            };
        }
        if let Some(http_only) = file.cookie.http_only {
            cookie.http_only = http_only;
        }
        if let Some(secure) = file.cookie.secure {
            cookie.secure = secure;
        }
        if cookie.same_site == cookie::SameSite::None && !cookie.secure {
            return Err(ConfigError::new(
                "cookie.same_site",
                "\"none\" requires secure = true (browsers drop such cookies otherwise)",
            ));
        }
        if let Some(secs) = file.cookie.max_age_secs {
            cookie.max_age = Duration::from_secs(secs);
        }
        cookie_prefix_rules(cookie)?;
        Ok(config)
    }
}

/// Browsers set a `__Secure-` cookie only with `Secure`, and a `__Host-` one only with
/// `Secure`, `Path=/` and no `Domain` (so no sibling subdomain or deeper path can plant a
/// cookie of that name); a configuration they would ignore is refused here instead.
fn cookie_prefix_rules(cookie: &CookieConfig) -> Result<(), ConfigError> {
    let name = cookie.name.to_ascii_lowercase();
    let host_only = name.starts_with("__host-");
    if (host_only || name.starts_with("__secure-")) && !cookie.secure {
        return Err(ConfigError::new(
            "cookie.secure",
            format!("{:?} needs secure = true", cookie.name),
        ));
    }
    if host_only && cookie.path != "/" {
        return Err(ConfigError::new(
            "cookie.path",
            format!("{:?} needs path = \"/\"", cookie.name),
        ));
    }
    if host_only && cookie.domain.is_some() {
        return Err(ConfigError::new(
            "cookie.domain",
            format!("{:?} must not have a domain", cookie.name),
        ));
    }
    Ok(())
}

/// `SUPABASE_REST_URL` (or `SUPABASE_URL` + `/rest/v1`) and `SUPABASE_SERVICE_ROLE_KEY`.
fn supabase(
    vars: &HashMap<String, String>,
    timeout_ms: Option<u64>,
) -> Result<Option<SupabaseConfig>, ConfigError> {
    let (name, rest_url) = match (vars.get("SUPABASE_REST_URL"), vars.get("SUPABASE_URL")) {
        (Some(rest), _) => ("SUPABASE_REST_URL", rest.trim_end_matches('/').to_string()),
        (None, Some(base)) => (
            "SUPABASE_URL",
            format!("{}/rest/v1", base.trim_end_matches('/')),
        ),
        (None, None) => return Ok(None),
    };
    if !(rest_url.starts_with("http://") || rest_url.starts_with("https://")) {
        return Err(ConfigError::new(name, "must be an http:// or https:// URL"));
    }
    let key = vars
        .get("SUPABASE_SERVICE_ROLE_KEY")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "SUPABASE_SERVICE_ROLE_KEY",
                format!("is required when {name} is set"),
            )
        })?;
    Ok(Some(SupabaseConfig {
        rest_url,
        service_role_key: key.clone(),
        request_timeout: positive_millis("flush.request_timeout_ms", timeout_ms.unwrap_or(10_000))?,
    }))
}

fn parse_cors(file: CorsFile) -> Result<CorsConfig, ConfigError> {
    for origin in &file.allowed_origins {
        let uri: Option<http::Uri> = origin.parse().ok();
        let exact = !origin.ends_with('/')
            && uri.as_ref().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.path() == "/"
                    && uri.query().is_none()
            });
        if !exact {
            return Err(ConfigError::new(
                "cors.allowed_origins",
                format!("{origin:?} is not an origin like https://app.example.com (no path, no wildcard)"),
            ));
        }
    }
    Ok(CorsConfig {
        allowed_origins: file.allowed_origins,
        max_age: Duration::from_secs(file.max_age_secs.unwrap_or(600)),
    })
}

fn parse_net(text: &str) -> Result<IpNet, ConfigError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                "http.trusted_proxies",
                format!("{text:?} is not an IP address or CIDR block"),
            )
        })
}

fn parse_policy(operation: String, file: PolicyFile) -> Result<Policy, ConfigError> {
    let name = format!("quotas.{operation}");
    let valid_name = !operation.is_empty()
        && operation.len() <= 64
        && operation
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(ConfigError::new(
            name,
            "operation names are 1-64 characters of a-z, 0-9, '_' and '-'",
        ));
    }
    let setting = |key: &str| format!("{name}.{key}");
    let (limit, window) = match (file.limit, file.window, file.rate, file.period, file.burst) {
        (Some(limit), Some(window), None, None, None) => {
            let window =
                quota::parse_window(&window).map_err(|e| ConfigError::new(setting("window"), e))?;
            (limit, window)
        }
        (None, None, Some(rate), Some(period), Some(burst)) => {
            let period = quota::parse_duration(&period)
                .map_err(|e| ConfigError::new(setting("period"), e))?;
            let interval_ms = (period.as_millis() as u64).checked_div(rate).unwrap_or(0);
            if interval_ms == 0 {
                return Err(ConfigError::new(
                    setting("rate"),
                    "must be at least 1 and at most one per millisecond",
                ));
            }
            (
                burst,
                Window::Gcra {
                    interval: Duration::from_millis(interval_ms),
                },
            )
        }
        _ => {
            return Err(ConfigError::new(
                name,
                "give either limit + window, or rate + period + burst (token bucket)",
            ))
        }
    };
    if limit == 0 || limit > 1_000_000_000 {
        return Err(ConfigError::new(
            setting("limit"),
            "must be between 1 and 1000000000",
        ));
    }
    let default_cost = file.cost.unwrap_or(1);
    if default_cost == 0 || default_cost > limit {
        return Err(ConfigError::new(
            setting("cost"),
            "must be at least 1 and at most the limit",
        ));
    }
    let counter = match file.counter {
        None => None,
        Some(counter) => Some(Counter::parse(&counter).ok_or_else(|| {
            ConfigError::new(
                setting("counter"),
                format!(
                    "{counter:?} is not concepts_generated, concepts_refined or concepts_stored"
                ),
            )
        })?),
    };
    Ok(Policy {
        operation,
        limit,
        window,
        default_cost,
        counter,
    })
}

fn parse_addr(name: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("{value:?} is not an address of the form ip:port"),
        )
    })
}

fn pick_u64(
    vars: &HashMap<String, String>,
    var: &str,
    from_file: Option<u64>,
) -> Result<Option<u64>, ConfigError> {
    match vars.get(var) {
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::new(var, format!("{v:?} is not a whole number"))),
        None => Ok(from_file),
    }
}

fn positive_millis(name: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(name, "must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

/// The `[session]` keys of the creation throttle.
fn creation_throttle(file: &SessionFile) -> Result<ThrottleConfig, ConfigError> {
    let mut throttle = ThrottleConfig::default();
    let at_least_one = |key: &str, n: u32| {
        NonZeroU32::new(n).ok_or_else(|| ConfigError::new(key, "must be at least 1"))
    };
    if let Some(n) = file.creations_per_minute {
        throttle.per_minute = at_least_one("session.creations_per_minute", n)?;
    }
    if let Some(n) = file.creation_burst {
        throttle.burst = at_least_one("session.creation_burst", n)?;
    }
    if let Some(n) = file.max_creations_per_second {
        throttle.max_per_second = at_least_one("session.max_creations_per_second", n)?;
    }
    let prefix = |key: &str, bits: u8, max: u8| match bits {
        1.. if bits <= max => Ok(bits),
        _ => Err(ConfigError::new(
            key,
            format!("must be a prefix length from 1 to {max}"),
        )),
    };
    if let Some(bits) = file.creation_ipv4_prefix {
        throttle.ipv4_prefix = prefix("session.creation_ipv4_prefix", bits, 32)?;
    }
    if let Some(bits) = file.creation_ipv6_prefix {
        throttle.ipv6_prefix = prefix("session.creation_ipv6_prefix", bits, 128)?;
    }
    Ok(throttle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = Config::from_vars(&HashMap::new()).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.redis_timeout, Duration::from_millis(250));
        assert_eq!(config.body_limit, 16 * 1024);
        assert_eq!(config.cookie.max_age.as_secs(), 2_592_000);
        assert!(!config.cookie.secure);
    }

    #[test]
    fn production_turns_secure_cookies_on() {
        let config = Config::from_vars(&vars(&[("SESSIONGATE_ENV", "production")])).expect("valid");
        assert!(config.cookie.secure);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_setting() {
        let err = Config::from_vars(&vars(&[("SESSIONGATE_LISTEN", "nowhere")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: SESSIONGATE_LISTEN: \"nowhere\" is not an address of the form ip:port"
        );
        let links = vars(&[
            ("SESSIONGATE_PORT", "tcp://10.0.0.1:8080"),
            ("SESSIONGATE_SERVICE_HOST", "10.0.0.1"),
        ]);
        assert!(
            Config::from_vars(&links).is_ok(),
            "Kubernetes service links are not settings"
        );
        let err = Config::from_vars(&vars(&[("SESSIONGATE_LSITEN", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: SESSIONGATE_LSITEN: unknown setting"
        );
        let err = Config::from_vars(&vars(&[("REDIS_URL", "http://x")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid configuration: REDIS_URL:"),
            "{err}"
        );
        let err = Config::from_vars(&vars(&[("SESSIONGATE_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("SESSIONGATE_LOG_FORMAT"), "{err}");
        let err = Config::from_vars(&vars(&[("SESSIONGATE_REDIS_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
    }

    #[test]
    fn toml_file_is_read_and_environment_wins() {
        let config =
            Config::from_toml("listen = \"0.0.0.0:1234\"\n[cookie]\nsame_site = \"strict\"\n")
                .expect("valid");
        assert_eq!(config.listen.to_string(), "0.0.0.0:1234");
        assert_eq!(config.cookie.same_site, cookie::SameSite::Strict);

        let dir = std::env::temp_dir().join(format!("sessiongate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:1234\"\n[redis]\ntimeout_ms = 100\n",
        )
        .expect("write");
        let path = path.to_string_lossy().to_string();
        let config = Config::from_vars(&vars(&[
            ("SESSIONGATE_CONFIG", &path),
            ("SESSIONGATE_LISTEN", "127.0.0.1:5555"),
        ]))
        .expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:5555");
        assert_eq!(config.redis_timeout, Duration::from_millis(100));
    }

    #[test]
    fn quota_policies_parse_and_replace_the_defaults() {
        let config = Config::from_toml(
            r#"
            [quotas.concept_generation]
            limit = 5
            window = "day"
            counter = "concepts_generated"
            [quotas.api-burst]
            rate = 10
            period = "1 second"
            burst = 20
            cost = 2
            "#,
        )
        .expect("valid");
        assert_eq!(config.policies.len(), 2);
        let burst = &config.policies[0];
        assert_eq!(burst.operation, "api-burst");
        assert_eq!(
            burst.window,
            Window::Gcra {
                interval: Duration::from_millis(100)
            }
        );
        assert_eq!(
            (burst.limit, burst.default_cost, burst.counter),
            (20, 2, None)
        );
        assert_eq!(config.policies[1].counter, Some(Counter::ConceptsGenerated));

        for (toml, message) in [
            ("[quotas.x]\nlimit = 5\n", "give either"),
            (
                "[quotas.x]\nlimit = 5\nwindow = \"week\"\n",
                "quotas.x.window",
            ),
            (
                "[quotas.x]\nlimit = 0\nwindow = \"day\"\n",
                "quotas.x.limit",
            ),
            (
                "[quotas.X]\nlimit = 1\nwindow = \"day\"\n",
                "operation names",
            ),
            (
                "[quotas.x]\nlimit = 1\nwindow = \"day\"\ncounter = \"clicks\"\n",
                "quotas.x.counter",
            ),
            (
                "[quotas.x]\nlimit = 1\nwindow = \"day\"\ncost = 2\n",
                "quotas.x.cost",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(message), "{toml}: {err}");
        }
    }

    #[test]
    fn service_token_and_proxies_are_checked() {
        let err = Config::from_vars(&vars(&[("SESSIONGATE_SERVICE_TOKEN", "short")])).unwrap_err();
        assert!(
            err.to_string().contains("SESSIONGATE_SERVICE_TOKEN"),
            "{err}"
        );
        let config =
            Config::from_toml("[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n")
                .expect("valid");
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(Config::from_toml("[http]\ntrusted_proxies = [\"nope\"]\n").is_err());
    }

    #[test]
    fn cors_origins_and_routes_are_checked() {
        let config = Config::from_toml(
            "internal_listen = \"127.0.0.1:8081\"\n[cors]\nallowed_origins = [\"https://app.example\", \"http://localhost:3000\"]\n",
        )
        .expect("valid");
        assert_eq!(config.cors.map(|c| c.allowed_origins.len()), Some(2));
        assert_eq!(config.internal_listen.map(|a| a.port()), Some(8081));
        for origin in [
            "*",
            "https://app.example/",
            "https://app.example/path",
            "app.example",
        ] {
            let error = Config::from_toml(&format!("[cors]\nallowed_origins = [\"{origin}\"]\n"))
                .expect_err(origin);
            assert!(
                error.to_string().contains("cors.allowed_origins"),
                "{error}"
            );
        }
        let error = Config::from_toml(
            "[[routes]]\npath = \"/a\"\nupstream = \"http://a:1\"\noperation = \"unknown\"\n",
        )
        .expect_err("unknown operation");
        assert!(error.to_string().contains("routes[0].operation"), "{error}");
    }

    #[test]
    fn supabase_needs_a_url_and_a_key() {
        let config = Config::from_vars(&HashMap::new()).expect("valid");
        assert!(config.supabase.is_none());
        let config = Config::from_vars(&vars(&[
            ("SUPABASE_URL", "https://example.supabase.co/"),
            ("SUPABASE_SERVICE_ROLE_KEY", "secret"),
        ]))
        .expect("valid");
        let supabase = config.supabase.expect("configured");
        assert_eq!(supabase.rest_url, "https://example.supabase.co/rest/v1");
        let config = Config::from_vars(&vars(&[
            ("SUPABASE_URL", "https://ignored"),
            ("SUPABASE_REST_URL", "http://127.0.0.1:3000"),
            ("SUPABASE_SERVICE_ROLE_KEY", "secret"),
        ]))
        .expect("valid");
        assert_eq!(
            config.supabase.expect("configured").rest_url,
            "http://127.0.0.1:3000"
        );
        let err =
            Config::from_vars(&vars(&[("SUPABASE_URL", "https://x.supabase.co")])).unwrap_err();
        assert!(
            err.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"),
            "{err}"
        );
        let err = Config::from_vars(&vars(&[
            ("SUPABASE_REST_URL", "x"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("SUPABASE_REST_URL"), "{err}");
    }

    #[test]
    fn gateway_hardening_settings_are_checked() {
        let config = Config::from_toml(
            "[http]\nmax_header_bytes = 16384\n[session]\ncreation_ipv6_prefix = 56\n\
             creation_ipv4_prefix = 24\nmax_creations_per_second = 50\n\
             [cookie]\nname = \"__Host-session\"\nsecure = true\n",
        )
        .expect("valid");
        assert_eq!(config.max_header_bytes, 16384);
        assert_eq!(config.creation_throttle.ipv6_prefix, 56);
        assert_eq!(config.creation_throttle.ipv4_prefix, 24);
        assert_eq!(config.creation_throttle.max_per_second.get(), 50);
        let defaults = Config::default();
        assert_eq!(defaults.max_header_bytes, 32 * 1024);
        assert_eq!(defaults.creation_throttle.ipv6_prefix, 64);
        assert_eq!(defaults.creation_throttle.ipv4_prefix, 32);
        for (toml, setting) in [
            ("[http]\nmax_header_bytes = 100\n", "http.max_header_bytes"),
            (
                "[session]\ncreation_ipv4_prefix = 33\n",
                "session.creation_ipv4_prefix",
            ),
            (
                "[session]\ncreation_ipv6_prefix = 0\n",
                "session.creation_ipv6_prefix",
            ),
            (
                "[session]\nmax_creations_per_second = 0\n",
                "session.max_creations_per_second",
            ),
            ("[cookie]\nname = \"__Host-s\"\n", "cookie.secure"),
            ("[cookie]\nname = \"__Secure-s\"\n", "cookie.secure"),
            (
                "[cookie]\nname = \"__Host-s\"\nsecure = true\npath = \"/app\"\n",
                "cookie.path",
            ),
            (
                "[cookie]\nname = \"__Host-s\"\nsecure = true\ndomain = \"example.com\"\n",
                "cookie.domain",
            ),
        ] {
            let err = Config::from_toml(toml).expect_err(toml);
            assert!(err.to_string().contains(setting), "{toml}: {err}");
        }
    }

    #[test]
    fn unknown_toml_keys_are_refused() {
        let err = Config::from_toml("[redis]\nurll = \"redis://x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `urll`"), "{err}");
        let err = Config::from_toml("[cookie]\nsame_site = \"none\"\n").unwrap_err();
        assert!(err.to_string().contains("cookie.same_site"), "{err}");
    }
}
