//! The forms a setting's value may take, and reading one from where it was set: an
//! environment variable (always text) or a TOML value (typed). Each form says in words what it
//! accepts, so that every error tells the user both the setting and the accepted form. This
//! module knows no setting by name; the table does.

use super::draft::Draft;
use super::error::ConfigError;

/// What a setting accepts, and where an accepted value goes.
pub(super) enum Form {
    /// A whole number from `min` to `max` (counted in `unit`, if any). `set` only ever gets a
    /// number in that range, so narrowing it to a smaller integer type is exact.
    Whole {
        min: u64,
        max: u64,
        unit: &'static str,
        set: fn(&mut Draft, u64),
    },
    /// A number greater than 0 and at most 1.
    Fraction { set: fn(&mut Draft, f64) },
    /// `true` or `false`.
    Flag { set: fn(&mut Draft, bool) },
    /// Text that `set` checks further; `what` describes what it must be.
    Text {
        what: &'static str,
        set: fn(&mut Draft, String) -> Result<(), String>,
    },
    /// A list of text: a TOML array of strings, or comma-separated in a variable.
    List {
        what: &'static str,
        set: fn(&mut Draft, Vec<String>) -> Result<(), String>,
    },
    /// A TOML table or array of tables read whole; `set` names its own keys in its errors.
    Section {
        what: &'static str,
        set: fn(&mut Draft, toml::Value) -> Result<(), ConfigError>,
    },
}

/// A value read from its source, before its form's range and checks.
enum Value {
    Whole(u64),
    Fraction(f64),
    Flag(bool),
    Text(String),
    List(Vec<String>),
}

impl Form {
    /// The accepted form, in the words of an error message ("expected ...").
    pub(super) fn describe(&self) -> String {
        match self {
            Form::Whole {
                min, max, unit: "", ..
            } => format!("a whole number from {min} to {max}"),
            Form::Whole { min, max, unit, .. } => {
                format!("a whole number of {unit} from {min} to {max}")
            }
            Form::Fraction { .. } => "a number greater than 0 and at most 1".to_string(),
            Form::Flag { .. } => "true or false".to_string(),
            Form::Text { what, .. } | Form::List { what, .. } | Form::Section { what, .. } => {
                what.to_string()
            }
        }
    }

    /// Applies the text of the environment variable `name`.
    pub(super) fn apply_var(
        &self,
        draft: &mut Draft,
        name: &str,
        text: &str,
    ) -> Result<(), ConfigError> {
        let value = match self {
            Form::Whole { .. } => text.trim().parse().ok().map(Value::Whole),
            Form::Fraction { .. } => text.trim().parse().ok().map(Value::Fraction),
            Form::Flag { .. } => text.trim().parse().ok().map(Value::Flag),
            Form::Text { .. } => Some(Value::Text(text.to_string())),
            Form::List { .. } => Some(Value::List(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(String::from)
                    .collect(),
            )),
            Form::Section { .. } => None,
        };
        self.set(draft, name, value, format!("{text:?}"))
    }

    /// Applies the value of the TOML key `name`.
    pub(super) fn apply_toml(
        &self,
        draft: &mut Draft,
        name: &str,
        value: toml::Value,
    ) -> Result<(), ConfigError> {
        if let Form::Section { set, .. } = self {
            return set(draft, value);
        }
        let shown = value.to_string();
        let value = match (self, value) {
            (Form::Whole { .. }, toml::Value::Integer(n)) => {
                u64::try_from(n).ok().map(Value::Whole)
            }
            (Form::Fraction { .. }, toml::Value::Float(x)) => Some(Value::Fraction(x)),
            (Form::Fraction { .. }, toml::Value::Integer(n)) => Some(Value::Fraction(n as f64)),
            (Form::Flag { .. }, toml::Value::Boolean(b)) => Some(Value::Flag(b)),
            (Form::Text { .. }, toml::Value::String(s)) => Some(Value::Text(s)),
            (Form::List { .. }, toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Value::List),
            _ => None,
        };
        self.set(draft, name, value, shown)
    }

    /// Checks `value` (shown as `shown` in errors) against this form and sets it.
    fn set(
        &self,
        draft: &mut Draft,
        name: &str,
        value: Option<Value>,
        shown: String,
    ) -> Result<(), ConfigError> {
        let refuse =
            || ConfigError::new(name, format!("expected {}, got {shown}", self.describe()));
        let checked = match (self, value.ok_or_else(refuse)?) {
            (Form::Whole { min, max, set, .. }, Value::Whole(n)) if (*min..=*max).contains(&n) => {
                set(draft, n);
                Ok(())
            }
            (Form::Fraction { set }, Value::Fraction(x)) if x > 0.0 && x <= 1.0 => {
                set(draft, x);
                Ok(())
            }
            (Form::Flag { set }, Value::Flag(b)) => {
                set(draft, b);
                Ok(())
            }
            (Form::Text { set, .. }, Value::Text(text)) => set(draft, text),
            (Form::List { set, .. }, Value::List(items)) => set(draft, items),
            _ => return Err(refuse()),
        };
        checked.map_err(|reason| ConfigError::new(name, reason))
    }
}
