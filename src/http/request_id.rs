//! Request ids: every answer carries `X-Request-Id`, and every log line of its request names
//! it, so that one request can be followed from the load balancer through the gateway to an
//! upstream. The id is the caller's when a trusted proxy sends one (it has logged it
//! already); anyone else's is replaced, so a client cannot plant text in the logs.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a proxy: room for any UUID or trace id, not for a payload.
const MAX_LEN: usize = 128;

/// The id of a request whose headers are `headers`, from a peer that is `trusted` or not.
pub fn of(headers: &HeaderMap, trusted: bool) -> HeaderValue {
    let forwarded = headers.get(HEADER).filter(|value| {
        let bytes = value.as_bytes();
        (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
    });
    match forwarded {
        Some(value) if trusted => value.clone(),
        _ => generate(),
    }
}

/// 32 random hex digits: unique enough to search logs by, cheap to make.
fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for digit in &mut id {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn a_trusted_proxys_id_is_kept_anyone_elses_replaced() {
        let from_proxy = headers("lb-7f3a-42");
        assert_eq!(of(&from_proxy, true), "lb-7f3a-42");
        let mine = of(&from_proxy, false);
        assert_ne!(mine, "lb-7f3a-42");
        assert_eq!(mine.len(), 32);
        assert!(mine.as_bytes().iter().all(u8::is_ascii_hexdigit));
        for odd in ["has space", &"x".repeat(MAX_LEN + 1)] {
            assert_ne!(of(&headers(odd), true), odd, "{odd:?}");
        }
        assert_ne!(of(&HeaderMap::new(), true), of(&HeaderMap::new(), true));
    }
}
