//! The Redis store: the only module that knows Redis commands, keys and scripts.
//!
//! # Layout
//! One hash per session, `sg:{<session_id>}`. The `{...}` hash tag puts every key of a
//! session in one cluster slot, so each script below touches a single slot and runs
//! unchanged on Redis Cluster. Field names are one letter because every byte is paid for
//! once per session:
//!
//! | field | meaning |
//! |---|---|
//! | `c` | created at, Unix seconds (Redis `TIME`) |
//! | `a` | last active, Unix seconds, rewritten at most once per touch interval |
//! | `g`, `r`, `s` | usage counters: concepts generated, refined, stored (absent = 0) |
//! | `p` | preferences as compact JSON (absent = `{}`) |
//!
//! The key carries the session TTL (30 days), slid whenever activity is recorded.
//!
//! # Round trips
//! Every public operation is exactly one command: a plain `HMGET` for reads, one `EVALSHA`
//! for each mutation. Scripts are loaded at start-up and reloaded transparently when Redis
//! answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
//!
//! Every call is bounded by the configured timeout; the store never retries on its own
//! beyond what the Redis client does within that bound.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use uuid::Uuid;

use crate::session::{SessionRecord, Usage};

/// Why the store could not answer. Every variant means "try again later" to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
}

/// Connection settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub url: String,
    pub timeout: Duration,
    pub pool_size: usize,
    pub session_ttl: Duration,
    pub touch_interval: Duration,
}

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
    create: Script,
    touch: Script,
    set_preferences: Script,
}

/// The fields every read returns, in this order.
const FIELDS: [&str; 6] = ["c", "a", "g", "r", "s", "p"];

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
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                timeout: config.timeout,
                ttl_secs: config.session_ttl.as_secs(),
                touch_interval_secs: config.touch_interval.as_secs(),
                create: Script::from_lua(include_str!("create.lua")),
                touch: Script::from_lua(include_str!("touch.lua")),
                set_preferences: Script::from_lua(include_str!("set_preferences.lua")),
            }),
        })
    }

    /// Waits (bounded) for the first connection and loads the scripts, so the first requests
    /// do not pay for `SCRIPT LOAD`. Failing here is not fatal: scripts load on first use.
    pub async fn warm_up(&self, within: Duration) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.bounded_by(within, async {
            inner.pool.wait_for_connect().await?;
            for script in [&inner.create, &inner.touch, &inner.set_preferences] {
                script.load(inner.pool.next_connected()).await?;
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
        self.bounded(async { Ok(self.inner.pool.next_connected().ping::<()>(None).await?) })
            .await
    }

    /// Creates a session under `id`; `None` if the id is already taken.
    pub async fn create(&self, id: &Uuid) -> Result<Option<i64>, StoreError> {
        let reply = self
            .eval(
                &self.inner.create,
                key(id),
                vec![Value::from(self.inner.ttl_secs as i64)],
            )
            .await?;
        match reply {
            Value::Null => Ok(None),
            Value::Integer(now) => Ok(Some(now)),
            _ => Err(StoreError::Reply(
                "create.lua returned neither nil nor an integer",
            )),
        }
    }

    /// Reads a session and records activity on it (script; for requests that write anyway).
    pub async fn touch(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let args = vec![
            Value::from(self.inner.ttl_secs as i64),
            Value::from(self.inner.touch_interval_secs as i64),
        ];
        let reply = self.eval(&self.inner.touch, key(id), args).await?;
        record(reply)
    }

    /// Reads a session without writing: one plain `HMGET`.
    pub async fn read(&self, id: &Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let reply: Value = self
            .bounded(async {
                Ok(self
                    .inner
                    .pool
                    .next_connected()
                    .hmget(key(id), FIELDS.to_vec())
                    .await?)
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
        let args = vec![
            Value::from(self.inner.ttl_secs as i64),
            Value::from(preferences),
        ];
        let reply = self
            .eval(&self.inner.set_preferences, key(id), args)
            .await?;
        match reply {
            Value::Null => Ok(None),
            Value::Integer(now) => Ok(Some(now)),
            _ => Err(StoreError::Reply(
                "set_preferences.lua returned neither nil nor an integer",
            )),
        }
    }

    /// `EVALSHA`, loading the script and retrying once if Redis has forgotten it.
    async fn eval(
        &self,
        script: &Script,
        key: String,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        self.bounded(async {
            let client = self.inner.pool.next_connected();
            match client
                .evalsha(script.sha1().clone(), key.clone(), args.clone())
                .await
            {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    tracing::info!(sha = %script.sha1(), "script missing in redis, reloading");
                    script.load(client).await?;
                    Ok(client.evalsha(script.sha1().clone(), key, args).await?)
                }
                result => Ok(result?),
            }
        })
        .await
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded_by(self.inner.timeout, work).await
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

fn key(id: &Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = id.hyphenated().encode_lower(&mut buf);
    let mut key = String::with_capacity(id.len() + 5);
    key.push_str("sg:{");
    key.push_str(id);
    key.push('}');
    key
}

/// Decodes an `HMGET c a g r s p` reply; all-nil (or a script's `false`) means no session.
fn record(reply: Value) -> Result<Option<SessionRecord>, StoreError> {
    let fields = match reply {
        Value::Null => return Ok(None),
        Value::Array(fields) if fields.len() == FIELDS.len() => fields,
        _ => return Err(StoreError::Reply("expected the six session fields")),
    };
    let int = |v: &Value| -> Result<i64, StoreError> {
        match v {
            Value::Null => Ok(0),
            other => other
                .as_i64()
                .ok_or(StoreError::Reply("a session field is not an integer")),
        }
    };
    if fields[0].is_null() {
        return Ok(None);
    }
    let counter = |v: &Value| int(v).map(|n| n.max(0) as u64);
    Ok(Some(SessionRecord {
        created_at: int(&fields[0])?,
        last_active: int(&fields[1])?,
        usage: Usage {
            concepts_generated: counter(&fields[2])?,
            concepts_refined: counter(&fields[3])?,
            concepts_stored: counter(&fields[4])?,
        },
        preferences: match &fields[5] {
            Value::Null => None,
            other => Some(
                other
                    .as_str()
                    .ok_or(StoreError::Reply("preferences are not text"))?
                    .into_owned(),
            ),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_session_id_as_hash_tag() {
        let id = Uuid::parse_str("6F9619FF-8B86-4011-B42D-00CF4FC964FF").expect("uuid");
        assert_eq!(key(&id), "sg:{6f9619ff-8b86-4011-b42d-00cf4fc964ff}");
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
        ]);
        let record = record(reply).expect("valid").expect("present");
        assert_eq!((record.created_at, record.last_active), (100, 160));
        assert_eq!(record.usage.concepts_refined, 2);
        assert_eq!(record.usage.concepts_generated, 0);
        assert!(record.preferences.is_none());
    }

    #[test]
    fn missing_session_is_none() {
        let reply = Value::Array(vec![Value::Null; 6]);
        assert!(record(reply).expect("valid").is_none());
        assert!(record(Value::Null).expect("valid").is_none());
    }
}
