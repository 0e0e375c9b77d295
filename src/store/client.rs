//! The connection pool and the session operations: connect, warm up, and one round trip per
//! request-path operation (`HMGET` for reads, `FCALL` of a loaded function per mutation).
//! With the near cache on, reads are answered from it when they can be, and otherwise sent
//! on the tracking connections (`tracking`), which fill it.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use uuid::Uuid;

use super::codec::{record, Shaped};
use super::error::StoreError;
use super::keys::{dirty_key, inflight_key, session_key, shard_of, SHARDS_KEY};
use super::lua::{self, load, Lua};
use super::near_cache::NearCache;
use super::tracking::tracked_pool;
use crate::model::quota::Policy;
use crate::model::session::SessionRecord;
use crate::telemetry;

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub url: String,
    pub timeout: Duration,
    pub pool_size: usize,
    pub session_ttl: Duration,
    pub touch_interval: Duration,
    /// Policies whose state (and usage counters) every read returns, in this order.
    pub policies: Vec<Policy>,
    pub shards: u32,
    /// Record changes in the outbox (write-behind configured).
    pub outbox: bool,
    /// Outbox size per shard at which session creation is refused.
    pub max_dirty_per_shard: u64,
    /// The process's near cache, when session reads may be served from memory.
    pub near_cache: Option<NearCache>,
}

/// A cheap-to-clone handle on the Redis connection pool and the loaded scripts, reading
/// sessions in the shape of one set of policies.
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
    pub(super) shape: Arc<Shaped>,
}

pub(super) struct Inner {
    pub(super) pool: Pool,
    pub(super) timeout: Duration,
    pub(super) ttl_secs: u64,
    pub(super) touch_interval_secs: u64,
    pub(super) shards: u32,
    pub(super) max_dirty_per_shard: u64,
    pub(super) scripts: Scripts,
    /// `session_lib.lua` with this deployment's settings in front: what every session
    /// script is built on, the quota scripts of each reload too.
    pub(super) session_lib: String,
    pub(super) near: Option<Near>,
}

/// The near cache and the tracking connections that keep it coherent.
pub(super) struct Near {
    cache: NearCache,
    pool: Pool,
}

pub(super) struct Scripts {
    pub(super) create: Lua,
    pub(super) touch: Lua,
    pub(super) set_preferences: Lua,
    pub(super) claim: Lua,
    pub(super) settle: Lua,
    pub(super) restore: Lua,
    pub(super) reset_quota: Lua,
    pub(super) set_plan: Lua,
    pub(super) erase: Lua,
}

impl Scripts {
    fn all(&self) -> [&Lua; 9] {
        [
            &self.create,
            &self.touch,
            &self.set_preferences,
            &self.claim,
            &self.settle,
            &self.restore,
            &self.reset_quota,
            &self.set_plan,
            &self.erase,
        ]
    }
}

