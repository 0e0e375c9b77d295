//! A Lua script as the store sends it, and Lua literals for the settings and policies
//! written into a script's text. Scripts are data here: loading and calling them is the
//! client's.

use fred::types::scripts::Script;

/// A Lua script and the operation name its calls are measured under.
pub(super) struct Lua {
    pub(super) op: &'static str,
    pub(super) script: Script,
}

impl Lua {
    pub(super) fn new(op: &'static str, source: String) -> Lua {
        Lua {
            op,
            script: Script::from_lua(source),
        }
    }
}

/// `text` as a Lua string literal. Names come from a checked configuration, but they are
/// escaped all the same: a script is code.
pub(super) fn string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('\'');
    for byte in text.bytes() {
        match byte {
            b'\\' | b'\'' => {
                literal.push('\\');
                literal.push(byte as char);
            }
            0x20..=0x7e => literal.push(byte as char),
            // Decimal escapes of three digits, so a digit after one cannot extend it.
            _ => literal.push_str(&format!("\\{byte:03}")),
        }
    }
    literal.push('\'');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(string("q:generate"), "'q:generate'");
        assert_eq!(string("it's \\ é\n1"), r"'it\'s \\ \195\169\0101'");
    }
}
