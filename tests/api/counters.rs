//! Usage counters named by configuration (contract addendum 2): a new counter is counted,
//! shown, written behind and read back with no code; rows written by v1, one column per
//! counter, keep their counts through migration 0002.

use std::time::Duration;

use serde_json::{json, Value};
use sessiongate::model::quota::{Policy, Window};

use crate::services::{shared_postgrest, Postgres, Postgrest};
use crate::support::{eventually, split, writing_to, TestGateway};

/// The row of `id` as the gateway's role reads it through PostgREST.
async fn row(postgrest: &Postgrest, id: &str) -> Option<Value> {
    let token = postgrest.token("service_role");
    let response = reqwest::Client::new()
        .get(format!("{}/sessions?id=eq.{id}", postgrest.url()))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .ok()?;
    let (_, rows) = split(response).await;
    rows.as_array()?.first().cloned()
}

/// `GET /api/session/info` as `id`: the status and the body as sent, to check key order.
async fn info_text(gw: &TestGateway, id: &str) -> (u16, String) {
    let response = gw.get_as("/api/session/info", id).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_named_by_configuration_is_counted_shown_and_written_behind() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(|config| {
        writing_to(postgrest)(config);
        let mut policies = Policy::defaults();
        let hour = Window::Rolling(Duration::from_secs(3600));
        policies.push(Policy {
            counter: Some("images_rendered".into()),
            ..Policy::new("image_render", 5, hour)
        });
        config.policies = policies;
    })
    .await;
    let id = gw.new_session().await;
    for remaining in [4, 3] {
        let (status, body) = gw.consume(&id, "image_render", None).await;
        assert_eq!(
            (status, &body["remaining"]),
            (200, &json!(remaining)),
            "{body}"
        );
        assert_eq!(body["usage_stats"]["images_rendered"], 5 - remaining);
    }

    // Every configured counter, in configuration order, the new one after the defaults.
    let (status, text) = info_text(&gw, &id).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(
            r#""usage_stats":{"concepts_generated":0,"concepts_refined":0,"concepts_stored":0,"images_rendered":2}"#
        ),
        "{text}"
    );

    let flushed = eventually(Duration::from_secs(30), "the row to be written", || async {
        row(postgrest, &id)
            .await
            .filter(|row| row["usage"]["images_rendered"] == 2)
    })
    .await;
    assert_eq!(flushed["usage"], json!({"images_rendered": 2}));

    gw.lose_redis_data().await;
    let (status, text) = info_text(&gw, &id).await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["usage_stats"]["images_rendered"], 2, "{body}");
    assert_eq!(
        body["rate_limits"]["image_render"]["remaining"], 3,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_rows_keep_their_counts_through_the_usage_migration() {
    let db = Postgres::start_at(1);
    let (id, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (id, counts) in [(id, "4, 2, 1"), (other, "1, 0, 0")] {
        db.sql(&format!(
            "insert into public.sessions (id, created_at, last_active_at, concepts_generated, \
             concepts_refined, concepts_stored, version) \
             values ('{id}', now(), now(), {counts}, 3)"
        ));
    }
    db.apply_migrations(usize::MAX);
    let postgrest = Postgrest::start(&db);

    // Redis has never seen the session: it comes back from the migrated row.
    let gw = TestGateway::start_with(writing_to(&postgrest)).await;
    let (status, text) = info_text(&gw, &id.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(
            r#""usage_stats":{"concepts_generated":4,"concepts_refined":2,"concepts_stored":1}"#
        ),
        "{text}"
    );

    // A gateway of the previous release, still running during the rolling update, writes
    // the old columns: its counts reach `usage` too.
    db.sql(&format!(
        "insert into public.sessions as s (id, created_at, last_active_at, concepts_generated, \
         concepts_refined, concepts_stored, version) values ('{other}', now(), now(), 7, 0, 0, 4) \
         on conflict (id) do update set concepts_generated = excluded.concepts_generated, \
         version = excluded.version"
    ));
    let row = row(&postgrest, &other.to_string()).await.expect("the row");
    assert_eq!(
        row["usage"],
        json!({"concepts_generated": 7, "concepts_refined": 0, "concepts_stored": 0}),
        "{row}"
    );
}
