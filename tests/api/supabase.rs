//! Write-behind groundwork: `deploy/supabase/migrations/` on a real PostgreSQL behind a
//! real PostgREST 12, driven with the requests the gateway sends, as `service_role` and as
//! the gateway's own role (migration 0003).
//! Needs `scripts/install-test-services` to have run (`scripts/test` does).

use std::time::Duration;

use crate::services::{shared_postgres, shared_postgrest, Postgrest};
use crate::support::{eventually, split as split_response, writing_to, TestGateway};
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
    // The gateway's role still upserts, and still may not delete.
    let gateway = rest.token(GATEWAY_ROLE);
    let (status, body) = upsert(rest, Some(&gateway), &[session(id, 5, 5)])
        .await
        .expect("upsert request");
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, body) = delete(rest, &gateway, id).await;
    assert_eq!((status, &body["code"]), (403, &json!("42501")), "{body}");
    assert_eq!(stored(rest, id).await.expect("row")["version"], 5);
}

/// The role migration 0003 creates for the gateway.
const GATEWAY_ROLE: &str = "sessiongate_gateway";

/// Reads one session exactly as the gateway's read-through does: the singular media type,
/// so no row is a 406.
async fn fetch_one(rest: &Postgrest, token: &str, id: Uuid) -> (u16, Value) {
    let request = client()
        .get(format!("{}/sessions", rest.url()))
        .query(&[("id", format!("eq.{id}"))])
        .header("accept", "application/vnd.pgrst.object+json");
    split(
        authorized(request, Some(token))
            .send()
            .await
            .expect("read request"),
    )
    .await
    .expect("read body")
}

/// `DELETE /sessions?id=eq.ID`.
async fn delete(rest: &Postgrest, token: &str, id: Uuid) -> (u16, Value) {
    let request = client().delete(format!("{}/sessions?id=eq.{id}", rest.url()));
    split(
        authorized(request, Some(token))
            .send()
            .await
            .expect("delete request"),
    )
    .await
    .expect("delete body")
}

/// Asserts PostgREST's refusal of a request with a JWT whose role lacks the privilege.
fn assert_refused(what: &str, (status, body): (u16, Value)) {
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("42501")),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn the_gateway_role_upserts_and_reads_sessions() {
    let rest = shared_postgrest();
    let token = rest.token(GATEWAY_ROLE);
    let (id, other) = (Uuid::new_v4(), Uuid::new_v4());

    // Insert (one row, then a batch that inserts one and updates the other).
    let sent = session(id, 5, 50);
    let (status, body) = upsert(rest, Some(&token), std::slice::from_ref(&sent))
        .await
        .expect("upsert request");
    assert!((200..300).contains(&status), "insert: {status} {body}");
    let (status, row) = fetch_one(rest, &token, id).await;
    assert_eq!(status, 200, "{row}");
    for column in ["id", "usage", "preferences", "quota_state", "version"] {
        assert_eq!(row[column], sent[column], "{column}");
    }
    let (status, body) = upsert(
        rest,
        Some(&token),
        &[session(other, 1, 1), session(id, 6, 60)],
    )
    .await
    .expect("upsert request");
    assert!((200..300).contains(&status), "batch: {status} {body}");
    let (_, row) = fetch_one(rest, &token, id).await;
    assert_eq!(
        (&row["version"], &row["usage"]["concepts_generated"]),
        (&json!(6), &json!(60))
    );
    assert_eq!(fetch_one(rest, &token, other).await.1["version"], 1);

    // The version guard works under this role too: an older write changes nothing.
    let (status, body) = upsert(rest, Some(&token), &[session(id, 4, 40)])
        .await
        .expect("upsert request");
    assert!((200..300).contains(&status), "stale: {status} {body}");
    assert_eq!(fetch_one(rest, &token, id).await.1["version"], 6);

    // A session that is not stored: the 406 the gateway reads as "not found".
    let (status, body) = fetch_one(rest, &token, Uuid::new_v4()).await;
    assert_eq!((status, &body["code"]), (406, &json!("PGRST116")), "{body}");
}

