//! Checks of one setting's value, each returning the reason a value is refused (the caller
//! names the setting) or, for the sections, errors naming their own keys.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::error::ConfigError;
use super::file::{CorsFile, PolicyFile};
use super::settings::{CookieConfig, CorsConfig, Environment, LogFormat};
use crate::model::quota::{self, Allowance, Mode, Policy, Window};

pub(super) fn environment(value: &str) -> Result<Environment, String> {
    match value {
        "development" | "dev" | "local" => Ok(Environment::Development),
        "production" | "prod" => Ok(Environment::Production),
        other => Err(format!("{other:?} is not one of development, production")),
    }
}

pub(super) fn log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(format!("{other:?} is not one of json, text")),
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `RUST_LOG` directives. A bare word that is no level would be read as a module name and
/// silence every other log line ("degub" turns all logging off), so it is refused.
pub(super) fn log_filter(value: String) -> Result<String, String> {
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None if directive.contains("::") || directive.contains('[') => continue,
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} in {directive:?} is not a level (one of {})",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&value)
        .map_err(|e| format!("{value:?}: {e}"))?;
    Ok(value)
}

pub(super) fn address(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an address of the form ip:port"))
}

pub(super) fn redis_url(value: String) -> Result<String, String> {
    let known_scheme = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "redis-sentinel://",
    ]
    .iter()
    .any(|scheme| value.starts_with(scheme));
    if !known_scheme || fred::types::config::Config::from_url(&value).is_err() {
        return Err(format!(
            "{:?} is not a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL",
            without_credentials(&value)
        ));
    }
    Ok(value)
}

/// A URL as an error may show it: whatever precedes its last '@' after the scheme (a user
/// and password, however mistyped the scheme is) replaced by `***`.
fn without_credentials(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let start = url.find("//").map_or(0, |i| i + 2).min(at);
    format!("{}***{}", &url[..start], &url[at..])
}

/// The REST root or project URL of the system of record, without a trailing slash.
pub(super) fn http_url(value: &str) -> Result<String, String> {
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err("must be an http:// or https:// URL".to_string());
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Shortest service token accepted: a guessable token would open the internal API.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn service_token(token: String) -> Result<String, String> {
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must be at least {MIN_TOKEN_LEN} characters without spaces"
        ));
    }
    Ok(token)
}

pub(super) fn networks(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))
        })
        .collect()
}

/// A count the table has already checked to be at least 1.
pub(super) fn at_least_one(n: u64) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

pub(super) fn cookie_name(name: String) -> Result<String, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("must be non-empty ASCII letters, digits, '_' or '-'".to_string());
    }
    Ok(name)
}

pub(super) fn cookie_path(path: String) -> Result<String, String> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b';') {
        return Err("must start with '/' and hold no ';' or control characters".to_string());
    }
    Ok(path)
}

pub(super) fn cookie_domain(domain: String) -> Result<String, String> {
    if domain.is_empty()
        || domain
            .bytes()
            .any(|b| b.is_ascii_control() || b == b';' || b == b' ')
    {
        return Err("must be a host name".to_string());
    }
    Ok(domain)
}

pub(super) fn same_site(value: &str) -> Result<cookie::SameSite, String> {
    match value.to_ascii_lowercase().as_str() {
        "lax" => Ok(cookie::SameSite::Lax),
        "strict" => Ok(cookie::SameSite::Strict),
        "none" => Ok(cookie::SameSite::None),
        other => Err(format!("{other:?} is not one of lax, strict, none")),
    }
}

/// A TOML section read into its serde shape; its unknown keys are refused by that shape.
pub(super) fn section<T: DeserializeOwned>(
    key: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    value
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::new(key, e.message()))
}

/// Kubernetes injects `<SERVICE>_PORT...` and `<SERVICE>_SERVICE_HOST/PORT...` for every
/// Service in the namespace; a Service named `sessiongate` produces these. They are not
/// settings, so they are not typos either.
pub(super) fn is_service_link(name: &str) -> bool {
    name.starts_with("SESSIONGATE_PORT")
        || name.starts_with("SESSIONGATE_SERVICE_HOST")
        || name.starts_with("SESSIONGATE_SERVICE_PORT")
}

