//! The one error configuration has: which setting (variable or key) and why, in one line.

/// A setting that could not be accepted; its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    setting: String,
    reason: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
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
