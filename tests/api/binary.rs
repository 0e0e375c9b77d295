//! The `sessiongate` binary: start-up configuration errors and signal handling.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, free_port, shared_redis};

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
    let (public, admin) = (free_port(), free_port());
    let mut child = gateway()
        .env("SESSIONGATE_LISTEN", format!("127.0.0.1:{public}"))
        .env("SESSIONGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("REDIS_URL", shared_redis().url(201))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sessiongate");
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(20),
        "the binary to be ready",
        || async {
            let response = http
                .get(format!("http://127.0.0.1:{admin}/readyz"))
                .send()
                .await
                .ok()?;
            (response.status().as_u16() == 200).then_some(())
        },
    )
    .await;
    let response = http
        .post(format!("http://127.0.0.1:{public}/api/session/"))
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
