//! Codec: Redis replies to the model's records and snapshots, and snapshots back to hash
//! fields (the one-letter fields of the module doc of [`crate::store`]). No I/O.

use std::sync::Arc;

use fred::types::Value;
use uuid::Uuid;

use super::error::StoreError;
use super::keys::FIELDS;
use crate::model::session::{SessionRecord, Snapshot, Usage};

/// Decodes an `HMGET c a g r s p [q:...]` reply, the quota fields being those of
/// `quota_operations` in order; nil `c` (or a script's `false`) means no session.
pub(super) fn record(
    reply: Value,
    quota_operations: &[Arc<str>],
) -> Result<Option<SessionRecord>, StoreError> {
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
        quota_states: quota_operations
            .iter()
            .zip(&fields[FIELDS.len()..])
            .map(|(operation, state)| Ok((operation.clone(), text(state)?)))
            .collect::<Result<_, StoreError>>()?,
    }))
}

/// Decodes an `HGETALL` of a session into everything the system of record keeps.
pub(super) fn snapshot(id: Uuid, fields: Vec<Value>) -> Result<Snapshot, StoreError> {
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
pub(super) fn snapshot_fields(snapshot: &Snapshot) -> Vec<Value> {
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
        let record = record(reply, &[Arc::from("gen")])
            .expect("valid")
            .expect("present");
        assert_eq!((record.created_at, record.last_active), (100, 160));
        assert_eq!(record.usage.concepts_refined, 2);
        assert_eq!(record.usage.concepts_generated, 0);
        assert!(record.preferences.is_none());
        assert_eq!(record.quota_state("gen"), Some("1700000000:3"));
        assert_eq!(record.quota_state("other"), None);
    }

    #[test]
    fn missing_session_is_none() {
        let reply = Value::Array(vec![Value::Null; 6]);
        assert!(record(reply, &[]).expect("valid").is_none());
        assert!(record(Value::Null, &[]).expect("valid").is_none());
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
