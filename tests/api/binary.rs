//! The `sessiongate` binary: start-up configuration errors and signal handling.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, shared_redis};

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn invalid_configuration_stops_start_up_with_one_line() {
    let output = gateway()
        .env("SESSIONGATE_LISTEN", "localhost")
        .output()
        .expect("run sessiongate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "sessiongate: invalid configuration: SESSIONGATE_LISTEN: \"localhost\" is not an address of the form ip:port"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    // The inherited environment is kept on purpose: it is what `cargo run` gives the binary
    // too (build-script variables included), and the gateway must start in it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .env("SESSIONGATE_LISTEN", "127.0.0.1:0")
        .env("SESSIONGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SESSIONGATE_LOG_FORMAT", "json")
        .env("REDIS_URL", shared_redis().url(201))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sessiongate");

    // Port 0 everywhere: the binary logs the addresses it bound.
    let stdout = child.stdout.take().expect("piped stdout");
    let listening = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .find(|event| event["message"] == "sessiongate listening")
    });
    let event = tokio::time::timeout(Duration::from_secs(20), listening)
        .await
        .expect("the binary logs its addresses in time")
        .expect("reader thread")
        .expect("a 'sessiongate listening' log line");
    let public = event["public_addr"]
        .as_str()
        .expect("public_addr")
        .to_string();
    let admin = event["admin_addr"]
        .as_str()
        .expect("admin_addr")
        .to_string();

    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status().as_u16(), 200);
    let response = http
        .post(format!("http://{public}/api/session/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = eventually(Duration::from_secs(20), "the binary to exit", || {
        let exited = child.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}
