//! Observability: the Prometheus exposition after real traffic, linted by `promtool`, and
//! the dashboards' and rules' queries checked against it.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{split, with_token, TestGateway};

/// Drives every kind of traffic the metrics describe and returns the scrape.
async fn scrape_after_traffic() -> String {
    let gw = TestGateway::start_with(with_token).await;
    let id = gw.new_session().await;
    let response = gw.get_as("/api/session/info", &id).await;
    assert_eq!(response.status().as_u16(), 200);
    gw.post_json("/api/session/sync", json!({"client_session_id": id}))
        .await;
    let nowhere = gw
        .http
        .get(gw.url("/nowhere"))
        .send()
        .await
        .expect("request");
    assert_eq!(nowhere.status().as_u16(), 404);
    for _ in 0..11 {
        gw.consume(&id, "concept_generation", None).await;
    }
    let body = json!({"idempotency_key": "k1"});
    gw.consume(&id, "concept_refinement", Some(body.clone()))
        .await;
    gw.consume(&id, "concept_refinement", Some(body)).await;
    let refund = gw
        .quota(
            reqwest::Method::POST,
            &id,
            "concept_refinement/refund",
            None,
        )
        .await;
    assert_eq!(refund.status().as_u16(), 200);

    let response = gw
        .http
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    split_text(response).await
}

