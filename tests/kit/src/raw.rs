//! Raw HTTP/1.1 over TCP, for requests no well-behaved client would send: paths with dot
//! segments kept as they are, bytes a header may not hold, half-closed and abandoned
//! connections.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestGateway;

/// A response read off a raw connection.
pub struct Raw {
    pub status: u16,
    /// Header lines as sent (name lowercased), values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole head, for messages.
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is on a new connection and reads one response (bounded in time: a
/// hang fails the test instead of blocking it).
pub async fn raw(gw: &TestGateway, request: &[u8]) -> Raw {
    tokio::time::timeout(Duration::from_secs(20), raw_exchange(gw, request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no response within 20 s to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        })
}

async fn raw_exchange(gw: &TestGateway, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(gw.gateway.public_addr())
        .await
        .expect("connect");
    // The gateway may answer (and close) before it read everything: that is fine.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!(
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut lines = received[..head_end].split(|&b| b == b'\n');
    let status_line = String::from_utf8_lossy(lines.next().expect("status line")).into_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, Vec<u8>)> = lines
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .map(|line| {
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .unwrap_or_else(|| panic!("header line without a colon in {head:?}"));
            (
                String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                line[colon + 1..].trim_ascii().to_vec(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let mut body = received[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Raw {
        status,
        headers,
        head,
        body,
    }
}

/// A raw HTTP/1.1 request with `Connection: close`.
pub fn request(method: &str, path: &str, headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n")
        .into_bytes();
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    let chunked = headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with(b"transfer-encoding"));
    if !body.is_empty() && !chunked {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
