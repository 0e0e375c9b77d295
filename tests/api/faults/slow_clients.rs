//! Slow clients: slowloris (a request head trickled a byte at a time), connections idle
//! after a request or silent from the start, and a body that stalls midway. Proves that the
//! header read timeout cuts a slow head, the keep-alive timeout an idle connection, and the
//! body read timeout a stalled body (with 408), each on time, while other clients are served,
//! and that their file descriptors are released.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{exchange, info_request, LOAD_SETTINGS, SERIAL};
use crate::process::{one_shot, GatewayProcess};
use crate::support::{eventually, RedisServer};

/// Reads until the gateway closes the connection; returns how long that took from
/// `since`, bounded by `limit`.
async fn until_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout_at((since + limit).into(), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
        if matches!(read, Ok(0) | Err(_)) {
            return since.elapsed();
        }
    }
}

/// Slowloris: trickles a request head one byte every `every` until the gateway closes
/// the connection; returns how long after connecting that was.
async fn trickle_until_cut(addr: SocketAddr, every: Duration, limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let head = b"GET /api/session/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut chunk = [0u8; 1024];
    for sent in 0.. {
        assert!(
            started.elapsed() < limit,
            "a slowloris client was still connected after {limit:?}"
        );
        tokio::select! {
            read = stream.read(&mut chunk) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return started.elapsed();
                }
            }
            () = tokio::time::sleep(every) => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
    unreachable!()
}

/// A private Redis and a gateway that cuts header and body reads after `timeout`, and idle
/// connections after `keep_alive`.
fn gateway_with_read_timeouts(
    timeout: Duration,
    keep_alive: Duration,
) -> (RedisServer, GatewayProcess) {
    let redis = RedisServer::start();
    let gw = GatewayProcess::start(
        &redis.url(0),
        &format!(
            "[http]\nheader_read_timeout_ms = {0}\nbody_read_timeout_ms = {0}\n\
             keep_alive_timeout_ms = {1}\n{LOAD_SETTINGS}",
            timeout.as_millis(),
            keep_alive.as_millis()
        ),
        &[],
    );
    (redis, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_after_the_header_read_timeout_idle_connections_after_keep_alive() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_millis(2000);
    let keep_alive = Duration::from_millis(4000);
    let margin = Duration::from_millis(1500);
    let (_redis, gw) = gateway_with_read_timeouts(header_timeout, keep_alive);
    let id = gw.new_session(&one_shot()).await;
    let baseline = gw.settled_fds().await;
    let limit = keep_alive * 3;

    let slowloris: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(trickle_until_cut(
                gw.public,
                Duration::from_millis(100),
                limit,
            ))
        })
        .collect();
    let idle: Vec<_> = (0..5)
        .map(|_| {
            let (addr, request) = (gw.public, info_request(&id));
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                assert_eq!(exchange(&mut stream, &request).await.expect("answer"), 200);
                until_closed(&mut stream, Instant::now(), limit).await
            })
        })
        .collect();
    let silent: Vec<_> = (0..5)
        .map(|_| {
            let addr = gw.public;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                until_closed(&mut stream, Instant::now(), limit).await
            })
        })
        .collect();
    // Everyone else is served meanwhile.
    let http = one_shot();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = http
            .get(gw.url("/api/session/info"))
            .header("x-session-id", &id)
            .send()
            .await
            .expect("info");
        assert_eq!(response.status().as_u16(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let mut cut = BTreeMap::new();
    for (what, tasks) in [("slowloris", slowloris), ("idle", idle), ("silent", silent)] {
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.expect("client"));
        }
        times.sort();
        cut.insert(what, times);
    }
    let released = gw.settled_fds().await;
    eprintln!(
        "slow clients (header_read_timeout {header_timeout:?}, keep-alive {keep_alive:?}): \
         cut after {:?} .. {:?} (slowloris, one byte per 100 ms), {:?} .. {:?} (idle after a \
         request), {:?} .. {:?} (silent); other clients served meanwhile, slowest \
         {slowest:?}; gateway fds {baseline} before, {released} after",
        cut["slowloris"][0],
        cut["slowloris"][19],
        cut["idle"][0],
        cut["idle"][4],
        cut["silent"][0],
        cut["silent"][4],
    );
    for (what, times) in &cut {
        // A slow head is timed from its first byte; a connection waiting for a head, from
        // its last answer or from its opening.
        let (name, expected) = match *what {
            "slowloris" => ("header_read_timeout", header_timeout),
            _ => ("keep_alive_timeout", keep_alive),
        };
        for time in times {
            assert!(
                *time >= expected.mul_f64(0.95) && *time <= expected + margin,
                "a {what} client was cut after {time:?}, {name} is {expected:?}"
            );
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest answer {slowest:?}"
    );
    assert!(
        released <= baseline,
        "fds {released} after, {baseline} before"
    );
    assert!(gw.alive());
}