async fn split_text(response: reqwest::Response) -> String {
    response.text().await.expect("body")
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_in_the_exposition_and_promtool_accepts_it() {
    let scrape = scrape_after_traffic().await;

    for (prefix, at_least) in [
        ("sessiongate_http_requests_total{route=\"/api/session/\",method=\"POST\",status=\"200\"}", 1.0),
        ("sessiongate_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}", 1.0),
        ("sessiongate_http_requests_total{route=\"/internal/v1/sessions/{id}/quota/{operation}/consume\",method=\"POST\",status=\"429\"}", 1.0),
        ("sessiongate_http_requests_total{route=\"/internal/v1/sessions/{id}/quota/{operation}/refund\",method=\"POST\",status=\"200\"}", 1.0),
        ("sessiongate_http_request_duration_seconds_bucket{route=\"/api/session/info\",method=\"GET\",le=\"+Inf\"}", 1.0),
        ("sessiongate_http_request_duration_seconds_count{route=\"/api/session/info\",method=\"GET\"}", 1.0),
        ("sessiongate_redis_command_duration_seconds_count{op=\"consume\"}", 11.0),
        ("sessiongate_redis_command_duration_seconds_count{op=\"read\"}", 1.0),
        ("sessiongate_quota_decisions_total{operation=\"concept_generation\",decision=\"granted\"}", 10.0),
        ("sessiongate_quota_decisions_total{operation=\"concept_generation\",decision=\"denied\"}", 1.0),
        ("sessiongate_quota_decisions_total{operation=\"concept_generation\",decision=\"near_limit\"}", 3.0),
        ("sessiongate_quota_consumed_cost_total{operation=\"concept_generation\"}", 10.0),
        ("sessiongate_quota_idempotent_replays_total{operation=\"concept_refinement\"}", 1.0),
        ("sessiongate_quota_refunds_total{operation=\"concept_refinement\"}", 1.0),
        ("sessiongate_sessions_created_total", 1.0),
        ("sessiongate_sessions_synced_total{result=\"adopted\"}", 1.0),
        ("sessiongate_sessions_read_total", 1.0),
        ("sessiongate_redis_up", 1.0),
        ("sessiongate_http_connections_open{listener=\"admin\"}", 1.0),
        ("process_resident_memory_bytes", 1.0),
    ] {
        let value = sample(&scrape, prefix);
        assert!(value >= at_least, "{prefix} = {value}, expected at least {at_least}");
    }
    // Sub-millisecond buckets exist, and the histograms are cumulative.
    let fast = sample(&scrape, "sessiongate_http_request_duration_seconds_bucket{route=\"/api/session/info\",method=\"GET\",le=\"0.0001\"}");
    let all = sample(&scrape, "sessiongate_http_request_duration_seconds_bucket{route=\"/api/session/info\",method=\"GET\",le=\"+Inf\"}");
    assert!(fast <= all);
    assert!(
        scrape.contains("sessiongate_build_info{version=\""),
        "{scrape}"
    );
    for name in [
        "sessiongate_http_requests_total",
        "sessiongate_quota_decisions_total",
        "sessiongate_redis_command_duration_seconds",
    ] {
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "{name} described"
        );
        assert!(scrape.contains(&format!("# TYPE {name} ")), "{name} typed");
    }
    assert!(!scrape.contains("sg:{"), "no keys or session ids in labels");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Metric names in a PromQL text: `sessiongate_*` and `process_*` identifiers, without the
/// histogram suffixes that the exposition adds.
fn metric_names(text: &str) -> BTreeSet<String> {
    // Recording rule names contain ':' and stay whole tokens, so they never match.
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("sessiongate_") || token.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_query_metrics_the_gateway_exports() {
    let scrape = scrape_after_traffic().await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|line| line.starts_with("# TYPE "))
        .filter_map(|line| line.split(' ').nth(2))
        .flat_map(|name| ["", "_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")))
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/grafana/dashboards/sessiongate.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    assert!(
        queries.len() >= 10,
        "the dashboard has queries: {queries:?}"
    );
    let rules =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/rules.yml")).expect("rules");
    queries.push(rules);
    // Metrics that only appear once their event happened (write-behind runs against
    // Supabase, which this gateway does not have; gateway mode needs `[[routes]]`) are
    // checked by name against the descriptions the gateway registers.
    let described = sessiongate_described_names();
    for query in &queries {
        for name in metric_names(query) {
            assert!(
                exported.contains(&name) || described.contains(&name),
                "{name} is queried but not exported:\n{query}"
            );
        }
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr" | "query" | "definition", serde_json::Value::String(text)) => {
                        out.push(text.clone())
                    }
                    _ => collect_exprs(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// Every metric name the telemetry module defines (histograms with their suffixes).
fn sessiongate_described_names() -> BTreeSet<String> {
    use sessiongate::telemetry::*;
    let histograms = [
        HTTP_DURATION,
        REDIS_DURATION,
        FLUSH_BATCH_ROWS,
        FLUSH_DURATION,
    ];
    let plain = [
        HTTP_REQUESTS,
        HTTP_IN_FLIGHT,
        HTTP_CONNECTIONS,
        REDIS_ERRORS,
        REDIS_RELOADS,
        REDIS_UP,
        SESSIONS_CREATED,
        SESSIONS_SYNCED,
        SESSIONS_READ,
        SESSIONS_ERASED,
        CONFIG_RELOADS,
        CREATIONS_THROTTLED,
        QUOTA_DECISIONS,
        QUOTA_COST,
        QUOTA_REFUNDS,
        QUOTA_REPLAYS,
        FLUSH_BACKLOG,
        FLUSH_OLDEST_AGE,
        FLUSH_ROWS,
        FLUSH_BATCHES,
        FLUSH_RETRIES,
        FLUSH_DEAD_LETTERS,
        FLUSH_REFUSALS,
        READ_THROUGH,
        PROXY_REQUESTS,
        BUILD_INFO,
    ];
    plain
        .iter()
        .map(|n| n.to_string())
        .chain(
            histograms
                .iter()
                .flat_map(|n| ["_bucket", "_sum", "_count"].map(|s| format!("{n}{s}"))),
        )
        .collect()
}

#[tokio::test]
async fn status_codes_land_in_their_labels() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .delete(gw.url("/api/session/info"))
        .send()
        .await
        .expect("request");
    assert_eq!(split(response).await.0, 405);
    let scrape = split_text(
        gw.http
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape"),
    )
    .await;
    assert!(sample(&scrape, "sessiongate_http_requests_total{route=\"/api/session/info\",method=\"DELETE\",status=\"405\"}") >= 1.0);
}

/// A real Prometheus scrapes a live gateway: the target is up, the samples arrive, and
/// every recording and alerting rule evaluates without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_evaluates_the_rules() {
    let gw = TestGateway::start().await;
    gw.new_session().await;
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
    let prometheus = crate::services::Prometheus::start(gw.gateway.admin_addr(), &rules);
    let api = |path: &str| {
        let url = format!("{}{path}", prometheus.url());
        let http = gw.http.clone();
        async move {
            let response = http.get(url).send().await.ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    crate::support::eventually(
        std::time::Duration::from_secs(60),
        "the target to be up",
        || async {
            let targets = api("/api/v1/targets").await?;
            let health = targets["data"]["activeTargets"][0]["health"]
                .as_str()?
                .to_string();
            (health == "up").then_some(())
        },
    )
    .await;
    crate::support::eventually(
        std::time::Duration::from_secs(60),
        "a scraped sample",
        || async {
            let result = api("/api/v1/query?query=sessiongate_sessions_created_total").await?;
            (!result["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    let rules = crate::support::eventually(
        std::time::Duration::from_secs(60),
        "every rule evaluated",
        || async {
            let rules = api("/api/v1/rules").await?;
            let all: Vec<serde_json::Value> = rules["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = all.iter().all(|rule| {
                rule["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
            (!all.is_empty() && evaluated).then_some(all)
        },
    )
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let alerts = rules
        .iter()
        .filter(|rule| rule["type"] == "alerting")
        .count();
    assert!(alerts >= 8, "{alerts} alerting rules");
}
