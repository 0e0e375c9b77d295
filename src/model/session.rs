//! A session's data: its id, its stored record and what the system of record keeps of it.
//! Plain data and the rules of its spelling; it imports nothing else of the crate and never
//! does I/O.

use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use uuid::Uuid;

/// Usage counters of a session by name, in a fixed order (the configuration's, when read
/// for a client): serialised as the JSON object of `usage_stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage(Vec<(Arc<str>, u64)>);

impl Usage {
    /// The count of `name`; 0 when it was never used.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(counter, _)| &**counter == name)
            .map_or(0, |(_, count)| *count)
    }

    /// Sets the count of `name`, adding the counter after the others when it is new.
    pub fn set(&mut self, name: &Arc<str>, count: u64) {
        match self.0.iter_mut().find(|(counter, _)| counter == name) {
            Some((_, slot)) => *slot = count,
            None => self.0.push((name.clone(), count)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.0.iter().map(|(name, count)| (name, *count))
    }
}

/// From counters named once each (a configured list, a JSON object's keys): no lookup per
/// counter on the request path. [`Usage::set`] is for sources that may name one twice.
impl FromIterator<(Arc<str>, u64)> for Usage {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, u64)>>(counters: I) -> Usage {
        Usage(counters.into_iter().collect())
    }
}

impl Serialize for Usage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, count) in &self.0 {
            map.serialize_entry(&**name, count)?;
        }
        map.end()
    }
}

/// A session's state as stored; timestamps in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub created_at: i64,
    pub last_active: i64,
    pub usage: Usage,
    /// Compact JSON object; `None` means the default `{}`.
    pub preferences: Option<String>,
    /// The plan whose allowances apply; `None`: the policies' own.
    pub plan: Option<Arc<str>>,
    /// Stored window state of the configured quota policies, by operation (absent: never
    /// used, or lapsed); empty when the operation that produced the record did not read
    /// them. Kept with its name, so no reader depends on the order of two lists.
    pub quota_states: Vec<(Arc<str>, Option<String>)>,
}

impl SessionRecord {
    /// The preferences as a JSON object. They were validated as one when stored; anything
    /// else reads as `{}`, so that a damaged value never blocks what shows the session.
    pub fn preferences_object(&self) -> OwnedValue {
        self.preferences
            .as_ref()
            .and_then(|p| simd_json::to_owned_value(&mut p.clone().into_bytes()).ok())
            .filter(|v| v.is_object())
            .unwrap_or_else(OwnedValue::object)
    }

    /// The stored window state of `operation`'s policy, when it was read and is set.
    pub fn quota_state(&self, operation: &str) -> Option<&str> {
        self.quota_states
            .iter()
            .find(|(name, _)| &**name == operation)
            .and_then(|(_, state)| state.as_deref())
    }
}

/// Everything stored about a session: what the system of record keeps, and what a
/// read-through restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: Uuid,
    /// `quota_states` is unused here: quota states are kept by operation in `quotas`.
    pub record: SessionRecord,
    /// `(operation, stored window state)` of every quota the session has used.
    pub quotas: Vec<(String, String)>,
    /// Bumped by every change; the system of record keeps the highest it has seen.
    pub version: i64,
}

/// A session and its id.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: Uuid,
    pub record: SessionRecord,
}

/// Parses a session id in its canonical form: 36 characters, hyphenated (any case).
/// Braced, URN and unhyphenated spellings are refused so one session has one spelling.
pub fn parse_id(text: &str) -> Option<Uuid> {
    if text.len() != uuid::fmt::Hyphenated::LENGTH {
        return None;
    }
    Uuid::try_parse(text).ok()
}

/// The first 8 characters of a session id, for logs: enough to correlate lines, useless to
/// an attacker (a whole id is a credential and never logged).
pub fn short_id(id: &Uuid) -> String {
    let mut text = id.hyphenated().to_string();
    text.truncate(8);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_ids_parse() {
        let canonical = "6f9619ff-8b86-4011-b42d-00cf4fc964ff";
        assert_eq!(
            parse_id(canonical).map(|u| u.to_string()).as_deref(),
            Some(canonical)
        );
        assert!(parse_id("6F9619FF-8B86-4011-B42D-00CF4FC964FF").is_some());
        assert!(parse_id("6f9619ff8b864011b42d00cf4fc964ff").is_none());
        assert!(parse_id("{6f9619ff-8b86-4011-b42d-00cf4fc964ff}").is_none());
        assert!(parse_id("urn:uuid:6f9619ff-8b86-4011-b42d-00cf4fc964ff").is_none());
        assert!(parse_id("").is_none());
        assert!(parse_id("6f9619ff-8b86-4011-b42d-00cf4fc964fg").is_none());
    }

    #[test]
    fn quota_states_are_found_by_operation_in_any_order() {
        let record = SessionRecord {
            created_at: 0,
            last_active: 0,
            usage: Usage::default(),
            preferences: None,
            plan: None,
            quota_states: vec![
                (Arc::from("concept_storage"), Some("200:1".to_string())),
                (Arc::from("concept_generation"), Some("100:7".to_string())),
                (Arc::from("concept_refinement"), None),
            ],
        };
        assert_eq!(record.quota_state("concept_generation"), Some("100:7"));
        assert_eq!(record.quota_state("concept_storage"), Some("200:1"));
        assert_eq!(record.quota_state("concept_refinement"), None);
        assert_eq!(record.quota_state("unknown"), None);
    }
}
