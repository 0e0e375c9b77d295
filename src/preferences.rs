//! Preferences: the one JSON object a session carries, and its limits.
//!
//! The contract bounds it at 4 KiB serialised, 32 keys and nesting depth 4. This module
//! checks a candidate and produces its compact form; it never stores anything.

use simd_json::prelude::*;
use simd_json::OwnedValue;

pub const MAX_BYTES: usize = 4 * 1024;
pub const MAX_KEYS: usize = 32;
pub const MAX_DEPTH: usize = 4;

/// Why a preferences document was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreferencesError {
    #[error("preferences must be a JSON object")]
    NotAnObject,
    #[error("preferences may hold at most {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("preferences may nest at most {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("preferences may be at most {MAX_BYTES} bytes serialised")]
    TooLarge,
}

/// Checks parsed preferences and returns their compact serialisation.
///
/// Keys are counted over the whole document (every object's keys), so the limit bounds the
/// work of reading them back, not just the top level.
pub fn validate(value: &OwnedValue) -> Result<String, PreferencesError> {
    if !value.is_object() {
        return Err(PreferencesError::NotAnObject);
    }
    let mut keys = 0;
    check(value, 1, &mut keys)?;
    let text = value.encode();
    if text.len() > MAX_BYTES {
        return Err(PreferencesError::TooLarge);
    }
    Ok(text)
}

fn check(value: &OwnedValue, depth: usize, keys: &mut usize) -> Result<(), PreferencesError> {
    if let Some(object) = value.as_object() {
        if depth > MAX_DEPTH {
            return Err(PreferencesError::TooDeep);
        }
        *keys += object.len();
        if *keys > MAX_KEYS {
            return Err(PreferencesError::TooManyKeys);
        }
        for child in object.values() {
            check(child, depth + 1, keys)?;
        }
    } else if let Some(array) = value.as_array() {
        if depth > MAX_DEPTH {
            return Err(PreferencesError::TooDeep);
        }
        for child in array {
            check(child, depth + 1, keys)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> OwnedValue {
        let mut bytes = text.as_bytes().to_vec();
        simd_json::to_owned_value(&mut bytes).expect("valid JSON")
    }

    #[test]
    fn compact_form_is_returned() {
        assert_eq!(
            validate(&parse(r#"{ "theme" : "dark" }"#)),
            Ok(r#"{"theme":"dark"}"#.to_string())
        );
        assert_eq!(validate(&parse("{}")), Ok("{}".to_string()));
    }

    #[test]
    fn limits_are_enforced_at_their_edges() {
        assert_eq!(validate(&parse("[1]")), Err(PreferencesError::NotAnObject));
        assert!(validate(&parse(r#"{"a":{"b":{"c":{"d":1}}}}"#)).is_ok());
        assert_eq!(
            validate(&parse(r#"{"a":{"b":{"c":{"d":{}}}}}"#)),
            Err(PreferencesError::TooDeep)
        );
        assert_eq!(
            validate(&parse(r#"{"a":[[[[1]]]]}"#)),
            Err(PreferencesError::TooDeep)
        );
        let keys = |n: usize| {
            format!(
                "{{{}}}",
                (0..n)
                    .map(|i| format!("\"k{i}\":1"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        assert!(validate(&parse(&keys(32))).is_ok());
        assert_eq!(
            validate(&parse(&keys(33))),
            Err(PreferencesError::TooManyKeys)
        );
        let big = |n: usize| format!(r#"{{"k":"{}"}}"#, "x".repeat(n));
        assert!(validate(&parse(&big(MAX_BYTES - 8))).is_ok());
        assert_eq!(
            validate(&parse(&big(MAX_BYTES - 7))),
            Err(PreferencesError::TooLarge)
        );
    }
}
