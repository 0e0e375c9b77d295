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
//! | `q:<operation>` | quota window state of one policy (see [`crate::quota`]) |
//!
//! Idempotency records of the internal quota API are separate keys with the same hash tag,
//! `sg:{<session_id>}:idem:<action>:<operation>:<key>`, kept until their window resets.
//! The key carries the session TTL (30 days), slid whenever activity is recorded.
//!
//! # Round trips
//! Every public operation is exactly one command: a plain `HMGET` for reads, one `EVALSHA`
//! for each mutation (create, touch, preferences, quota consume and refund). Scripts are loaded at start-up and reloaded transparently when Redis
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

use crate::quota::{Policy, QuotaStatus, Window};
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
    /// Policies whose state every read returns, in this order.
    pub policies: Vec<Policy>,
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
    consume: Script,
    refund: Script,
    /// `FIELDS` followed by the quota field of every policy: what a read fetches.
    read_fields: Vec<String>,
}

/// The session fields every read returns, in this order.
const FIELDS: [&str; 6] = ["c", "a", "g", "r", "s", "p"];

/// What a quota script answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaOutcome {
    Granted,
    Denied,
    Refunded,
}

/// A quota script's answer for an existing session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaAnswer {
    pub outcome: QuotaOutcome,
    pub status: QuotaStatus,
    /// Seconds until a denied request could succeed; 0 otherwise.
    pub retry_after: u64,
    pub usage: Usage,
    /// The answer is a repeat of an earlier one with the same idempotency key.
    pub replayed: bool,
}

