//! What the gateway runs with once configuration is read: plain values, with the defaults
//! of the contract. Reading and validating them is the parent module's work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::flush::{FlushConfig, SupabaseConfig};
use crate::model::quota::Policy;
use crate::routes::RouteTable;
use crate::throttle::ThrottleConfig;

/// Where the gateway runs; production turns on `Secure` cookies and JSON logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines (the default in production).
    Json,
    /// Readable lines (the default elsewhere).
    Text,
}

/// Cookie attributes of the session cookie (contract: "each may be overridden").
#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub same_site: cookie::SameSite,
    pub http_only: bool,
    pub secure: bool,
    pub max_age: Duration,
}

/// Everything the gateway needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// A listener of its own for `/internal/`, kept off the public network; `None` serves
    /// the internal API on the public listener.
    pub internal_listen: Option<SocketAddr>,
    pub environment: Environment,
    pub log_format: LogFormat,
    /// Which log lines are written, as `RUST_LOG` directives (`info`, `sessiongate=debug`).
    pub log_filter: String,
    pub redis_url: String,
    /// Upper bound on one Redis round trip; past it the request answers 503.
    pub redis_timeout: Duration,
    /// Redis connections of each serving thread, and of the housekeeping pool.
    pub redis_pool_size: usize,
    /// Start even though Redis may evict keys (its `maxmemory-policy` is not `noeviction`).
    pub redis_allow_eviction: bool,
    /// Keyspace shards (see `store`); fixed for the lifetime of the data.
    pub redis_shards: u32,
    /// Session records the near cache holds at most; 0 turns it off.
    pub near_cache_entries: usize,
    /// Threads serving the public listener, each with its own listener socket
    /// (`SO_REUSEPORT`), runtime and Redis connections; 0 means one per CPU.
    pub serving_threads: usize,
    pub body_limit: usize,
    /// Time a client gets to send its request headers, from their first byte (slowloris bound).
    pub header_read_timeout: Duration,
    /// Time an idle connection is kept open for its next request; longer than the load
    /// balancer's own, so that it is always the balancer that closes one.
    pub keep_alive_timeout: Duration,
    /// Largest request head accepted (431 past it), and the buffer a connection may hold.
    pub max_header_bytes: usize,
    /// Time a client gets to send a request body (slow-body bound).
    pub body_read_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub session_ttl: Duration,
    /// How stale `last_active` may get before a read sends a touch.
    pub touch_interval: Duration,
    pub cookie: CookieConfig,
    /// Quota policies, one per metered operation (each with its plans' overrides).
    pub policies: Vec<Policy>,
    /// The plans a session may be put on (`[plans.<name>]`), in order.
    pub plans: Vec<Arc<str>>,
    /// Share of a quota past which grants count as `near_limit` in metrics.
    pub near_limit: f64,
    /// Bearer token of the internal API; `None` disables the internal routes.
    pub service_token: Option<String>,
    /// A second token accepted beside it while clients move from one to the other.
    pub service_token_next: Option<String>,
    /// Session creations allowed per client network, and per gateway process.
    pub creation_throttle: ThrottleConfig,
    /// Peers whose `X-Forwarded-For` is believed when finding a client's IP.
    pub trusted_proxies: Vec<IpNet>,
    /// The system of record; `None` turns write-behind and read-through off.
    pub supabase: Option<SupabaseConfig>,
    pub flush: FlushConfig,
    /// Run the flusher in this process (else only other gateways or `flush` mode do).
    pub flush_enabled: bool,
    /// Gateway mode: upstreams the public listener forwards to (see `routes`).
    pub routes: RouteTable,
    /// `None`: no CORS headers at all (browsers then refuse cross-origin reads).
    pub cors: Option<CorsConfig>,
    /// The TOML file as read (empty without one): a reload compares the settings it cannot
    /// apply against it.
    pub source: toml::Table,
}

/// Cross-origin access for browser apps served from other origins.
#[derive(Clone, Debug)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) allowed to call the API with credentials.
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
}

const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            internal_listen: None,
            environment: Environment::Development,
            log_format: LogFormat::Text,
            log_filter: "info".to_string(),
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_timeout: Duration::from_millis(250),
            redis_pool_size: 4,
            serving_threads: 0,
            redis_allow_eviction: false,
            redis_shards: crate::store::DEFAULT_SHARDS,
            near_cache_entries: 32_768,
            body_limit: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_header_bytes: 32 * 1024,
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            session_ttl: SESSION_TTL,
            touch_interval: Duration::from_secs(60),
            cookie: CookieConfig {
                name: "concept_session".to_string(),
                path: "/".to_string(),
                domain: None,
                same_site: cookie::SameSite::Lax,
                http_only: true,
                secure: false,
                max_age: SESSION_TTL,
            },
            policies: Policy::defaults(),
            plans: Vec::new(),
            near_limit: 0.8,
            service_token: None,
            service_token_next: None,
            creation_throttle: ThrottleConfig::default(),
            trusted_proxies: Vec::new(),
            supabase: None,
            flush: FlushConfig::default(),
            flush_enabled: true,
            routes: RouteTable::default(),
            cors: None,
            source: toml::Table::new(),
        }
    }
}
