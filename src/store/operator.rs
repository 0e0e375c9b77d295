//! What operators and erasure need of Redis, apart from the request path: a session read
//! with its version (`inspect`), a quota window reset (`reset_quota.lua`), a plan change
//! (`set_plan.lua`), and erasure
//! (`erase.lua`): every key of a session gone in one script, with a tombstone that keeps
//! read-through from bringing it back.

use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use uuid::Uuid;

use super::client::Store;
use super::codec::record;
use super::error::StoreError;
use super::keys::{dirty_key, inflight_key, quota_field, records_key, shard_of, tombstone_key};
use crate::model::session::SessionRecord;

/// How long an erased session's tombstone stays. It only has to outlast a read-through
/// that fetched the row just before the system of record deleted it (bounded by
/// `flush.read_through_timeout_ms`, at most a few seconds); an hour is ample.
const TOMBSTONE: Duration = Duration::from_secs(3600);

impl Store {
    /// A session with its version, read from Redis itself (never the near cache: support
    /// staff see what Redis holds); `None` if it does not exist.
    pub async fn inspect(&self, id: &Uuid) -> Result<Option<(SessionRecord, i64)>, StoreError> {
        let key = self.session_key(id);
        let mut fields = self.shape.read_fields.clone();
        fields.push(Key::from("v"));
        let reply: Value = self
            .bounded("inspect", async {
                Ok(self.inner.pool.next_connected().hmget(key, fields).await?)
            })
            .await?;
        let Value::Array(mut values) = reply else {
            return Err(StoreError::Reply("expected the session fields"));
        };
        let version = values.pop().and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(record(Value::Array(values), &self.shape.shape)?.map(|record| (record, version)))
    }

    /// Starts the current window of `operation`'s policy afresh; `None` if the session does
    /// not exist.
    pub async fn reset_quota(&self, id: &Uuid, operation: &str) -> Result<Option<()>, StoreError> {
        let call = || {
            let (keys, mut args) = self.session_call(id);
            args.push(Value::from(quota_field(operation)));
            (keys, args)
        };
        match self
            .eval(&self.inner.scripts.reset_quota, Some(id), call)
            .await?
        {
            Value::Null => Ok(None),
            Value::Integer(1) => Ok(Some(())),
            _ => Err(StoreError::Reply(
                "reset_quota.lua returned neither nil nor 1",
            )),
        }
    }

    /// Puts the session on `plan` (`None`: no plan); `None` if the session does not exist.
    pub async fn set_plan(&self, id: &Uuid, plan: Option<&str>) -> Result<Option<()>, StoreError> {
        let call = || {
            let (keys, mut args) = self.session_call(id);
            args.push(Value::from(plan.unwrap_or("")));
            (keys, args)
        };
        match self
            .eval(&self.inner.scripts.set_plan, Some(id), call)
            .await?
        {
            Value::Null => Ok(None),
            Value::Integer(1) => Ok(Some(())),
            _ => Err(StoreError::Reply("set_plan.lua returned neither nil nor 1")),
        }
    }

    /// Deletes the session's hash and idempotency records and drops it from its shard's
    /// outbox and in-flight set. Returns whether the session was there.
    pub async fn erase(&self, id: &Uuid) -> Result<bool, StoreError> {
        let call = || {
            let shard = shard_of(id, self.inner.shards);
            let session = self.session_key(id);
            let (records, tombstone) = (records_key(&session), tombstone_key(&session));
            let keys = vec![
                session,
                records,
                dirty_key(shard),
                inflight_key(shard),
                tombstone,
            ];
            let args = vec![
                Value::from(id.hyphenated().to_string()),
                Value::from(TOMBSTONE.as_secs() as i64),
            ];
            (keys, args)
        };
        let reply = self.eval(&self.inner.scripts.erase, Some(id), call).await?;
        Ok(reply.as_i64() == Some(1))
    }
}
