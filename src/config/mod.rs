//! Configuration: where settings come from and what they may be.
//!
//! Settings are read at start-up from the environment (the 12-factor names of the contract)
//! on top of an optional TOML file named by `SESSIONGATE_CONFIG`; the environment wins. A
//! reload reads both again, and [`Config::restart_changes`] names what it cannot apply.
//! Anything unknown or invalid stops start-up (or a reload) with one line naming the
//! variable or key and the form it accepts. This module validates values; it never opens
//! sockets or talks to Redis. Its parts: `table` (every setting, where it may be set and what
//! it sets), `form` (reading a value of one form from either source), `parse` (checks of one
//! value), `plans` (`[plans.*]`), `file` (the shapes of TOML sections), `settings` (the
//! values) and `error`; this file reads the sources and walks the table; `draft` holds what
//! is read and checks the rules that span several settings.

mod draft;
mod error;
mod file;
mod form;
mod parse;
mod plans;
mod settings;
mod table;

use std::collections::HashMap;
use std::time::Duration;

pub use error::ConfigError;
pub use settings::{Config, CookieConfig, CorsConfig, Environment, LogFormat};

use draft::Draft;
use table::SETTINGS;

/// The variable naming the TOML file; not a setting itself.
const CONFIG_FILE_VAR: &str = "SESSIONGATE_CONFIG";

/// The file settings a running gateway applies on reload (see `crate::reload`); every
/// other one needs a restart.
const RELOADABLE: [&str; 10] = [
    "quotas",
    "plans",
    "routes",
    "cors",
    "near_limit_fraction",
    "session.creations_per_minute",
    "session.creation_burst",
    "session.creation_ipv4_prefix",
    "session.creation_ipv6_prefix",
    "session.max_creations_per_second",
];

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
            .filter(|k| k.starts_with("SESSIONGATE_") && !is_known_variable(k))
            .filter(|k| !parse::is_service_link(k))
            .min()
        {
            return Err(ConfigError::new(unknown.as_str(), "unknown setting"));
        }
        let file = match vars.get(CONFIG_FILE_VAR) {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(CONFIG_FILE_VAR, format!("{path}: {e}")))?;
                parse_file(&text)
                    .map_err(|e| ConfigError::new(CONFIG_FILE_VAR, format!("{path}: {e}")))?
            }
            None => toml::Table::new(),
        };
        Config::merge(&file, vars)
    }

    /// Parses the text of a TOML configuration file, checking its values.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(text).map_err(|e| ConfigError::new("TOML file", e))?;
        Config::merge(&file, &HashMap::new())
    }

    /// The settings of `newer`'s file that differ from this one's and that a reload does not
    /// apply: they take a restart. (The environment does not change under a process.)
    pub fn restart_changes(&self, newer: &Config) -> Vec<&'static str> {
        SETTINGS
            .iter()
            .filter_map(|setting| setting.key)
            .filter(|key| !RELOADABLE.contains(key))
            .filter(|key| lookup(&self.source, key) != lookup(&newer.source, key))
            .collect()
    }

    /// Walks the table: each setting from its variable, else from its key.
    fn merge(file: &toml::Table, vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        unknown_keys(file, "")?;
        let mut draft = Draft {
            config: Config::default(),
            supabase_url: None,
            supabase_key: None,
            supabase_api_key: None,
            supabase_timeout: Duration::from_secs(10),
        };
        for setting in SETTINGS {
            if let Some((var, text)) = setting.var.and_then(|var| Some((var, vars.get(var)?))) {
                setting.form.apply_var(&mut draft, var, text)?;
            } else if let Some((key, value)) =
                setting.key.and_then(|key| Some((key, lookup(file, key)?)))
            {
                setting.form.apply_toml(&mut draft, key, value.clone())?;
            }
        }
        let mut config = draft.finish()?;
        config.source = file.clone();
        Ok(config)
    }
}

fn is_known_variable(name: &str) -> bool {
    name == CONFIG_FILE_VAR || SETTINGS.iter().any(|s| s.var == Some(name))
}

/// A TOML document, or its first syntax error with the line it is on.
fn parse_file(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_string(),
        }
    })
}

/// The value at a dotted key, if the file sets it.
fn lookup<'a>(file: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (section, rest) = match key.split_once('.') {
        Some((section, rest)) => (section, Some(rest)),
        None => (key, None),
    };
    let value = file.get(section)?;
    match rest {
        None => Some(value),
        Some(rest) => lookup(value.as_table()?, rest),
    }
}

/// Refuses any key of the file (below `prefix`) that no setting has, naming the keys that
/// would be accepted there.
fn unknown_keys(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    let keys = || SETTINGS.iter().filter_map(|s| s.key);
    for (name, value) in table {
        let path = format!("{prefix}{name}");
        if keys().any(|key| key == path) {
            continue;
        }
        let below = format!("{path}.");
        if keys().any(|key| key.starts_with(&below)) {
            match value {
                toml::Value::Table(section) => unknown_keys(section, &below)?,
                _ => {
                    return Err(ConfigError::new(
                        path.as_str(),
                        format!("expected a table [{path}]"),
                    ))
                }
            }
            continue;
        }
        let mut known: Vec<&str> = keys()
            .filter_map(|key| key.strip_prefix(prefix))
            .map(|rest| rest.split('.').next().unwrap_or(rest))
            .collect();
        known.sort_unstable();
        known.dedup();
        return Err(ConfigError::new(
            path.as_str(),
            format!("unknown key; known here: {}", known.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
