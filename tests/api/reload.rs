//! Configuration reload in process ([`sessiongate::Gateway::reload`]): new policies, plans,
//! routes, CORS and throttle apply to the next request; sessions are read in the new
//! policies' shape at once, near cache included; settings a reload cannot apply are named.
//! (Under load, through `SIGHUP`: `faults::reload`.)

use sessiongate::config::Config;

use crate::support::{with_token, TestGateway};

/// The running gateway's settings with `toml`'s quota, plan and CORS sections.
fn reloaded(toml: &str) -> Config {
    Config::from_toml(toml).expect("a valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_policies_to_the_next_request() {
    let gw = TestGateway::start_with(|config| {
        with_token(config);
        config.near_cache_entries = 1024;
    })
    .await;
    let id = gw.new_session().await;
    for _ in 0..10 {
        assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    }
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 429);
    let routed = || async {
        let response = gw.http.get(gw.url("/app/x")).send().await.expect("request");
        response.status().as_u16()
    };
    assert_eq!(routed().await, 404, "no route yet");
    // Read (and cached) in the default policies' shape.
    let before = gw.info(&id).await;
    assert_eq!(before["usage_stats"]["concepts_generated"], 10);

    let needs_restart = gw.gateway.reload(reloaded(
        r#"
        [quotas.concept_generation]
        limit = 12
        window = "month"
        counter = "concepts_generated"
        [quotas.image_render]
        limit = 2
        window = "day"
        counter = "images_rendered"
        [plans.pro.quotas.image_render]
        limit = 20
        [[routes]]
        path = "/app/*"
        upstream = "http://127.0.0.1:9"
        "#,
    ));
    assert!(needs_restart.is_empty(), "{needs_restart:?}");

    // The new route at once (its upstream refuses connections: 502, not 404).
    assert_eq!(routed().await, 502);
    // The new shape at once: the new counter and policy show, the old ones are gone.
    let info = gw.info(&id).await;
    assert_eq!(info["rate_limits"]["concept_generation"]["limit"], 12);
    assert_eq!(info["rate_limits"]["concept_generation"]["remaining"], 2);
    assert_eq!(info["rate_limits"]["image_render"]["remaining"], 2);
    assert!(info["rate_limits"]["concept_storage"].is_null(), "{info}");
    assert_eq!(
        info["usage_stats"],
        serde_json::json!({ "concepts_generated": 10, "images_rendered": 0 })
    );
    assert_eq!(gw.consume(&id, "concept_generation", None).await.0, 200);
    assert_eq!(gw.consume(&id, "image_render", None).await.0, 200);
    assert_eq!(gw.consume(&id, "concept_storage", None).await.0, 404);
    let plan = gw
        .session_request(reqwest::Method::PUT, &id, "/plan")
        .json(&serde_json::json!({ "plan": "pro" }))
        .send()
        .await
        .expect("request");
    assert_eq!(plan.status(), 200, "the new plan is known");
    assert_eq!(
        gw.info(&id).await["rate_limits"]["image_render"]["limit"],
        20
    );

    // A keyed answer given on a plan is replayed after a reload removed the plan.
    let keyed = serde_json::json!({ "idempotency_key": "before-the-reload" });
    assert_eq!(
        gw.consume(&id, "image_render", Some(keyed.clone())).await.0,
        200
    );
    gw.gateway.reload(reloaded(
        "[quotas.image_render]\nlimit = 2\nwindow = \"day\"\ncounter = \"images_rendered\"\n",
    ));
    let replay = gw
        .quota(
            reqwest::Method::POST,
            &id,
            "image_render/consume",
            Some(keyed),
        )
        .await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn settings_that_take_a_restart_are_named_and_left_alone() {
    let gw = TestGateway::start_with(|config| {
        with_token(config);
        config.source = "[redis]\ntimeout_ms = 1000\n".parse().expect("TOML");
    })
    .await;
    let needs_restart = gw.gateway.reload(reloaded(
        r#"
        [redis]
        timeout_ms = 5
        [cookie]
        name = "other"
        [session]
        creations_per_minute = 1
        creation_burst = 1
        [cors]
        allowed_origins = ["https://app.example"]
        "#,
    ));
    assert_eq!(needs_restart, ["redis.timeout_ms", "cookie.name"]);
    // The cookie keeps its name; the throttle takes its new limits (one creation from here).
    let response = gw
        .http
        .post(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let cookies = crate::support::set_cookies(&response);
    assert!(
        cookies.iter().any(|c| c.starts_with("concept_session=")),
        "{cookies:?}"
    );
    let second = gw
        .http
        .post(gw.url("/api/session/"))
        .send()
        .await
        .expect("request");
    assert_eq!(second.status(), 429, "the reloaded throttle");
}
