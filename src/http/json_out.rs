//! JSON for the answers on the request path (session, info, quota), written straight into
//! one buffer. Their keys are fixed, and their values are numbers, booleans, UUIDs,
//! timestamps and names checked at start-up, so a string almost never needs escaping; serde
//! through simd-json spent a quarter of a cached info read on the same bytes (the operator
//! reads share the session shape, so they use it too). Other answers (errors, sync, persist)
//! go through serde; this writer must never grow into a general one.

use uuid::Uuid;

/// A JSON object being written; nested objects open and close inside it.
pub struct JsonObject {
    out: Vec<u8>,
}

impl JsonObject {
    pub fn new() -> JsonObject {
        // An info answer with a few policies fits without growing.
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        JsonObject { out }
    }

    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.quoted(value);
        self
    }

    /// `value`, or `null`.
    pub fn string_or_null(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.string(key, value),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
                self
            }
        }
    }

    /// `json`, which must be JSON text already (a stored object, serialised by serde).
    pub fn raw(&mut self, key: &str, json: &[u8]) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(json);
        self
    }

    /// A UUID, hyphenated and lower case.
    pub fn id(&mut self, key: &str, id: &Uuid) -> &mut Self {
        self.string(
            key,
            id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        )
    }

    pub fn number(&mut self, key: &str, value: impl itoa::Integer) -> &mut Self {
        self.key(key);
        self.integer(value);
        self
    }

    pub fn boolean(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Opens the object under `key`; [`JsonObject::close`] ends it.
    pub fn open(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push(b'{');
        self
    }

    pub fn close(&mut self) -> &mut Self {
        self.out.push(b'}');
        self
    }

    /// `key: {name: count, ...}`.
    pub fn counts<'a>(
        &mut self,
        key: &str,
        counts: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> &mut Self {
        self.open(key);
        for (name, count) in counts {
            // Counter names come from the configuration, but are quoted as any value is.
            self.comma();
            self.quoted(name);
            self.out.push(b':');
            self.integer(count);
        }
        self.close()
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }

    /// Keys are literals or operation names, checked at start-up to be `[a-z0-9_-]`: they are
    /// written as they are.
    fn key(&mut self, key: &str) {
        debug_assert!(key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        self.comma();
        self.out.reserve(key.len() + 3);
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn integer(&mut self, value: impl itoa::Integer) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn comma(&mut self) {
        if self.out.last() != Some(&b'{') {
            self.out.push(b',');
        }
    }

    fn quoted(&mut self, text: &str) {
        // No early exit: the compiler checks many bytes at a time, and the texts are short.
        let needs_escape = text.bytes().fold(false, |found, b| {
            found | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if needs_escape {
            // Never on the usual path; serde knows every escape.
            let escaped = simd_json::serde::to_vec(&text).unwrap_or_else(|_| b"\"\"".to_vec());
            self.out.extend_from_slice(&escaped);
            return;
        }
        self.out.reserve(text.len() + 2);
        self.out.push(b'"');
        self.out.extend_from_slice(text.as_bytes());
        self.out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_objects_and_escapes_what_needs_it() {
        let mut object = JsonObject::new();
        object
            .string("id", "abc")
            .id(
                "uuid",
                &Uuid::from_u128(0x6f9619ff_8b86_4011_b42d_00cf4fc964ff),
            )
            .number("n", 42u64)
            .number("negative", -7i64)
            .boolean("ok", true)
            .open("limits")
            .open("generate")
            .number("limit", 10u64)
            .close()
            .open("empty")
            .close()
            .close()
            .counts("usage", [("a", 1), ("b\"", 2)])
            .string_or_null("plan", None)
            .string_or_null("named", Some("pro"))
            .raw("raw", br#"{"x":[1]}"#)
            .string("quote", "line\nbreak\u{1}\"\\");
        let text = String::from_utf8(object.finish()).unwrap();
        assert_eq!(
            text,
            r#"{"id":"abc","uuid":"6f9619ff-8b86-4011-b42d-00cf4fc964ff","n":42,"negative":-7,"ok":true,"limits":{"generate":{"limit":10},"empty":{}},"usage":{"a":1,"b\"":2},"plan":null,"named":"pro","raw":{"x":[1]},"quote":"line\nbreak\u0001\"\\"}"#
        );
        let mut bytes = text.into_bytes();
        let parsed: simd_json::OwnedValue = simd_json::to_owned_value(&mut bytes).unwrap();
        assert_eq!(
            simd_json::prelude::ValueAsScalar::as_str(&parsed["quote"]),
            Some("line\nbreak\u{1}\"\\")
        );
    }

    #[test]
    fn an_empty_object_is_braces() {
        assert_eq!(JsonObject::new().finish(), b"{}");
    }
}
