//! A small W3C WebDriver client for the browser tests: chromedriver (Debian's
//! `chromium-driver`) driving headless Chromium (Debian's `chromium`) over HTTP with
//! `reqwest`. chromedriver and its browser run in one process group under a watchdog that
//! stops them and removes the profile when the test ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::services::{free_port, Watchdog};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const COOKIE: &str = "concept_session";
/// Bound on chromedriver's start and on one WebDriver command (a script or a page load
/// gets 10 s of it), so that a stuck browser fails the test instead of hanging it.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, with a folder of its own for its log and the
/// browser's profile.
pub struct ChromeDriver {
    url: String,
    dir: PathBuf,
    http: reqwest::Client,
    server: Watchdog,
}

impl ChromeDriver {
    pub async fn start() -> ChromeDriver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(COMMAND_LIMIT)
            .build()
            .expect("http client");
        let mut log = String::new();
        // A free port can be taken between our probe and chromedriver's bind; then it exits,
        // and we start over on another port.
        for _ in 0..5 {
            let port = free_port();
            let dir = crate::services::temp_path("browser");
            // chromedriver leads a process group of its own, which holds the browser it
            // starts: stopping the group stops them all (TERM, then KILL after 5 s).
            let script = r#"trap '' PIPE
                mkdir -m 700 "$3" || exit 1
                setsid "$1" --port="$2" >"$3/chromedriver.log" 2>&1 &
                echo $!
                read _
                kill -TERM -$! $! 2>/dev/null
                i=0
                while kill -0 -$! 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
                kill -KILL -$! $! 2>/dev/null
                wait
                rm -rf "$3""#;
            let server = Watchdog::spawn(
                Command::new("sh"),
                script,
                &[CHROMEDRIVER, &port.to_string(), &dir.to_string_lossy()],
            );
            let driver = ChromeDriver {
                url: format!("http://127.0.0.1:{port}"),
                dir,
                http: http.clone(),
                server,
            };
            match driver.await_ready().await {
                Ok(()) => return driver,
                Err(exited) => log = exited,
            }
        }
        panic!("chromedriver exited on every try; its last log:\n{log}");
    }

    /// Polls `/status` until chromedriver is ready, or returns its log when it exited.
    pub async fn await_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok(response) = self.http.get(format!("{}/status", self.url)).send().await {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true && self.server.server_alive() {
                    return Ok(());
                }
            }
            if !self.server.server_alive() {
                return Err(self.log());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for chromedriver to start; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }

    /// The browser's profile, the same for every session of this chromedriver.
    pub fn profile(&self) -> PathBuf {
        self.dir.join("profile")
    }

    /// Starts headless Chromium on the profile and opens a WebDriver session with it.
    pub async fn session(&self) -> Browser {
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            format!("--user-data-dir={}", self.profile().display()),
        ]);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"script": 10_000, "pageLoad": 10_000},
        }}});
        let response = self
            .http
            .post(format!("{}/session", self.url))
            .json(&capabilities)
            .send()
            .await
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}; log:\n{}", self.log()));
        let answer: Value = response.json().await.expect("new session answer");
        let Some(id) = answer["value"]["sessionId"].as_str() else {
            panic!(
                "chromedriver could not start the browser: {}\nits log:\n{}",
                answer["value"],
                self.log()
            );
        };
        Browser {
            http: self.http.clone(),
            session: format!("{}/session/{id}", self.url),
        }
    }

    /// Waits until no browser holds the profile: Chromium removes its `SingletonLock` when
    /// it has shut down cleanly (and written its cookies out).
    pub async fn await_profile_released(&self) {
        let lock = self.profile().join("SingletonLock");
        let deadline = Instant::now() + STARTUP_LIMIT;
        while lock.symlink_metadata().is_ok() {
            assert!(
                Instant::now() < deadline,
                "Chromium did not shut down cleanly (its profile is still locked); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One WebDriver session: a browser window.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
}

impl Browser {
    /// Sends a WebDriver command; its `value`, or a panic naming the WebDriver error.
    pub async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = response.status().is_success();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        let value = answer["value"].clone();
        assert!(
            ok,
            "WebDriver {method} {path}: {}: {}",
            value["error"],
            value["message"].as_str().unwrap_or_default()
        );
        value
    }

    /// Opens the example page at `url` and checks that it loaded (not an error page), so
    /// that a failure in the page is the API's, not a missing page's.
    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        self.check_loaded(url).await;
    }

    pub async fn check_loaded(&self, url: &str) {
        let loaded = self
            .eval("[location.href, typeof window.sessiongate]")
            .await;
        assert_eq!(loaded, json!([url, "object"]), "the example page at {url}");
    }

    pub async fn reload(&self) {
        let url = self.command(reqwest::Method::GET, "/url", None).await;
        self.command(reqwest::Method::POST, "/refresh", Some(json!({})))
            .await;
        self.check_loaded(url.as_str().expect("the page's URL"))
            .await;
    }

    /// Ends the session; chromedriver shuts the browser down.
    pub async fn quit(self) {
        self.command(reqwest::Method::DELETE, "", None).await;
    }

    /// Runs `expression` in the page (where `args` is the array of arguments) and waits for
    /// its value, a promise's settled: `Ok` with what it resolved to, `Err` with what it
    /// rejected with.
    pub async fn run(&self, expression: &str, args: Value) -> Result<Value, String> {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             const args = Array.prototype.slice.call(arguments, 0, -1);\n\
             Promise.resolve().then(() => ({expression})).then(\n\
               (value) => done({{ok: value === undefined ? null : value}}),\n\
               (error) => done({{rejected: String(error)}}));"
        );
        let body = json!({ "script": script, "args": args });
        let value = self
            .command(reqwest::Method::POST, "/execute/async", Some(body))
            .await;
        match value.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(value["rejected"].as_str().unwrap_or_default().to_string()),
        }
    }

    /// [`Browser::run`] for an expression that must not fail.
    pub async fn eval(&self, expression: &str) -> Value {
        self.run(expression, json!([]))
            .await
            .unwrap_or_else(|e| panic!("{expression} failed in the page: {e}"))
    }

    /// Calls one of the page's `sessiongate` functions: its status and JSON answer.
    pub async fn call(&self, expression: &str) -> (u16, Value) {
        let result = self.eval(expression).await;
        let status = result["status"].as_u64().expect("a status") as u16;
        (status, result["body"].clone())
    }

    /// The session that `info` answers for, as the page sees it.
    pub async fn current_session(&self) -> String {
        let (status, info) = self.call("sessiongate.info()").await;
        assert_eq!(status, 200, "info: {info}");
        info["session_id"].as_str().expect("session_id").to_string()
    }

    /// The session cookie, as WebDriver's "Get All Cookies" shows it for the current page.
    pub async fn session_cookie(&self) -> Option<Value> {
        let cookies = self.command(reqwest::Method::GET, "/cookie", None).await;
        let cookies = cookies.as_array().expect("a cookie list").clone();
        cookies.into_iter().find(|cookie| cookie["name"] == COOKIE)
    }

    pub async fn cookie_value(&self) -> Option<String> {
        let cookie = self.session_cookie().await?;
        Some(
            cookie["value"]
                .as_str()
                .expect("a cookie value")
                .to_string(),
        )
    }
}
