//! sessiongate: anonymous sessions and their quotas, served from Redis.
//!
//! The crate is layered so each concern has one home:
//! - [`config`]: settings from the environment and an optional TOML file;
//! - [`model`]: plain data and pure rules (session records, quota windows), importing nothing;
//! - [`session`], [`preferences`] and [`quota`]: the domain rules, free of HTTP and of Redis
//!   commands; [`erasure`]: forgetting a session everywhere; [`throttle`]: how fast sessions
//!   may be created;
//! - [`store`]: the only module that speaks Redis (keys, commands, Lua scripts);
//! - [`flush`]: write-behind to Supabase and read-through back (the only module that knows
//!   Supabase);
//! - [`path`]: the canonical form of a request path, before anything routes on it;
//! - [`routes`]: the gateway-mode route table (path + method → upstream + quota);
//! - [`reload`]: the handlers' shared state, built at start-up and again on `SIGHUP`;
//! - [`http`]: listeners, routing, and translation between HTTP and the domain;
//! - [`telemetry`]: metric names, descriptions and the Prometheus recorder.
//!
//! [`start`] wires them together and returns a running [`Gateway`], with the public listener
//! on [`serving`] threads; the binary adds signal handling and logging around it.

pub mod config;
pub mod erasure;
pub mod flush;
pub mod health;
pub mod http;
pub mod log_limit;
pub mod model;
pub mod path;
pub mod preferences;
pub mod quota;
pub mod reload;
pub mod routes;
pub mod service_error;
pub mod serving;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::flush::{Flusher, ReadThrough, Supabase, SupabaseError};
use crate::health::Health;
use crate::http::admin::Admin;
use crate::http::ConnectionLimits;
use crate::reload::Reloader;
use crate::serving::{Plan, ServingThreads};
use crate::store::{NearCache, Store, StoreConfig, StoreError};
use crate::throttle::CreationThrottle;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    #[error("cannot set up the redis client: {0}")]
    Redis(#[from] StoreError),
    #[error("cannot set up the supabase client: {0}")]
    Supabase(#[from] SupabaseError),
    /// A setting that does not fit what it meets (exit code 2, as for any bad setting).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A running gateway: both listeners bound and serving.
pub struct Gateway {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    internal_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// The public listener's threads; they end on shutdown.
    serving: ServingThreads,
    /// The internal listener, housekeeping and the flusher; all end on shutdown.
    tasks: Vec<JoinHandle<()>>,
    /// The admin listener outlives the others' drain, so `/readyz` can say "draining" and
    /// `/metrics` can be scraped until the end.
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    store: Store,
    reloader: Arc<Reloader>,
}

/// How long start-up waits for Redis before serving anyway (503 until Redis appears).
const WARM_UP: Duration = Duration::from_secs(2);

/// Binds the listeners, connects to Redis and starts serving.
pub async fn start(config: Config) -> Result<Gateway, StartError> {
    telemetry::recorder();
    let threads = match config.serving_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let public = serving::bind(config.listen, threads)?;
    let admin = http::bind(config.admin_listen).await?;
    let public_addr = public[0].local_addr()?;
    let admin_addr = admin.local_addr()?;
    let internal = match config.internal_listen {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let internal_addr = internal.as_ref().map(TcpListener::local_addr).transpose()?;

    let store_config = StoreConfig {
        url: config.redis_url.clone(),
        timeout: config.redis_timeout,
        pool_size: config.redis_pool_size,
        session_ttl: config.session_ttl,
        touch_interval: config.touch_interval,
        policies: config.policies.clone(),
        shards: config.redis_shards,
        outbox: config.supabase.is_some(),
        max_dirty_per_shard: config
            .flush
            .max_backlog
            .div_ceil(u64::from(config.redis_shards.max(1))),
        // Off on Redis Cluster: a slot moved to another node is read on a connection
        // nothing has told to track.
        near_cache: (config.near_cache_entries > 0
            && !config.redis_url.starts_with("redis-cluster"))
        .then(|| NearCache::new(config.near_cache_entries)),
    };
    let store = Store::connect(&store_config)?;
    let redis_answered = match store.warm_up(WARM_UP).await {
        Err(error @ StoreError::ShardMismatch { .. }) => {
            return Err(ConfigError::new("redis.shards", error.to_string()).into())
        }
        Err(error @ StoreError::TooOld) => {
            return Err(ConfigError::new("redis.url", error.to_string()).into())
        }
        Err(error) => {
            tracing::warn!(%error, "redis not reachable yet; serving 503 until it is");
            false
        }
        Ok(()) => true,
    };
    if redis_answered {
        check_redis_settings(&store, config.redis_allow_eviction).await?;
    }

    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        keep_alive_timeout: config.keep_alive_timeout,
        max_header_bytes: config.max_header_bytes,
        shutdown_grace: config.shutdown_grace,
    };
    let (shutdown, watcher) = watch::channel(false);
    let supabase = match &config.supabase {
        Some(supabase) => Some(Supabase::new(supabase)?),
        None => {
            tracing::info!("SUPABASE_URL is not set: write-behind and read-through are off");
            None
        }
    };
    let read_through = supabase.as_ref().map(|supabase| {
        ReadThrough::new(
            store.clone(),
            supabase.clone(),
            config.session_ttl,
            &config.flush,
        )
    });
    if config.service_token.is_none() {
        tracing::info!("SESSIONGATE_SERVICE_TOKEN is not set: the internal quota API is disabled");
    }
    let creations = Arc::new(CreationThrottle::new(&config.creation_throttle));
    let served_here = internal.is_none();
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        creations.clone(),
        read_through.clone(),
        supabase.clone(),
        store_config.near_cache.clone(),
    ));
    let health = Health::new(
        store.clone(),
        config.supabase.is_some(),
        watcher.clone(),
        redis_answered,
    );
    // The write-behind gauges exist from the start (Redis answering), not from the first
    // scrape that could read them: their alerts must not depend on Redis at scrape time.
    health.refresh_gauges().await;
    let probe = health.probe_redis(stopped(watcher.clone()));
    let admin_state = Arc::new(Admin { health });
    let trusted_proxies: Arc<[ipnet::IpNet]> = config.trusted_proxies.clone().into();
    let (admin_stop, admin_watcher) = watch::channel(false);
    let admin_task = tokio::spawn(http::serve(
        "admin",
        admin,
        move |request, _peer| http::admin::handle(admin_state.clone(), request),
        limits,
        Arc::from([]),
        stopped(admin_watcher),
    ));
    let mut tasks = Vec::new();
    if let Some(internal) = internal {
        let api = reloader.cell(store.clone(), false);
        tasks.push(tokio::spawn(http::serve(
            "internal",
            internal,
            move |request, _peer| http::internal::handle_listener(api.load(), request),
            limits,
            trusted_proxies.clone(),
            stopped(watcher.clone()),
        )));
    }
    let near_cache = store_config.near_cache.clone();
    let mut serving = ServingThreads::start(
        public,
        Plan {
            store: store_config,
            api: {
                let reloader = reloader.clone();
                move |store| reloader.cell(store, served_here)
            },
            limits,
            trusted_proxies,
            redis_answered,
            warm_up: WARM_UP,
        },
        watcher.clone(),
    )?;
    serving.accepting().await;
    tasks.extend([
        tokio::spawn(housekeeping(
            creations,
            near_cache,
            stopped(watcher.clone()),
        )),
        tokio::spawn(probe),
    ]);
    if let (Some(supabase), true) = (supabase, config.flush_enabled) {
        let flusher = Flusher::new(store.clone(), supabase, config.flush.clone());
        tasks.push(tokio::spawn(flusher.run(stopped(watcher))));
    }
    tracing::info!(%public_addr, %admin_addr, ?internal_addr, "sessiongate listening");
    Ok(Gateway {
        public_addr,
        admin_addr,
        internal_addr,
        shutdown,
        serving,
        tasks,
        admin_stop,
        admin_task,
        store,
        reloader,
    })
}

