//! Parsers and rules of single settings: addresses, durations, networks, policies, cookies,
//! CORS origins, the creation throttle, Supabase. Each error names the setting it is about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;

use super::error::ConfigError;
use super::file::{CorsFile, PolicyFile, SessionFile};
use super::settings::{CookieConfig, CorsConfig};
use crate::flush::SupabaseConfig;
use crate::model::quota::{self, Policy, Window};
use crate::throttle::ThrottleConfig;

/// The `SESSIONGATE_*` names this version understands; any other is a typo worth stopping for.
pub(super) const KNOWN_VARIABLES: &[&str] = &[
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
pub(super) fn is_service_link(name: &str) -> bool {
    name.starts_with("SESSIONGATE_PORT")
        || name.starts_with("SESSIONGATE_SERVICE_HOST")
        || name.starts_with("SESSIONGATE_SERVICE_PORT")
}

/// Bounds of `http.max_header_bytes`: a browser's head with its cookies needs a few KiB;
/// past 1 MiB a head is an attack, not a request.
pub(super) const MIN_HEADER_BYTES: usize = 4 * 1024;
pub(super) const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Shortest service token accepted: a guessable token would open the internal API.
pub(super) const MIN_TOKEN_LEN: usize = 16;

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

/// `SUPABASE_REST_URL` (or `SUPABASE_URL` + `/rest/v1`) and `SUPABASE_SERVICE_ROLE_KEY`.
pub(super) fn supabase(
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

pub(super) fn parse_cors(file: CorsFile) -> Result<CorsConfig, ConfigError> {
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

pub(super) fn parse_net(text: &str) -> Result<IpNet, ConfigError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                "http.trusted_proxies",
                format!("{text:?} is not an IP address or CIDR block"),
            )
        })
}

pub(super) fn parse_policy(operation: String, file: PolicyFile) -> Result<Policy, ConfigError> {
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
    Ok(Policy {
        operation,
        limit,
        window,
        default_cost,
        counter,
    })
}

pub(super) fn parse_addr(name: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("{value:?} is not an address of the form ip:port"),
        )
    })
}

/// A whole number from the variable `var`, else from the file's `file_key`; with the name
/// of the one it came from, for errors about its value.
pub(super) fn pick_u64(
    vars: &HashMap<String, String>,
    var: &'static str,
    from_file: Option<u64>,
    file_key: &'static str,
) -> Result<Option<(&'static str, u64)>, ConfigError> {
    match vars.get(var) {
        Some(v) => v
            .parse()
            .map(|n| Some((var, n)))
            .map_err(|_| ConfigError::new(var, format!("{v:?} is not a whole number"))),
        None => Ok(from_file.map(|n| (file_key, n))),
    }
}

pub(super) fn positive_millis(name: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(name, "must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

/// The `[session]` keys of the creation throttle.
pub(super) fn creation_throttle(file: &SessionFile) -> Result<ThrottleConfig, ConfigError> {
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
