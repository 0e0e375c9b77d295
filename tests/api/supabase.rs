//! Write-behind groundwork: `deploy/supabase/migrations/` on a real PostgreSQL behind a
//! real PostgREST 12, driven with the requests the gateway sends.
//! Needs `scripts/install-test-services` to have run (`scripts/test` does).

use std::time::Duration;

use crate::services::{shared_postgres, shared_postgrest, Postgrest};
use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};
use uuid::Uuid;

/// A session row as the gateway writes it.
fn session(id: Uuid, version: i64, concepts_generated: i64) -> Value {
    json!({
        "id": id,
        "created_at": "2024-05-01T10:00:00Z",
        "last_active_at": "2024-05-01T10:05:00Z",
        "usage": {
            "concepts_generated": concepts_generated,
            "concepts_refined": 1,
            "images_rendered": 2,
        },
        "preferences": { "theme": "dark" },
        "quota_state": { "window_start": 1714557600, "used": 3 },
        "version": version,
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Supabase's API gateway wants the key in `apikey`; PostgREST reads the bearer token.
fn authorized(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request
            .header("apikey", token)
            .header("Authorization", format!("Bearer {token}")),
        None => request,
    }
}

/// Upserts rows the way the gateway does; `token` None sends no JWT (the anon role).
async fn upsert(
    rest: &Postgrest,
    token: Option<&str>,
    rows: &[Value],
) -> reqwest::Result<(u16, Value)> {
    let request = client()
        .post(format!("{}/sessions?on_conflict=id", rest.url()))
        .header("Prefer", "resolution=merge-duplicates,return=minimal")
        .json(rows);
    split(authorized(request, token).send().await?).await
}

/// `GET /sessions?id=eq.ID`: the status and the rows.
async fn select(rest: &Postgrest, token: Option<&str>, id: Uuid) -> (u16, Value) {
    let request = client().get(format!("{}/sessions?id=eq.{id}", rest.url()));
    split(
        authorized(request, token)
            .send()
            .await
            .expect("select request"),
    )
    .await
    .expect("select body")
}

/// The stored row, read as the gateway's role; `None` when there is none.
async fn stored(rest: &Postgrest, id: Uuid) -> Option<Value> {
    let (status, rows) = select(rest, Some(&rest.token("service_role")), id).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().expect("an array of rows");
    assert!(rows.len() <= 1, "one row per id: {rows:?}");
    rows.first().cloned()
}

/// Status and JSON body (`Null` when the body is empty, as with `return=minimal`).
async fn split(response: reqwest::Response) -> reqwest::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn updated_at(row: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(row["updated_at"].as_str().expect("updated_at"))
        .expect("updated_at is RFC 3339")
}

/// Upserts with the gateway's role and asserts a 2xx.
async fn upsert_ok(rest: &Postgrest, rows: &[Value]) {
    let (status, body) = upsert(rest, Some(&rest.token("service_role")), rows)
        .await
        .expect("upsert request");
    assert!((200..300).contains(&status), "upsert: {status} {body}");
}

#[tokio::test]
async fn upserted_sessions_are_stored_as_sent() {
    let rest = shared_postgrest();
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let rows: Vec<Value> = (1..)
        .zip(ids)
        .map(|(n, id)| session(id, n, n * 10))
        .collect();

    upsert_ok(rest, &rows).await;

    for (id, sent) in ids.iter().zip(&rows) {
        let row = stored(rest, *id).await.expect("the upserted row");
        for column in ["id", "usage", "preferences", "quota_state", "version"] {
            assert_eq!(row[column], sent[column], "{column} of {id}");
        }
        for column in ["created_at", "last_active_at"] {
            let stored = DateTime::parse_from_rfc3339(row[column].as_str().expect(column));
            let sent = DateTime::parse_from_rfc3339(sent[column].as_str().expect(column));
            assert_eq!(
                stored.expect("stored"),
                sent.expect("sent"),
                "{column} of {id}"
            );
        }
    }
}

#[tokio::test]
async fn only_newer_versions_overwrite_a_session() {
    let rest = shared_postgrest();
    let id = Uuid::new_v4();
    upsert_ok(rest, &[session(id, 5, 50)]).await;
    let first = stored(rest, id).await.expect("row at version 5");

    // An older and an equal version (a late or a repeated write-behind batch) change nothing.
    upsert_ok(rest, &[session(id, 4, 40)]).await;
    upsert_ok(rest, &[session(id, 5, 99)]).await;
    assert_eq!(stored(rest, id).await.as_ref(), Some(&first));

    upsert_ok(rest, &[session(id, 6, 60)]).await;
    let newer = stored(rest, id).await.expect("row at version 6");
    assert_eq!(newer["version"], 6);
    assert_eq!(newer["usage"]["concepts_generated"], 60);
    assert!(
        updated_at(&newer) > updated_at(&first),
        "updated_at moves on"
    );

    // In one batch, each row is judged on its own.
    let other = Uuid::new_v4();
    upsert_ok(rest, &[session(other, 1, 1)]).await;
    upsert_ok(rest, &[session(id, 3, 30), session(other, 2, 2)]).await;
    assert_eq!(stored(rest, id).await.as_ref(), Some(&newer));
    let other_row = stored(rest, other).await.expect("other row");
    assert_eq!(other_row["version"], 2);
    assert_eq!(other_row["usage"]["concepts_generated"], 2);
}

#[tokio::test]
async fn anon_and_authenticated_cannot_touch_sessions() {
    let rest = shared_postgrest();
    let id = Uuid::new_v4();
    upsert_ok(rest, &[session(id, 1, 1)]).await;
    let authenticated = rest.token("authenticated");

    // PostgREST answers 401 to a request without a JWT and 403 to one with a JWT, both
    // carrying PostgreSQL's insufficient_privilege.
    for (token, expected) in [(None, 401), (Some(authenticated.as_str()), 403)] {
        let (status, body) = select(rest, token, id).await;
        assert_eq!(
            (status, &body["code"]),
            (expected, &json!("42501")),
            "{body}"
        );

        let (status, body) = upsert(rest, token, &[session(id, 9, 9)])
            .await
            .expect("upsert request");
        assert_eq!(
            (status, &body["code"]),
            (expected, &json!("42501")),
            "{body}"
        );
        let fresh = Uuid::new_v4();
        let (status, body) = upsert(rest, token, &[session(fresh, 1, 1)])
            .await
            .expect("insert request");
        assert_eq!(
            (status, &body["code"]),
            (expected, &json!("42501")),
            "{body}"
        );
        assert_eq!(stored(rest, fresh).await, None);
    }
    assert_eq!(stored(rest, id).await.expect("row")["version"], 1);
}

#[tokio::test]
async fn rows_breaking_constraints_are_refused_with_json_errors() {
    let rest = shared_postgrest();
    let token = rest.token("service_role");
    // (column, a valid value, a value its constraint refuses): the rows of one batch must
    // have the same keys.
    let cases = [
        (
            "concepts_stored",
            json!(0),
            json!(-1),
            "sessions_concepts_stored_nonnegative",
        ),
        (
            "preferences",
            json!({}),
            json!(["dark"]),
            "sessions_preferences_is_object",
        ),
        ("usage", json!({}), json!([1]), "sessions_usage_is_object"),
    ];
    for (column, valid, value, constraint) in cases {
        let (good_id, bad_id) = (Uuid::new_v4(), Uuid::new_v4());
        let mut good = session(good_id, 1, 1);
        good[column] = valid;
        let mut bad = session(bad_id, 1, 1);
        bad[column] = value;
        let (status, body) = upsert(rest, Some(&token), &[good, bad])
            .await
            .expect("upsert request");
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], "23514", "a check_violation: {body}");
        let message = body["message"].as_str().expect("an error message");
        assert!(message.contains(constraint), "{message}");
        // The batch is one statement: its valid row is refused with the bad one.
        assert_eq!(stored(rest, bad_id).await, None);
        assert_eq!(stored(rest, good_id).await, None);
    }
}

