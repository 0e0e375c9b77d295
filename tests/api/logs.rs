//! Session ids are credentials (contract, addendum 2): the gateway's log, at debug level,
//! after a run through every endpoint and its error paths, holds no whole session id.

use std::time::Duration;

use fred::prelude::*;
use serde_json::{json, Value};

use crate::process::{one_shot, GatewayProcess};
use crate::services::{shared_postgres, Postgrest};
use crate::support::{eventually, flush_db, RedisServer, TOKEN};
use crate::upstreams::Upstream;

/// Every UUID-shaped run of characters in `text`.
fn uuids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let shape = |window: &[u8]| {
        window.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    };
    bytes
        .windows(36)
        .filter(|window| shape(window))
        .map(|window| String::from_utf8_lossy(window).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_holds_a_whole_session_id() {
    let redis = RedisServer::start();
    let mut postgrest = Postgrest::start(shared_postgres());
    let upstream = Upstream::start().await;
    let toml = format!(
        "[flush]\ninterval_ms = 100\n\
         [[routes]]\npath = \"/app/generate\"\nmethods = [\"POST\"]\nupstream = \"{0}\"\noperation = \"concept_generation\"\n\
         [[routes]]\npath = \"/app/fail\"\nmethods = [\"POST\"]\nupstream = \"{0}\"\noperation = \"concept_generation\"\n\
         [[routes]]\npath = \"/app/open/*\"\nupstream = \"{0}\"\n",
        upstream.url()
    );
    let env = [
        ("RUST_LOG", "debug".to_string()),
        ("SESSIONGATE_SERVICE_TOKEN", TOKEN.to_string()),
        ("SUPABASE_REST_URL", postgrest.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", postgrest.token("service_role")),
    ];
    let gw = GatewayProcess::start(&redis.url(0), &toml, &env);
    let http = one_shot();
    let id = gw.new_session(&http).await;
    let other = gw.new_session(&http).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let internal = |path: String| format!("/internal/v1/sessions/{path}");

    let calls: Vec<(&str, String, Option<&str>, Option<Value>)> = vec![
        ("POST", "/api/session/".into(), Some(&id), Some(json!({}))),
        ("POST", "/api/session/".into(), Some(&unknown), None),
        (
            "POST",
            "/api/session/sync".into(),
            Some(&id),
            Some(json!({"client_session_id": other})),
        ),
        (
            "POST",
            "/api/session/sync".into(),
            Some(&id),
            Some(json!({"client_session_id": unknown})),
        ),
        ("GET", "/api/session/info".into(), Some(&id), None),
        ("GET", "/api/session/info".into(), Some(&unknown), None),
        (
            "PUT",
            "/api/session/preferences".into(),
            Some(&id),
            Some(json!({"theme": "dark"})),
        ),
        (
            "PUT",
            "/api/session/preferences".into(),
            Some(&unknown),
            Some(json!({})),
        ),
        ("GET", "/api/session/preferences".into(), Some(&id), None),
        (
            "POST",
            internal(format!("{id}/quota/concept_generation/consume")),
            None,
            None,
        ),
        (
            "POST",
            internal(format!("{unknown}/quota/concept_generation/consume")),
            None,
            None,
        ),
        (
            "POST",
            internal(format!("{id}/quota/nope/consume")),
            None,
            None,
        ),
        (
            "GET",
            internal(format!("{id}/quota/concept_generation")),
            None,
            None,
        ),
        (
            "POST",
            internal(format!("{id}/quota/concept_generation/refund")),
            None,
            None,
        ),
        ("POST", internal(format!("{id}/persist")), None, None),
        ("POST", internal(format!("{unknown}/persist")), None, None),
        (
            "GET",
            "/internal/v1/authorize?operation=concept_refinement".into(),
            Some(&id),
            None,
        ),
        ("GET", "/internal/v1/authorize".into(), Some(&unknown), None),
        ("POST", "/app/generate".into(), Some(&id), None),
        ("POST", "/app/generate".into(), Some(&unknown), None),
        ("POST", "/app/fail".into(), Some(&id), None),
        ("GET", "/app/open/x".into(), Some(&id), None),
        ("GET", "/app/open/x".into(), Some(&unknown), None),
    ];
    for (method, path, session, body) in &calls {
        let mut request = http
            .request(method.parse().expect("method"), gw.url(path))
            .bearer_auth(TOKEN);
        if let Some(session) = session {
            request = request.header("x-session-id", *session);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let status = request.send().await.expect("request").status();
        // `/app/fail` passes on its upstream's 500; nothing else is a server error.
        let upstreams_answer = path.ends_with("/fail");
        assert!(
            upstreams_answer || !status.is_server_error(),
            "{method} {path}: {status}"
        );
    }

    // Redis loses the sessions while the system of record is down: read-through fails.
    let redis_client =
        Builder::from_config(fred::prelude::Config::from_url(&redis.url(0)).expect("redis url"))
            .build()
            .expect("redis client");
    redis_client.init().await.expect("redis connects");
    eventually(
        Duration::from_secs(30),
        "the sessions to be flushed",
        || async {
            let rows = postgrest
                .rows(std::slice::from_ref(&id))
                .await
                .unwrap_or_default();
            rows.contains_key(&id).then_some(())
        },
    )
    .await;
    flush_db(&redis_client).await;
    postgrest.stop();
    let response = http
        .get(gw.url("/api/session/info"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 503);
    postgrest.restart();

    let response = http
        .get(gw.url("/api/session/info"))
        .header("x-session-id", &id)
        .send()
        .await
        .expect("info");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();

    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).expect("the gateway's log");
    assert!(
        log.lines()
            .any(|line| line.contains(&request_id) && line.contains("request")),
        "no log line names request {request_id}:\n{log}"
    );
    assert!(
        log.contains("read-through failed") && log.contains(&id[..8]),
        "the run reached the logged error paths, with short ids:\n{log}"
    );
    let whole = uuids(&log);
    assert!(whole.is_empty(), "whole ids in the log: {whole:?}");
    assert!(
        !log.contains('\u{1b}'),
        "terminal colour codes in a log written to a file"
    );
}
