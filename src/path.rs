//! Canonical request paths (contract, addendum 2, "Gateway mode: canonical paths").
//!
//! The gateway routes, meters and forwards one path per request: the canonical form of what
//! the client sent. Were it to match the raw path and forward it unchanged, an upstream that
//! resolves dot segments (nginx, Apache, Tomcat, static file servers) would serve
//! `/public/../generate` as `/generate`, past the meter. So before any routing:
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`, `%7E` is `~`), other
//!   escapes keep their encoding with upper-case hex (RFC 3986, section 6.2.2);
//! - repeated slashes are merged, then dot segments are removed (section 5.2.4);
//! - what has no single meaning is refused: an encoded `/` or `\` (upstreams disagree on
//!   whether it separates segments), a literal `\` (some treat it as `/`), an encoded
//!   control character (C upstreams stop at `%00`), a dot segment with `;` parameters
//!   (`..;/`, which Java servers resolve), a `..` that climbs above the root, a broken escape.
//!
//! Pure rules on a string: no HTTP types, no I/O. The query is not part of the path and is
//! left to the caller.

use std::borrow::Cow;

/// Why a path has no canonical form; the `Display` is the client's error detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("an encoded '/' or '\\' (%2F, %5C) is not accepted in a path")]
    EncodedSeparator,
    #[error("'\\' is not accepted in a path")]
    Backslash,
    #[error("an encoded control character (%00-%1F, %7F) is not accepted in a path")]
    EncodedControl,
    #[error("'%' must be followed by two hex digits")]
    BrokenEscape,
    #[error("a '.' or '..' segment may not carry ';' parameters")]
    DotWithParameters,
    #[error("'..' climbs above the root")]
    AboveRoot,
}

/// The canonical form of `raw`, a request target's path. Borrowed when `raw` is already
/// canonical, which is the common case and costs one scan. A path that does not start with
/// `/` (`*`, or a CONNECT authority) is returned as it is: no route can match it.
pub fn canonical(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') || is_plainly_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<Cow<'_, str>> = Vec::with_capacity(segments.len());
    // Whether the result ends with '/': a final empty, "." or ".." segment leaves one.
    let mut trailing_slash = false;
    for (i, segment) in segments.into_iter().enumerate() {
        let segment = decode_segment(segment)?;
        let name = segment.split(';').next().unwrap_or_default();
        if matches!(name, "." | "..") && name.len() != segment.len() {
            return Err(PathError::DotWithParameters);
        }
        match segment.as_ref() {
            // An empty segment in the middle is a repeated slash, merged away.
            "" | "." => trailing_slash = i == last,
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = i == last;
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        path.push('/');
    }
    Ok(if path == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(path)
    })
}

/// No escape, backslash, parameter, repeated slash or segment starting with a dot: nothing
/// to change, so no allocation.
fn is_plainly_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    !bytes.iter().any(|b| matches!(b, b'%' | b'\\' | b';'))
        && !bytes
            .windows(2)
            .any(|pair| pair[0] == b'/' && matches!(pair[1], b'/' | b'.'))
}

/// Decodes the escapes of unreserved characters in one segment and upper-cases the hex of
/// the others.
fn decode_segment(segment: &str) -> Result<Cow<'_, str>, PathError> {
    if segment.contains('\\') {
        return Err(PathError::Backslash);
    }
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut decoded = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let run = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            decoded.push_str(&segment[i..run]);
            i = run;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).and_then(|b| hex_value(*b)),
            bytes.get(i + 2).and_then(|b| hex_value(*b)),
        ) else {
            return Err(PathError::BrokenEscape);
        };
        let byte = high << 4 | low;
        match byte {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0x00..=0x1F | 0x7F => return Err(PathError::EncodedControl),
            b if is_unreserved(b) => decoded.push(char::from(b)),
            b => {
                decoded.push('%');
                decoded.push(char::from(HEX[usize::from(b >> 4)]));
                decoded.push(char::from(HEX[usize::from(b & 0xF)]));
            }
        }
        i += 3;
    }
    Ok(Cow::Owned(decoded))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|v| v as u8)
}

/// RFC 3986, section 2.3.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_left_as_they_are() {
        for path in [
            "/",
            "/v1/generate",
            "/a/b/",
            "/files/x.tar.gz",
            "/a-b_c~d",
            "*",
            "",
        ] {
            let canonical = canonical(path).expect(path);
            assert!(matches!(canonical, Cow::Borrowed(_)), "{path}");
            assert_eq!(canonical, path);
        }
        assert_eq!(canonical("/.well-known/x").expect("ok"), "/.well-known/x");
        assert_eq!(canonical("/a/%3a%c3%A9").expect("ok"), "/a/%3A%C3%A9");
    }

    #[test]
    fn every_spelling_of_a_traversal_lands_on_one_path() {
        for (raw, expected) in [
            ("/app/public/../generate", "/app/generate"),
            ("/app/public/%2e%2e/generate", "/app/generate"),
            ("/app/public/%2E%2E/generate", "/app/generate"),
            ("/app/public/.%2e/generate", "/app/generate"),
            ("/app/public//../generate", "/app/generate"),
            ("/app/public/./../generate", "/app/generate"),
            ("/app/./generate", "/app/generate"),
            ("/app//generate", "/app/generate"),
            ("//app///generate", "/app/generate"),
            ("/app/generate/.", "/app/generate/"),
            ("/app/generate/x/..", "/app/generate/"),
            ("/app/%7Euser/%41", "/app/~user/A"),
            ("/static/a/b/%2e%2e/%2e%2e/admin", "/static/admin"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("//", "/"),
        ] {
            assert_eq!(canonical(raw).expect(raw), expected, "{raw}");
        }
    }

    #[test]
    fn paths_without_one_meaning_are_refused() {
        for (raw, error) in [
            ("/app/public/..%2fgenerate", PathError::EncodedSeparator),
            ("/app/public/..%2Fgenerate", PathError::EncodedSeparator),
            ("/app/public/..%5cgenerate", PathError::EncodedSeparator),
            ("/app/public\\..\\generate", PathError::Backslash),
            ("/app/generate%00.txt", PathError::EncodedControl),
            ("/app/public/..;/generate", PathError::DotWithParameters),
            ("/app/public/.;x/generate", PathError::DotWithParameters),
            ("/static/%2e%2e/%2e%2e/admin", PathError::AboveRoot),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/a/%2", PathError::BrokenEscape),
            ("/a/%zz", PathError::BrokenEscape),
        ] {
            assert_eq!(canonical(raw), Err(error), "{raw}");
        }
    }

    #[test]
    fn canonical_is_idempotent() {
        for raw in ["/a/./b/../c//d/", "/%41/%2e/x", "/a/%3a/..", "/x;y/z"] {
            let once = canonical(raw).expect(raw).into_owned();
            assert_eq!(canonical(&once).expect(raw), once, "{raw}");
        }
    }
}
