//! The `sessiongate` binary: configuration, logging and signals around [`sessiongate::start`].

use std::io::IsTerminal;
use std::process::ExitCode;

use sessiongate::config::{Config, LogFormat};
use sessiongate::{telemetry, Gateway, StartError};
use tracing_subscriber::EnvFilter;

// glibc's malloc was a tenth of the CPU of a request (`perf`), and its per-thread arenas kept
// tens of MiB after a load had passed; mimalloc does both with less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    without_transparent_huge_pages();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sessiongate: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiongate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let gateway = match sessiongate::start(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(%error, "start-up failed");
                eprintln!("sessiongate: {error}");
                return match error {
                    StartError::Config(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        serve_until_stopped(&gateway).await;
        tracing::info!("shutting down: finishing in-flight requests");
        gateway.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// mimalloc lets its arenas take transparent huge pages, so memory became resident 2 MiB at a
/// time: an idle gateway held 31 MiB instead of 19, and 52 MiB instead of 34 after a load,
/// for no CPU per request that an A/B run could tell apart. Switched off for the process first
/// thing, as `MIMALLOC_ALLOW_THP=0` would (mimalloc reads that before `main`; the pages it
/// took by then, 4 MiB, stay).
#[cfg(target_os = "linux")]
fn without_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of this process.
    // Failing (an old kernel) only leaves the huge pages on.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(not(target_os = "linux"))]
fn without_transparent_huge_pages() {}

/// JSON lines in production (for log pipelines), readable text elsewhere, coloured only on a
/// terminal; the level comes from `RUST_LOG` (checked with the configuration; default `info`).
fn init_logging(config: &Config) {
    let filter = EnvFilter::new(&config.log_filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if config.log_format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Returns on SIGTERM or Ctrl-C; reloads the configuration on every SIGHUP meanwhile.
async fn serve_until_stopped(gateway: &Gateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut term = signal(SignalKind::terminate())
        .inspect_err(|error| {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway")
        })
        .ok();
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(
            |error| tracing::warn!(%error, "cannot listen for SIGHUP; configuration reload is off"),
        )
        .ok();
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return,
            Some(()) = recv(&mut term) => return,
            Some(()) = recv(&mut hup) => reload(gateway),
        }
    }
}

/// The next signal of `signal`, or never when there is no such stream.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the environment and `SESSIONGATE_CONFIG` again and applies what can be applied
/// while running; a configuration that does not validate changes nothing.
fn reload(gateway: &Gateway) {
    match Config::from_env() {
        Ok(config) => {
            let needs_restart = gateway.reload(config);
            if needs_restart.is_empty() {
                tracing::info!("configuration reloaded");
            } else {
                let settings = needs_restart.join(", ");
                tracing::warn!(%settings, "configuration reloaded; these changed settings need a restart and were left as they are");
            }
        }
        Err(error) => {
            telemetry::config_reload("error");
            tracing::error!(%error, "configuration reload refused; nothing changed");
        }
    }
}
