//! Rows of `public.sessions`: a session snapshot as JSON and back. Usage counters travel
//! as one JSON object, `usage` (migration 0002), so a new counter needs no new column; the
//! plan is a column of its own (migration 0005), null for none.

use std::sync::Arc;

use chrono::DateTime;
use serde::Serialize;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use uuid::Uuid;

use crate::model::session::{SessionRecord, Snapshot, Usage};

#[derive(Serialize)]
struct Row<'a> {
    id: &'a Uuid,
    created_at: String,
    last_active_at: String,
    /// Every counter the session has, by name (migration 0002).
    usage: &'a Usage,
    preferences: OwnedValue,
    quota_state: OwnedValue,
    plan: Option<&'a str>,
    version: i64,
}

fn timestamp(unix_seconds: i64) -> String {
    DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn row(snapshot: &Snapshot) -> Row<'_> {
    let record = &snapshot.record;
    let mut quota_state = OwnedValue::object();
    if let Some(object) = quota_state.as_object_mut() {
        for (operation, state) in &snapshot.quotas {
            object.insert(operation.clone(), OwnedValue::from(state.as_str()));
        }
    }
    Row {
        id: &snapshot.id,
        created_at: timestamp(record.created_at),
        last_active_at: timestamp(record.last_active),
        usage: &record.usage,
        preferences: record.preferences_object(),
        quota_state,
        plan: record.plan.as_deref(),
        version: snapshot.version,
    }
}

/// A JSON array of the rows of `snapshots`.
pub fn to_json(snapshots: &[&Snapshot]) -> Vec<u8> {
    let rows: Vec<Row<'_>> = snapshots.iter().map(|s| row(s)).collect();
    // Strings, numbers and JSON values only: serialising cannot fail.
    simd_json::serde::to_vec(&rows).unwrap_or_else(|_| b"[]".to_vec())
}

/// Parses one row as PostgREST returns it; `None` if it is not a usable session row.
pub fn from_json(mut text: Vec<u8>) -> Option<Snapshot> {
    let value = simd_json::to_owned_value(&mut text).ok()?;
    let row = value.as_object()?;
    let time = |name: &str| -> Option<i64> {
        let text = row.get(name)?.as_str()?;
        Some(DateTime::parse_from_rfc3339(text).ok()?.timestamp())
    };
    let usage = row
        .get("usage")
        .and_then(|u| u.as_object())
        .map(|object| {
            object
                .iter()
                .filter_map(|(name, count)| Some((Arc::from(name.as_ref()), count.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let preferences = row
        .get("preferences")
        .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
        .map(|p| p.encode());
    let quotas = row
        .get("quota_state")
        .and_then(|q| q.as_object())
        .map(|object| {
            object
                .iter()
                .filter_map(|(op, state)| Some((op.to_string(), state.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(Snapshot {
        id: Uuid::try_parse(row.get("id")?.as_str()?).ok()?,
        record: SessionRecord {
            created_at: time("created_at")?,
            last_active: time("last_active_at")?,
            usage,
            preferences,
            plan: row
                .get("plan")
                .and_then(|plan| plan.as_str())
                .map(Arc::from),
            quota_states: Vec::new(),
        },
        quotas,
        version: row.get("version")?.as_i64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let snapshot = Snapshot {
            id: Uuid::new_v4(),
            record: SessionRecord {
                created_at: 1_700_000_000,
                last_active: 1_700_000_060,
                usage: [("concepts_generated", 3), ("images", 1)]
                    .into_iter()
                    .map(|(name, count)| (Arc::from(name), count))
                    .collect(),
                preferences: Some(r#"{"theme":"dark"}"#.to_string()),
                plan: Some(Arc::from("pro")),
                quota_states: Vec::new(),
            },
            quotas: vec![("concept_generation".to_string(), "1701388800:3".to_string())],
            version: 9,
        };
        let json = to_json(&[&snapshot]);
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert!(
            text.starts_with('[') && text.contains(r#""created_at":"2023-11-14T22:13:20Z""#),
            "{text}"
        );
        // PostgREST answers a single object with +00:00 offsets.
        let single = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .replace("Z\"", "+00:00\"");
        assert_eq!(from_json(single.into_bytes()), Some(snapshot));
    }
}
