//! Plans (per-session tiers) and shadow policies: the allowance in force is the session's
//! plan's, decided in the same one script; a shadow policy grants what enforcement would
//! refuse, and says so.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sessiongate::config::Config;
use sessiongate::model::quota::{Allowance, CalendarUnit, Mode, Policy, Window};
use sessiongate::quota::Quotas;

use crate::services::shared_postgrest;
use crate::support::{
    eventually, metric, split, store_config, store_with, with_token, writing_to, RedisServer,
    TestGateway,
};

const MONTH: Window = Window::Calendar(CalendarUnit::Month);

/// `generate`: 3 a month, 5 on `pro` (cost 1), and on `bulk` 12 with a default cost of 2.
fn tiers(config: &mut Config) {
    with_token(config);
    let mut generate = Policy {
        counter: Some(Arc::from("generated")),
        ..Policy::new("generate", 3, MONTH)
    };
    let pro = Allowance {
        limit: 5,
        ..generate.allowance
    };
    let bulk = Allowance {
        limit: 12,
        default_cost: 2,
        ..generate.allowance
    };
    generate.plans = vec![(Arc::from("pro"), pro), (Arc::from("bulk"), bulk)];
    config.policies = vec![generate];
    config.plans = vec![Arc::from("pro"), Arc::from("bulk")];
}

async fn set_plan(gw: &TestGateway, id: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = gw
        .session_request(reqwest::Method::PUT, id, "/plan")
        .json(&body)
        .send()
        .await
        .expect("request");
    split(response).await
}

async fn limits(gw: &TestGateway, id: &str) -> (u64, u64) {
    let info = gw.info(id).await;
    let generate = &info["rate_limits"]["generate"];
    (
        generate["limit"].as_u64().expect("limit"),
        generate["remaining"].as_u64().expect("remaining"),
    )
}

