//! Configuration reload (`SIGHUP`, contract addendum 2): quota policies, plans, routes, CORS,
//! the creation throttle and the near-limit fraction, applied to the requests that start
//! after it. Part of the composition root: it builds the handlers' [`Api`] and swaps it.
//!
//! Every listener thread serves from an [`ApiCell`]: its current `Api`, replaced whole. A
//! request takes the `Arc<Api>` in the cell when it starts and keeps it to its end, so a
//! reload never changes a request half-way, and no connection notices one. A reload builds
//! each cell a new `Api` over the same Redis connections (the store reshaped for the new
//! policies' counters and quota states), the same upstream connection pools and the same
//! read-through; the creation throttle, shared by every thread, takes its new limits in
//! place.
//!
//! What a reload cannot apply (listen addresses, Redis and Supabase, shard count, timeouts,
//! cookie, tokens...) is left as it is and named: [`Reloader::reload`] returns the file
//! settings that changed and need a restart.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::erasure::Erasure;
use crate::flush::{ReadThrough, Supabase};
use crate::http::state::{Api, Browser, Forwarding, Intake, Internal, Upstreams};
use crate::http::SessionCookie;
use crate::quota::Quotas;
use crate::session::Sessions;
use crate::store::{NearCache, Store};
use crate::telemetry;
use crate::throttle::CreationThrottle;

/// A listener thread's current [`Api`].
pub struct ApiCell {
    current: ArcSwap<Api>,
    /// Whether `/internal/` is served by this listener.
    served_here: bool,
}

impl ApiCell {
    /// The `Api` for a request starting now.
    pub fn load(&self) -> Arc<Api> {
        self.current.load_full()
    }
}

/// Builds every listener's `Api`, and rebuilds them all on reload.
pub struct Reloader {
    parts: Mutex<Parts>,
    near_cache: Option<NearCache>,
}

/// What an `Api` is built from: the configuration in force and the gateway-wide parts.
struct Parts {
    config: Config,
    creations: Arc<CreationThrottle>,
    read_through: Option<ReadThrough>,
    supabase: Option<Supabase>,
    /// Every listener thread's cell, and its store in the shape of the policies in force.
    cells: Vec<(Arc<ApiCell>, Store)>,
}

impl Reloader {
    pub fn new(
        config: Config,
        creations: Arc<CreationThrottle>,
        read_through: Option<ReadThrough>,
        supabase: Option<Supabase>,
        near_cache: Option<NearCache>,
    ) -> Reloader {
        Reloader {
            parts: Mutex::new(Parts {
                config,
                creations,
                read_through,
                supabase,
                cells: Vec::new(),
            }),
            near_cache,
        }
    }

    /// A cell for a listener thread with its own `store`.
    pub fn cell(&self, store: Store, served_here: bool) -> Arc<ApiCell> {
        let mut parts = lock(&self.parts);
        let api = parts.api(store.clone(), served_here, Upstreams::default());
        let cell = Arc::new(ApiCell {
            current: ArcSwap::from_pointee(api),
            served_here,
        });
        parts.cells.push((cell.clone(), store));
        cell
    }

    /// Applies what a running gateway can of `config` (see the module doc) to every
    /// request that starts from now on. Returns the file settings that changed but need a
    /// restart, which stay as they were.
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        let mut parts = lock(&self.parts);
        let parts = &mut *parts;
        let needs_restart = parts.config.restart_changes(&config);
        let reshape = parts.config.policies != config.policies;
        let running = &mut parts.config;
        running.policies = config.policies;
        running.plans = config.plans;
        running.routes = config.routes;
        running.cors = config.cors;
        running.creation_throttle = config.creation_throttle;
        running.near_limit = config.near_limit;
        parts.creations.reconfigure(&parts.config.creation_throttle);
        let mut cells = std::mem::take(&mut parts.cells);
        for (cell, store) in &mut cells {
            if reshape {
                *store = store.reshaped(&parts.config.policies);
            }
            let upstreams = cell.current.load().forwarding.upstreams.clone();
            let api = parts.api(store.clone(), cell.served_here, upstreams);
            cell.current.store(Arc::new(api));
        }
        parts.cells = cells;
        // Records read in the old shape are never served again (see `store::near_cache`);
        // they go now rather than wait for eviction.
        if let (true, Some(cache)) = (reshape, &self.near_cache) {
            cache.drop_all();
        }
        telemetry::config_reload("ok");
        needs_restart
    }
}

impl Parts {
    /// The use cases and settings the handlers share, over `store` (each listener thread
    /// has its own; the creation throttle and read-through are one for the whole gateway).
    fn api(&self, store: Store, served_here: bool, upstreams: Upstreams) -> Api {
        let config = &self.config;
        let read_through = self.read_through.clone();
        Api {
            sessions: Sessions::new(store.clone(), self.creations.clone(), read_through.clone()),
            erasure: Erasure::new(store.clone(), self.supabase.clone()),
            quotas: Quotas::new(
                store,
                config.policies.clone(),
                config.plans.clone(),
                read_through.clone(),
                config.near_limit,
            ),
            read_through,
            browser: Browser {
                cookie: SessionCookie::new(config.cookie.clone()),
                cors: config.cors.clone(),
            },
            intake: Intake {
                body_limit: config.body_limit,
                body_read_timeout: config.body_read_timeout,
                trusted_proxies: config.trusted_proxies.clone(),
            },
            internal: Internal {
                tokens: config
                    .service_token
                    .iter()
                    .chain(&config.service_token_next)
                    .cloned()
                    .collect(),
                served_here,
            },
            forwarding: Forwarding {
                routes: config.routes.clone(),
                upstreams,
            },
        }
    }
}

/// Nothing under the lock can panic (it assigns and builds values), so a poisoned lock is
/// taken as it is rather than turned into a panic of its own.
fn lock(parts: &Mutex<Parts>) -> MutexGuard<'_, Parts> {
    parts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
