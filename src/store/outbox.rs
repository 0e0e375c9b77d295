//! The outbox side of the store, used by the flusher (`crate::flush`): claim dirty
//! sessions with their state under a lease, settle them after a write, park refused rows in
//! the dead-letter stream, measure the backlog, and restore sessions read back from the
//! system of record.

use fred::prelude::*;
use fred::types::Value;
use uuid::Uuid;

use super::client::Store;
use super::codec::{snapshot, snapshot_fields};
use super::error::StoreError;
use super::keys::{dirty_key, inflight_key, shard_prefix, tombstone_key, DEAD_LETTER_KEY};
use crate::model::session::Snapshot;

/// Dead letters kept (approximately); older ones are trimmed.
const DEAD_LETTER_KEY_MAX: i64 = 100_000;

/// Sessions claimed from one shard, held until `deadline` (Unix ms).
#[derive(Debug)]
pub struct Claim {
    pub shard: u32,
    pub deadline: i64,
    pub sessions: Vec<Snapshot>,
}

/// The write-behind backlog across all shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Sessions changed since their last flush (claimed ones included).
    pub dirty: u64,
    /// When the oldest of them became dirty (Unix ms).
    pub oldest_ms: Option<i64>,
}

impl Store {
    /// The number of keyspace shards.
    pub fn shards(&self) -> u32 {
        self.inner.shards
    }

    /// Claims up to `batch` dirty sessions of a shard for `lease_ms` (see `claim.lua`).
    pub async fn claim(
        &self,
        shard: u32,
        batch: usize,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        const BAD: StoreError = StoreError::Reply("claim.lua returned an unexpected shape");
        let prefix = shard_prefix(shard);
        let call = || {
            let keys = vec![dirty_key(shard), inflight_key(shard)];
            let args = vec![
                Value::from(prefix.as_str()),
                Value::from(batch as i64),
                Value::from(lease_ms as i64),
            ];
            (keys, args)
        };
        let Value::Array(items) = self.eval(&self.inner.scripts.claim, None, call).await? else {
            return Err(BAD);
        };
        let mut items = items.into_iter();
        let deadline = items.next().and_then(|d| d.as_i64()).ok_or(BAD)?;
        let mut sessions = Vec::new();
        while let (Some(id), Some(Value::Array(fields))) = (items.next(), items.next()) {
            let id = id
                .as_str()
                .and_then(|id| Uuid::try_parse(&id).ok())
                .ok_or(BAD)?;
            sessions.push(snapshot(id, fields)?);
        }
        Ok(Claim {
            shard,
            deadline,
            sessions,
        })
    }

    /// Settles claimed sessions: `written` forgets them, otherwise they go back to the outbox.
    pub async fn settle(
        &self,
        claim: &Claim,
        ids: &[Uuid],
        written: bool,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let call = || {
            let keys = vec![dirty_key(claim.shard), inflight_key(claim.shard)];
            let mut args = vec![
                Value::from(claim.deadline),
                Value::from(if written { "ack" } else { "retry" }),
            ];
            args.extend(
                ids.iter()
                    .map(|id| Value::from(id.hyphenated().to_string())),
            );
            (keys, args)
        };
        self.eval(&self.inner.scripts.settle, None, call).await?;
        Ok(())
    }

    /// Parks a row the system of record refused, with the reason, for an operator.
    pub async fn dead_letter(&self, id: &Uuid, row: &str, reason: &str) -> Result<(), StoreError> {
        let fields = vec![
            ("session_id", id.hyphenated().to_string()),
            ("row", row.to_string()),
            ("reason", reason.to_string()),
        ];
        self.bounded("dead_letter", async {
            let client = self.inner.pool.next_connected();
            let trim = ("MAXLEN", "~", DEAD_LETTER_KEY_MAX);
            let _: Value = client
                .xadd(DEAD_LETTER_KEY, false, trim, "*", fields)
                .await?;
            Ok(())
        })
        .await
    }

    /// The number of dead-lettered rows kept.
    pub async fn dead_letters(&self) -> Result<u64, StoreError> {
        self.bounded("dead_letter", async {
            Ok(self
                .inner
                .pool
                .next_connected()
                .xlen(DEAD_LETTER_KEY)
                .await?)
        })
        .await
    }

    /// The backlog over all shards (two small reads per shard, pipelined per shard).
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        let mut backlog = Backlog::default();
        for shard in 0..self.inner.shards {
            let (dirty, inflight, oldest): (u64, u64, Vec<(String, f64)>) = self
                .bounded("backlog", async {
                    let pipeline = self.inner.pool.next_connected().pipeline();
                    let _: () = pipeline.zcard(dirty_key(shard)).await?;
                    let _: () = pipeline.zcard(inflight_key(shard)).await?;
                    let _: () = pipeline
                        .zrange(dirty_key(shard), 0, 0, None, false, None, true)
                        .await?;
                    Ok(pipeline.all().await?)
                })
                .await?;
            backlog.dirty += dirty + inflight;
            if let Some((_, score)) = oldest.first() {
                let score = *score as i64;
                backlog.oldest_ms = Some(backlog.oldest_ms.map_or(score, |o| o.min(score)));
            }
        }
        Ok(backlog)
    }

    /// Everything stored about one session (`HGETALL`); `None` if it does not exist.
    pub async fn snapshot(&self, id: &Uuid) -> Result<Option<Snapshot>, StoreError> {
        let key = self.session_key(id);
        let fields: Value = self
            .bounded("snapshot", async {
                Ok(self.inner.pool.next_connected().hgetall(key).await?)
            })
            .await?;
        match fields {
            Value::Array(fields) if !fields.is_empty() => Ok(Some(snapshot(*id, fields)?)),
            Value::Map(map) if !map.is_empty() => {
                let fields = map
                    .inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Value::from(k), v]);
                Ok(Some(snapshot(*id, fields.collect())?))
            }
            _ => Ok(None),
        }
    }

    /// Loads a session read back from the system of record, unless it exists meanwhile or
    /// was erased a moment ago, expiring after `ttl_secs`. Returns whether it was restored.
    pub async fn restore(&self, snapshot: &Snapshot, ttl_secs: u64) -> Result<bool, StoreError> {
        let call = || {
            let session = self.session_key(&snapshot.id);
            let tombstone = tombstone_key(&session);
            let mut args = vec![Value::from(ttl_secs as i64)];
            args.extend(snapshot_fields(snapshot));
            (vec![session, tombstone], args)
        };
        let reply = self
            .eval(&self.inner.scripts.restore, Some(&snapshot.id), call)
            .await?;
        Ok(reply.as_i64() == Some(1))
    }
}
