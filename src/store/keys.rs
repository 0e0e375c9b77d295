//! Key and field names: which shard a session lives in, and how its keys and hash fields
//! are spelled (the tables in the module doc of [`crate::store`]). Pure naming, no I/O.

use uuid::Uuid;

/// The default number of keyspace shards.
pub const DEFAULT_SHARDS: u32 = 64;

/// The session fields every read returns first, in this order (usage counters and quota
/// states follow).
pub(super) const FIELDS: [&str; 4] = ["c", "a", "p", "t"];

/// The default counters' one-letter fields: v1 stored them there, and sessions written
/// then must keep their counts.
const V1_COUNTERS: [(&str, &str); 3] = [
    ("concepts_generated", "g"),
    ("concepts_refined", "r"),
    ("concepts_stored", "s"),
];

pub(super) const SHARDS_KEY: &str = "sg:shards";

/// A random value that lives as long as the keyspace does (see `tracking`).
pub(super) const EPOCH_KEY: &str = "sg:epoch";

/// The key of a session's hash: `sg:{<shard>}:<id>`.
pub fn session_key(id: &Uuid, shards: u32) -> String {
    let mut key = shard_prefix(shard_of(id, shards));
    key.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    key
}

/// The shard a session lives in.
pub fn shard_of(id: &Uuid, shards: u32) -> u32 {
    (id.as_u128() % u128::from(shards.max(1))) as u32
}

/// `sg:{<shard>}:`, the prefix of every key of a shard, with room for the session id that
/// usually follows. Keys are built on every request, so without `format!`, whose machinery
/// cost more than the rest of building them.
pub(super) fn shard_prefix(shard: u32) -> String {
    let mut prefix = String::with_capacity(64);
    prefix.push_str("sg:{");
    prefix.push_str(itoa::Buffer::new().format(shard));
    prefix.push_str("}:");
    prefix
}

/// `key` followed by `suffix`.
fn suffixed(key: &str, suffix: &str) -> String {
    let mut joined = String::with_capacity(key.len() + suffix.len());
    joined.push_str(key);
    joined.push_str(suffix);
    joined
}

/// The session a key names, when it is a session's hash (`sg:{<shard>}:<id>`), not one of
/// its other keys.
pub(super) fn session_of_key(key: &[u8]) -> Option<Uuid> {
    let rest = key.strip_prefix(b"sg:{")?;
    let close = rest.iter().position(|b| *b == b'}')?;
    let id = rest[close + 1..].strip_prefix(b":")?;
    // Hyphenated only: that is how keys are spelled, and it rules out the longer keys.
    if id.len() != 36 {
        return None;
    }
    Uuid::try_parse_ascii(id).ok()
}

/// A session's idempotency records, one hash field per record: `<session key>:idem`.
pub(super) fn records_key(session_key: &str) -> String {
    suffixed(session_key, ":idem")
}

/// The mark an erased session leaves for a while: `<session key>:erased`.
pub(super) fn tombstone_key(session_key: &str) -> String {
    suffixed(session_key, ":erased")
}

/// A shard's outbox: sessions changed since their last flush.
pub fn dirty_key(shard: u32) -> String {
    suffixed(&shard_prefix(shard), "dirty")
}

/// A shard's sessions claimed by a flusher.
pub fn inflight_key(shard: u32) -> String {
    suffixed(&shard_prefix(shard), "inflight")
}

/// The stream of rows the system of record refused.
pub const DEAD_LETTER_KEY: &str = "sg:dead-letter";

/// A `SCAN` pattern that matches every session hash and nothing else.
pub const SESSION_KEY_PATTERN: &str = "sg:{*}:????????-????-????-????-????????????";

/// The hash field of a policy's window state: `q:<operation>`.
pub(super) fn quota_field(operation: &str) -> String {
    format!("q:{operation}")
}

/// The hash field of a usage counter: `u:<counter>` (or v1's letter for a default counter).
pub(super) fn counter_field(counter: &str) -> String {
    match V1_COUNTERS.iter().find(|(name, _)| *name == counter) {
        Some((_, field)) => field.to_string(),
        None => format!("u:{counter}"),
    }
}

/// The usage counter a hash field holds, if it holds one.
pub(super) fn counter_of_field(field: &str) -> Option<&str> {
    match V1_COUNTERS.iter().find(|(_, letter)| *letter == field) {
        Some((name, _)) => Some(name),
        None => field.strip_prefix("u:"),
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
        assert_eq!(dirty_key(12), "sg:{12}:dirty");
        assert_eq!(inflight_key(0), "sg:{0}:inflight");
        assert_eq!(records_key("sg:{1}:x"), "sg:{1}:x:idem");
        assert_eq!(tombstone_key("sg:{1}:x"), "sg:{1}:x:erased");
    }

    #[test]
    fn only_a_session_hash_names_its_session() {
        let id = Uuid::new_v4();
        let key = session_key(&id, 64);
        assert_eq!(session_of_key(key.as_bytes()), Some(id));
        assert_eq!(session_of_key(records_key(&key).as_bytes()), None);
        assert_eq!(session_of_key(tombstone_key(&key).as_bytes()), None);
        assert_eq!(session_of_key(dirty_key(3).as_bytes()), None);
        assert_eq!(session_of_key(SHARDS_KEY.as_bytes()), None);
    }

    #[test]
    fn counter_fields_round_trip() {
        for counter in ["concepts_generated", "concepts_stored", "images_rendered"] {
            assert_eq!(counter_of_field(&counter_field(counter)), Some(counter));
        }
        assert_eq!(counter_field("concepts_refined"), "r");
        assert_eq!(counter_field("images_rendered"), "u:images_rendered");
        assert_eq!(counter_of_field("q:concept_generation"), None);
    }
}