impl Store {
    /// Builds the pool and starts connecting in the background. Start-up does not wait for
    /// Redis: a gateway started before Redis serves 503 until Redis appears, then recovers.
    pub fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let pool = builder(config)?.build_pool(config.pool_size)?;
        pool.connect();
        let near = match &config.near_cache {
            Some(cache) => {
                let pool = tracked_pool(builder(config)?, config.pool_size, config.timeout, cache)?;
                pool.connect();
                Some(Near {
                    cache: cache.clone(),
                    pool,
                })
            }
            None => None,
        };
        // The settings every session function reads, as literals in front of session_lib.lua
        // (see there): each configuration has functions of its own, in libraries of their own.
        let settings = format!(
            "local TTL, TOUCH_INTERVAL, USE_OUTBOX = '{}', {}, {}\n",
            config.session_ttl.as_secs(),
            config.touch_interval.as_secs(),
            config.outbox,
        );
        let session_lib = format!("{settings}{}", include_str!("session_lib.lua"));
        let on_session_lib = |op, body: &str| {
            Lua::new(
                op,
                &session_lib,
                &format!("session_call(KEYS, ARGV)\n{body}"),
            )
        };
        let shape = Arc::new(Shaped::of(&config.policies, &session_lib));
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                timeout: config.timeout,
                ttl_secs: config.session_ttl.as_secs(),
                touch_interval_secs: config.touch_interval.as_secs(),
                shards: config.shards.max(1),
                max_dirty_per_shard: config.max_dirty_per_shard,
                scripts: Scripts {
                    create: on_session_lib("create", include_str!("create.lua")),
                    touch: on_session_lib("touch", include_str!("touch.lua")),
                    set_preferences: on_session_lib(
                        "set_preferences",
                        include_str!("set_preferences.lua"),
                    ),
                    claim: Lua::new("claim", "", include_str!("claim.lua")),
                    settle: Lua::new("settle", "", include_str!("settle.lua")),
                    restore: Lua::new("restore", "", include_str!("restore.lua")),
                    reset_quota: on_session_lib("reset_quota", include_str!("reset_quota.lua")),
                    set_plan: on_session_lib("set_plan", include_str!("set_plan.lua")),
                    erase: Lua::new("erase", "", include_str!("erase.lua")),
                },
                near,
                session_lib,
            }),
            shape,
        })
    }

    /// This store, reading sessions in the shape of `policies` (a configuration reload):
    /// same connections and session functions; the quota functions of the new policies,
    /// which Redis loads on their first use (the old ones are swept out at the next start).
    pub fn reshaped(&self, policies: &[Policy]) -> Store {
        Store {
            inner: self.inner.clone(),
            shape: Arc::new(Shaped::of(policies, &self.inner.session_lib)),
        }
    }

    /// Waits (bounded) for the first connection, checks that the data in Redis was written
    /// with the configured shard count, loads the functions so the first requests do not
    /// pay for `FUNCTION LOAD`, and sweeps out the libraries of other configurations (see
    /// [`lua::install`]). Redis being unreachable is reported but not fatal; a shard mismatch
    /// is, since every session would look missing.
    pub async fn warm_up(&self, within: Duration) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.bounded_by(within, async {
            inner.pool.wait_for_connect().await?;
            let client = inner.pool.next_connected();
            let _: Value = client
                .set(SHARDS_KEY, inner.shards, None, Some(SetOptions::NX), false)
                .await?;
            let found: u32 = client.get(SHARDS_KEY).await?;
            if found != inner.shards {
                return Err(StoreError::ShardMismatch {
                    found,
                    configured: inner.shards,
                });
            }
            let quota = self.shape.quota_scripts.values();
            let quota = quota.flat_map(|policy| [&policy.consume, &policy.refund]);
            let current: Vec<&Lua> = inner.scripts.all().into_iter().chain(quota).collect();
            lua::install(client, &current).await
        })
        .await
    }

    /// Waits (bounded) until the pool's connections are up; the scripts are loaded already
    /// (by another pool's [`Store::warm_up`]) or reloaded on first use.
    pub async fn wait_connected(&self, within: Duration) -> Result<(), StoreError> {
        self.bounded_by(within, async {
            self.inner.pool.wait_for_connect().await?;
            if let Some(near) = &self.inner.near {
                near.pool.wait_for_connect().await?;
            }
            Ok(())
        })
        .await
    }

    /// Closes the connections; used on shutdown.
    pub async fn close(&self) {
        let _ = self.inner.pool.quit().await;
        if let Some(near) = &self.inner.near {
            let _ = near.pool.quit().await;
        }
    }

    /// `PING`: whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("ping", async {
            Ok(self.inner.pool.next_connected().ping::<()>(None).await?)
        })
        .await
    }

    /// The key of a session's hash.
    pub fn session_key(&self, id: &Uuid) -> String {
        session_key(id, self.inner.shards)
    }

    /// Creates a session under `id` and returns its record; `None` if the id is taken.
    pub async fn create(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let call = || {
            let (mut keys, mut args) = self.session_call(id);
            keys.push(inflight_key(shard_of(id, self.inner.shards)));
            args.push(Value::from(
                i64::try_from(self.inner.max_dirty_per_shard).unwrap_or(i64::MAX),
            ));
            (keys, args)
        };
        match self
            .eval(&self.inner.scripts.create, Some(id), call)
            .await?
        {
            Value::Null => Ok(None),
            Value::Integer(now) => Ok(Some(SessionRecord {
                created_at: now,
                last_active: now,
                usage: self
                    .shape
                    .shape
                    .counters
                    .iter()
                    .map(|name| (name.clone(), 0))
                    .collect(),
                preferences: None,
                plan: None,
                quota_states: Vec::new(),
            })),
            Value::String(s) if &*s == "backlog" => Err(StoreError::Backlog),
            _ => Err(StoreError::Reply("create.lua returned an unexpected value")),
        }
    }

    /// Reads a session and records activity on it (script; for requests that write anyway).
    pub async fn touch(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let call = || {
            let (keys, mut args) = self.session_call(id);
            args.extend(
                self.shape
                    .read_fields
                    .iter()
                    .map(|field| Value::Bytes(field.inner().clone())),
            );
            (keys, args)
        };
        let reply = self.eval(&self.inner.scripts.touch, Some(id), call).await?;
        record(reply, &self.shape.shape)
    }

    /// Reads a session without writing: from the near cache, or one plain `HMGET`.
    pub async fn read(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let Some(near) = &self.inner.near else {
            return self.read_from(&self.inner.pool, id).await;
        };
        if let Some(record) = near.cache.get(id, self.shape.generation) {
            // Redis expires a hash lazily and announces it late: past its TTL, ask Redis.
            if unix_now() - record.last_active < self.inner.ttl_secs as i64 {
                return Ok(Some(record));
            }
        }
        // Tracking connections down (or refused: Redis before 6 has no RESP3): read
        // uncached on the others.
        if !near.pool.next_connected().is_connected() {
            return self.read_from(&self.inner.pool, id).await;
        }
        let ticket = near.cache.begin(id);
        let read = self.read_from(&near.pool, id).await;
        if let Some(ticket) = ticket {
            near.cache.fill(
                ticket,
                read.as_ref().ok().and_then(Option::as_ref),
                self.shape.generation,
            );
        }
        read
    }

    async fn read_from(&self, pool: &Pool, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.session_key(id);
        let reply: Value = self
            .bounded_on(pool, "read", async {
                let client = pool.next_connected();
                Ok(client.hmget(key, self.shape.read_fields.clone()).await?)
            })
            .await?;
        record(reply, &self.shape.shape)
    }

    /// Whether a read at `now` should also record activity.
    pub fn is_stale(&self, last_active: i64, now: i64) -> bool {
        now - last_active >= self.inner.touch_interval_secs as i64
    }

    /// Replaces the preferences (`""` = default); `None` if the session does not exist.
    pub async fn set_preferences(
        &self,
        id: &Uuid,
        preferences: &str,
    ) -> Result<Option<i64>, StoreError> {
        let call = || {
            let (keys, mut args) = self.session_call(id);
            args.push(Value::from(preferences));
            (keys, args)
        };
        match self
            .eval(&self.inner.scripts.set_preferences, Some(id), call)
            .await?
        {
            Value::Null => Ok(None),
            Value::Integer(now) => Ok(Some(now)),
            _ => Err(StoreError::Reply(
                "set_preferences.lua returned neither nil nor an integer",
            )),
        }
    }

    /// The keys and leading arguments every session script takes (see `session_lib.lua`).
    pub(super) fn session_call(&self, id: &Uuid) -> (Vec<String>, Vec<Value>) {
        let shards = self.inner.shards;
        let keys = vec![session_key(id, shards), dirty_key(shard_of(id, shards))];
        let mut buffer = Uuid::encode_buffer();
        let id = id.hyphenated().encode_lower(&mut buffer);
        (keys, vec![Value::from(&*id)])
    }

    /// `FCALL` of `lua` with the keys and arguments `call` makes, loading its library and
    /// retrying once (with a second `call`) if Redis does not have it: built again rather
    /// than kept in case, since copying them was a twentieth of a consume's cost. `session`
    /// names the session the function may change.
    pub(super) async fn eval(
        &self,
        lua: &Lua,
        session: Option<&Uuid>,
        call: impl Fn() -> (Vec<String>, Vec<Value>) + Sync,
    ) -> Result<Value, StoreError> {
        let result = self
            .bounded(lua.op, async {
                let client = self.inner.pool.next_connected();
                let (keys, args) = call();
                match client.fcall(lua.name.clone(), keys, args).await {
                    Err(error) if error.details().contains("Function not found") => {
                        tracing::info!(op = lua.op, "function missing in redis, loading it");
                        telemetry::script_reloaded();
                        load(client, lua).await?;
                        let (keys, args) = call();
                        Ok(client.fcall(lua.name.clone(), keys, args).await?)
                    }
                    result => Ok(result?),
                }
            })
            .await;
        // What this process cached of the session goes, whatever the outcome (a call that
        // timed out may have run).
        if let (Some(near), Some(id)) = (&self.inner.near, session) {
            near.cache.forget(id);
        }
        result
    }

    /// Runs one Redis call within the configured timeout, measuring it as `op`.
    ///
    /// The call is boxed before anything else: a fred command future is about 5 KiB, and
    /// every async layer that held it inline would copy it again on each request (the
    /// profile showed those copies as a tenth of the gateway's CPU time).
    pub(super) fn bounded<'a, T: 'a>(
        &'a self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a {
        self.bounded_on(&self.inner.pool, op, work)
    }

    /// [`Store::bounded`] for a call sent on `pool`'s connections.
    fn bounded_on<'a, T: 'a>(
        &'a self,
        pool: &'a Pool,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a {
        let work = Box::pin(work);
        let limit = self.inner.timeout;
        async move {
            let started = std::time::Instant::now();
            // Known down (fred saw the connection close and is reconnecting): answer now
            // rather than hold every request for the whole timeout. fred reconnects on its
            // own, within half a second of Redis's return, and the next call goes through.
            let result = if !pool.next_connected().is_connected() {
                Err(StoreError::Unreachable)
            } else {
                // fred's own command timeout, set to the same limit, usually fires first.
                match tokio::time::timeout(limit, work).await {
                    Ok(Err(StoreError::Redis(error))) if *error.kind() == ErrorKind::Timeout => {
                        Err(timed_out(pool, limit))
                    }
                    Ok(result) => result,
                    Err(_) => Err(timed_out(pool, limit)),
                }
            };
            telemetry::redis_call(op, started.elapsed());
            match &result {
                Err(StoreError::Timeout(_)) => telemetry::redis_error("timeout"),
                Err(StoreError::Unreachable) => telemetry::redis_error("unreachable"),
                Err(StoreError::Redis(_)) => telemetry::redis_error("redis"),
                Err(StoreError::Reply(_)) => telemetry::redis_error("reply"),
                _ => {}
            }
            result
        }
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}

/// A call that ran out of time: Redis was slow, or there was no connection to send it on
/// (fred queues commands while it reconnects), which an operator needs told apart.
fn timed_out(pool: &Pool, limit: Duration) -> StoreError {
    match pool.next_connected().is_connected() {
        true => StoreError::Timeout(limit),
        false => StoreError::Unreachable,
    }
}

/// The pool settings every store connection shares.
pub(super) fn builder(config: &StoreConfig) -> Result<Builder, StoreError> {
    let mut builder = Builder::from_config(Config::from_url(&config.url)?);
    builder
        .with_config(|c| c.fail_fast = false)
        .with_performance_config(|p| p.default_command_timeout = config.timeout)
        .with_connection_config(|c| {
            c.connection_timeout = config.timeout.max(Duration::from_secs(1));
            c.internal_command_timeout = config.timeout.max(Duration::from_secs(1));
            c.max_command_attempts = 2;
        })
        // Unlimited attempts, 10 ms doubling to 500 ms: back within half a second of Redis.
        .set_policy(ReconnectPolicy::new_exponential(0, 10, 500, 2));
    Ok(builder)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
