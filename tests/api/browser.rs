//! The example frontend of `examples/browser/` in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver` packages), driven through chromedriver's W3C WebDriver
//! HTTP API, calls a gateway that allows the page's origin.
//!
//! - [`a_browser_keeps_its_session`]: what a frontend does (create, the cookie stored and
//!   sent back, preferences through a CORS preflight, sync, reload, browser restart).
//! - [`foreign_pages_neither_read_nor_change_the_session`]: pages on origins the gateway does
//!   not allow (another port of the same host: same-site; `localhost`: cross-site) can't read
//!   the session and can't switch or change it, also with requests that need no preflight.
//!
//! Every process runs under a watchdog that stops chromedriver and its browser (one process
//! group) and removes the profile when the test ends, however it ends. Nothing is downloaded.

use std::convert::Infallible;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sessiongate::config::Config;

use crate::support::{metric, TestGateway};
use crate::webdriver::{ChromeDriver, COOKIE};

const PAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/browser");
/// The cookie's default `Max-Age` (30 days).
const COOKIE_MAX_AGE: i64 = 30 * 24 * 3600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_keeps_its_session() {
    let pages = serve_pages().await;
    let origin = format!("http://127.0.0.1:{pages}");
    let gw = TestGateway::start_with(|config| allow_origin(config, &origin)).await;
    let page = format!("{origin}/index.html?api={}", gw.base);
    let driver = ChromeDriver::start().await;
    let browser = driver.session().await;
    browser.open(&page).await;

    // Create: a new session, its cookie kept by the browser and hidden from scripts.
    let (status, created) = browser.call("sessiongate.create()").await;
    assert_eq!(status, 200, "create: {created}");
    assert_eq!(created["is_new_session"], true, "create: {created}");
    let a = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    let cookie = browser
        .session_cookie()
        .await
        .expect("the browser stored the cookie");
    assert_eq!(cookie["value"], a.as_str(), "cookie: {cookie}");
    assert_eq!(cookie["httpOnly"], true, "cookie: {cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "cookie: {cookie}");
    assert_eq!(cookie["path"], "/", "cookie: {cookie}");
    let expiry = cookie["expiry"].as_i64().expect("a persistent cookie");
    let expected = unix_now() + COOKIE_MAX_AGE;
    assert!(
        (expiry - expected).abs() < 300,
        "the cookie expires in {} s, not about 30 days: {cookie}",
        expiry - unix_now()
    );
    let visible = browser.eval("document.cookie").await;
    let visible = visible.as_str().expect("document.cookie is a string");
    assert!(
        !visible.contains(COOKIE) && !visible.contains(&a),
        "document.cookie shows the session: {visible:?}"
    );

    // The cookie goes back: the same session, and info answers for it.
    let (status, again) = browser.call("sessiongate.create()").await;
    assert_eq!(status, 200, "second create: {again}");
    assert_eq!(again["session_id"], a.as_str(), "second create: {again}");
    assert_eq!(again["is_new_session"], false, "second create: {again}");
    assert_eq!(browser.current_session().await, a);

    // Preferences: a JSON PUT, which the browser sends only after a CORS preflight.
    let preflights = || async {
        let labels = r#"route="/api/session/preferences",method="OPTIONS",status="204""#;
        metric(
            &gw.scrape().await,
            "sessiongate_http_requests_total",
            labels,
        )
        .unwrap_or(0.0)
    };
    let preflights_before = preflights().await;
    let preferences = json!({"theme": "dark", "layout": {"columns": 2}});
    let put = format!("sessiongate.putPreferences({preferences})");
    let (status, saved) = browser.call(&put).await;
    assert_eq!(status, 200, "put preferences: {saved}");
    assert_eq!(saved, preferences);
    assert!(
        preflights().await > preflights_before,
        "the gateway answered no preflight for the PUT"
    );
    let (status, read) = browser.call("sessiongate.getPreferences()").await;
    assert_eq!((status, read), (200, preferences.clone()));

    // Sync to a session the user kept elsewhere: adopted, and the cookie names it.
    let b = gw.new_session().await;
    let (status, synced) = browser.call(&format!("sessiongate.sync('{b}')")).await;
    assert_eq!(status, 200, "sync: {synced}");
    assert_eq!(synced["is_synced"], true, "sync: {synced}");
    assert_eq!(synced["session_id"], b.as_str(), "sync: {synced}");
    assert_eq!(browser.cookie_value().await.as_deref(), Some(b.as_str()));
    assert_eq!(browser.current_session().await, b);
    // An unknown id changes nothing.
    let unknown = uuid::Uuid::new_v4();
    let (status, kept) = browser
        .call(&format!("sessiongate.sync('{unknown}')"))
        .await;
    assert_eq!(status, 200, "sync to an unknown id: {kept}");
    assert_eq!(kept["is_synced"], false, "sync to an unknown id: {kept}");
    assert_eq!(
        kept["session_id"],
        b.as_str(),
        "sync to an unknown id: {kept}"
    );
    assert_eq!(browser.cookie_value().await.as_deref(), Some(b.as_str()));

    // A reload keeps the session.
    browser.reload().await;
    assert_eq!(browser.current_session().await, b, "after a reload");

    // So does a browser restart on the same profile (a clean shutdown writes cookies out).
    browser.quit().await;
    driver.await_profile_released().await;
    let browser = driver.session().await;
    browser.open(&page).await;
    assert_eq!(
        browser.cookie_value().await.as_deref(),
        Some(b.as_str()),
        "the restarted browser lost the cookie"
    );
    assert_eq!(browser.current_session().await, b, "after a restart");
    browser.quit().await;
}

/// Requests a foreign page can send without a preflight, each trying to switch the browser's
/// session to the attacker's (`args[0]`): a body without a Content-Type (a Blob without a
/// type), read (`cors`) or not (`no-cors`), and a form-like `text/plain` body.
const ATTACKS: [(&str, &str); 3] = [
    (
        "sync with an untyped body",
        "fetch(sessiongate.api + '/api/session/sync', {method: 'POST', credentials: 'include', \
         body: new Blob([JSON.stringify({client_session_id: args[0]})])}).then(r => r.status)",
    ),
    (
        "no-cors sync with an untyped body",
        "fetch(sessiongate.api + '/api/session/sync', {method: 'POST', mode: 'no-cors', \
         credentials: 'include', body: new Blob([JSON.stringify({client_session_id: args[0]})])})\
         .then(r => r.type)",
    ),
    (
        "no-cors sync with a text/plain body",
        "fetch(sessiongate.api + '/api/session/sync', {method: 'POST', mode: 'no-cors', \
         credentials: 'include', headers: {'Content-Type': 'text/plain'}, \
         body: JSON.stringify({client_session_id: args[0]})}).then(r => r.type)",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pages_neither_read_nor_change_the_session() {
    let pages = serve_pages().await;
    let origin = format!("http://127.0.0.1:{pages}");
    let gw = TestGateway::start_with(|config| allow_origin(config, &origin)).await;
    let page = format!("{origin}/index.html?api={}", gw.base);
    // The same frontend served where the gateway does not allow it: another port of the
    // same host (same site: the Lax cookie goes along) and `localhost` (another site).
    let foreign = serve_pages().await;
    let foreign_pages = [
        ("same-site", format!("http://127.0.0.1:{foreign}")),
        ("cross-site", format!("http://localhost:{foreign}")),
    ];
    let driver = ChromeDriver::start().await;
    let browser = driver.session().await;
    browser.open(&page).await;
    let (status, created) = browser.call("sessiongate.create()").await;
    assert_eq!(status, 200, "create: {created}");
    let a = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    let preferences = json!({"theme": "light"});
    let put = format!("sessiongate.putPreferences({preferences})");
    assert_eq!(browser.call(&put).await.0, 200);
    // A live session the attacker holds (their own): switching the victim's browser to it
    // is log-in CSRF.
    let attacker = gw.new_session().await;

    let mut switched = Vec::new();
    for (site, foreign_origin) in &foreign_pages {
        let foreign_page = format!("{foreign_origin}/index.html?api={}", gw.base);
        browser.open(&foreign_page).await;
        // Nothing readable: CORS withholds the answer, and no-cors answers are opaque.
        let info = browser.run("sessiongate.info()", json!([])).await;
        assert!(
            info.as_ref().is_err_and(|e| e.starts_with("TypeError")),
            "a {site} page read the session info: {info:?}"
        );
        let opaque = browser
            .eval(
                "fetch(sessiongate.api + '/api/session/info', {mode: 'no-cors', \
                 credentials: 'include'}).then(async r => [r.type, r.status, await r.text()])",
            )
            .await;
        assert_eq!(opaque, json!(["opaque", 0, ""]), "{site} no-cors info");
        // Requests that need a preflight are never sent.
        let evil = browser
            .run("sessiongate.putPreferences({theme: 'evil'})", json!([]))
            .await;
        assert!(
            evil.as_ref().is_err_and(|e| e.starts_with("TypeError")),
            "a {site} page changed preferences: {evil:?}"
        );
        let sync = browser
            .run("sessiongate.sync(args[0])", json!([attacker]))
            .await;
        assert!(
            sync.as_ref().is_err_and(|e| e.starts_with("TypeError")),
            "a {site} page synced with JSON: {sync:?}"
        );

        // Requests that need none: the browser sends them (with the cookie when same-site),
        // and the session must stay the same.
        for (attack, script) in ATTACKS {
            browser.open(&foreign_page).await;
            let outcome = browser.run(script, json!([attacker])).await;
            browser.open(&page).await;
            let cookie = browser.cookie_value().await;
            let current = browser.current_session().await;
            if cookie.as_deref() != Some(a.as_str()) || current != a {
                switched.push(format!(
                    "{site} {attack} (page saw {outcome:?}): cookie now {cookie:?}, info answers \
                     {current} (the victim's session is {a}, the attacker's {attacker})"
                ));
                // Back to the victim's session for the next attempt.
                let (status, back) = browser.call(&format!("sessiongate.sync('{a}')")).await;
                assert_eq!(status, 200, "sync back: {back}");
            }
        }
    }
    assert!(
        switched.is_empty(),
        "foreign pages switched the browser's session (the gateway must refuse state-changing \
         requests from origins it does not allow, 403, and bodies without \
         Content-Type: application/json, 415):\n{}",
        switched.join("\n")
    );
    browser.open(&page).await;
    let (status, read) = browser.call("sessiongate.getPreferences()").await;
    assert_eq!((status, read), (200, preferences));
    browser.quit().await;
}

fn allow_origin(config: &mut Config, origin: &str) {
    config.cors = Config::from_toml(&format!("[cors]\nallowed_origins = [\"{origin}\"]\n"))
        .expect("cors settings")
        .cors;
}

fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.expect("a clock after 1970").as_secs() as i64
}

/// Serves `examples/browser/` on a free loopback port, for as long as the test runs;
/// returns the port.
async fn serve_pages() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the page server");
    let port = listener.local_addr().expect("page server addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(serve_page));
            tokio::spawn(connection);
        }
    });
    port
}

async fn serve_page(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (file, content_type) = match request.uri().path() {
        "/" | "/index.html" => ("index.html", "text/html; charset=utf-8"),
        "/app.js" => ("app.js", "text/javascript; charset=utf-8"),
        _ => {
            let mut missing = Response::new(Full::new(Bytes::from_static(b"not found")));
            *missing.status_mut() = StatusCode::NOT_FOUND;
            return Ok(missing);
        }
    };
    let body = tokio::fs::read(Path::new(PAGES).join(file))
        .await
        .expect("read examples/browser");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.parse().expect("ascii"));
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("ascii"));
    Ok(response)
}
