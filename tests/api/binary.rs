//! The `sessiongate` binary: start-up configuration errors and signal handling.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, shared_redis, RedisServer};

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// Runs the gateway on `redis` (database 0), expecting start-up to stop with exit code 2;
/// its standard error.
fn refused_by(redis: &RedisServer) -> String {
    let output = gateway()
        .env("REDIS_URL", redis.url(0))
        .env("SESSIONGATE_LISTEN", "127.0.0.1:0")
        .env("SESSIONGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run sessiongate");
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
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

/// Every mutation is a Redis function: a Redis without `FUNCTION` (older than 7.0; here one
/// that renamed the command away) stops start-up with one line saying so, exit code 2,
/// rather than serving 503 for ever.
#[test]
fn a_redis_without_functions_is_refused_at_start_up() {
    let redis = RedisServer::start_with(&["--rename-command", "FUNCTION", ""]);
    let stderr = refused_by(&redis);
    assert!(
        stderr.trim_end().ends_with(
            "sessiongate: invalid configuration: redis.url: redis does not know FUNCTION LOAD: \
             sessiongate needs redis 7.0 or later"
        ),
        "{stderr}"
    );
}

/// A Redis that may evict keys would drop sessions and their quota windows under memory
/// pressure (quotas start afresh): start-up refuses it with one line naming the setting that
/// accepts it, exit code 2, unless `redis.allow_eviction = true`.
#[tokio::test]
async fn a_redis_that_evicts_keys_is_refused_unless_allowed() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let stderr = refused_by(&redis);
    assert!(
        stderr.trim_end().ends_with(
            "sessiongate: invalid configuration: redis.allow_eviction: redis evicts keys \
             (maxmemory-policy volatile-lru): sessions and their quota windows would vanish \
             under memory pressure; set maxmemory-policy noeviction, or \
             redis.allow_eviction = true to accept that"
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("sessiongate:"))
            .count(),
        1
    );

    let dir = crate::services::temp_path("allow-eviction");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "[redis]\nallow_eviction = true\n").expect("write");
    let mut child = gateway()
        .env("REDIS_URL", redis.url(0))
        .env("SESSIONGATE_LISTEN", "127.0.0.1:0")
        .env("SESSIONGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SESSIONGATE_CONFIG", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sessiongate");
    let stdout = child.stdout.take().expect("piped stdout");
    let listening = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("sessiongate listening"))
    });
    let started = tokio::time::timeout(Duration::from_secs(20), listening).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(started, Ok(Ok(true))),
        "with redis.allow_eviction = true the gateway starts"
    );
}

/// Data written with another shard count cannot be read with this one: start-up stops with
/// exit code 2 and one line naming `redis.shards`.
#[test]
fn a_shard_count_other_than_the_datas_stops_start_up() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "sg:shards", "32"]);
    let stderr = refused_by(&redis);
    assert!(
        stderr.contains(
            "sessiongate: invalid configuration: redis.shards: redis holds data sharded 32 \
             ways, but redis.shards is 64"
        ),
        "{stderr}"
    );
}
