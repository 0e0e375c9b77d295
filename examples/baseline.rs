//! Baseline servers for the load benchmark (`load-tests/bench`): the ceilings the gateway is
//! measured against, on the same machine in the same run.
//!
//! - `hello`: hyper answering a fixed JSON body (the ceiling of any HTTP server here);
//! - `hgetall`: hyper + fred, one `HGETALL` per request (the ceiling of any read that needs
//!   Redis);
//! - `evalsha`: hyper + fred, one `EVALSHA` of a small write script per request (the ceiling
//!   of any write that needs one round trip);
//! - `proxy`: hyper server + hyper's pooled client forwarding every request to an upstream
//!   (the ceiling of gateway mode; the upstream is a `hello` baseline).
//!
//! Usage: `baseline <hello|hgetall|evalsha> <listen addr> [redis url]` or
//! `baseline proxy <listen addr> <upstream authority>`. Built like the
//! gateway (release, same hyper and fred settings), so the ratio measures the gateway's own
//! work.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const BODY: &[u8] =
    br#"{"session_id":"6f9619ff-8b86-4011-b42d-00cf4fc964ff","is_new_session":false}"#;
const KEY: &str = "bench:{baseline}";
const WRITE: &str = "redis.call('HINCRBY', KEYS[1], 'n', 1) return 1";

#[derive(Clone, Copy)]
enum Mode {
    Hello,
    Hgetall,
    Evalsha,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: baseline <hello|hgetall|evalsha> <listen addr> [redis url] | baseline proxy <listen addr> <upstream authority>";
    if args.get(1).map(String::as_str) == Some("proxy") {
        let addr: SocketAddr = args.get(2).ok_or(usage)?.parse()?;
        return proxy(addr, args.get(3).ok_or(usage)?.clone()).await;
    }
    let mode = match args.get(1).map(String::as_str) {
        Some("hello") => Mode::Hello,
        Some("hgetall") => Mode::Hgetall,
        Some("evalsha") => Mode::Evalsha,
        _ => return Err(usage.into()),
    };
    let addr: SocketAddr = args.get(2).ok_or(usage)?.parse()?;
    let redis_url = args.get(3).map_or("redis://127.0.0.1:6379", String::as_str);

    let pool = Builder::from_config(Config::from_url(redis_url)?).build_pool(4)?;
    let script = Script::from_lua(WRITE);
    if !matches!(mode, Mode::Hello) {
        pool.init().await?;
        let _: () = pool
            .hset(
                KEY,
                [("c", "1"), ("a", "1"), ("g", "0"), ("r", "0"), ("s", "0")],
            )
            .await?;
        script.load(pool.next()).await?;
    }
    let state = Arc::new((pool, script));
    serve(addr, move |request| {
        let state = state.clone();
        async move {
            drop(request);
            let (pool, script) = &*state;
            let body = match mode {
                Mode::Hello => Bytes::from_static(BODY),
                Mode::Hgetall => {
                    let fields: Vec<(String, String)> =
                        pool.next().hgetall(KEY).await.unwrap_or_default();
                    Bytes::from(format!("{{\"fields\":{}}}", fields.len()))
                }
                Mode::Evalsha => {
                    let n: i64 = script
                        .evalsha(pool.next(), KEY, ())
                        .await
                        .unwrap_or_default();
                    Bytes::from(format!("{{\"n\":{n}}}"))
                }
            };
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
    })
    .await
}

/// A plain reverse proxy: what gateway mode costs at the least.
async fn proxy(addr: SocketAddr, upstream: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let state = Arc::new((client, upstream));
    serve(addr, move |mut request| {
        let state = state.clone();
        async move {
            let (client, upstream) = &*state;
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri = format!("http://{upstream}{path}").parse();
            let response = match uri {
                Ok(uri) => {
                    *request.uri_mut() = uri;
                    client.request(request).await.ok()
                }
                Err(_) => None,
            };
            match response {
                Some(response) => response.map(Either::Right),
                None => {
                    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
                    *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                    response
                }
            }
        }
    })
    .await
}

/// Accepts connections for ever and answers every request with `handle`, with the
/// gateway's connection settings (no delay, HTTP/1.1).
async fn serve<H, F, B>(addr: SocketAddr, handle: H) -> Result<(), Box<dyn std::error::Error>>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = handle(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
