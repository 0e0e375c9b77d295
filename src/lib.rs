//! sessiongate: anonymous sessions and their quotas, served from Redis.
//!
//! The crate is layered so each concern has one home:
//! - [`config`]: settings from the environment and an optional TOML file;
//! - [`session`] and [`preferences`]: the domain rules, free of HTTP and of Redis commands;
//! - [`store`]: the only module that speaks Redis (keys, commands, Lua scripts);
//! - [`http`]: listeners, routing, and translation between HTTP and the domain.
//!
//! [`start`] wires them together and returns a running [`Gateway`]; the binary adds signal
//! handling and logging around it.

pub mod config;
pub mod http;
pub mod preferences;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::{admin::Admin, api::Api, ConnectionLimits};
use crate::session::Sessions;
use crate::store::{Store, StoreConfig, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    #[error("cannot set up the redis client: {0}")]
    Redis(#[from] StoreError),
}

/// A running gateway: both listeners bound and serving.
pub struct Gateway {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    store: Store,
}

/// How long start-up waits for Redis before serving anyway (503 until Redis appears).
const WARM_UP: Duration = Duration::from_secs(2);

/// Binds the listeners, connects to Redis and starts serving.
pub async fn start(config: Config) -> Result<Gateway, StartError> {
    let public = http::bind(config.listen).await?;
    let admin = http::bind(config.admin_listen).await?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let store = Store::connect(&StoreConfig {
        url: config.redis_url.clone(),
        timeout: config.redis_timeout,
        pool_size: config.redis_pool_size,
        session_ttl: config.session_ttl,
        touch_interval: config.touch_interval,
    })?;
    if let Err(error) = store.warm_up(WARM_UP).await {
        tracing::warn!(%error, "redis not reachable yet; serving 503 until it is");
    }

    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let (shutdown, watcher) = watch::channel(false);
    let api = Arc::new(Api {
        sessions: Sessions::new(store.clone()),
        cookie: config.cookie.clone(),
        body_limit: config.body_limit,
    });
    let admin_state = Arc::new(Admin {
        store: store.clone(),
    });
    let servers = vec![
        tokio::spawn(http::serve(
            public,
            move |request| http::api::handle(api.clone(), request),
            limits,
            stopped(watcher.clone()),
        )),
        tokio::spawn(http::serve(
            admin,
            move |request| http::admin::handle(admin_state.clone(), request),
            limits,
            stopped(watcher),
        )),
    ];
    tracing::info!(%public_addr, %admin_addr, "sessiongate listening");
    Ok(Gateway {
        public_addr,
        admin_addr,
        shutdown,
        servers,
        store,
    })
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

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period), and closes
    /// the Redis connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        self.store.close().await;
    }
}