/// Refuses a Redis that may evict sessions (unless allowed), and says what it keeps on disk:
/// both decide what an outage or a memory squeeze costs.
async fn check_redis_settings(store: &Store, allow_eviction: bool) -> Result<(), StartError> {
    let settings = match store.settings().await {
        Ok(settings) => settings,
        Err(error) => {
            tracing::warn!(%error, "cannot read redis's eviction and persistence settings");
            return Ok(());
        }
    };
    if settings.evicts() && !allow_eviction {
        return Err(ConfigError::new(
            "redis.allow_eviction",
            format!(
                "redis evicts keys (maxmemory-policy {}): sessions and their quota windows \
                 would vanish under memory pressure; set maxmemory-policy noeviction, or \
                 redis.allow_eviction = true to accept that",
                settings.maxmemory_policy
            ),
        )
        .into());
    }
    let rdb = settings.rdb_schedule.as_deref();
    tracing::info!(
        maxmemory_policy = %settings.maxmemory_policy,
        aof = settings.aof,
        rdb_schedule = rdb.unwrap_or("unknown"),
        "redis persistence"
    );
    if !settings.aof && rdb == Some("") {
        tracing::warn!(
            "redis keeps nothing on disk: a restart loses every change not yet written behind"
        );
    }
    Ok(())
}

/// Keeps what grows with traffic bounded: the creation throttle as small as the set of
/// recently active clients, the latency samples folded into their histograms.
async fn housekeeping(
    creations: Arc<CreationThrottle>,
    near_cache: Option<NearCache>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(stop);
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {
                telemetry::upkeep();
                if let Some(cache) = &near_cache {
                    telemetry::near_cache_entries(cache.len());
                }
                if round % 12 == 0 {
                    creations.forget_idle();
                }
            }
            () = &mut stop => return,
        }
    }
}

async fn stopped(mut watcher: watch::Receiver<bool>) {
    // An error means the sender is gone, which is a shutdown too.
    let _ = watcher.wait_for(|stop| *stop).await;
}

impl Gateway {
    /// The bound public address (useful when configured with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The bound internal-API address, when `internal_listen` is set.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Applies what a running gateway can of `config` (policies, plans, routes, CORS, the
    /// creation throttle; see [`reload`]) to the requests that start from now on, and
    /// returns the file settings that changed but take a restart (left as they are).
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        self.reloader.reload(config)
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period), and closes
    /// the Redis connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.serving.finished().await;
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        self.store.close().await;
    }
}