/// A client that sends its headers and part of its body, then nothing (and keeps the
/// connection open), would hold a connection and a request in flight: the header-read
/// timeout no longer applies once the headers are in. The body-read timeout answers 408 and
/// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_body_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_millis(2000);
    let (_redis, gw) = gateway_with_read_timeouts(header_timeout, header_timeout);
    let id = gw.new_session(&one_shot()).await;
    let mut stream = TcpStream::connect(gw.public).await.expect("connect");
    let started = Instant::now();
    let partial = format!(
        "PUT /api/session/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"theme\":\""
    );
    stream.write_all(partial.as_bytes()).await.expect("send");
    eventually(
        Duration::from_secs(10),
        "the request to be in flight",
        || async {
            (gw.metric("sessiongate_http_requests_in_flight", "").await == 1.0).then_some(())
        },
    )
    .await;
    // As long as a slowloris client gets for its headers, and as much again for the body.
    let limit = header_timeout * 3;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    let cut = tokio::time::timeout_at((started + limit).into(), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let in_flight = gw.metric("sessiongate_http_requests_in_flight", "").await;
    let open = gw
        .metric("sessiongate_http_connections_open", "listener=\"public\"")
        .await;
    eprintln!(
        "stalled body (header_read_timeout {header_timeout:?}): {} after {:?}, answer {:?}; \
         requests in flight {in_flight}, open connections {open}",
        if cut.is_ok() { "cut" } else { "still open" },
        started.elapsed(),
        String::from_utf8_lossy(&answer),
    );
    assert!(
        cut.is_ok(),
        "a request whose body stalled was still open ({open} connections, {in_flight} in \
         flight) {limit:?} after it began (header_read_timeout {header_timeout:?})"
    );
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    eventually(
        Duration::from_secs(5),
        "the stalled request to end",
        || async {
            (gw.metric("sessiongate_http_requests_in_flight", "").await == 0.0).then_some(())
        },
    )
    .await;
}

/// A connection that makes request after request stays with hyper between them, and is
/// still cut at the keep-alive timeout once idle: after plain reads (parked a moment after
/// the last) and after a request with a body (kept by hyper, whose body might be unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_cut_after_keep_alive_once_idle() {
    let _serial = SERIAL.lock().await;
    let keep_alive = Duration::from_millis(2000);
    let margin = Duration::from_millis(1500);
    let (_redis, gw) = gateway_with_read_timeouts(keep_alive, keep_alive);
    let id = gw.new_session(&one_shot()).await;
    let body = r#"{"theme":"dark"}"#;
    let with_body = format!(
        "PUT /api/session/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: {id}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut cut = Vec::new();
    for last in [info_request(&id), with_body] {
        let mut stream = TcpStream::connect(gw.public).await.expect("connect");
        for _ in 0..5 {
            let status = exchange(&mut stream, &info_request(&id)).await;
            assert_eq!(status.expect("answer"), 200);
        }
        assert_eq!(exchange(&mut stream, &last).await.expect("answer"), 200);
        cut.push(until_closed(&mut stream, Instant::now(), keep_alive * 3).await);
    }
    eprintln!("busy connections cut after {cut:?} idle (keep-alive {keep_alive:?})");
    for time in cut {
        assert!(
            time >= keep_alive.mul_f64(0.95) && time <= keep_alive + margin,
            "a busy connection was cut after {time:?} idle, keep_alive_timeout is {keep_alive:?}"
        );
    }
}
