//! Test support: real `redis-server` processes on free loopback ports, gateways started
//! in-process on port 0, and polling with deadlines instead of sleeps.
//!
//! One shared Redis serves the whole test binary; each gateway gets its own logical
//! database (`--databases 256`), so tests that count keys never see each other's.
//! Tests that break Redis on purpose start a private one with [`RedisServer::start`].

use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::services::{free_port, wait_until, Watchdog};
use sessiongate::config::Config;
use sessiongate::throttle::ThrottleConfig;
use sessiongate::Gateway;

/// A `redis-server` child process. It runs under a [`Watchdog`] that kills it when the test
/// binary's end of the watchdog's stdin closes, so no server outlives the tests,
/// even when the binary is killed.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    pid: u32,
    watchdog: Option<Watchdog>,
    /// Settings given to `redis-server` after the harness's own.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server started with `extra` settings too (`--name value` pairs).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = crate::services::temp_path("redis");
        let mut server = RedisServer {
            port: 0,
            dir,
            pid: 0,
            watchdog: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A free port can be taken by a parallel test between our probe and Redis's bind;
        // then Redis exits and another server answers on the port, so check whose it is.
        for _ in 0..5 {
            server.port = free_port();
            server.spawn();
            if server.is_ours() {
                return server;
            }
            server.kill_process();
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the server (again) on the same port and waits until the port answers.
    pub fn spawn(&mut self) {
        // The watchdog removes the folder when it stops the server.
        std::fs::create_dir_all(&self.dir).expect("create redis temp dir");
        let script = r#"port=$1 dir=$2; shift 2
            redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
            --databases 256 --enable-debug-command yes --logfile "$dir/redis.log" "$@" & echo $!; read _; kill -9 $! 2>/dev/null; wait; rm -rf "$dir""#;
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec![port.as_str(), dir.as_str()];
        args.extend(self.extra.iter().map(String::as_str));
        let server = Watchdog::spawn(Command::new("sh"), script, &args);
        self.pid = server.pid();
        self.watchdog = Some(server);
        wait_until(
            Duration::from_secs(10),
            "redis-server to accept connections",
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        );
    }

    /// Whether the server answering on our port is the one we started (its `dir` is ours).
    fn is_ours(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(b"CONFIG GET dir\r\n").is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let mut chunk = [0u8; 512];
        let dir = self.dir.to_string_lossy().into_owned();
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            reply.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&reply).contains(&dir) {
                return true;
            }
        }
        false
    }

    /// `SIGKILL`s the server and waits until its port is closed.
    pub fn kill(&mut self) {
        self.kill_process();
        wait_until(Duration::from_secs(10), "redis-server to stop", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    fn kill_process(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        // The watchdog waits for its shell when dropped.
        drop(self.watchdog.take());
    }

    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one command with `redis-cli` against this server; its output, `\r` removed.
    /// Panics when `redis-cli` cannot run or fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).replace('\r', "")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls an async check until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Redis shared by every test of this binary.
pub fn shared_redis() -> &'static RedisServer {
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    REDIS.get_or_init(RedisServer::start)
}

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// A gateway under test, with an HTTP client and a Redis client on the gateway's database.
pub struct TestGateway {
    pub gateway: Gateway,
    pub redis_url: String,
    pub base: String,
    pub http: reqwest::Client,
    pub redis: Client,
}

impl TestGateway {
    /// A gateway on the shared Redis, in a database of its own.
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        let db = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        assert!(db < 256, "more gateways than redis databases");
        Self::start_on(&shared_redis().url(db), adjust).await
    }

    /// A gateway on the given Redis URL.
    pub async fn start_on(redis_url: &str, adjust: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            redis_url: redis_url.to_string(),
            // Bursts of hundreds of requests on two shared cores can keep Redis busier than the
            // production default of 250 ms allows; the timeout tests set their own.
            redis_timeout: Duration::from_secs(1),
            // Tests create sessions by the thousand from one address.
            creation_throttle: ThrottleConfig {
                per_minute: 1_000_000.try_into().expect("nonzero"),
                burst: 100_000.try_into().expect("nonzero"),
                max_per_second: 1_000_000.try_into().expect("nonzero"),
                ..ThrottleConfig::default()
            },
            ..Config::default()
        };
        adjust(&mut config);
        let gateway = sessiongate::start(config).await.expect("gateway starts");
        let base = format!("http://{}", gateway.public_addr());
        let redis =
            Builder::from_config(fred::prelude::Config::from_url(redis_url).expect("redis url"))
                .build()
                .expect("redis client");
        redis.init().await.expect("test redis client connects");
        TestGateway {
            gateway,
            redis_url: redis_url.to_string(),
            base,
            http: reqwest::Client::new(),
            redis,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Empties the gateway's Redis database: Redis "loses" every session.
    pub async fn lose_redis_data(&self) {
        flush_db(&self.redis).await;
    }

    /// The admin listener's `/metrics` text (metrics are process-wide: every gateway of this
    /// test binary shares one recorder).
    pub async fn scrape(&self) -> String {
        scrape(&self.http, &self.admin_url("/metrics")).await
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr())
    }

    /// `POST /api/session/` with a JSON body; returns the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        split(response).await
    }

    /// `GET path` as the session `id` (`X-Session-Id`).
    pub async fn get_as(&self, path: &str, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("x-session-id", id)
            .send()
            .await
            .expect("request")
    }

    /// `PUT /api/session/preferences` with `body` as session `id`.
    pub async fn put_preferences(&self, id: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .put(self.url("/api/session/preferences"))
            .header("x-session-id", id)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a session and returns its id.
    pub async fn new_session(&self) -> String {
        let (status, body) = self.post_json("/api/session/", serde_json::json!({})).await;
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().expect("session_id").to_string()
    }

    /// The number of sessions in this gateway's database.
    pub async fn session_count(&self) -> usize {
        let pattern = sessiongate::store::SESSION_KEY_PATTERN;
        let keys: Vec<String> = self
            .redis
            .custom(fred::cmd!("KEYS"), vec![pattern])
            .await
            .expect("KEYS");
        keys.len()
    }
}

