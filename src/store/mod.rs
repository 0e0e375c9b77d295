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
//! | `sg:{<shard>}:<id>:idem` | the session's idempotent quota answers, one field `<action>:<operation>:<key>` each, holding its own expiry |
//! | `sg:{<shard>}:<id>:erased` | tombstone of an erased session, for an hour: no read-through restores it |
//! | `sg:{<shard>}:dirty` | outbox: sessions changed since their last flush (zset by first-dirty ms) |
//! | `sg:{<shard>}:inflight` | sessions claimed by a flusher (zset by lease deadline ms) |
//! | `sg:dead-letter` | stream of rows the system of record refused |
//! | `sg:shards` | the shard count the data was written with (checked at start-up) |
//! | `sg:epoch` | a random value, set again when missing: a changed one tells the near cache that every key was flushed |
//!
//! Session fields are one letter because every byte is paid for once per session:
//!
//! | field | meaning |
//! |---|---|
//! | `c` | created at, Unix seconds (Redis `TIME`) |
//! | `a` | last active, Unix seconds, rewritten at most once per touch interval |
//! | `u:<counter>` | a usage counter named by configuration (absent = 0); the default counters keep v1's `g`, `r`, `s` (concepts generated, refined, stored), so hashes written by v1 read the same |
//! | `p` | preferences as compact JSON (absent = `{}`) |
//! | `t` | the session's plan (absent = none: the policies' own allowances) |
//! | `q:<operation>` | quota window state of one policy (see [`crate::model::quota`]) |
//! | `v` | version: every change sets it to the larger of itself + 1 and Redis's clock in ms, so it grows even across a restore from an older backup; the system of record keeps the newest |
//!
//! # Round trips
//! Every request-path operation is exactly one command: a plain `HMGET` for reads (or none,
//! when the near cache holds the session), one `FCALL` of a Redis function per mutation.
//! Functions are loaded at start-up and again when Redis answers that one is missing (a new
//! node, `FUNCTION FLUSH`); see `lua`. Every call is bounded by the configured timeout, and
//! fails at once while the connection is known to be down.
//!
//! The submodules, each on its own: `keys` (names), `codec` (replies to records), `client`
//! (the pool and the session operations), `lua` (the functions: their text, loading and
//! sweeping), `quota` (the quota functions' calls), `quota_scripts` (each policy's
//! functions), `operator` (inspection, resets, erasure), `outbox` (what the flusher uses),
//! `settings` (how Redis keeps the data), `near_cache` (records kept in memory) and
//! `tracking` (the connections Redis announces changes on); this file only says what the
//! store offers.

mod client;
mod codec;
mod error;
mod keys;
mod lua;
mod near_cache;
mod operator;
mod outbox;
mod quota;
mod quota_scripts;
mod settings;
mod tracking;

pub use client::{Store, StoreConfig};
pub use error::StoreError;
pub use keys::{
    dirty_key, inflight_key, session_key, shard_of, DEAD_LETTER_KEY, DEFAULT_SHARDS,
    SESSION_KEY_PATTERN,
};
pub use near_cache::NearCache;
pub use outbox::{Backlog, Claim};
pub use settings::RedisSettings;
