//! Codec: Redis replies to the model's records and snapshots, snapshots back to hash fields
//! (the one-letter fields of the module doc of [`crate::store`]), and what a configuration's
//! calls send, built once per configuration. No I/O.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use fred::types::{Key, Value};
use uuid::Uuid;

use super::error::StoreError;
use super::keys::{counter_field, counter_of_field, quota_field, FIELDS};
use super::quota_scripts::PolicyScripts;
use crate::model::quota::{counters, Policy};
use crate::model::session::{SessionRecord, Snapshot, Usage};

/// A read shape with what calls send for it, built once per set of policies (at start-up,
/// and again on each configuration reload).
pub(super) struct Shaped {
    pub shape: ReadShape,
    /// `shape`'s hash fields, as a read asks for them (built once, each clone a count).
    pub read_fields: Vec<Key>,
    /// Tells records read with this shape from those read with another (the near cache
    /// serves a reader only what was read with its own): a hash of `read_fields`, which
    /// determine the shape, so every thread's store of the same policies agrees.
    pub generation: u64,
    /// Each policy's quota scripts, by operation.
    pub quota_scripts: HashMap<String, PolicyScripts>,
}

impl Shaped {
    /// `session_lib` is what the quota scripts are built on (see [`PolicyScripts::of`]).
    pub fn of(policies: &[Policy], session_lib: &str) -> Shaped {
        let shape = ReadShape {
            counters: counters(policies),
            quota_operations: policies
                .iter()
                .map(|policy| Arc::from(policy.operation.as_str()))
                .collect(),
        };
        let read_fields = shape.fields();
        let mut hasher = DefaultHasher::new();
        read_fields.hash(&mut hasher);
        Shaped {
            quota_scripts: policies
                .iter()
                .map(|policy| {
                    let scripts = PolicyScripts::of(policy, &shape.counters, session_lib);
                    (policy.operation.clone(), scripts)
                })
                .collect(),
            generation: hasher.finish(),
            read_fields: read_fields.into_iter().map(Key::from).collect(),
            shape,
        }
    }
}

/// What a read asks for after [`FIELDS`]: the configured usage counters, then the quota
/// state of each policy, each list in configuration order.
pub(super) struct ReadShape {
    pub counters: Vec<Arc<str>>,
    pub quota_operations: Vec<Arc<str>>,
}

impl ReadShape {
    /// The hash fields of a read, in the order [`record`] decodes them.
    pub fn fields(&self) -> Vec<String> {
        let quota_fields = self.quota_operations.iter().map(|op| quota_field(op));
        FIELDS
            .iter()
            .map(|f| f.to_string())
            .chain(self.counters.iter().map(|c| counter_field(c)))
            .chain(quota_fields)
            .collect()
    }
}

/// Decodes an `HMGET` of [`ReadShape::fields`]; nil `c` (or a script's `false`) means no
/// session.
pub(super) fn record(reply: Value, shape: &ReadShape) -> Result<Option<SessionRecord>, StoreError> {
    let fields = match reply {
        Value::Null => return Ok(None),
        Value::Array(fields)
            if fields.len()
                == FIELDS.len() + shape.counters.len() + shape.quota_operations.len() =>
        {
            fields
        }
        _ => return Err(StoreError::Reply("expected the session fields")),
    };
    if fields[0].is_null() {
        return Ok(None);
    }
    let (counts, states) = fields[FIELDS.len()..].split_at(shape.counters.len());
    Ok(Some(SessionRecord {
        created_at: int(&fields[0])?,
        last_active: int(&fields[1])?,
        preferences: text(&fields[2])?,
        plan: text(&fields[3])?.map(Arc::from),
        usage: usage(&shape.counters, counts)?,
        quota_states: shape
            .quota_operations
            .iter()
            .zip(states)
            .map(|(operation, state)| Ok((operation.clone(), text(state)?)))
            .collect::<Result<_, StoreError>>()?,
    }))
}