/// The internal API's quota endpoints, with [`TOKEN`], and `/api/session/info`.
impl TestGateway {
    /// `method` on `/internal/v1/sessions/{id}{rest}` with [`TOKEN`], ready to send.
    pub fn session_request(
        &self,
        method: reqwest::Method,
        id: &str,
        rest: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                self.url(&format!("/internal/v1/sessions/{id}{rest}")),
            )
            .bearer_auth(TOKEN)
    }

    /// `method` on `/internal/v1/sessions/{id}/quota/{path}` with [`TOKEN`], `body` as JSON.
    pub async fn quota(
        &self,
        method: reqwest::Method,
        id: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.session_request(method, id, &format!("/quota/{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request")
    }

    /// `POST /internal/v1/sessions/{id}/quota/{operation}/consume`: the status and the JSON
    /// answer.
    pub async fn consume(
        &self,
        id: &str,
        operation: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        split(
            self.quota(
                reqwest::Method::POST,
                id,
                &format!("{operation}/consume"),
                body,
            )
            .await,
        )
        .await
    }

    /// The session's `/api/session/info` (which must answer 200).
    pub async fn info(&self, id: &str) -> serde_json::Value {
        let response = self.get_as("/api/session/info", id).await;
        let (status, body) = split(response).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Gateway mode (`[[routes]]`, forward-auth).
impl TestGateway {
    /// `POST path` with the body `{}` as the session `id` (`X-Session-Id`).
    pub async fn post_as(&self, path: &str, id: &str) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("x-session-id", id)
            .body("{}")
            .send()
            .await
            .expect("request")
    }

    /// `(remaining, concepts_generated)` of the session's `generate` quota.
    pub async fn generate_state(&self, id: &str) -> (u64, u64) {
        let info = self.info(id).await;
        let remaining = info["rate_limits"]["generate"]["remaining"]
            .as_u64()
            .expect("remaining");
        let used = info["usage_stats"]["concepts_generated"]
            .as_u64()
            .expect("concepts_generated");
        (remaining, used)
    }

    /// `GET /internal/v1/authorize{query}` as the forward-auth caller, for session `id`.
    pub async fn authorize(
        &self,
        query: &str,
        id: Option<&str>,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .get(self.url(&format!("/internal/v1/authorize{query}")))
            .bearer_auth(TOKEN);
        if let Some(id) = id {
            request = request.header("x-session-id", id);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }
}

/// The settings of a test store on `url`: four connections, no near cache.
pub fn store_config(url: &str, outbox: bool) -> sessiongate::store::StoreConfig {
    sessiongate::store::StoreConfig {
        url: url.to_string(),
        timeout: Duration::from_secs(2),
        pool_size: 4,
        session_ttl: Duration::from_secs(86_400),
        touch_interval: Duration::from_secs(60),
        policies: Vec::new(),
        shards: sessiongate::store::DEFAULT_SHARDS,
        outbox,
        max_dirty_per_shard: u64::MAX,
        near_cache: None,
    }
}

/// A store of the library itself (for tests and benchmarks that drive it directly),
/// connected and with its scripts loaded.
pub async fn store_with(config: &sessiongate::store::StoreConfig) -> sessiongate::store::Store {
    let store = sessiongate::store::Store::connect(config).expect("store");
    store
        .warm_up(Duration::from_secs(10))
        .await
        .expect("redis up");
    store
}

/// [`store_with`] the settings of [`store_config`].
pub async fn store_on(url: &str, outbox: bool) -> sessiongate::store::Store {
    store_with(&store_config(url, outbox)).await
}

/// The service token of every test gateway that opens the internal API.
pub const TOKEN: &str = "test-service-token-0123456789";

/// Opens the internal API with [`TOKEN`].
pub fn with_token(config: &mut Config) {
    config.service_token = Some(TOKEN.to_string());
}

/// The Supabase settings of a gateway writing behind to `postgrest`.
pub fn supabase_config(
    postgrest: &crate::services::Postgrest,
) -> sessiongate::flush::SupabaseConfig {
    sessiongate::flush::SupabaseConfig {
        rest_url: postgrest.url(),
        service_role_key: postgrest.token("service_role"),
        api_key: None,
        request_timeout: Duration::from_secs(5),
    }
}

/// Gateway settings for write-behind against `postgrest`: the internal API, quick rounds,
/// short leases.
pub fn writing_to(postgrest: &crate::services::Postgrest) -> impl Fn(&mut Config) + Copy + '_ {
    move |config| {
        with_token(config);
        config.supabase = Some(supabase_config(postgrest));
        config.flush.interval = Duration::from_millis(100);
        config.flush.lease = Duration::from_secs(2);
    }
}

/// The Redis key of a session (default shard count).
pub fn session_key(id: &impl std::fmt::Display) -> String {
    let id = uuid::Uuid::parse_str(&id.to_string()).expect("a session id");
    sessiongate::store::session_key(&id, sessiongate::store::DEFAULT_SHARDS)
}

/// Status and JSON body of a response (`Null` when the body is not JSON).
pub async fn split(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// The `Set-Cookie` headers of a response.
pub fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii cookie").to_string())
        .collect()
}

/// The sum of the series of `name` whose label set contains `labels`.
pub fn metric(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(labels) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// The text of a `/metrics` answer.
pub async fn scrape(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body")
}

/// Empties the database `redis` is connected to, one `DEL` per key: Redis announces each
/// deleted key to the gateways' near caches at once, where a `FLUSHDB` is only noticed
/// within a second (`sessiongate::store`, the `sg:epoch` key).
pub async fn flush_db(redis: &Client) {
    let keys: Vec<String> = redis
        .custom(fred::cmd!("KEYS"), vec!["*"])
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis.del(keys).await.expect("DEL");
    }
}
