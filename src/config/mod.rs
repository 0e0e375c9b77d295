//! Configuration: where settings come from and what they may be.
//!
//! Settings are read once at start-up from the environment (the 12-factor names of the
//! contract) on top of an optional TOML file named by `SESSIONGATE_CONFIG`; the environment
//! wins. Anything unknown or invalid stops start-up with one line naming the setting.
//! This module validates values; it never opens sockets or talks to Redis. Its parts:
//! `settings` (the values), `file` (the TOML shape), `parse` (one setting at a time) and
//! `error`; this file merges the sources.

mod error;
mod file;
mod parse;
mod settings;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

pub use error::ConfigError;
pub use settings::{Config, CookieConfig, CorsConfig, Environment, LogFormat};

use file::FileConfig;
use parse::*;

use crate::routes::RouteTable;

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
        if let Some((name, ms)) = pick_u64(
            vars,
            "SESSIONGATE_REDIS_TIMEOUT_MS",
            file.redis.timeout_ms,
            "redis.timeout_ms",
        )? {
            config.redis_timeout = positive_millis(name, ms)?;
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
        if let Some((name, limit)) = pick_u64(
            vars,
            "SESSIONGATE_BODY_LIMIT_BYTES",
            file.http.body_limit_bytes.map(|v| v as u64),
            "http.body_limit_bytes",
        )? {
            if !(64..=16 * 1024 * 1024).contains(&limit) {
                return Err(ConfigError::new(
                    name,
                    "must be from 64 to 16777216 (bytes)",
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

#[cfg(test)]
mod tests;
