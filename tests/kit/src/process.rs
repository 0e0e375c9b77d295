//! The `sessiongate` binary as a process of its own, for tests that need its own RSS, file
//! descriptors, log or signals: started on port 0 with a TOML file and environment of the
//! test's choosing, under a watchdog, so it dies with the test binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::services::{wait_until, Watchdog};
use crate::support::{eventually, metric, scrape};

/// The `sessiongate` binary Cargo built along with the running test binary. `cargo test`
/// names it in `CARGO_BIN_EXE_sessiongate` (since Cargo 1.94; at compile time, `env!` sees it
/// only in the package's own test targets, and this crate is a library); otherwise it is in
/// the folder above the test binary's (`target/<profile>/`; test binaries run from `deps/`).
fn binary() -> PathBuf {
    let path = std::env::var_os("CARGO_BIN_EXE_sessiongate")
        .map(PathBuf::from)
        .or_else(|| {
            let test_binary = std::env::current_exe().ok()?;
            Some(test_binary.parent()?.parent()?.join("sessiongate"))
        })
        .expect("the test binary's path");
    assert!(
        path.is_file(),
        "no gateway binary at {} (run the tests with cargo test)",
        path.display()
    );
    path
}

pub fn temp_dir(what: &str) -> PathBuf {
    let dir = crate::services::temp_path(what);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The `sessiongate` binary under a watchdog (it dies with the test binary), started with a
/// TOML file and environment of the test's choosing, on port 0; logs go to a file.
pub struct GatewayProcess {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    server: Option<Watchdog>,
    pub pid: u32,
}

impl GatewayProcess {
    pub fn start(redis_url: &str, toml: &str, env: &[(&str, String)]) -> GatewayProcess {
        let dir = temp_dir("gateway");
        let config = dir.join("gateway.toml");
        std::fs::write(&config, toml).expect("write the gateway's config");
        let log = dir.join("gateway.log");
        let mut command = Command::new("sh");
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SESSIONGATE_CONFIG", &config)
            .env("SESSIONGATE_LISTEN", "127.0.0.1:0")
            .env("SESSIONGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("SESSIONGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("REDIS_URL", redis_url);
        for (name, value) in env {
            command.env(name, value);
        }
        let script = r#"trap '' PIPE
            "$1" >>"$2" 2>&1 & echo $!; read _; kill -9 $! 2>/dev/null; wait"#;
        let server = Watchdog::spawn(
            command,
            script,
            &[&binary().to_string_lossy(), &log.to_string_lossy()],
        );
        let pid = server.pid();
        // Port 0 everywhere: the binary logs the addresses it bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (public, admin) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|event| event["message"] == "sessiongate listening");
            if let Some(event) = listening {
                let addr = |name: &str| -> SocketAddr {
                    event[name]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .expect(name)
                };
                break (addr("public_addr"), addr("admin_addr"));
            }
            assert!(
                server.server_alive(),
                "the gateway exited at start-up; its log:\n{text}"
            );
            assert!(
                Instant::now() < deadline,
                "the gateway did not log its addresses; its log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        GatewayProcess {
            public,
            admin,
            dir,
            server: Some(server),
            pid,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn alive(&self) -> bool {
        self.server.as_ref().is_some_and(Watchdog::server_alive)
    }

    /// `SIGKILL`, then waits until the process is gone.
    pub fn kill9(&mut self) {
        let server = self.server.take().expect("the gateway runs");
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        wait_until(Duration::from_secs(10), "the gateway to die", || {
            !server.server_alive()
        });
        drop(server);
    }

    /// Resident memory, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the gateway's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("the gateway's fd folder")
            .count()
    }

    /// The fd count once it has stopped moving (three equal samples in a row).
    pub async fn settled_fds(&self) -> usize {
        let mut last = (self.fds(), 0);
        eventually(Duration::from_secs(10), "the fd count to settle", || {
            let now = self.fds();
            last = if now == last.0 {
                (now, last.1 + 1)
            } else {
                (now, 0)
            };
            let settled = (last.1 >= 2).then_some(now);
            async move { settled }
        })
        .await
    }

    /// Waits until the fd count is back to `baseline` or below, and returns it.
    pub async fn fds_back_to(&self, baseline: usize, limit: Duration, what: &str) -> usize {
        eventually(limit, what, || {
            let fds = self.fds();
            async move { (fds <= baseline).then_some(fds) }
        })
        .await
    }

    /// A scrape of `/metrics`, on a connection of its own that closes after the answer.
    pub async fn scrape(&self) -> String {
        scrape(&one_shot(), &self.admin_url("/metrics")).await
    }

    /// The sum of a metric's series whose labels contain `labels` (`""`: all of them).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(&self.scrape().await, name, labels).unwrap_or_else(|| panic!("no {name} series"))
    }

    pub async fn new_session(&self, http: &reqwest::Client) -> String {
        let response = http
            .post(self.url("/api/session/"))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().expect("session_id").to_string()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log (last 40 lines) ---\n{}", self.log_tail(40));
        }
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP client whose connections close after each answer (they would count as the
/// gateway's fds otherwise).
pub fn one_shot() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}
