//! Browser-facing hardening (contract, addendum 2) over real HTTP: a body must say it is
//! JSON, and a page the gateway does not serve can't change a session, even one on the same
//! site whose requests carry the cookie without a CORS preflight.

use serde_json::json;

use crate::gateway::gateway;
use crate::support::{set_cookies, split, TestGateway};
use crate::upstreams::Upstream;

const ALLOWED: &str = "https://app.example";

async fn with_cors() -> TestGateway {
    TestGateway::start_with(|config| {
        config.cors = sessiongate::config::Config::from_toml(&format!(
            "[cors]\nallowed_origins = [\"{ALLOWED}\"]\n"
        ))
        .expect("cors")
        .cors;
    })
    .await
}

/// `(status, error_code, Set-Cookie headers)` of `request`.
async fn outcome(request: reqwest::RequestBuilder) -> (u16, String, Vec<String>) {
    let response = request.send().await.expect("request");
    let cookies = set_cookies(&response);
    let (status, body) = split(response).await;
    let code = body["error_code"].as_str().unwrap_or_default().to_string();
    (status, code, cookies)
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_415_everywhere() {
    let gw = with_cors().await;
    let id = gw.new_session().await;
    let other = gw.new_session().await;
    let sync = json!({ "client_session_id": other }).to_string();
    let bodies = [
        ("POST", "/api/session/", "{}".to_string()),
        ("POST", "/api/session/sync", sync.clone()),
        (
            "PUT",
            "/api/session/preferences",
            "{\"theme\":\"dark\"}".to_string(),
        ),
    ];
    for (method, path, body) in &bodies {
        let method: reqwest::Method = method.parse().expect("method");
        for content_type in [None, Some("text/plain")] {
            let mut request = gw
                .http
                .request(method.clone(), gw.url(path))
                .header("cookie", format!("concept_session={id}"))
                .body(body.clone());
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let (status, code, cookies) = outcome(request).await;
            assert_eq!(
                (status, code.as_str()),
                (415, "unsupported_media_type"),
                "{method} {path} with {content_type:?}"
            );
            assert!(cookies.is_empty(), "{method} {path} set a cookie");
        }
    }
    // The reported attack, without a browser: the cookie still names the first session.
    let info = gw.get_as("/api/session/info", &id).await;
    let (status, body) = split(info).await;
    assert_eq!((status, &body["session_id"]), (200, &json!(id)));
    assert_eq!(body["usage_stats"]["concepts_generated"], 0);
    let prefs = split(gw.get_as("/api/session/preferences", &id).await).await;
    assert_eq!(prefs, (200, json!({})));
    // Without a body a Content-Type is not needed.
    let (status, _, _) = outcome(gw.http.post(gw.url("/api/session/"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn pages_the_gateway_does_not_serve_cannot_change_sessions() {
    let gw = with_cors().await;
    let id = gw.new_session().await;
    let other = gw.new_session().await;
    let own = format!("http://{}", gw.gateway.public_addr());
    let sync = |headers: &[(&str, &str)]| {
        let mut request = gw
            .http
            .post(gw.url("/api/session/sync"))
            .header("cookie", format!("concept_session={id}"))
            .json(&json!({ "client_session_id": other }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    };
    for refused in [
        vec![("origin", "http://127.0.0.1:2222")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "same-site")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        let (status, code, cookies) = outcome(sync(&refused)).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{refused:?}");
        assert!(cookies.is_empty(), "{refused:?} switched the cookie");
    }
    let put = gw
        .http
        .put(gw.url("/api/session/preferences"))
        .header("x-session-id", &id)
        .header("origin", "https://evil.example")
        .json(&json!({"theme": "evil"}));
    assert_eq!(outcome(put).await.0, 403);
    assert_eq!(
        split(gw.get_as("/api/session/preferences", &id).await).await,
        (200, json!({}))
    );
    // Reads are not refused: CORS keeps their answers from foreign pages.
    let read = gw.get_as("/api/session/info", &id).await.status().as_u16();
    assert_eq!(read, 200);

    for passed in [
        vec![],
        vec![("origin", ALLOWED)],
        vec![("origin", own.as_str())],
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
    ] {
        let (status, code, _) = outcome(sync(&passed)).await;
        assert_eq!(status, 200, "{passed:?}: {code}");
    }
}

#[tokio::test]
async fn gateway_mode_routes_are_not_origin_checked() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/site/*\"\nupstream = \"{}\"\n",
        upstream.url()
    );
    let gw = gateway(5, &routes, |_| {}).await;
    let response = gw
        .http
        .post(gw.url("/site/form"))
        .header("origin", "https://elsewhere.example")
        .header("sec-fetch-site", "cross-site")
        .body("a=1")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "the application decides");
    assert_eq!(upstream.hits().len(), 1);
}
