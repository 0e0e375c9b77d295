//! Configuration being read: the values the table has set so far, and the rules that span
//! several settings, checked once every setting is in.

use std::time::Duration;

use super::error::ConfigError;
use super::parse;
use super::settings::Config;
use crate::flush::SupabaseConfig;

/// Configuration being read: the settings so far, and the parts checked together at the end.
pub(super) struct Draft {
    pub(super) config: Config,
    /// The system of record's REST root, with the variable it came from.
    pub(super) supabase_url: Option<(&'static str, String)>,
    pub(super) supabase_key: Option<String>,
    pub(super) supabase_api_key: Option<String>,
    pub(super) supabase_timeout: Duration,
}

impl Draft {
    /// The rules that span several settings.
    pub(super) fn finish(self) -> Result<Config, ConfigError> {
        let mut config = self.config;
        if let Some((name, rest_url)) = self.supabase_url {
            let service_role_key = self.supabase_key.ok_or_else(|| {
                ConfigError::new(
                    "SUPABASE_SERVICE_ROLE_KEY",
                    format!("is required when {name} is set"),
                )
            })?;
            config.supabase = Some(SupabaseConfig {
                rest_url,
                service_role_key,
                api_key: self.supabase_api_key,
                request_timeout: self.supabase_timeout,
            });
        }
        if config.service_token_next.is_some() && config.service_token.is_none() {
            return Err(ConfigError::new(
                "SESSIONGATE_SERVICE_TOKEN_NEXT",
                "is accepted beside SESSIONGATE_SERVICE_TOKEN, which is not set",
            ));
        }
        if config.cookie.same_site == cookie::SameSite::None && !config.cookie.secure {
            return Err(ConfigError::new(
                "cookie.same_site",
                "\"none\" requires secure = true (browsers drop such cookies otherwise)",
            ));
        }
        parse::cookie_prefix_rules(&config.cookie)?;
        Ok(config)
    }
}
