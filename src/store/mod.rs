//! The Redis store: the only module that knows Redis commands, keys and scripts.
//!
//! # Layout
//! The keyspace is split into a fixed number of *shards* (`redis.shards`, default 64); a
//! session belongs to shard `uuid mod shards`. Every key of a shard carries the hash tag
//! `{<shard>}`, so a session, its idempotency records and its shard's outbox live in one
//! cluster slot, and every script touches a single slot: the same scripts run on a single
//! Redis and on Redis Cluster, and the outbox is written in the same script as the change.
//!
//! | key | what |
//! |---|---|
//! | `sg:{<shard>}:<id>` | the session hash (fields below), TTL 30 days, slid on activity |
//! | `sg:{<shard>}:<id>:idem:<action>:<operation>:<key>` | an idempotent quota answer |
//! | `sg:{<shard>}:dirty` | outbox: sessions changed since their last flush (zset by first-dirty ms) |
//! | `sg:{<shard>}:inflight` | sessions claimed by a flusher (zset by lease deadline ms) |
//! | `sg:dead-letter` | stream of rows the system of record refused |
//! | `sg:shards` | the shard count the data was written with (checked at start-up) |
//!
//! Session fields are one letter because every byte is paid for once per session:
//!
//! | field | meaning |
//! |---|---|
//! | `c` | created at, Unix seconds (Redis `TIME`) |
//! | `a` | last active, Unix seconds, rewritten at most once per touch interval |
//! | `g`, `r`, `s` | usage counters: concepts generated, refined, stored (absent = 0) |
//! | `p` | preferences as compact JSON (absent = `{}`) |
//! | `q:<operation>` | quota window state of one policy (see [`crate::model::quota`]) |
//! | `v` | version, bumped by every change; the system of record keeps the newest |
//!
//! # Round trips
//! Every request-path operation is exactly one command: a plain `HMGET` for reads, one
//! `EVALSHA` per mutation. Scripts are loaded at start-up and reloaded transparently when
//! Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`). Every call is bounded by
//! the configured timeout.
//!
//! The submodules add the quota scripts ([`quota`]) and the outbox side used by the flusher
//! ([`outbox`]).

mod outbox;
mod quota;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use uuid::Uuid;

pub use outbox::{Backlog, Claim};
pub use quota::{QuotaAnswer, QuotaOutcome, QuotaRequest};

use crate::model::quota::Policy;
use crate::model::session::{SessionRecord, Snapshot, Usage};
use crate::telemetry;

/// Why the store could not answer. Every variant means "try again later" to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    #[error("the write-behind backlog is full")]
    Backlog,
    /// Not Redis's doing: the read-through budget (see `flush::ReadThrough`) is spent. It
    /// travels as a store error because it ends a session lookup the same way: 503.
    #[error("too many sessions are being looked up in supabase")]
    ReadThroughBusy,
    /// Not Redis's doing either: a session missing from Redis could not be looked up in
    /// the system of record (Supabase unreachable or failing). Also 503, for the same reason.
    #[error("the system of record could not be asked for a session")]
    RecordUnavailable,
    #[error("redis holds data sharded {found} ways, but redis.shards is {configured}")]
    ShardMismatch { found: u32, configured: u32 },
}

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub url: String,
    pub timeout: Duration,
    pub pool_size: usize,
    pub session_ttl: Duration,
    pub touch_interval: Duration,
    /// Policies whose state every read returns, in this order.
    pub policies: Vec<Policy>,
    pub shards: u32,
    /// Record changes in the outbox (write-behind configured).
    pub outbox: bool,
    /// Outbox size per shard at which session creation is refused.
    pub max_dirty_per_shard: u64,
}

/// The default number of keyspace shards.
pub const DEFAULT_SHARDS: u32 = 64;

/// A cheap-to-clone handle on the Redis connection pool and the loaded scripts.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    timeout: Duration,
    ttl_secs: u64,
    touch_interval_secs: u64,
    shards: u32,
    outbox: bool,
    max_dirty_per_shard: u64,
    scripts: Scripts,
    /// `FIELDS` followed by the quota field of every policy: what a read fetches.
    read_fields: Vec<String>,
}

/// A Lua script and the operation name its calls are measured under.
struct Lua {
    op: &'static str,
    script: Script,
}

impl Lua {
    fn new(op: &'static str, source: String) -> Lua {
        Lua {
            op,
            script: Script::from_lua(source),
        }
    }
}

struct Scripts {
    create: Lua,
    touch: Lua,
    set_preferences: Lua,
    consume: Lua,
    refund: Lua,
    commit: Lua,
    claim: Lua,
    settle: Lua,
    restore: Lua,
}

