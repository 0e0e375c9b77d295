//! Key and field names: which shard a session lives in, and how its keys and hash fields
//! are spelled (the tables in the module doc of [`crate::store`]). Pure naming, no I/O.

use uuid::Uuid;

use crate::model::quota::Policy;

/// The default number of keyspace shards.
pub const DEFAULT_SHARDS: u32 = 64;

/// The session fields every read returns, in this order.
pub(super) const FIELDS: [&str; 6] = ["c", "a", "g", "r", "s", "p"];

pub(super) const SHARDS_KEY: &str = "sg:shards";

/// The key of a session's hash: `sg:{<shard>}:<id>`.
pub fn session_key(id: &Uuid, shards: u32) -> String {
    format!("{}{}", shard_prefix(shard_of(id, shards)), id.hyphenated())
}

/// The shard a session lives in.
pub fn shard_of(id: &Uuid, shards: u32) -> u32 {
    (id.as_u128() % u128::from(shards.max(1))) as u32
}

/// `sg:{<shard>}:`, the prefix of every key of a shard.
pub(super) fn shard_prefix(shard: u32) -> String {
    format!("sg:{{{shard}}}:")
}

/// A shard's outbox: sessions changed since their last flush.
pub fn dirty_key(shard: u32) -> String {
    format!("{}dirty", shard_prefix(shard))
}

/// A shard's sessions claimed by a flusher.
pub fn inflight_key(shard: u32) -> String {
    format!("{}inflight", shard_prefix(shard))
}

/// The stream of rows the system of record refused.
pub const DEAD_LETTER_KEY: &str = "sg:dead-letter";

/// A `SCAN` pattern that matches every session hash and nothing else.
pub const SESSION_KEY_PATTERN: &str = "sg:{*}:????????-????-????-????-????????????";

/// The hash field of a policy's window state: `q:<operation>`.
pub(super) fn quota_field(policy: &Policy) -> String {
    format!("q:{}", policy.operation)
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
}