/// One call of the quota scripts.
pub struct QuotaRequest<'a> {
    pub policy: &'a Policy,
    pub cost: u64,
    pub idempotency_key: Option<&'a str>,
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
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                timeout: config.timeout,
                ttl_secs: config.session_ttl.as_secs(),
                touch_interval_secs: config.touch_interval.as_secs(),
                create: Script::from_lua(include_str!("create.lua")),
                touch: Script::from_lua(include_str!("touch.lua")),
                set_preferences: Script::from_lua(include_str!("set_preferences.lua")),
                consume: Script::from_lua(concat!(
                    include_str!("quota_lib.lua"),
                    include_str!("consume.lua")
                )),
                refund: Script::from_lua(concat!(
                    include_str!("quota_lib.lua"),
                    include_str!("refund.lua")
                )),
                read_fields: FIELDS
                    .iter()
                    .map(|f| f.to_string())
                    .chain(config.policies.iter().map(quota_field))
                    .collect(),
            }),
        })
    }

    /// Waits (bounded) for the first connection and loads the scripts, so the first requests
    /// do not pay for `SCRIPT LOAD`. Failing here is not fatal: scripts load on first use.
    pub async fn warm_up(&self, within: Duration) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.bounded_by(within, async {
            inner.pool.wait_for_connect().await?;
            for script in [
                &inner.create,
                &inner.touch,
                &inner.set_preferences,
                &inner.consume,
                &inner.refund,
            ] {
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
                vec![key(id)],
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
        let reply = self.eval(&self.inner.touch, vec![key(id)], args).await?;
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
                    .hmget(key(id), self.inner.read_fields.clone())
                    .await?)
            })
            .await?;
        record(reply)
    }

    /// Consumes quota (see `consume.lua`); `None` if the session does not exist.
    pub async fn consume(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        self.quota_call(&self.inner.consume, "consume", id, request)
            .await
    }

    /// Gives quota back (see `refund.lua`); `None` if the session does not exist.
    pub async fn refund(
        &self,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        self.quota_call(&self.inner.refund, "refund", id, request)
            .await
    }

    async fn quota_call(
        &self,
        script: &Script,
        action: &str,
        id: &Uuid,
        request: &QuotaRequest<'_>,
    ) -> Result<Option<QuotaAnswer>, StoreError> {
        let policy = request.policy;
        let session_key = key(id);
        let mut keys = vec![session_key.clone()];
        if let Some(idempotency_key) = request.idempotency_key {
            keys.push(format!(
                "{session_key}:idem:{action}:{}:{idempotency_key}",
                policy.operation
            ));
        }
        let (kind, param) = match policy.window {
            Window::Calendar(unit) => ("calendar", unit.as_str().to_string()),
            Window::Rolling(length) => ("rolling", length.as_secs().to_string()),
            Window::Gcra { interval } => ("gcra", interval.as_millis().to_string()),
        };
        let args: Vec<Value> = vec![
            Value::from(self.inner.ttl_secs as i64),
            Value::from(self.inner.touch_interval_secs as i64),
            Value::from(quota_field(policy)),
            Value::from(kind),
            Value::from(param),
            Value::from(policy.limit as i64),
            Value::from(request.cost as i64),
            Value::from(counter_field(policy)),
        ];
        let reply = self.eval(script, keys, args).await?;
        quota_answer(reply)
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
            .eval(&self.inner.set_preferences, vec![key(id)], args)
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
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        self.bounded(async {
            let client = self.inner.pool.next_connected();
            match client
                .evalsha(script.sha1().clone(), keys.clone(), args.clone())
                .await
            {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    tracing::info!(sha = %script.sha1(), "script missing in redis, reloading");
                    script.load(client).await?;
                    Ok(client.evalsha(script.sha1().clone(), keys, args).await?)
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

/// The session hash field holding a policy's window state.
fn quota_field(policy: &Policy) -> String {
    format!("q:{}", policy.operation)
}

/// The session hash field of a policy's usage counter, or `""` for none.
fn counter_field(policy: &Policy) -> &'static str {
    use crate::quota::Counter;
    match policy.counter {
        Some(Counter::ConceptsGenerated) => "g",
        Some(Counter::ConceptsRefined) => "r",
        Some(Counter::ConceptsStored) => "s",
        None => "",
    }
}

/// Decodes the `{outcome, limit, remaining, reset_at, retry_after, g, r, s, replayed}` reply
/// of the quota scripts.
fn quota_answer(reply: Value) -> Result<Option<QuotaAnswer>, StoreError> {
    const BAD: StoreError = StoreError::Reply("a quota script returned an unexpected shape");
    let Value::Array(items) = reply else {
        return Err(BAD);
    };
    if items.len() != 9 {
        return Err(BAD);
    }
    let outcome = match items[0].as_str().as_deref() {
        Some("missing") => return Ok(None),
        Some("granted") => QuotaOutcome::Granted,
        Some("denied") => QuotaOutcome::Denied,
        Some("refunded") => QuotaOutcome::Refunded,
        _ => return Err(BAD),
    };
    let number = |i: usize| items[i].as_i64().ok_or(BAD);
    let count = |i: usize| number(i).map(|n| n.max(0) as u64);
    Ok(Some(QuotaAnswer {
        outcome,
        status: QuotaStatus {
            limit: count(1)?,
            remaining: count(2)?,
            reset_at: number(3)?,
        },
        retry_after: count(4)?,
        usage: Usage {
            concepts_generated: count(5)?,
            concepts_refined: count(6)?,
            concepts_stored: count(7)?,
        },
        replayed: number(8)? == 1,
    }))
}

/// Decodes an `HMGET c a g r s p` reply; all-nil (or a script's `false`) means no session.
fn record(reply: Value) -> Result<Option<SessionRecord>, StoreError> {
    let fields = match reply {
        Value::Null => return Ok(None),
        Value::Array(fields) if fields.len() >= FIELDS.len() => fields,
        _ => return Err(StoreError::Reply("expected the session fields")),
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
    let text = |v: &Value| -> Result<Option<String>, StoreError> {
        match v {
            Value::Null => Ok(None),
            other => Ok(Some(
                other
                    .as_str()
                    .ok_or(StoreError::Reply("a session field is not text"))?
                    .into_owned(),
            )),
        }
    };
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