/// The counters named in `names`, from their values in the same order.
pub(super) fn usage(names: &[Arc<str>], values: &[Value]) -> Result<Usage, StoreError> {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| Ok((name.clone(), counter(value)?)))
        .collect()
}

/// Decodes an `HGETALL` of a session into everything the system of record keeps, every
/// usage counter included (configured or not: the system of record keeps them all).
pub(super) fn snapshot(id: Uuid, fields: Vec<Value>) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot {
        id,
        record: SessionRecord {
            created_at: 0,
            last_active: 0,
            usage: Usage::default(),
            preferences: None,
            plan: None,
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
            "p" => record.preferences = text(&value)?,
            "t" => record.plan = text(&value)?.map(Arc::from),
            "v" => snapshot.version = int(&value)?,
            other => {
                if let Some(name) = counter_of_field(other) {
                    record.usage.set(&Arc::from(name), counter(&value)?);
                } else if let (Some(operation), Some(state)) =
                    (other.strip_prefix("q:"), text(&value)?)
                {
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
    for (name, count) in record.usage.iter() {
        if count > 0 {
            fields.extend([Value::from(counter_field(name)), Value::from(count as i64)]);
        }
    }
    if let Some(preferences) = &record.preferences {
        fields.extend([Value::from("p"), Value::from(preferences.as_str())]);
    }
    if let Some(plan) = &record.plan {
        fields.extend([Value::from("t"), Value::from(&**plan)]);
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

    fn shape() -> ReadShape {
        ReadShape {
            counters: vec![Arc::from("concepts_generated"), Arc::from("images")],
            quota_operations: vec![Arc::from("gen")],
        }
    }

    #[test]
    fn absent_counters_read_as_zero() {
        let reply = Value::Array(vec![
            Value::from("100"),
            Value::from("160"),
            Value::Null,
            Value::from("pro"),
            Value::Null,
            Value::from("2"),
            Value::from("1700000000:3"),
        ]);
        let record = record(reply, &shape()).expect("valid").expect("present");
        assert_eq!((record.created_at, record.last_active), (100, 160));
        assert_eq!(record.usage.get("images"), 2);
        assert_eq!(record.usage.get("concepts_generated"), 0);
        let names: Vec<&str> = record.usage.iter().map(|(name, _)| &**name).collect();
        assert_eq!(names, ["concepts_generated", "images"]);
        assert!(record.preferences.is_none());
        assert_eq!(record.plan.as_deref(), Some("pro"));
        assert_eq!(record.quota_state("gen"), Some("1700000000:3"));
        assert_eq!(record.quota_state("other"), None);
    }

    #[test]
    fn fields_follow_the_shape() {
        assert_eq!(
            shape().fields(),
            ["c", "a", "p", "t", "g", "u:images", "q:gen"].map(String::from)
        );
    }

    #[test]
    fn missing_session_is_none() {
        let reply = Value::Array(vec![Value::Null; 7]);
        assert!(record(reply, &shape()).expect("valid").is_none());
        assert!(record(Value::Null, &shape()).expect("valid").is_none());
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
            "u:images",
            "4",
            "p",
            "{\"x\":1}",
            "v",
            "7",
            "t",
            "pro",
            "q:gen",
            "200:3",
        ]
        .into_iter()
        .map(Value::from)
        .collect();
        let snapshot = snapshot(id, fields).expect("valid");
        assert_eq!(snapshot.version, 7);
        assert_eq!(snapshot.record.usage.get("concepts_generated"), 3);
        assert_eq!(snapshot.record.usage.get("images"), 4);
        assert_eq!(
            snapshot.quotas,
            vec![("gen".to_string(), "200:3".to_string())]
        );
        let again = super::snapshot(id, snapshot_fields(&snapshot)).expect("valid");
        assert_eq!(again, snapshot);
    }
}