impl Scripts {
    fn all(&self) -> [&Lua; 9] {
        [
            &self.create,
            &self.touch,
            &self.set_preferences,
            &self.consume,
            &self.refund,
            &self.commit,
            &self.claim,
            &self.settle,
            &self.restore,
        ]
    }
}

/// The session fields every read returns, in this order.
const FIELDS: [&str; 6] = ["c", "a", "g", "r", "s", "p"];

const SHARDS_KEY: &str = "sg:shards";

/// The key of a session's hash: `sg:{<shard>}:<id>`.
pub fn session_key(id: &Uuid, shards: u32) -> String {
    format!("{}{}", shard_prefix(shard_of(id, shards)), id.hyphenated())
}

fn shard_of(id: &Uuid, shards: u32) -> u32 {
    (id.as_u128() % u128::from(shards.max(1))) as u32
}

/// `sg:{<shard>}:`, the prefix of every key of a shard.
fn shard_prefix(shard: u32) -> String {
    format!("sg:{{{shard}}}:")
}

impl Store {
    /// Builds the pool and starts connecting in the background. Start-up does not wait for
    /// Redis: a gateway started before Redis serves 503 until Redis appears, then recovers.
    pub fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let redis_config = Config::from_url(&config.url)?;
        let pool = Builder::from_config(redis_config)
            .with_config(|c| c.fail_fast = false)
            .with_performance_config(|p| p.default_command_timeout = config.timeout)
            .with_connection_config(|c| {
                c.connection_timeout = config.timeout.max(Duration::from_secs(1));
                c.internal_command_timeout = config.timeout.max(Duration::from_secs(1));
                c.max_command_attempts = 2;
            })
            // Unlimited attempts, 10 ms doubling to 500 ms: back within half a second of Redis.
            .set_policy(ReconnectPolicy::new_exponential(0, 10, 500, 2))
            .build_pool(config.pool_size)?;
        pool.connect();
        let with_session_lib =
            |script: &str| format!("{}\n{script}", include_str!("session_lib.lua"));
        let with_quota_lib = |script: &str| {
            with_session_lib(&format!("{}\n{script}", include_str!("quota_lib.lua")))
        };
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                timeout: config.timeout,
                ttl_secs: config.session_ttl.as_secs(),
                touch_interval_secs: config.touch_interval.as_secs(),
                shards: config.shards.max(1),
                outbox: config.outbox,
                max_dirty_per_shard: config.max_dirty_per_shard,
                scripts: Scripts {
                    create: Lua::new("create", with_session_lib(include_str!("create.lua"))),
                    touch: Lua::new("touch", with_session_lib(include_str!("touch.lua"))),
                    set_preferences: Lua::new(
                        "set_preferences",
                        with_session_lib(include_str!("set_preferences.lua")),
                    ),
                    consume: Lua::new("consume", with_quota_lib(include_str!("consume.lua"))),
                    refund: Lua::new("refund", with_quota_lib(include_str!("refund.lua"))),
                    commit: Lua::new("commit", with_session_lib(include_str!("commit.lua"))),
                    claim: Lua::new("claim", include_str!("claim.lua").to_string()),
                    settle: Lua::new("settle", include_str!("settle.lua").to_string()),
                    restore: Lua::new("restore", include_str!("restore.lua").to_string()),
                },
                read_fields: FIELDS
                    .iter()
                    .map(|f| f.to_string())
                    .chain(config.policies.iter().map(quota::field))
                    .collect(),
            }),
        })
    }

    /// Waits (bounded) for the first connection, checks that the data in Redis was written
    /// with the configured shard count, and loads the scripts so the first requests do not
    /// pay for `SCRIPT LOAD`. Redis being unreachable is reported but not fatal; a shard
    /// mismatch is, since every session would look missing.
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
            for lua in inner.scripts.all() {
                lua.script.load(client).await?;
            }
            Ok(())
        })
        .await
    }

    /// Closes the connections; used on shutdown.
    pub async fn close(&self) {
        let _ = self.inner.pool.quit().await;
    }

    /// `PING`, for readiness.
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

    /// Creates a session under `id`; `None` if the id is already taken.
    pub async fn create(&self, id: &Uuid) -> Result<Option<i64>, StoreError> {
        let (mut keys, mut args) = self.session_call(id);
        keys.push(format!(
            "{}inflight",
            shard_prefix(shard_of(id, self.inner.shards))
        ));
        args.push(Value::from(
            i64::try_from(self.inner.max_dirty_per_shard).unwrap_or(i64::MAX),
        ));
        match self.eval(&self.inner.scripts.create, keys, args).await? {
            Value::Null => Ok(None),
            Value::Integer(now) => Ok(Some(now)),
            Value::String(s) if &*s == "backlog" => Err(StoreError::Backlog),
            _ => Err(StoreError::Reply("create.lua returned an unexpected value")),
        }
    }

    /// Reads a session and records activity on it (script; for requests that write anyway).
    pub async fn touch(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let (keys, args) = self.session_call(id);
        let reply = self.eval(&self.inner.scripts.touch, keys, args).await?;
        record(reply)
    }

    /// Reads a session without writing: one plain `HMGET`.
    pub async fn read(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.session_key(id);
        let reply: Value = self
            .bounded("read", async {
                let client = self.inner.pool.next_connected();
                Ok(client.hmget(key, self.inner.read_fields.clone()).await?)
            })
            .await?;
        record(reply)
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
        let (keys, mut args) = self.session_call(id);
        args.push(Value::from(preferences));
        match self
            .eval(&self.inner.scripts.set_preferences, keys, args)
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
    fn session_call(&self, id: &Uuid) -> (Vec<String>, Vec<Value>) {
        let prefix = shard_prefix(shard_of(id, self.inner.shards));
        let keys = vec![
            format!("{prefix}{}", id.hyphenated()),
            format!("{prefix}dirty"),
        ];
        let args = vec![
            Value::from(id.hyphenated().to_string()),
            Value::from(self.inner.ttl_secs as i64),
            Value::from(self.inner.touch_interval_secs as i64),
            Value::from(if self.inner.outbox { "1" } else { "0" }),
        ];
        (keys, args)
    }

    /// Whether a connection to Redis is up (for `/readyz` and `sessiongate_redis_up`).
    pub fn is_connected(&self) -> bool {
        self.inner.pool.next_connected().is_connected()
    }

    /// `EVALSHA`, loading the script and retrying once if Redis has forgotten it.
    async fn eval(
        &self,
        lua: &Lua,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        let script = &lua.script;
        self.bounded(lua.op, async {
            let client = self.inner.pool.next_connected();
            match client
                .evalsha(script.sha1().clone(), keys.clone(), args.clone())
                .await
            {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    tracing::info!(op = lua.op, "script missing in redis, reloading");
                    telemetry::script_reloaded();
                    script.load(client).await?;
                    Ok(client.evalsha(script.sha1().clone(), keys, args).await?)
                }
                result => Ok(result?),
            }
        })
        .await
    }

    /// Runs one Redis call within the configured timeout, measuring it as `op`.
    ///
    /// The call is boxed before anything else: a fred command future is about 5 KiB, and
    /// every async layer that held it inline would copy it again on each request (the
    /// profile showed those copies as a tenth of the gateway's CPU time).
    fn bounded<'a, T: 'a>(
        &'a self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a {
        let work = Box::pin(work);
        let limit = self.inner.timeout;
        async move {
            let started = std::time::Instant::now();
            let result = match tokio::time::timeout(limit, work).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(limit)),
            };
            telemetry::redis_call(op, started.elapsed());
            match &result {
                Err(StoreError::Timeout(_)) => telemetry::redis_error("timeout"),
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

/// Decodes an `HMGET c a g r s p [q:...]` reply; nil `c` (or a script's `false`) means no
/// session.
fn record(reply: Value) -> Result<Option<SessionRecord>, StoreError> {
    let fields = match reply {
        Value::Null => return Ok(None),
        Value::Array(fields) if fields.len() >= FIELDS.len() => fields,
        _ => return Err(StoreError::Reply("expected the session fields")),
    };
    if fields[0].is_null() {
        return Ok(None);
    }
    Ok(Some(SessionRecord {
        created_at: int(&fields[0])?,
        last_active: int(&fields[1])?,
        usage: Usage {
            concepts_generated: counter(&fields[2])?,
            concepts_refined: counter(&fields[3])?,
            concepts_stored: counter(&fields[4])?,
        },
        preferences: text(&fields[5])?,
        quota_states: fields[FIELDS.len()..]
            .iter()
            .map(text)
            .collect::<Result<_, _>>()?,
    }))
}

/// Decodes an `HGETALL` of a session into everything the system of record keeps.
fn snapshot(id: Uuid, fields: Vec<Value>) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot {
        id,
        record: SessionRecord {
            created_at: 0,
            last_active: 0,
            usage: Usage::default(),
            preferences: None,
            quota_states: Vec::new(),
        },
        quotas: Vec::new(),
        version: 0,
    };
    let mut pairs = fields.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        let name = name
            .as_str()
            .ok_or(StoreError::Reply("a session field name is not text"))?;
        let record = &mut snapshot.record;
        match &*name {
            "c" => record.created_at = int(&value)?,
            "a" => record.last_active = int(&value)?,
            "g" => record.usage.concepts_generated = counter(&value)?,
            "r" => record.usage.concepts_refined = counter(&value)?,
            "s" => record.usage.concepts_stored = counter(&value)?,
            "p" => record.preferences = text(&value)?,
            "v" => snapshot.version = int(&value)?,
            other => {
                if let (Some(operation), Some(state)) = (other.strip_prefix("q:"), text(&value)?) {
                    snapshot.quotas.push((operation.to_string(), state));
                }
            }
        }
    }
    Ok(snapshot)
}