#[tokio::test]
async fn a_plan_sets_the_limits_in_force_and_keeps_what_was_counted() {
    let gw = TestGateway::start_with(tiers).await;
    let id = gw.new_session().await;
    for _ in 0..3 {
        assert_eq!(gw.consume(&id, "generate", None).await.0, 200);
    }
    assert_eq!(gw.consume(&id, "generate", None).await.0, 429);

    let (status, body) = set_plan(&gw, &id, json!({ "plan": "pro" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plan"], "pro");
    assert_eq!(body["rate_limits"]["generate"]["limit"], 5);
    assert_eq!(
        body["rate_limits"]["generate"]["remaining"], 2,
        "3 used stay used"
    );
    assert_eq!(limits(&gw, &id).await, (5, 2));
    let response = gw
        .quota(reqwest::Method::POST, &id, "generate/consume", None)
        .await;
    let policy = response.headers()["ratelimit-policy"]
        .to_str()
        .expect("ascii");
    assert!(policy.starts_with("\"generate\";q=5;"), "{policy}");
    assert_eq!(response.status(), 200);
    assert_eq!(gw.consume(&id, "generate", None).await.0, 200);
    assert_eq!(gw.consume(&id, "generate", None).await.0, 429);
    let (status, body) = split(gw.quota(reqwest::Method::GET, &id, "generate", None).await).await;
    assert_eq!((status, &body["limit"]), (200, &json!(5)));

    let inspect = gw
        .session_request(reqwest::Method::GET, &id, "")
        .send()
        .await
        .expect("request");
    assert_eq!(split(inspect).await.1["plan"], "pro");

    // Back to no plan: 5 used of 3 is none left, never below 0.
    let (status, body) = set_plan(&gw, &id, json!({ "plan": null })).await;
    assert_eq!((status, &body["plan"]), (200, &json!(null)), "{body}");
    assert_eq!(limits(&gw, &id).await, (3, 0));
    assert_eq!(gw.info(&id).await["usage_stats"]["generated"], 5);
}

#[tokio::test]
async fn a_plan_may_change_the_default_cost() {
    let gw = TestGateway::start_with(tiers).await;
    let id = gw.new_session().await;
    assert_eq!(set_plan(&gw, &id, json!({ "plan": "bulk" })).await.0, 200);
    let (status, body) = gw.consume(&id, "generate", None).await;
    assert_eq!((status, &body["remaining"]), (200, &json!(10)), "{body}");
    assert_eq!(body["usage_stats"]["generated"], 2);
    // A cost above the policy's own limit but within the plan's is taken.
    let (status, body) = gw
        .consume(&id, "generate", Some(json!({ "cost": 10 })))
        .await;
    assert_eq!((status, &body["remaining"]), (200, &json!(0)), "{body}");
    // Above every plan's limit: refused as malformed, whatever the session's plan.
    let (status, body) = gw
        .consume(&id, "generate", Some(json!({ "cost": 13 })))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn plan_changes_refuse_bad_input() {
    let gw = TestGateway::start_with(tiers).await;
    let id = gw.new_session().await;
    let (status, body) = set_plan(&gw, &id, json!({ "plan": "gold" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["known_plans"], json!(["pro", "bulk"]));
    assert_eq!(limits(&gw, &id).await, (3, 3), "nothing changed");
    for body in [json!({}), json!({ "plan": 5 }), json!([])] {
        assert_eq!(set_plan(&gw, &id, body.clone()).await.0, 400, "{body}");
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        set_plan(&gw, &unknown, json!({ "plan": "pro" })).await.0,
        404
    );
    assert_eq!(set_plan(&gw, "nope", json!({ "plan": "pro" })).await.0, 400);
    let get = gw
        .session_request(reqwest::Method::GET, &id, "/plan")
        .send()
        .await
        .expect("request");
    assert_eq!(get.status(), 405);
}

/// Exactness holds on a plan: 300 concurrent consumes over three gateways grant exactly
/// the plan's limit, each in one script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumes_on_a_plan_grant_exactly_its_limit() {
    let redis = RedisServer::start();
    let url = redis.url(0);
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::start_on(&url, tiers).await);
    }
    let id = gateways[0].new_session().await;
    assert_eq!(
        set_plan(&gateways[0], &id, json!({ "plan": "pro" }))
            .await
            .0,
        200
    );
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let requests = (0..300).map(|i| gateways[i % 3].consume(&id, "generate", None));
    let answers = futures_util::future::join_all(requests).await;
    let granted = answers.iter().filter(|(status, _)| *status == 200).count();
    let denied = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!((granted, denied), (5, 295), "exactly the plan's limit");
    let stats = redis.cli(&["INFO", "commandstats"]);
    let fcall = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(fcall, Some(300), "one function call per consume: {stats}");
    assert!(
        !stats.contains("cmdstat_hget:"),
        "no plan lookup of its own: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_written_behind_and_restored_by_read_through() {
    let postgrest = shared_postgrest();
    let gw = TestGateway::start_with(|config| {
        tiers(config);
        writing_to(postgrest)(config);
    })
    .await;
    let id = gw.new_session().await;
    assert_eq!(set_plan(&gw, &id, json!({ "plan": "pro" })).await.0, 200);
    assert_eq!(gw.consume(&id, "generate", None).await.0, 200);
    eventually(Duration::from_secs(10), "the plan in the row", || async {
        let rows = postgrest.rows(std::slice::from_ref(&id)).await.ok()?;
        let row = rows.get(&id)?;
        (row["plan"] == "pro" && row["usage"]["generated"] == 1).then_some(())
    })
    .await;
    gw.lose_redis_data().await;
    assert_eq!(limits(&gw, &id).await, (5, 4), "restored on the plan");

    assert_eq!(set_plan(&gw, &id, json!({ "plan": null })).await.0, 200);
    eventually(Duration::from_secs(10), "no plan in the row", || async {
        let rows = postgrest.rows(std::slice::from_ref(&id)).await.ok()?;
        rows.get(&id)?["plan"].is_null().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_shadow_policy_grants_and_reports_what_it_would_refuse() {
    let gw = TestGateway::start_with(|config| {
        with_token(config);
        config.policies = vec![Policy {
            counter: Some(Arc::from("tried")),
            mode: Mode::Shadow,
            ..Policy::new("trial", 2, MONTH)
        }];
    })
    .await;
    let id = gw.new_session().await;
    let shadow_denied = "operation=\"trial\",decision=\"shadow_denied\"";
    let before = metric(
        &gw.scrape().await,
        "sessiongate_quota_decisions_total",
        shadow_denied,
    )
    .unwrap_or(0.0);
    for expected in [None, None, Some("denied"), Some("denied")] {
        let (status, body) = gw.consume(&id, "trial", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["allowed"], true);
        assert_eq!(body["shadow"].as_str(), expected, "{body}");
    }
    let info = gw.info(&id).await;
    assert_eq!(info["usage_stats"]["tried"], 4, "every grant counted");
    assert_eq!(
        info["rate_limits"]["trial"]["remaining"], 0,
        "as enforcement"
    );
    let after = metric(
        &gw.scrape().await,
        "sessiongate_quota_decisions_total",
        shadow_denied,
    )
    .unwrap_or(0.0);
    assert_eq!(after - before, 2.0);

    // A replay says the same.
    let keyed = json!({ "idempotency_key": "shadow-1" });
    let first = gw.consume(&id, "trial", Some(keyed.clone())).await;
    let response = gw
        .quota(reqwest::Method::POST, &id, "trial/consume", Some(keyed))
        .await;
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let replay = split(response).await;
    assert_eq!((replay.0, &replay.1["shadow"]), (200, &first.1["shadow"]));
}

/// Gateway mode gives a failed upstream's reservation back; a shadow denial took nothing
/// from the window, so only its usage goes back.
#[tokio::test]
async fn releasing_a_shadow_denial_gives_back_the_usage_only() {
    let gw = TestGateway::start_with(with_token).await;
    let trial = Policy {
        counter: Some(Arc::from("tried")),
        mode: Mode::Shadow,
        ..Policy::new("trial", 1, MONTH)
    };
    let mut config = store_config(&gw.redis_url, false);
    config.policies = vec![trial.clone()];
    let store = store_with(&config).await;
    let quotas = Quotas::new(store.clone(), vec![trial.clone()], Vec::new(), None, 0.8);
    let id: uuid::Uuid = gw.new_session().await.parse().expect("uuid");

    let first = quotas
        .reserve(id, &trial, None)
        .await
        .expect("redis")
        .expect("session");
    let second = quotas
        .reserve(id, &trial, None)
        .await
        .expect("redis")
        .expect("session");
    assert_eq!(
        (first.outcome.allowed(), second.outcome.allowed()),
        (true, true)
    );
    assert_eq!(second.status.remaining, 0);
    quotas.release(id, &trial, &second).await.expect("release");
    let state = quotas
        .check(id, &trial)
        .await
        .expect("redis")
        .expect("session");
    assert_eq!(state.status.remaining, 0, "the first grant's use stays");
    assert_eq!(
        state.usage.get("tried"),
        1,
        "the shadow denial's usage went back"
    );
    quotas.release(id, &trial, &first).await.expect("release");
    let state = quotas
        .check(id, &trial)
        .await
        .expect("redis")
        .expect("session");
    assert_eq!((state.status.remaining, state.usage.get("tried")), (1, 0));
}