/// Browsers set a `__Secure-` cookie only with `Secure`, and a `__Host-` one only with
/// `Secure`, `Path=/` and no `Domain` (so no sibling subdomain or deeper path can plant a
/// cookie of that name); a configuration they would ignore is refused here instead.
pub(super) fn cookie_prefix_rules(cookie: &CookieConfig) -> Result<(), ConfigError> {
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

pub(super) fn cors(file: CorsFile) -> Result<CorsConfig, ConfigError> {
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

pub(super) fn policy(operation: String, file: PolicyFile) -> Result<Policy, ConfigError> {
    let name = format!("quotas.{operation}");
    if !is_name(&operation) {
        return Err(ConfigError::new(
            name,
            "operation names are 1-64 characters of a-z, 0-9, '_' and '-'",
        ));
    }
    let setting = |key: &str| format!("{name}.{key}");
    let allowance = allowance(&name, &file, 1)?;
    let counter = match file.counter {
        None => None,
        Some(counter) if quota::is_counter_name(&counter) => Some(counter.into()),
        Some(counter) => {
            return Err(ConfigError::new(
                setting("counter"),
                format!(
                    "{counter:?} is not a counter name: a lowercase letter, then up to 62 \
                     lowercase letters, digits or underscores"
                ),
            ))
        }
    };
    let mode = match file.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            return Err(ConfigError::new(
                setting("mode"),
                format!("{other:?} is not enforce or shadow"),
            ))
        }
    };
    Ok(Policy {
        operation,
        allowance,
        counter,
        mode,
        plans: Vec::new(),
    })
}

/// Whether `name` may name an operation or a plan: 1-64 characters of a-z, 0-9, `_`, `-`
/// (safe in a path segment, a header value, a Redis field and a metric label).
pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A whole allowance from the table `name`: `limit` + `window`, or `rate` + `period` +
/// `burst` (token bucket), and `cost` (else `default_cost`).
pub(super) fn allowance(
    name: &str,
    file: &PolicyFile,
    default_cost: u64,
) -> Result<Allowance, ConfigError> {
    let setting = |key: &str| format!("{name}.{key}");
    let (limit, window) = match (
        &file.limit,
        &file.window,
        &file.rate,
        &file.period,
        &file.burst,
    ) {
        (Some(limit), Some(window), None, None, None) => {
            let window =
                quota::parse_window(window).map_err(|e| ConfigError::new(setting("window"), e))?;
            (*limit, window)
        }
        (None, None, Some(rate), Some(period), Some(burst)) => {
            let period = quota::parse_duration(period)
                .map_err(|e| ConfigError::new(setting("period"), e))?;
            let interval_ms = (period.as_millis() as u64).checked_div(*rate).unwrap_or(0);
            if interval_ms == 0 {
                return Err(ConfigError::new(
                    setting("rate"),
                    "must be at least 1 and at most one per millisecond",
                ));
            }
            (
                *burst,
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
    let allowance = Allowance {
        limit,
        window,
        default_cost: file.cost.unwrap_or(default_cost),
    };
    check_allowance(name, &allowance)?;
    Ok(allowance)
}

/// The bounds every allowance keeps, whether whole or a plan's override.
pub(super) fn check_allowance(name: &str, allowance: &Allowance) -> Result<(), ConfigError> {
    let limit_key = match allowance.window {
        Window::Gcra { .. } => "burst",
        _ => "limit",
    };
    if allowance.limit == 0 || allowance.limit > 1_000_000_000 {
        return Err(ConfigError::new(
            format!("{name}.{limit_key}"),
            "must be between 1 and 1000000000",
        ));
    }
    if allowance.default_cost == 0 || allowance.default_cost > allowance.limit {
        return Err(ConfigError::new(
            format!("{name}.cost"),
            "must be at least 1 and at most the limit",
        ));
    }
    Ok(())
}