/// The `HSET` arguments that store a snapshot (`restore.lua`).
fn snapshot_fields(snapshot: &Snapshot) -> Vec<Value> {
    let record = &snapshot.record;
    let mut fields: Vec<Value> = vec![
        "c".into(),
        record.created_at.into(),
        "a".into(),
        record.last_active.into(),
        "v".into(),
        snapshot.version.into(),
    ];
    for (name, count) in [
        ("g", record.usage.concepts_generated),
        ("r", record.usage.concepts_refined),
        ("s", record.usage.concepts_stored),
    ] {
        if count > 0 {
            fields.extend([Value::from(name), Value::from(count as i64)]);
        }
    }
    if let Some(preferences) = &record.preferences {
        fields.extend([Value::from("p"), Value::from(preferences.as_str())]);
    }
    for (operation, state) in &snapshot.quotas {
        fields.extend([
            Value::from(format!("q:{operation}")),
            Value::from(state.as_str()),
        ]);
    }
    fields
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Null => Ok(0),
        other => other
            .as_i64()
            .ok_or(StoreError::Reply("a session field is not an integer")),
    }
}

fn counter(value: &Value) -> Result<u64, StoreError> {
    int(value).map(|n| n.max(0) as u64)
}

fn text(value: &Value) -> Result<Option<String>, StoreError> {
    match value {
        Value::Null => Ok(None),
        other => Ok(Some(
            other
                .as_str()
                .ok_or(StoreError::Reply("a session field is not text"))?
                .into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_their_shard_hash_tag() {
        let id = Uuid::parse_str("6F9619FF-8B86-4011-B42D-00CF4FC964FF").expect("uuid");
        let shard = id.as_u128() % 64;
        assert_eq!(
            session_key(&id, 64),
            format!("sg:{{{shard}}}:6f9619ff-8b86-4011-b42d-00cf4fc964ff")
        );
        assert_eq!(
            session_key(&id, 1),
            "sg:{0}:6f9619ff-8b86-4011-b42d-00cf4fc964ff"
        );
    }

    #[test]
    fn absent_counters_read_as_zero() {
        let reply = Value::Array(vec![
            Value::from("100"),
            Value::from("160"),
            Value::Null,
            Value::from("2"),
            Value::Null,
            Value::Null,
            Value::from("1700000000:3"),
        ]);
        let record = record(reply).expect("valid").expect("present");
        assert_eq!((record.created_at, record.last_active), (100, 160));
        assert_eq!(record.usage.concepts_refined, 2);
        assert_eq!(record.usage.concepts_generated, 0);
        assert!(record.preferences.is_none());
        assert_eq!(record.quota_states, vec![Some("1700000000:3".to_string())]);
    }

    #[test]
    fn missing_session_is_none() {
        let reply = Value::Array(vec![Value::Null; 6]);
        assert!(record(reply).expect("valid").is_none());
        assert!(record(Value::Null).expect("valid").is_none());
    }

    #[test]
    fn snapshots_round_trip_through_their_fields() {
        let id = Uuid::new_v4();
        let fields: Vec<Value> = [
            "c",
            "100",
            "a",
            "160",
            "g",
            "3",
            "p",
            "{\"x\":1}",
            "v",
            "7",
            "q:gen",
            "200:3",
        ]
        .into_iter()
        .map(Value::from)
        .collect();
        let snapshot = snapshot(id, fields).expect("valid");
        assert_eq!(snapshot.version, 7);
        assert_eq!(snapshot.record.usage.concepts_generated, 3);
        assert_eq!(
            snapshot.quotas,
            vec![("gen".to_string(), "200:3".to_string())]
        );
        let again = super::snapshot(id, snapshot_fields(&snapshot)).expect("valid");
        assert_eq!(again, snapshot);
    }
}
