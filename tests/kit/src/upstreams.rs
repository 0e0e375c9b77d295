//! Upstreams for gateway mode, all real servers on loopback: a hyper application that records
//! what it received, a raw TCP server that echoes the request head byte for byte, and nginx
//! (as an application server that resolves dot segments, or in front of the gateway's
//! forward-auth endpoint).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::services::{free_port, Watchdog};
use crate::support::TOKEN;

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub session: Option<String>,
    pub forwarded_for: Option<String>,
    /// Every header line, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Hit {
    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A hyper server standing in for the application: `/.../fail` answers 500, `/.../hang`
/// never answers, `/.../slow` answers 200 after 300 ms (the work is done even if no one
/// waits), `/.../collect` reads the whole body before answering, `/.../echo` streams the request body back, anything else is 200. A request is
/// recorded when its head arrives.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let recorded = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let hits = recorded.clone();
                let service = service_fn(move |request| respond(request, hits.clone()));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Upstream { addr, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }
}

type UpstreamBody = Either<Incoming, Full<Bytes>>;

async fn respond(
    request: Request<Incoming>,
    hits: Arc<Mutex<Vec<Hit>>>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), value)
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let path = request.uri().path().to_string();
    hits.lock().expect("hits").push(Hit {
        method: request.method().to_string(),
        path: path.clone(),
        session: header("x-session-id"),
        forwarded_for: header("x-forwarded-for"),
        headers: headers.clone(),
    });
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response
    };
    Ok(if path.ends_with("/fail") {
        text(StatusCode::INTERNAL_SERVER_ERROR, "upstream failed".into())
    } else if path.ends_with("/hang") {
        std::future::pending::<()>().await;
        unreachable!("a pending future never resolves")
    } else if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        text(StatusCode::OK, format!("upstream did {path}"))
    } else if path.ends_with("/collect") {
        match request.into_body().collect().await {
            Ok(body) => text(StatusCode::OK, format!("{} bytes", body.to_bytes().len())),
            Err(_) => text(StatusCode::BAD_REQUEST, "incomplete body".into()),
        }
    } else if path.ends_with("/echo") {
        Response::new(Either::Left(request.into_body()))
    } else {
        text(StatusCode::OK, format!("upstream saw {path}"))
    })
}

/// A raw TCP server that answers every request with 200 and, as the body, the request head
/// exactly as it arrived: no HTTP library between the wire and the test.
pub struct EchoHead {
    pub addr: SocketAddr,
}

impl EchoHead {
    pub async fn start() -> EchoHead {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo upstream");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => received.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = received
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .unwrap_or(received.len());
                    let head = &received[..end];
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        head.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(head);
                    let _ = stream.write_all(&answer).await;
                });
            }
        });
        EchoHead { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A real nginx, in a temporary prefix, stopped on drop.
pub struct Nginx {
    port: u16,
    dir: PathBuf,
    _server: Watchdog,
}

impl Nginx {
    /// nginx in front of `upstream`, asking the gateway through `auth_request` with the
    /// documented configuration (`deploy/forward-auth/nginx.conf`).
    pub fn forward_auth(gateway: SocketAddr, upstream: SocketAddr) -> Nginx {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/forward-auth/nginx.conf"
        ))
        .expect("the documented nginx configuration");
        Nginx::start(|port| {
            template
                .replace("127.0.0.1:8000", &upstream.to_string())
                .replace("127.0.0.1:8080", &gateway.to_string())
                .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
                .replace("CHANGE-ME-service-token", TOKEN)
        })
    }

    /// nginx as an application server: each location answers with its name and the path
    /// nginx resolved (`$uri`, dot segments and `%2e` resolved, slashes merged), as an
    /// upstream behind the gateway would see it.
    pub fn application() -> Nginx {
        Nginx::start(|port| {
            format!(
                "server {{\n  listen 127.0.0.1:{port};\n\
                 location = /app/generate {{ return 200 \"generate $uri\"; }}\n\
                 location /app/public/ {{ return 200 \"public $uri\"; }}\n\
                 location /admin {{ return 200 \"admin $uri\"; }}\n\
                 location / {{ return 200 \"other $uri\"; }}\n}}\n"
            )
        })
    }

    /// Starts nginx with the `http` block contents `server(port)` returns.
    fn start(server: impl Fn(u16) -> String) -> Nginx {
        let dir = crate::services::temp_path("nginx");
        std::fs::create_dir_all(&dir).expect("nginx dir");
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "daemon off;\nmaster_process off;\npid {0}/nginx.pid;\nerror_log {0}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n  \
                 fastcgi_temp_path {0}/fastcgi;\n  uwsgi_temp_path {0}/uwsgi;\n  scgi_temp_path {0}/scgi;\n{1}\n}}\n",
                dir.display(),
                server(port)
            );
            std::fs::write(dir.join("nginx.conf"), config).expect("write nginx.conf");
            let server = Watchdog::spawn(
                Command::new("sh"),
                "nginx -e \"$1/error.log\" -p \"$1\" -c \"$1/nginx.conf\" & echo $!; read _; kill $! 2>/dev/null; wait",
                &[&dir.display().to_string()],
            );
            let answers = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !answers() && server.server_alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if answers() {
                return Nginx {
                    port,
                    dir,
                    _server: server,
                };
            }
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start; its log:\n{log}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