#[tokio::test]
async fn the_gateway_role_may_do_nothing_else() {
    let rest = shared_postgrest();
    let token = rest.token(GATEWAY_ROLE);
    let id = Uuid::new_v4();
    upsert_ok(rest, &[session(id, 1, 1)]).await;
    let before = stored(rest, id).await.expect("row");

    // The gateway never deletes a row, nor writes updated_at or the v1 counter columns.
    assert_refused("delete", delete(rest, &token, id).await);
    let request = client()
        .patch(format!("{}/sessions?id=eq.{id}", rest.url()))
        .json(&json!({ "updated_at": "2020-01-01T00:00:00Z" }));
    let answer = split(
        authorized(request, Some(&token))
            .send()
            .await
            .expect("patch"),
    )
    .await
    .expect("patch body");
    assert_refused("update of updated_at", answer);
    let mut v1_row = session(id, 9, 9);
    v1_row["concepts_stored"] = json!(9);
    let answer = upsert(rest, Some(&token), &[v1_row]).await.expect("upsert");
    assert_refused("upsert with a v1 counter column", answer);
    assert_eq!(stored(rest, id).await.as_ref(), Some(&before));

    // Another table, which service_role may use (as Supabase's default privileges grant
    // every new table in `public` to it): nothing of it for the gateway's role.
    shared_postgres().sql(
        "create table if not exists public.role_probe (id uuid primary key, note text); \
         grant all on table public.role_probe to service_role; \
         notify pgrst, 'reload schema'",
    );
    let probe = format!("{}/role_probe", rest.url());
    let service = rest.token("service_role");
    // PostgREST answers reads of a new table a moment before writes (404 until then): wait
    // until service_role can write it.
    eventually(
        Duration::from_secs(10),
        "postgrest to take writes to role_probe",
        || async {
            let request = client()
                .post(&probe)
                .json(&json!({ "id": Uuid::new_v4(), "note": "not the gateway's" }));
            let response = authorized(request, Some(&service)).send().await.ok()?;
            (response.status().as_u16() == 201).then_some(())
        },
    )
    .await;
    let read = authorized(client().get(&probe), Some(&token))
        .send()
        .await
        .expect("read");
    assert_refused("read of another table", split(read).await.expect("body"));
    let write = authorized(
        client().post(&probe).json(&json!({ "id": Uuid::new_v4() })),
        Some(&token),
    )
    .send()
    .await
    .expect("write");
    assert_refused("write to another table", split(write).await.expect("body"));
}

/// A gateway whose SUPABASE_SERVICE_ROLE_KEY is a token for the gateway's role does its
/// whole job: write-behind, read-through after Redis lost the session, persist and erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_gateway_role_writes_behind_and_reads_through() {
    let rest = shared_postgrest();
    let gw = TestGateway::start_with(|config| {
        writing_to(rest)(config);
        if let Some(supabase) = config.supabase.as_mut() {
            supabase.service_role_key = rest.token(GATEWAY_ROLE);
        }
    })
    .await;
    let id = gw.new_session().await;
    for _ in 0..2 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    let response = gw.put_preferences(&id, &json!({ "theme": "dark" })).await;
    assert_eq!(response.status().as_u16(), 200);
    // The preferences came last: a row that has them has everything.
    eventually(Duration::from_secs(30), "the session's row", || async {
        let rows = rest.rows(std::slice::from_ref(&id)).await.ok()?;
        let row = rows.get(&id)?;
        (row["preferences"] == json!({ "theme": "dark" })).then(|| row.clone())
    })
    .await;

    gw.lose_redis_data().await;
    let info = gw.info(&id).await;
    assert_eq!(info["usage_stats"]["concepts_generated"], 2, "{info}");
    assert_eq!(
        info["rate_limits"]["concept_generation"]["remaining"], 8,
        "{info}"
    );

    let response = gw
        .session_request(reqwest::Method::POST, &id, "/persist")
        .send()
        .await
        .expect("request");
    let (status, body) = split_response(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["persisted"], true, "{body}");

    // And erasure, through `erase_session` (migration 0004), the one delete it may do.
    let response = gw
        .session_request(reqwest::Method::DELETE, &id, "")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let rows = rest
        .rows(std::slice::from_ref(&id))
        .await
        .expect("postgrest");
    assert!(!rows.contains_key(&id), "the row is deleted");
}