#[tokio::test]
async fn postgrest_outage_refuses_connections_until_it_is_back() {
    let mut rest = Postgrest::start(shared_postgres());
    let id = Uuid::new_v4();
    upsert_ok(&rest, &[session(id, 1, 1)]).await;

    rest.stop();
    let error = upsert(
        &rest,
        Some(&rest.token("service_role")),
        &[session(id, 2, 2)],
    )
    .await
    .expect_err("no PostgREST to answer");
    assert!(error.is_connect(), "connection refused, not {error}");

    rest.restart();
    assert_eq!(stored(&rest, id).await.expect("row")["version"], 1);
    upsert_ok(&rest, &[session(id, 2, 2)]).await;
    assert_eq!(stored(&rest, id).await.expect("row")["version"], 2);
}

#[tokio::test]
async fn migration_applies_again_without_touching_data() {
    let rest = shared_postgrest();
    let id = Uuid::new_v4();
    upsert_ok(rest, &[session(id, 3, 3)]).await;
    let before = stored(rest, id).await.expect("row");

    shared_postgres().apply_migrations(usize::MAX);

    assert_eq!(stored(rest, id).await.as_ref(), Some(&before));
    // The guard, grants and policy are all still in force.
    upsert_ok(rest, &[session(id, 2, 2)]).await;
    assert_eq!(stored(rest, id).await.as_ref(), Some(&before));
    let (status, _) = select(rest, None, id).await;
    assert_eq!(status, 401);
    upsert_ok(rest, &[session(id, 4, 4)]).await;
    assert_eq!(stored(rest, id).await.expect("row")["version"], 4);
}
